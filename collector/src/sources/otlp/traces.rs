//! `ExportTraceServiceRequest` → [`Span`]s. Pure: no I/O.
//!
//! Service from the resource's `service.name` (`unknown_service` when absent, as the SDKs name
//! it); the instrumentation scope's name and version become the span attributes
//! `otel.scope.name` and `otel.scope.version`. A span whose trace or span ID is not 16 or 8
//! bytes, or is all zeroes (invalid per the OTLP trace data model), or whose parent ID has
//! neither 0 nor 8 bytes, is rejected; the others of the request are kept.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use serde_json::Value;
use vigil_model::{Span, SpanEvent, SpanKind, SpanLink, SpanResource, StatusCode};

use super::attributes::{attributes_into_json, attributes_to_json, string_attribute};
use super::Rejections;

/// `service.name` when the resource has none, as the OpenTelemetry SDKs default it.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Spans of a request, and what was rejected.
#[derive(Debug, Default)]
pub struct ConvertedSpans {
    /// The valid spans.
    pub spans: Vec<Span>,
    /// The rejected spans.
    pub rejections: Rejections,
}

/// Converts every span of the request, taking its strings without copying them.
pub fn convert_traces(request: ExportTraceServiceRequest) -> ConvertedSpans {
    let mut converted = ConvertedSpans::default();
    for resource_spans in request.resource_spans {
        let resource_attributes = resource_spans
            .resource
            .as_ref()
            .map(|resource| resource.attributes.as_slice())
            .unwrap_or_default();
        let service = string_attribute(resource_attributes, "service.name")
            .unwrap_or(UNKNOWN_SERVICE)
            .to_string();
        // One copy of the resource attributes, shared by the spans of the resource.
        let resource = SpanResource::new(attributes_to_json(resource_attributes));
        for scope_spans in resource_spans.scope_spans {
            let scope = scope_spans.scope.as_ref();
            for otlp_span in scope_spans.spans {
                match convert_span(otlp_span, &service, &resource) {
                    Ok(mut span) => {
                        if let Some(scope) = scope {
                            if !scope.name.is_empty() {
                                span.attributes
                                    .entry("otel.scope.name")
                                    .or_insert_with(|| Value::String(scope.name.clone()));
                            }
                            if !scope.version.is_empty() {
                                span.attributes
                                    .entry("otel.scope.version")
                                    .or_insert_with(|| Value::String(scope.version.clone()));
                            }
                        }
                        converted.spans.push(span)
                    }
                    Err(reason) => converted.rejections.reject(reason),
                }
            }
        }
    }
    converted
}

/// Why a span was rejected; the text goes into `partial_success.error_message`.
pub(crate) fn convert_span(
    otlp: OtlpSpan,
    service: &str,
    resource: &SpanResource,
) -> Result<Span, (&'static str, String)> {
    let trace_id = valid_id::<16>(&otlp.trace_id).ok_or_else(|| {
        (
            "invalid_trace_id",
            format!(
                "span `{}`: trace ID has {} bytes, expected 16 not all zero",
                otlp.name,
                otlp.trace_id.len()
            ),
        )
    })?;
    let span_id = valid_id::<8>(&otlp.span_id).ok_or_else(|| {
        (
            "invalid_span_id",
            format!(
                "span `{}`: span ID has {} bytes, expected 8 not all zero",
                otlp.name,
                otlp.span_id.len()
            ),
        )
    })?;
    let parent_span_id = match otlp.parent_span_id.len() {
        0 => None,
        8 => valid_id::<8>(&otlp.parent_span_id),
        other => {
            return Err((
                "invalid_parent_span_id",
                format!(
                    "span `{}`: parent span ID has {other} bytes, expected 0 or 8",
                    otlp.name
                ),
            ))
        }
    };
    let start_unix_nano = nanos_to_i64(otlp.start_time_unix_nano);
    let end_unix_nano = nanos_to_i64(otlp.end_time_unix_nano);
    let events = otlp
        .events
        .into_iter()
        .map(|event| SpanEvent {
            time_unix_nano: nanos_to_i64(event.time_unix_nano),
            name: event.name,
            attributes: attributes_into_json(event.attributes),
        })
        .collect();
    let links = otlp
        .links
        .into_iter()
        .filter_map(|link| {
            Some(SpanLink {
                trace_id: valid_id::<16>(&link.trace_id)?,
                span_id: valid_id::<8>(&link.span_id)?,
                attributes: attributes_into_json(link.attributes),
            })
        })
        .collect();
    let (status, status_message) = match otlp.status {
        Some(status) => (StatusCode::from_otlp(status.code), status.message),
        None => (StatusCode::Unset, String::new()),
    };
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        service: service.to_string(),
        name: otlp.name,
        kind: SpanKind::from_otlp(otlp.kind),
        start_unix_nano,
        duration_ns: end_unix_nano.saturating_sub(start_unix_nano).max(0),
        status,
        status_message,
        attributes: attributes_into_json(otlp.attributes),
        resource: resource.clone(),
        events,
        links,
    })
}

/// Returns the ID when it has exactly `N` bytes and is not all zeroes.
fn valid_id<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    let id: [u8; N] = bytes.try_into().ok()?;
    if id.iter().all(|byte| *byte == 0) {
        return None;
    }
    Some(id)
}

/// OTLP times are unsigned nanoseconds; Vigil's are signed (good until 2262).
pub(crate) fn nanos_to_i64(nanos: u64) -> i64 {
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, InstrumentationScope, KeyValue,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Status};
    use serde_json::json;

    fn string_kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            key_strindex: 0,
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_string())),
            }),
        }
    }

    fn request(service: Option<&str>, spans: Vec<OtlpSpan>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: service
                        .map(|name| vec![string_kv("service.name", name)])
                        .unwrap_or_default(),
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "checkout-lib".into(),
                        version: "1.2.0".into(),
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn good_span() -> OtlpSpan {
        OtlpSpan {
            trace_id: vec![0x5b; 16],
            span_id: vec![0x05; 8],
            parent_span_id: vec![0; 8],
            name: "GET /orders".into(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_250_000_000,
            attributes: vec![string_kv("request_id", "r-1")],
            status: Some(Status {
                code: 2,
                message: "boom".into(),
            }),
            events: vec![span::Event {
                time_unix_nano: 1_700_000_000_100_000_000,
                name: "exception".into(),
                attributes: vec![string_kv("exception.type", "IOError")],
                dropped_attributes_count: 0,
            }],
            links: vec![span::Link {
                trace_id: vec![0x11; 16],
                span_id: vec![0x22; 8],
                ..span::Link::default()
            }],
            ..OtlpSpan::default()
        }
    }

    #[test]
    fn a_span_keeps_every_field() {
        let converted = convert_traces(request(Some("orders"), vec![good_span()]));
        assert_eq!(converted.rejections.count, 0);
        let span = &converted.spans[0];
        assert_eq!(span.trace_id, [0x5b; 16]);
        assert_eq!(span.span_id, [0x05; 8]);
        assert_eq!(span.parent_span_id, None, "an all-zero parent is a root");
        assert_eq!(span.service, "orders");
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.duration_ns, 250_000_000);
        assert_eq!(span.status, StatusCode::Error);
        assert_eq!(span.status_message, "boom");
        assert_eq!(span.attributes["request_id"], json!("r-1"));
        assert_eq!(span.attributes["otel.scope.name"], json!("checkout-lib"));
        assert_eq!(span.resource["service.name"], json!("orders"));
        assert_eq!(span.events[0].name, "exception");
        assert_eq!(span.links[0].span_id, [0x22; 8]);
    }

    #[test]
    fn missing_service_name_is_unknown_service() {
        let converted = convert_traces(request(None, vec![good_span()]));
        assert_eq!(converted.spans[0].service, UNKNOWN_SERVICE);
    }

    #[test]
    fn bad_ids_are_rejected_and_the_rest_kept() {
        let mut short_trace = good_span();
        short_trace.trace_id = vec![1; 15];
        let mut zero_span = good_span();
        zero_span.span_id = vec![0; 8];
        let mut bad_parent = good_span();
        bad_parent.parent_span_id = vec![1; 3];
        let mut child = good_span();
        child.parent_span_id = vec![9; 8];
        let converted = convert_traces(request(
            Some("orders"),
            vec![short_trace, zero_span, good_span(), bad_parent, child],
        ));
        assert_eq!(converted.spans.len(), 2);
        assert_eq!(converted.spans[1].parent_span_id, Some([9; 8]));
        assert_eq!(converted.rejections.count, 3);
        assert!(converted
            .rejections
            .first_message
            .contains("trace ID has 15 bytes"));
    }

    #[test]
    fn end_before_start_is_a_zero_duration() {
        let mut span = good_span();
        span.end_time_unix_nano = 1;
        let converted = convert_traces(request(Some("orders"), vec![span]));
        assert_eq!(converted.spans[0].duration_ns, 0);
    }
}
