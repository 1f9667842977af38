//! The trace path of `vigil serve`: opens the span store under `<data_dir>/traces`, runs its
//! retention, and answers the log side of `/api/v1/correlate/{id}` from the log store.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use vigil_collector::http::now_ms;
use vigil_logs::search::{LogSearcher, SearchRequest, SortOrder};
use vigil_logs::LogStore;
use vigil_model::{LogRecord, Telemetry};
use vigil_traces::{CorrelatedLogs, SpanStore, SpanStoreOptions};

use crate::config::Config;

/// How often retention runs and the store size gauge is refreshed.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// Opens the span store (SQLite recovers each partition's WAL).
///
/// # Errors
/// When the store cannot be opened.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<SpanStore>> {
    let directory = config.server.data_dir.join("traces");
    let options = SpanStoreOptions {
        retention: config.traces.retention,
        retention_size: config.traces.retention_size,
        correlation_attributes: config.traces.correlation_attributes.clone(),
        ..SpanStoreOptions::default()
    };
    tokio::task::spawn_blocking(move || SpanStore::open(&directory, options))
        .await
        .context("span store task failed")?
        .context("failed to open the span store")
}

/// Runs retention and refreshes `vigil_store_size_bytes{store="traces"}` until `shutdown`.
pub async fn run_maintenance(
    store: Arc<SpanStore>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) {
    let mut retention = tokio::time::interval(RETENTION_INTERVAL);
    let commits = telemetry.counter(
        "vigil_span_store_commits_total",
        "Transactions the span store committed for write calls (one group commit carries every call queued at the time).",
        &[],
    );
    let batches = telemetry.counter(
        "vigil_span_store_batches_total",
        "Write calls (OTLP exports) the span store committed.",
        &[],
    );
    let mut reported = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = retention.tick() => {
                let store = store.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    let dropped = store.enforce_retention(now_ms());
                    (dropped, store.disk_usage(), store.group_commit_counts())
                })
                .await;
                match outcome {
                    Ok((dropped, (partitions, bytes), counts)) => {
                        match dropped {
                            Ok(0) => {}
                            Ok(count) => tracing::info!(partitions = count, "span retention dropped partitions"),
                            Err(error) => tracing::warn!(%error, "span retention failed"),
                        }
                        telemetry
                            .gauge("vigil_store_size_bytes", "Bytes on disk per store.", &[("store", "traces")])
                            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
                        telemetry
                            .gauge("vigil_span_partitions", "Time partitions (SQLite files) in the span store.", &[])
                            .set(i64::try_from(partitions).unwrap_or(i64::MAX));
                        commits.add(counts.0.saturating_sub(reported.0));
                        batches.add(counts.1.saturating_sub(reported.1));
                        reported = counts;
                    }
                    Err(error) => tracing::warn!(%error, "span retention task failed"),
                }
            }
        }
    }
}

/// The log lines carrying an ID, from the log store: the quoted ID as a bare term matches
/// `trace_id`, `span_id` and `correlation_id` exactly, and the message.
pub struct LogStoreCorrelation {
    searcher: LogSearcher,
}

impl LogStoreCorrelation {
    /// Returns the correlation over `store`.
    pub fn new(store: Arc<LogStore>) -> Self {
        LogStoreCorrelation {
            searcher: LogSearcher::new(store),
        }
    }
}

impl CorrelatedLogs for LogStoreCorrelation {
    fn find(&self, id: &str, limit: usize) -> Result<Vec<LogRecord>, String> {
        let escaped = id.replace('\\', "\\\\").replace('"', "\\\"");
        let request = SearchRequest {
            query: format!("\"{escaped}\""),
            start_ns: 0,
            end_ns: i64::MAX,
            limit: limit.max(1),
            cursor: None,
            order: SortOrder::Descending,
        };
        let page = self
            .searcher
            .search(&request)
            .map_err(|error| error.to_string())?;
        Ok(page.hits.into_iter().map(|hit| hit.record).collect())
    }
}
