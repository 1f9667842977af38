//! Black-box tests of OTLP ingest: requests encoded as the OpenTelemetry SDKs export them
//! (opentelemetry-proto messages, prost-encoded; a tonic client over gRPC; OTLP/HTTP with
//! protobuf and with the OTLP/JSON encoding), sent to the built binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::bail;
use common::otlp::{now_ns, start_otlp, string_kv, Otlp};
use common::Vigil;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, summary_data_point, AggregationTemporality, ExponentialHistogram,
    ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use serde_json::{json, Value};

const REQUEST_ID: &str = "7d3f0a52-9c1e-4b8a-a6f2-3e5d9b1c0a47";

fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            string_kv("service.name", service),
            string_kv("service.namespace", "shop"),
            string_kv("service.instance.id", "pod-1"),
            string_kv("host.name", "node-7"),
            string_kv("telemetry.sdk.language", "rust"),
        ],
        ..Resource::default()
    })
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "vigil-tests".into(),
        version: "1.0.0".into(),
        ..InstrumentationScope::default()
    })
}

/// POSTs an OTLP/HTTP body; returns status, content type and body bytes.
async fn post(
    otlp: &Otlp,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    gzip: bool,
) -> anyhow::Result<(u16, String, Vec<u8>)> {
    let mut request = otlp
        .vigil
        .client
        .post(format!("{}{path}", otlp.http_url))
        .header("Content-Type", content_type);
    if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&body)?;
        request = request
            .header("Content-Encoding", "gzip")
            .body(encoder.finish()?);
    } else {
        request = request.body(body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((status, content_type, response.bytes().await?.to_vec()))
}

/// Waits until the PromQL `query` returns a vector whose first value is `expected` (within
/// `tolerance`, relative).
async fn wait_for_value(
    vigil: &Vigil,
    query: &str,
    expected: f64,
    tolerance: f64,
) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let vector = vigil.query_vector(query).await?;
        let value = vector
            .first()
            .and_then(|sample| sample["value"][1].as_str())
            .and_then(|text| text.parse::<f64>().ok());
        if let Some(value) = value {
            if (value - expected).abs() <= tolerance * expected.abs().max(1e-12) {
                return Ok(vector);
            }
        }
        if Instant::now() > deadline {
            bail!("{query}: expected {expected}, got {vector:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn number(value: f64, time_ns: u64, attributes: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: time_ns - 60_000_000_000,
        time_unix_nano: time_ns,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..NumberDataPoint::default()
    }
}

fn metrics_request(service: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(service),
            scope_metrics: vec![ScopeMetrics {
                scope: scope(),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[tokio::test]
async fn metrics_of_every_point_type_answer_in_promql_with_the_exporter_names() -> anyhow::Result<()>
{
    let otlp = start_otlp("").await?;
    let time_ns = now_ns();
    let request = metrics_request(
        "checkout",
        vec![
            Metric {
                name: "http.server.requests".into(),
                unit: "{request}".into(),
                description: "Requests served.".into(),
                data: Some(metric::Data::Sum(Sum {
                    data_points: vec![number(42.0, time_ns, vec![string_kv("http.route", "/pay")])],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })),
                ..Metric::default()
            },
            Metric {
                name: "process.memory.usage".into(),
                unit: "By".into(),
                data: Some(metric::Data::Gauge(Gauge {
                    data_points: vec![number(1048576.0, time_ns, vec![])],
                })),
                ..Metric::default()
            },
            Metric {
                name: "http.server.request.duration".into(),
                unit: "s".into(),
                data: Some(metric::Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        start_time_unix_nano: time_ns - 60_000_000_000,
                        time_unix_nano: time_ns,
                        count: 10,
                        sum: Some(1.7),
                        bucket_counts: vec![4, 5, 1],
                        explicit_bounds: vec![0.1, 0.25],
                        ..HistogramDataPoint::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Metric::default()
            },
            Metric {
                name: "rpc.client.duration".into(),
                unit: "s".into(),
                data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: vec![ExponentialHistogramDataPoint {
                        start_time_unix_nano: time_ns - 60_000_000_000,
                        time_unix_nano: time_ns,
                        count: 100,
                        sum: Some(25.0),
                        scale: 4,
                        positive: Some(Buckets {
                            // 2^((-32 + 0.5) / 16) ≈ 0.256 s.
                            offset: -32,
                            bucket_counts: vec![100],
                        }),
                        ..ExponentialHistogramDataPoint::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                })),
                ..Metric::default()
            },
            Metric {
                name: "gc.pause".into(),
                unit: "ms".into(),
                data: Some(metric::Data::Summary(Summary {
                    data_points: vec![SummaryDataPoint {
                        start_time_unix_nano: time_ns - 60_000_000_000,
                        time_unix_nano: time_ns,
                        count: 4,
                        sum: 10.0,
                        quantile_values: vec![summary_data_point::ValueAtQuantile {
                            quantile: 0.99,
                            value: 4.5,
                        }],
                        ..SummaryDataPoint::default()
                    }],
                })),
                ..Metric::default()
            },
        ],
    );
    let (status, content_type, body) = post(
        &otlp,
        "/v1/metrics",
        "application/x-protobuf",
        request.encode_to_vec(),
        true,
    )
    .await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, "application/x-protobuf");
    assert!(body.is_empty(), "no partial success: {body:?}");

    let vigil = &otlp.vigil;
    let counter = wait_for_value(
        vigil,
        r#"http_server_requests_total{job="shop/checkout",instance="pod-1",http_route="/pay"}"#,
        42.0,
        0.0,
    )
    .await?;
    assert_eq!(counter[0]["metric"]["service_name"], "checkout");
    assert_eq!(counter[0]["metric"]["host_name"], "node-7");
    assert_eq!(counter[0]["metric"]["otel_scope_name"], "vigil-tests");
    wait_for_value(vigil, "process_memory_usage_bytes", 1048576.0, 0.0).await?;
    wait_for_value(
        vigil,
        r#"http_server_request_duration_seconds_bucket{le="0.25"}"#,
        9.0,
        0.0,
    )
    .await?;
    wait_for_value(
        vigil,
        r#"http_server_request_duration_seconds_bucket{le="+Inf"}"#,
        10.0,
        0.0,
    )
    .await?;
    wait_for_value(
        vigil,
        "http_server_request_duration_seconds_count",
        10.0,
        0.0,
    )
    .await?;
    wait_for_value(vigil, "http_server_request_duration_seconds_sum", 1.7, 1e-9).await?;
    let middle = ((-32.0f64 + 0.5) / 16.0).exp2();
    wait_for_value(
        vigil,
        "histogram_quantile(0.99, sum by (job) (rate(rpc_client_duration_seconds[5m])))",
        middle,
        0.02,
    )
    .await?;
    wait_for_value(vigil, "rpc_client_duration_seconds_count", 100.0, 0.0).await?;
    wait_for_value(vigil, r#"gc_pause_milliseconds{quantile="0.99"}"#, 4.5, 0.0).await?;
    wait_for_value(vigil, "gc_pause_milliseconds_count", 4.0, 0.0).await?;
    wait_for_value(
        vigil,
        r#"target_info{job="shop/checkout",telemetry_sdk_language="rust"}"#,
        1.0,
        0.0,
    )
    .await?;

    // Over gRPC (gzip), and over HTTP in the OTLP/JSON encoding.
    let mut client = MetricsServiceClient::connect(otlp.grpc_url.clone())
        .await?
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let gauge = metrics_request(
        "inventory",
        vec![Metric {
            name: "queue.depth".into(),
            unit: "{item}".into(),
            data: Some(metric::Data::Gauge(Gauge {
                data_points: vec![number(17.0, now_ns(), vec![])],
            })),
            ..Metric::default()
        }],
    );
    let response = client.export(gauge).await?.into_inner();
    assert_eq!(response.partial_success, None);
    wait_for_value(vigil, r#"queue_depth{job="shop/inventory"}"#, 17.0, 0.0).await?;

    let json_body = json!({"resourceMetrics": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "billing"}}]},
        "scopeMetrics": [{"metrics": [{
            "name": "invoices.created",
            "unit": "1",
            "sum": {
                "aggregationTemporality": 2,
                "isMonotonic": true,
                "dataPoints": [{"asInt": "5", "timeUnixNano": now_ns().to_string()}]
            }
        }]}]
    }]});
    let (status, content_type, body) = post(
        &otlp,
        "/v1/metrics",
        "application/json",
        json_body.to_string().into_bytes(),
        false,
    )
    .await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, "application/json");
    assert_eq!(serde_json::from_slice::<Value>(&body)?, json!({}));
    wait_for_value(vigil, r#"invoices_created_total{job="billing"}"#, 5.0, 0.0).await?;

    let metadata: Value = vigil
        .client
        .get(vigil.url("/api/v1/metadata"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        metadata["data"]["http_server_requests_total"][0]["type"], "counter",
        "{metadata}"
    );
    Ok(())
}

fn log_record(severity: i32, text: &str, body: &str, attributes: Vec<KeyValue>) -> LogRecord {
    LogRecord {
        time_unix_nano: now_ns(),
        observed_time_unix_nano: now_ns(),
        severity_number: severity,
        severity_text: text.into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body.into())),
        }),
        attributes,
        trace_id: vec![0x4b; 16],
        span_id: vec![0xf9; 8],
        ..LogRecord::default()
    }
}

async fn search_total(vigil: &Vigil, query: &str, expected: u64) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body: Value = vigil
            .client
            .get(vigil.url("/api/v1/logs/search"))
            .query(&[("q", query)])
            .send()
            .await?
            .json()
            .await?;
        if body["total"].as_u64() == Some(expected) {
            return Ok(body);
        }
        if Instant::now() > deadline {
            bail!("{query:?}: expected {expected} hits, got {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn logs_in_protobuf_and_json_are_found_by_level_service_phrase_and_request_id(
) -> anyhow::Result<()> {
    let otlp = start_otlp("").await?;
    let protobuf_request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource("orders"),
            scope_logs: vec![ScopeLogs {
                scope: scope(),
                log_records: vec![
                    log_record(
                        17,
                        "ERROR",
                        &format!("payment declined for request {REQUEST_ID}"),
                        vec![string_kv("http.method", "POST")],
                    ),
                    log_record(9, "INFO", "order stored", vec![]),
                ],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    let (status, _, body) = post(
        &otlp,
        "/v1/logs",
        "application/x-protobuf",
        protobuf_request.encode_to_vec(),
        true,
    )
    .await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    // As the OTLP/JSON encoding writes it (the specification's logs example, abridged).
    let json_request = json!({"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "payments"}},
            {"key": "host.name", "value": {"stringValue": "node-9"}}
        ]},
        "scopeLogs": [{
            "scope": {"name": "my.library", "version": "1.0.0"},
            "logRecords": [{
                "timeUnixNano": now_ns().to_string(),
                "observedTimeUnixNano": now_ns().to_string(),
                "severityNumber": 13,
                "severityText": "Warning",
                "traceId": "5b8efff798038103d269b633813fc60c",
                "spanId": "eee19b7ec3c1b174",
                "body": {"stringValue": "card issuer slow to answer"},
                "attributes": [
                    {"key": "request_id", "value": {"stringValue": REQUEST_ID}},
                    {"key": "retry", "value": {"intValue": "2"}},
                    {"key": "map", "value": {"kvlistValue": {"values": [
                        {"key": "nested", "value": {"boolValue": true}}
                    ]}}}
                ]
            }]
        }]
    }]});
    let (status, content_type, body) = post(
        &otlp,
        "/v1/logs",
        "application/json; charset=utf-8",
        json_request.to_string().into_bytes(),
        false,
    )
    .await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, "application/json");

    // And one over gRPC.
    let mut client = LogsServiceClient::connect(otlp.grpc_url.clone()).await?;
    let grpc_request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource("orders"),
            scope_logs: vec![ScopeLogs {
                log_records: vec![log_record(21, "FATAL", "disk full", vec![])],
                ..ScopeLogs::default()
            }],
            schema_url: String::new(),
        }],
    };
    let answer = client.export(grpc_request).await?.into_inner();
    assert_eq!(answer.partial_success, None);

    let vigil = &otlp.vigil;
    search_total(vigil, "*", 4).await?;
    let errors = search_total(vigil, "level:error", 1).await?;
    assert_eq!(errors["hits"][0]["service"], "orders");
    assert_eq!(errors["hits"][0]["host"], "node-7");
    assert_eq!(
        errors["hits"][0]["trace_id"],
        "4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b"
    );
    search_total(vigil, "level:fatal", 1).await?;
    search_total(vigil, "service:orders", 3).await?;
    let warn = search_total(vigil, "service:payments AND level:warn", 1).await?;
    let hit = &warn["hits"][0];
    assert_eq!(hit["host"], "node-9");
    assert_eq!(hit["span_id"], "eee19b7ec3c1b174");
    assert_eq!(hit["correlation_id"], REQUEST_ID);
    assert_eq!(hit["attributes"]["retry"], 2, "{hit}");
    assert_eq!(hit["attributes"]["map.nested"], true, "{hit}");
    search_total(vigil, "\"payment declined\"", 1).await?;
    // The request ID stands inside one message and in the other's attribute.
    search_total(vigil, &format!("\"{REQUEST_ID}\""), 2).await?;
    Ok(())
}

fn span(
    trace_id: [u8; 16],
    span_id: u8,
    parent: Option<u8>,
    name: &str,
    kind: span::SpanKind,
    duration_ms: u64,
    error: bool,
) -> Span {
    let start = now_ns() - 1_000_000_000;
    Span {
        trace_id: trace_id.to_vec(),
        span_id: vec![span_id; 8],
        parent_span_id: parent.map(|parent| vec![parent; 8]).unwrap_or_default(),
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + duration_ms * 1_000_000,
        attributes: vec![string_kv("request_id", REQUEST_ID)],
        status: Some(Status {
            code: if error { 2 } else { 0 },
            message: String::new(),
        }),
        ..Span::default()
    }
}

fn traces_request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(service),
            scope_spans: vec![ScopeSpans {
                scope: scope(),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// A codec that sends raw bytes, to put bytes that are not protobuf on the wire.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buffer: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buffer, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buffer: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let length = bytes::Buf::remaining(buffer);
        Ok(Some(bytes::Buf::copy_to_bytes(buffer, length).to_vec()))
    }
}

#[tokio::test]
async fn traces_over_grpc_and_http_with_partial_success_error_codes_and_span_metrics(
) -> anyhow::Result<()> {
    let otlp = start_otlp("statsd:\n  flush_interval: 1s\n").await?;
    let trace_id = [0x3c; 16];
    // gateway → orders → market, each service exporting its own spans, as SDKs do.
    let mut grpc = TraceServiceClient::connect(otlp.grpc_url.clone())
        .await?
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let gateway = traces_request(
        "gateway",
        vec![span(
            trace_id,
            1,
            None,
            "GET /checkout",
            span::SpanKind::Server,
            120,
            false,
        )],
    );
    let response = grpc.export(gateway).await?.into_inner();
    assert_eq!(response.partial_success, None);

    // One good span and one with a 3-byte span ID: the good one is written.
    let mut orders = traces_request(
        "orders",
        vec![span(
            trace_id,
            2,
            Some(1),
            "POST /orders",
            span::SpanKind::Server,
            80,
            true,
        )],
    );
    let mut bad = span(
        trace_id,
        9,
        Some(1),
        "broken",
        span::SpanKind::Internal,
        1,
        false,
    );
    bad.span_id = vec![1, 2, 3];
    orders.resource_spans[0].scope_spans[0].spans.push(bad);
    let (status, content_type, body) = post(
        &otlp,
        "/v1/traces",
        "application/x-protobuf",
        orders.encode_to_vec(),
        true,
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/x-protobuf");
    let answer = ExportTraceServiceResponse::decode(body.as_slice())?;
    let partial = answer.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("span ID has 3 bytes"),
        "{partial:?}"
    );

    // The market span in the OTLP/JSON encoding, with a bad trace ID next to it.
    let start = now_ns() - 900_000_000;
    let market_json = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "market"}}]},
        "scopeSpans": [{
            "scope": {"name": "market-lib"},
            "spans": [
                {
                    "traceId": "3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c",
                    "spanId": "0303030303030303",
                    "parentSpanId": "0202020202020202",
                    "name": "quote",
                    "kind": 3,
                    "startTimeUnixNano": start.to_string(),
                    "endTimeUnixNano": (start + 30_000_000).to_string(),
                    "attributes": [{"key": "request_id", "value": {"stringValue": REQUEST_ID}}],
                    "status": {}
                },
                {
                    "traceId": "3c3c",
                    "spanId": "0404040404040404",
                    "name": "bad",
                    "startTimeUnixNano": start.to_string(),
                    "endTimeUnixNano": start.to_string()
                }
            ]
        }]
    }]});
    let (status, content_type, body) = post(
        &otlp,
        "/v1/traces",
        "application/json",
        market_json.to_string().into_bytes(),
        false,
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    let answer: Value = serde_json::from_slice(&body)?;
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], 1, "{answer}");

    // The spans are in the span store, parent links intact.
    let vigil = &otlp.vigil;
    let trace: Value = vigil
        .client
        .get(vigil.url("/api/v1/traces/3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c"))
        .send()
        .await?
        .json()
        .await?;
    let spans = trace["data"]["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 3, "{trace}");
    let market = spans
        .iter()
        .find(|span| span["service"] == "market")
        .unwrap();
    assert_eq!(market["parent_span_id"], "0202020202020202");
    assert_eq!(market["kind"], "client");

    // Wrong content type, bad protobuf, bad JSON, oversize body.
    let (status, _, _) = post(&otlp, "/v1/traces", "text/plain", b"hello".to_vec(), false).await?;
    assert_eq!(status, 415);
    let (status, content_type, body) = post(
        &otlp,
        "/v1/traces",
        "application/x-protobuf",
        vec![0xff, 0xff, 0xff],
        false,
    )
    .await?;
    assert_eq!(status, 400);
    assert_eq!(content_type, "application/x-protobuf");
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    let rpc_status = RpcStatus::decode(body.as_slice())?;
    assert_eq!(rpc_status.code, 3, "INVALID_ARGUMENT");
    assert!(rpc_status.message.contains("protobuf"), "{rpc_status:?}");
    let (status, _, body) = post(
        &otlp,
        "/v1/logs",
        "application/json",
        b"{\"resourceLogs\": 7}".to_vec(),
        false,
    )
    .await?;
    assert_eq!(status, 400);
    let error: Value = serde_json::from_slice(&body)?;
    assert_eq!(error["code"], 3, "{error}");
    let oversize = vec![b' '; 2 << 20];
    let (status, _, _) = post(&otlp, "/v1/traces", "application/json", oversize, false).await?;
    assert_eq!(status, 413);

    // gRPC: bytes that are not protobuf answer INVALID_ARGUMENT.
    let channel = tonic::transport::Endpoint::from_shared(otlp.grpc_url.clone())?
        .connect()
        .await?;
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await?;
    let status = raw
        .unary::<Vec<u8>, Vec<u8>, _>(
            tonic::Request::new(vec![0xff, 0xff, 0xff]),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            ),
            RawCodec,
        )
        .await
        .expect_err("garbage must be refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // Span metrics: calls per status and duration quantiles answer in PromQL.
    wait_for_value(
        vigil,
        r#"vigil_span_calls_total{service="orders",operation="POST /orders",kind="server",status="error"}"#,
        1.0,
        0.0,
    )
    .await?;
    wait_for_value(
        vigil,
        r#"sum(vigil_span_calls_total{service="gateway"})"#,
        1.0,
        0.0,
    )
    .await?;
    wait_for_value(
        vigil,
        r#"vigil_span_duration_seconds{service="gateway",quantile="0.99"}"#,
        0.12,
        0.01,
    )
    .await?;
    wait_for_value(
        vigil,
        r#"histogram_quantile(0.99, sum by (service) (rate(vigil_span_duration_seconds{service="market"}[5m])))"#,
        0.03,
        0.01,
    )
    .await?;
    wait_for_value(
        vigil,
        r#"vigil_span_duration_seconds_count{service="orders"}"#,
        1.0,
        0.0,
    )
    .await?;

    let metrics = vigil.metrics_text().await?;
    assert!(
        metrics.contains(r#"vigil_ingest_received_total{protocol="otlp_http"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"vigil_ingest_rejected_total{protocol="otlp_http",reason="invalid_span_id"} 1"#
    ));
    Ok(())
}
