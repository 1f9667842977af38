//! Jaeger's query API shape under `/jaeger/api/` (Jaeger's `cmd/query/app/http_handler.go`
//! and `model/json`), so Grafana's Jaeger data source browses Vigil: `services`,
//! `services/{service}/operations`, `operations?service=`, `traces` (search), `traces/{id}`
//! and `dependencies`. Every answer is Jaeger's envelope
//! `{"data":..,"total":N,"limit":0,"offset":0,"errors":null}`; times are microseconds.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use vigil_model::{hex_id, Span, SpanKind};

use crate::api::{
    duration_param, now_ns, parse_limit, parse_tags, parse_trace_id, run_blocking, ApiError,
    ApiState, DEFAULT_RANGE_NS,
};
use crate::query::TraceQuery;

/// Jaeger's default `lookback` of the dependency graph: a day.
const DEFAULT_DEPENDENCY_LOOKBACK_MS: i64 = 86_400_000;

pub(crate) fn router(state: ApiState) -> Router {
    Router::new()
        .route("/jaeger/api/services", get(services))
        .route(
            "/jaeger/api/services/{service}/operations",
            get(service_operations),
        )
        .route("/jaeger/api/operations", get(operations))
        .route("/jaeger/api/traces", get(search))
        .route("/jaeger/api/traces/{trace_id}", get(trace))
        .route("/jaeger/api/dependencies", get(dependencies))
        .with_state(state)
}

/// Jaeger's `structuredResponse` with data.
fn envelope(data: Value, total: usize) -> Response {
    Json(json!({
        "data": data,
        "total": total,
        "limit": 0,
        "offset": 0,
        "errors": null,
    }))
    .into_response()
}

/// Jaeger's `structuredResponse` with an error.
fn jaeger_error(error: ApiError) -> Response {
    let status = if error.status == StatusCode::INTERNAL_SERVER_ERROR
        || error.status == StatusCode::SERVICE_UNAVAILABLE
        || error.status == StatusCode::NOT_FOUND
    {
        error.status
    } else {
        StatusCode::BAD_REQUEST
    };
    (
        status,
        Json(json!({
            "data": null,
            "total": 0,
            "limit": 0,
            "offset": 0,
            "errors": [{"code": status.as_u16(), "msg": error.message}],
        })),
    )
        .into_response()
}

/// A Jaeger `KeyValue` from an attribute.
fn key_value(key: &str, value: &Value) -> Value {
    match value {
        Value::Bool(flag) => json!({"key": key, "type": "bool", "value": flag}),
        Value::Number(number) if number.is_i64() || number.is_u64() => {
            json!({"key": key, "type": "int64", "value": number})
        }
        Value::Number(number) => json!({"key": key, "type": "float64", "value": number}),
        Value::String(text) => json!({"key": key, "type": "string", "value": text}),
        // Arrays and maps: Jaeger's OTLP translator writes them as JSON strings.
        other => json!({"key": key, "type": "string", "value": other.to_string()}),
    }
}

fn key_values(attributes: &Map<String, Value>) -> Vec<Value> {
    attributes
        .iter()
        .map(|(key, value)| key_value(key, value))
        .collect()
}

/// Tags of a span as Jaeger's OTLP translator writes them: the attributes, then `span.kind`,
/// `otel.status_code`, `otel.status_description` and `error`.
fn span_tags(span: &Span) -> Vec<Value> {
    let mut tags = key_values(&span.attributes);
    if span.kind != SpanKind::Internal {
        tags.push(json!({"key": "span.kind", "type": "string", "value": span.kind.as_str()}));
    }
    match span.status {
        vigil_model::StatusCode::Unset => {}
        vigil_model::StatusCode::Ok => {
            tags.push(json!({"key": "otel.status_code", "type": "string", "value": "OK"}));
        }
        vigil_model::StatusCode::Error => {
            tags.push(json!({"key": "otel.status_code", "type": "string", "value": "ERROR"}));
            tags.push(json!({"key": "error", "type": "bool", "value": true}));
        }
    }
    if !span.status_message.is_empty() {
        tags.push(json!({"key": "otel.status_description", "type": "string", "value": span.status_message}));
    }
    tags
}

/// A trace in Jaeger's `model/json` shape: spans point at processes (`p1`, `p2`…), one per
/// distinct service and resource.
pub(crate) fn jaeger_trace(trace_id: &[u8; 16], spans: &[Span]) -> Value {
    let mut processes: Vec<(String, &Map<String, Value>)> = Vec::new();
    let mut process_ids: HashMap<(String, String), String> = HashMap::new();
    let mut jaeger_spans = Vec::with_capacity(spans.len());
    for span in spans {
        let resource_key = (
            span.service.clone(),
            Value::Object(span.resource.as_ref().clone()).to_string(),
        );
        let process_id = match process_ids.get(&resource_key) {
            Some(id) => id.clone(),
            None => {
                processes.push((span.service.clone(), span.resource.as_ref()));
                let id = format!("p{}", processes.len());
                process_ids.insert(resource_key, id.clone());
                id
            }
        };
        let mut references = Vec::new();
        if let Some(parent) = span.parent_span_id {
            references.push(json!({
                "refType": "CHILD_OF",
                "traceID": hex_id(&span.trace_id),
                "spanID": hex_id(&parent),
            }));
        }
        for link in &span.links {
            references.push(json!({
                "refType": "FOLLOWS_FROM",
                "traceID": hex_id(&link.trace_id),
                "spanID": hex_id(&link.span_id),
            }));
        }
        let logs: Vec<Value> = span
            .events
            .iter()
            .map(|event| {
                let mut fields =
                    vec![json!({"key": "event", "type": "string", "value": event.name})];
                fields.extend(key_values(&event.attributes));
                json!({"timestamp": event.time_unix_nano / 1_000, "fields": fields})
            })
            .collect();
        jaeger_spans.push(json!({
            "traceID": hex_id(&span.trace_id),
            "spanID": hex_id(&span.span_id),
            "flags": 1,
            "operationName": span.name,
            "references": references,
            "startTime": span.start_unix_nano / 1_000,
            "duration": span.duration_ns / 1_000,
            "tags": span_tags(span),
            "logs": logs,
            "processID": process_id,
            "warnings": null,
        }));
    }
    let mut process_map = Map::new();
    for (index, (service, resource)) in processes.iter().enumerate() {
        let tags: Vec<Value> = resource
            .iter()
            .filter(|(key, _)| key.as_str() != "service.name")
            .map(|(key, value)| key_value(key, value))
            .collect();
        process_map.insert(
            format!("p{}", index + 1),
            json!({"serviceName": service, "tags": tags}),
        );
    }
    json!({
        "traceID": hex_id(trace_id),
        "spans": jaeger_spans,
        "processes": process_map,
        "warnings": null,
    })
}

async fn services(State(state): State<ApiState>) -> Response {
    match run_blocking(&state, |store| Ok(store.services()?)).await {
        Ok(names) => {
            let total = names.len();
            envelope(json!(names), total)
        }
        Err(error) => jaeger_error(error),
    }
}

async fn service_operations(
    State(state): State<ApiState>,
    Path(service): Path<String>,
) -> Response {
    match run_blocking(&state, move |store| Ok(store.operations(&service)?)).await {
        Ok(operations) => {
            let names: Vec<&str> = operations
                .iter()
                .map(|operation| operation.name.as_str())
                .collect();
            envelope(json!(names), names.len())
        }
        Err(error) => jaeger_error(error),
    }
}

#[derive(Debug, Default, Deserialize)]
struct OperationsParams {
    service: Option<String>,
    #[serde(rename = "spanKind")]
    span_kind: Option<String>,
}

async fn operations(
    State(state): State<ApiState>,
    Query(params): Query<OperationsParams>,
) -> Response {
    let Some(service) = params.service.filter(|service| !service.is_empty()) else {
        return jaeger_error(ApiError::bad_data("parameter 'service' is required"));
    };
    let span_kind = params.span_kind.filter(|kind| !kind.is_empty());
    match run_blocking(&state, move |store| Ok(store.operations(&service)?)).await {
        Ok(operations) => {
            let data: Vec<Value> = operations
                .iter()
                .filter(|operation| {
                    span_kind
                        .as_ref()
                        .is_none_or(|kind| *kind == operation.kind)
                })
                .map(|operation| json!({"name": operation.name, "spanKind": operation.kind}))
                .collect();
            let total = data.len();
            envelope(Value::Array(data), total)
        }
        Err(error) => jaeger_error(error),
    }
}

#[derive(Debug, Default, Deserialize)]
struct SearchParams {
    service: Option<String>,
    operation: Option<String>,
    tags: Option<String>,
    #[serde(rename = "minDuration")]
    min_duration: Option<String>,
    #[serde(rename = "maxDuration")]
    max_duration: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<String>,
    lookback: Option<String>,
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|text| !text.trim().is_empty())
}

fn micros_param(name: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    match text {
        None => Ok(None),
        Some(text) => text
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(|micros| micros.checked_mul(1_000))
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_data(format!(
                    "invalid `{name}` {text:?}: expected microseconds since the epoch"
                ))
            }),
    }
}

async fn search(State(state): State<ApiState>, Query(params): Query<SearchParams>) -> Response {
    match search_inner(state, params).await {
        Ok(response) => response,
        Err(error) => jaeger_error(error),
    }
}

async fn search_inner(state: ApiState, params: SearchParams) -> Result<Response, ApiError> {
    let Some(service) = non_empty(&params.service) else {
        return Err(ApiError::bad_data("parameter 'service' is required"));
    };
    let end_ns = micros_param("end", non_empty(&params.end))?.unwrap_or_else(now_ns);
    let start_ns = match micros_param("start", non_empty(&params.start))? {
        Some(start) => start,
        None => {
            let lookback = non_empty(&params.lookback).filter(|text| *text != "custom");
            let lookback_ns = duration_param("lookback", lookback)?.unwrap_or(DEFAULT_RANGE_NS);
            end_ns.saturating_sub(lookback_ns)
        }
    };
    if start_ns > end_ns {
        return Err(ApiError::bad_data("`start` is after `end`"));
    }
    let query = TraceQuery {
        service: Some(service.to_string()),
        operation: non_empty(&params.operation)
            .filter(|operation| *operation != "all")
            .map(str::to_string),
        tags: parse_tags(params.tags.as_deref().unwrap_or("")).map_err(ApiError::bad_data)?,
        min_duration_ns: duration_param("minDuration", non_empty(&params.min_duration))?,
        max_duration_ns: duration_param("maxDuration", non_empty(&params.max_duration))?,
        start_ns,
        end_ns,
        limit: parse_limit(non_empty(&params.limit))?,
    };
    let traces = run_blocking(&state, move |store| {
        let mut traces = Vec::new();
        for trace_id in store.find_trace_ids(&query)? {
            let spans = store.trace(&trace_id)?;
            if !spans.is_empty() {
                traces.push(jaeger_trace(&trace_id, &spans));
            }
        }
        Ok(traces)
    })
    .await?;
    let total = traces.len();
    Ok(envelope(Value::Array(traces), total))
}

async fn trace(State(state): State<ApiState>, Path(text): Path<String>) -> Response {
    let Some(trace_id) = parse_trace_id(&text) else {
        return jaeger_error(ApiError::bad_data(format!(
            "invalid trace ID {text:?}: expected up to 32 hex digits"
        )));
    };
    match run_blocking(&state, move |store| Ok(store.trace(&trace_id)?)).await {
        Ok(spans) if spans.is_empty() => jaeger_error(ApiError::not_found("trace not found")),
        Ok(spans) => envelope(json!([jaeger_trace(&trace_id, &spans)]), 1),
        Err(error) => jaeger_error(error),
    }
}

#[derive(Debug, Default, Deserialize)]
struct DependencyParams {
    #[serde(rename = "endTs")]
    end_ts: Option<String>,
    lookback: Option<String>,
}

fn millis_param(name: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    match text {
        None => Ok(None),
        Some(text) => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|millis| *millis >= 0)
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_data(format!("invalid `{name}` {text:?}: expected milliseconds"))
            }),
    }
}

async fn dependencies(
    State(state): State<ApiState>,
    Query(params): Query<DependencyParams>,
) -> Response {
    let outcome = async {
        let end_ms = millis_param("endTs", non_empty(&params.end_ts))?
            .unwrap_or_else(|| now_ns() / 1_000_000);
        let lookback_ms = millis_param("lookback", non_empty(&params.lookback))?
            .unwrap_or(DEFAULT_DEPENDENCY_LOOKBACK_MS);
        let end_ns = end_ms.saturating_mul(1_000_000);
        let start_ns = end_ms.saturating_sub(lookback_ms).saturating_mul(1_000_000);
        run_blocking(&state, move |store| {
            Ok(store.dependencies(start_ns, end_ns)?)
        })
        .await
    }
    .await;
    match outcome {
        Ok(graph) => {
            let data: Vec<Value> = graph
                .edges
                .iter()
                .map(|edge| json!({"parent": edge.parent, "child": edge.child, "callCount": edge.call_count}))
                .collect();
            let total = data.len();
            envelope(Value::Array(data), total)
        }
        Err(error) => jaeger_error(error),
    }
}
