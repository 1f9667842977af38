use std::sync::Arc;

use crate::{LabelMatcher, Labels, MetricBatch, MetricMetadata, Sample, SeriesSamples, Sketch};

/// The metric store refused a write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The store is full for now; the caller should retry later (HTTP 429/503).
    #[error("metric store is overloaded, retry later")]
    Overloaded,
    /// Some series went past a configured limit; the others were written.
    #[error("{rejected} series rejected: {reason}")]
    LimitExceeded {
        /// How many series were rejected.
        rejected: usize,
        /// Which limit.
        reason: String,
    },
    /// The store failed; nothing of the batch is acknowledged.
    #[error("metric store failed: {0}")]
    Storage(String),
}

/// Where the collector writes metrics.
///
/// Contract: when [`MetricSink::write`] returns `Ok`, every sample of the batch is durable (it
/// survives a kill -9 of the process). The call blocks: call it from a blocking thread.
pub trait MetricSink: Send + Sync {
    /// Writes a batch durably.
    ///
    /// # Errors
    /// [`SinkError::Overloaded`] when the caller should back off; other variants when the batch
    /// (or part of it, for `LimitExceeded`) was not written.
    fn write(&self, batch: MetricBatch) -> Result<(), SinkError>;
}

/// What a query wants from a selection, so the store can pick a rollup level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelectHints {
    /// First timestamp needed (ms, inclusive).
    pub start_ms: i64,
    /// Last timestamp needed (ms, inclusive).
    pub end_ms: i64,
    /// The query's step (0 for instant queries).
    pub step_ms: i64,
    /// The range of the matrix selector around each step (0 for instant vectors).
    pub range_ms: i64,
    /// True when, for every window, the caller needs only the first and last sample of each
    /// bucket of a rollup level plus the samples around decreases: instant selectors (newest
    /// sample within the lookback), `resets`, `last_over_time`, `present_over_time`,
    /// `absent_over_time`. The store may then answer from the coarsest level whose buckets
    /// line up with the windows, which gives the same result as the raw samples. (`rate` and
    /// friends also weigh the number of samples in a window, so they always read raw samples
    /// while those exist.)
    pub first_last_suffice: bool,
}

/// What a rollup level keeps of the samples of one series in one bucket `(end - res, end]`.
/// Statistics cover the samples that are not staleness markers; `last_any` is the newest
/// sample of the bucket, marker or not.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    /// End of the bucket (ms, inclusive).
    pub end_ms: i64,
    /// Samples in the bucket, staleness markers excluded.
    pub count: u64,
    /// Oldest sample (not a marker); meaningless when `count` is 0.
    pub first: Sample,
    /// Newest sample (not a marker); meaningless when `count` is 0.
    pub last: Sample,
    /// Newest sample including staleness markers.
    pub last_any: Sample,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of values.
    pub sum: f64,
    /// Decreases between consecutive samples of the bucket (counter resets).
    pub resets: u64,
    /// Sum of the value before each decrease, as Prometheus adds them to a counter's increase.
    pub reset_correction: f64,
}

/// The metric store failed to answer a read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The query touched more series or samples than allowed.
    #[error("query exceeds the limit: {0}")]
    TooLarge(String),
    /// The store failed.
    #[error("metric store failed: {0}")]
    Storage(String),
}

/// Sketches of one series, oldest first.
#[derive(Clone, Debug)]
pub struct SeriesSketches {
    /// The series.
    pub labels: Labels,
    /// `(interval end ms, sketch)` pairs.
    pub sketches: Vec<(i64, Arc<Sketch>)>,
}

/// How query engines and alerting read metrics. Implemented by the SQLite store, and by an
/// in-memory store in tests.
pub trait MetricReader: Send + Sync {
    /// Returns every series matching all `matchers`, with its samples in
    /// `[hints.start_ms, hints.end_ms]`. Series with no sample in the window may be omitted.
    ///
    /// # Errors
    /// [`ReadError`] when the store fails or the selection is too large.
    fn select(
        &self,
        matchers: &[LabelMatcher],
        hints: &SelectHints,
    ) -> Result<Vec<SeriesSamples>, ReadError>;

    /// Hands `visit` the per-bucket statistics of every series matching `matchers`, one series
    /// at a time, for buckets ending in `[hints.start_ms, hints.end_ms]`, from the coarsest
    /// rollup level whose resolution divides `hints.step_ms`, `hints.range_ms` and
    /// `hints.end_ms`; returns that resolution, or `None` (having visited nothing) when no level
    /// lines up and the caller should read samples. Buckets hold every sample the store has,
    /// recent ones included, so functions computed from them (`rate`, `increase`, `delta`,
    /// `resets`, `count/min/max_over_time`) equal those over the samples. Series are visited one
    /// by one so a query over many series never holds all their buckets at once. The buckets
    /// handed over need not carry `sum` or `last_any`, which none of those functions reads. A
    /// store may visit several series at the same time from different threads, in any order.
    ///
    /// # Errors
    /// [`ReadError`] when the store fails or the selection is too large.
    fn visit_buckets(
        &self,
        matchers: &[LabelMatcher],
        hints: &SelectHints,
        visit: &(dyn Fn(&Labels, &[Bucket]) + Sync),
    ) -> Result<Option<i64>, ReadError> {
        let _ = (matchers, hints, visit);
        Ok(None)
    }

    /// Returns the sketches of every sketch series matching `matchers` in the window.
    ///
    /// # Errors
    /// [`ReadError`] when the store fails or the selection is too large.
    fn select_sketches(
        &self,
        matchers: &[LabelMatcher],
        hints: &SelectHints,
    ) -> Result<Vec<SeriesSketches>, ReadError>;

    /// Returns the label sets of series matching any of `selectors` with data in
    /// `[start_ms, end_ms]`.
    ///
    /// # Errors
    /// [`ReadError`] when the store fails.
    fn series(
        &self,
        selectors: &[Vec<LabelMatcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Labels>, ReadError>;

    /// Returns metadata per metric family.
    ///
    /// # Errors
    /// [`ReadError`] when the store fails.
    fn metadata(&self) -> Result<Vec<MetricMetadata>, ReadError>;
}
