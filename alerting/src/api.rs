//! HTTP API of alerting, in Prometheus' shapes: `/api/v1/rules`, `/api/v1/alerts`, and Vigil's
//! `/api/v1/alerts/history` and `/api/v1/notifications` (DESIGN.md §4); and Alertmanager's API v2
//! (`/api/v2/alerts` to list and receive alerts, `/api/v2/alerts/groups`, `/api/v2/status`,
//! `/api/v2/silences`, `/api/v2/silence/{id}`), so amtool, Grafana and Prometheus servers
//! can use Vigil as their Alertmanager.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::notify::now_ms;
use crate::service::Alerting;

/// Most rows `/api/v1/alerts/history` and `/api/v1/notifications` return.
pub const MAX_ROWS: usize = 10_000;

/// Returns the router of the alerting API.
pub fn router(alerting: Alerting) -> Router {
    Router::new()
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/history", get(history))
        .route("/api/v1/notifications", get(notifications))
        .route("/api/v2/alerts", get(list_v2_alerts).post(post_v2_alerts))
        .route("/api/v2/alerts/groups", get(list_v2_groups))
        .route("/api/v2/status", get(status))
        .route("/api/v2/silences", get(list_silences).post(post_silence))
        .route(
            "/api/v2/silence/{id}",
            get(get_silence).delete(delete_silence),
        )
        .with_state(alerting)
}

fn bad_data(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"status": "error", "errorType": "bad_data", "error": message})),
    )
        .into_response()
}

fn internal(message: String) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"status": "error", "errorType": "internal", "error": message})),
    )
        .into_response()
}

/// Parses RFC 3339 or Unix seconds (fractions allowed) into ms.
fn parse_time(text: &str) -> Option<i64> {
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() {
            return Some((seconds * 1000.0) as i64);
        }
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.timestamp_millis())
}

async fn rules(
    State(alerting): State<Alerting>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let wanted = params.get("type").cloned();
    let manager = alerting.manager.clone();
    let groups = match tokio::task::spawn_blocking(move || manager.lock().rules_snapshot()).await {
        Ok(groups) => groups,
        Err(error) => return internal(error.to_string()),
    };
    let groups: Vec<_> = groups
        .into_iter()
        .map(|mut group| {
            if let Some(kind) = wanted.as_deref() {
                let kind = if kind == "alert" {
                    "alerting"
                } else if kind == "record" {
                    "recording"
                } else {
                    kind
                };
                group.rules.retain(|rule| rule.kind == kind);
            }
            group
        })
        .collect();
    Json(json!({"status": "success", "data": {"groups": groups}})).into_response()
}

async fn alerts(State(alerting): State<Alerting>) -> Response {
    let manager = alerting.manager.clone();
    match tokio::task::spawn_blocking(move || manager.lock().active_alerts()).await {
        Ok(alerts) => {
            Json(json!({"status": "success", "data": {"alerts": alerts}})).into_response()
        }
        Err(error) => internal(error.to_string()),
    }
}

async fn history(
    State(alerting): State<Alerting>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let now = now_ms();
    let start = match params.get("start") {
        Some(text) => match parse_time(text) {
            Some(time) => time,
            None => {
                return bad_data(format!(
                    "invalid parameter \"start\": cannot parse {text:?} to a valid timestamp"
                ))
            }
        },
        None => now - 3_600_000,
    };
    let end = match params.get("end") {
        Some(text) => match parse_time(text) {
            Some(time) => time,
            None => {
                return bad_data(format!(
                    "invalid parameter \"end\": cannot parse {text:?} to a valid timestamp"
                ))
            }
        },
        None => now,
    };
    if end < start {
        return bad_data(
            "invalid parameter \"end\": end timestamp must not be before start time".into(),
        );
    }
    let alertname = params.get("alertname").cloned();
    let store = alerting.store.clone();
    match tokio::task::spawn_blocking(move || {
        store.history(start, end, alertname.as_deref(), MAX_ROWS)
    })
    .await
    {
        Ok(Ok(entries)) => Json(json!({"status": "success", "data": entries})).into_response(),
        Ok(Err(error)) => internal(error.to_string()),
        Err(error) => internal(error.to_string()),
    }
}

async fn notifications(
    State(alerting): State<Alerting>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let status = params.get("status").cloned();
    if let Some(status) = &status {
        if !matches!(status.as_str(), "pending" | "delivered" | "failed") {
            return bad_data(format!(
                "invalid parameter \"status\": {status:?} is not pending, delivered or failed"
            ));
        }
    }
    let store = alerting.store.clone();
    match tokio::task::spawn_blocking(move || store.notifications(status.as_deref(), MAX_ROWS))
        .await
    {
        Ok(Ok(rows)) => Json(json!({"status": "success", "data": rows})).into_response(),
        Ok(Err(error)) => internal(error.to_string()),
        Err(error) => internal(error.to_string()),
    }
}

async fn list_silences(
    State(alerting): State<Alerting>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let mut filter = Vec::new();
    for (key, value) in &params {
        if key == "filter" {
            match crate::route::parse_matchers(value) {
                Ok(matchers) => filter.extend(matchers),
                Err(error) => return bad_request(error),
            }
        }
    }
    let silences: Vec<_> = alerting
        .silences
        .list(now_ms())
        .into_iter()
        .filter(|silence| silence_matches_filter(silence, &filter))
        .collect();
    Json(silences).into_response()
}

/// Alertmanager's rule for `GET /api/v2/silences?filter=`: every filter matcher must match
/// the label set the silence's matchers spell out (name → value).
fn silence_matches_filter(
    silence: &crate::silence::GettableSilence,
    filter: &[vigil_model::LabelMatcher],
) -> bool {
    if filter.is_empty() {
        return true;
    }
    let labels = vigil_model::Labels::from_pairs(
        silence
            .matchers
            .iter()
            .map(|matcher| (matcher.name.clone(), matcher.value.clone())),
    );
    filter.iter().all(|matcher| matcher.matches(&labels))
}

/// A 400 in Alertmanager's error shape (a JSON string), as amtool prints it.
fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(message)).into_response()
}

async fn post_silence(State(alerting): State<Alerting>, body: axum::body::Bytes) -> Response {
    let posted: crate::silence::PostableSilence = match serde_json::from_slice(&body) {
        Ok(posted) => posted,
        Err(error) => return (StatusCode::BAD_REQUEST, Json(error.to_string())).into_response(),
    };
    let silences = alerting.silences.clone();
    match tokio::task::spawn_blocking(move || silences.upsert(posted, now_ms())).await {
        Ok(Ok(id)) => Json(json!({"silenceID": id})).into_response(),
        Ok(Err(crate::silence::SilenceError::NotFound(id))) => (
            StatusCode::NOT_FOUND,
            Json(format!("silence {id} not found")),
        )
            .into_response(),
        Ok(Err(crate::silence::SilenceError::Invalid(message))) => {
            (StatusCode::BAD_REQUEST, Json(message)).into_response()
        }
        Ok(Err(error)) => internal(error.to_string()),
        Err(error) => internal(error.to_string()),
    }
}

async fn get_silence(State(alerting): State<Alerting>, Path(id): Path<String>) -> Response {
    match alerting.silences.get(&id, now_ms()) {
        Some(silence) => Json(silence).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(format!("silence {id} not found")),
        )
            .into_response(),
    }
}

async fn delete_silence(State(alerting): State<Alerting>, Path(id): Path<String>) -> Response {
    let silences = alerting.silences.clone();
    match tokio::task::spawn_blocking(move || silences.expire(&id, now_ms())).await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(crate::silence::SilenceError::NotFound(id))) => (
            StatusCode::NOT_FOUND,
            Json(format!("silence {id} not found")),
        )
            .into_response(),
        Ok(Err(error)) => internal(error.to_string()),
        Err(error) => internal(error.to_string()),
    }
}

/// The query of `GET /api/v2/alerts` and `GET /api/v2/alerts/groups`, as Alertmanager reads
/// it (and amtool sends it): `active`, `silenced`, `inhibited` and `unprocessed` (each true
/// unless `false`), `filter` (matchers such as `service="a"`, repeatable) and `receiver` (a
/// regular expression a receiver's whole name must match).
struct AlertFilter {
    active: bool,
    silenced: bool,
    inhibited: bool,
    unprocessed: bool,
    matchers: Vec<vigil_model::LabelMatcher>,
    receiver: Option<regex::Regex>,
}

impl AlertFilter {
    fn from_query(params: &[(String, String)]) -> Result<AlertFilter, String> {
        let mut filter = AlertFilter {
            active: true,
            silenced: true,
            inhibited: true,
            unprocessed: true,
            matchers: Vec::new(),
            receiver: None,
        };
        for (key, value) in params {
            let flag = match key.as_str() {
                "active" => &mut filter.active,
                "silenced" => &mut filter.silenced,
                "inhibited" => &mut filter.inhibited,
                "unprocessed" => &mut filter.unprocessed,
                "filter" => {
                    filter.matchers.extend(crate::route::parse_matchers(value)?);
                    continue;
                }
                "receiver" => {
                    if !value.is_empty() {
                        let anchored = format!("^(?:{value})$");
                        filter.receiver =
                            Some(regex::Regex::new(&anchored).map_err(|error| {
                                format!("invalid parameter \"receiver\": {error}")
                            })?);
                    }
                    continue;
                }
                _ => continue,
            };
            *flag = match value.as_str() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(format!(
                        "invalid parameter {key:?}: {other:?} is not true or false"
                    ))
                }
            };
        }
        Ok(filter)
    }

    /// Returns whether an alert in `GettableAlert` shape passes the state and label filters.
    fn keeps_alert(&self, alert: &serde_json::Value) -> bool {
        let status = &alert["status"];
        let not_empty = |field: &str| status[field].as_array().is_some_and(|ids| !ids.is_empty());
        let kept_by_state = match status["state"].as_str() {
            Some("active") => self.active,
            Some("unprocessed") => self.unprocessed,
            _ => true,
        };
        if !kept_by_state
            || (!self.silenced && not_empty("silencedBy"))
            || (!self.inhibited && not_empty("inhibitedBy"))
        {
            return false;
        }
        if self.matchers.is_empty() {
            return true;
        }
        let labels =
            vigil_model::Labels::from_pairs(alert["labels"].as_object().into_iter().flatten().map(
                |(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_string()),
            ));
        self.matchers.iter().all(|matcher| matcher.matches(&labels))
    }

    fn keeps_receiver(&self, name: &str) -> bool {
        self.receiver
            .as_ref()
            .is_none_or(|receiver| receiver.is_match(name))
    }

    /// Returns whether an alert passes every filter, its receivers included.
    fn keeps(&self, alert: &serde_json::Value) -> bool {
        let receivers = alert["receivers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let receiver_kept = self.receiver.is_none()
            || receivers
                .iter()
                .any(|receiver| self.keeps_receiver(receiver["name"].as_str().unwrap_or_default()));
        receiver_kept && self.keeps_alert(alert)
    }
}

async fn list_v2_alerts(
    State(alerting): State<Alerting>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let filter = match AlertFilter::from_query(&params) {
        Ok(filter) => filter,
        Err(error) => return bad_request(error),
    };
    let dispatcher = alerting.dispatcher.clone();
    match tokio::task::spawn_blocking(move || dispatcher.lock().api_alerts(now_ms())).await {
        Ok(alerts) => {
            let mut alerts: Vec<serde_json::Value> = alerts
                .into_iter()
                .filter(|alert| filter.keeps(alert))
                .collect();
            alerts.sort_by(|left, right| {
                left["fingerprint"]
                    .as_str()
                    .cmp(&right["fingerprint"].as_str())
            });
            Json(alerts).into_response()
        }
        Err(error) => internal(error.to_string()),
    }
}

async fn list_v2_groups(
    State(alerting): State<Alerting>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let filter = match AlertFilter::from_query(&params) {
        Ok(filter) => filter,
        Err(error) => return bad_request(error),
    };
    let dispatcher = alerting.dispatcher.clone();
    match tokio::task::spawn_blocking(move || dispatcher.lock().api_groups(now_ms())).await {
        Ok(groups) => {
            let groups: Vec<serde_json::Value> = groups
                .into_iter()
                .filter(|group| {
                    filter.keeps_receiver(group["receiver"]["name"].as_str().unwrap_or_default())
                })
                .filter_map(|mut group| {
                    let alerts = group["alerts"].as_array_mut()?;
                    alerts.retain(|alert| filter.keeps_alert(alert));
                    (!alerts.is_empty()).then_some(group)
                })
                .collect();
            Json(groups).into_response()
        }
        Err(error) => internal(error.to_string()),
    }
}

/// An alert as a Prometheus server posts it (`PostableAlert`).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostableAlert {
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    starts_at: Option<String>,
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(default, rename = "generatorURL")]
    generator_url: String,
}

async fn post_v2_alerts(State(alerting): State<Alerting>, body: axum::body::Bytes) -> Response {
    let posted: Vec<PostableAlert> = match serde_json::from_slice(&body) {
        Ok(posted) => posted,
        Err(error) => return (StatusCode::BAD_REQUEST, Json(error.to_string())).into_response(),
    };
    let now = now_ms();
    let mut alerts = Vec::with_capacity(posted.len());
    for alert in posted {
        let labels = vigil_model::Labels::from_pairs(alert.labels);
        if labels.is_empty() {
            return (StatusCode::BAD_REQUEST, Json("an alert must have labels")).into_response();
        }
        let time = |text: &Option<String>| {
            text.as_deref()
                .filter(|text| !text.is_empty() && !text.starts_with("0001-"))
                .and_then(parse_time)
        };
        alerts.push(crate::manager::NotifiableAlert {
            fingerprint: labels.fingerprint(),
            labels,
            annotations: alert.annotations,
            starts_at_ms: time(&alert.starts_at).unwrap_or(now),
            ends_at_ms: time(&alert.ends_at),
            generator_url: alert.generator_url,
            value: f64::NAN,
        });
    }
    let dispatcher = alerting.dispatcher.clone();
    match tokio::task::spawn_blocking(move || dispatcher.lock().insert(alerts, now)).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(error) => internal(error.to_string()),
    }
}

async fn status() -> Response {
    Json(json!({
        "cluster": {"status": "disabled", "peers": []},
        "versionInfo": {
            "version": env!("CARGO_PKG_VERSION"),
            "branch": "", "revision": "", "buildUser": "", "buildDate": "",
            "goVersion": "vigil (rust)",
        },
        "config": {"original": ""},
        "uptime": crate::store::rfc3339(now_ms()),
    }))
    .into_response()
}
