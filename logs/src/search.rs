//! Log search over the partitions of a [`LogStore`]: Lucene-like queries (tantivy's query
//! parser), a time range, newest or oldest first, cursors stable while ingest goes on, a
//! histogram split by level, and top field values.
//!
//! Hits are ordered by `(timestamp, seq)`; a cursor is the key of the last hit of a page, so
//! the next page starts strictly after it whatever was written meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::Mutex;
use tantivy::collector::{Collector, SegmentCollector, TopDocs};
use tantivy::columnar::{ColumnValues, StrColumn};
use tantivy::index::SegmentId;
use tantivy::query::{
    AllQuery, BooleanQuery, EnableScoring, Occur, Query, QueryParser, RangeQuery, Scorer, Weight,
};
use tantivy::schema::Value as _;
use tantivy::{
    DocAddress, DocId, DocSet, Score, SegmentOrdinal, SegmentReader, TantivyDocument, Term,
    TERMINATED,
};
use vigil_model::LogRecord;

use crate::schema::LogSchema;
use crate::store::LogStore;

/// The most hits one page may ask for.
pub const MAX_LIMIT: usize = 10_000;

/// Matches a search counts before it stops and reports `total` as a lower bound
/// (Elasticsearch's `track_total_hits` default).
pub const DEFAULT_TOTAL_HITS_THRESHOLD: u64 = 10_000;

/// Documents per block: a search visits a segment's blocks by the time span each covers.
pub const BLOCK_DOCS: u32 = 4_096;

/// A segment is read in one pass when the query's estimated cost in it (documents stepped
/// through) is at most this many per block in the window (a few hundred cost about as much as
/// opening a scorer).
const FULL_PASS_MATCHES_PER_BLOCK: u64 = 256;

/// The first and last timestamp of each block of a segment.
type TimeBlocks = Arc<Vec<(i64, i64)>>;

/// Segments whose block time spans are cached at most (stale ones are dropped by clearing).
const MAX_CACHED_SEGMENTS: usize = 4_096;

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

/// Whether `total` is every match or a lower bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TotalRelation {
    /// `total` is the number of matches (`"eq"`).
    Equal,
    /// There are at least `total` matches; counting stopped there (`"gte"`).
    GreaterOrEqual,
}

impl TotalRelation {
    /// Returns the API's name of the relation: `eq` or `gte`.
    pub fn as_str(self) -> &'static str {
        match self {
            TotalRelation::Equal => "eq",
            TotalRelation::GreaterOrEqual => "gte",
        }
    }
}

/// A page of hits.
#[derive(Clone, Debug)]
pub struct SearchPage {
    /// The hits in order.
    pub hits: Vec<Hit>,
    /// Lines matching the query in the time range (all pages), exact or a lower bound.
    pub total: u64,
    /// Whether `total` is exact.
    pub total_relation: TotalRelation,
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

    /// Parses `text` without a time range.
    ///
    /// # Errors
    /// [`SearchError::InvalidQuery`] saying where the query is wrong.
    pub fn parse_user_query(&self, text: &str) -> Result<Box<dyn Query>, SearchError> {
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed == "*" {
            return Ok(Box::new(AllQuery));
        }
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
            .map_err(|error| SearchError::InvalidQuery(error.to_string()))
    }

    /// Parses `text` and restricts it to `[start_ns, end_ns]` (a fast-field range: segments
    /// wholly outside match nothing, segments wholly inside match without a check).
    ///
    /// # Errors
    /// [`SearchError::InvalidQuery`] saying where the query is wrong.
    pub fn parse(
        &self,
        text: &str,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<Box<dyn Query>, SearchError> {
        let user_query = self.parse_user_query(text)?;
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
    /// First and last timestamp of each block, per segment.
    time_blocks: Mutex<HashMap<SegmentId, TimeBlocks>>,
}

impl LogSearcher {
    /// Returns a searcher over `store`.
    pub fn new(store: Arc<LogStore>) -> Self {
        let parser = LogQueryParser::new(store.schema());
        LogSearcher {
            store,
            parser,
            time_blocks: Mutex::new(HashMap::new()),
        }
    }

    /// Returns the store searched.
    pub fn store(&self) -> &Arc<LogStore> {
        &self.store
    }

    /// Runs a search, counting matches up to [`DEFAULT_TOTAL_HITS_THRESHOLD`]. Blocking: call
    /// it from a blocking thread.
    ///
    /// # Errors
    /// [`SearchError`] for an invalid query or a failing index.
    pub fn search(&self, request: &SearchRequest) -> Result<SearchPage, SearchError> {
        self.search_counting(request, DEFAULT_TOTAL_HITS_THRESHOLD)
    }

    /// Runs a search that counts matches until `total_threshold` (`u64::MAX`: all of them).
    /// Blocking.
    ///
    /// Blocks of [`BLOCK_DOCS`] documents are visited best first (newest first for
    /// [`SortOrder::Descending`]) by the time span each covers, and the walk stops once the page
    /// is full, no unvisited block can hold a better hit, and `total_threshold` matches were
    /// counted; `total` is then that threshold and [`TotalRelation::GreaterOrEqual`]. A segment
    /// where the query matches few documents for the blocks in the window is read in one pass.
    ///
    /// # Errors
    /// [`SearchError`] for an invalid query or a failing index.
    pub fn search_counting(
        &self,
        request: &SearchRequest,
        total_threshold: u64,
    ) -> Result<SearchPage, SearchError> {
        let query = self.parser.parse_user_query(&request.query)?;
        let limit = request.limit.clamp(1, MAX_LIMIT);
        let window = TimeWindow {
            start_ns: request.start_ns,
            end_ns: request.end_ns,
        };
        let order = request.order;
        let cursor = request
            .cursor
            .map(|cursor| order_key(order, cursor.timestamp_ns, cursor.seq));
        let mut run = SearchRun {
            window,
            order,
            cursor,
            top: TopKeys::new(limit + 1),
            counted: 0,
        };
        let mut partitions: Vec<PartitionSearch> = Vec::new();
        let mut segments: Vec<SegmentSearch> = Vec::new();
        let mut blocks: Vec<BlockRef> = Vec::new();
        let mut scorers = OpenScorers::new();
        for partition in self
            .store
            .partitions_between(request.start_ns, request.end_ns)
        {
            // The searcher that found a hit also fetches it: a commit in between may reload
            // the reader with other segments, and a `DocAddress` names a segment of its searcher.
            let searcher = partition.reader.searcher();
            let weight = query.weight(EnableScoring::disabled_from_searcher(&searcher))?;
            let partition_index = partitions.len();
            for (segment_ord, segment) in searcher.segment_readers().iter().enumerate() {
                let time_blocks = self.time_blocks(segment)?;
                let candidates: Vec<u32> = (0..time_blocks.len())
                    .filter(|block| window.overlaps(time_blocks[*block]))
                    .map(|block| block as u32)
                    .collect();
                if candidates.is_empty() {
                    continue;
                }
                let mut scorer = weight.scorer(segment, 1.0)?;
                // Most segments hold no match of a selective query (a request ID): they cost
                // only the scorer's term lookups, not the opening of their fast fields.
                if scorer.doc() == TERMINATED {
                    continue;
                }
                let segment_search = SegmentSearch {
                    partition_index,
                    segment_ord: segment_ord as u32,
                    timestamps: fast_i64(segment, "timestamp")?,
                    seqs: fast_u64(segment, "seq")?,
                    time_blocks,
                };
                // tantivy's cost (documents the scorer steps through) rather than its match
                // estimate, which assumes terms independent and so shrinks a common phrase.
                let few_matches =
                    scorer.cost() <= candidates.len() as u64 * FULL_PASS_MATCHES_PER_BLOCK;
                if few_matches {
                    run.read(
                        &mut *scorer,
                        segment,
                        &segment_search,
                        segments.len(),
                        0..segment.max_doc(),
                        true,
                    );
                } else {
                    scorers.insert(segments.len(), (scorer, 0));
                    for block in candidates {
                        let range = segment_search.time_blocks[block as usize];
                        blocks.push(BlockRef {
                            segment: segments.len(),
                            block,
                            best: run.best_key(range),
                            worst: run.worst_key(range),
                        });
                    }
                }
                segments.push(segment_search);
            }
            partitions.push(PartitionSearch { searcher, weight });
        }
        // Best blocks first; stop collecting once no block left can improve the page.
        blocks.sort_by_key(|block| std::cmp::Reverse(block.best));
        let mut only_counted: Vec<BlockRef> = Vec::new();
        for (position, block) in blocks.iter().enumerate() {
            if run.top.cannot_improve(block.best) {
                only_counted.extend_from_slice(&blocks[position..]);
                break;
            }
            // Every line of the block is at or before the cursor: it only counts.
            if cursor.is_some_and(|cursor| block.worst >= cursor) {
                only_counted.push(*block);
                continue;
            }
            read_block(&mut run, &mut scorers, &segments, &partitions, block, true)?;
        }
        // Count the rest up to the threshold, in document order (one scorer per segment).
        let mut exact = true;
        if !only_counted.is_empty() {
            only_counted.sort_by_key(|block| (block.segment, block.block));
            let mut scorers = OpenScorers::new();
            for block in &only_counted {
                if run.counted >= total_threshold {
                    exact = false;
                    break;
                }
                read_block(&mut run, &mut scorers, &segments, &partitions, block, false)?;
            }
        }
        let (total, total_relation) = if exact {
            (run.counted, TotalRelation::Equal)
        } else {
            (total_threshold, TotalRelation::GreaterOrEqual)
        };
        let mut candidates = run.top.into_sorted();
        let has_more = candidates.len() > limit;
        candidates.truncate(limit);
        let mut hits = Vec::with_capacity(candidates.len());
        for (key, segment_index, doc) in candidates {
            let segment_search = &segments[segment_index];
            let searcher = &partitions[segment_search.partition_index].searcher;
            let document: TantivyDocument =
                searcher.doc(DocAddress::new(segment_search.segment_ord, doc))?;
            let natural_key = match order {
                SortOrder::Descending => key,
                SortOrder::Ascending => -key,
            };
            hits.push(Hit {
                record: stored_record(&document, self.store.schema()),
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
            total_relation,
            next_cursor,
        })
    }

    /// Returns the first and last timestamp of each block of a segment, computed once per
    /// segment (segments never change; merged ones get new IDs).
    fn time_blocks(&self, segment: &SegmentReader) -> Result<TimeBlocks, SearchError> {
        let id = segment.segment_id();
        if let Some(blocks) = self.time_blocks.lock().get(&id) {
            return Ok(blocks.clone());
        }
        let timestamps = fast_i64(segment, "timestamp")?;
        let max_doc = segment.max_doc();
        let mut blocks = Vec::with_capacity(max_doc.div_ceil(BLOCK_DOCS) as usize);
        let mut buffer = vec![0i64; BLOCK_DOCS as usize];
        let mut start = 0u32;
        while start < max_doc {
            let length = (max_doc - start).min(BLOCK_DOCS) as usize;
            let values = &mut buffer[..length];
            timestamps.get_range(u64::from(start), values);
            let first = values.iter().copied().min().unwrap_or(i64::MIN);
            let last = values.iter().copied().max().unwrap_or(i64::MAX);
            blocks.push((first, last));
            start += BLOCK_DOCS;
        }
        let blocks = Arc::new(blocks);
        let mut cache = self.time_blocks.lock();
        // Segments merged away leave stale entries; drop them all now and then.
        if cache.len() >= MAX_CACHED_SEGMENTS {
            cache.clear();
        }
        cache.insert(id, blocks.clone());
        Ok(blocks)
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

/// The inclusive time range of a search.
#[derive(Clone, Copy, Debug)]
struct TimeWindow {
    start_ns: i64,
    end_ns: i64,
}

impl TimeWindow {
    fn overlaps(&self, (first, last): (i64, i64)) -> bool {
        first <= self.end_ns && last >= self.start_ns
    }

    fn covers(&self, (first, last): (i64, i64)) -> bool {
        first >= self.start_ns && last <= self.end_ns
    }

    fn contains(&self, timestamp_ns: i64) -> bool {
        (self.start_ns..=self.end_ns).contains(&timestamp_ns)
    }
}

/// Returns the key by which hits of `order` rank: larger is earlier in the page.
fn order_key(order: SortOrder, timestamp_ns: i64, seq: u64) -> i128 {
    match order {
        SortOrder::Descending => sort_key(timestamp_ns, seq),
        SortOrder::Ascending => -sort_key(timestamp_ns, seq),
    }
}

/// Returns the documents of block `block` of a segment of `max_doc` documents.
/// Reads the matches of one block into `run`: collected for the page when `collect`, else
/// only counted.
fn read_block(
    run: &mut SearchRun,
    scorers: &mut OpenScorers,
    segments: &[SegmentSearch],
    partitions: &[PartitionSearch],
    block: &BlockRef,
    collect: bool,
) -> tantivy::Result<()> {
    let segment_search = &segments[block.segment];
    let partition = &partitions[segment_search.partition_index];
    let segment = partition
        .searcher
        .segment_reader(segment_search.segment_ord);
    let range = block_docs(block.block, segment.max_doc());
    let scorer = scorer_for(scorers, block.segment, &range, || {
        partition.weight.scorer(segment, 1.0)
    })?;
    run.read(
        scorer,
        segment,
        segment_search,
        block.segment,
        range,
        collect,
    );
    Ok(())
}

fn block_docs(block: u32, max_doc: DocId) -> std::ops::Range<DocId> {
    let start = block * BLOCK_DOCS;
    start..(start + BLOCK_DOCS).min(max_doc)
}

fn fast_i64(segment: &SegmentReader, field: &str) -> tantivy::Result<Arc<dyn ColumnValues<i64>>> {
    Ok(segment.fast_fields().i64(field)?.first_or_default_col(0))
}

fn fast_u64(segment: &SegmentReader, field: &str) -> tantivy::Result<Arc<dyn ColumnValues<u64>>> {
    Ok(segment.fast_fields().u64(field)?.first_or_default_col(0))
}

/// Open scorers by segment, each with the document up to which it has been read.
type OpenScorers = HashMap<usize, (Box<dyn Scorer>, DocId)>;

/// Returns a scorer of the segment that has not read past `docs.start`, reusing the open one
/// when it has read only up to there, and marks it as reading up to `docs.end`.
fn scorer_for<'a>(
    scorers: &'a mut OpenScorers,
    segment: usize,
    docs: &std::ops::Range<DocId>,
    open: impl FnOnce() -> tantivy::Result<Box<dyn Scorer>>,
) -> tantivy::Result<&'a mut dyn Scorer> {
    let reusable = scorers
        .get(&segment)
        .is_some_and(|(_, read_up_to)| *read_up_to <= docs.start);
    if !reusable {
        scorers.insert(segment, (open()?, 0));
    }
    match scorers.get_mut(&segment) {
        Some((scorer, read_up_to)) => {
            *read_up_to = docs.end;
            Ok(&mut **scorer)
        }
        None => Err(tantivy::TantivyError::InternalError(
            "scorer missing".to_string(),
        )),
    }
}

/// A partition's searcher and the query's weight for it.
struct PartitionSearch {
    searcher: tantivy::Searcher,
    weight: Box<dyn Weight>,
}

/// A segment taking part in a search.
struct SegmentSearch {
    partition_index: usize,
    segment_ord: SegmentOrdinal,
    timestamps: Arc<dyn ColumnValues<i64>>,
    seqs: Arc<dyn ColumnValues<u64>>,
    time_blocks: TimeBlocks,
}

/// A block waiting to be read.
#[derive(Clone, Copy, Debug)]
struct BlockRef {
    /// Index into the search's segments.
    segment: usize,
    block: u32,
    /// The best order key a line of the block can have.
    best: i128,
    /// The worst order key a line of the block can have.
    worst: i128,
}

/// The best `capacity` hits so far: a min-heap on the order key.
struct TopKeys {
    capacity: usize,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(i128, usize, DocId)>>,
}

impl TopKeys {
    fn new(capacity: usize) -> Self {
        TopKeys {
            capacity,
            heap: std::collections::BinaryHeap::with_capacity(capacity + 1),
        }
    }

    /// True when the page is full and a line with order key `best` would not enter it.
    fn cannot_improve(&self, best: i128) -> bool {
        self.heap.len() >= self.capacity
            && self
                .heap
                .peek()
                .is_some_and(|std::cmp::Reverse(worst)| best <= worst.0)
    }

    fn offer(&mut self, key: i128, segment: usize, doc: DocId) {
        if self.cannot_improve(key) {
            return;
        }
        self.heap.push(std::cmp::Reverse((key, segment, doc)));
        if self.heap.len() > self.capacity {
            self.heap.pop();
        }
    }

    /// Returns the hits best first.
    fn into_sorted(self) -> Vec<(i128, usize, DocId)> {
        let mut hits: Vec<(i128, usize, DocId)> = self
            .heap
            .into_iter()
            .map(|std::cmp::Reverse(hit)| hit)
            .collect();
        hits.sort_by_key(|hit| std::cmp::Reverse(hit.0));
        hits
    }
}

/// The state of one search: the window, the page being filled and the matches counted.
struct SearchRun {
    window: TimeWindow,
    order: SortOrder,
    cursor: Option<i128>,
    top: TopKeys,
    counted: u64,
}

impl SearchRun {
    fn best_key(&self, (first, last): (i64, i64)) -> i128 {
        match self.order {
            SortOrder::Descending => order_key(self.order, last, u64::MAX),
            SortOrder::Ascending => order_key(self.order, first, 0),
        }
    }

    fn worst_key(&self, (first, last): (i64, i64)) -> i128 {
        match self.order {
            SortOrder::Descending => order_key(self.order, first, 0),
            SortOrder::Ascending => order_key(self.order, last, u64::MAX),
        }
    }

    /// Reads the matches of `scorer` in `docs` (the scorer is at or before its start):
    /// counts those in the window and, when `collect`, offers them to the page.
    fn read(
        &mut self,
        scorer: &mut dyn Scorer,
        segment: &SegmentReader,
        search: &SegmentSearch,
        segment_index: usize,
        docs: std::ops::Range<DocId>,
        collect: bool,
    ) {
        let mut doc = scorer.doc();
        if doc < docs.start {
            doc = scorer.seek(docs.start);
        }
        let alive = segment.alive_bitset();
        let mut block = u32::MAX;
        let mut block_inside = false;
        while doc < docs.end {
            if alive.is_none_or(|alive| alive.is_alive(doc)) {
                if doc / BLOCK_DOCS != block {
                    block = doc / BLOCK_DOCS;
                    block_inside = search
                        .time_blocks
                        .get(block as usize)
                        .is_some_and(|range| self.window.covers(*range));
                }
                if block_inside || self.window.contains(search.timestamps.get_val(doc)) {
                    self.counted += 1;
                    if collect {
                        let timestamp_ns = search.timestamps.get_val(doc);
                        let key = order_key(self.order, timestamp_ns, search.seqs.get_val(doc));
                        if self.cursor.is_none_or(|cursor| key < cursor) {
                            self.top.offer(key, segment_index, doc);
                        }
                    }
                }
            }
            doc = scorer.advance();
        }
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
