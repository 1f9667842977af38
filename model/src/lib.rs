//! Shared data types of Vigil, with no I/O: label sets, samples, quantile sketches, and the
//! traits through which the collector writes metrics and the query engines read them.
//!
//! Dependency direction: `model` ← `collector`, `query` ← the `vigil` binary. The collector
//! never imports `query`; it writes through [`MetricSink`], which the binary hands it.
#![warn(missing_docs)]

pub mod api;
mod labels;
mod log;
mod matcher;
mod sample;
mod sink;
mod sketch;
mod span;
pub mod telemetry;
pub mod units;

pub use labels::{Label, Labels, METRIC_NAME};
pub use log::{LogRecord, LogSink, LogSinkError, MemoryLogSink};
pub use matcher::{LabelMatcher, MatchOp, MatcherError};
pub use sample::{
    is_stale_marker, stale_marker, MetricBatch, MetricMetadata, MetricType, Sample, SeriesSamples,
    SketchSample, STALE_MARKER_BITS,
};
pub use sink::{
    Bucket, MetricReader, MetricSink, ReadError, SelectHints, SeriesSketches, SinkError,
};
pub use sketch::{Sketch, SketchDecodeError, SKETCH_RELATIVE_ACCURACY};
pub use span::{
    hex_id, parse_hex_id, MemorySpanSink, Span, SpanEvent, SpanKind, SpanLink, SpanResource,
    SpanSink, SpanSinkError, StatusCode,
};
pub use telemetry::Telemetry;
