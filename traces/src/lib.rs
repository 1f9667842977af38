//! Vigil's span store and trace query API (DESIGN.md §4 "Traces", §6).
//!
//! - [`SpanStore`]: time-partitioned SQLite files (with the span bodies in a file of their
//!   own) implementing [`vigil_model::SpanSink`], keyed by trace ID, service + start time and
//!   correlation ID.
//! - [`query`]: trace by ID, search, services, operations, dependencies, correlation.
//! - [`api`]: the HTTP routes, in Vigil's shape under `/api/v1/` and in Jaeger's query API
//!   shape under `/jaeger/api/` (so Grafana's Jaeger data source browses Vigil).
#![warn(missing_docs)]

pub mod api;
pub mod codec;
mod jaeger;
pub mod query;
mod store;
pub mod synthetic;

pub use api::{router, CorrelatedLogs, NoLogs};
pub use store::{SpanStore, SpanStoreOptions, StoreError};

#[cfg(test)]
mod tests;
