//! The trace query API (DESIGN.md §4 "Traces"): `GET /api/v1/traces/{trace_id}`,
//! `/api/v1/traces` (search), `/api/v1/services`, `/api/v1/services/{service}/operations`,
//! `/api/v1/dependencies` and `/api/v1/correlate/{id}`; and the same data in Jaeger's query API
//! shape under `/jaeger/api/` ([`crate::jaeger`]). Queries run on the blocking pool, a few at
//! once; errors are `{"status":"error","errorType":..,"error":..}`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
pub(crate) use vigil_model::api::ApiError;
use vigil_model::api::QueryPool;
use vigil_model::{hex_id, parse_hex_id, LogRecord, Span};

use crate::query::{TraceQuery, TraceSummary};
use crate::store::{SpanStore, StoreError};

/// Queries running at once; more wait.
const MAX_CONCURRENT_QUERIES: usize = 8;
/// The default time range: the last hour.
pub(crate) const DEFAULT_RANGE_NS: i64 = 3_600_000_000_000;
/// The default number of traces a search returns.
pub(crate) const DEFAULT_LIMIT: usize = 20;
/// The most traces a search returns.
pub(crate) const MAX_LIMIT: usize = 1_000;
/// Log lines a correlation asks the log store for, per ID.
const CORRELATED_LOG_LIMIT: usize = 1_000;
/// Trace IDs whose log lines a correlation also fetches.
const CORRELATED_TRACE_LOGS: usize = 10;

/// The log lines carrying an ID, for `/api/v1/correlate/{id}`.
///
/// Implemented by the binary over the log store: a bare term there matches `trace_id`,
/// `span_id`, `correlation_id` and the message. Blocking: called on the blocking pool.
pub trait CorrelatedLogs: Send + Sync {
    /// Returns at most `limit` log lines carrying `id`, in any order.
    ///
    /// # Errors
    /// A message when the log store cannot be searched.
    fn find(&self, id: &str, limit: usize) -> Result<Vec<LogRecord>, String>;
}

/// [`CorrelatedLogs`] for a Vigil without a log store: no lines.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLogs;

impl CorrelatedLogs for NoLogs {
    fn find(&self, _id: &str, _limit: usize) -> Result<Vec<LogRecord>, String> {
        Ok(Vec::new())
    }
}

#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) store: Arc<SpanStore>,
    logs: Arc<dyn CorrelatedLogs>,
    pool: QueryPool,
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::warn!(%error, "trace query failed");
        ApiError::internal(error.to_string())
    }
}

/// Returns the trace routes (Vigil's and Jaeger's) over `store`, with `logs` for correlation.
pub fn router(store: Arc<SpanStore>, logs: Arc<dyn CorrelatedLogs>) -> Router {
    let state = ApiState {
        store,
        logs,
        pool: QueryPool::new(
            MAX_CONCURRENT_QUERIES,
            "too many trace queries at once, retry later",
        ),
    };
    Router::new()
        .route("/api/v1/traces", get(search))
        .route("/api/v1/traces/{trace_id}", get(trace))
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{service}/operations", get(operations))
        .route("/api/v1/dependencies", get(dependencies))
        .route("/api/v1/correlate/{id}", get(correlate))
        .with_state(state.clone())
        .merge(crate::jaeger::router(state))
}

/// Runs `work` on the blocking pool with a query permit.
pub(crate) async fn run_blocking<T: Send + 'static>(
    state: &ApiState,
    work: impl FnOnce(&SpanStore) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.clone();
    state.pool.run(move || work(&store)).await
}

fn respond(outcome: Result<Value, ApiError>) -> Response {
    match outcome {
        Ok(body) => Json(body).into_response(),
        Err(error) => error.into_response(),
    }
}

/// Parses RFC 3339 or Unix seconds (fractions allowed) into nanoseconds.
pub fn parse_time_ns(text: &str) -> Option<i64> {
    let trimmed = text.trim();
    if let Ok(seconds) = trimmed.parse::<f64>() {
        if !seconds.is_finite() || seconds.abs() > 9.0e9 {
            return None;
        }
        let whole = seconds.trunc() as i64;
        let fraction = ((seconds - seconds.trunc()) * 1e9).round() as i64;
        return whole.checked_mul(1_000_000_000)?.checked_add(fraction);
    }
    chrono::DateTime::parse_from_rfc3339(trimmed)
        .ok()?
        .timestamp_nanos_opt()
}

/// Formats nanoseconds as RFC 3339 with nanoseconds, UTC.
pub fn format_time_ns(timestamp_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(timestamp_ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Parses a duration: Prometheus (`5m`, `1h30m`) or Go (`1.2s`, `100ms`, `250us`, `1m30s`).
pub fn parse_duration_ns(text: &str) -> Option<i64> {
    let trimmed = text.trim();
    if let Ok(duration) = vigil_model::units::parse_duration(trimmed) {
        return i64::try_from(duration.as_nanos()).ok();
    }
    parse_go_duration_ns(trimmed)
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers with units ns, us (µs), ms, s, m, h.
fn parse_go_duration_ns(text: &str) -> Option<i64> {
    if text.is_empty() || text.starts_with('-') {
        return None;
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    if text == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest
            .find(|character: char| !(character.is_ascii_digit() || character == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest.get(..number_end)?.parse().ok()?;
        rest = rest.get(number_end..)?;
        let unit_end = rest
            .find(|character: char| character.is_ascii_digit() || character == '.')
            .unwrap_or(rest.len());
        let unit = rest.get(..unit_end)?;
        rest = rest.get(unit_end..)?;
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3_600e9,
            _ => return None,
        };
        total += number * scale;
    }
    if !total.is_finite() || total > i64::MAX as f64 {
        return None;
    }
    Some(total.round() as i64)
}

/// Parses `tags`: a JSON object (`{"http.status_code":"500"}`, as Jaeger sends it) or
/// `key=value` pairs separated by spaces.
pub fn parse_tags(text: &str) -> Result<Vec<(String, String)>, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    if trimmed.starts_with('{') {
        let object: Map<String, Value> = serde_json::from_str(trimmed)
            .map_err(|error| format!("invalid `tags` JSON object: {error}"))?;
        return Ok(object
            .into_iter()
            .map(|(key, value)| {
                let text = match value {
                    Value::String(text) => text,
                    other => other.to_string(),
                };
                (key, text)
            })
            .collect());
    }
    let mut tags = Vec::new();
    for pair in trimmed.split_whitespace() {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("invalid tag {pair:?}: expected key=value"));
        };
        if key.is_empty() {
            return Err(format!("invalid tag {pair:?}: empty key"));
        }
        let value = value.trim_matches('"');
        tags.push((key.to_string(), value.to_string()));
    }
    Ok(tags)
}

/// Parses a trace ID: 32 hex digits, or fewer (leading zeros dropped, as Jaeger prints some).
pub fn parse_trace_id(text: &str) -> Option<[u8; 16]> {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.len() > 32 {
        return None;
    }
    let padded = format!("{trimmed:0>32}");
    parse_hex_id::<16>(&padded)
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn json_object(map: &Map<String, Value>) -> Value {
    Value::Object(map.clone())
}

/// Returns a span in Vigil's API shape.
pub fn span_json(span: &Span) -> Value {
    json!({
        "trace_id": hex_id(&span.trace_id),
        "span_id": hex_id(&span.span_id),
        "parent_span_id": span.parent_span_id.map(|parent| hex_id(&parent)),
        "service": span.service,
        "name": span.name,
        "kind": span.kind.as_str(),
        "start_time": format_time_ns(span.start_unix_nano),
        "start_unix_nano": span.start_unix_nano,
        "duration_ns": span.duration_ns,
        "status": {"code": span.status.as_str(), "message": span.status_message},
        "attributes": json_object(&span.attributes),
        "resource": json_object(&span.resource),
        "events": span.events.iter().map(|event| json!({
            "time": format_time_ns(event.time_unix_nano),
            "name": event.name,
            "attributes": json_object(&event.attributes),
        })).collect::<Vec<_>>(),
        "links": span.links.iter().map(|link| json!({
            "trace_id": hex_id(&link.trace_id),
            "span_id": hex_id(&link.span_id),
            "attributes": json_object(&link.attributes),
        })).collect::<Vec<_>>(),
    })
}

fn summary_json(summary: &TraceSummary) -> Value {
    json!({
        "trace_id": hex_id(&summary.trace_id),
        "root_service": summary.root_service,
        "root_name": summary.root_name,
        "start_time": format_time_ns(summary.start_ns),
        "duration_ns": summary.duration_ns,
        "span_count": summary.span_count,
        "services": summary.services,
        "error_count": summary.error_count,
    })
}

fn optional(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        Value::String(text.to_string())
    }
}

/// Returns a log line in the shape of `/api/v1/logs/search` hits.
fn log_json(record: &LogRecord) -> Value {
    json!({
        "timestamp": format_time_ns(record.timestamp_ns),
        "level": optional(&record.level),
        "service": optional(&record.service),
        "host": optional(&record.host),
        "message": record.message,
        "trace_id": optional(&record.trace_id),
        "span_id": optional(&record.span_id),
        "correlation_id": optional(&record.correlation_id),
        "attributes": record.attributes,
    })
}

async fn trace(State(state): State<ApiState>, Path(trace_id): Path<String>) -> Response {
    respond(trace_inner(state, trace_id).await)
}

async fn trace_inner(state: ApiState, text: String) -> Result<Value, ApiError> {
    let trace_id = parse_trace_id(&text).ok_or_else(|| {
        ApiError::bad_data(format!(
            "invalid trace ID {text:?}: expected up to 32 hex digits"
        ))
    })?;
    let spans = run_blocking(&state, move |store| Ok(store.trace(&trace_id)?)).await?;
    if spans.is_empty() {
        return Err(ApiError::not_found(format!(
            "trace {} not found",
            hex_id(&trace_id)
        )));
    }
    Ok(json!({"data": {
        "trace_id": hex_id(&trace_id),
        "spans": spans.iter().map(span_json).collect::<Vec<_>>(),
    }}))
}

#[derive(Debug, Default, Deserialize)]
struct SearchParams {
    service: Option<String>,
    operation: Option<String>,
    tags: Option<String>,
    min_duration: Option<String>,
    max_duration: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<String>,
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|text| !text.trim().is_empty())
}

/// The time range from optional `start` and `end` (RFC 3339 or Unix seconds); the last hour
/// by default.
fn time_range(start: &Option<String>, end: &Option<String>) -> Result<(i64, i64), ApiError> {
    let end_ns = match non_empty(end) {
        Some(text) => parse_time_ns(text).ok_or_else(|| {
            ApiError::bad_data(format!(
                "invalid `end` {text:?}: expected RFC 3339 or Unix seconds"
            ))
        })?,
        None => now_ns(),
    };
    let start_ns = match non_empty(start) {
        Some(text) => parse_time_ns(text).ok_or_else(|| {
            ApiError::bad_data(format!(
                "invalid `start` {text:?}: expected RFC 3339 or Unix seconds"
            ))
        })?,
        None => end_ns.saturating_sub(DEFAULT_RANGE_NS),
    };
    if start_ns > end_ns {
        return Err(ApiError::bad_data("`start` is after `end`"));
    }
    Ok((start_ns, end_ns))
}

pub(crate) fn parse_limit(text: Option<&str>) -> Result<usize, ApiError> {
    match text {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => {
            let limit: usize = text
                .trim()
                .parse()
                .map_err(|_| ApiError::bad_data(format!("invalid `limit` {text:?}")))?;
            if limit == 0 {
                return Ok(DEFAULT_LIMIT);
            }
            if limit > MAX_LIMIT {
                return Err(ApiError::bad_data(format!(
                    "`limit` must be at most {MAX_LIMIT}"
                )));
            }
            Ok(limit)
        }
    }
}

pub(crate) fn duration_param(name: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    match text {
        None => Ok(None),
        Some(text) => parse_duration_ns(text).map(Some).ok_or_else(|| {
            ApiError::bad_data(format!(
                "invalid `{name}` {text:?}: expected a duration such as 100ms or 1.5s"
            ))
        }),
    }
}

async fn search(State(state): State<ApiState>, Query(params): Query<SearchParams>) -> Response {
    respond(search_inner(state, params).await)
}

async fn search_inner(state: ApiState, params: SearchParams) -> Result<Value, ApiError> {
    let (start_ns, end_ns) = time_range(&params.start, &params.end)?;
    let query = TraceQuery {
        service: non_empty(&params.service).map(str::to_string),
        operation: non_empty(&params.operation).map(str::to_string),
        tags: parse_tags(params.tags.as_deref().unwrap_or("")).map_err(ApiError::bad_data)?,
        min_duration_ns: duration_param("min_duration", non_empty(&params.min_duration))?,
        max_duration_ns: duration_param("max_duration", non_empty(&params.max_duration))?,
        start_ns,
        end_ns,
        limit: parse_limit(non_empty(&params.limit))?,
    };
    let summaries = run_blocking(&state, move |store| Ok(store.search(&query)?)).await?;
    Ok(json!({"data": summaries.iter().map(summary_json).collect::<Vec<_>>()}))
}

async fn services(State(state): State<ApiState>) -> Response {
    respond(
        run_blocking(&state, |store| Ok(store.services()?))
            .await
            .map(|names| json!({"data": names})),
    )
}

async fn operations(State(state): State<ApiState>, Path(service): Path<String>) -> Response {
    respond(
        run_blocking(&state, move |store| Ok(store.operations(&service)?))
            .await
            .map(|operations| {
                json!({"data": operations.iter().map(|operation| json!({
                    "name": operation.name,
                    "kind": operation.kind,
                })).collect::<Vec<_>>()})
            }),
    )
}

#[derive(Debug, Default, Deserialize)]
struct RangeParams {
    start: Option<String>,
    end: Option<String>,
}

async fn dependencies(
    State(state): State<ApiState>,
    Query(params): Query<RangeParams>,
) -> Response {
    respond(dependencies_inner(state, params).await)
}

async fn dependencies_inner(state: ApiState, params: RangeParams) -> Result<Value, ApiError> {
    let (start_ns, end_ns) = time_range(&params.start, &params.end)?;
    let graph = run_blocking(&state, move |store| {
        Ok(store.dependencies(start_ns, end_ns)?)
    })
    .await?;
    Ok(json!({
        "data": graph.edges.iter().map(|edge| json!({
            "parent": edge.parent,
            "child": edge.child,
            "call_count": edge.call_count,
            "error_count": edge.error_count,
        })).collect::<Vec<_>>(),
        "truncated": graph.truncated,
    }))
}

async fn correlate(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    respond(correlate_inner(state, id).await)
}

async fn correlate_inner(state: ApiState, id: String) -> Result<Value, ApiError> {
    let id = id.trim().to_string();
    if id.is_empty() {
        return Err(ApiError::bad_data("empty correlation ID"));
    }
    let logs = state.logs.clone();
    let id_for_query = id.clone();
    let (correlation, records) = run_blocking(&state, move |store| {
        let correlation = store.correlate(&id_for_query)?;
        let mut records = logs
            .find(&id_for_query, CORRELATED_LOG_LIMIT)
            .map_err(ApiError::internal)?;
        // Lines that carry one of the traces (but not the ID itself) belong to the request too.
        for trace_id in correlation.trace_ids.iter().take(CORRELATED_TRACE_LOGS) {
            let trace_hex = hex_id(trace_id);
            if trace_hex == id_for_query {
                continue;
            }
            for record in logs
                .find(&trace_hex, CORRELATED_LOG_LIMIT)
                .map_err(ApiError::internal)?
            {
                if !records.contains(&record) {
                    records.push(record);
                }
            }
        }
        Ok((correlation, records))
    })
    .await?;
    let mut events: Vec<(i64, u8, Value)> = Vec::new();
    for span in &correlation.spans {
        events.push((
            span.start_unix_nano,
            0,
            json!({"type": "span", "time": format_time_ns(span.start_unix_nano), "span": span_json(span)}),
        ));
    }
    for record in &records {
        events.push((
            record.timestamp_ns,
            1,
            json!({"type": "log", "time": format_time_ns(record.timestamp_ns), "log": log_json(record)}),
        ));
    }
    events.sort_by_key(|(time, order, _)| (*time, *order));
    Ok(json!({"data": {
        "id": id,
        "trace_ids": correlation.trace_ids.iter().map(|trace_id| hex_id(trace_id)).collect::<Vec<_>>(),
        "events": events.into_iter().map(|(_, _, event)| event).collect::<Vec<_>>(),
    }}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn query_parameter_parsers_never_panic(text in "\\PC{0,40}", bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let lossy = String::from_utf8_lossy(&bytes).to_string();
            for input in [text.as_str(), lossy.as_str()] {
                let _ = parse_duration_ns(input);
                let _ = parse_tags(input);
                let _ = parse_trace_id(input);
                let _ = parse_time_ns(input);
            }
        }

        #[test]
        fn go_durations_read_back(millis in 0u32..10_000_000) {
            let text = format!("{}ms", millis);
            prop_assert_eq!(parse_duration_ns(&text), Some(i64::from(millis) * 1_000_000));
            let seconds = format!("{}.{:03}s", millis / 1_000, millis % 1_000);
            prop_assert_eq!(parse_duration_ns(&seconds), Some(i64::from(millis) * 1_000_000));
        }
    }

    #[test]
    fn go_and_prometheus_durations() {
        assert_eq!(parse_duration_ns("100ms"), Some(100_000_000));
        assert_eq!(parse_duration_ns("1.2s"), Some(1_200_000_000));
        assert_eq!(parse_duration_ns("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration_ns("250us"), Some(250_000));
        assert_eq!(parse_duration_ns("250µs"), Some(250_000));
        assert_eq!(parse_duration_ns("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration_ns("0"), Some(0));
        assert_eq!(parse_duration_ns("abc"), None);
        assert_eq!(parse_duration_ns("10x"), None);
        assert_eq!(parse_duration_ns("-1s"), None);
        assert_eq!(parse_duration_ns(""), None);
    }

    #[test]
    fn tags_as_json_or_pairs() {
        assert_eq!(
            parse_tags(r#"{"http.status_code":"500","retry":3}"#).unwrap(),
            vec![
                ("http.status_code".to_string(), "500".to_string()),
                ("retry".to_string(), "3".to_string())
            ]
        );
        assert_eq!(
            parse_tags("http.status_code=500  error=true").unwrap(),
            vec![
                ("http.status_code".to_string(), "500".to_string()),
                ("error".to_string(), "true".to_string())
            ]
        );
        assert!(parse_tags("nokey").is_err());
        assert!(parse_tags("=x").is_err());
        assert!(parse_tags("{not json").is_err());
        assert!(parse_tags("").unwrap().is_empty());
    }

    #[test]
    fn trace_ids_pad_short_hex() {
        assert_eq!(
            parse_trace_id("1"),
            Some({
                let mut id = [0u8; 16];
                id[15] = 1;
                id
            })
        );
        assert_eq!(parse_trace_id(&"ab".repeat(16)), Some([0xab; 16]));
        assert_eq!(parse_trace_id(&"ab".repeat(17)), None);
        assert_eq!(parse_trace_id("xyz"), None);
    }

    #[test]
    fn times_parse_as_rfc3339_or_seconds() {
        assert_eq!(parse_time_ns("1700000000"), Some(1_700_000_000_000_000_000));
        assert_eq!(
            parse_time_ns("1700000000.5"),
            Some(1_700_000_000_500_000_000)
        );
        assert_eq!(
            parse_time_ns("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(parse_time_ns("yesterday"), None);
        assert_eq!(
            format_time_ns(1_700_000_000_000_000_001),
            "2023-11-14T22:13:20.000000001Z"
        );
    }
}
