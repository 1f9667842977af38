//! Properties of the OTLP decoders: no input panics them, whatever its encoding; what decodes
//! converts without panicking; protobuf re-encodes to the same message.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use proptest::prelude::*;
use prost::Message;

use super::http::{decode_request, Encoding};
use super::metrics::{convert_metrics, MetricsState};
use super::{logs, traces};
use crate::sources::json_logs::normalize::NormalizeOptions;

/// Decodes `bytes` as every signal in `encoding` and converts what decodes.
fn decode_everything(encoding: Encoding, bytes: &[u8]) {
    if let Ok(request) = decode_request::<ExportTraceServiceRequest>(encoding, bytes) {
        let converted = traces::convert_traces(request);
        assert!(converted.spans.iter().all(|span| span.duration_ns >= 0));
    }
    if let Ok(request) = decode_request::<ExportLogsServiceRequest>(encoding, bytes) {
        let _ = logs::convert_logs(&request, 0, &NormalizeOptions::default());
    }
    if let Ok(request) = decode_request::<ExportMetricsServiceRequest>(encoding, bytes) {
        let mut state = MetricsState::new(1_000);
        let _ = convert_metrics(&request, &mut state, 0);
        state.commit();
        // A second export exercises the delta and cumulative memory.
        let _ = convert_metrics(&request, &mut state, 0);
        state.rollback();
    }
}

/// JSON fragments OTLP/JSON bodies are made of, so random documents reach deep fields.
fn otlp_json_fragment() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("\"5b8efff798038103d269b633813fc60c\"".to_string()),
        Just("\"eee19b7ec3c1b174\"".to_string()),
        Just("\"18446744073709551615\"".to_string()),
        Just("-1".to_string()),
        Just("1e308".to_string()),
        Just("null".to_string()),
        Just("\"\"".to_string()),
        Just("{\"stringValue\":\"x\"}".to_string()),
        Just("{\"intValue\":\"9223372036854775807\"}".to_string()),
        Just("{\"doubleValue\":0.5}".to_string()),
        "[a-z]{0,5}".prop_map(|text| format!("\"{text}\"")),
        any::<i64>().prop_map(|number| number.to_string()),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            Just("resourceSpans"),
            Just("resourceLogs"),
            Just("resourceMetrics"),
            Just("scopeSpans"),
            Just("scopeLogs"),
            Just("scopeMetrics"),
            Just("spans"),
            Just("logRecords"),
            Just("metrics"),
            Just("traceId"),
            Just("spanId"),
            Just("parentSpanId"),
            Just("attributes"),
            Just("key"),
            Just("value"),
            Just("body"),
            Just("sum"),
            Just("gauge"),
            Just("histogram"),
            Just("exponentialHistogram"),
            Just("summary"),
            Just("dataPoints"),
            Just("asInt"),
            Just("asDouble"),
            Just("bucketCounts"),
            Just("explicitBounds"),
            Just("positive"),
            Just("offset"),
            Just("scale"),
            Just("count"),
            Just("aggregationTemporality"),
            Just("isMonotonic"),
            Just("timeUnixNano"),
            Just("startTimeUnixNano"),
            Just("severityNumber"),
            Just("kvlistValue"),
            Just("arrayValue"),
            Just("values"),
            Just("resource"),
            Just("name"),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((key, inner), 0..4).prop_map(|pairs| {
                let body: Vec<String> = pairs
                    .into_iter()
                    .map(|(key, value)| format!("\"{key}\":{value}"))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(Encoding::Protobuf, &bytes);
        decode_everything(Encoding::Json, &bytes);
    }

    #[test]
    fn otlp_shaped_json_never_panics(document in otlp_json_fragment()) {
        decode_everything(Encoding::Json, document.as_bytes());
    }

    #[test]
    fn spans_with_any_ids_and_times_convert_and_round_trip(
        trace_id in prop::collection::vec(any::<u8>(), 0..20),
        span_id in prop::collection::vec(any::<u8>(), 0..10),
        parent in prop::collection::vec(any::<u8>(), 0..10),
        start in any::<u64>(),
        end in any::<u64>(),
        kind in any::<i32>(),
        value in any::<f64>(),
    ) {
        let span = Span {
            trace_id: trace_id.clone(),
            span_id: span_id.clone(),
            parent_span_id: parent,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            kind,
            attributes: vec![KeyValue {
                key: "v".into(),
                value: Some(AnyValue { value: Some(any_value::Value::DoubleValue(value)) }),
                ..KeyValue::default()
            }],
            ..Span::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![span], ..ScopeSpans::default() }],
                ..ResourceSpans::default()
            }],
        };
        let bytes = request.encode_to_vec();
        let decoded: ExportTraceServiceRequest =
            decode_request(Encoding::Protobuf, &bytes).unwrap();
        prop_assert_eq!(&decoded, &request);
        let converted = traces::convert_traces(decoded);
        let valid = trace_id.len() == 16 && trace_id.iter().any(|byte| *byte != 0)
            && span_id.len() == 8 && span_id.iter().any(|byte| *byte != 0);
        prop_assert_eq!(converted.spans.len() + converted.rejections.count as usize, 1);
        if !valid {
            prop_assert_eq!(converted.rejections.count, 1);
        }
        for span in &converted.spans {
            prop_assert!(span.duration_ns >= 0);
        }
    }
}
