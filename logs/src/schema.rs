//! The tantivy schema of a log partition, and how a [`LogRecord`] becomes a document.

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
            let object: serde_json::Map<String, serde_json::Value> = record
                .attributes
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            let owned = tantivy::schema::OwnedValue::from(object);
            document.add_field_value(self.attributes, &owned);
        }
        document.add_text(self.record, record_json);
        document
    }
}

fn lowercase_keyword() -> TextAnalyzer {
    TextAnalyzer::builder(RawTokenizer::default())
        .filter(LowerCaser)
        .build()
}
