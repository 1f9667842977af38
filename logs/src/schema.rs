//! The tantivy schema of a log partition, and how a [`LogRecord`] becomes a document.

use std::collections::{btree_map, BTreeMap};

use tantivy::schema::document::{ReferenceValue, ReferenceValueLeaf, Value};
use tantivy::schema::{
    Field, IndexRecordOption, JsonObjectOptions, NumericOptions, Schema, TextFieldIndexing,
    TextOptions, FAST, STORED,
};
use tantivy::tokenizer::{LowerCaser, RawTokenizer, TextAnalyzer, TokenizerManager};
use tantivy::{Index, TantivyDocument};
use vigil_model::LogRecord;

use crate::tokenizer::{MessageTokenizer, LOWERCASE_KEYWORD_TOKENIZER, MESSAGE_TOKENIZER};

/// The fields of a partition.
#[derive(Clone, Debug)]
pub struct LogSchema {
    /// The schema.
    pub schema: Schema,
    /// Nanoseconds since the epoch (fast only: ranges are fast-field range queries, and an
    /// inverted index of a value unique per line would only grow the term dictionary that
    /// every commit and merge rewrites).
    pub timestamp: Field,
    /// Write order, unique in the store (fast only, for the same reason): ties of equal
    /// timestamps, cursors and the live tail.
    pub seq: Field,
    /// Normalised level (lowercased keyword, fast).
    pub level: Field,
    /// Service (exact keyword, fast).
    pub service: Field,
    /// Host (exact keyword, fast).
    pub host: Field,
    /// Trace ID (exact).
    pub trace_id: Field,
    /// Span ID (exact).
    pub span_id: Field,
    /// Correlation ID (exact).
    pub correlation_id: Field,
    /// Message (identifier-preserving tokenizer, with positions for phrases).
    pub message: Field,
    /// Flattened attributes (JSON, dotted keys expanded, same tokenizer as the message).
    pub attributes: Field,
    /// The whole record as JSON (stored only): what a hit returns.
    pub record: Field,
}

impl Default for LogSchema {
    fn default() -> Self {
        LogSchema::new()
    }
}

impl LogSchema {
    /// Builds the schema.
    pub fn new() -> Self {
        let mut builder = Schema::builder();
        let timestamp = builder.add_i64_field("timestamp", NumericOptions::default().set_fast());
        let seq = builder.add_u64_field("seq", FAST);
        let keyword = |tokenizer: &str| {
            TextOptions::default()
                .set_indexing_options(
                    TextFieldIndexing::default()
                        .set_tokenizer(tokenizer)
                        .set_index_option(IndexRecordOption::Basic),
                )
                .set_fast("raw")
        };
        let level = builder.add_text_field("level", keyword(LOWERCASE_KEYWORD_TOKENIZER));
        let service = builder.add_text_field("service", keyword("raw"));
        let host = builder.add_text_field("host", keyword("raw"));
        let exact = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("raw")
                .set_index_option(IndexRecordOption::Basic),
        );
        let trace_id = builder.add_text_field("trace_id", exact.clone());
        let span_id = builder.add_text_field("span_id", exact.clone());
        let correlation_id = builder.add_text_field("correlation_id", exact);
        let message_indexing = TextFieldIndexing::default()
            .set_tokenizer(MESSAGE_TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions);
        let message = builder.add_text_field(
            "message",
            TextOptions::default().set_indexing_options(message_indexing.clone()),
        );
        let attributes = builder.add_json_field(
            "attributes",
            JsonObjectOptions::default()
                .set_indexing_options(message_indexing)
                .set_expand_dots_enabled(),
        );
        let record = builder.add_text_field("record", STORED);
        LogSchema {
            schema: builder.build(),
            timestamp,
            seq,
            level,
            service,
            host,
            trace_id,
            span_id,
            correlation_id,
            message,
            attributes,
            record,
        }
    }

    /// Registers the index-time tokenizers on `index`.
    pub fn register_tokenizers(index: &Index) {
        index
            .tokenizers()
            .register(MESSAGE_TOKENIZER, MessageTokenizer::for_indexing());
        index
            .tokenizers()
            .register(LOWERCASE_KEYWORD_TOKENIZER, lowercase_keyword());
    }

    /// Returns the tokenizers the query parser uses: identifiers split into their parts.
    pub fn query_tokenizers() -> TokenizerManager {
        let manager = TokenizerManager::default();
        manager.register(MESSAGE_TOKENIZER, MessageTokenizer::for_queries());
        manager.register(LOWERCASE_KEYWORD_TOKENIZER, lowercase_keyword());
        manager
    }

    /// Returns the document of a record with sequence number `seq`.
    pub fn document(&self, record: &LogRecord, seq: u64) -> TantivyDocument {
        let stored = serde_json::to_string(record).unwrap_or_default();
        let mut document = self.document_with_json(record, stored);
        document.add_u64(self.seq, seq);
        document
    }

    /// Returns the document of a record whose JSON (what `record` stores) is already made,
    /// without its sequence number (add it to `seq` before indexing).
    pub fn document_with_json(&self, record: &LogRecord, record_json: String) -> TantivyDocument {
        let mut document = TantivyDocument::default();
        document.add_i64(self.timestamp, record.timestamp_ns);
        let text_fields = [
            (self.level, &record.level),
            (self.service, &record.service),
            (self.host, &record.host),
            (self.trace_id, &record.trace_id),
            (self.span_id, &record.span_id),
            (self.correlation_id, &record.correlation_id),
            (self.message, &record.message),
        ];
        for (field, value) in text_fields {
            if !value.is_empty() {
                document.add_text(field, value);
            }
        }
        if !record.attributes.is_empty() {
            document.add_field_value(self.attributes, Attributes::Map(&record.attributes));
        }
        document.add_text(self.record, record_json);
        document
    }
}

/// The attributes of a record, lent to tantivy as its JSON field's value without a copy.
///
/// Values are read as tantivy reads a `serde_json::Value` (`&serde_json::Value` is delegated to
/// for every leaf, so RFC 3339 strings become dates, numbers `i64`, `u64` or `f64` the same way).
#[derive(Clone, Copy, Debug)]
enum Attributes<'a> {
    /// The top-level object: dotted keys to values.
    Map(&'a BTreeMap<String, serde_json::Value>),
    /// A value inside it.
    Json(&'a serde_json::Value),
}

/// The entries of an [`Attributes`] object.
enum AttributeEntries<'a> {
    Map(btree_map::Iter<'a, String, serde_json::Value>),
    Json(serde_json::map::Iter<'a>),
}

impl<'a> Iterator for AttributeEntries<'a> {
    type Item = (&'a str, Attributes<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let (key, value) = match self {
            AttributeEntries::Map(entries) => entries.next()?,
            AttributeEntries::Json(entries) => entries.next()?,
        };
        Some((key.as_str(), Attributes::Json(value)))
    }
}

impl<'a> Value<'a> for Attributes<'a> {
    type ArrayIter = std::iter::Map<std::slice::Iter<'a, serde_json::Value>, ToAttributes<'a>>;
    type ObjectIter = AttributeEntries<'a>;

    fn as_value(&self) -> ReferenceValue<'a, Self> {
        match *self {
            Attributes::Map(map) => ReferenceValue::Object(AttributeEntries::Map(map.iter())),
            Attributes::Json(serde_json::Value::Array(elements)) => {
                ReferenceValue::Array(elements.iter().map(Attributes::Json as ToAttributes<'a>))
            }
            Attributes::Json(serde_json::Value::Object(object)) => {
                ReferenceValue::Object(AttributeEntries::Json(object.iter()))
            }
            Attributes::Json(value) => match value.as_value() {
                ReferenceValue::Leaf(leaf) => ReferenceValue::Leaf(leaf),
                // Arrays and objects are matched above.
                ReferenceValue::Array(_) | ReferenceValue::Object(_) => {
                    ReferenceValue::Leaf(ReferenceValueLeaf::Null)
                }
            },
        }
    }
}

/// How an array element becomes an [`Attributes`] value.
type ToAttributes<'a> = fn(&'a serde_json::Value) -> Attributes<'a>;

fn lowercase_keyword() -> TextAnalyzer {
    TextAnalyzer::builder(RawTokenizer::default())
        .filter(LowerCaser)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tantivy::schema::OwnedValue;
    use tantivy::Document as _;

    /// A scalar attribute value, with strings that tantivy takes for dates among them.
    fn scalar() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            (-1e12f64..1e12).prop_map(serde_json::Value::from),
            "[a-z0-9 ./:-]{0,24}".prop_map(serde_json::Value::from),
            (1970u32..2100, 1u32..13, 1u32..29, 0u32..24)
                .prop_map(|(y, m, d, h)| format!("{y}-{m:02}-{d:02}T{h:02}:30:00Z").into()),
        ]
    }

    fn attribute() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            4 => scalar(),
            1 => proptest::collection::vec(scalar(), 0..4).prop_map(serde_json::Value::from),
            1 => proptest::collection::btree_map("[a-z]{1,6}", scalar(), 0..3)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    }

    proptest! {
        /// Lending the attributes gives the document tantivy's own conversion of the same JSON
        /// gives (what the index and the stored fields hold).
        #[test]
        fn lent_attributes_make_the_document_tantivys_conversion_makes(
            attributes in proptest::collection::btree_map("[a-z_.]{1,12}", attribute(), 1..8)
        ) {
            let schema = LogSchema::new();
            let record = LogRecord {
                timestamp_ns: 1,
                message: "m".into(),
                attributes: attributes.clone(),
                ..LogRecord::default()
            };
            let lent = schema.document_with_json(&record, String::new());

            let mut converted = TantivyDocument::default();
            converted.add_i64(schema.timestamp, 1);
            converted.add_text(schema.message, "m");
            let object: serde_json::Map<String, serde_json::Value> =
                attributes.into_iter().collect();
            converted.add_field_value(schema.attributes, &OwnedValue::from(object));
            converted.add_text(schema.record, "");

            prop_assert_eq!(lent.to_json(&schema.schema), converted.to_json(&schema.schema));
        }
    }
}
