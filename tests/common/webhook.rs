//! A webhook receiver on 127.0.0.1 for the alerting tests: it records every request, answers
//! with the statuses a test asks for, and waits for messages. Also the helpers that feed
//! alert rules through `/api/v1/import`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use serde_json::Value;

use super::Vigil;

/// Records every request (headers, JSON body, arrival time) and answers with the next status
/// of `statuses` (200 once they run out). Serves both `/hook` and Alertmanager's
/// `/api/v2/alerts`.
#[derive(Clone, Default)]
pub struct Receiver {
    pub received: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    pub received_at: Arc<Mutex<Vec<Instant>>>,
    statuses: Arc<Mutex<Vec<StatusCode>>>,
}

impl Receiver {
    /// Starts a receiver on a free port; returns it and its `/hook` URL.
    pub async fn start(failures_first: Vec<StatusCode>) -> (Receiver, String) {
        Receiver::start_on("127.0.0.1:0", failures_first).await
    }

    pub async fn start_on(address: &str, failures_first: Vec<StatusCode>) -> (Receiver, String) {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        Receiver::start_with(listener, failures_first)
    }

    pub fn start_with(
        listener: tokio::net::TcpListener,
        failures_first: Vec<StatusCode>,
    ) -> (Receiver, String) {
        let receiver = Receiver::default();
        *receiver.statuses.lock() = failures_first;
        let address = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/hook", post(hook))
            .route("/api/v2/alerts", post(hook))
            .with_state(receiver.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (receiver, format!("http://{address}/hook"))
    }

    /// The JSON bodies accepted so far, oldest first.
    pub fn messages(&self) -> Vec<Value> {
        self.received
            .lock()
            .iter()
            .map(|(_, body)| body.clone())
            .collect()
    }

    /// Polls until at least `count` messages arrived, for at most `patience`.
    pub async fn wait_for(&self, count: usize, patience: Duration) -> anyhow::Result<Vec<Value>> {
        wait_for_count("webhook messages", count, patience, || self.messages()).await
    }

    /// Polls until a message satisfies `wanted`, for at most `patience`.
    pub async fn wait_for_message(
        &self,
        what: &str,
        patience: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(message) = self.messages().into_iter().find(&wanted) {
                return Ok(message);
            }
            if Instant::now() > deadline {
                bail!(
                    "no webhook message {what} after {patience:?}; got {:#?}",
                    self.messages()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Polls `fetch` every 50 ms until it returns at least `count` items, for at most `patience`;
/// the error names `what` and shows what arrived.
pub async fn wait_for_count<T: std::fmt::Debug>(
    what: &str,
    count: usize,
    patience: Duration,
    fetch: impl Fn() -> Vec<T>,
) -> anyhow::Result<Vec<T>> {
    let deadline = Instant::now() + patience;
    loop {
        let items = fetch();
        if items.len() >= count {
            return Ok(items);
        }
        if Instant::now() > deadline {
            bail!(
                "{} {what} after {patience:?}, wanted {count}: {items:#?}",
                items.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn hook(State(receiver): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let status = {
        let mut statuses = receiver.statuses.lock();
        if statuses.is_empty() {
            StatusCode::OK
        } else {
            statuses.remove(0)
        }
    };
    if status.is_success() {
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        receiver.received.lock().push((headers, json));
        receiver.received_at.lock().push(Instant::now());
    }
    status
}

/// The ten top-level fields of Alertmanager's webhook payload (version 4).
pub const WEBHOOK_V4_FIELDS: [&str; 10] = [
    "receiver",
    "status",
    "alerts",
    "groupLabels",
    "commonLabels",
    "commonAnnotations",
    "externalURL",
    "version",
    "groupKey",
    "truncatedAlerts",
];

/// Asserts that `message` has every field of a version 4 webhook payload.
pub fn assert_webhook_v4_fields(message: &Value) {
    for field in WEBHOOK_V4_FIELDS {
        assert!(message.get(field).is_some(), "missing {field}: {message:#}");
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Imports `error_ratio{service=...} value` for each service, timestamped now.
pub async fn import_error_ratio(
    vigil: &Vigil,
    services: &[&str],
    value: f64,
) -> anyhow::Result<()> {
    let now = now_ms();
    let body: String = services
        .iter()
        .map(|service| format!("error_ratio{{service=\"{service}\"}} {value} {now}\n"))
        .collect();
    let response = vigil
        .client
        .post(vigil.url("/api/v1/import"))
        .body(body)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!(
            "import failed: {} {}",
            response.status(),
            response.text().await?
        );
    }
    Ok(())
}
