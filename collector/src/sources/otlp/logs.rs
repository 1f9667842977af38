//! `ExportLogsServiceRequest` → [`LogRecord`]s, through the JSON log path's normalisation.
//! Pure: no I/O, no clock (the receive time is an argument).
//!
//! A record's attributes go through [`normalize`] as a JSON document, so they are flattened
//! into dotted keys and the configured `logs.correlation_fields` become the correlation ID
//! exactly as for JSON lines. The OTLP fields then take precedence:
//! - time: `time_unix_nano`, else `observed_time_unix_nano`, else the receive time;
//! - level: `severity_number` (the logs data model's ranges), else `severity_text`;
//! - service: the resource's `service.name`; host: the resource's `host.name`;
//! - message: the body (a string as it is, a structured body as JSON text);
//! - trace_id, span_id: lower-case hex;
//! - the other resource attributes: attributes `resource.<key>`;
//! - original: the record in the OTLP/JSON encoding.
//!
//! A record whose trace ID is not empty and not 16 bytes, or whose span ID is not empty and
//! not 8 bytes, or that has more fields than the limit, is rejected.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::LogRecord as OtlpLogRecord;
use serde_json::{Map, Value};
use vigil_model::{hex_id, LogRecord};

use super::attributes::{any_value_to_text, attributes_to_json, string_attribute};
use super::traces::nanos_to_i64;
use super::Rejections;
use crate::sources::json_logs::normalize::{normalize, normalize_level, NormalizeOptions};

/// Log records of a request, and what was rejected.
#[derive(Debug, Default)]
pub struct ConvertedLogs {
    /// The valid records.
    pub records: Vec<LogRecord>,
    /// The rejected records.
    pub rejections: Rejections,
}

/// Resource attributes that become the record's own fields rather than `resource.*`.
const RESOURCE_FIELDS: [&str; 2] = ["service.name", "host.name"];

/// Converts every log record of the request.
pub fn convert_logs(
    request: &ExportLogsServiceRequest,
    receive_time_ns: i64,
    options: &NormalizeOptions,
) -> ConvertedLogs {
    let mut converted = ConvertedLogs::default();
    for resource_logs in &request.resource_logs {
        let resource_attributes = resource_logs
            .resource
            .as_ref()
            .map(|resource| resource.attributes.as_slice())
            .unwrap_or_default();
        let service = string_attribute(resource_attributes, "service.name");
        let host = string_attribute(resource_attributes, "host.name");
        let mut resource_rest = attributes_to_json(resource_attributes);
        for key in RESOURCE_FIELDS {
            resource_rest.remove(key);
        }
        let resource_context = ResourceContext {
            service,
            host,
            other_attributes: &resource_rest,
        };
        for scope_logs in &resource_logs.scope_logs {
            for otlp_record in &scope_logs.log_records {
                match convert_record(otlp_record, &resource_context, receive_time_ns, options) {
                    Ok(record) => converted.records.push(record),
                    Err(reason) => converted.rejections.reject(reason),
                }
            }
        }
    }
    converted
}

struct ResourceContext<'a> {
    service: Option<&'a str>,
    host: Option<&'a str>,
    other_attributes: &'a Map<String, Value>,
}

fn convert_record(
    otlp: &OtlpLogRecord,
    resource: &ResourceContext<'_>,
    receive_time_ns: i64,
    options: &NormalizeOptions,
) -> Result<LogRecord, (&'static str, String)> {
    if !otlp.trace_id.is_empty() && otlp.trace_id.len() != 16 {
        return Err((
            "invalid_trace_id",
            format!(
                "log record: trace ID has {} bytes, expected 16",
                otlp.trace_id.len()
            ),
        ));
    }
    if !otlp.span_id.is_empty() && otlp.span_id.len() != 8 {
        return Err((
            "invalid_span_id",
            format!(
                "log record: span ID has {} bytes, expected 8",
                otlp.span_id.len()
            ),
        ));
    }
    let mut document = attributes_to_json(&otlp.attributes);
    for (key, value) in resource.other_attributes {
        document.insert(format!("resource.{key}"), value.clone());
    }
    let original = serde_json::to_string(otlp).unwrap_or_default();
    let mut record = normalize(Value::Object(document), &original, receive_time_ns, options)
        .map_err(|error| (error.reason(), format!("log record: {error}")))?;
    if otlp.time_unix_nano > 0 {
        record.timestamp_ns = nanos_to_i64(otlp.time_unix_nano);
    } else if otlp.observed_time_unix_nano > 0 {
        record.timestamp_ns = nanos_to_i64(otlp.observed_time_unix_nano);
    } else {
        // Attributes named like a timestamp are not the record's time in OTLP.
        record.timestamp_ns = receive_time_ns;
    }
    let level = normalize_level(&Value::from(otlp.severity_number))
        .or_else(|| normalize_level(&Value::String(otlp.severity_text.clone())));
    if let Some(level) = level {
        record.level = level.to_string();
    }
    if let Some(service) = resource.service {
        record.service = service.to_string();
    }
    if let Some(host) = resource.host {
        record.host = host.to_string();
    }
    if let Some(body) = otlp.body.as_ref() {
        // A string body as it is; a structured one as JSON text.
        let message = any_value_to_text(body);
        if !message.is_empty() {
            record.message = message;
        }
    }
    if otlp.trace_id.iter().any(|byte| *byte != 0) {
        record.trace_id = hex_id(&otlp.trace_id);
    }
    if otlp.span_id.iter().any(|byte| *byte != 0) {
        record.span_id = hex_id(&otlp.span_id);
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue, KeyValueList};
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use serde_json::json;

    const RECEIVED: i64 = 1_700_000_000_000_000_000;

    fn string_kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            key_strindex: 0,
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_string())),
            }),
        }
    }

    fn request(records: Vec<OtlpLogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        string_kv("service.name", "orders"),
                        string_kv("host.name", "node-3"),
                        string_kv("k8s.pod.name", "orders-7f9"),
                    ],
                    ..Resource::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..ScopeLogs::default()
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn sdk_record() -> OtlpLogRecord {
        OtlpLogRecord {
            time_unix_nano: 1_714_564_800_000_000_001,
            observed_time_unix_nano: 1_714_564_800_000_000_999,
            severity_number: 17,
            severity_text: "ERROR".into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(
                    "payment failed for 5f0c8e3a-1b2c-4d5e-8f90-a1b2c3d4e5f6".into(),
                )),
            }),
            attributes: vec![
                string_kv("request_id", "5f0c8e3a-1b2c-4d5e-8f90-a1b2c3d4e5f6"),
                KeyValue {
                    key: "http".into(),
                    key_strindex: 0,
                    value: Some(AnyValue {
                        value: Some(any_value::Value::KvlistValue(KeyValueList {
                            values: vec![string_kv("method", "POST")],
                        })),
                    }),
                },
            ],
            trace_id: vec![0xab; 16],
            span_id: vec![0xcd; 8],
            ..OtlpLogRecord::default()
        }
    }

    #[test]
    fn a_record_of_the_sdk_is_normalised() {
        let converted = convert_logs(
            &request(vec![sdk_record()]),
            RECEIVED,
            &NormalizeOptions::default(),
        );
        assert_eq!(converted.rejections.count, 0);
        let record = &converted.records[0];
        assert_eq!(record.timestamp_ns, 1_714_564_800_000_000_001);
        assert_eq!(record.level, "error");
        assert_eq!(record.service, "orders");
        assert_eq!(record.host, "node-3");
        assert!(record.message.starts_with("payment failed"));
        assert_eq!(record.trace_id, "abababababababababababababababab");
        assert_eq!(record.span_id, "cdcdcdcdcdcdcdcd");
        assert_eq!(
            record.correlation_id,
            "5f0c8e3a-1b2c-4d5e-8f90-a1b2c3d4e5f6"
        );
        assert_eq!(record.attributes["http.method"], json!("POST"));
        assert_eq!(
            record.attributes["resource.k8s.pod.name"],
            json!("orders-7f9")
        );
        let original: Value = serde_json::from_str(&record.original).unwrap();
        assert_eq!(
            original["traceId"],
            json!("abababababababababababababababab")
        );
        assert_eq!(original["severityNumber"], json!(17));
    }

    #[test]
    fn severity_text_body_and_times_fall_back() {
        let mut record = sdk_record();
        record.time_unix_nano = 0;
        record.severity_number = 0;
        record.severity_text = "Warning".into();
        record.body = Some(AnyValue {
            value: Some(any_value::Value::KvlistValue(KeyValueList {
                values: vec![string_kv("event", "login")],
            })),
        });
        let converted = convert_logs(
            &request(vec![record]),
            RECEIVED,
            &NormalizeOptions::default(),
        );
        let record = &converted.records[0];
        assert_eq!(record.timestamp_ns, 1_714_564_800_000_000_999);
        assert_eq!(record.level, "warn");
        assert_eq!(record.message, r#"{"event":"login"}"#);
    }

    #[test]
    fn bad_ids_and_field_limits_reject_the_record_only() {
        let mut short_trace = sdk_record();
        short_trace.trace_id = vec![1; 5];
        let converted = convert_logs(
            &request(vec![short_trace, sdk_record()]),
            RECEIVED,
            &NormalizeOptions::default(),
        );
        assert_eq!(converted.records.len(), 1);
        assert_eq!(converted.rejections.count, 1);
        let options = NormalizeOptions {
            max_fields: 1,
            ..NormalizeOptions::default()
        };
        let converted = convert_logs(&request(vec![sdk_record()]), RECEIVED, &options);
        assert_eq!(converted.records.len(), 0);
        assert_eq!(converted.rejections.by_reason["too_many_fields"], 1);
    }
}
