//! OTLP `AnyValue`s and `KeyValue` lists as JSON, the form Vigil's span and log models keep.
//!
//! Strings, booleans and integers stay themselves; doubles become JSON numbers (NaN and
//! infinities, which JSON cannot hold, become the strings `"NaN"`, `"Infinity"`,
//! `"-Infinity"` as in the OTLP/JSON encoding); arrays and key-value lists become JSON arrays
//! and objects; bytes become base64 text as OTLP/JSON writes them.

use base64::Engine as _;
use opentelemetry_proto::tonic::common::v1::any_value::Value as OtlpValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use serde_json::{Map, Number, Value};

/// Nested arrays and lists deeper than this are cut (a hostile client could nest without end).
const MAX_DEPTH: usize = 32;

/// Returns the JSON form of an `AnyValue` (`null` when empty).
pub fn any_value_to_json(value: &AnyValue) -> Value {
    one_value(value.value.as_ref(), 0)
}

/// Returns the attributes as a JSON object, in the order sent (a repeated key keeps its last
/// value).
pub fn attributes_to_json(attributes: &[KeyValue]) -> Map<String, Value> {
    key_values(attributes, 0)
}

/// Returns the attributes as a JSON object, taking their keys and values without copying.
pub fn attributes_into_json(attributes: Vec<KeyValue>) -> Map<String, Value> {
    owned_key_values(attributes, 0)
}

fn owned_key_values(attributes: Vec<KeyValue>, depth: usize) -> Map<String, Value> {
    let mut object = Map::new();
    for attribute in attributes {
        let value = attribute
            .value
            .map_or(Value::Null, |value| owned_value(value.value, depth));
        object.insert(attribute.key, value);
    }
    object
}

fn owned_value(value: Option<OtlpValue>, depth: usize) -> Value {
    match value {
        Some(OtlpValue::StringValue(text)) => Value::String(text),
        Some(OtlpValue::ArrayValue(array)) if depth < MAX_DEPTH => Value::Array(
            array
                .values
                .into_iter()
                .map(|item| owned_value(item.value, depth + 1))
                .collect(),
        ),
        Some(OtlpValue::KvlistValue(list)) if depth < MAX_DEPTH => {
            Value::Object(owned_key_values(list.values, depth + 1))
        }
        other => one_value(other.as_ref(), depth),
    }
}

/// Returns the value of the string attribute `key`, if present and non-empty.
pub fn string_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().rev().find_map(|attribute| {
        if attribute.key != key {
            return None;
        }
        match attribute.value.as_ref()?.value.as_ref()? {
            OtlpValue::StringValue(text) if !text.is_empty() => Some(text.as_str()),
            _ => None,
        }
    })
}

/// Returns an `AnyValue` as label or message text: strings as they are, other values as JSON.
pub fn any_value_to_text(value: &AnyValue) -> String {
    match value.value.as_ref() {
        Some(OtlpValue::StringValue(text)) => text.clone(),
        None => String::new(),
        Some(_) => any_value_to_json(value).to_string(),
    }
}

fn key_values(attributes: &[KeyValue], depth: usize) -> Map<String, Value> {
    let mut object = Map::with_capacity(attributes.len());
    for attribute in attributes {
        let value = attribute
            .value
            .as_ref()
            .map_or(Value::Null, |value| one_value(value.value.as_ref(), depth));
        object.insert(attribute.key.clone(), value);
    }
    object
}

fn one_value(value: Option<&OtlpValue>, depth: usize) -> Value {
    let Some(value) = value else {
        return Value::Null;
    };
    match value {
        OtlpValue::StringValue(text) => Value::String(text.clone()),
        OtlpValue::BoolValue(flag) => Value::Bool(*flag),
        OtlpValue::IntValue(number) => Value::Number(Number::from(*number)),
        OtlpValue::DoubleValue(number) => double_to_json(*number),
        OtlpValue::BytesValue(bytes) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        OtlpValue::ArrayValue(array) => {
            if depth >= MAX_DEPTH {
                return Value::String("[nested too deep]".to_string());
            }
            Value::Array(
                array
                    .values
                    .iter()
                    .map(|item| one_value(item.value.as_ref(), depth + 1))
                    .collect(),
            )
        }
        OtlpValue::KvlistValue(list) => {
            if depth >= MAX_DEPTH {
                return Value::String("{nested too deep}".to_string());
            }
            Value::Object(key_values(&list.values, depth + 1))
        }
        // A dictionary index of the profiles signal; meaningless without its dictionary.
        OtlpValue::StringValueStrindex(index) => Value::Number(Number::from(*index)),
    }
}

/// A double as JSON; JSON has no NaN or infinities, so those become OTLP/JSON's strings.
pub fn double_to_json(number: f64) -> Value {
    match Number::from_f64(number) {
        Some(number) => Value::Number(number),
        None if number.is_nan() => Value::String("NaN".to_string()),
        None if number > 0.0 => Value::String("Infinity".to_string()),
        None => Value::String("-Infinity".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use serde_json::json;

    fn key_value(key: &str, value: OtlpValue) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            key_strindex: 0,
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    #[test]
    fn every_value_kind_has_its_json_form() {
        let attributes = vec![
            key_value("s", OtlpValue::StringValue("text".into())),
            key_value("b", OtlpValue::BoolValue(true)),
            key_value("i", OtlpValue::IntValue(-7)),
            key_value("d", OtlpValue::DoubleValue(1.5)),
            key_value("nan", OtlpValue::DoubleValue(f64::NAN)),
            key_value("inf", OtlpValue::DoubleValue(f64::NEG_INFINITY)),
            key_value("bytes", OtlpValue::BytesValue(vec![0, 1, 2])),
            key_value(
                "array",
                OtlpValue::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(OtlpValue::IntValue(1)),
                    }],
                }),
            ),
            key_value(
                "map",
                OtlpValue::KvlistValue(KeyValueList {
                    values: vec![key_value("k", OtlpValue::StringValue("v".into()))],
                }),
            ),
            KeyValue {
                key: "empty".into(),
                key_strindex: 0,
                value: None,
            },
        ];
        assert_eq!(
            Value::Object(attributes_to_json(&attributes)),
            json!({
                "s": "text", "b": true, "i": -7, "d": 1.5, "nan": "NaN", "inf": "-Infinity",
                "bytes": "AAEC", "array": [1], "map": {"k": "v"}, "empty": null,
            })
        );
        assert_eq!(
            attributes_into_json(attributes.clone()),
            attributes_to_json(&attributes)
        );
        assert_eq!(string_attribute(&attributes, "s"), Some("text"));
        assert_eq!(string_attribute(&attributes, "b"), None);
    }

    #[test]
    fn deep_nesting_is_cut() {
        let mut value = AnyValue {
            value: Some(OtlpValue::IntValue(1)),
        };
        for _ in 0..100 {
            value = AnyValue {
                value: Some(OtlpValue::ArrayValue(ArrayValue {
                    values: vec![value],
                })),
            };
        }
        let text = any_value_to_json(&value).to_string();
        assert!(text.contains("nested too deep"));
    }
}
