//! JSON log ingest over HTTP: `POST /api/v1/logs` (NDJSON or a JSON array) and the
//! Elasticsearch bulk API (`/api/v1/es/_bulk`, `/_bulk`, `/{index}/_bulk`). Gzip bodies are
//! decompressed by the server's layer before they get here.
//!
//! Pipeline of a request: read the body (413 past `server.max_body_bytes`) → split into
//! documents ([`decode`], [`bulk`]) → normalise each ([`normalize`]) → write the good ones
//! through the [`LogSink`] on a blocking thread (at most a bounded number of writes wait) →
//! answer with per-line outcomes. Good lines of a body are kept when others are refused.

pub mod bulk;
pub mod decode;
pub mod normalize;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use vigil_model::{LogRecord, LogSink, LogSinkError, Telemetry};

use crate::http::{body_or_rejection, ApiError};
use bulk::{decode_bulk, BulkAction};
use decode::decode_body;
pub use normalize::NormalizeOptions;

const PROTOCOL_LOGS: &str = "logs";
const PROTOCOL_ES_BULK: &str = "es_bulk";
/// At most this many per-line errors are listed in a response.
const MAX_LISTED_ERRORS: usize = 1_000;
/// The index name answered for bulk items that named none.
const DEFAULT_INDEX: &str = "vigil-logs";

/// Limits and field names of JSON log ingest.
#[derive(Clone, Debug)]
pub struct JsonLogsOptions {
    /// Lines longer than this are refused (`storage.limits.log_line_bytes`).
    pub max_line_bytes: usize,
    /// Field names and the field-count limit.
    pub normalize: NormalizeOptions,
    /// Writes waiting on the store at once; past it clients get 503 with Retry-After.
    pub max_pending_writes: usize,
}

impl Default for JsonLogsOptions {
    fn default() -> Self {
        JsonLogsOptions {
            max_line_bytes: 256 << 10,
            normalize: NormalizeOptions::default(),
            max_pending_writes: 64,
        }
    }
}

/// State of the log ingest handlers.
#[derive(Clone)]
pub struct LogIngestState {
    sink: Arc<dyn LogSink>,
    telemetry: Telemetry,
    options: Arc<JsonLogsOptions>,
    write_permits: Arc<Semaphore>,
}

impl LogIngestState {
    /// Returns handler state writing into `sink`.
    pub fn new(sink: Arc<dyn LogSink>, telemetry: Telemetry, options: JsonLogsOptions) -> Self {
        let write_permits = Arc::new(Semaphore::new(options.max_pending_writes.max(1)));
        LogIngestState {
            sink,
            telemetry,
            options: Arc::new(options),
            write_permits,
        }
    }

    /// Writes records durably off the async runtime.
    async fn write(&self, protocol: &'static str, records: Vec<LogRecord>) -> Result<(), ApiError> {
        if records.is_empty() {
            return Ok(());
        }
        let record_count = records.len() as u64;
        let permit = tokio::time::timeout(
            Duration::from_secs(5),
            self.write_permits.clone().acquire_owned(),
        )
        .await
        .map_err(|_| {
            self.telemetry
                .ingest_dropped(protocol, "overloaded")
                .add(record_count);
            log_store_overloaded()
        })?
        .map_err(|_| log_store_overloaded())?;
        let sink = self.sink.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            sink.write(records)
        })
        .await
        .map_err(|error| ApiError::internal(format!("log write task failed: {error}")))?;
        match result {
            Ok(()) => Ok(()),
            Err(LogSinkError::Overloaded) => {
                self.telemetry
                    .ingest_dropped(protocol, "overloaded")
                    .add(record_count);
                Err(log_store_overloaded())
            }
            Err(LogSinkError::Storage(message)) => Err(ApiError::internal(message)),
        }
    }
}

fn log_store_overloaded() -> ApiError {
    ApiError::unavailable("log store is overloaded, retry later")
}

/// One refused line of a `POST /api/v1/logs` body.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LineOutcomeError {
    /// 1-based line number (element position for a JSON array).
    pub line: usize,
    /// Why it was refused.
    pub error: String,
}

/// The answer to `POST /api/v1/logs`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LogsResponse {
    /// Lines stored.
    pub accepted: usize,
    /// Lines refused.
    pub rejected: usize,
    /// The refused lines with reasons (the first 1,000).
    pub errors: Vec<LineOutcomeError>,
}

/// A decoded `POST /api/v1/logs` body: the records to write, the errors, and the reject
/// count per reason.
#[derive(Debug, Default)]
pub struct DecodedLogs {
    /// Normalised records.
    pub records: Vec<LogRecord>,
    /// Refused lines (all of them).
    pub errors: Vec<LineOutcomeError>,
    /// Refused lines per reason label.
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
}

/// Decodes and normalises a `POST /api/v1/logs` body. Pure.
pub fn decode_logs_body(
    body: &[u8],
    receive_time_ns: i64,
    options: &JsonLogsOptions,
) -> DecodedLogs {
    let mut decoded = DecodedLogs::default();
    for line in decode_body(body, options.max_line_bytes) {
        let normalized = match line.outcome {
            Ok((document, original)) => {
                normalize::normalize(document, &original, receive_time_ns, &options.normalize)
                    .map_err(|error| (error.reason(), error.to_string()))
            }
            Err(error) => Err((error.reason(), error.to_string())),
        };
        match normalized {
            Ok(record) => decoded.records.push(record),
            Err((reason, message)) => {
                *decoded.rejected_by_reason.entry(reason).or_insert(0) += 1;
                decoded.errors.push(LineOutcomeError {
                    line: line.line,
                    error: message,
                });
            }
        }
    }
    decoded
}

/// Returns nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn post_logs(
    State(state): State<LogIngestState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_rejection(&state.telemetry, PROTOCOL_LOGS, body)?;
    let options = state.options.clone();
    let decoded = tokio::task::spawn_blocking(move || decode_logs_body(&body, now_ns(), &options))
        .await
        .map_err(|error| ApiError::internal(format!("decode task failed: {error}")))?;
    let accepted = decoded.records.len();
    let rejected = decoded.errors.len();
    state
        .telemetry
        .ingest_received(PROTOCOL_LOGS)
        .add((accepted + rejected) as u64);
    for (reason, count) in &decoded.rejected_by_reason {
        state
            .telemetry
            .ingest_rejected(PROTOCOL_LOGS, reason)
            .add(*count);
    }
    let mut errors = decoded.errors;
    errors.truncate(MAX_LISTED_ERRORS);
    let response = LogsResponse {
        accepted,
        rejected,
        errors,
    };
    if accepted == 0 {
        if rejected == 0 {
            return Err(ApiError::bad_data("the body holds no log line"));
        }
        return Ok((StatusCode::BAD_REQUEST, Json(response)).into_response());
    }
    state.write(PROTOCOL_LOGS, decoded.records).await?;
    Ok(Json(response).into_response())
}

async fn post_bulk(
    State(state): State<LogIngestState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    bulk_with_index(state, None, body).await
}

async fn post_bulk_with_index(
    State(state): State<LogIngestState>,
    Path(index): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    bulk_with_index(state, Some(index), body).await
}

static GENERATED_IDS: AtomicU64 = AtomicU64::new(0);

/// Returns a unique-enough document ID for items that named none (time and a counter).
fn generated_id() -> String {
    let counter = GENERATED_IDS.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{:06x}", now_ns(), counter & 0xff_ffff)
}

async fn bulk_with_index(
    state: LogIngestState,
    path_index: Option<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let body = body_or_rejection(&state.telemetry, PROTOCOL_ES_BULK, body)?;
    let options = state.options.clone();
    let telemetry = state.telemetry.clone();
    let decoded = tokio::task::spawn_blocking(move || {
        decode_bulk_body(&body, path_index.as_deref(), now_ns(), &options, &telemetry)
    })
    .await
    .map_err(|error| ApiError::internal(format!("decode task failed: {error}")))?;
    let (records, items, any_error) = match decoded {
        Ok(decoded) => decoded,
        Err(error) => {
            state
                .telemetry
                .ingest_rejected(PROTOCOL_ES_BULK, "malformed_body")
                .inc();
            return Err(ApiError::bad_data(error.to_string()));
        }
    };
    state.write(PROTOCOL_ES_BULK, records).await?;
    let took_ms = started.elapsed().as_millis() as u64;
    Ok(Json(json!({
        "took": took_ms,
        "errors": any_error,
        "items": items,
    }))
    .into_response())
}

type DecodedBulk = (Vec<LogRecord>, Vec<Value>, bool);

/// Decodes a bulk body into records and Elasticsearch response items, counting received and
/// rejected items.
///
/// # Errors
/// [`bulk::BulkError`] when an action line cannot be understood.
fn decode_bulk_body(
    body: &[u8],
    path_index: Option<&str>,
    receive_time_ns: i64,
    options: &JsonLogsOptions,
    telemetry: &Telemetry,
) -> Result<DecodedBulk, bulk::BulkError> {
    let items = decode_bulk(body, options.max_line_bytes)?;
    telemetry
        .ingest_received(PROTOCOL_ES_BULK)
        .add(items.len() as u64);
    let mut records = Vec::with_capacity(items.len());
    let mut response_items = Vec::with_capacity(items.len());
    let mut any_error = false;
    for item in items {
        let index_name = item
            .index
            .clone()
            .or_else(|| path_index.map(str::to_string))
            .unwrap_or_else(|| DEFAULT_INDEX.to_string());
        let id = item.id.clone().unwrap_or_else(generated_id);
        let key = item.action.response_key(&item.action_name);
        let outcome = match item.source {
            Ok((document, original)) => {
                normalize::normalize(document, &original, receive_time_ns, &options.normalize)
                    .map_err(|error| (error.reason(), error.to_string()))
            }
            Err(message) => {
                let reason = if item.action == BulkAction::Unsupported {
                    "unsupported_action"
                } else {
                    "malformed_line"
                };
                Err((reason, message))
            }
        };
        match outcome {
            Ok(record) => {
                records.push(record);
                response_items.push(json!({ key: {
                    "_index": index_name,
                    "_id": id,
                    "_version": 1,
                    "result": "created",
                    "status": 201,
                }}));
            }
            Err((reason, message)) => {
                any_error = true;
                telemetry.ingest_rejected(PROTOCOL_ES_BULK, reason).inc();
                let error_type = if reason == "unsupported_action" {
                    "illegal_argument_exception"
                } else {
                    "document_parsing_exception"
                };
                response_items.push(json!({ key: {
                    "_index": index_name,
                    "_id": id,
                    "status": 400,
                    "error": {
                        "type": error_type,
                        "reason": format!("line {}: {message}", item.line),
                    },
                }}));
            }
        }
    }
    Ok((records, response_items, any_error))
}

/// The version Vigil reports to Elasticsearch clients that ask (Fluentd's and Vector's outputs
/// pick their request format from it): 8.x, whose bulk format Vigil answers.
const ELASTICSEARCH_VERSION: &str = "8.11.0";

/// `GET /api/v1/es/`: the Elasticsearch root document, for shippers that check the version.
async fn elasticsearch_info() -> Json<Value> {
    Json(json!({
        "name": "vigil",
        "cluster_name": "vigil",
        "cluster_uuid": "vigil",
        "version": {
            "number": ELASTICSEARCH_VERSION,
            "build_flavor": "default",
            "lucene_version": "9.8.0",
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0",
        },
        "tagline": "You Know, for Search",
    }))
}

/// `GET /api/v1/es/_cluster/health`, for shippers' health checks.
async fn elasticsearch_health() -> Json<Value> {
    Json(json!({"cluster_name": "vigil", "status": "green", "timed_out": false}))
}

/// Returns the router for `POST /api/v1/logs` and the Elasticsearch bulk endpoints.
pub fn router(state: LogIngestState) -> Router {
    Router::new()
        .route("/api/v1/logs", post(post_logs))
        .route("/api/v1/es/_bulk", post(post_bulk))
        .route("/_bulk", post(post_bulk))
        .route("/{index}/_bulk", post(post_bulk_with_index))
        .route("/api/v1/es/{index}/_bulk", post(post_bulk_with_index))
        .route(
            "/api/v1/es",
            get(elasticsearch_info).head(elasticsearch_info),
        )
        .route(
            "/api/v1/es/",
            get(elasticsearch_info).head(elasticsearch_info),
        )
        .route("/api/v1/es/_cluster/health", get(elasticsearch_health))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    use vigil_model::MemoryLogSink;

    fn app() -> (Router, Arc<MemoryLogSink>, Telemetry) {
        let sink = Arc::new(MemoryLogSink::new());
        let telemetry = Telemetry::new();
        let state =
            LogIngestState::new(sink.clone(), telemetry.clone(), JsonLogsOptions::default());
        (router(state), sink, telemetry)
    }

    async fn post(app: Router, path: &str, body: &str) -> (StatusCode, Value) {
        let response = app
            .oneshot(
                Request::post(path)
                    .body(Body::from(body.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn good_lines_are_kept_and_bad_ones_numbered() {
        let (app, sink, telemetry) = app();
        let body = "{\"message\":\"one\",\"level\":\"info\"}\n{oops\n{\"message\":\"three\"}\n";
        let (status, answer) = post(app, "/api/v1/logs", body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["accepted"], 2);
        assert_eq!(answer["rejected"], 1);
        assert_eq!(answer["errors"][0]["line"], 2);
        assert!(answer["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("invalid JSON"));
        assert_eq!(sink.records().len(), 2);
        let metrics = telemetry.render();
        assert!(
            metrics.contains("vigil_ingest_received_total{protocol=\"logs\"} 3"),
            "{metrics}"
        );
        assert!(
            metrics.contains("reason=\"malformed_line\"} 1"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn elasticsearch_clients_see_a_version() {
        let (app, _, _) = app();
        let response = app
            .oneshot(Request::get("/api/v1/es/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let info: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(info["version"]["number"], ELASTICSEARCH_VERSION);
    }

    #[tokio::test]
    async fn all_bad_lines_answer_400() {
        let (app, sink, _) = app();
        let (status, answer) = post(app, "/api/v1/logs", "[1, 2]").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(answer["rejected"], 2);
        assert!(sink.records().is_empty());
    }

    #[tokio::test]
    async fn bulk_answers_in_elasticsearch_shape() {
        let (app, sink, telemetry) = app();
        let body = concat!(
            "{\"create\":{\"_index\":\"fluent-bit\"}}\n",
            "{\"@timestamp\":\"2024-05-01T12:00:00.000Z\",\"log\":\"hello\"}\n",
            "{\"index\":{\"_id\":\"a1\"}}\n",
            "{\"message\": 12\n",
        );
        let (status, answer) = post(app.clone(), "/orders/_bulk", body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["errors"], true);
        assert_eq!(answer["items"][0]["create"]["status"], 201);
        assert_eq!(answer["items"][0]["create"]["_index"], "fluent-bit");
        assert_eq!(answer["items"][1]["index"]["status"], 400);
        assert_eq!(answer["items"][1]["index"]["_index"], "orders");
        assert_eq!(answer["items"][1]["index"]["_id"], "a1");
        assert!(answer["took"].is_u64());
        assert_eq!(sink.records().len(), 1);
        assert_eq!(sink.records()[0].message, "hello");
        let (status, _) = post(app, "/api/v1/es/_bulk", "{\"index\":{}}\n{\"msg\":\"x\"}\n").await;
        assert_eq!(status, StatusCode::OK);
        assert!(telemetry
            .render()
            .contains("vigil_ingest_received_total{protocol=\"es_bulk\"} 3"));
    }
}
