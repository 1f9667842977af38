//! What the HTTP ingest endpoints share: their state, the write path into the metric sink with
//! backpressure, and the error body `{"status":"error","errorType":..,"error":..}` (Vigil's
//! one API error type, [`vigil_model::api::ApiError`]).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::Semaphore;
use vigil_model::{MetricBatch, MetricSink, SinkError, Telemetry};

/// State shared by the HTTP ingest handlers.
#[derive(Clone)]
pub struct IngestState {
    /// Where metrics go.
    pub sink: Arc<dyn MetricSink>,
    /// Vigil's own counters.
    pub telemetry: Telemetry,
    /// Caps the writes waiting on the store; past it clients get 503 with Retry-After.
    pub write_permits: Arc<Semaphore>,
}

impl IngestState {
    /// Returns ingest state with at most `max_pending_writes` writes waiting on the store.
    pub fn new(sink: Arc<dyn MetricSink>, telemetry: Telemetry, max_pending_writes: usize) -> Self {
        IngestState {
            sink,
            telemetry,
            write_permits: Arc::new(Semaphore::new(max_pending_writes)),
        }
    }

    /// Writes a batch durably, off the async runtime, waiting at most a few seconds for room.
    ///
    /// # Errors
    /// [`ApiError`] with 503 when the store is overloaded, 500 when it fails, 422 when limits
    /// rejected some series.
    pub async fn write(&self, protocol: &'static str, batch: MetricBatch) -> Result<(), ApiError> {
        let queue_depth = self.telemetry.gauge(
            "vigil_queue_depth",
            "Items waiting in or being taken from a bounded queue, per queue.",
            &[("queue", "metric_writes")],
        );
        queue_depth.add(1);
        let result = self.write_queued(protocol, batch).await;
        queue_depth.add(-1);
        result
    }

    async fn write_queued(
        &self,
        protocol: &'static str,
        batch: MetricBatch,
    ) -> Result<(), ApiError> {
        let permit = tokio::time::timeout(
            Duration::from_secs(5),
            self.write_permits.clone().acquire_owned(),
        )
        .await
        .map_err(|_| {
            self.telemetry
                .ingest_dropped(protocol, "overloaded")
                .add(batch.sample_count() as u64);
            store_overloaded()
        })?
        .map_err(|_| store_overloaded())?;
        let sink = self.sink.clone();
        let sample_count = batch.sample_count() as u64;
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            sink.write(batch)
        })
        .await
        .map_err(|error| ApiError::internal(format!("write task failed: {error}")))?;
        match result {
            Ok(()) => Ok(()),
            Err(SinkError::Overloaded) => {
                self.telemetry
                    .ingest_dropped(protocol, "overloaded")
                    .add(sample_count);
                Err(store_overloaded())
            }
            Err(SinkError::LimitExceeded { rejected, reason }) => {
                self.telemetry
                    .ingest_rejected(protocol, "series_limit")
                    .add(rejected as u64);
                Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad_data",
                    format!("{rejected} series rejected: {reason}; the other series were written"),
                ))
            }
            Err(SinkError::Storage(message)) => Err(ApiError::internal(message)),
        }
    }
}

pub use vigil_model::api::ApiError;

/// 503 `unavailable` (answered with `Retry-After`): the metric store refused a write.
pub fn store_overloaded() -> ApiError {
    ApiError::unavailable("metric store is overloaded, retry later")
}

/// Reads a request body, counting and answering a body over `server.max_body_bytes` (413) or
/// one that could not be read (400) in the protocol's rejection counter.
///
/// # Errors
/// [`ApiError`] with 413 or 400.
pub fn body_or_rejection(
    telemetry: &Telemetry,
    protocol: &'static str,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, ApiError> {
    match body {
        Ok(bytes) => Ok(bytes),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            telemetry.ingest_rejected(protocol, "body_too_large").inc();
            Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_data",
                "request body exceeds server.max_body_bytes",
            ))
        }
        Err(rejection) => {
            telemetry.ingest_rejected(protocol, "unreadable_body").inc();
            Err(ApiError::new(
                rejection.status(),
                "bad_data",
                format!("cannot read the request body: {rejection}"),
            ))
        }
    }
}

/// Returns milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}
