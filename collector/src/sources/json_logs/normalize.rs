//! Turns one JSON log document into a [`LogRecord`] as DESIGN.md §6 describes: well-known
//! field names (Logstash V1, OTLP, common loggers) become the indexed fields, the rest is
//! flattened into dotted attribute keys, and the original text is kept.
//!
//! Pure: no I/O, no clock (the receive time is an argument).

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use vigil_model::LogRecord;

/// Keys whose value is the line's time, in order of preference.
const TIMESTAMP_KEYS: [&str; 4] = ["@timestamp", "timestamp", "time", "ts"];
/// Keys whose value is the line's level.
const LEVEL_KEYS: [&str; 5] = [
    "level",
    "levelname",
    "severity",
    "log.level",
    "severity_text",
];
/// Keys whose value is the service (`container_name` is Docker's, with a leading `/`).
const SERVICE_KEYS: [&str; 5] = [
    "service",
    "service.name",
    "app",
    "application",
    "container_name",
];
/// Keys whose value is the host.
const HOST_KEYS: [&str; 4] = ["host", "hostname", "source_host", "host.name"];
/// Keys whose value is the message (`log` is Docker's).
const MESSAGE_KEYS: [&str; 3] = ["message", "msg", "log"];
/// Keys whose value is the trace ID.
const TRACE_ID_KEYS: [&str; 3] = ["trace_id", "traceId", "trace.id"];
/// Keys whose value is the span ID.
const SPAN_ID_KEYS: [&str; 3] = ["span_id", "spanId", "span.id"];
/// Nested objects deeper than this are kept as JSON text.
const MAX_DEPTH: usize = 16;

/// What normalisation needs from the config.
#[derive(Clone, Debug)]
pub struct NormalizeOptions {
    /// Fields whose value is a correlation ID (`logs.correlation_fields`), first present wins.
    pub correlation_fields: Vec<String>,
    /// Lines with more (flattened) fields are rejected.
    pub max_fields: usize,
}

impl Default for NormalizeOptions {
    fn default() -> Self {
        NormalizeOptions {
            correlation_fields: vec![
                "correlation_id".to_string(),
                "request_id".to_string(),
                "uuid".to_string(),
            ],
            max_fields: 1_000,
        }
    }
}

/// Why a document was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    /// The document is JSON but not an object.
    #[error("expected a JSON object, found {0}")]
    NotAnObject(&'static str),
    /// Too many fields after flattening.
    #[error("{count} fields exceed the limit of {limit} fields per line")]
    TooManyFields {
        /// Fields in the line.
        count: usize,
        /// The limit.
        limit: usize,
    },
}

impl NormalizeError {
    /// Returns the reason label used in `vigil_ingest_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            NormalizeError::NotAnObject(_) => "not_an_object",
            NormalizeError::TooManyFields { .. } => "too_many_fields",
        }
    }
}

/// Returns the JSON type name of a value, for error messages.
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Normalises one document. `original` is the text as received; `receive_time_ns` is used
/// when the document carries no usable timestamp.
///
/// # Errors
/// [`NormalizeError`] when the document is not an object or has too many fields.
pub fn normalize(
    document: Value,
    original: &str,
    receive_time_ns: i64,
    options: &NormalizeOptions,
) -> Result<LogRecord, NormalizeError> {
    let Value::Object(object) = document else {
        return Err(NormalizeError::NotAnObject(json_type_name(&document)));
    };
    let mut fields: BTreeMap<String, Value> = BTreeMap::new();
    flatten_into(&mut fields, String::new(), object, 0);
    if fields.len() > options.max_fields {
        return Err(NormalizeError::TooManyFields {
            count: fields.len(),
            limit: options.max_fields,
        });
    }
    let mut record = LogRecord {
        timestamp_ns: receive_time_ns,
        original: original.to_string(),
        ..LogRecord::default()
    };
    for key in TIMESTAMP_KEYS {
        let parsed = fields.get(key).and_then(parse_timestamp_ns);
        if let Some(timestamp_ns) = parsed {
            record.timestamp_ns = timestamp_ns;
            fields.remove(key);
            break;
        }
    }
    for key in LEVEL_KEYS {
        let parsed = fields.get(key).and_then(normalize_level);
        if let Some(level) = parsed {
            record.level = level.to_string();
            fields.remove(key);
            break;
        }
    }
    record.service = take_text(&mut fields, &SERVICE_KEYS)
        .trim_start_matches('/')
        .to_string();
    record.host = take_text(&mut fields, &HOST_KEYS);
    record.message = take_text(&mut fields, &MESSAGE_KEYS);
    record.trace_id = take_text(&mut fields, &TRACE_ID_KEYS);
    record.span_id = take_text(&mut fields, &SPAN_ID_KEYS);
    let correlation_keys: Vec<&str> = options
        .correlation_fields
        .iter()
        .map(String::as_str)
        .collect();
    record.correlation_id = take_text(&mut fields, &correlation_keys);
    record.attributes = fields;
    Ok(record)
}

/// Removes and returns the first key of `keys` holding a non-empty scalar, as text.
fn take_text(fields: &mut BTreeMap<String, Value>, keys: &[&str]) -> String {
    for key in keys {
        let usable = match fields.get(*key) {
            Some(Value::String(text)) => !text.is_empty(),
            Some(Value::Number(_) | Value::Bool(_)) => true,
            _ => false,
        };
        if !usable {
            continue;
        }
        return match fields.remove(*key) {
            Some(Value::String(text)) => text,
            Some(Value::Number(number)) => number.to_string(),
            Some(Value::Bool(flag)) => flag.to_string(),
            _ => String::new(),
        };
    }
    String::new()
}

/// Flattens nested objects into dotted keys. Arrays of scalars stay arrays; arrays holding
/// objects or arrays, and objects nested past [`MAX_DEPTH`], are kept as JSON text.
fn flatten_into(
    out: &mut BTreeMap<String, Value>,
    prefix: String,
    object: Map<String, Value>,
    depth: usize,
) {
    for (key, value) in object {
        let full_key = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(inner) if depth < MAX_DEPTH => {
                if inner.is_empty() {
                    continue;
                }
                flatten_into(out, full_key, inner, depth + 1);
            }
            Value::Object(inner) => {
                out.insert(full_key, Value::String(Value::Object(inner).to_string()));
            }
            Value::Array(items) => {
                let all_scalars = items
                    .iter()
                    .all(|item| !matches!(item, Value::Array(_) | Value::Object(_)));
                if all_scalars {
                    out.insert(full_key, Value::Array(items));
                } else {
                    out.insert(full_key, Value::String(Value::Array(items).to_string()));
                }
            }
            Value::Null => {}
            scalar => {
                out.insert(full_key, scalar);
            }
        }
    }
}

/// Parses a timestamp: RFC 3339 text (a missing zone means UTC), or epoch seconds,
/// milliseconds, microseconds or nanoseconds told apart by magnitude, as a number or text.
pub fn parse_timestamp_ns(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => {
            if let Some(integer) = number.as_i64() {
                return epoch_integer_to_ns(integer);
            }
            number.as_f64().and_then(epoch_float_to_ns)
        }
        Value::String(text) => parse_timestamp_text(text.trim()),
        _ => None,
    }
}

fn parse_timestamp_text(text: &str) -> Option<i64> {
    if text.is_empty() {
        return None;
    }
    if let Ok(integer) = text.parse::<i64>() {
        return epoch_integer_to_ns(integer);
    }
    if let Ok(float) = text.parse::<f64>() {
        return epoch_float_to_ns(float);
    }
    if let Ok(parsed) = chrono::DateTime::parse_from_rfc3339(text) {
        return parsed.timestamp_nanos_opt();
    }
    // Common near-RFC 3339 forms: a space instead of `T`, no zone (taken as UTC).
    let normalized = text.replacen(' ', "T", 1);
    if let Ok(parsed) = chrono::DateTime::parse_from_rfc3339(&normalized) {
        return parsed.timestamp_nanos_opt();
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f%z"] {
        if let Ok(parsed) = chrono::NaiveDateTime::parse_from_str(&normalized, format) {
            return parsed.and_utc().timestamp_nanos_opt();
        }
        if let Ok(parsed) = chrono::DateTime::parse_from_str(&normalized, format) {
            return parsed.timestamp_nanos_opt();
        }
    }
    None
}

/// Epoch integers: below 10^11 seconds, below 10^14 milliseconds, below 10^17 microseconds,
/// else nanoseconds. Negative or zero values are refused (a receive time is better).
fn epoch_integer_to_ns(value: i64) -> Option<i64> {
    if value <= 0 {
        return None;
    }
    if value < 100_000_000_000 {
        value.checked_mul(1_000_000_000)
    } else if value < 100_000_000_000_000 {
        value.checked_mul(1_000_000)
    } else if value < 100_000_000_000_000_000 {
        value.checked_mul(1_000)
    } else {
        Some(value)
    }
}

fn epoch_float_to_ns(value: f64) -> Option<i64> {
    if !value.is_finite() || value <= 0.0 {
        return None;
    }
    let nanos_per_unit: i64 = if value < 1e11 {
        1_000_000_000
    } else if value < 1e14 {
        1_000_000
    } else if value < 1e17 {
        1_000
    } else {
        1
    };
    // Whole units and the fraction apart, so 1714564800.25 s is exactly …250000000 ns.
    let whole = value.trunc();
    if whole >= (i64::MAX / nanos_per_unit) as f64 {
        return None;
    }
    let fraction_ns = ((value - whole) * nanos_per_unit as f64).round() as i64;
    (whole as i64)
        .checked_mul(nanos_per_unit)?
        .checked_add(fraction_ns)
}

/// Normalises a level to `trace`, `debug`, `info`, `warn`, `error` or `fatal`. Accepts the
/// names of common loggers (Python's `WARNING`/`CRITICAL`, syslog's `notice`/`emerg`…),
/// OTLP severity numbers (1–24) and Bunyan/pino numbers (10–60).
pub fn normalize_level(value: &Value) -> Option<&'static str> {
    match value {
        Value::String(text) => level_from_text(text),
        Value::Number(number) => number.as_i64().and_then(level_from_number),
        _ => None,
    }
}

fn level_from_text(text: &str) -> Option<&'static str> {
    let lower = text.trim().to_ascii_lowercase();
    let level = match lower.as_str() {
        "trace" | "trc" | "finest" | "finer" | "verbose" => "trace",
        "debug" | "dbg" | "fine" | "debug2" => "debug",
        "info" | "inf" | "information" | "informational" | "notice" | "config" => "info",
        "warn" | "warning" | "wrn" => "warn",
        "error" | "err" | "eror" | "severe" => "error",
        "fatal" | "critical" | "crit" | "panic" | "emerg" | "emergency" | "alert" | "dpanic" => {
            "fatal"
        }
        other => {
            if let Ok(number) = other.parse::<i64>() {
                return level_from_number(number);
            }
            return None;
        }
    };
    Some(level)
}

fn level_from_number(number: i64) -> Option<&'static str> {
    // Bunyan and pino: 10 trace, 20 debug, 30 info, 40 warn, 50 error, 60 fatal.
    let level = match number {
        10 => "trace",
        20 => "debug",
        30 => "info",
        40 => "warn",
        50 => "error",
        60 => "fatal",
        // OpenTelemetry SeverityNumber ranges (logs data model).
        1..=4 => "trace",
        5..=8 => "debug",
        9 | 11 | 12 => "info",
        13..=16 => "warn",
        17..=19 => "error",
        21..=24 => "fatal",
        _ => return None,
    };
    Some(level)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RECEIVED: i64 = 1_700_000_000_000_000_000;

    fn normalized(document: Value) -> LogRecord {
        let text = document.to_string();
        normalize(document, &text, RECEIVED, &NormalizeOptions::default()).unwrap()
    }

    #[test]
    fn logstash_formatter_v1_line() {
        // As Python's logstash_formatter.LogstashFormatterV1 emits it.
        let line = r#"{"@timestamp": "2024-05-01T12:00:01.123Z", "@version": 1, "source_host": "web-1", "name": "checkout", "args": [], "levelname": "WARNING", "levelno": 30, "pathname": "/srv/app.py", "filename": "app.py", "module": "app", "exc_info": null, "exc_text": null, "lineno": 42, "funcName": "pay", "created": 1714564801.123, "msecs": 123.0, "relativeCreated": 5.2, "thread": 1401, "threadName": "MainThread", "processName": "MainProcess", "process": 7, "message": "payment slow for order 5f0c8e3a-1b2c-4d5e-8f90-a1b2c3d4e5f6", "request_id": "5f0c8e3a-1b2c-4d5e-8f90-a1b2c3d4e5f6", "app": "checkout"}"#;
        let document: Value = serde_json::from_str(line).unwrap();
        let record = normalize(document, line, RECEIVED, &NormalizeOptions::default()).unwrap();
        assert_eq!(record.timestamp_ns, 1_714_564_801_123_000_000);
        assert_eq!(record.level, "warn");
        assert_eq!(record.host, "web-1");
        assert_eq!(record.service, "checkout");
        assert_eq!(
            record.correlation_id,
            "5f0c8e3a-1b2c-4d5e-8f90-a1b2c3d4e5f6"
        );
        assert!(record.message.starts_with("payment slow"));
        assert_eq!(record.attributes["lineno"], json!(42));
        assert_eq!(record.attributes["funcName"], json!("pay"));
        assert!(!record.attributes.contains_key("exc_info"));
        assert!(!record.attributes.contains_key("levelname"));
        assert_eq!(record.original, line);
    }

    #[test]
    fn timestamp_forms_table() {
        let cases: Vec<(Value, i64)> = vec![
            (
                json!({"@timestamp": "2024-05-01T12:00:00Z"}),
                1_714_564_800_000_000_000,
            ),
            (
                json!({"timestamp": "2024-05-01T14:00:00.5+02:00"}),
                1_714_564_800_500_000_000,
            ),
            (
                json!({"time": "2024-05-01 12:00:00.25"}),
                1_714_564_800_250_000_000,
            ),
            (json!({"ts": 1_714_564_800}), 1_714_564_800_000_000_000),
            (json!({"ts": 1_714_564_800.25}), 1_714_564_800_250_000_000),
            (
                json!({"ts": 1_714_564_800_123_i64}),
                1_714_564_800_123_000_000,
            ),
            (
                json!({"ts": 1_714_564_800_123_456_i64}),
                1_714_564_800_123_456_000,
            ),
            (
                json!({"ts": 1_714_564_800_123_456_789_i64}),
                1_714_564_800_123_456_789,
            ),
            (json!({"time": "1714564800123"}), 1_714_564_800_123_000_000),
            (json!({"time": "not a time"}), RECEIVED),
            (json!({"ts": -5}), RECEIVED),
            (json!({}), RECEIVED),
        ];
        for (document, expected) in cases {
            assert_eq!(
                normalized(document.clone()).timestamp_ns,
                expected,
                "{document}"
            );
        }
    }

    #[test]
    fn unparseable_timestamp_stays_an_attribute() {
        let record = normalized(json!({"time": "soon"}));
        assert_eq!(record.attributes["time"], json!("soon"));
    }

    #[test]
    fn level_names_table() {
        let cases = [
            (json!({"level": "INFO"}), "info"),
            (json!({"levelname": "WARNING"}), "warn"),
            (json!({"levelname": "CRITICAL"}), "fatal"),
            (json!({"severity": "err"}), "error"),
            (json!({"level": 30}), "info"),
            (json!({"level": 50}), "error"),
            (json!({"severity": 17}), "error"),
            (json!({"level": "trace"}), "trace"),
            (json!({"level": "Debug"}), "debug"),
            (json!({"level": "notice"}), "info"),
            (json!({"log": {"level": "error"}}), "error"),
            (json!({"level": "weird"}), ""),
        ];
        for (document, expected) in cases {
            assert_eq!(normalized(document.clone()).level, expected, "{document}");
        }
    }

    #[test]
    fn service_host_message_and_ids_from_their_aliases() {
        let record = normalized(json!({
            "service": {"name": "gateway"},
            "hostname": "node-7",
            "msg": "hello",
            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
            "spanId": "00f067aa0ba902b7",
            "uuid": "u-1",
        }));
        assert_eq!(record.service, "gateway");
        assert_eq!(record.host, "node-7");
        assert_eq!(record.message, "hello");
        assert_eq!(record.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(record.span_id, "00f067aa0ba902b7");
        assert_eq!(record.correlation_id, "u-1");
        assert!(record.attributes.is_empty());
        let docker = normalized(json!({"log": "line from docker\n", "container_name": "/web"}));
        assert_eq!(docker.message, "line from docker\n");
        assert_eq!(docker.service, "web");
        let application = normalized(json!({"application": "billing"}));
        assert_eq!(application.service, "billing");
    }

    #[test]
    fn nested_objects_become_dotted_attributes() {
        let record = normalized(json!({
            "http": {"request": {"method": "GET", "status": 200}, "tags": ["a", "b"]},
            "user": {"id": 42},
            "items": [{"sku": 1}],
            "empty": {},
        }));
        assert_eq!(record.attributes["http.request.method"], json!("GET"));
        assert_eq!(record.attributes["http.request.status"], json!(200));
        assert_eq!(record.attributes["http.tags"], json!(["a", "b"]));
        assert_eq!(record.attributes["user.id"], json!(42));
        assert_eq!(record.attributes["items"], json!("[{\"sku\":1}]"));
        assert!(!record.attributes.contains_key("empty"));
    }

    #[test]
    fn correlation_fields_are_configurable() {
        let options = NormalizeOptions {
            correlation_fields: vec!["order_id".to_string()],
            ..NormalizeOptions::default()
        };
        let document = json!({"order_id": 991, "request_id": "r"});
        let record = normalize(document, "", RECEIVED, &options).unwrap();
        assert_eq!(record.correlation_id, "991");
        assert_eq!(record.attributes["request_id"], json!("r"));
    }

    #[test]
    fn field_limit_and_non_objects_are_refused() {
        let options = NormalizeOptions {
            max_fields: 2,
            ..NormalizeOptions::default()
        };
        let error = normalize(
            json!({"a": 1, "b": {"c": 2, "d": 3}}),
            "",
            RECEIVED,
            &options,
        )
        .unwrap_err();
        assert_eq!(error, NormalizeError::TooManyFields { count: 3, limit: 2 });
        let error = normalize(json!([1]), "", RECEIVED, &options).unwrap_err();
        assert_eq!(error.reason(), "not_an_object");
    }
}
