//! Log search over the partitions of a [`LogStore`]: Lucene-like queries (tantivy's query
//! parser), a time range, newest or oldest first, cursors stable while ingest goes on, a
//! histogram split by level, and top field values.
//!
//! Hits are ordered by `(timestamp, seq)`; a cursor is the key of the last hit of a page, so
//! the next page starts strictly after it whatever was written meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use tantivy::collector::{Collector, Count, SegmentCollector, TopDocs};
use tantivy::columnar::StrColumn;
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery};
use tantivy::schema::Value as _;
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader, TantivyDocument, Term};
use vigil_model::LogRecord;

use crate::schema::LogSchema;
use crate::store::LogStore;

/// The most hits one page may ask for.
pub const MAX_LIMIT: usize = 10_000;

/// The order of hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortOrder {
    /// Newest first (the default).
    Descending,
    /// Oldest first.
    Ascending,
}

/// A position between two hits: the `(timestamp, seq)` of the last hit of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Timestamp of the last hit (ns).
    pub timestamp_ns: i64,
    /// Sequence number of the last hit.
    pub seq: u64,
}

impl Cursor {
    /// Returns the cursor as text (`<timestamp>-<seq>`).
    pub fn encode(&self) -> String {
        format!("{}-{}", self.timestamp_ns, self.seq)
    }

    /// Parses a cursor made by [`Cursor::encode`].
    pub fn decode(text: &str) -> Option<Cursor> {
        let (timestamp, seq) = text.rsplit_once('-')?;
        Some(Cursor {
            timestamp_ns: timestamp.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    fn key(&self) -> i128 {
        sort_key(self.timestamp_ns, self.seq)
    }
}

fn sort_key(timestamp_ns: i64, seq: u64) -> i128 {
    (i128::from(timestamp_ns) << 64) | i128::from(seq)
}

/// A search.
#[derive(Clone, Debug)]
pub struct SearchRequest {
    /// The query text; empty or `*` matches everything.
    pub query: String,
    /// First nanosecond (inclusive).
    pub start_ns: i64,
    /// Last nanosecond (inclusive).
    pub end_ns: i64,
    /// Hits per page (1 to [`MAX_LIMIT`]).
    pub limit: usize,
    /// Continue after this position.
    pub cursor: Option<Cursor>,
    /// Order of hits.
    pub order: SortOrder,
}

/// One hit.
#[derive(Clone, Debug)]
pub struct Hit {
    /// The record.
    pub record: LogRecord,
    /// Its sequence number.
    pub seq: u64,
}

/// A page of hits.
#[derive(Clone, Debug)]
pub struct SearchPage {
    /// The hits in order.
    pub hits: Vec<Hit>,
    /// Lines matching the query in the time range (all pages).
    pub total: u64,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<Cursor>,
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The query does not parse or names an unknown field.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// tantivy failed.
    #[error("search failed: {0}")]
    Index(#[from] tantivy::TantivyError),
}

/// Parses queries against the log schema.
pub struct LogQueryParser {
    parser: QueryParser,
    schema: LogSchema,
}

impl LogQueryParser {
    /// Returns a parser whose bare terms search the message and, exactly, trace_id, span_id
    /// and correlation_id; terms are ANDed by default, as log search tools do.
    pub fn new(schema: &LogSchema) -> Self {
        let mut parser = QueryParser::new(
            schema.schema.clone(),
            vec![
                schema.message,
                schema.trace_id,
                schema.span_id,
                schema.correlation_id,
            ],
            LogSchema::query_tokenizers(),
        );
        parser.set_conjunction_by_default();
        LogQueryParser {
            parser,
            schema: schema.clone(),
        }
    }

    /// Parses `text` and restricts it to `[start_ns, end_ns]`.
    ///
    /// # Errors
    /// [`SearchError::InvalidQuery`] saying where the query is wrong.
    pub fn parse(
        &self,
        text: &str,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<Box<dyn Query>, SearchError> {
        let trimmed = text.trim();
        let user_query: Box<dyn Query> = if trimmed.is_empty() || trimmed == "*" {
            Box::new(AllQuery)
        } else {
            let (_, lenient_errors) = tantivy::query_grammar::parse_query_lenient(trimmed);
            if let Some(first) = lenient_errors.first() {
                return Err(SearchError::InvalidQuery(format!(
                    "syntax error at character {}: {}",
                    first.pos + 1,
                    first.message
                )));
            }
            let explicit = explicit_conjunctions(trimmed);
            self.parser
                .parse_query(&explicit)
                .map_err(|error| SearchError::InvalidQuery(error.to_string()))?
        };
        let range = RangeQuery::new(
            Bound::Included(Term::from_field_i64(self.schema.timestamp, start_ns)),
            Bound::Included(Term::from_field_i64(self.schema.timestamp, end_ns)),
        );
        Ok(Box::new(BooleanQuery::new(vec![
            (Occur::Must, user_query),
            (Occur::Must, Box::new(range)),
        ])))
    }
}

/// Returns the query with an explicit `AND` wherever two clauses stand side by side.
///
/// tantivy's grammar reads `a AND b c` as `(a AND b) OR c` (the implicit operator after an
/// explicit one makes the left group optional), where a Lucene or Kibana user means all three.
/// Parenthesised groups are rewritten the same way; quotes, ranges and operators are kept.
pub fn explicit_conjunctions(query: &str) -> String {
    let units = split_units(query);
    let is_operator = |unit: &str| matches!(unit, "AND" | "OR" | "&&" | "||");
    let mut out = String::with_capacity(query.len() + 16);
    let mut previous: Option<&str> = None;
    for unit in &units {
        let rewritten = match unit
            .strip_prefix('(')
            .and_then(|rest| rest.strip_suffix(')'))
        {
            Some(inner) => format!("({})", explicit_conjunctions(inner)),
            None => unit.to_string(),
        };
        if let Some(previous) = previous {
            let needs_and = !is_operator(previous) && previous != "NOT" && !is_operator(unit);
            out.push(' ');
            if needs_and {
                out.push_str("AND ");
            }
        }
        out.push_str(&rewritten);
        previous = Some(unit);
    }
    out
}

/// Splits a query at whitespace outside quotes, parentheses, brackets and braces.
fn split_units(query: &str) -> Vec<&str> {
    let mut units = Vec::new();
    let mut depth = 0i32;
    let mut in_quotes = false;
    let mut escaped = false;
    let mut start: Option<usize> = None;
    for (index, character) in query.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match character {
            '\\' => escaped = true,
            '"' => in_quotes = !in_quotes,
            '(' | '[' | '{' if !in_quotes => depth += 1,
            ')' | ']' | '}' if !in_quotes => depth -= 1,
            _ => {}
        }
        if character.is_whitespace() && !in_quotes && depth <= 0 {
            if let Some(unit_start) = start.take() {
                if let Some(unit) = query.get(unit_start..index) {
                    units.push(unit);
                }
            }
        } else if start.is_none() {
            start = Some(index);
        }
    }
    if let Some(unit_start) = start {
        if let Some(unit) = query.get(unit_start..) {
            units.push(unit);
        }
    }
    units
}

/// Runs searches, histograms and field summaries over a store.
pub struct LogSearcher {
    store: Arc<LogStore>,
    parser: LogQueryParser,
}

impl LogSearcher {
    /// Returns a searcher over `store`.
    pub fn new(store: Arc<LogStore>) -> Self {
        let parser = LogQueryParser::new(store.schema());
        LogSearcher { store, parser }
    }

    /// Returns the store searched.
    pub fn store(&self) -> &Arc<LogStore> {
        &self.store
    }

    /// Runs a search. Blocking: call it from a blocking thread.
    ///
    /// # Errors
    /// [`SearchError`] for an invalid query or a failing index.
    pub fn search(&self, request: &SearchRequest) -> Result<SearchPage, SearchError> {
        let query = self
            .parser
            .parse(&request.query, request.start_ns, request.end_ns)?;
        let limit = request.limit.clamp(1, MAX_LIMIT);
        let mut partitions = self
            .store
            .partitions_between(request.start_ns, request.end_ns);
        if request.order == SortOrder::Descending {
            partitions.reverse();
        }
        let mut total = 0u64;
        // (order key, partition index, address): the key is larger for earlier hits.
        let mut candidates: Vec<(i128, usize, DocAddress)> = Vec::new();
        let wanted = limit + 1;
        // The searcher that found a hit also fetches it: a commit in between may reload the
        // reader with other segments, and a `DocAddress` names a segment of its searcher.
        let mut searchers: HashMap<usize, tantivy::Searcher> = HashMap::new();
        for (partition_index, partition) in partitions.iter().enumerate() {
            let searcher = partition.reader.searcher();
            // Partitions are disjoint in time: once a page is full, older (or newer) ones only
            // add to the total.
            if candidates.len() >= wanted {
                total += searcher.search(&query, &Count)? as u64;
                continue;
            }
            let cursor_key = request.cursor.map(|cursor| cursor.key());
            let order = request.order;
            let top = TopDocs::with_limit(wanted).tweak_score(move |segment: &SegmentReader| {
                let timestamps = segment
                    .fast_fields()
                    .i64("timestamp")
                    .ok()
                    .map(|column| column.first_or_default_col(0));
                let seqs = segment
                    .fast_fields()
                    .u64("seq")
                    .ok()
                    .map(|column| column.first_or_default_col(0));
                move |doc: DocId, _score: Score| -> i128 {
                    let (Some(timestamps), Some(seqs)) = (&timestamps, &seqs) else {
                        return i128::MIN;
                    };
                    let key = sort_key(timestamps.get_val(doc), seqs.get_val(doc));
                    match (order, cursor_key) {
                        (SortOrder::Descending, Some(cursor)) if key >= cursor => i128::MIN,
                        (SortOrder::Ascending, Some(cursor)) if key <= cursor => i128::MIN,
                        (SortOrder::Descending, _) => key,
                        (SortOrder::Ascending, _) => -key,
                    }
                }
            });
            let (count, top_docs) = searcher.search(&query, &(Count, top))?;
            total += count as u64;
            for (key, address) in top_docs {
                if key != i128::MIN {
                    candidates.push((key, partition_index, address));
                }
            }
            searchers.insert(partition_index, searcher);
        }
        candidates.sort_by_key(|candidate| std::cmp::Reverse(candidate.0));
        let has_more = candidates.len() > limit;
        candidates.truncate(limit);
        let mut hits = Vec::with_capacity(candidates.len());
        for (key, partition_index, address) in &candidates {
            let Some(searcher) = searchers.get(partition_index) else {
                continue;
            };
            let document: TantivyDocument = searcher.doc(*address)?;
            let record = stored_record(&document, self.store.schema());
            let natural_key = if request.order == SortOrder::Descending {
                *key
            } else {
                -*key
            };
            hits.push(Hit {
                record,
                seq: (natural_key & i128::from(u64::MAX)) as u64,
            });
        }
        let next_cursor = if has_more {
            hits.last().map(|hit| Cursor {
                timestamp_ns: hit.record.timestamp_ns,
                seq: hit.seq,
            })
        } else {
            None
        };
        Ok(SearchPage {
            hits,
            total,
            next_cursor,
        })
    }

    /// Returns up to `limit` searchable lines matching `query_text` written after sequence
    /// number `after_seq`, in write order: what a live tail shows next. Blocking.
    ///
    /// # Errors
    /// [`SearchError`] for an invalid query or a failing index.
    pub fn tail(
        &self,
        query_text: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Hit>, SearchError> {
        let query = self.parser.parse(query_text, i64::MIN, i64::MAX)?;
        let newer = RangeQuery::new(
            Bound::Excluded(Term::from_field_u64(self.store.schema().seq, after_seq)),
            Bound::Unbounded,
        );
        let query = BooleanQuery::new(vec![(Occur::Must, query), (Occur::Must, Box::new(newer))]);
        let limit = limit.clamp(1, MAX_LIMIT);
        let mut hits = Vec::new();
        for partition in self.store.partitions_between(i64::MIN, i64::MAX) {
            let searcher = partition.reader.searcher();
            // Oldest writes first: the smallest sequence numbers rank highest.
            let top = TopDocs::with_limit(limit).order_by_u64_field("seq", tantivy::Order::Asc);
            for (seq, address) in searcher.search(&query, &top)? {
                let document: TantivyDocument = searcher.doc(address)?;
                hits.push(Hit {
                    record: stored_record(&document, self.store.schema()),
                    seq: seq.unwrap_or(0),
                });
            }
        }
        hits.sort_by_key(|hit| hit.seq);
        hits.truncate(limit);
        Ok(hits)
    }

    /// Counts matching lines per `step_ns` bucket (aligned to multiples of the step) and
    /// level (`""` for lines without one). Blocking.
    ///
    /// # Errors
    /// [`SearchError`] for an invalid query or a failing index.
    pub fn histogram(
        &self,
        query_text: &str,
        start_ns: i64,
        end_ns: i64,
        step_ns: i64,
    ) -> Result<BTreeMap<i64, BTreeMap<String, u64>>, SearchError> {
        let query = self.parser.parse(query_text, start_ns, end_ns)?;
        let step_ns = step_ns.max(1);
        let mut buckets: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
        for partition in self.store.partitions_between(start_ns, end_ns) {
            let searcher = partition.reader.searcher();
            let counts = searcher.search(&query, &HistogramCollector { step_ns })?;
            for ((bucket, level), count) in counts {
                *buckets.entry(bucket).or_default().entry(level).or_insert(0) += count;
            }
        }
        Ok(buckets)
    }

    /// Returns the top values of service, level and host over every matching line, and the
    /// attribute keys of the newest `sample` matching lines with their counts. Blocking.
    ///
    /// # Errors
    /// [`SearchError`] for an invalid query or a failing index.
    pub fn fields(
        &self,
        query_text: &str,
        start_ns: i64,
        end_ns: i64,
        sample: usize,
    ) -> Result<FieldSummary, SearchError> {
        let query = self.parser.parse(query_text, start_ns, end_ns)?;
        let mut summary = FieldSummary::default();
        for partition in self.store.partitions_between(start_ns, end_ns) {
            let searcher = partition.reader.searcher();
            let counts = searcher.search(&query, &KeywordCollector)?;
            for (field, values) in counts {
                let target = summary.keywords.entry(field).or_default();
                for (value, count) in values {
                    *target.entry(value).or_insert(0) += count;
                }
            }
        }
        let page = self.search(&SearchRequest {
            query: query_text.to_string(),
            start_ns,
            end_ns,
            limit: sample.clamp(1, MAX_LIMIT),
            cursor: None,
            order: SortOrder::Descending,
        })?;
        summary.sampled = page.hits.len();
        for hit in &page.hits {
            for key in hit.record.attributes.keys() {
                *summary.attribute_keys.entry(key.clone()).or_insert(0) += 1;
            }
        }
        Ok(summary)
    }
}

/// What [`LogSearcher::fields`] found.
#[derive(Clone, Debug, Default)]
pub struct FieldSummary {
    /// Value counts of `service`, `level` and `host`.
    pub keywords: BTreeMap<&'static str, BTreeMap<String, u64>>,
    /// Attribute keys and in how many sampled lines each occurs.
    pub attribute_keys: BTreeMap<String, u64>,
    /// How many lines were sampled for attribute keys.
    pub sampled: usize,
}

/// Returns the record stored in a document.
pub fn stored_record(document: &TantivyDocument, schema: &LogSchema) -> LogRecord {
    document
        .get_first(schema.record)
        .and_then(|value| value.as_str())
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

fn str_column(segment: &SegmentReader, field: &str) -> Option<StrColumn> {
    segment.fast_fields().str(field).ok().flatten()
}

fn ord_text(column: &StrColumn, ord: u64) -> String {
    let mut text = String::new();
    if column.ord_to_str(ord, &mut text).is_err() {
        text.clear();
    }
    text
}

struct HistogramCollector {
    step_ns: i64,
}

struct HistogramSegment {
    step_ns: i64,
    timestamps: Option<Arc<dyn tantivy::columnar::ColumnValues<i64>>>,
    levels: Option<StrColumn>,
    counts: HashMap<(i64, Option<u64>), u64>,
}

type HistogramFruit = HashMap<(i64, String), u64>;

impl Collector for HistogramCollector {
    type Fruit = HistogramFruit;
    type Child = HistogramSegment;

    fn for_segment(
        &self,
        _ordinal: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<HistogramSegment> {
        Ok(HistogramSegment {
            step_ns: self.step_ns,
            timestamps: segment
                .fast_fields()
                .i64("timestamp")
                .ok()
                .map(|column| column.first_or_default_col(0)),
            levels: str_column(segment, "level"),
            counts: HashMap::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<HistogramFruit>) -> tantivy::Result<HistogramFruit> {
        let mut merged = HashMap::new();
        for fruit in fruits {
            for (key, count) in fruit {
                *merged.entry(key).or_insert(0) += count;
            }
        }
        Ok(merged)
    }
}

impl SegmentCollector for HistogramSegment {
    type Fruit = HistogramFruit;

    fn collect(&mut self, doc: DocId, _score: Score) {
        let Some(timestamps) = &self.timestamps else {
            return;
        };
        let timestamp = timestamps.get_val(doc);
        let bucket = timestamp.div_euclid(self.step_ns) * self.step_ns;
        let level_ord = self
            .levels
            .as_ref()
            .and_then(|levels| levels.term_ords(doc).next());
        *self.counts.entry((bucket, level_ord)).or_insert(0) += 1;
    }

    fn harvest(self) -> HistogramFruit {
        let mut fruit = HashMap::new();
        for ((bucket, level_ord), count) in self.counts {
            let level = match (&self.levels, level_ord) {
                (Some(levels), Some(ord)) => ord_text(levels, ord),
                _ => String::new(),
            };
            *fruit.entry((bucket, level)).or_insert(0) += count;
        }
        fruit
    }
}

const KEYWORD_FIELDS: [&str; 3] = ["service", "level", "host"];

struct KeywordCollector;

struct KeywordSegment {
    columns: Vec<(&'static str, Option<StrColumn>, HashMap<u64, u64>)>,
}

type KeywordFruit = BTreeMap<&'static str, HashMap<String, u64>>;

impl Collector for KeywordCollector {
    type Fruit = KeywordFruit;
    type Child = KeywordSegment;

    fn for_segment(
        &self,
        _ordinal: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<KeywordSegment> {
        Ok(KeywordSegment {
            columns: KEYWORD_FIELDS
                .iter()
                .map(|field| (*field, str_column(segment, field), HashMap::new()))
                .collect(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<KeywordFruit>) -> tantivy::Result<KeywordFruit> {
        let mut merged: KeywordFruit = BTreeMap::new();
        for fruit in fruits {
            for (field, values) in fruit {
                let target = merged.entry(field).or_default();
                for (value, count) in values {
                    *target.entry(value).or_insert(0) += count;
                }
            }
        }
        Ok(merged)
    }
}

impl SegmentCollector for KeywordSegment {
    type Fruit = KeywordFruit;

    fn collect(&mut self, doc: DocId, _score: Score) {
        for (_, column, counts) in &mut self.columns {
            if let Some(column) = column {
                if let Some(ord) = column.term_ords(doc).next() {
                    *counts.entry(ord).or_insert(0) += 1;
                }
            }
        }
    }

    fn harvest(self) -> KeywordFruit {
        let mut fruit: KeywordFruit = BTreeMap::new();
        for (field, column, counts) in self.columns {
            let values = fruit.entry(field).or_default();
            if let Some(column) = column {
                for (ord, count) in counts {
                    *values.entry(ord_text(&column, ord)).or_insert(0) += count;
                }
            }
        }
        fruit
    }
}
