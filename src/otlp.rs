//! The OTLP path of `vigil serve`: binds `otlp.grpc_listen` and `otlp.http_listen` (a port in
//! use stops Vigil at start with an error naming the key), and serves OTLP traces, metrics and
//! logs until shutdown. Spans go through the span-metrics wrapper into the span store, whose
//! `vigil_span_*` metrics are written every `statsd.flush_interval`.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use vigil_collector::sources::json_logs::NormalizeOptions;
use vigil_collector::sources::otlp::{OtlpIngest, OtlpOptions};
use vigil_collector::span_metrics::{run_flusher, SpanMetricsSink, DEFAULT_MAX_SERIES};
use vigil_model::{LogSink, MetricSink, SpanSink, Telemetry};

use crate::config::{listen_address, Config};

/// Where OTLP ingest writes.
pub struct OtlpSinks {
    /// The span store.
    pub spans: Arc<dyn SpanSink>,
    /// The log store.
    pub logs: Arc<dyn LogSink>,
    /// The metric store (through the sink that wakes alert rules).
    pub metrics: Arc<dyn MetricSink>,
}

/// Binds the OTLP listeners and returns the task serving them and flushing span metrics, or
/// `None` when both listeners are disabled.
///
/// # Errors
/// When an address is invalid or cannot be bound.
pub async fn start(
    config: &Config,
    sinks: OtlpSinks,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<impl Future<Output = ()> + Send + 'static>> {
    let grpc_address = listen_address("otlp.grpc_listen", &config.otlp.grpc_listen)?;
    let http_address = listen_address("otlp.http_listen", &config.otlp.http_listen)?;
    if grpc_address.is_none() && http_address.is_none() {
        return Ok(None);
    }
    let mut grpc_listener = None;
    if let Some(address) = grpc_address {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("failed to bind otlp.grpc_listen on {address}"))?;
        tracing::info!(%address, "OTLP/gRPC listening");
        grpc_listener = Some(listener);
    }
    let mut http_listener = None;
    if let Some(address) = http_address {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("failed to bind otlp.http_listen on {address}"))?;
        tracing::info!(%address, "OTLP/HTTP listening");
        http_listener = Some(listener);
    }
    let span_metrics = Arc::new(SpanMetricsSink::new(
        sinks.spans,
        &telemetry,
        DEFAULT_MAX_SERIES,
        config.statsd.percentiles.clone(),
    ));
    let options = OtlpOptions {
        max_message_bytes: usize::try_from(config.server.max_body_bytes).unwrap_or(usize::MAX),
        tokens: config.auth.ingest_tokens(),
        normalize: NormalizeOptions {
            correlation_fields: config.logs.correlation_fields.clone(),
            ..NormalizeOptions::default()
        },
        ..OtlpOptions::default()
    };
    let ingest = OtlpIngest::new(
        span_metrics.clone(),
        sinks.logs,
        sinks.metrics.clone(),
        telemetry,
        options,
    );
    let flush_interval = config.statsd.flush_interval;
    Ok(Some(async move {
        tokio::join!(
            vigil_collector::sources::otlp::run(
                ingest,
                grpc_listener,
                http_listener,
                shutdown.clone()
            ),
            run_flusher(span_metrics, sinks.metrics, flush_interval, shutdown),
        );
    }))
}
