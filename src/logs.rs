//! The log path of `vigil serve`: opens the log store under `<data_dir>/logs`, builds the
//! ingest state from the config, and runs the store's background work (commits that make
//! lines searchable, retention, and `vigil_log_records_total` written to the metric store).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use vigil_collector::http::now_ms;
use vigil_collector::sources::forward::{DecodeLimits, ForwardOptions};
use vigil_collector::sources::json_logs::{JsonLogsOptions, LogIngestState, NormalizeOptions};
use vigil_logs::{LogStore, LogStoreOptions};
use vigil_model::{
    Labels, MetricBatch, MetricMetadata, MetricSink, MetricType, Sample, SeriesSamples, Telemetry,
};

use crate::config::{listen_address, Config};

/// How often the log store's commits are made durable and the WAL they cover deleted.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);
/// A commit starting this much later than planned is logged (debug): it was held up.
const LATE_COMMIT_MS: u64 = 100;
/// How often retention runs.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// How often `vigil_log_records_total` is written to the metric store.
const RECORD_COUNTS_INTERVAL: Duration = Duration::from_secs(10);
/// The metric counting stored log lines.
const LOG_RECORDS_METRIC: &str = "vigil_log_records_total";

/// Opens the log store and replays its write-ahead log.
///
/// # Errors
/// When the store cannot be opened.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<LogStore>> {
    let directory = config.server.data_dir.join("logs");
    let options = LogStoreOptions {
        retention: config.logs.retention,
        retention_size_bytes: config.logs.retention_size,
        ..LogStoreOptions::default()
    };
    let store = tokio::task::spawn_blocking(move || LogStore::open(&directory, options))
        .await
        .context("log store task failed")?
        .context("failed to open the log store")?;
    Ok(Arc::new(store))
}

/// Returns the state of the JSON log and `_bulk` handlers.
pub fn ingest_state(config: &Config, store: Arc<LogStore>, telemetry: Telemetry) -> LogIngestState {
    let options = JsonLogsOptions {
        max_line_bytes: usize::try_from(config.storage.limits.log_line_bytes).unwrap_or(usize::MAX),
        normalize: NormalizeOptions {
            correlation_fields: config.logs.correlation_fields.clone(),
            ..NormalizeOptions::default()
        },
        ..JsonLogsOptions::default()
    };
    LogIngestState::new(store, telemetry, options)
}

/// Binds `logs.forward_listen` (TCP, and UDP on the same port for heartbeats) and returns
/// the listener's task, or `None` when the key is empty.
///
/// # Errors
/// When the address is invalid or in use.
pub async fn forward_listener(
    config: &Config,
    store: Arc<LogStore>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<impl std::future::Future<Output = ()> + Send + 'static>> {
    let Some(address) = listen_address("logs.forward_listen", &config.logs.forward_listen)? else {
        return Ok(None);
    };
    let (listener, heartbeat) = vigil_collector::sources::forward::bind(address)
        .await
        .with_context(|| format!("failed to bind logs.forward_listen on {address}"))?;
    tracing::info!(%address, "Fluentd forward protocol listening");
    let options = ForwardOptions {
        decode: DecodeLimits {
            max_entry_bytes: usize::try_from(config.storage.limits.log_line_bytes)
                .unwrap_or(usize::MAX),
            normalize: NormalizeOptions {
                correlation_fields: config.logs.correlation_fields.clone(),
                ..NormalizeOptions::default()
            },
            ..DecodeLimits::default()
        },
        ..ForwardOptions::default()
    };
    Ok(Some(vigil_collector::sources::forward::run(
        listener, heartbeat, store, telemetry, options, shutdown,
    )))
}

/// Runs commits, retention and record counting until `shutdown`, then commits once more.
pub async fn run_maintenance(
    store: Arc<LogStore>,
    metrics: Arc<dyn MetricSink>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) {
    // Checkpoints run apart from commits, so a slow disk never holds a commit back; so does
    // the counting of lines and bytes, whose metric-store write must not delay a commit.
    let checkpoints = tokio::spawn(run_checkpoints(store.clone(), shutdown.clone()));
    let counts = tokio::spawn(run_record_counts(
        store.clone(),
        metrics,
        telemetry,
        shutdown.clone(),
    ));
    // A commit starts `commit_interval` after the previous one started, or as soon as that one
    // ends if it took longer: lines that arrived during a slow commit then wait for one more
    // commit only, not for a commit plus a whole interval.
    let commit_interval = store.options().commit_interval;
    let mut next_commit = tokio::time::Instant::now() + commit_interval;
    let mut retention = tokio::time::interval(RETENTION_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next_commit) => {
                let started = tokio::time::Instant::now();
                let late_ms = started.saturating_duration_since(next_commit).as_millis() as u64;
                if late_ms >= LATE_COMMIT_MS {
                    tracing::debug!(late_ms, "log store commit started late");
                }
                next_commit = started + commit_interval;
                let store = store.clone();
                match tokio::task::spawn_blocking(move || store.commit()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "log store commit failed; retrying"),
                    Err(error) => tracing::warn!(%error, "log store commit task failed"),
                }
            }
            _ = retention.tick() => {
                let store = store.clone();
                let now_ns = now_ms().saturating_mul(1_000_000);
                match tokio::task::spawn_blocking(move || store.enforce_retention(now_ns)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "log retention failed"),
                    Err(error) => tracing::warn!(%error, "log retention task failed"),
                }
            }
        }
    }
    let store_for_commit = store.clone();
    match tokio::task::spawn_blocking(move || store_for_commit.commit()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "final log store commit failed; the WAL keeps the lines")
        }
        Err(error) => tracing::warn!(%error, "final log store commit task failed"),
    }
    if checkpoints.await.is_err() {
        tracing::warn!("log store checkpoint task failed");
    }
    if counts.await.is_err() {
        tracing::warn!("log record count task failed");
    }
    checkpoint(&store).await;
}

/// Publishes the store's size and writes `vigil_log_records_total` every
/// [`RECORD_COUNTS_INTERVAL`] until `shutdown`.
async fn run_record_counts(
    store: Arc<LogStore>,
    metrics: Arc<dyn MetricSink>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) {
    let mut counting = tokio::time::interval(RECORD_COUNTS_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = counting.tick() => {
                let store_for_usage = store.clone();
                if let Ok((partitions, bytes)) = tokio::task::spawn_blocking(move || store_for_usage.disk_usage()).await {
                    telemetry
                        .gauge("vigil_store_size_bytes", "Bytes on disk per store.", &[("store", "logs")])
                        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
                    telemetry
                        .gauge("vigil_log_partitions", "Time partitions (tantivy indexes) in the log store.", &[])
                        .set(i64::try_from(partitions).unwrap_or(i64::MAX));
                }
                let batch = record_counts_batch(&store, now_ms());
                if batch.series.is_empty() {
                    continue;
                }
                let metrics = metrics.clone();
                match tokio::task::spawn_blocking(move || metrics.write(batch)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "writing vigil_log_records_total failed"),
                    Err(error) => tracing::warn!(%error, "log record count task failed"),
                }
            }
        }
    }
}

/// Runs a checkpoint every [`CHECKPOINT_INTERVAL`] until `shutdown`.
async fn run_checkpoints(store: Arc<LogStore>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(CHECKPOINT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => checkpoint(&store).await,
        }
    }
}

/// Makes the log store's finished commits durable and deletes the WAL files they cover.
async fn checkpoint(store: &Arc<LogStore>) {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.checkpoint()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "log store checkpoint failed; the WAL keeps the lines")
        }
        Err(error) => tracing::warn!(%error, "log store checkpoint task failed"),
    }
}

/// Returns `vigil_log_records_total{service,level}` as cumulative counters at `now_ms`.
fn record_counts_batch(store: &LogStore, now_ms: i64) -> MetricBatch {
    let mut batch = MetricBatch::default();
    for ((service, level), count) in store.record_counts() {
        let service = if service.is_empty() {
            "unknown".to_string()
        } else {
            service
        };
        let level = if level.is_empty() {
            "unknown".to_string()
        } else {
            level
        };
        batch.series.push(SeriesSamples {
            labels: Labels::from_pairs([
                ("__name__", LOG_RECORDS_METRIC.to_string()),
                ("service", service),
                ("level", level),
            ]),
            samples: vec![Sample {
                timestamp_ms: now_ms,
                value: count as f64,
            }],
        });
    }
    if !batch.series.is_empty() {
        batch.metadata.push(MetricMetadata {
            metric_name: LOG_RECORDS_METRIC.to_string(),
            metric_type: MetricType::Counter,
            help: "Log lines stored, per service and level.".to_string(),
            unit: String::new(),
        });
    }
    batch
}
