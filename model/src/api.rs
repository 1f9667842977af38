//! What the HTTP query APIs of the stores share: the JSON error every endpoint answers with
//! (`{"status":"error","errorType":..,"error":..}`, DESIGN.md §4), and a pool that runs
//! blocking queries with a bounded number in flight.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::Semaphore;

/// An error answered as `{"status":"error","errorType":..,"error":..}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Prometheus-style error type (`bad_data`, `not_found`, `unavailable`, `internal`).
    pub error_type: &'static str,
    /// Human-readable reason.
    pub message: String,
}

impl ApiError {
    /// Returns an error with the given status, type and message.
    pub fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error_type,
            message: message.into(),
        }
    }

    /// 400 `bad_data`.
    pub fn bad_data(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_data", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500 `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    /// The JSON error; a 503 or 429 also says `Retry-After: 1`, so clients back off.
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({
            "status": "error",
            "errorType": self.error_type,
            "error": self.message,
        }));
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            return (self.status, [(header::RETRY_AFTER, "1")], body).into_response();
        }
        (self.status, body).into_response()
    }
}

/// Runs blocking queries on tokio's blocking pool, at most `concurrency` at a time; a query
/// that waits more than 30 s for its turn is answered 503.
#[derive(Clone)]
pub struct QueryPool {
    permits: Arc<Semaphore>,
    /// What the 503 says, for example "too many log searches at once, retry later".
    busy_message: &'static str,
}

impl QueryPool {
    /// How long a query waits for its turn.
    const PATIENCE: Duration = Duration::from_secs(30);

    /// Returns a pool running at most `concurrency` queries at once.
    pub fn new(concurrency: usize, busy_message: &'static str) -> Self {
        QueryPool {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            busy_message,
        }
    }

    /// Runs `work` on the blocking pool once a permit is free.
    ///
    /// # Errors
    /// 503 when no permit frees up in time, 500 when the task fails, else `work`'s error.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = tokio::time::timeout(Self::PATIENCE, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::unavailable(self.busy_message))?
            .map_err(|_| ApiError::internal("query pool closed"))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|error| ApiError::internal(format!("query task failed: {error}")))?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_query_runs_and_its_error_keeps_its_status() {
        let pool = QueryPool::new(1, "busy");
        assert_eq!(pool.run(|| Ok(7)).await.unwrap(), 7);
        let error = pool
            .run(|| Err::<(), _>(ApiError::bad_data("no")))
            .await
            .unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_waiting_too_long_for_a_permit_is_unavailable() {
        let pool = QueryPool::new(1, "too many at once");
        let held = pool.permits.clone().acquire_owned().await.unwrap();
        let error = pool.run(|| Ok(())).await.unwrap_err();
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.message, "too many at once");
        let response = error.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        drop(held);
    }

    #[tokio::test]
    async fn the_body_is_the_prometheus_error_shape() {
        let response = ApiError::not_found("no such trace").into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status": "error", "errorType": "not_found", "error": "no such trace"})
        );
    }
}
