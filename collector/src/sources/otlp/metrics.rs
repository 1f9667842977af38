//! `ExportMetricsServiceRequest` → a [`MetricBatch`] named as the OpenTelemetry Collector's
//! Prometheus exporter names it ([`naming`](super::naming)), with
//! `resource_to_telemetry_conversion` on:
//!
//! - labels: every resource attribute (sanitised name), `job` (`service.namespace/service.name`
//!   or `service.name`), `instance` (`service.instance.id`), `otel_scope_name` and
//!   `otel_scope_version`, then the point's attributes (which win over resource attributes of
//!   the same label name; attributes of one point that sanitise to the same label name are
//!   joined with `;`);
//! - `target_info` (value 1) per resource with the resource attributes other than
//!   `service.name`, `service.namespace` and `service.instance.id`;
//! - gauges and sums: one sample per point (`_total` for monotonic sums, `_ratio` for gauges of
//!   unit `1`); delta sums are accumulated into a cumulative value per series, as the exporter
//!   does;
//! - histograms: `_bucket{le}` (cumulative over the bounds, `+Inf` = count), `_sum`, `_count`;
//!   delta histograms accumulated;
//! - exponential histograms: a quantile sketch per point (the observations since the previous
//!   point: the point itself for delta temporality, the difference to the previous point for
//!   cumulative; each bucket's count at its geometric middle), plus cumulative `_sum` and
//!   `_count`, so `histogram_quantile(0.99, sum by (…) (rate(name[5m])))` and
//!   `quantile_over_time` answer from the sketches as for StatsD timers;
//! - summaries: `{quantile="q"}`, `_sum`, `_count`;
//! - metadata: type, description as help, unit.
//!
//! A histogram whose bucket counts do not number one more than its bounds is taken as the
//! exporter takes it: buckets for the bounds that have a count, `+Inf` from the point's count.
//! A point without a value, a sum or histogram of unspecified temporality, and points past the
//! accumulator's series limit are rejected; the rest of the request is kept.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, ExponentialHistogramDataPoint,
    HistogramDataPoint, Metric, NumberDataPoint,
};
use vigil_model::{
    stale_marker, Labels, MetricBatch, MetricMetadata, MetricType, Sample, SeriesSamples, Sketch,
    SketchSample, METRIC_NAME,
};

use super::attributes::any_value_to_text;
use super::naming::{label_name, metric_name, NameKind};
use super::Rejections;

/// OTLP's `DataPointFlags.FLAG_NO_RECORDED_VALUE`: the series went away (a staleness marker).
const FLAG_NO_RECORDED_VALUE: u32 = 1;
/// Resource attributes that identify the target and stay out of `target_info`.
const IDENTIFYING_ATTRIBUTES: [&str; 3] =
    ["service.name", "service.namespace", "service.instance.id"];

/// What delta accumulation and cumulative exponential histograms remember per series.
///
/// A conversion records its changes as pending; the caller makes them stick with
/// [`MetricsState::commit`] once the batch is written, or drops them with
/// [`MetricsState::rollback`] when it was not, so a client's retry of a refused delta export
/// is not counted twice.
#[derive(Debug)]
pub struct MetricsState {
    series: HashMap<Labels, Remembered>,
    pending: HashMap<Labels, Remembered>,
    announced_families: HashSet<String>,
    pending_families: Vec<String>,
    max_series: usize,
}

#[derive(Clone, Debug)]
enum Remembered {
    /// The cumulative total of a delta sum.
    Sum(f64),
    /// The cumulative totals of a delta histogram.
    Histogram {
        bounds: Vec<f64>,
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
    /// An exponential histogram: totals written so far and, for cumulative temporality, the
    /// previous point's buckets.
    Exponential {
        sum: f64,
        count: u64,
        previous: Option<ExponentialBuckets>,
    },
}

/// The buckets of one exponential histogram point, keyed by absolute index.
#[derive(Clone, Debug, Default, PartialEq)]
struct ExponentialBuckets {
    scale: i32,
    zero_count: u64,
    positive: HashMap<i64, u64>,
    negative: HashMap<i64, u64>,
}

impl MetricsState {
    /// Returns empty state remembering at most `max_series` series.
    pub fn new(max_series: usize) -> Self {
        MetricsState {
            series: HashMap::new(),
            pending: HashMap::new(),
            announced_families: HashSet::new(),
            pending_families: Vec::new(),
            max_series,
        }
    }

    /// Keeps the changes of the conversions since the last commit or rollback.
    pub fn commit(&mut self) {
        self.series.extend(self.pending.drain());
        self.announced_families
            .extend(self.pending_families.drain(..));
    }

    /// Forgets the changes of the conversions since the last commit or rollback.
    pub fn rollback(&mut self) {
        self.pending.clear();
        self.pending_families.clear();
    }

    /// Returns the pending state of `labels`, starting from the committed one or `initial`.
    fn remembered_mut(
        &mut self,
        labels: &Labels,
        initial: impl FnOnce() -> Remembered,
    ) -> &mut Remembered {
        match self.pending.entry(labels.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                entry.insert(self.series.get(labels).cloned().unwrap_or_else(initial))
            }
        }
    }

    /// Returns the number of series remembered.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    fn has_room_for(&self, labels: &Labels) -> bool {
        self.series.len() + self.pending.len() < self.max_series
            || self.series.contains_key(labels)
            || self.pending.contains_key(labels)
    }
}

/// The metrics of a request, and what was rejected.
#[derive(Debug, Default)]
pub struct ConvertedMetrics {
    /// Samples, sketches and metadata to write.
    pub batch: MetricBatch,
    /// Data points received.
    pub points: u64,
    /// The rejected data points.
    pub rejections: Rejections,
}

/// Converts every data point of the request; `now_ms` stamps points without a time.
pub fn convert_metrics(
    request: &ExportMetricsServiceRequest,
    state: &mut MetricsState,
    now_ms: i64,
) -> ConvertedMetrics {
    let mut converted = ConvertedMetrics::default();
    for resource_metrics in &request.resource_metrics {
        let resource_attributes = resource_metrics
            .resource
            .as_ref()
            .map(|resource| resource.attributes.as_slice())
            .unwrap_or_default();
        let mut resource_labels = Labels::empty();
        add_attribute_labels(&mut resource_labels, resource_attributes);
        let job = job_label(resource_attributes);
        let instance = text_attribute(resource_attributes, "service.instance.id");
        resource_labels.set("job".to_string(), job.clone());
        resource_labels.set("instance".to_string(), instance.clone());
        let mut latest_ms = 0;
        for scope_metrics in &resource_metrics.scope_metrics {
            let mut scope_labels = resource_labels.clone();
            if let Some(scope) = &scope_metrics.scope {
                scope_labels.set("otel_scope_name".to_string(), scope.name.clone());
                scope_labels.set("otel_scope_version".to_string(), scope.version.clone());
            }
            for metric in &scope_metrics.metrics {
                let mut context = PointContext {
                    base_labels: &scope_labels,
                    state: &mut *state,
                    converted: &mut converted,
                    now_ms,
                    latest_ms: &mut latest_ms,
                };
                context.convert_metric(metric);
            }
        }
        let info_attributes: Vec<KeyValue> = resource_attributes
            .iter()
            .filter(|attribute| !IDENTIFYING_ATTRIBUTES.contains(&attribute.key.as_str()))
            .cloned()
            .collect();
        if !info_attributes.is_empty() {
            let mut labels = Labels::empty();
            add_attribute_labels(&mut labels, &info_attributes);
            labels.set("job".to_string(), job);
            labels.set("instance".to_string(), instance);
            labels.set(METRIC_NAME.to_string(), "target_info".to_string());
            let timestamp_ms = if latest_ms > 0 { latest_ms } else { now_ms };
            push_sample(&mut converted.batch, labels, timestamp_ms, 1.0);
            announce(
                state,
                &mut converted.batch,
                "target_info",
                MetricType::Gauge,
                "Target metadata",
                "",
            );
        }
    }
    converted
}

struct PointContext<'a> {
    base_labels: &'a Labels,
    state: &'a mut MetricsState,
    converted: &'a mut ConvertedMetrics,
    now_ms: i64,
    latest_ms: &'a mut i64,
}

impl PointContext<'_> {
    fn convert_metric(&mut self, metric: &Metric) {
        let Some(data) = &metric.data else {
            return;
        };
        match data {
            metric::Data::Gauge(gauge) => {
                let name = metric_name(&metric.name, &metric.unit, NameKind::Gauge);
                self.announce(&name, MetricType::Gauge, metric);
                for point in &gauge.data_points {
                    self.number_point(&name, point, None);
                }
            }
            metric::Data::Sum(sum) => {
                let kind = if sum.is_monotonic {
                    NameKind::MonotonicSum
                } else {
                    NameKind::Gauge
                };
                let name = metric_name(&metric.name, &metric.unit, kind);
                let metric_type = if sum.is_monotonic {
                    MetricType::Counter
                } else {
                    MetricType::Gauge
                };
                self.announce(&name, metric_type, metric);
                let temporality = sum.aggregation_temporality;
                for point in &sum.data_points {
                    if temporality == AggregationTemporality::Unspecified as i32 {
                        self.reject_unspecified(&metric.name);
                        continue;
                    }
                    let is_delta = temporality == AggregationTemporality::Delta as i32;
                    self.number_point(&name, point, Some(is_delta));
                }
            }
            metric::Data::Histogram(histogram) => {
                let name = metric_name(&metric.name, &metric.unit, NameKind::Other);
                self.announce(&name, MetricType::Histogram, metric);
                let temporality = histogram.aggregation_temporality;
                for point in &histogram.data_points {
                    if temporality == AggregationTemporality::Unspecified as i32 {
                        self.reject_unspecified(&metric.name);
                        continue;
                    }
                    let is_delta = temporality == AggregationTemporality::Delta as i32;
                    self.histogram_point(&name, point, is_delta);
                }
            }
            metric::Data::ExponentialHistogram(histogram) => {
                let name = metric_name(&metric.name, &metric.unit, NameKind::Other);
                self.announce(&name, MetricType::Summary, metric);
                let temporality = histogram.aggregation_temporality;
                for point in &histogram.data_points {
                    if temporality == AggregationTemporality::Unspecified as i32 {
                        self.reject_unspecified(&metric.name);
                        continue;
                    }
                    let is_delta = temporality == AggregationTemporality::Delta as i32;
                    self.exponential_point(&name, point, is_delta);
                }
            }
            metric::Data::Summary(summary) => {
                let name = metric_name(&metric.name, &metric.unit, NameKind::Other);
                self.announce(&name, MetricType::Summary, metric);
                for point in &summary.data_points {
                    self.converted.points += 1;
                    let labels = self.point_labels(&name, &point.attributes);
                    let timestamp_ms = self.timestamp_ms(point.time_unix_nano);
                    if point.flags & FLAG_NO_RECORDED_VALUE != 0 {
                        continue;
                    }
                    for quantile in &point.quantile_values {
                        let mut quantile_labels = labels.clone();
                        quantile_labels
                            .set("quantile".to_string(), format!("{}", quantile.quantile));
                        self.push(quantile_labels, timestamp_ms, quantile.value);
                    }
                    self.push_suffixed(&labels, &name, "_sum", timestamp_ms, point.sum);
                    self.push_suffixed(&labels, &name, "_count", timestamp_ms, point.count as f64);
                }
            }
        }
    }

    fn announce(&mut self, name: &str, metric_type: MetricType, metric: &Metric) {
        announce(
            self.state,
            &mut self.converted.batch,
            name,
            metric_type,
            &metric.description,
            &metric.unit,
        );
    }

    fn reject_unspecified(&mut self, otlp_name: &str) {
        self.converted.points += 1;
        self.converted.rejections.reject((
            "unspecified_temporality",
            format!("metric `{otlp_name}`: aggregation temporality is unspecified"),
        ));
    }

    fn reject_series_limit(&mut self, name: &str) {
        self.converted.rejections.reject((
            "accumulator_full",
            format!(
                "metric `{name}`: more than {} delta or exponential histogram series",
                self.state.max_series
            ),
        ));
    }

    /// `delta`: `None` for gauges, `Some(is_delta)` for sums.
    fn number_point(&mut self, name: &str, point: &NumberDataPoint, delta: Option<bool>) {
        self.converted.points += 1;
        let labels = self.point_labels(name, &point.attributes);
        let timestamp_ms = self.timestamp_ms(point.time_unix_nano);
        if point.flags & FLAG_NO_RECORDED_VALUE != 0 {
            self.push(labels, timestamp_ms, stale_marker());
            return;
        }
        let value = match point.value {
            Some(number_data_point::Value::AsDouble(value)) => value,
            Some(number_data_point::Value::AsInt(value)) => value as f64,
            None => {
                self.converted.rejections.reject((
                    "no_value",
                    format!("metric `{name}`: a data point has no value"),
                ));
                return;
            }
        };
        let value = if delta == Some(true) {
            if !self.state.has_room_for(&labels) {
                self.reject_series_limit(name);
                return;
            }
            let remembered = self.state.remembered_mut(&labels, || Remembered::Sum(0.0));
            match remembered {
                Remembered::Sum(total) => {
                    *total += value;
                    *total
                }
                other => {
                    *other = Remembered::Sum(value);
                    value
                }
            }
        } else {
            value
        };
        self.push(labels, timestamp_ms, value);
    }

    fn histogram_point(&mut self, name: &str, point: &HistogramDataPoint, is_delta: bool) {
        self.converted.points += 1;
        if point.flags & FLAG_NO_RECORDED_VALUE != 0 {
            return;
        }
        let labels = self.point_labels(name, &point.attributes);
        let timestamp_ms = self.timestamp_ms(point.time_unix_nano);
        let mut bounds = point.explicit_bounds.clone();
        let mut counts = point.bucket_counts.clone();
        let mut sum = point.sum.unwrap_or(0.0);
        let mut count = point.count;
        if is_delta {
            if !self.state.has_room_for(&labels) {
                self.reject_series_limit(name);
                return;
            }
            let remembered = self
                .state
                .remembered_mut(&labels, || Remembered::Histogram {
                    bounds: bounds.clone(),
                    counts: vec![0; counts.len()],
                    sum: 0.0,
                    count: 0,
                });
            match remembered {
                Remembered::Histogram {
                    bounds: total_bounds,
                    counts: total_counts,
                    sum: total_sum,
                    count: total_count,
                } if *total_bounds == bounds && total_counts.len() == counts.len() => {
                    for (total, added) in total_counts.iter_mut().zip(&counts) {
                        *total = total.saturating_add(*added);
                    }
                    *total_sum += sum;
                    *total_count = total_count.saturating_add(count);
                    counts.clone_from(total_counts);
                    sum = *total_sum;
                    count = *total_count;
                }
                other => {
                    // New bounds: the series starts over, as after a reset.
                    *other = Remembered::Histogram {
                        bounds: bounds.clone(),
                        counts: counts.clone(),
                        sum,
                        count,
                    };
                }
            }
            bounds.truncate(counts.len().saturating_sub(1));
        }
        let mut cumulative = 0u64;
        for (index, bucket_count) in counts.iter().enumerate() {
            cumulative = cumulative.saturating_add(*bucket_count);
            let Some(bound) = bounds.get(index) else {
                break;
            };
            let mut bucket_labels = labels.clone();
            bucket_labels.set(METRIC_NAME.to_string(), format!("{name}_bucket"));
            bucket_labels.set("le".to_string(), format_bound(*bound));
            self.push(bucket_labels, timestamp_ms, cumulative as f64);
        }
        let mut infinity_labels = labels.clone();
        infinity_labels.set(METRIC_NAME.to_string(), format!("{name}_bucket"));
        infinity_labels.set("le".to_string(), "+Inf".to_string());
        self.push(infinity_labels, timestamp_ms, count as f64);
        if point.sum.is_some() {
            self.push_suffixed(&labels, name, "_sum", timestamp_ms, sum);
        }
        self.push_suffixed(&labels, name, "_count", timestamp_ms, count as f64);
    }

    fn exponential_point(
        &mut self,
        name: &str,
        point: &ExponentialHistogramDataPoint,
        is_delta: bool,
    ) {
        self.converted.points += 1;
        if point.flags & FLAG_NO_RECORDED_VALUE != 0 {
            return;
        }
        let labels = self.point_labels(name, &point.attributes);
        if !self.state.has_room_for(&labels) {
            self.reject_series_limit(name);
            return;
        }
        let timestamp_ms = self.timestamp_ms(point.time_unix_nano);
        let buckets = ExponentialBuckets {
            scale: point.scale,
            zero_count: point.zero_count,
            positive: absolute_buckets(point.positive.as_ref()),
            negative: absolute_buckets(point.negative.as_ref()),
        };
        let point_sum = point.sum.unwrap_or(0.0);
        let remembered = self
            .state
            .remembered_mut(&labels, || Remembered::Exponential {
                sum: 0.0,
                count: 0,
                previous: None,
            });
        if !matches!(remembered, Remembered::Exponential { .. }) {
            *remembered = Remembered::Exponential {
                sum: 0.0,
                count: 0,
                previous: None,
            };
        }
        let Remembered::Exponential {
            sum: total_sum,
            count: total_count,
            previous,
        } = remembered
        else {
            return;
        };
        let observations = if is_delta {
            *total_sum += point_sum;
            *total_count = total_count.saturating_add(point.count);
            buckets
        } else {
            let observations = match previous.as_ref() {
                Some(previous_buckets)
                    if previous_buckets.scale == buckets.scale && *total_count <= point.count =>
                {
                    difference(&buckets, previous_buckets)
                }
                // First point, a reset, or a new scale: every observation of the point is new.
                _ => buckets.clone(),
            };
            *total_sum = point_sum;
            *total_count = point.count;
            *previous = Some(buckets);
            observations
        };
        let (sum, count) = (*total_sum, *total_count);
        let sketch = sketch_of(&observations);
        if sketch.count() > 0 {
            self.converted.batch.sketches.push(SketchSample {
                labels: labels.clone(),
                timestamp_ms,
                sketch,
            });
        }
        self.push_suffixed(&labels, name, "_sum", timestamp_ms, sum);
        self.push_suffixed(&labels, name, "_count", timestamp_ms, count as f64);
    }

    fn point_labels(&self, name: &str, attributes: &[KeyValue]) -> Labels {
        let mut labels = self.base_labels.clone();
        let mut point_labels = Labels::empty();
        add_attribute_labels(&mut point_labels, attributes);
        for label in point_labels.iter() {
            labels.set(label.name.clone(), label.value.clone());
        }
        labels.set(METRIC_NAME.to_string(), name.to_string());
        labels
    }

    fn timestamp_ms(&mut self, time_unix_nano: u64) -> i64 {
        let timestamp_ms = if time_unix_nano == 0 {
            self.now_ms
        } else {
            i64::try_from(time_unix_nano / 1_000_000).unwrap_or(i64::MAX)
        };
        *self.latest_ms = (*self.latest_ms).max(timestamp_ms);
        timestamp_ms
    }

    fn push(&mut self, labels: Labels, timestamp_ms: i64, value: f64) {
        push_sample(&mut self.converted.batch, labels, timestamp_ms, value);
    }

    fn push_suffixed(
        &mut self,
        labels: &Labels,
        name: &str,
        suffix: &str,
        timestamp_ms: i64,
        value: f64,
    ) {
        let mut suffixed = labels.clone();
        suffixed.set(METRIC_NAME.to_string(), format!("{name}{suffix}"));
        self.push(suffixed, timestamp_ms, value);
    }
}

fn push_sample(batch: &mut MetricBatch, labels: Labels, timestamp_ms: i64, value: f64) {
    batch.series.push(SeriesSamples {
        labels,
        samples: vec![Sample {
            timestamp_ms,
            value,
        }],
    });
}

fn announce(
    state: &mut MetricsState,
    batch: &mut MetricBatch,
    name: &str,
    metric_type: MetricType,
    help: &str,
    unit: &str,
) {
    if state.announced_families.contains(name)
        || state.pending_families.iter().any(|family| family == name)
        || state.announced_families.len() >= state.max_series
    {
        return;
    }
    state.pending_families.push(name.to_string());
    batch.metadata.push(MetricMetadata {
        metric_name: name.to_string(),
        metric_type,
        help: help.to_string(),
        unit: unit.to_string(),
    });
}

/// Adds attributes as labels; keys that sanitise to the same name have their values joined
/// with `;` (in the order sent), as the exporter does.
fn add_attribute_labels(labels: &mut Labels, attributes: &[KeyValue]) {
    let mut added: HashMap<String, String> = HashMap::new();
    for attribute in attributes {
        let name = label_name(&attribute.key);
        if name.is_empty() || name == METRIC_NAME {
            continue;
        }
        let value = attribute
            .value
            .as_ref()
            .map(any_value_to_text)
            .unwrap_or_default();
        if value.is_empty() {
            continue;
        }
        match added.get_mut(&name) {
            Some(existing) => {
                existing.push(';');
                existing.push_str(&value);
            }
            None => {
                added.insert(name, value);
            }
        }
    }
    for (name, value) in added {
        labels.set(name, value);
    }
}

fn text_attribute(attributes: &[KeyValue], key: &str) -> String {
    attributes
        .iter()
        .rev()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| attribute.value.as_ref())
        .map(any_value_to_text)
        .unwrap_or_default()
}

/// `job`: `service.namespace/service.name`, or `service.name`.
fn job_label(attributes: &[KeyValue]) -> String {
    let service = text_attribute(attributes, "service.name");
    let namespace = text_attribute(attributes, "service.namespace");
    if namespace.is_empty() || service.is_empty() {
        return service;
    }
    format!("{namespace}/{service}")
}

/// A bucket bound as Go's `strconv.FormatFloat(bound, 'f', -1, 64)` writes it.
fn format_bound(bound: f64) -> String {
    if bound == f64::INFINITY {
        return "+Inf".to_string();
    }
    if bound == f64::NEG_INFINITY {
        return "-Inf".to_string();
    }
    format!("{bound}")
}

fn absolute_buckets(buckets: Option<&Buckets>) -> HashMap<i64, u64> {
    let mut absolute = HashMap::new();
    let Some(buckets) = buckets else {
        return absolute;
    };
    for (position, count) in buckets.bucket_counts.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        let index = i64::from(buckets.offset) + position as i64;
        absolute.insert(index, *count);
    }
    absolute
}

fn difference(current: &ExponentialBuckets, previous: &ExponentialBuckets) -> ExponentialBuckets {
    let subtract = |now: &HashMap<i64, u64>, before: &HashMap<i64, u64>| {
        now.iter()
            .filter_map(|(index, count)| {
                let added = count.saturating_sub(before.get(index).copied().unwrap_or(0));
                (added > 0).then_some((*index, added))
            })
            .collect()
    };
    ExponentialBuckets {
        scale: current.scale,
        zero_count: current.zero_count.saturating_sub(previous.zero_count),
        positive: subtract(&current.positive, &previous.positive),
        negative: subtract(&current.negative, &previous.negative),
    }
}

/// Returns a sketch holding each bucket's count at the bucket's geometric middle: bucket
/// `index` at `scale` covers `(base^index, base^(index+1)]` with `base = 2^(2^-scale)`.
fn sketch_of(buckets: &ExponentialBuckets) -> Sketch {
    let mut sketch = Sketch::new();
    let scale_factor = (-f64::from(buckets.scale.clamp(-10, 20))).exp2();
    for (sign, side) in [(1.0, &buckets.positive), (-1.0, &buckets.negative)] {
        for (index, count) in side {
            let middle = ((*index as f64 + 0.5) * scale_factor).exp2();
            if middle.is_finite() && middle > 0.0 {
                sketch.add_many(sign * middle, *count);
            }
        }
    }
    if buckets.zero_count > 0 {
        sketch.add_many(0.0, buckets.zero_count);
    }
    sketch
}

#[cfg(test)]
mod tests;
