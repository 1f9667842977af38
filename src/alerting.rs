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
    /// Returns an engine reading from `reader`.
    pub fn new(reader: Arc<dyn MetricReader>) -> Self {
        let options = EngineOptions {
            timeout: RULE_QUERY_TIMEOUT,
            ..EngineOptions::default()
        };
        PromqlRuleEngine {
            engine: Engine::with_options(reader, options),
        }
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
    /// 10 minutes of samples), one full cycle through the real PromQL engine. Run with
    /// `cargo test --bin vigil -- --ignored --nocapture rule_evaluation_cost`.
    #[test]
    #[ignore = "benchmark; prints the time of one cycle"]
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
        let mut text = String::from("groups:\n");
        for group in 0..10 {
            text.push_str(&format!("- name: g{group}\n  rules:\n"));
            for rule in 0..100 {
                let index = group * 100 + rule;
                text.push_str(&format!(
                    "  - alert: A{index}\n    expr: sum by (service) (rate(requests{{service=\"s{}\"}}[5m])) > {}\n    for: 1m\n    labels: {{severity: ticket}}\n    annotations: {{summary: \"{{{{ $labels.service }}}} at {{{{ $value | humanize }}}}\"}}\n",
                    index % 100,
                    index % 7
                ));
            }
        }
        let groups = vigil_alerting::rule::parse_rule_file("bench.yml", &text).unwrap();
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
        let readers: [(&str, Arc<dyn MetricReader>); 2] =
            [("in-memory reader", reader), ("SQLite metric store", store)];
        for (name, reader) in readers {
            let engine: Arc<dyn QueryEngine> = Arc::new(PromqlRuleEngine::new(reader));
            let options = ManagerOptions {
                evaluation_interval: Duration::from_secs(60),
                external_labels: BTreeMap::new(),
                external_url: "http://localhost:7080".to_string(),
            };
            let mut manager =
                RuleManager::new(groups.clone(), engine, None, None, options).unwrap();
            assert_eq!(manager.rule_count(), 1_000);
            let mut cycles = Vec::new();
            for step in 0..3 {
                let started = std::time::Instant::now();
                manager.evaluate_all(10 * MINUTE + step * 1_000);
                cycles.push(started.elapsed());
            }
            println!("one evaluation cycle of 1,000 rules over 10,000 series ({name}): {cycles:?}");
        }
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
