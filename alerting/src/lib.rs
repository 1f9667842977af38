//! Vigil's alerting: Prometheus rule files evaluated with Prometheus' semantics, alert state
//! persisted in SQLite, Alertmanager-style routing and grouping, and a durable notification
//! outbox delivering Alertmanager's webhook payload.
//!
//! Dependency direction: this crate knows `vigil-model` only. It reads series through
//! [`QueryEngine`], which the binary implements over its PromQL engine, and writes recording
//! rule results and the `ALERTS` series through [`vigil_model::MetricSink`].
#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod dispatch;
pub mod email;
pub mod manager;
pub mod notify;
pub mod route;
pub mod rule;
pub mod service;
pub mod silence;
pub mod state;
pub mod store;
pub mod template;

#[cfg(test)]
mod proptests;

use vigil_model::Labels;

/// How alerting evaluates PromQL: an instant query at a time.
///
/// Contract: returns the instant vector of `expr` at `time_ms` (a scalar result as one sample
/// with no labels). The call blocks; the rule manager runs it on a blocking thread.
pub trait QueryEngine: Send + Sync {
    /// Evaluates `expr` at `time_ms`.
    ///
    /// # Errors
    /// The engine's message when the query fails.
    fn instant_query(&self, expr: &str, time_ms: i64) -> Result<Vec<(Labels, f64)>, String>;
}
