//! Decodes one forward-protocol frame into normalised log records. Pure: no I/O, no clock.
//!
//! The four modes of the Fluentd Forward Protocol Specification v1, told apart by the second
//! element of the frame:
//! - Message: `[tag, time, record]` or `[tag, time, record, option]` (a time: integer or
//!   EventTime);
//! - Forward: `[tag, [[time, record], ...]]` or with an option (an array);
//! - PackedForward: `[tag, entries]` where `entries` is a `bin` or `str` holding concatenated
//!   `[time, record]` arrays (a `bin` or `str`);
//! - CompressedPackedForward: the same with the option `compressed: "gzip"`, `entries` then
//!   being gzip (possibly several concatenated members) of the concatenated arrays.
//!
//! EventTime is extension type 0 with 8 bytes: seconds and nanoseconds, big-endian `u32`s.
//! Fluent Bit 2.1+ may send `[[time, metadata], record]`; the metadata is ignored.
//!
//! Each record (a map) becomes a JSON object and goes through the JSON path's normaliser,
//! with the event time as the fallback timestamp and the tag as the fallback service.

use std::collections::BTreeMap;
use std::io::Read;

use rmpv::Value as Msgpack;
use serde_json::{Map, Number, Value};
use vigil_model::LogRecord;

use super::scan::value_length;
use crate::sources::json_logs::normalize::{self, NormalizeOptions};

/// Limits of the decoder.
#[derive(Clone, Debug)]
pub struct DecodeLimits {
    /// Entries (`[time, record]` as MessagePack) longer than this are refused
    /// (`storage.limits.log_line_bytes`).
    pub max_entry_bytes: usize,
    /// A CompressedPackedForward payload inflating past this is refused.
    pub max_decompressed_bytes: usize,
    /// Field names and the field-count limit of the JSON path.
    pub normalize: NormalizeOptions,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_entry_bytes: 256 << 10,
            max_decompressed_bytes: 64 << 20,
            normalize: NormalizeOptions::default(),
        }
    }
}

/// A frame that is not a forward-protocol message at all. Its bytes are skipped; the
/// connection goes on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not an array of 2 to 4 elements.
    #[error("a forward message is an array of 2 to 4 elements")]
    NotAMessage,
    /// The tag is not a string.
    #[error("the tag is not a string")]
    InvalidTag,
    /// The second element is neither a time, an array nor a bin/str.
    #[error("the second element is neither a time, an entry array nor packed entries")]
    UnknownMode,
    /// The option is not a map.
    #[error("the option is not a map")]
    InvalidOption,
    /// The compression named in the option is not gzip.
    #[error("unsupported compression `{0}`")]
    UnsupportedCompression(String),
    /// The gzip payload is corrupt or inflates past the limit.
    #[error("compressed entries: {0}")]
    Decompression(String),
}

impl FrameError {
    /// Returns the reason label used in `vigil_ingest_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Decompression(_) | FrameError::UnsupportedCompression(_) => {
                "bad_compression"
            }
            _ => "malformed_frame",
        }
    }
}

/// The outcome of one frame.
#[derive(Debug, Default)]
pub struct DecodedFrame {
    /// The tag.
    pub tag: String,
    /// Normalised records.
    pub records: Vec<LogRecord>,
    /// Refused entries per reason label.
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
    /// The `chunk` option: the client waits for `{"ack": chunk}`.
    pub chunk: Option<String>,
}

impl DecodedFrame {
    fn reject(&mut self, reason: &'static str) {
        *self.rejected_by_reason.entry(reason).or_insert(0) += 1;
    }

    /// Returns the number of entries received (stored and refused).
    pub fn entry_count(&self) -> u64 {
        self.records.len() as u64 + self.rejected_by_reason.values().sum::<u64>()
    }
}

/// Reads the element at `*offset` of a complete frame: its bytes, advancing `offset`.
fn next_element<'a>(frame: &'a [u8], offset: &mut usize) -> Option<&'a [u8]> {
    let rest = frame.get(*offset..)?;
    let length = value_length(rest)?;
    *offset += length;
    rest.get(..length)
}

fn decode_value(bytes: &[u8]) -> Option<Msgpack> {
    let mut reader = bytes;
    rmpv::decode::read_value_with_max_depth(&mut reader, 64).ok()
}

/// Decodes one complete frame (as delimited by [`super::scan::ValueScanner`]).
///
/// # Errors
/// [`FrameError`] when the frame is not a forward message; refused entries inside a valid
/// frame are counted in [`DecodedFrame::rejected_by_reason`] instead.
pub fn decode_frame(
    frame: &[u8],
    receive_time_ns: i64,
    limits: &DecodeLimits,
) -> Result<DecodedFrame, FrameError> {
    let mut reader = frame;
    let element_count =
        rmp::decode::read_array_len(&mut reader).map_err(|_| FrameError::NotAMessage)?;
    if !(2..=4).contains(&element_count) {
        return Err(FrameError::NotAMessage);
    }
    let mut offset = frame.len() - reader.len();
    let mut elements = Vec::with_capacity(element_count as usize);
    for _ in 0..element_count {
        elements.push(next_element(frame, &mut offset).ok_or(FrameError::NotAMessage)?);
    }
    let tag = match decode_value(elements[0]) {
        Some(Msgpack::String(tag)) => tag.into_str().ok_or(FrameError::InvalidTag)?,
        _ => return Err(FrameError::InvalidTag),
    };
    let mut decoded = DecodedFrame {
        tag,
        ..DecodedFrame::default()
    };
    let second = elements[1];
    let marker = rmp::Marker::from_u8(second[0]);
    use rmp::Marker as M;
    match marker {
        M::FixArray(_) | M::Array16 | M::Array32 => {
            // Forward mode.
            let option = parse_option(elements.get(2).copied())?;
            decoded.chunk = option.chunk;
            let mut reader = second;
            let entry_count =
                rmp::decode::read_array_len(&mut reader).map_err(|_| FrameError::UnknownMode)?;
            let mut entry_offset = second.len() - reader.len();
            for _ in 0..entry_count {
                let Some(entry) = next_element(second, &mut entry_offset) else {
                    decoded.reject("malformed_entry");
                    break;
                };
                decode_entry(entry, receive_time_ns, limits, &mut decoded);
            }
        }
        M::FixStr(_) | M::Str8 | M::Str16 | M::Str32 | M::Bin8 | M::Bin16 | M::Bin32 => {
            // PackedForward or CompressedPackedForward.
            let option = parse_option(elements.get(2).copied())?;
            decoded.chunk = option.chunk;
            let payload = match decode_value(second) {
                Some(Msgpack::Binary(bytes)) => bytes,
                Some(Msgpack::String(text)) => text.into_bytes(),
                _ => return Err(FrameError::UnknownMode),
            };
            let entries = match option.compressed.as_deref() {
                None | Some("text") => payload,
                Some("gzip") => gunzip(&payload, limits.max_decompressed_bytes)?,
                Some(other) => return Err(FrameError::UnsupportedCompression(other.to_string())),
            };
            let mut entry_offset = 0;
            while entry_offset < entries.len() {
                let Some(entry) = next_element(&entries, &mut entry_offset) else {
                    decoded.reject("malformed_entry");
                    break;
                };
                decode_entry(entry, receive_time_ns, limits, &mut decoded);
            }
        }
        M::True | M::False | M::FixMap(_) | M::Map16 | M::Map32 | M::Reserved => {
            return Err(FrameError::UnknownMode);
        }
        _ => {
            // Message mode: [tag, time, record(, option)]; the time is a number, an
            // EventTime or nil.
            if element_count < 3 {
                return Err(FrameError::UnknownMode);
            }
            let option = parse_option(elements.get(3).copied())?;
            decoded.chunk = option.chunk;
            let Some(time) = decode_value(second) else {
                return Err(FrameError::UnknownMode);
            };
            let Some(time_ns) = event_time_ns(&time) else {
                decoded.reject("invalid_time");
                return Ok(decoded);
            };
            let record = elements[2];
            if record.len() > limits.max_entry_bytes {
                decoded.reject("line_too_large");
                return Ok(decoded);
            }
            match decode_value(record) {
                Some(record) => {
                    push_record(record, time_ns, receive_time_ns, limits, &mut decoded);
                }
                None => decoded.reject("malformed_entry"),
            }
        }
    }
    Ok(decoded)
}

/// The options of a frame that Vigil acts on.
#[derive(Debug, Default)]
struct FrameOption {
    chunk: Option<String>,
    compressed: Option<String>,
}

/// Parses the option element: a map (`size`, `chunk`, `compressed`), or nil as
/// fluent-logger-golang writes when it sends none.
fn parse_option(element: Option<&[u8]>) -> Result<FrameOption, FrameError> {
    let Some(element) = element else {
        return Ok(FrameOption::default());
    };
    let entries = match decode_value(element) {
        Some(Msgpack::Map(entries)) => entries,
        Some(Msgpack::Nil) => return Ok(FrameOption::default()),
        _ => return Err(FrameError::InvalidOption),
    };
    let mut option = FrameOption::default();
    for (key, value) in entries {
        let text = match value {
            Msgpack::String(text) => text.into_str(),
            Msgpack::Binary(bytes) => String::from_utf8(bytes).ok(),
            _ => None,
        };
        match key.as_str() {
            Some("chunk") => option.chunk = text,
            Some("compressed") => option.compressed = text,
            _ => {}
        }
    }
    Ok(option)
}

/// Inflates gzip (several concatenated members allowed), refusing more than `limit` bytes.
fn gunzip(compressed: &[u8], limit: usize) -> Result<Vec<u8>, FrameError> {
    let mut inflated = Vec::new();
    let decoder = flate2::read::MultiGzDecoder::new(compressed);
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|error| FrameError::Decompression(error.to_string()))?;
    if inflated.len() > limit {
        return Err(FrameError::Decompression(format!(
            "inflates past the limit of {limit} bytes"
        )));
    }
    Ok(inflated)
}

/// Decodes one `[time, record]` entry of Forward or PackedForward mode.
fn decode_entry(
    entry: &[u8],
    receive_time_ns: i64,
    limits: &DecodeLimits,
    decoded: &mut DecodedFrame,
) {
    if entry.len() > limits.max_entry_bytes {
        decoded.reject("line_too_large");
        return;
    }
    let Some(Msgpack::Array(mut parts)) = decode_value(entry) else {
        decoded.reject("malformed_entry");
        return;
    };
    if parts.len() < 2 {
        decoded.reject("malformed_entry");
        return;
    }
    let record = parts.swap_remove(1);
    let Some(time_ns) = event_time_ns(&parts[0]) else {
        decoded.reject("invalid_time");
        return;
    };
    push_record(record, time_ns, receive_time_ns, limits, decoded);
}

/// Returns the event time in nanoseconds (`Some(None)` means "none given": 0 or nil), or
/// `None` when the value is no time at all.
fn event_time_ns(time: &Msgpack) -> Option<Option<i64>> {
    let nanoseconds = match time {
        Msgpack::Nil => return Some(None),
        Msgpack::Integer(integer) => {
            let seconds = integer.as_i64()?;
            seconds.checked_mul(1_000_000_000)?
        }
        Msgpack::F32(seconds) => seconds_to_ns(f64::from(*seconds))?,
        Msgpack::F64(seconds) => seconds_to_ns(*seconds)?,
        Msgpack::Ext(0, bytes) if bytes.len() == 8 => {
            let seconds = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            let nanos = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            i64::from(seconds) * 1_000_000_000 + i64::from(nanos)
        }
        // Fluent Bit 2.1+: [time, metadata].
        Msgpack::Array(parts) if !parts.is_empty() && !matches!(parts[0], Msgpack::Array(_)) => {
            return event_time_ns(&parts[0]);
        }
        _ => return None,
    };
    Some((nanoseconds > 0).then_some(nanoseconds))
}

fn seconds_to_ns(seconds: f64) -> Option<i64> {
    if !seconds.is_finite() || seconds.abs() >= 9.2e9 {
        return None;
    }
    Some((seconds * 1e9).round() as i64)
}

/// Normalises a record map and adds it to the frame's records.
fn push_record(
    record: Msgpack,
    time_ns: Option<i64>,
    receive_time_ns: i64,
    limits: &DecodeLimits,
    decoded: &mut DecodedFrame,
) {
    let Msgpack::Map(entries) = record else {
        decoded.reject("not_an_object");
        return;
    };
    let document = Value::Object(map_to_json(entries));
    let original = document.to_string();
    let fallback_time_ns = time_ns.unwrap_or(receive_time_ns);
    match normalize::normalize(document, &original, fallback_time_ns, &limits.normalize) {
        Ok(mut normalized) => {
            if normalized.service.is_empty() {
                normalized.service = decoded.tag.clone();
            }
            normalized
                .attributes
                .entry("tag".to_string())
                .or_insert_with(|| Value::String(decoded.tag.clone()));
            decoded.records.push(normalized);
        }
        Err(error) => decoded.reject(error.reason()),
    }
}

fn map_to_json(entries: Vec<(Msgpack, Msgpack)>) -> Map<String, Value> {
    let mut object = Map::with_capacity(entries.len());
    for (key, value) in entries {
        let key = match key {
            Msgpack::String(text) => match text.into_str() {
                Some(text) => text,
                None => continue,
            },
            Msgpack::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            other => other.to_string(),
        };
        object.insert(key, to_json(value));
    }
    object
}

/// Converts a MessagePack value to JSON: bin as (lossy) UTF-8 text, EventTime as RFC 3339,
/// other extensions and non-finite floats as null.
fn to_json(value: Msgpack) -> Value {
    match value {
        Msgpack::Nil => Value::Null,
        Msgpack::Boolean(flag) => Value::Bool(flag),
        Msgpack::Integer(integer) => {
            if let Some(unsigned) = integer.as_u64() {
                Value::Number(unsigned.into())
            } else if let Some(signed) = integer.as_i64() {
                Value::Number(signed.into())
            } else {
                Value::Null
            }
        }
        Msgpack::F32(float) => {
            Number::from_f64(f64::from(float)).map_or(Value::Null, Value::Number)
        }
        Msgpack::F64(float) => Number::from_f64(float).map_or(Value::Null, Value::Number),
        Msgpack::String(text) => {
            Value::String(String::from_utf8_lossy(text.as_bytes()).into_owned())
        }
        Msgpack::Binary(bytes) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
        Msgpack::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Msgpack::Map(entries) => Value::Object(map_to_json(entries)),
        Msgpack::Ext(0, bytes) if bytes.len() == 8 => {
            match event_time_ns(&Msgpack::Ext(0, bytes)).flatten() {
                Some(nanoseconds) => Value::String(
                    chrono::DateTime::from_timestamp_nanos(nanoseconds)
                        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                ),
                None => Value::Null,
            }
        }
        Msgpack::Ext(..) => Value::Null,
    }
}
