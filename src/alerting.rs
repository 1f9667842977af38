//! Wiring of alerting into `vigil serve`: the [`QueryEngine`] over Vigil's PromQL engine, and
//! opening the rule manager, dispatcher and outbox from the config.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use vigil_alerting::manager::ManagerOptions;
use vigil_alerting::notify::RetryPolicy;
use vigil_alerting::service::Alerting;
use vigil_alerting::QueryEngine;
use vigil_model::{Labels, MetricReader, MetricSink, Telemetry};
use vigil_query::promql::{Engine, EngineOptions, QueryResult};

use crate::config::Config;

/// Longest a rule's query may run.
const RULE_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Rule evaluation through Vigil's PromQL engine.
pub struct PromqlRuleEngine {
    engine: Engine,
}

impl PromqlRuleEngine {
    /// Returns an engine reading from `reader` through a [`SharedSelections`] cache, so rules
    /// evaluated at the same time with the same selector read its series once.
    pub fn new(reader: Arc<dyn MetricReader>) -> Self {
        let options = EngineOptions {
            timeout: RULE_QUERY_TIMEOUT,
            ..EngineOptions::default()
        };
        let shared: Arc<dyn MetricReader> = Arc::new(SharedSelections::new(reader));
        PromqlRuleEngine {
            engine: Engine::with_options(shared, options),
        }
    }
}

#[cfg(test)]
impl PromqlRuleEngine {
    /// Returns an engine reading `reader` directly, without shared selections (the
    /// evaluation-cost benchmark's comparison).
    fn without_shared_selections(reader: Arc<dyn MetricReader>) -> Self {
        let options = EngineOptions {
            timeout: RULE_QUERY_TIMEOUT,
            ..EngineOptions::default()
        };
        PromqlRuleEngine {
            engine: Engine::with_options(reader, options),
        }
    }
}

/// Most samples [`SharedSelections`] keeps; past this it starts over, so a cycle over
/// many distinct selectors costs no more memory than its largest queries.
const SHARED_SELECTION_SAMPLES: usize = 1_000_000;

/// Shares the series that rules read within one evaluation cycle: the rules of a cycle are
/// evaluated at the same time, so two rules with the same selector (say `requests{service="a"}`
/// with two thresholds) ask the store for exactly the same `select` (matchers and window), and
/// the second gets the first's answer. Entries of an earlier evaluation time can never match
/// again (their window differs); the cache starts over when time moves on or it holds more
/// than [`SHARED_SELECTION_SAMPLES`]. A sample written between two rules of one cycle, inside
/// the window, may be seen by the first and not the second, as if it had arrived a moment
/// later.
struct SharedSelections {
    inner: Arc<dyn MetricReader>,
    state: parking_lot::Mutex<SharedSelectionState>,
}

#[derive(Default)]
struct SharedSelectionState {
    /// The newest window end seen; a later one starts a new cycle.
    latest_end_ms: i64,
    samples: usize,
    selections: std::collections::HashMap<String, Vec<vigil_model::SeriesSamples>>,
}

impl SharedSelections {
    fn new(inner: Arc<dyn MetricReader>) -> Self {
        SharedSelections {
            inner,
            state: parking_lot::Mutex::new(SharedSelectionState::default()),
        }
    }

    fn key(matchers: &[vigil_model::LabelMatcher], hints: &vigil_model::SelectHints) -> String {
        format!(
            "{matchers:?}|{}|{}|{}|{}|{}",
            hints.start_ms, hints.end_ms, hints.step_ms, hints.range_ms, hints.first_last_suffice
        )
    }
}

impl MetricReader for SharedSelections {
    fn select(
        &self,
        matchers: &[vigil_model::LabelMatcher],
        hints: &vigil_model::SelectHints,
    ) -> Result<Vec<vigil_model::SeriesSamples>, vigil_model::ReadError> {
        let key = SharedSelections::key(matchers, hints);
        {
            let mut state = self.state.lock();
            if hints.end_ms > state.latest_end_ms {
                state.latest_end_ms = hints.end_ms;
                state.selections.clear();
                state.samples = 0;
            }
            if let Some(series) = state.selections.get(&key) {
                return Ok(series.clone());
            }
        }
        let series = self.inner.select(matchers, hints)?;
        let samples: usize = series.iter().map(|one| one.samples.len()).sum();
        let mut state = self.state.lock();
        if state.samples + samples > SHARED_SELECTION_SAMPLES {
            state.selections.clear();
            state.samples = 0;
        }
        if samples <= SHARED_SELECTION_SAMPLES {
            state.samples += samples;
            state.selections.insert(key, series.clone());
        }
        Ok(series)
    }

    fn visit_buckets(
        &self,
        matchers: &[vigil_model::LabelMatcher],
        hints: &vigil_model::SelectHints,
        visit: &(dyn Fn(&Labels, &[vigil_model::Bucket]) + Sync),
    ) -> Result<Option<i64>, vigil_model::ReadError> {
        self.inner.visit_buckets(matchers, hints, visit)
    }

    fn select_sketches(
        &self,
        matchers: &[vigil_model::LabelMatcher],
        hints: &vigil_model::SelectHints,
    ) -> Result<Vec<vigil_model::SeriesSketches>, vigil_model::ReadError> {
        self.inner.select_sketches(matchers, hints)
    }

    fn series(
        &self,
        selectors: &[Vec<vigil_model::LabelMatcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Labels>, vigil_model::ReadError> {
        self.inner.series(selectors, start_ms, end_ms)
    }

    fn metadata(&self) -> Result<Vec<vigil_model::MetricMetadata>, vigil_model::ReadError> {
        self.inner.metadata()
    }
}

impl QueryEngine for PromqlRuleEngine {
    fn instant_query(&self, expr: &str, time_ms: i64) -> Result<Vec<(Labels, f64)>, String> {
        match self.engine.instant_query(expr, time_ms) {
            Ok(QueryResult::Vector(samples)) => Ok(samples
                .into_iter()
                .map(|sample| (sample.labels, sample.value))
                .collect()),
            Ok(QueryResult::Scalar { value, .. }) => Ok(vec![(Labels::empty(), value)]),
            Ok(other) => Err(format!(
                "rule result is not a vector or scalar but a {}",
                other.result_type()
            )),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// Loads the rules, opens `alerts.db` (restoring alert state) and builds alerting.
///
/// # Errors
/// When the rules do not load or the alert store cannot be opened.
pub async fn open(
    config: &Config,
    reader: Arc<dyn MetricReader>,
    sink: Arc<dyn MetricSink>,
    telemetry: Telemetry,
) -> anyhow::Result<Alerting> {
    let groups = config.rule_groups().context("invalid rule files")?;
    let alertmanager = config.alertmanager.clone();
    let data_dir = config.server.data_dir.clone();
    let options = ManagerOptions {
        evaluation_interval: config.global.evaluation_interval,
        external_labels: config.global.external_labels.clone(),
        external_url: config.server.external_url.clone(),
    };
    let rule_count: usize = groups.iter().map(|group| group.rules.len()).sum();
    let engine: Arc<dyn QueryEngine> = Arc::new(PromqlRuleEngine::new(reader));
    let alerting = tokio::task::spawn_blocking(move || {
        Alerting::open(
            &data_dir,
            groups,
            &alertmanager,
            engine,
            Some(sink),
            options,
            telemetry,
            RetryPolicy::default(),
        )
    })
    .await
    .context("alerting start task failed")?
    .context("cannot start alerting")?;
    let alerting = alerting.with_external_alertmanagers(&config.alerting);
    tracing::info!(
        rules = rule_count,
        "alerting rules loaded, alert state restored"
    );
    Ok(alerting)
}

/// Re-reads the config file and applies its alerting parts (`rule_files`, `alertmanager`,
/// `alerting`); an invalid file leaves everything running as it was. Other sections need a
/// restart. Blocks.
fn reload_alerting(alerting: &Alerting, path: Option<&std::path::Path>) -> Result<usize, String> {
    let config = Config::load(
        path,
        &crate::config::CliOverrides::default(),
        std::env::vars(),
    )
    .map_err(|error| error.to_string())?;
    let groups = config.rule_groups().map_err(|error| error.to_string())?;
    let rules = groups.iter().map(|group| group.rules.len()).sum();
    alerting
        .reload(groups, &config.alertmanager, &config.alerting)
        .map_err(|error| error.to_string())?;
    Ok(rules)
}

async fn reload_now(alerting: Alerting, path: Option<PathBuf>) -> Result<usize, String> {
    let outcome =
        tokio::task::spawn_blocking(move || reload_alerting(&alerting, path.as_deref())).await;
    let outcome = outcome.unwrap_or_else(|error| Err(format!("reload task failed: {error}")));
    match &outcome {
        Ok(rules) => tracing::info!(rules, "alerting configuration reloaded"),
        Err(error) => {
            tracing::error!(%error, "reload failed; the previous configuration keeps running")
        }
    }
    outcome
}

/// Returns `POST /-/reload`: 200 when the alerting parts of the config file were reloaded,
/// 500 with the reason in the API's JSON error shape (and the old config still running)
/// otherwise.
pub fn reload_router(alerting: Alerting, path: Option<PathBuf>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    axum::Router::new().route(
        "/-/reload",
        axum::routing::post(move || {
            let alerting = alerting.clone();
            let path = path.clone();
            async move {
                match reload_now(alerting, path).await {
                    Ok(_) => (StatusCode::OK, String::new()).into_response(),
                    Err(error) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        axum::Json(serde_json::json!({
                            "status": "error",
                            "errorType": "internal",
                            "error": format!("failed to reload config: {error}"),
                        })),
                    )
                        .into_response(),
                }
            }
        }),
    )
}

/// Reloads the alerting parts of the config on every SIGHUP until `shutdown`.
pub async fn reload_on_sighup(
    alerting: Alerting,
    path: Option<PathBuf>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; use POST /-/reload");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = hangup.recv() => {
                    if received.is_none() {
                        return;
                    }
                    let _ = reload_now(alerting.clone(), path.clone()).await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (alerting, path);
        shutdown.cancelled().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use vigil_alerting::manager::RuleManager;
    use vigil_alerting::rule::load_rule_files;
    use vigil_query::promql::MemoryReader;

    use super::*;

    const MINUTE: i64 = 60_000;

    /// Evaluation cost: 1,000 alerting rules over 10,000 series (100 services × 100 instances,
    /// 10 minutes of samples), full cycles through the real PromQL engine over Vigil's SQLite
    /// metric store (with and without shared selections), then again as `vigil serve` runs a cycle (alert state saved to
    /// `alerts.db`, `ALERTS` written); the baseline is 1,000 rules that read no series
    /// (`vector(0) > 1`), measured in the same run. Prints wall and CPU time, medians of 7
    /// cycles. Run with
    /// `cargo test --release --bin vigil -- --ignored --nocapture rule_evaluation_cost`.
    #[test]
    #[ignore = "benchmark; prints the median time of one cycle"]
    fn rule_evaluation_cost_of_1000_rules_over_10000_series() {
        let reader = Arc::new(MemoryReader::new());
        for service in 0..100 {
            for instance in 0..100 {
                let labels = Labels::with_name(
                    "requests",
                    [
                        ("service", format!("s{service}")),
                        ("instance", format!("i{instance}")),
                    ],
                );
                reader.add_samples(
                    labels,
                    (0..=10).map(|minute| vigil_model::Sample {
                        timestamp_ms: minute * MINUTE,
                        value: (minute * (service + 1)) as f64,
                    }),
                );
            }
        }
        let rule_file = |expr: &dyn Fn(i64) -> String| {
            let mut text = String::from("groups:\n");
            for group in 0..10 {
                text.push_str(&format!("- name: g{group}\n  rules:\n"));
                for rule in 0..100 {
                    let index = group * 100 + rule;
                    text.push_str(&format!(
                        "  - alert: A{index}\n    expr: '{}'\n    for: 1m\n    labels: {{severity: ticket}}\n    annotations: {{summary: \"{{{{ $labels.service }}}} at {{{{ $value | humanize }}}}\"}}\n",
                        expr(index)
                    ));
                }
            }
            vigil_alerting::rule::parse_rule_file("bench.yml", &text).unwrap()
        };
        let groups = rule_file(&|index| {
            format!(
                "sum by (service) (rate(requests{{service=\"s{}\"}}[5m])) > {}",
                index % 100,
                index % 7
            )
        });
        let baseline_groups = rule_file(&|_| "vector(0) > 1".to_string());
        // The same series in Vigil's SQLite metric store.
        let directory = tempfile::tempdir().unwrap();
        let store = Arc::new(
            vigil_query::store::MetricStore::open(
                directory.path(),
                vigil_query::store::MetricStoreOptions::default(),
            )
            .unwrap(),
        );
        let everything = vec![vigil_model::LabelMatcher::equal("__name__", "requests")];
        let hints = vigil_model::SelectHints {
            start_ms: 0,
            end_ms: 10 * MINUTE,
            ..vigil_model::SelectHints::default()
        };
        let series = reader.select(&everything, &hints).unwrap();
        let batch = vigil_model::MetricBatch {
            series,
            ..vigil_model::MetricBatch::default()
        };
        MetricSink::write(store.as_ref(), batch).unwrap();
        let alert_directory = tempfile::tempdir().unwrap();
        let alert_store =
            Arc::new(vigil_alerting::store::AlertStore::open(alert_directory.path()).unwrap());
        // The last run is a cycle as `vigil serve` runs it: alert state saved to alerts.db,
        // ALERTS and ALERTS_FOR_STATE written to the metric store.
        type Run<'a> = (
            &'a str,
            &'a [vigil_alerting::rule::RuleGroup],
            Arc<dyn MetricReader>,
            bool,
        );
        let runs: [Run<'_>; 4] = [
            (
                "baseline: 1,000 rules reading no series",
                &baseline_groups,
                store.clone(),
                false,
            ),
            (
                "1,000 rules over 10,000 series, SQLite metric store, selections not shared",
                &groups,
                store.clone(),
                false,
            ),
            (
                "1,000 rules over 10,000 series, SQLite metric store",
                &groups,
                store.clone(),
                false,
            ),
            (
                "the same, saving alert state and writing ALERTS",
                &groups,
                store.clone(),
                true,
            ),
        ];
        for (name, groups, reader, persist) in runs {
            let engine: Arc<dyn QueryEngine> = if name.ends_with("selections not shared") {
                Arc::new(PromqlRuleEngine::without_shared_selections(reader))
            } else {
                Arc::new(PromqlRuleEngine::new(reader))
            };
            let options = ManagerOptions {
                evaluation_interval: Duration::from_secs(60),
                external_labels: BTreeMap::new(),
                external_url: "http://localhost:7080".to_string(),
            };
            let (sink, saved_state): (Option<Arc<dyn MetricSink>>, _) = if persist {
                (Some(store.clone()), Some(alert_store.clone()))
            } else {
                (None, None)
            };
            let mut manager =
                RuleManager::new(groups.to_vec(), engine, sink, saved_state, options).unwrap();
            assert_eq!(manager.rule_count(), 1_000);
            let mut wall = Vec::new();
            let mut cpu = Vec::new();
            for step in 0..7 {
                let cpu_started = process_cpu_time();
                let started = std::time::Instant::now();
                manager.evaluate_all(10 * MINUTE + step * 1_000);
                wall.push(started.elapsed());
                cpu.push(process_cpu_time().saturating_sub(cpu_started));
            }
            for group in manager.rules_snapshot() {
                for rule in &group.rules {
                    assert_eq!(
                        rule.health,
                        vigil_alerting::manager::RuleHealth::Ok,
                        "{}",
                        rule.last_error
                    );
                }
            }
            let active = manager.active_alerts().len();
            wall.sort();
            cpu.sort();
            let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
            println!(
                "{name}: one cycle, median of 7: wall {:.1} ms (min {:.1}, max {:.1}), CPU {:.1} ms (min {:.1}, max {:.1}); {active} alerts active",
                ms(wall[3]),
                ms(wall[0]),
                ms(wall[6]),
                ms(cpu[3]),
                ms(cpu[0]),
                ms(cpu[6]),
            );
        }
    }

    /// CPU time of this process: only the measured cycle runs meanwhile, so this is robust to
    /// other load on a shared machine, unlike wall time.
    fn process_cpu_time() -> Duration {
        let mut spec = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec to a valid pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut spec) };
        Duration::new(
            u64::try_from(spec.tv_sec).unwrap_or(0),
            u32::try_from(spec.tv_nsec).unwrap_or(0),
        )
    }

    /// Rules evaluated at the same time with the same selector read the store once; a later
    /// evaluation reads it again and sees the new samples.
    #[test]
    fn rules_of_one_cycle_share_their_selections() {
        let reader = Arc::new(MemoryReader::new());
        reader
            .load_text(MINUTE, "requests{service=\"a\"} 0+60x10\n")
            .unwrap();
        let engine = PromqlRuleEngine::new(reader.clone());
        let first = engine
            .instant_query("rate(requests{service=\"a\"}[5m]) > 0.5", 10 * MINUTE)
            .unwrap();
        let second = engine
            .instant_query("rate(requests{service=\"a\"}[5m]) > 2", 10 * MINUTE)
            .unwrap();
        assert_eq!(first.len(), 1);
        assert!((first[0].1 - 1.0).abs() < 1e-9, "{first:?}");
        assert!(second.is_empty());
        assert_eq!(
            reader.hints_seen().len(),
            1,
            "the second rule reused the selection"
        );

        reader.add_sample(
            Labels::with_name("requests", [("service", "a".to_string())]),
            11 * MINUTE,
            960.0,
        );
        let later = engine
            .instant_query("rate(requests{service=\"a\"}[5m]) > 2", 11 * MINUTE)
            .unwrap();
        assert_eq!(
            reader.hints_seen().len(),
            2,
            "a new evaluation time reads again"
        );
        assert_eq!(later.len(), 1, "the new sample is seen: {later:?}");
    }

    /// The shipped span-metric rules over the real PromQL engine (span metrics as the OTLP
    /// ingest writes them: calls counters and duration sketches), stepped minute by minute.
    /// orders' server spans go from 1% to about 17% errors at minute 11 and their p99 from
    /// 0.1 s to 2 s at minute 30; payments' spans stop after minute 60 (none left in a 5m window from minute 64); catalog stays healthy.
    /// orders' client spans fail and are slow all along, and must not count.
    #[test]
    fn shipped_span_metric_rules_fire_after_their_for_over_the_real_engine() {
        let reader = Arc::new(MemoryReader::new());
        reader
            .load_text(
                MINUTE,
                r#"
vigil_span_calls_total{service="orders",operation="POST /orders",kind="server",status="ok"} 0+99x130
vigil_span_calls_total{service="orders",operation="POST /orders",kind="server",status="error"} 0+1x10 11+20x119
vigil_span_calls_total{service="orders",operation="GET /stock",kind="client",status="error"} 0+1000x130
vigil_span_calls_total{service="payments",operation="charge",kind="consumer",status="unset"} 0+50x60
vigil_span_calls_total{service="catalog",operation="GET /items",kind="server",status="ok"} 0+100x130
vigil_span_calls_total{service="catalog",operation="GET /items",kind="server",status="error"} 0+0x130
"#,
            )
            .unwrap();
        let span_labels = |service: &str, operation: &str, kind: &str| {
            Labels::with_name(
                "vigil_span_duration_seconds",
                [
                    ("service", service.to_string()),
                    ("operation", operation.to_string()),
                    ("kind", kind.to_string()),
                ],
            )
        };
        for minute in 0..=130 {
            let mut server = vigil_model::Sketch::new();
            server.add_many(if minute < 30 { 0.1 } else { 2.0 }, 100);
            reader.add_sketch(
                span_labels("orders", "POST /orders", "server"),
                minute * MINUTE,
                server,
            );
            let mut client = vigil_model::Sketch::new();
            client.add_many(5.0, 100);
            reader.add_sketch(
                span_labels("orders", "GET /stock", "client"),
                minute * MINUTE,
                client,
            );
            let mut healthy = vigil_model::Sketch::new();
            healthy.add_many(0.05, 100);
            reader.add_sketch(
                span_labels("catalog", "GET /items", "server"),
                minute * MINUTE,
                healthy,
            );
        }
        let groups = load_rule_files(None, std::path::Path::new(".")).unwrap();
        let engine: Arc<dyn QueryEngine> = Arc::new(PromqlRuleEngine::new(reader));
        let options = ManagerOptions {
            evaluation_interval: Duration::from_secs(60),
            external_labels: BTreeMap::new(),
            external_url: "http://localhost:7080".to_string(),
        };
        let mut manager = RuleManager::new(groups, engine, None, None, options).unwrap();
        // (alertname, service) -> (first minute seen firing, its start minute, severity)
        let mut first_firing: BTreeMap<(String, String), (i64, i64, String)> = BTreeMap::new();
        for minute in 0..=130 {
            for alert in manager.evaluate_due(minute * MINUTE) {
                if alert.ends_at_ms.is_some() {
                    continue;
                }
                let name = alert
                    .labels
                    .get("alertname")
                    .unwrap_or_default()
                    .to_string();
                let service = alert.labels.get("service").unwrap_or_default().to_string();
                let severity = alert.labels.get("severity").unwrap_or_default().to_string();
                assert!(
                    !alert.annotations["summary"].contains("error expanding"),
                    "{:?}",
                    alert.annotations
                );
                first_firing.entry((name, service)).or_insert((
                    minute,
                    alert.starts_at_ms / MINUTE,
                    severity,
                ));
            }
        }
        let fired: Vec<(&str, &str)> = first_firing
            .keys()
            .map(|(name, service)| (name.as_str(), service.as_str()))
            .collect();
        assert_eq!(
            fired,
            [
                ("HighSpanErrorRate", "orders"),
                ("HighSpanLatencyP99", "orders"),
                ("SpanTrafficGone", "payments"),
            ],
            "{first_firing:?}"
        );
        let timing = |name: &str, service: &str| {
            first_firing[&(name.to_string(), service.to_string())].clone()
        };
        let (minute, started, severity) = timing("HighSpanErrorRate", "orders");
        assert!((16..=19).contains(&minute), "fired at minute {minute}");
        assert_eq!(minute - started, 5, "fires after `for: 5m`");
        assert_eq!(severity, "page");
        let (minute, started, severity) = timing("HighSpanLatencyP99", "orders");
        assert!((40..=42).contains(&minute), "fired at minute {minute}");
        assert_eq!(minute - started, 10, "fires after `for: 10m`");
        assert_eq!(severity, "ticket");
        let (minute, started, severity) = timing("SpanTrafficGone", "payments");
        assert!((73..=76).contains(&minute), "fired at minute {minute}");
        assert_eq!(minute - started, 10, "fires after `for: 10m`");
        assert_eq!(severity, "ticket");
        for group in manager.rules_snapshot() {
            for rule in &group.rules {
                assert_eq!(
                    rule.health,
                    vigil_alerting::manager::RuleHealth::Ok,
                    "{}: {}",
                    rule.name,
                    rule.last_error
                );
            }
        }
    }

    /// The shipped HighErrorRate rule over the real PromQL engine, stepped minute by minute:
    /// gateway's errors go from 1% to 20% of its requests at minute 11; api stays at 1%.
    #[test]
    fn shipped_error_rate_rule_fires_after_five_minutes_over_the_real_engine() {
        let reader = Arc::new(MemoryReader::new());
        reader
            .load_text(
                MINUTE,
                r#"
requests{service="gateway"} 0+100x40
errors{service="gateway"} 0+1x10 11+20x29
requests{service="api"} 0+100x40
errors{service="api"} 0+1x40
"#,
            )
            .unwrap();
        let groups = load_rule_files(None, std::path::Path::new(".")).unwrap();
        let engine: Arc<dyn QueryEngine> = Arc::new(PromqlRuleEngine::new(reader));
        let options = ManagerOptions {
            evaluation_interval: Duration::from_secs(60),
            external_labels: BTreeMap::new(),
            external_url: "http://localhost:7080".to_string(),
        };
        let mut manager = RuleManager::new(groups, engine, None, None, options).unwrap();
        let mut first_firing_minute = None;
        for minute in 0..=30 {
            let alerts = manager.evaluate_due(minute * MINUTE);
            for alert in &alerts {
                assert_eq!(alert.labels.get("alertname"), Some("HighErrorRate"));
                assert_eq!(alert.labels.get("service"), Some("gateway"));
                assert_eq!(alert.labels.get("severity"), Some("page"));
                assert!(alert.annotations["summary"].ends_with("% of requests fail"));
            }
            if first_firing_minute.is_none() && !alerts.is_empty() {
                first_firing_minute = Some(minute);
                let started_minute = alerts[0].starts_at_ms / MINUTE;
                assert_eq!(minute - started_minute, 5, "fires after `for: 5m`");
            }
        }
        let first = first_firing_minute.expect("HighErrorRate never fired");
        assert!((16..=19).contains(&first), "fired at minute {first}");
        let snapshot = manager.rules_snapshot();
        for group in &snapshot {
            for rule in &group.rules {
                assert_eq!(
                    rule.health,
                    vigil_alerting::manager::RuleHealth::Ok,
                    "{}: {}",
                    rule.name,
                    rule.last_error
                );
            }
        }
    }
}
