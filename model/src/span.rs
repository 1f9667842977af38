//! Spans (DESIGN.md §6, OTLP's model) and the [`SpanSink`] through which the collector writes them.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A span's resource attributes: one set per resource of an export, shared by its spans.
pub type SpanResource = Arc<serde_json::Map<String, serde_json::Value>>;

/// What a span stands for in its trace, as OTLP's `Span.SpanKind`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    /// OTLP `SPAN_KIND_UNSPECIFIED` and `SPAN_KIND_INTERNAL`.
    #[default]
    Internal,
    /// The server side of a synchronous call.
    Server,
    /// The client side of a synchronous call.
    Client,
    /// The sender of an asynchronous message.
    Producer,
    /// The receiver of an asynchronous message.
    Consumer,
}

impl SpanKind {
    /// The lower-case name used in Vigil's API and in span metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }

    /// From OTLP's enum value; unknown values are `Internal`.
    pub fn from_otlp(value: i32) -> SpanKind {
        match value {
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Internal,
        }
    }
}

/// A span's status code, as OTLP's `Status.StatusCode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusCode {
    /// Not set by the instrumentation.
    #[default]
    Unset,
    /// Explicitly successful.
    Ok,
    /// Failed.
    Error,
}

impl StatusCode {
    /// The lower-case name used in Vigil's API and in span metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusCode::Unset => "unset",
            StatusCode::Ok => "ok",
            StatusCode::Error => "error",
        }
    }

    /// From OTLP's enum value; unknown values are `Unset`.
    pub fn from_otlp(value: i32) -> StatusCode {
        match value {
            1 => StatusCode::Ok,
            2 => StatusCode::Error,
            _ => StatusCode::Unset,
        }
    }
}

/// An event inside a span (an exception, a log-like note).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanEvent {
    /// Nanoseconds since the Unix epoch.
    pub time_unix_nano: i64,
    /// The event's name.
    pub name: String,
    /// Attributes, OTLP `AnyValue`s as JSON (arrays and maps kept as JSON arrays and objects).
    #[serde(default)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// A link from a span to a span of another (or the same) trace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanLink {
    /// The linked trace.
    pub trace_id: [u8; 16],
    /// The linked span.
    pub span_id: [u8; 8],
    /// Attributes of the link.
    #[serde(default)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// One span, normalised from OTLP (DESIGN.md §6).
///
/// IDs are raw bytes; the API prints them as lower-case hex. A root span has no parent
/// (`parent_span_id` is `None`; OTLP's empty or all-zero parent ID means the same).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Span {
    /// The trace the span belongs to.
    pub trace_id: [u8; 16],
    /// The span's own ID.
    pub span_id: [u8; 8],
    /// The parent span, `None` for a root span.
    pub parent_span_id: Option<[u8; 8]>,
    /// `service.name` of the resource that sent the span (`unknown_service` when absent, as
    /// the OpenTelemetry SDKs name it).
    pub service: String,
    /// The span's name (the operation).
    pub name: String,
    /// The span's kind.
    pub kind: SpanKind,
    /// Start, nanoseconds since the Unix epoch.
    pub start_unix_nano: i64,
    /// Duration in nanoseconds (end minus start, never negative).
    pub duration_ns: i64,
    /// Status code.
    pub status: StatusCode,
    /// Status message (empty when absent).
    #[serde(default)]
    pub status_message: String,
    /// Span attributes, OTLP `AnyValue`s as JSON.
    #[serde(default)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// Resource attributes (including `service.name`), OTLP `AnyValue`s as JSON; shared by
    /// the spans of one resource (`Arc::make_mut` to change one span's copy).
    #[serde(
        default,
        serialize_with = "serialize_resource",
        deserialize_with = "deserialize_resource"
    )]
    pub resource: SpanResource,
    /// Events, in the order sent.
    #[serde(default)]
    pub events: Vec<SpanEvent>,
    /// Links, in the order sent.
    #[serde(default)]
    pub links: Vec<SpanLink>,
}

fn serialize_resource<S: Serializer>(
    resource: &SpanResource,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    resource.as_ref().serialize(serializer)
}

fn deserialize_resource<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SpanResource, D::Error> {
    serde_json::Map::deserialize(deserializer).map(Arc::new)
}

/// The span store refused a write.
#[derive(Debug, thiserror::Error)]
pub enum SpanSinkError {
    /// The store is full for now; the caller should retry later (HTTP 503, gRPC
    /// RESOURCE_EXHAUSTED / UNAVAILABLE).
    #[error("span store is overloaded, retry later")]
    Overloaded,
    /// The store failed; nothing of the batch is acknowledged.
    #[error("span store failed: {0}")]
    Storage(String),
}

/// Where the collector writes spans.
///
/// Contract: when [`SpanSink::write`] returns `Ok`, every span of the batch is durable (it
/// survives a kill -9 of the process) and can be found by trace ID at once. The call blocks:
/// call it from a blocking thread.
pub trait SpanSink: Send + Sync {
    /// Writes a batch durably.
    ///
    /// # Errors
    /// [`SpanSinkError::Overloaded`] when the caller should back off, [`SpanSinkError::Storage`]
    /// when the batch was not written.
    fn write(&self, spans: Vec<Span>) -> Result<(), SpanSinkError>;
}

/// A [`SpanSink`] that keeps spans in memory, for tests.
#[derive(Debug, Default)]
pub struct MemorySpanSink {
    spans: Mutex<Vec<Span>>,
}

impl MemorySpanSink {
    /// Returns an empty sink.
    pub fn new() -> Self {
        MemorySpanSink::default()
    }

    /// Returns a copy of every span written so far, in write order.
    pub fn spans(&self) -> Vec<Span> {
        match self.spans.lock() {
            Ok(spans) => spans.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl SpanSink for MemorySpanSink {
    fn write(&self, spans: Vec<Span>) -> Result<(), SpanSinkError> {
        let mut stored = match self.spans.lock() {
            Ok(stored) => stored,
            Err(poisoned) => poisoned.into_inner(),
        };
        stored.extend(spans);
        Ok(())
    }
}

/// Lower-case hex of an ID, as the API prints trace and span IDs.
pub fn hex_id(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// Parses a hex ID of exactly `N` bytes (upper or lower case).
pub fn parse_hex_id<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != N * 2 {
        return None;
    }
    let mut id = [0u8; N];
    for (slot, pair) in id.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *slot = u8::try_from(high * 16 + low).ok()?;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_round_trip() {
        let id = [0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03];
        assert_eq!(hex_id(&id), "5b8efff798038103");
        assert_eq!(parse_hex_id::<8>("5B8EFFF798038103"), Some(id));
        assert_eq!(parse_hex_id::<8>("5b8efff79803810"), None);
        assert_eq!(parse_hex_id::<8>("5b8efff79803810g"), None);
    }
}
