//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics` and `/v1/logs` with `Content-Type:
//! application/x-protobuf` or `application/json` (the OTLP/JSON encoding: lowerCamelCase keys,
//! hex trace and span IDs, 64-bit integers as strings or numbers, enums as integers), gzip
//! `Content-Encoding` accepted.
//!
//! Answers, per the OTLP/HTTP specification: 200 with the `Export*ServiceResponse` in the
//! request's encoding (with `partialSuccess` when items were rejected); 400 with a
//! `google.rpc.Status` in the request's encoding when the body does not decode; 415 for other
//! content types; 413 past `server.max_body_bytes` (after decompression); 429 when too many
//! exports are in progress and 503 when the store is overloaded or failed, both with
//! `Retry-After`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::de::DeserializeOwned;
use serde_json::json;
use tower_http::decompression::RequestDecompressionLayer;

use super::{ExportError, ExportOutcome, OtlpIngest, PROTOCOL_HTTP};
use crate::tokens::IngestTokens;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// The encoding of a request, and so of its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json`.
    Json,
}

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// A `google.rpc.Code`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What went wrong.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// An OTLP/HTTP error answer.
struct OtlpHttpError {
    status: StatusCode,
    encoding: Encoding,
    message: String,
}

impl IntoResponse for OtlpHttpError {
    fn into_response(self) -> Response {
        let code = match self.status {
            StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => 3, // INVALID_ARGUMENT
            StatusCode::PAYLOAD_TOO_LARGE => 11,                               // OUT_OF_RANGE
            StatusCode::TOO_MANY_REQUESTS => 8,                                // RESOURCE_EXHAUSTED
            StatusCode::SERVICE_UNAVAILABLE => 14,                             // UNAVAILABLE
            StatusCode::UNAUTHORIZED => 16,                                    // UNAUTHENTICATED
            _ => 13,                                                           // INTERNAL
        };
        let rpc_status = RpcStatus {
            code,
            message: self.message,
        };
        let mut response = encoded(
            self.encoding,
            &rpc_status,
            || json!({"code": rpc_status.code, "message": rpc_status.message}),
        );
        *response.status_mut() = self.status;
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

fn encoded(
    encoding: Encoding,
    message: &impl Message,
    as_json: impl FnOnce() -> serde_json::Value,
) -> Response {
    match encoding {
        Encoding::Protobuf => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF))],
            message.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
            as_json().to_string(),
        )
            .into_response(),
    }
}

/// Returns the encoding named by `Content-Type` (parameters such as `charset` ignored).
fn request_encoding(headers: &HeaderMap) -> Option<Encoding> {
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media_type = content_type.split(';').next()?.trim();
    if media_type.eq_ignore_ascii_case(PROTOBUF) {
        Some(Encoding::Protobuf)
    } else if media_type.eq_ignore_ascii_case(JSON) {
        Some(Encoding::Json)
    } else {
        None
    }
}

/// Decodes a request body. Pure.
///
/// # Errors
/// [`ExportError::InvalidArgument`] when the body is not the message in that encoding.
pub fn decode_request<Request: Message + Default + DeserializeOwned>(
    encoding: Encoding,
    body: &[u8],
) -> Result<Request, ExportError> {
    match encoding {
        Encoding::Protobuf => Request::decode(body).map_err(|error| {
            ExportError::InvalidArgument(format!("the body is not valid protobuf: {error}"))
        }),
        Encoding::Json => serde_json::from_slice(body).map_err(|error| {
            ExportError::InvalidArgument(format!("the body is not valid OTLP/JSON: {error}"))
        }),
    }
}

/// The signal-specific parts of a handler.
trait HttpSignal {
    type Request: Message + Default + DeserializeOwned + Send + 'static;
    /// The `rejected_*` field of the partial success.
    const REJECTED_FIELD: &'static str;
    fn export(
        ingest: &OtlpIngest,
        request: Self::Request,
    ) -> impl std::future::Future<Output = Result<ExportOutcome, ExportError>> + Send;
}

struct Traces;
struct Metrics;
struct Logs;

impl HttpSignal for Traces {
    type Request = ExportTraceServiceRequest;
    const REJECTED_FIELD: &'static str = "rejectedSpans";
    async fn export(
        ingest: &OtlpIngest,
        request: Self::Request,
    ) -> Result<ExportOutcome, ExportError> {
        ingest.export_traces(PROTOCOL_HTTP, request).await
    }
}

impl HttpSignal for Metrics {
    type Request = ExportMetricsServiceRequest;
    const REJECTED_FIELD: &'static str = "rejectedDataPoints";
    async fn export(
        ingest: &OtlpIngest,
        request: Self::Request,
    ) -> Result<ExportOutcome, ExportError> {
        ingest.export_metrics(PROTOCOL_HTTP, request).await
    }
}

impl HttpSignal for Logs {
    type Request = ExportLogsServiceRequest;
    const REJECTED_FIELD: &'static str = "rejectedLogRecords";
    async fn export(
        ingest: &OtlpIngest,
        request: Self::Request,
    ) -> Result<ExportOutcome, ExportError> {
        ingest.export_logs(PROTOCOL_HTTP, request).await
    }
}

/// `partial_success` as protobuf: every `Export*PartialSuccess` is `(int64 rejected = 1,
/// string error_message = 2)`, and every response holds it as field 1.
#[derive(Clone, PartialEq, prost::Message)]
struct PartialSuccess {
    #[prost(int64, tag = "1")]
    rejected: i64,
    #[prost(string, tag = "2")]
    error_message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExportResponse {
    #[prost(message, optional, tag = "1")]
    partial_success: Option<PartialSuccess>,
}

async fn export<S: HttpSignal>(
    State(ingest): State<OtlpIngest>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match export_inner::<S>(&ingest, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn export_inner<S: HttpSignal>(
    ingest: &OtlpIngest,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OtlpHttpError> {
    let telemetry = ingest.telemetry();
    let Some(encoding) = request_encoding(headers) else {
        telemetry
            .ingest_rejected(PROTOCOL_HTTP, "unsupported_media_type")
            .inc();
        return Err(OtlpHttpError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            encoding: Encoding::Json,
            message: format!("Content-Type must be {PROTOBUF} or {JSON}"),
        });
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            telemetry
                .ingest_rejected(PROTOCOL_HTTP, "body_too_large")
                .inc();
            return Err(OtlpHttpError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                encoding,
                message: "request body exceeds server.max_body_bytes".to_string(),
            });
        }
        Err(rejection) => {
            telemetry
                .ingest_rejected(PROTOCOL_HTTP, "unreadable_body")
                .inc();
            return Err(OtlpHttpError {
                status: StatusCode::BAD_REQUEST,
                encoding,
                message: format!("cannot read the request body: {rejection}"),
            });
        }
    };
    let request = decode_request::<S::Request>(encoding, &body).map_err(|error| {
        telemetry
            .ingest_rejected(PROTOCOL_HTTP, "malformed_body")
            .inc();
        http_error(encoding, error)
    })?;
    let outcome = S::export(ingest, request)
        .await
        .map_err(|error| http_error(encoding, error))?;
    let partial_success =
        (outcome.rejected > 0 || !outcome.error_message.is_empty()).then(|| PartialSuccess {
            rejected: outcome.rejected,
            error_message: outcome.error_message.clone(),
        });
    let response = ExportResponse {
        partial_success: partial_success.clone(),
    };
    Ok(encoded(encoding, &response, || match partial_success {
        None => json!({}),
        Some(partial) => json!({"partialSuccess": {
            S::REJECTED_FIELD: partial.rejected,
            "errorMessage": partial.error_message,
        }}),
    }))
}

/// The one place an [`ExportError`] becomes an HTTP status.
fn http_error(encoding: Encoding, error: ExportError) -> OtlpHttpError {
    let status = match &error {
        ExportError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        ExportError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ExportError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    OtlpHttpError {
        status,
        encoding,
        message: error.to_string(),
    }
}

/// Returns the OTLP/HTTP router.
pub fn router(ingest: OtlpIngest) -> Router {
    let max_message_bytes = ingest.options().max_message_bytes;
    let tokens = ingest.options().tokens.clone();
    Router::new()
        .route("/v1/traces", post(export::<Traces>))
        .route("/v1/metrics", post(export::<Metrics>))
        .route("/v1/logs", post(export::<Logs>))
        .with_state(ingest)
        .layer(RequestDecompressionLayer::new().pass_through_unaccepted(true))
        .layer(DefaultBodyLimit::max(max_message_bytes))
        .layer(axum::middleware::from_fn_with_state(tokens, require_token))
}

/// Refuses exports without an ingest token when `auth:` sets tokens: 401 with a
/// `google.rpc.Status` (UNAUTHENTICATED) in the request's encoding.
async fn require_token(
    State(tokens): State<IngestTokens>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if tokens.allow(request.headers()) {
        return next.run(request).await;
    }
    let encoding = request_encoding(request.headers()).unwrap_or(Encoding::Protobuf);
    let mut response = OtlpHttpError {
        status: StatusCode::UNAUTHORIZED,
        encoding,
        message: "an ingest token is required: send `Authorization: Bearer <token>`".to_string(),
    }
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"vigil\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::otlp::traces::convert_traces;

    /// OTLP/JSON as the specification writes it: upper-case hex IDs, 64-bit integers as
    /// numbers or strings, enums as integers, unknown keys ignored.
    #[test]
    fn otlp_json_of_the_specification_decodes() {
        let body = r#"{"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
            "scopeSpans": [{
                "scope": {"name": "lib", "version": "1.0.0", "attributes": []},
                "spans": [{
                    "traceId": "5B8EFFF798038103D269B633813FC60C",
                    "spanId": "EEE19B7EC3C1B174",
                    "parentSpanId": "",
                    "name": "GET /",
                    "startTimeUnixNano": 1544712660000000000,
                    "endTimeUnixNano": "1544712661000000000",
                    "kind": 2,
                    "someFutureField": {"x": 1},
                    "attributes": [
                        {"key": "n", "value": {"intValue": 3}},
                        {"key": "s", "value": {"intValue": "4"}},
                        {"key": "a", "value": {"arrayValue": {"values": [{"boolValue": true}]}}},
                        {"key": "b", "value": {"bytesValue": "AAEC"}}
                    ],
                    "status": {}
                }]
            }]
        }]}"#;
        let request: ExportTraceServiceRequest =
            decode_request(Encoding::Json, body.as_bytes()).unwrap();
        let converted = convert_traces(request);
        assert_eq!(converted.rejections.count, 0);
        let span = &converted.spans[0];
        assert_eq!(
            vigil_model::hex_id(&span.trace_id),
            "5b8efff798038103d269b633813fc60c"
        );
        assert_eq!(span.parent_span_id, None);
        assert_eq!(span.duration_ns, 1_000_000_000);
        assert_eq!(span.kind, vigil_model::SpanKind::Server);
        assert_eq!(span.attributes["n"], json!(3));
        assert_eq!(span.attributes["s"], json!(4));
        assert_eq!(span.attributes["a"], json!([true]));
        assert_eq!(span.attributes["b"], json!("AAEC"));

        let metrics = r#"{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{
            "name": "h", "unit": "1",
            "histogram": {"aggregationTemporality": 2, "dataPoints": [{
                "timeUnixNano": 1544712660300000000, "count": 3, "sum": 3,
                "bucketCounts": [1, "1", 1], "explicitBounds": [1, 2], "min": 1, "max": 1
            }]}
        }]}]}]}"#;
        let request: ExportMetricsServiceRequest =
            decode_request(Encoding::Json, metrics.as_bytes()).unwrap();
        let opentelemetry_proto::tonic::metrics::v1::metric::Data::Histogram(histogram) =
            request.resource_metrics[0].scope_metrics[0].metrics[0]
                .data
                .as_ref()
                .unwrap()
        else {
            panic!("a histogram");
        };
        assert_eq!(histogram.data_points[0].bucket_counts, vec![1, 1, 1]);

        let error =
            decode_request::<ExportLogsServiceRequest>(Encoding::Json, b"{\"resourceLogs\": 1}")
                .unwrap_err();
        assert!(matches!(error, ExportError::InvalidArgument(_)));
    }
}
