//! OTLP ingest of traces, metrics and logs: OTLP/gRPC ([`grpc`]) and OTLP/HTTP ([`http`],
//! protobuf and JSON), both with gzip, as the OpenTelemetry SDKs and Collector export them.
//!
//! Pipeline of an export, for either transport: decode (tonic, or the HTTP handler) → wait for
//! one of a bounded number of write slots (none free within a second: RESOURCE_EXHAUSTED /
//! 429 with Retry-After) → on a blocking thread, convert to Vigil's model ([`traces`],
//! [`logs`], [`metrics`]) and write through the sink → answer OK, with `partial_success`
//! counting the items rejected while the others were written. A store that is overloaded or
//! failing answers UNAVAILABLE / 503 with Retry-After and nothing is acknowledged.
//!
//! Counted in `vigil_ingest_received_total{protocol}`, `vigil_ingest_rejected_total{protocol,
//! reason}` and `vigil_ingest_dropped_total{protocol,reason}` with `protocol` `otlp_grpc` or
//! `otlp_http`; items are spans, log records and metric data points.

pub mod attributes;
pub mod grpc;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod naming;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
pub mod traces;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::tokens::IngestTokens;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use vigil_model::{
    LogSink, LogSinkError, MetricSink, SinkError, SpanSink, SpanSinkError, Telemetry,
};

use crate::sources::json_logs::normalize::NormalizeOptions;
use metrics::MetricsState;

/// The protocol label of OTLP over gRPC.
pub const PROTOCOL_GRPC: &str = "otlp_grpc";
/// The protocol label of OTLP over HTTP.
pub const PROTOCOL_HTTP: &str = "otlp_http";
/// How long an export waits for a write slot before it is refused as overloaded.
const WRITE_SLOT_WAIT: Duration = Duration::from_secs(1);

/// Limits of OTLP ingest.
#[derive(Clone, Debug)]
pub struct OtlpOptions {
    /// Largest request body or gRPC message, after decompression (`server.max_body_bytes`).
    pub max_message_bytes: usize,
    /// Exports converted or written at once; past it clients are told to back off.
    pub max_pending_writes: usize,
    /// Log normalisation (correlation fields, field limit), shared with JSON logs.
    pub normalize: NormalizeOptions,
    /// Series whose delta totals or exponential-histogram buckets are remembered.
    pub max_accumulated_series: usize,
    /// Tokens that may export (`auth:`); none means the listeners are open.
    pub tokens: IngestTokens,
}

impl Default for OtlpOptions {
    fn default() -> Self {
        OtlpOptions {
            max_message_bytes: 16 << 20,
            max_pending_writes: 16,
            normalize: NormalizeOptions::default(),
            max_accumulated_series: 100_000,
            tokens: IngestTokens::default(),
        }
    }
}

/// Items of one export that were rejected, per reason, with the first reason's text.
#[derive(Debug, Default)]
pub struct Rejections {
    /// Items rejected.
    pub count: u64,
    /// Items rejected per reason label.
    pub by_reason: BTreeMap<&'static str, u64>,
    /// The message of the first rejection.
    pub first_message: String,
}

impl Rejections {
    /// Records one rejected item.
    pub fn reject(&mut self, (reason, message): (&'static str, String)) {
        self.count += 1;
        *self.by_reason.entry(reason).or_insert(0) += 1;
        if self.first_message.is_empty() {
            self.first_message = message;
        }
    }

    /// Returns the text for `partial_success.error_message` (empty when nothing was rejected).
    pub fn error_message(&self) -> String {
        match self.count {
            0 => String::new(),
            1 => self.first_message.clone(),
            count => format!("{count} items rejected; first: {}", self.first_message),
        }
    }
}

/// The outcome of an accepted export: what goes into `partial_success`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportOutcome {
    /// Items rejected (spans, data points, log records).
    pub rejected: i64,
    /// Why (empty when none).
    pub error_message: String,
}

/// Why an export was not accepted. Mapped once to HTTP ([`http`]) and gRPC ([`grpc`]).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The request cannot be decoded.
    #[error("{0}")]
    InvalidArgument(String),
    /// Too many exports are being written; retry later.
    #[error("too many exports in progress, retry later")]
    TooManyRequests,
    /// The store is overloaded or failed; nothing was written; retry later.
    #[error("{0}")]
    Unavailable(String),
}

/// What OTLP ingest writes into, and its state. Cheap to clone.
#[derive(Clone)]
pub struct OtlpIngest {
    spans: Arc<dyn SpanSink>,
    logs: Arc<dyn LogSink>,
    metrics: Arc<dyn MetricSink>,
    metrics_state: Arc<Mutex<MetricsState>>,
    telemetry: Telemetry,
    options: Arc<OtlpOptions>,
    write_slots: Arc<Semaphore>,
}

impl OtlpIngest {
    /// Returns ingest writing spans, logs and metrics into the given sinks.
    pub fn new(
        spans: Arc<dyn SpanSink>,
        logs: Arc<dyn LogSink>,
        metrics: Arc<dyn MetricSink>,
        telemetry: Telemetry,
        options: OtlpOptions,
    ) -> Self {
        OtlpIngest {
            spans,
            logs,
            metrics,
            metrics_state: Arc::new(Mutex::new(MetricsState::new(
                options.max_accumulated_series,
            ))),
            telemetry,
            write_slots: Arc::new(Semaphore::new(options.max_pending_writes.max(1))),
            options: Arc::new(options),
        }
    }

    /// Returns the limits.
    pub fn options(&self) -> &OtlpOptions {
        &self.options
    }

    /// Returns the telemetry registry.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Converts and writes the spans of an export.
    ///
    /// # Errors
    /// [`ExportError`] when nothing was acknowledged.
    pub async fn export_traces(
        &self,
        protocol: &'static str,
        request: ExportTraceServiceRequest,
    ) -> Result<ExportOutcome, ExportError> {
        let sink = self.spans.clone();
        let telemetry = self.telemetry.clone();
        self.on_blocking_thread(protocol, move || {
            let converted = traces::convert_traces(request);
            count_items(
                &telemetry,
                protocol,
                converted.spans.len() as u64 + converted.rejections.count,
                &converted.rejections,
            );
            let span_count = converted.spans.len() as u64;
            if span_count > 0 {
                sink.write(converted.spans).map_err(|error| match error {
                    SpanSinkError::Overloaded => {
                        telemetry
                            .ingest_dropped(protocol, "overloaded")
                            .add(span_count);
                        ExportError::Unavailable(error.to_string())
                    }
                    SpanSinkError::Storage(_) => ExportError::Unavailable(error.to_string()),
                })?;
            }
            Ok(outcome(&converted.rejections))
        })
        .await
    }

    /// Converts and writes the log records of an export.
    ///
    /// # Errors
    /// [`ExportError`] when nothing was acknowledged.
    pub async fn export_logs(
        &self,
        protocol: &'static str,
        request: ExportLogsServiceRequest,
    ) -> Result<ExportOutcome, ExportError> {
        let sink = self.logs.clone();
        let telemetry = self.telemetry.clone();
        let options = self.options.clone();
        self.on_blocking_thread(protocol, move || {
            let converted = logs::convert_logs(
                &request,
                crate::sources::json_logs::now_ns(),
                &options.normalize,
            );
            count_items(
                &telemetry,
                protocol,
                converted.records.len() as u64 + converted.rejections.count,
                &converted.rejections,
            );
            let record_count = converted.records.len() as u64;
            if record_count > 0 {
                sink.write(converted.records).map_err(|error| match error {
                    LogSinkError::Overloaded => {
                        telemetry
                            .ingest_dropped(protocol, "overloaded")
                            .add(record_count);
                        ExportError::Unavailable(error.to_string())
                    }
                    LogSinkError::Storage(_) => ExportError::Unavailable(error.to_string()),
                })?;
            }
            Ok(outcome(&converted.rejections))
        })
        .await
    }

    /// Converts and writes the data points of an export.
    ///
    /// # Errors
    /// [`ExportError`] when nothing was acknowledged.
    pub async fn export_metrics(
        &self,
        protocol: &'static str,
        request: ExportMetricsServiceRequest,
    ) -> Result<ExportOutcome, ExportError> {
        let sink = self.metrics.clone();
        let telemetry = self.telemetry.clone();
        let state = self.metrics_state.clone();
        self.on_blocking_thread(protocol, move || {
            // The state stays locked until the write's outcome is known, so delta totals and
            // exponential-histogram buckets move only with what the store acknowledged.
            let mut state = state.lock();
            let mut converted =
                metrics::convert_metrics(&request, &mut state, crate::http::now_ms());
            count_items(
                &telemetry,
                protocol,
                converted.points,
                &converted.rejections,
            );
            if converted.batch.is_empty() {
                state.commit();
                return Ok(outcome(&converted.rejections));
            }
            let sample_count = converted.batch.sample_count() as u64;
            match sink.write(converted.batch) {
                Ok(()) => state.commit(),
                Err(SinkError::LimitExceeded { rejected, reason }) => {
                    state.commit();
                    telemetry
                        .ingest_rejected(protocol, "series_limit")
                        .add(rejected as u64);
                    converted.rejections.reject((
                        "series_limit",
                        format!("{rejected} series rejected: {reason}"),
                    ));
                    converted.rejections.count += (rejected as u64).saturating_sub(1);
                }
                Err(SinkError::Overloaded) => {
                    state.rollback();
                    telemetry
                        .ingest_dropped(protocol, "overloaded")
                        .add(sample_count);
                    return Err(ExportError::Unavailable(SinkError::Overloaded.to_string()));
                }
                Err(error @ SinkError::Storage(_)) => {
                    state.rollback();
                    return Err(ExportError::Unavailable(error.to_string()));
                }
            }
            Ok(outcome(&converted.rejections))
        })
        .await
    }

    /// Runs `work` on a blocking thread once a write slot is free.
    async fn on_blocking_thread(
        &self,
        protocol: &'static str,
        work: impl FnOnce() -> Result<ExportOutcome, ExportError> + Send + 'static,
    ) -> Result<ExportOutcome, ExportError> {
        let slot = tokio::time::timeout(WRITE_SLOT_WAIT, self.write_slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                self.telemetry
                    .ingest_dropped(protocol, "too_many_requests")
                    .inc();
                ExportError::TooManyRequests
            })?
            .map_err(|_| ExportError::TooManyRequests)?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work()
        })
        .await
        .map_err(|error| ExportError::Unavailable(format!("export task failed: {error}")))?
    }
}

fn count_items(telemetry: &Telemetry, protocol: &'static str, items: u64, rejections: &Rejections) {
    telemetry.ingest_received(protocol).add(items);
    for (reason, count) in &rejections.by_reason {
        telemetry.ingest_rejected(protocol, reason).add(*count);
    }
    if rejections.count > 0 {
        tracing::debug!(
            protocol,
            rejected = rejections.count,
            first = %rejections.first_message,
            "rejected OTLP items"
        );
    }
}

fn outcome(rejections: &Rejections) -> ExportOutcome {
    ExportOutcome {
        rejected: i64::try_from(rejections.count).unwrap_or(i64::MAX),
        error_message: rejections.error_message(),
    }
}

/// Serves OTLP/gRPC on `grpc_listener` and OTLP/HTTP on `http_listener` (either may be absent)
/// until `shutdown`.
pub async fn run(
    ingest: OtlpIngest,
    grpc_listener: Option<tokio::net::TcpListener>,
    http_listener: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) {
    let mut servers = tokio::task::JoinSet::new();
    if let Some(listener) = grpc_listener {
        let ingest = ingest.clone();
        let shutdown = shutdown.clone();
        servers.spawn(async move {
            if let Err(error) = grpc::serve(ingest, listener, shutdown).await {
                tracing::error!(%error, "OTLP/gRPC server stopped");
            }
        });
    }
    if let Some(listener) = http_listener {
        servers.spawn(async move {
            let router = http::router(ingest);
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "OTLP/HTTP server stopped");
            }
        });
    }
    while servers.join_next().await.is_some() {}
}
