//! Vigil's collector: listeners and decoders for every ingest protocol, StatsD aggregation and
//! Prometheus scraping. Sources write metrics through [`vigil_model::MetricSink`]; the collector
//! never reads a store.
#![warn(missing_docs)]

pub mod http;
pub mod scrape;
pub mod sources;
pub mod span_metrics;
pub mod tokens;
