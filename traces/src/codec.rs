//! The binary form of a chunk: the spans of one trace written by one write call, postcard
//! encoded. Attribute values are OTLP `AnyValue`s held as JSON in [`Span`]; postcard cannot
//! carry `serde_json::Value` (it is self-describing), so they travel as [`StoredValue`].
//! Resource attribute sets repeat across the spans of a batch and are stored once per chunk.
//! Also the packed index entries of a `span_groups` row ([`IndexedSpan`]) and the correlation
//! values of a chunk.

use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use vigil_model::{Span, SpanEvent, SpanKind, SpanLink, SpanResource, StatusCode};

/// Format version written as the first byte of every chunk.
const CHUNK_FORMAT: u8 = 1;

/// A chunk did not decode: the file is damaged or was written by a newer Vigil.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The chunk is empty.
    #[error("empty span chunk")]
    Empty,
    /// The format byte is unknown.
    #[error("span chunk format {0} is unknown (written by a newer Vigil?)")]
    UnknownFormat(u8),
    /// postcard failed.
    #[error("span chunk does not decode: {0}")]
    Postcard(#[from] postcard::Error),
    /// A span names a resource the chunk does not hold.
    #[error("span chunk names resource {0} it does not hold")]
    MissingResource(u32),
}

/// A JSON value in a form postcard can carry.
#[derive(Clone, Debug, PartialEq, Deserialize)]
enum StoredValue {
    Null,
    Bool(bool),
    Signed(i64),
    Unsigned(u64),
    Float(f64),
    Text(String),
    Array(Vec<StoredValue>),
    Object(Vec<(String, StoredValue)>),
}

impl StoredValue {
    fn into_json(self) -> Value {
        match self {
            StoredValue::Null => Value::Null,
            StoredValue::Bool(flag) => Value::Bool(flag),
            StoredValue::Signed(signed) => Value::Number(signed.into()),
            StoredValue::Unsigned(unsigned) => Value::Number(unsigned.into()),
            // NaN and infinities have no JSON form; OTLP JSON cannot send them either.
            StoredValue::Float(float) => Number::from_f64(float).map_or(Value::Null, Value::Number),
            StoredValue::Text(text) => Value::String(text),
            StoredValue::Array(items) => {
                Value::Array(items.into_iter().map(StoredValue::into_json).collect())
            }
            StoredValue::Object(pairs) => Value::Object(stored_to_object(pairs)),
        }
    }
}

fn stored_to_object(pairs: Vec<(String, StoredValue)>) -> Map<String, Value> {
    pairs
        .into_iter()
        .map(|(key, value)| (key, value.into_json()))
        .collect()
}

#[derive(Debug, Deserialize)]
struct StoredEvent {
    time_unix_nano: i64,
    name: String,
    attributes: Vec<(String, StoredValue)>,
}

#[derive(Debug, Deserialize)]
struct StoredLink {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    attributes: Vec<(String, StoredValue)>,
}

#[derive(Debug, Deserialize)]
struct StoredSpan {
    span_id: [u8; 8],
    parent_span_id: Option<[u8; 8]>,
    service: String,
    name: String,
    kind: u8,
    start_unix_nano: i64,
    duration_ns: i64,
    status: u8,
    status_message: String,
    attributes: Vec<(String, StoredValue)>,
    /// Index into the chunk's resources.
    resource: u32,
    events: Vec<StoredEvent>,
    links: Vec<StoredLink>,
}

#[derive(Debug, Deserialize)]
struct StoredChunk {
    trace_id: [u8; 16],
    resources: Vec<Vec<(String, StoredValue)>>,
    spans: Vec<StoredSpan>,
}

fn kind_code(kind: SpanKind) -> u8 {
    match kind {
        SpanKind::Internal => 0,
        SpanKind::Server => 1,
        SpanKind::Client => 2,
        SpanKind::Producer => 3,
        SpanKind::Consumer => 4,
    }
}

fn kind_from_code(code: u8) -> SpanKind {
    match code {
        1 => SpanKind::Server,
        2 => SpanKind::Client,
        3 => SpanKind::Producer,
        4 => SpanKind::Consumer,
        _ => SpanKind::Internal,
    }
}

fn status_code(status: StatusCode) -> u8 {
    match status {
        StatusCode::Unset => 0,
        StatusCode::Ok => 1,
        StatusCode::Error => 2,
    }
}

fn status_from_code(code: u8) -> StatusCode {
    match code {
        1 => StatusCode::Ok,
        2 => StatusCode::Error,
        _ => StatusCode::Unset,
    }
}

/// Serializes a JSON value exactly as the [`StoredValue`] built from it would be, without
/// copying it (the write path encodes every attribute once).
struct JsonAsStored<'a>(&'a Value);

impl Serialize for JsonAsStored<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        const NAME: &str = "StoredValue";
        match self.0 {
            Value::Null => serializer.serialize_unit_variant(NAME, 0, "Null"),
            Value::Bool(flag) => serializer.serialize_newtype_variant(NAME, 1, "Bool", flag),
            Value::Number(number) => {
                if let Some(signed) = number.as_i64() {
                    serializer.serialize_newtype_variant(NAME, 2, "Signed", &signed)
                } else if let Some(unsigned) = number.as_u64() {
                    serializer.serialize_newtype_variant(NAME, 3, "Unsigned", &unsigned)
                } else {
                    let float = number.as_f64().unwrap_or(f64::NAN);
                    serializer.serialize_newtype_variant(NAME, 4, "Float", &float)
                }
            }
            Value::String(text) => {
                serializer.serialize_newtype_variant(NAME, 5, "Text", text.as_str())
            }
            Value::Array(items) => {
                serializer.serialize_newtype_variant(NAME, 6, "Array", &ArrayAsStored(items))
            }
            Value::Object(map) => {
                serializer.serialize_newtype_variant(NAME, 7, "Object", &ObjectAsStored(map))
            }
        }
    }
}

struct ArrayAsStored<'a>(&'a [Value]);

impl Serialize for ArrayAsStored<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut sequence = serializer.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            sequence.serialize_element(&JsonAsStored(item))?;
        }
        sequence.end()
    }
}

/// A JSON object as `Vec<(String, StoredValue)>` is serialized.
struct ObjectAsStored<'a>(&'a Map<String, Value>);

impl Serialize for ObjectAsStored<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut sequence = serializer.serialize_seq(Some(self.0.len()))?;
        for (key, value) in self.0 {
            sequence.serialize_element(&(key.as_str(), JsonAsStored(value)))?;
        }
        sequence.end()
    }
}

/// [`StoredEvent`], borrowed.
#[derive(Serialize)]
struct EventRef<'a> {
    time_unix_nano: i64,
    name: &'a str,
    attributes: ObjectAsStored<'a>,
}

/// [`StoredLink`], borrowed.
#[derive(Serialize)]
struct LinkRef<'a> {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    attributes: ObjectAsStored<'a>,
}

/// [`StoredSpan`], borrowed: the same fields in the same order.
#[derive(Serialize)]
struct SpanRef<'a> {
    span_id: [u8; 8],
    parent_span_id: Option<[u8; 8]>,
    service: &'a str,
    name: &'a str,
    kind: u8,
    start_unix_nano: i64,
    duration_ns: i64,
    status: u8,
    status_message: &'a str,
    attributes: ObjectAsStored<'a>,
    resource: u32,
    events: Vec<EventRef<'a>>,
    links: Vec<LinkRef<'a>>,
}

/// [`StoredChunk`], borrowed.
#[derive(Serialize)]
struct ChunkRef<'a> {
    trace_id: [u8; 16],
    resources: Vec<ObjectAsStored<'a>>,
    spans: Vec<SpanRef<'a>>,
}

/// Encodes spans of one trace (all with `trace_id`) into a chunk.
///
/// # Errors
/// postcard's error (it does not fail on these types in practice).
pub fn encode_chunk(trace_id: [u8; 16], spans: &[&Span]) -> Result<Vec<u8>, postcard::Error> {
    let mut resources: Vec<&SpanResource> = Vec::new();
    let mut span_refs = Vec::with_capacity(spans.len());
    for span in spans {
        debug_assert_eq!(span.trace_id, trace_id);
        // Spans of one export share their resource's `Arc`; equal copies are merged too.
        let resource_index = match resources
            .iter()
            .position(|resource| SpanResource::ptr_eq(resource, &span.resource))
            .or_else(|| {
                resources
                    .iter()
                    .position(|resource| *resource == &span.resource)
            }) {
            Some(index) => index,
            None => {
                resources.push(&span.resource);
                resources.len() - 1
            }
        };
        span_refs.push(SpanRef {
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            service: &span.service,
            name: &span.name,
            kind: kind_code(span.kind),
            start_unix_nano: span.start_unix_nano,
            duration_ns: span.duration_ns,
            status: status_code(span.status),
            status_message: &span.status_message,
            attributes: ObjectAsStored(&span.attributes),
            resource: u32::try_from(resource_index).unwrap_or(u32::MAX),
            events: span
                .events
                .iter()
                .map(|event| EventRef {
                    time_unix_nano: event.time_unix_nano,
                    name: &event.name,
                    attributes: ObjectAsStored(&event.attributes),
                })
                .collect(),
            links: span
                .links
                .iter()
                .map(|link| LinkRef {
                    trace_id: link.trace_id,
                    span_id: link.span_id,
                    attributes: ObjectAsStored(&link.attributes),
                })
                .collect(),
        });
    }
    let chunk = ChunkRef {
        trace_id,
        resources: resources
            .into_iter()
            .map(|resource| ObjectAsStored(resource.as_ref()))
            .collect(),
        spans: span_refs,
    };
    let mut bytes = Vec::with_capacity(256 * spans.len());
    bytes.push(CHUNK_FORMAT);
    postcard::to_extend(&chunk, bytes)
}

/// Decodes a chunk into its spans, in the order written.
///
/// # Errors
/// [`DecodeError`] when the bytes are not a chunk.
pub fn decode_chunk(bytes: &[u8]) -> Result<Vec<Span>, DecodeError> {
    let (format, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if *format != CHUNK_FORMAT {
        return Err(DecodeError::UnknownFormat(*format));
    }
    let chunk: StoredChunk = postcard::from_bytes(body)?;
    let resources: Vec<SpanResource> = chunk
        .resources
        .into_iter()
        .map(|pairs| SpanResource::new(stored_to_object(pairs)))
        .collect();
    let mut spans = Vec::with_capacity(chunk.spans.len());
    for stored in chunk.spans {
        let resource = resources
            .get(stored.resource as usize)
            .ok_or(DecodeError::MissingResource(stored.resource))?
            .clone();
        spans.push(Span {
            trace_id: chunk.trace_id,
            span_id: stored.span_id,
            parent_span_id: stored.parent_span_id,
            service: stored.service,
            name: stored.name,
            kind: kind_from_code(stored.kind),
            start_unix_nano: stored.start_unix_nano,
            duration_ns: stored.duration_ns,
            status: status_from_code(stored.status),
            status_message: stored.status_message,
            attributes: stored_to_object(stored.attributes),
            resource,
            events: stored
                .events
                .into_iter()
                .map(|event| SpanEvent {
                    time_unix_nano: event.time_unix_nano,
                    name: event.name,
                    attributes: stored_to_object(event.attributes),
                })
                .collect(),
            links: stored
                .links
                .into_iter()
                .map(|link| SpanLink {
                    trace_id: link.trace_id,
                    span_id: link.span_id,
                    attributes: stored_to_object(link.attributes),
                })
                .collect(),
        });
    }
    Ok(spans)
}

/// Format version written as the first byte of every span index entry list.
const INDEX_FORMAT: u8 = 1;

/// A span's entry in its service's index row (`span_groups.spans` in the store): what trace
/// search, duration filters and the service graph read, without the span's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedSpan {
    /// Position of the span in its chunk (the chunk's `decode_chunk` order).
    pub position: u16,
    /// The span's operation (`operations.id` of its partition).
    pub operation_id: i64,
    /// How long before the row's `start_ns` (the latest start of the row) the span started.
    pub start_offset_ns: u64,
    /// Duration, ns.
    pub duration_ns: i64,
    /// Whether the span's status is error.
    pub error: bool,
    /// The span's ID.
    pub span_id: [u8; 8],
    /// The parent's ID, `None` for a root span.
    pub parent_span_id: Option<[u8; 8]>,
}

/// Encodes the index entries of one row.
///
/// # Errors
/// postcard's error (it does not fail on these types in practice).
pub fn encode_span_index(entries: &[IndexedSpan]) -> Result<Vec<u8>, postcard::Error> {
    let mut bytes = Vec::with_capacity(1 + 32 * entries.len());
    bytes.push(INDEX_FORMAT);
    postcard::to_extend(entries, bytes)
}

/// Decodes the index entries of one row.
///
/// # Errors
/// [`DecodeError`] when the bytes are not an entry list.
pub fn decode_span_index(bytes: &[u8]) -> Result<Vec<IndexedSpan>, DecodeError> {
    let (format, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if *format != INDEX_FORMAT {
        return Err(DecodeError::UnknownFormat(*format));
    }
    Ok(postcard::from_bytes(body)?)
}

/// Encodes the correlation values of a chunk's trace (`chunks.correlation` in the store).
///
/// # Errors
/// postcard's error (it does not fail on strings in practice).
pub fn encode_correlation_values(values: &[String]) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(values)
}

/// Decodes the correlation values of a chunk.
///
/// # Errors
/// [`DecodeError`] when the bytes are not a list of strings.
pub fn decode_correlation_values(bytes: &[u8]) -> Result<Vec<String>, DecodeError> {
    Ok(postcard::from_bytes(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn sample_span() -> Span {
        let mut span = Span {
            trace_id: [7; 16],
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            parent_span_id: Some([9; 8]),
            service: "orders".to_string(),
            name: "POST /orders".to_string(),
            kind: SpanKind::Server,
            start_unix_nano: 1_700_000_000_123_456_789,
            duration_ns: 12_345_678,
            status: StatusCode::Error,
            status_message: "timeout".to_string(),
            ..Span::default()
        };
        span.attributes
            .insert("http.status_code".into(), json!(500));
        span.attributes.insert("request_id".into(), json!("req-1"));
        span.attributes.insert("ratio".into(), json!(0.5));
        span.attributes.insert("big".into(), json!(u64::MAX));
        span.attributes
            .insert("nested".into(), json!({"a": [1, "x", null, true]}));
        SpanResource::make_mut(&mut span.resource).insert("service.name".into(), json!("orders"));
        span.events.push(SpanEvent {
            time_unix_nano: 1_700_000_000_200_000_000,
            name: "exception".to_string(),
            attributes: json!({"exception.message": "boom"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        });
        span.links.push(SpanLink {
            trace_id: [3; 16],
            span_id: [4; 8],
            attributes: Map::new(),
        });
        span
    }

    #[test]
    fn chunk_round_trips_every_field() {
        let first = sample_span();
        let mut second = sample_span();
        second.span_id = [2; 8];
        second.parent_span_id = None;
        second.kind = SpanKind::Consumer;
        second.status = StatusCode::Ok;
        let mut third = sample_span();
        SpanResource::make_mut(&mut third.resource).insert("host.name".into(), json!("h1"));
        let bytes = encode_chunk([7; 16], &[&first, &second, &third]).unwrap();
        let decoded = decode_chunk(&bytes).unwrap();
        assert_eq!(decoded, vec![first, second, third]);
    }

    #[test]
    fn damaged_chunks_are_errors() {
        assert!(matches!(decode_chunk(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            decode_chunk(&[9, 1, 2]),
            Err(DecodeError::UnknownFormat(9))
        ));
        let bytes = encode_chunk([7; 16], &[&sample_span()]).unwrap();
        assert!(decode_chunk(&bytes[..bytes.len() / 2]).is_err());
    }

    fn index_entry() -> impl Strategy<Value = IndexedSpan> {
        (
            any::<u16>(),
            prop_oneof![Just(0i64), Just(1), Just(i64::MAX), any::<i64>()],
            prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
            prop_oneof![Just(0i64), Just(i64::MAX), any::<i64>()],
            any::<bool>(),
            any::<[u8; 8]>(),
            proptest::option::of(any::<[u8; 8]>()),
        )
            .prop_map(
                |(position, operation_id, start_offset_ns, duration_ns, error, span_id, parent)| {
                    IndexedSpan {
                        position,
                        operation_id,
                        start_offset_ns,
                        duration_ns,
                        error,
                        span_id,
                        parent_span_id: parent,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn index_entries_round_trip(entries in proptest::collection::vec(index_entry(), 0..20)) {
            let bytes = encode_span_index(&entries).unwrap();
            prop_assert_eq!(decode_span_index(&bytes).unwrap(), entries);
        }

        #[test]
        fn correlation_values_round_trip(values in proptest::collection::vec(".{0,40}", 0..5)) {
            let bytes = encode_correlation_values(&values).unwrap();
            prop_assert_eq!(decode_correlation_values(&bytes).unwrap(), values);
            let _ = decode_correlation_values(&bytes[..bytes.len() / 2]);
        }

        #[test]
        fn decoding_arbitrary_index_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut framed = vec![INDEX_FORMAT];
            framed.extend_from_slice(&bytes);
            let _ = decode_span_index(&framed);
            let _ = decode_span_index(&bytes);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut framed = vec![CHUNK_FORMAT];
            framed.extend_from_slice(&bytes);
            let _ = decode_chunk(&framed);
            let _ = decode_chunk(&bytes);
        }

        #[test]
        fn attributes_round_trip(
            key in "[a-z._]{0,12}",
            text in ".{0,20}",
            signed in any::<i64>(),
            float in -1e300f64..1e300,
            flag in any::<bool>(),
        ) {
            let mut span = sample_span();
            span.attributes.insert(key.clone(), json!([text, signed, float, flag]));
            SpanResource::make_mut(&mut span.resource).insert(key, json!({"n": signed}));
            let bytes = encode_chunk([7; 16], &[&span]).unwrap();
            prop_assert_eq!(decode_chunk(&bytes).unwrap(), vec![span]);
        }
    }
}
