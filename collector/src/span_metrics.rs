//! Span metrics: RED signals of traced services, derived at ingest so alert rules can watch
//! them in PromQL without StatsD.
//!
//! [`SpanMetricsSink`] wraps the span store's [`SpanSink`]. After the inner write succeeds
//! (so only acknowledged spans count), each span adds to its series; [`run_flusher`] writes
//! them through the [`MetricSink`] every `statsd.flush_interval`, stamped with the flush time:
//!
//! - `vigil_span_calls_total{service,operation,kind,status}`: a counter per status (`unset`,
//!   `ok`, `error`);
//! - `vigil_span_duration_seconds{service,operation,kind}`: a quantile sketch of the durations
//!   of the interval (so `histogram_quantile(0.99, sum by (service)
//!   (rate(vigil_span_duration_seconds[5m])))` and `quantile_over_time` work as for StatsD
//!   timers), `{quantile="0.5"|"0.9"|"0.99"}` gauges of the interval, and cumulative `_sum` and
//!   `_count`.
//!
//! The number of (service, operation, kind) series is bounded; spans of series past the bound
//! are counted in `vigil_span_metrics_overflow_total` and logged, and still stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use vigil_model::telemetry::Counter;
use vigil_model::{
    Labels, MetricBatch, MetricMetadata, MetricType, Sample, SeriesSamples, Sketch, SketchSample,
    Span, SpanKind, SpanSink, SpanSinkError, StatusCode, Telemetry, METRIC_NAME,
};

/// The calls counter.
pub const CALLS_METRIC: &str = "vigil_span_calls_total";
/// The duration sketch (and the base of `_sum` and `_count`).
pub const DURATION_METRIC: &str = "vigil_span_duration_seconds";
/// Default bound of (service, operation, kind) series.
pub const DEFAULT_MAX_SERIES: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    service: String,
    operation: String,
    kind: SpanKind,
}

#[derive(Debug, Default)]
struct SeriesState {
    /// Cumulative calls per status: unset, ok, error.
    calls: [u64; 3],
    /// Cumulative duration sum, seconds.
    duration_sum: f64,
    /// Cumulative duration count.
    duration_count: u64,
    /// Durations of the current interval, seconds.
    interval: Option<Box<Sketch>>,
}

#[derive(Debug, Default)]
struct State {
    series: HashMap<SeriesKey, SeriesState>,
    announced: bool,
    overflowed_since_flush: u64,
}

/// A [`SpanSink`] that derives span metrics from what its inner sink acknowledged.
pub struct SpanMetricsSink {
    inner: Arc<dyn SpanSink>,
    state: Mutex<State>,
    max_series: usize,
    quantiles: Vec<f64>,
    overflow: Counter,
}

impl SpanMetricsSink {
    /// Wraps `inner`, keeping at most `max_series` series and writing `quantiles` gauges.
    pub fn new(
        inner: Arc<dyn SpanSink>,
        telemetry: &Telemetry,
        max_series: usize,
        quantiles: Vec<f64>,
    ) -> Self {
        SpanMetricsSink {
            inner,
            state: Mutex::new(State::default()),
            max_series,
            quantiles,
            overflow: telemetry.counter(
                "vigil_span_metrics_overflow_total",
                "Spans not counted in span metrics because their service and operation were past the series limit.",
                &[],
            ),
        }
    }

    /// Adds acknowledged spans to their series.
    fn observe(&self, observed: Vec<(SeriesKey, StatusCode, i64)>) {
        let mut state = self.state.lock();
        let mut overflowed = 0u64;
        for (key, status, duration_ns) in observed {
            let series_count = state.series.len();
            let series = match state.series.get_mut(&key) {
                Some(series) => series,
                None if series_count < self.max_series => state.series.entry(key).or_default(),
                None => {
                    overflowed += 1;
                    continue;
                }
            };
            let status_index = match status {
                StatusCode::Unset => 0,
                StatusCode::Ok => 1,
                StatusCode::Error => 2,
            };
            series.calls[status_index] += 1;
            let seconds = duration_ns as f64 / 1e9;
            series.duration_sum += seconds;
            series.duration_count += 1;
            series
                .interval
                .get_or_insert_with(|| Box::new(Sketch::new()))
                .add(seconds);
        }
        if overflowed > 0 {
            state.overflowed_since_flush += overflowed;
            self.overflow.add(overflowed);
        }
    }

    /// Returns every series' samples at `timestamp_ms` and starts a new interval.
    pub fn flush(&self, timestamp_ms: i64) -> MetricBatch {
        let mut batch = MetricBatch::default();
        let mut state = self.state.lock();
        if state.overflowed_since_flush > 0 {
            tracing::warn!(
                spans = state.overflowed_since_flush,
                limit = self.max_series,
                "span metrics: spans of new service/operation series past the limit were not counted"
            );
            state.overflowed_since_flush = 0;
        }
        if !state.announced && !state.series.is_empty() {
            state.announced = true;
            batch.metadata.push(MetricMetadata {
                metric_name: CALLS_METRIC.to_string(),
                metric_type: MetricType::Counter,
                help: "Spans stored, per service, operation, kind and status.".to_string(),
                unit: String::new(),
            });
            batch.metadata.push(MetricMetadata {
                metric_name: DURATION_METRIC.to_string(),
                metric_type: MetricType::Summary,
                help: "Span durations, per service, operation and kind.".to_string(),
                unit: "seconds".to_string(),
            });
        }
        let sample = |value: f64| {
            vec![Sample {
                timestamp_ms,
                value,
            }]
        };
        for (key, series) in state.series.iter_mut() {
            let base = [
                ("service", key.service.as_str()),
                ("operation", key.operation.as_str()),
                ("kind", key.kind.as_str()),
            ];
            for (status_index, status) in ["unset", "ok", "error"].into_iter().enumerate() {
                let calls = series.calls[status_index];
                if calls == 0 {
                    continue;
                }
                let mut labels = Labels::with_name(CALLS_METRIC, base);
                labels.set("status".to_string(), status.to_string());
                batch.series.push(SeriesSamples {
                    labels,
                    samples: sample(calls as f64),
                });
            }
            let duration_labels = Labels::with_name(DURATION_METRIC, base);
            if let Some(sketch) = series.interval.take() {
                for quantile in &self.quantiles {
                    let Some(value) = sketch.quantile(*quantile) else {
                        continue;
                    };
                    let mut labels = duration_labels.clone();
                    labels.set("quantile".to_string(), format!("{quantile}"));
                    batch.series.push(SeriesSamples {
                        labels,
                        samples: sample(value),
                    });
                }
                batch.sketches.push(SketchSample {
                    labels: duration_labels.clone(),
                    timestamp_ms,
                    sketch: *sketch,
                });
            }
            for (suffix, value) in [
                ("_sum", series.duration_sum),
                ("_count", series.duration_count as f64),
            ] {
                let mut labels = duration_labels.clone();
                labels.set(
                    METRIC_NAME.to_string(),
                    format!("{DURATION_METRIC}{suffix}"),
                );
                batch.series.push(SeriesSamples {
                    labels,
                    samples: sample(value),
                });
            }
        }
        batch
    }
}

impl SpanSink for SpanMetricsSink {
    fn write(&self, spans: Vec<Span>) -> Result<(), SpanSinkError> {
        let observed: Vec<(SeriesKey, StatusCode, i64)> = spans
            .iter()
            .map(|span| {
                (
                    SeriesKey {
                        service: span.service.clone(),
                        operation: span.name.clone(),
                        kind: span.kind,
                    },
                    span.status,
                    span.duration_ns,
                )
            })
            .collect();
        self.inner.write(spans)?;
        self.observe(observed);
        Ok(())
    }
}

/// Writes span metrics every `interval` until `shutdown`, then once more.
pub async fn run_flusher(
    span_metrics: Arc<SpanMetricsSink>,
    metrics: Arc<dyn vigil_model::MetricSink>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = ticks.tick() => false,
        };
        let batch = span_metrics.flush(crate::http::now_ms());
        if !batch.is_empty() {
            let metrics = metrics.clone();
            match tokio::task::spawn_blocking(move || metrics.write(batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "span metrics write failed"),
                Err(error) => tracing::warn!(%error, "span metrics write task failed"),
            }
        }
        if stopping {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_model::MemorySpanSink;

    struct Refusing;

    impl SpanSink for Refusing {
        fn write(&self, _spans: Vec<Span>) -> Result<(), SpanSinkError> {
            Err(SpanSinkError::Overloaded)
        }
    }

    fn span(service: &str, name: &str, status: StatusCode, duration_ms: i64) -> Span {
        Span {
            service: service.to_string(),
            name: name.to_string(),
            kind: SpanKind::Server,
            status,
            duration_ns: duration_ms * 1_000_000,
            ..Span::default()
        }
    }

    fn value(batch: &MetricBatch, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        batch
            .series
            .iter()
            .find(|series| {
                series.labels.metric_name() == Some(name)
                    && labels
                        .iter()
                        .all(|(label, value)| series.labels.get(label) == Some(*value))
            })
            .map(|series| series.samples[0].value)
    }

    fn sink(inner: Arc<dyn SpanSink>, max_series: usize) -> SpanMetricsSink {
        SpanMetricsSink::new(inner, &Telemetry::new(), max_series, vec![0.5, 0.99])
    }

    #[test]
    fn calls_and_durations_per_service_operation_and_status() {
        let inner = Arc::new(MemorySpanSink::new());
        let span_metrics = sink(inner.clone(), 100);
        let mut spans: Vec<Span> = (1..=100)
            .map(|millis| span("orders", "GET /orders", StatusCode::Unset, millis))
            .collect();
        spans.push(span("orders", "GET /orders", StatusCode::Error, 500));
        span_metrics.write(spans).unwrap();
        assert_eq!(inner.spans().len(), 101);
        let batch = span_metrics.flush(1_000);
        let labels = [
            ("service", "orders"),
            ("operation", "GET /orders"),
            ("kind", "server"),
        ];
        let mut unset = labels.to_vec();
        unset.push(("status", "unset"));
        assert_eq!(value(&batch, CALLS_METRIC, &unset), Some(100.0));
        let mut error = labels.to_vec();
        error.push(("status", "error"));
        assert_eq!(value(&batch, CALLS_METRIC, &error), Some(1.0));
        let count = value(&batch, "vigil_span_duration_seconds_count", &labels);
        assert_eq!(count, Some(101.0));
        let p99 = value(&batch, DURATION_METRIC, &[("quantile", "0.99")]).unwrap();
        assert!((p99 - 0.1).abs() < 0.002, "{p99}");
        assert_eq!(batch.sketches.len(), 1);
        assert_eq!(batch.sketches[0].sketch.count(), 101);
        assert_eq!(batch.metadata.len(), 2);
        // The next interval has no sketch, and the counters stay cumulative.
        let next = span_metrics.flush(2_000);
        assert!(next.sketches.is_empty());
        assert_eq!(value(&next, CALLS_METRIC, &unset), Some(100.0));
    }

    #[test]
    fn refused_writes_are_not_counted() {
        let span_metrics = sink(Arc::new(Refusing), 100);
        let result = span_metrics.write(vec![span("a", "b", StatusCode::Ok, 1)]);
        assert!(matches!(result, Err(SpanSinkError::Overloaded)));
        assert!(span_metrics.flush(1).series.is_empty());
    }

    #[test]
    fn series_past_the_limit_are_counted_not_kept() {
        let telemetry = Telemetry::new();
        let span_metrics =
            SpanMetricsSink::new(Arc::new(MemorySpanSink::new()), &telemetry, 2, vec![0.5]);
        let spans = (0..5)
            .map(|index| span("svc", &format!("op-{index}"), StatusCode::Ok, 1))
            .collect();
        span_metrics.write(spans).unwrap();
        let batch = span_metrics.flush(1);
        let operations = batch
            .series
            .iter()
            .filter(|series| series.labels.metric_name() == Some(CALLS_METRIC))
            .count();
        assert_eq!(operations, 2);
        assert!(telemetry
            .render()
            .contains("vigil_span_metrics_overflow_total 3"));
    }
}
