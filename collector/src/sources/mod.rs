//! One folder per ingest protocol: config, pure decoder, listener.

pub mod forward;
pub mod import;
pub mod json_logs;
pub mod otlp;
pub mod remote_write;
pub mod statsd;
