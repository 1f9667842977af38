use super::*;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope};
use opentelemetry_proto::tonic::metrics::v1::{
    summary_data_point, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

const TIME_NS: u64 = 1_714_564_800_000_000_000;
const TIME_MS: i64 = 1_714_564_800_000;

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        key_strindex: 0,
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
    }
}

fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    string_kv("service.name", "checkout"),
                    string_kv("service.namespace", "shop"),
                    string_kv("service.instance.id", "pod-1"),
                    string_kv("deployment.environment", "prod"),
                ],
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "checkout.metrics".into(),
                    ..InstrumentationScope::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn number(value: f64, attributes: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        time_unix_nano: TIME_NS,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..NumberDataPoint::default()
    }
}

fn sum_metric(name: &str, unit: &str, temporality: AggregationTemporality, value: f64) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: "Requests served.".into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: vec![number(value, vec![string_kv("http.route", "/pay")])],
            aggregation_temporality: temporality as i32,
            is_monotonic: true,
        })),
        ..Metric::default()
    }
}

fn value_of(batch: &MetricBatch, name: &str, extra: &[(&str, &str)]) -> Option<f64> {
    batch
        .series
        .iter()
        .find(|series| {
            series.labels.metric_name() == Some(name)
                && extra
                    .iter()
                    .all(|(label, value)| series.labels.get(label) == Some(*value))
        })
        .map(|series| series.samples[0].value)
}

#[test]
fn a_cumulative_counter_gets_the_exporter_name_and_labels() {
    let mut state = MetricsState::new(100);
    let converted = convert_metrics(
        &request(vec![sum_metric(
            "http.server.requests",
            "{request}",
            AggregationTemporality::Cumulative,
            42.0,
        )]),
        &mut state,
        0,
    );
    let series = converted
        .batch
        .series
        .iter()
        .find(|series| series.labels.metric_name() == Some("http_server_requests_total"))
        .unwrap();
    assert_eq!(
        series.samples[0],
        Sample {
            timestamp_ms: TIME_MS,
            value: 42.0
        }
    );
    assert_eq!(series.labels.get("job"), Some("shop/checkout"));
    assert_eq!(series.labels.get("instance"), Some("pod-1"));
    assert_eq!(series.labels.get("http_route"), Some("/pay"));
    assert_eq!(series.labels.get("service_name"), Some("checkout"));
    assert_eq!(series.labels.get("deployment_environment"), Some("prod"));
    assert_eq!(
        series.labels.get("otel_scope_name"),
        Some("checkout.metrics")
    );
    let info = value_of(
        &converted.batch,
        "target_info",
        &[("deployment_environment", "prod")],
    );
    assert_eq!(info, Some(1.0));
    let metadata = &converted.batch.metadata[0];
    assert_eq!(metadata.metric_name, "http_server_requests_total");
    assert_eq!(metadata.metric_type, MetricType::Counter);
    assert_eq!(metadata.help, "Requests served.");
    assert_eq!(converted.points, 1);
}

#[test]
fn delta_sums_accumulate() {
    let mut state = MetricsState::new(100);
    let mut totals = Vec::new();
    for delta in [3.0, 4.0, 5.0] {
        let converted = convert_metrics(
            &request(vec![sum_metric(
                "jobs",
                "",
                AggregationTemporality::Delta,
                delta,
            )]),
            &mut state,
            0,
        );
        state.commit();
        totals.push(value_of(&converted.batch, "jobs_total", &[]).unwrap());
    }
    assert_eq!(totals, vec![3.0, 7.0, 12.0]);
}

#[test]
fn unspecified_temporality_and_accumulator_limit_are_rejected() {
    let mut state = MetricsState::new(100);
    let converted = convert_metrics(
        &request(vec![sum_metric(
            "jobs",
            "",
            AggregationTemporality::Unspecified,
            1.0,
        )]),
        &mut state,
        0,
    );
    assert_eq!(converted.rejections.by_reason["unspecified_temporality"], 1);
    let mut full = MetricsState::new(0);
    let converted = convert_metrics(
        &request(vec![sum_metric(
            "jobs",
            "",
            AggregationTemporality::Delta,
            1.0,
        )]),
        &mut full,
        0,
    );
    assert_eq!(converted.rejections.by_reason["accumulator_full"], 1);
    assert_eq!(value_of(&converted.batch, "jobs_total", &[]), None);
}

#[test]
fn gauges_of_unit_one_are_ratios_and_no_value_is_stale() {
    let mut state = MetricsState::new(100);
    let mut stale = number(0.0, vec![]);
    stale.flags = FLAG_NO_RECORDED_VALUE;
    let mut int_point = number(0.0, vec![string_kv("cpu", "1")]);
    int_point.value = Some(number_data_point::Value::AsInt(7));
    let metric = Metric {
        name: "system.cpu.utilization".into(),
        unit: "1".into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: vec![number(0.25, vec![string_kv("cpu", "0")]), int_point, stale],
        })),
        ..Metric::default()
    };
    let converted = convert_metrics(&request(vec![metric]), &mut state, 0);
    let name = "system_cpu_utilization_ratio";
    assert_eq!(
        value_of(&converted.batch, name, &[("cpu", "0")]),
        Some(0.25)
    );
    assert_eq!(value_of(&converted.batch, name, &[("cpu", "1")]), Some(7.0));
    let stale_series = converted
        .batch
        .series
        .iter()
        .find(|series| {
            series.labels.metric_name() == Some(name) && series.labels.get("cpu").is_none()
        })
        .unwrap();
    assert!(vigil_model::is_stale_marker(stale_series.samples[0].value));
}

#[test]
fn histograms_become_cumulative_buckets_sum_and_count() {
    let mut state = MetricsState::new(100);
    let point = HistogramDataPoint {
        time_unix_nano: TIME_NS,
        count: 6,
        sum: Some(2.5),
        bucket_counts: vec![1, 2, 3],
        explicit_bounds: vec![0.1, 0.5],
        ..HistogramDataPoint::default()
    };
    let bad = HistogramDataPoint {
        bucket_counts: vec![1, 2],
        explicit_bounds: vec![0.1, 0.5],
        ..point.clone()
    };
    let metric = Metric {
        name: "http.server.request.duration".into(),
        unit: "s".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: vec![point, bad],
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })),
        ..Metric::default()
    };
    let converted = convert_metrics(&request(vec![metric]), &mut state, 0);
    let bucket = "http_server_request_duration_seconds_bucket";
    assert_eq!(
        value_of(&converted.batch, bucket, &[("le", "0.1")]),
        Some(1.0)
    );
    assert_eq!(
        value_of(&converted.batch, bucket, &[("le", "0.5")]),
        Some(3.0)
    );
    assert_eq!(
        value_of(&converted.batch, bucket, &[("le", "+Inf")]),
        Some(6.0)
    );
    assert_eq!(
        value_of(
            &converted.batch,
            "http_server_request_duration_seconds_sum",
            &[]
        ),
        Some(2.5)
    );
    assert_eq!(
        value_of(
            &converted.batch,
            "http_server_request_duration_seconds_count",
            &[]
        ),
        Some(6.0)
    );
    // Fewer counts than bounds + 1 (as in the OTLP/JSON examples): buckets for the bounds
    // with a count, +Inf from the count.
    assert_eq!(converted.rejections.count, 0);
    let short_buckets = converted
        .batch
        .series
        .iter()
        .filter(|series| series.labels.metric_name() == Some(bucket))
        .count();
    assert_eq!(
        short_buckets,
        3 + 2 + 1,
        "3 buckets, then 0.1 and 0.5, then +Inf"
    );
}

#[test]
fn delta_histograms_accumulate() {
    let mut state = MetricsState::new(100);
    let metric = Metric {
        name: "latency".into(),
        unit: "ms".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                time_unix_nano: TIME_NS,
                count: 3,
                sum: Some(30.0),
                bucket_counts: vec![1, 2],
                explicit_bounds: vec![10.0],
                ..HistogramDataPoint::default()
            }],
            aggregation_temporality: AggregationTemporality::Delta as i32,
        })),
        ..Metric::default()
    };
    convert_metrics(&request(vec![metric.clone()]), &mut state, 0);
    state.commit();
    let converted = convert_metrics(&request(vec![metric]), &mut state, 0);
    let bucket = "latency_milliseconds_bucket";
    assert_eq!(
        value_of(&converted.batch, bucket, &[("le", "10")]),
        Some(2.0)
    );
    assert_eq!(
        value_of(&converted.batch, bucket, &[("le", "+Inf")]),
        Some(6.0)
    );
    assert_eq!(
        value_of(&converted.batch, "latency_milliseconds_sum", &[]),
        Some(60.0)
    );
}

fn exponential_metric(count: u64, positive: Vec<u64>) -> Metric {
    Metric {
        name: "rpc.duration".into(),
        unit: "s".into(),
        data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
            data_points: vec![ExponentialHistogramDataPoint {
                time_unix_nano: TIME_NS,
                count,
                sum: Some(count as f64 * 0.1),
                scale: 3,
                zero_count: 0,
                positive: Some(Buckets {
                    // 2^(-27/8) ≈ 0.096: buckets around 0.1 s.
                    offset: -27,
                    bucket_counts: positive,
                }),
                ..ExponentialHistogramDataPoint::default()
            }],
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })),
        ..Metric::default()
    }
}

#[test]
fn cumulative_exponential_histograms_write_the_new_observations_as_a_sketch() {
    let mut state = MetricsState::new(100);
    let first = convert_metrics(
        &request(vec![exponential_metric(10, vec![10])]),
        &mut state,
        0,
    );
    assert_eq!(first.batch.sketches.len(), 1);
    let sketch = &first.batch.sketches[0];
    assert_eq!(sketch.labels.metric_name(), Some("rpc_duration_seconds"));
    assert_eq!(sketch.sketch.count(), 10);
    let middle = ((-27.0f64 + 0.5) / 8.0).exp2();
    let median = sketch.sketch.quantile(0.5).unwrap();
    assert!(
        (median - middle).abs() / middle < 0.01,
        "{median} vs {middle}"
    );
    let second = convert_metrics(
        &request(vec![exponential_metric(25, vec![10, 15])]),
        &mut state,
        0,
    );
    assert_eq!(
        second.batch.sketches[0].sketch.count(),
        15,
        "only the new observations"
    );
    assert_eq!(
        value_of(&second.batch, "rpc_duration_seconds_count", &[]),
        Some(25.0)
    );
    assert_eq!(
        value_of(&second.batch, "rpc_duration_seconds_sum", &[]),
        Some(2.5)
    );
    let unchanged = convert_metrics(
        &request(vec![exponential_metric(25, vec![10, 15])]),
        &mut state,
        0,
    );
    assert!(unchanged.batch.sketches.is_empty());
}

#[test]
fn summaries_have_quantiles_sum_and_count() {
    let mut state = MetricsState::new(100);
    let metric = Metric {
        name: "gc.pause".into(),
        unit: "ms".into(),
        data: Some(metric::Data::Summary(Summary {
            data_points: vec![SummaryDataPoint {
                time_unix_nano: TIME_NS,
                count: 4,
                sum: 10.0,
                quantile_values: vec![
                    summary_data_point::ValueAtQuantile {
                        quantile: 0.5,
                        value: 2.0,
                    },
                    summary_data_point::ValueAtQuantile {
                        quantile: 0.99,
                        value: 4.0,
                    },
                ],
                ..SummaryDataPoint::default()
            }],
        })),
        ..Metric::default()
    };
    let converted = convert_metrics(&request(vec![metric]), &mut state, 0);
    let name = "gc_pause_milliseconds";
    assert_eq!(
        value_of(&converted.batch, name, &[("quantile", "0.99")]),
        Some(4.0)
    );
    assert_eq!(
        value_of(&converted.batch, name, &[("quantile", "0.5")]),
        Some(2.0)
    );
    assert_eq!(
        value_of(&converted.batch, "gc_pause_milliseconds_sum", &[]),
        Some(10.0)
    );
    assert_eq!(
        value_of(&converted.batch, "gc_pause_milliseconds_count", &[]),
        Some(4.0)
    );
}

#[test]
fn colliding_attribute_names_are_joined() {
    let mut labels = Labels::empty();
    add_attribute_labels(&mut labels, &[string_kv("a.b", "1"), string_kv("a_b", "2")]);
    assert_eq!(labels.get("a_b"), Some("1;2"));
}

#[test]
fn a_rolled_back_delta_is_not_counted_twice_on_retry() {
    let mut state = MetricsState::new(100);
    let delta = |value| {
        request(vec![sum_metric(
            "jobs",
            "",
            AggregationTemporality::Delta,
            value,
        )])
    };
    convert_metrics(&delta(3.0), &mut state, 0);
    state.commit();
    // The store refused this export; the client retries it.
    convert_metrics(&delta(4.0), &mut state, 0);
    state.rollback();
    let retried = convert_metrics(&delta(4.0), &mut state, 0);
    state.commit();
    assert_eq!(value_of(&retried.batch, "jobs_total", &[]), Some(7.0));
}
