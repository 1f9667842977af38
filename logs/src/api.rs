//! The log query API (DESIGN.md §4): `GET /api/v1/logs/search`, `/api/v1/logs/histogram`,
//! `/api/v1/logs/fields`, and the live tail `/api/v1/logs/tail` (Server-Sent Events: one
//! `log` event per matching line written after the tail started, once searchable). Searches
//! run on the blocking pool, at most a few at once; errors are
//! `{"status":"error","errorType":..,"error":..}`.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use vigil_model::api::{ApiError, QueryPool};
use vigil_model::LogRecord;

use crate::search::{
    Cursor, LogSearcher, SearchError, SearchRequest, SortOrder, DEFAULT_TOTAL_HITS_THRESHOLD,
    MAX_LIMIT,
};
use crate::store::LogStore;

/// Searches running at once; more wait.
const MAX_CONCURRENT_SEARCHES: usize = 8;
/// The default time range: the last hour.
const DEFAULT_RANGE_NS: i64 = 3_600_000_000_000;
/// The default page size.
const DEFAULT_LIMIT: usize = 100;
/// Histograms have at most this many buckets.
const MAX_BUCKETS: i64 = 11_000;
/// Lines sampled for attribute keys in `/fields`.
const FIELDS_SAMPLE: usize = 1_000;
/// Values listed per keyword field in `/fields`.
const TOP_VALUES: usize = 20;

#[derive(Clone)]
struct ApiState {
    searcher: Arc<LogSearcher>,
    pool: QueryPool,
}

impl From<SearchError> for ApiError {
    fn from(error: SearchError) -> Self {
        match error {
            SearchError::InvalidQuery(_) => ApiError::bad_data(error.to_string()),
            SearchError::Index(_) => ApiError::internal(error.to_string()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct LogParams {
    q: Option<String>,
    query: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    order: Option<String>,
    step: Option<String>,
    track_total_hits: Option<String>,
}

impl LogParams {
    fn query_text(&self) -> String {
        self.q
            .clone()
            .or_else(|| self.query.clone())
            .unwrap_or_default()
    }

    fn range(&self, now_ns: i64) -> Result<(i64, i64), ApiError> {
        let end_ns = match &self.end {
            Some(text) if !text.is_empty() => parse_time_ns(text).ok_or_else(|| {
                ApiError::bad_data(format!(
                    "invalid `end` {text:?}: expected RFC 3339 or Unix seconds"
                ))
            })?,
            _ => now_ns,
        };
        let start_ns = match &self.start {
            Some(text) if !text.is_empty() => parse_time_ns(text).ok_or_else(|| {
                ApiError::bad_data(format!(
                    "invalid `start` {text:?}: expected RFC 3339 or Unix seconds"
                ))
            })?,
            _ => end_ns.saturating_sub(DEFAULT_RANGE_NS),
        };
        if start_ns > end_ns {
            return Err(ApiError::bad_data("`start` is after `end`"));
        }
        Ok((start_ns, end_ns))
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

fn parse_step_ns(text: &str) -> Option<i64> {
    if let Ok(duration) = vigil_model::units::parse_duration(text) {
        return i64::try_from(duration.as_nanos()).ok();
    }
    let seconds: f64 = text.trim().parse().ok()?;
    if !seconds.is_finite() || seconds <= 0.0 {
        return None;
    }
    Some((seconds * 1e9) as i64)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn optional(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        Value::String(text.to_string())
    }
}

/// Returns a hit as the API shows it.
pub fn hit_json(record: &LogRecord) -> Value {
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

async fn run_blocking<T: Send + 'static>(
    state: &ApiState,
    work: impl FnOnce(&LogSearcher) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let searcher = state.searcher.clone();
    state.pool.run(move || work(&searcher)).await
}

async fn search(State(state): State<ApiState>, Query(params): Query<LogParams>) -> Response {
    match search_inner(state, params).await {
        Ok(body) => Json(body).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn search_inner(state: ApiState, params: LogParams) -> Result<Value, ApiError> {
    let started = Instant::now();
    let (start_ns, end_ns) = params.range(now_ns())?;
    let limit = match &params.limit {
        Some(text) if !text.is_empty() => {
            let limit: usize = text
                .parse()
                .map_err(|_| ApiError::bad_data(format!("invalid `limit` {text:?}")))?;
            if limit == 0 || limit > MAX_LIMIT {
                return Err(ApiError::bad_data(format!(
                    "`limit` must be between 1 and {MAX_LIMIT}"
                )));
            }
            limit
        }
        _ => DEFAULT_LIMIT,
    };
    let cursor = match &params.cursor {
        Some(text) if !text.is_empty() => Some(
            Cursor::decode(text)
                .ok_or_else(|| ApiError::bad_data(format!("invalid `cursor` {text:?}")))?,
        ),
        _ => None,
    };
    let order = match params.order.as_deref() {
        None | Some("") | Some("desc") => SortOrder::Descending,
        Some("asc") => SortOrder::Ascending,
        Some(other) => {
            return Err(ApiError::bad_data(format!(
                "invalid `order` {other:?}: expected desc or asc"
            )))
        }
    };
    let total_threshold = match params.track_total_hits.as_deref() {
        None | Some("") => DEFAULT_TOTAL_HITS_THRESHOLD,
        Some("true") => u64::MAX,
        Some(text) => text.parse().map_err(|_| {
            ApiError::bad_data(format!(
                "invalid `track_total_hits` {text:?}: expected true or a number of lines"
            ))
        })?,
    };
    let request = SearchRequest {
        query: params.query_text(),
        start_ns,
        end_ns,
        limit,
        cursor,
        order,
    };
    let page = run_blocking(&state, move |searcher| {
        Ok(searcher.search_counting(&request, total_threshold)?)
    })
    .await?;
    let hits: Vec<Value> = page.hits.iter().map(|hit| hit_json(&hit.record)).collect();
    Ok(json!({
        "hits": hits,
        "total": page.total,
        "total_relation": page.total_relation.as_str(),
        "next_cursor": page.next_cursor.map(|cursor| cursor.encode()),
        "took_ms": started.elapsed().as_millis() as u64,
    }))
}

async fn histogram(State(state): State<ApiState>, Query(params): Query<LogParams>) -> Response {
    match histogram_inner(state, params).await {
        Ok(body) => Json(body).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn histogram_inner(state: ApiState, params: LogParams) -> Result<Value, ApiError> {
    let started = Instant::now();
    let (start_ns, end_ns) = params.range(now_ns())?;
    let span_ns = (end_ns - start_ns).max(1);
    let step_ns =
        match &params.step {
            Some(text) if !text.is_empty() => parse_step_ns(text)
                .filter(|step| *step > 0)
                .ok_or_else(|| {
                    ApiError::bad_data(format!(
                        "invalid `step` {text:?}: expected a duration such as 1m"
                    ))
                })?,
            // About 60 buckets, in whole seconds.
            _ => ((span_ns / 60).max(1_000_000_000) / 1_000_000_000) * 1_000_000_000,
        };
    if span_ns / step_ns > MAX_BUCKETS {
        return Err(ApiError::bad_data(format!(
            "`step` too small: more than {MAX_BUCKETS} buckets"
        )));
    }
    let query_text = params.query_text();
    let buckets = run_blocking(&state, move |searcher| {
        Ok(searcher.histogram(&query_text, start_ns, end_ns, step_ns)?)
    })
    .await?;
    let first_bucket = start_ns.div_euclid(step_ns) * step_ns;
    let mut rows = Vec::new();
    let mut bucket = first_bucket;
    let empty = BTreeMap::new();
    while bucket <= end_ns {
        let levels = buckets.get(&bucket).unwrap_or(&empty);
        let count: u64 = levels.values().sum();
        let by_level: BTreeMap<&str, u64> = levels
            .iter()
            .map(|(level, count)| {
                (
                    if level.is_empty() {
                        "unknown"
                    } else {
                        level.as_str()
                    },
                    *count,
                )
            })
            .collect();
        rows.push(json!({
            "time": format_time_ns(bucket),
            "count": count,
            "levels": by_level,
        }));
        bucket += step_ns;
    }
    Ok(json!({
        "buckets": rows,
        "step_seconds": step_ns as f64 / 1e9,
        "took_ms": started.elapsed().as_millis() as u64,
    }))
}

async fn fields(State(state): State<ApiState>, Query(params): Query<LogParams>) -> Response {
    match fields_inner(state, params).await {
        Ok(body) => Json(body).into_response(),
        Err(error) => error.into_response(),
    }
}

fn top(values: &BTreeMap<String, u64>, key_name: &str) -> Vec<Value> {
    let mut sorted: Vec<(&String, &u64)> = values
        .iter()
        .filter(|(value, _)| !value.is_empty())
        .collect();
    sorted.sort_by(|left, right| right.1.cmp(left.1).then_with(|| left.0.cmp(right.0)));
    sorted
        .into_iter()
        .take(TOP_VALUES)
        .map(|(value, count)| json!({ key_name: value, "count": count }))
        .collect()
}

async fn fields_inner(state: ApiState, params: LogParams) -> Result<Value, ApiError> {
    let started = Instant::now();
    let (start_ns, end_ns) = params.range(now_ns())?;
    let query_text = params.query_text();
    let summary = run_blocking(&state, move |searcher| {
        Ok(searcher.fields(&query_text, start_ns, end_ns, FIELDS_SAMPLE)?)
    })
    .await?;
    let mut keyword_fields = serde_json::Map::new();
    for field in ["service", "level", "host"] {
        let values = summary.keywords.get(field).cloned().unwrap_or_default();
        keyword_fields.insert(field.to_string(), Value::Array(top(&values, "value")));
    }
    Ok(json!({
        "fields": keyword_fields,
        "attribute_keys": top(&summary.attribute_keys, "key"),
        "sampled": summary.sampled,
        "took_ms": started.elapsed().as_millis() as u64,
    }))
}

/// How often a live tail looks for new lines.
const TAIL_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Lines sent per poll at most; a faster stream is sampled by the client's patience.
const TAIL_BATCH: usize = 1_000;

struct TailState {
    state: ApiState,
    query_text: String,
    after_seq: u64,
    pending: VecDeque<Event>,
}

async fn tail(State(state): State<ApiState>, Query(params): Query<LogParams>) -> Response {
    let query_text = params.query_text();
    // Refuse a bad query before the stream starts, with a 400 saying where.
    let checked = query_text.clone();
    if let Err(error) = run_blocking(&state, move |searcher| {
        searcher.tail(&checked, u64::MAX, 1)?;
        Ok(())
    })
    .await
    {
        return error.into_response();
    }
    let after_seq = state.searcher.store().last_seq();
    let initial = TailState {
        state,
        query_text,
        after_seq,
        pending: VecDeque::new(),
    };
    let stream = futures_util::stream::unfold(initial, |mut tail_state| async move {
        loop {
            if let Some(event) = tail_state.pending.pop_front() {
                return Some((Ok::<Event, Infallible>(event), tail_state));
            }
            tokio::time::sleep(TAIL_POLL_INTERVAL).await;
            let query_text = tail_state.query_text.clone();
            let after_seq = tail_state.after_seq;
            let hits = run_blocking(&tail_state.state, move |searcher| {
                Ok(searcher.tail(&query_text, after_seq, TAIL_BATCH)?)
            })
            .await;
            match hits {
                Ok(hits) => {
                    for hit in hits {
                        tail_state.after_seq = tail_state.after_seq.max(hit.seq);
                        let event = Event::default()
                            .event("log")
                            .data(hit_json(&hit.record).to_string());
                        tail_state.pending.push_back(event);
                    }
                }
                Err(error) => {
                    let event = Event::default().event("error").data(error.message);
                    return Some((Ok(event), tail_state));
                }
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Returns the router of the log query API.
pub fn router(store: Arc<LogStore>) -> Router {
    let state = ApiState {
        searcher: Arc::new(LogSearcher::new(store)),
        pool: QueryPool::new(
            MAX_CONCURRENT_SEARCHES,
            "too many log searches at once, retry later",
        ),
    };
    Router::new()
        .route("/api/v1/logs/search", get(search))
        .route("/api/v1/logs/histogram", get(histogram))
        .route("/api/v1/logs/fields", get(fields))
        .route("/api/v1/logs/tail", get(tail))
        .with_state(state)
}
