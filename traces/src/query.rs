//! Queries over the span store: a trace by ID, trace search, services and operations, the
//! service dependency graph, and the traces carrying a correlation ID. All blocking: call them
//! from a blocking thread.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rusqlite::params;
use serde_json::Value;
use vigil_model::{parse_hex_id, Span, StatusCode};

use crate::codec::{decode_span_index, IndexedSpan};
use crate::store::{read_chunk, read_trace, service_blocks, Partition, SpanStore, StoreError};

/// Spans the dependency graph reads at most per request; past it the graph covers the newest
/// part of the window and says so.
pub const MAX_DEPENDENCY_SPANS: usize = 2_000_000;
/// Index entries (spans) a search examines at most before it answers with what it found.
pub const MAX_SEARCH_ROWS: usize = 1_000_000;
/// Traces a correlation ID resolves to at most.
pub const MAX_CORRELATED_TRACES: usize = 100;

/// A trace search, as `GET /api/v1/traces` takes it.
#[derive(Clone, Debug, Default)]
pub struct TraceQuery {
    /// The service of a matching span.
    pub service: Option<String>,
    /// The name of a matching span.
    pub operation: Option<String>,
    /// Attributes (span or resource) a matching span carries, compared as text; `error=true`
    /// matches spans with status error.
    pub tags: Vec<(String, String)>,
    /// Shortest duration of a matching span, ns.
    pub min_duration_ns: Option<i64>,
    /// Longest duration of a matching span, ns.
    pub max_duration_ns: Option<i64>,
    /// Earliest start of a matching span, ns.
    pub start_ns: i64,
    /// Latest start of a matching span, ns.
    pub end_ns: i64,
    /// Traces returned at most.
    pub limit: usize,
}

/// One trace in search results.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSummary {
    /// The trace.
    pub trace_id: [u8; 16],
    /// Service of the root span (the earliest span without a parent in the trace).
    pub root_service: String,
    /// Name of the root span.
    pub root_name: String,
    /// Earliest span start, ns.
    pub start_ns: i64,
    /// From the earliest start to the latest end, ns.
    pub duration_ns: i64,
    /// Spans stored for the trace.
    pub span_count: usize,
    /// Services taking part, sorted.
    pub services: Vec<String>,
    /// Spans with status error.
    pub error_count: usize,
}

/// An operation of a service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Operation {
    /// The span name.
    pub name: String,
    /// The span kind first seen with it (`server`, `client`…).
    pub kind: String,
}

/// An edge of the service graph: `parent` called `child`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DependencyEdge {
    /// The calling service.
    pub parent: String,
    /// The called service.
    pub child: String,
    /// Child spans whose parent span belongs to `parent`.
    pub call_count: u64,
    /// Of those, spans with status error.
    pub error_count: u64,
}

/// The service graph over a window.
#[derive(Clone, Debug, Default)]
pub struct Dependencies {
    /// Edges, sorted by parent then child.
    pub edges: Vec<DependencyEdge>,
    /// Whether [`MAX_DEPENDENCY_SPANS`] cut the window short.
    pub truncated: bool,
}

/// What carries a correlation ID.
#[derive(Clone, Debug, Default)]
pub struct Correlation {
    /// Traces with a span carrying the ID (or the trace the ID names), newest first.
    pub trace_ids: Vec<[u8; 16]>,
    /// Every span of those traces, by start time.
    pub spans: Vec<Span>,
}

fn attribute_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Whether `span` carries `key` = `value` (span attributes, then resource attributes).
fn span_has_tag(span: &Span, key: &str, value: &str) -> bool {
    if key == "error" {
        let is_error = span.status == StatusCode::Error;
        if value.eq_ignore_ascii_case("true") && is_error {
            return true;
        }
        if value.eq_ignore_ascii_case("false") && !is_error {
            return true;
        }
    }
    if (key == "status" || key == "status.code" || key == "otel.status_code")
        && span.status.as_str().eq_ignore_ascii_case(value)
    {
        return true;
    }
    if key == "span.kind" && span.kind.as_str().eq_ignore_ascii_case(value) {
        return true;
    }
    [&span.attributes, &span.resource].iter().any(|attributes| {
        attributes
            .get(key)
            .is_some_and(|found| attribute_text(found) == value)
    })
}

impl TraceQuery {
    fn matches(&self, span: &Span) -> bool {
        if self
            .service
            .as_ref()
            .is_some_and(|service| *service != span.service)
        {
            return false;
        }
        if self
            .operation
            .as_ref()
            .is_some_and(|operation| *operation != span.name)
        {
            return false;
        }
        if self
            .min_duration_ns
            .is_some_and(|min| span.duration_ns < min)
        {
            return false;
        }
        if self
            .max_duration_ns
            .is_some_and(|max| span.duration_ns > max)
        {
            return false;
        }
        if span.start_unix_nano < self.start_ns || span.start_unix_nano > self.end_ns {
            return false;
        }
        self.tags
            .iter()
            .all(|(key, value)| span_has_tag(span, key, value))
    }
}

/// Summarises a trace's spans (`spans` not empty).
pub fn summarize(trace_id: [u8; 16], spans: &[Span]) -> TraceSummary {
    let span_ids: HashSet<[u8; 8]> = spans.iter().map(|span| span.span_id).collect();
    let root = spans
        .iter()
        .filter(|span| {
            span.parent_span_id
                .is_none_or(|parent| !span_ids.contains(&parent))
        })
        .min_by_key(|span| span.start_unix_nano)
        .or_else(|| spans.iter().min_by_key(|span| span.start_unix_nano));
    let start_ns = spans
        .iter()
        .map(|span| span.start_unix_nano)
        .min()
        .unwrap_or(0);
    let end_ns = spans
        .iter()
        .map(|span| span.start_unix_nano.saturating_add(span.duration_ns))
        .max()
        .unwrap_or(start_ns);
    let services: BTreeSet<&str> = spans.iter().map(|span| span.service.as_str()).collect();
    TraceSummary {
        trace_id,
        root_service: root.map(|span| span.service.clone()).unwrap_or_default(),
        root_name: root.map(|span| span.name.clone()).unwrap_or_default(),
        start_ns,
        duration_ns: end_ns.saturating_sub(start_ns),
        span_count: spans.len(),
        services: services.into_iter().map(str::to_string).collect(),
        error_count: spans
            .iter()
            .filter(|span| span.status == StatusCode::Error)
            .count(),
    }
}

impl SpanStore {
    /// Returns every span of a trace by start time (a span written twice, as a retried export
    /// does, once); empty when the trace is unknown.
    ///
    /// # Errors
    /// [`StoreError`] when a partition cannot be read.
    pub fn trace(&self, trace_id: &[u8; 16]) -> Result<Vec<Span>, StoreError> {
        let mut spans = Vec::new();
        for partition in self.partitions_newest_first() {
            let recent_chunks = partition.recent_chunks(trace_id);
            partition.read(|connection| {
                spans.extend(read_trace(
                    &partition,
                    connection,
                    trace_id,
                    &recent_chunks,
                )?);
                Ok(())
            })?;
        }
        let mut seen = HashSet::new();
        spans.retain(|span| seen.insert(span.span_id));
        spans.sort_by_key(|span| (span.start_unix_nano, span.span_id));
        Ok(spans)
    }

    /// Returns the names of all services, sorted.
    ///
    /// # Errors
    /// [`StoreError`] when a partition cannot be read.
    pub fn services(&self) -> Result<Vec<String>, StoreError> {
        let mut names = BTreeSet::new();
        for partition in self.partitions_newest_first() {
            partition.read(|connection| {
                let mut statement = connection.prepare_cached("SELECT name FROM services")?;
                let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
                for row in rows {
                    names.insert(row?);
                }
                Ok(())
            })?;
        }
        Ok(names.into_iter().collect())
    }

    /// Returns the operations of a service, sorted by name.
    ///
    /// # Errors
    /// [`StoreError`] when a partition cannot be read.
    pub fn operations(&self, service: &str) -> Result<Vec<Operation>, StoreError> {
        let mut operations: BTreeMap<String, String> = BTreeMap::new();
        for partition in self.partitions_newest_first() {
            partition.read(|connection| {
                let mut statement = connection.prepare_cached(
                    "SELECT operations.name, operations.kind FROM operations \
                     JOIN services ON services.id = operations.service_id WHERE services.name = ?1",
                )?;
                let rows = statement.query_map([service], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })?;
                for row in rows {
                    let (name, kind) = row?;
                    operations.entry(name).or_insert(kind);
                }
                Ok(())
            })?;
        }
        Ok(operations
            .into_iter()
            .map(|(name, kind)| Operation { name, kind })
            .collect())
    }

    /// Returns the traces with a span carrying the correlation value, newest partition first.
    ///
    /// # Errors
    /// [`StoreError`] when a partition cannot be read.
    pub fn traces_with_correlation(
        &self,
        value: &str,
        limit: usize,
    ) -> Result<Vec<[u8; 16]>, StoreError> {
        let mut found = Vec::new();
        for partition in self.partitions_newest_first() {
            if found.len() >= limit {
                break;
            }
            for trace_id in partition.recent_traces_with_value(value) {
                if !found.contains(&trace_id) {
                    found.push(trace_id);
                }
            }
            partition.read(|connection| {
                let mut statement = connection
                    .prepare_cached("SELECT trace_id FROM correlation WHERE value = ?1 LIMIT ?2")?;
                let rows = statement
                    .query_map(params![value, limit as i64], |row| row.get::<_, Vec<u8>>(0))?;
                for row in rows {
                    if let Ok(trace_id) = <[u8; 16]>::try_from(row?.as_slice()) {
                        if !found.contains(&trace_id) {
                            found.push(trace_id);
                        }
                    }
                }
                Ok(())
            })?;
        }
        found.truncate(limit);
        Ok(found)
    }

    /// Returns the traces for a trace ID or correlation ID, with all their spans.
    ///
    /// # Errors
    /// [`StoreError`] when a partition cannot be read.
    pub fn correlate(&self, id: &str) -> Result<Correlation, StoreError> {
        let mut correlation = Correlation::default();
        if let Some(trace_id) = parse_hex_id::<16>(id) {
            let spans = self.trace(&trace_id)?;
            if !spans.is_empty() {
                correlation.trace_ids.push(trace_id);
                correlation.spans.extend(spans);
            }
        }
        for trace_id in self.traces_with_correlation(id, MAX_CORRELATED_TRACES)? {
            if correlation.trace_ids.contains(&trace_id) {
                continue;
            }
            correlation.spans.extend(self.trace(&trace_id)?);
            correlation.trace_ids.push(trace_id);
        }
        correlation
            .spans
            .sort_by_key(|span| (span.start_unix_nano, span.span_id));
        Ok(correlation)
    }

    /// Finds traces with a span matching every condition of `query`, newest matching span
    /// first, and summarises them.
    ///
    /// # Errors
    /// [`StoreError`] when a partition cannot be read.
    pub fn search(&self, query: &TraceQuery) -> Result<Vec<TraceSummary>, StoreError> {
        let mut summaries = Vec::new();
        for trace_id in self.find_trace_ids(query)? {
            let spans = self.trace(&trace_id)?;
            if !spans.is_empty() {
                summaries.push(summarize(trace_id, &spans));
            }
        }
        Ok(summaries)
    }

    /// Finds the IDs of traces with a span matching `query`, newest matching span first.
    ///
    /// # Errors
    /// [`StoreError`] when a partition cannot be read.
    pub fn find_trace_ids(&self, query: &TraceQuery) -> Result<Vec<[u8; 16]>, StoreError> {
        let limit = query.limit.max(1);
        // A tag naming a correlation attribute goes through the correlation index.
        let correlation_tag = query.tags.iter().find(|(key, _)| {
            self.options()
                .correlation_attributes
                .iter()
                .any(|attribute| attribute == key)
        });
        let mut hits: Vec<(i64, [u8; 16])> = Vec::new();
        if let Some((_, value)) = correlation_tag {
            for trace_id in self.traces_with_correlation(value, MAX_CORRELATED_TRACES)? {
                let spans = self.trace(&trace_id)?;
                if let Some(latest) = spans
                    .iter()
                    .filter(|span| query.matches(span))
                    .map(|span| span.start_unix_nano)
                    .max()
                {
                    hits.push((latest, trace_id));
                }
            }
        } else {
            for partition in self.partitions_newest_first() {
                if !partition.overlaps(query.start_ns, query.end_ns) {
                    continue;
                }
                partition.read(|connection| {
                    hits.extend(search_partition(&partition, connection, query, limit)?);
                    Ok(())
                })?;
            }
        }
        hits.sort_by_key(|hit| std::cmp::Reverse(hit.0));
        let mut seen = HashSet::new();
        let mut trace_ids = Vec::new();
        for (_, trace_id) in hits {
            if seen.insert(trace_id) {
                trace_ids.push(trace_id);
                if trace_ids.len() >= limit {
                    break;
                }
            }
        }
        Ok(trace_ids)
    }

    /// Returns the service graph from spans starting in `[start_ns, end_ns]`: an edge per
    /// pair of services where a span of one is the parent of a span of the other.
    ///
    /// # Errors
    /// [`StoreError`] when a partition cannot be read.
    pub fn dependencies(&self, start_ns: i64, end_ns: i64) -> Result<Dependencies, StoreError> {
        let mut service_names: Vec<String> = Vec::new();
        let mut service_index: HashMap<String, usize> = HashMap::new();
        let mut owner: HashMap<([u8; 16], [u8; 8]), usize> = HashMap::new();
        // (trace, parent span, child service, child is error)
        let mut children: Vec<([u8; 16], [u8; 8], usize, bool)> = Vec::new();
        let mut read = 0usize;
        let mut truncated = false;
        for partition in self.partitions_newest_first() {
            if truncated || !partition.overlaps(start_ns, end_ns) {
                continue;
            }
            partition.read(|connection| {
                let mut services = Vec::new();
                {
                    let mut statement =
                        connection.prepare_cached("SELECT id, name FROM services")?;
                    let rows = statement.query_map([], |row| {
                        Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                    })?;
                    for row in rows {
                        services.push(row?);
                    }
                }
                for (service_id, name) in services {
                    let next_index = service_names.len();
                    let index = *service_index.entry(name.clone()).or_insert(next_index);
                    if index == next_index {
                        service_names.push(name);
                    }
                    let mut statement = connection.prepare_cached(
                        "SELECT start_ns, trace_id, spans FROM span_groups \
                         WHERE service_id = ?1 AND chunk_id BETWEEN ?2 AND ?3",
                    )?;
                    for block in service_blocks(connection, service_id, start_ns, end_ns)? {
                        let mut rows = statement.query(params![
                            service_id,
                            block.first_chunk_id,
                            block.last_chunk_id
                        ])?;
                        while let Some(row) = rows.next()? {
                            let key_start: i64 = row.get(0)?;
                            if key_start < start_ns {
                                continue;
                            }
                            let trace: Vec<u8> = row.get(1)?;
                            let Ok(trace) = <[u8; 16]>::try_from(trace.as_slice()) else {
                                continue;
                            };
                            let entries: Vec<u8> = row.get(2)?;
                            for entry in decode_span_index(&entries)? {
                                let start = entry_start(key_start, &entry);
                                if start < start_ns || start > end_ns {
                                    continue;
                                }
                                read += 1;
                                if read > MAX_DEPENDENCY_SPANS {
                                    truncated = true;
                                    return Ok(());
                                }
                                owner.insert((trace, entry.span_id), index);
                                if let Some(parent) = entry.parent_span_id {
                                    children.push((trace, parent, index, entry.error));
                                }
                            }
                        }
                    }
                }
                Ok(())
            })?;
        }
        let mut counts: BTreeMap<(usize, usize), (u64, u64)> = BTreeMap::new();
        for (trace, parent, child_service, error) in children {
            let Some(parent_service) = owner.get(&(trace, parent)) else {
                continue;
            };
            if *parent_service == child_service {
                continue;
            }
            let entry = counts.entry((*parent_service, child_service)).or_default();
            entry.0 += 1;
            entry.1 += u64::from(error);
        }
        let mut edges: Vec<DependencyEdge> = counts
            .into_iter()
            .map(|((parent, child), (calls, errors))| DependencyEdge {
                parent: service_names[parent].clone(),
                child: service_names[child].clone(),
                call_count: calls,
                error_count: errors,
            })
            .collect();
        edges.sort_by(|left, right| {
            (left.parent.as_str(), left.child.as_str())
                .cmp(&(right.parent.as_str(), right.child.as_str()))
        });
        Ok(Dependencies { edges, truncated })
    }
}

/// The start of an index entry's span in the row keyed `key_start`.
fn entry_start(key_start: i64, entry: &IndexedSpan) -> i64 {
    key_start.saturating_sub(i64::try_from(entry.start_offset_ns).unwrap_or(i64::MAX))
}

/// Where a partition search reads: a service's rows, with the operations a span must have
/// (any when `None`).
struct IndexRange {
    service_id: i64,
    operation_ids: Option<HashSet<i64>>,
}

/// The traces found so far by one range of a search, with the latest start of a matching span
/// of each, and the start below which no span can enter the `limit` newest any more.
struct SearchHits {
    latest: HashMap<[u8; 16], i64>,
    limit: usize,
    /// The `limit`-th latest start found (`i64::MIN` while fewer traces are found).
    threshold: i64,
}

impl SearchHits {
    fn new(limit: usize) -> Self {
        SearchHits {
            latest: HashMap::new(),
            limit,
            threshold: i64::MIN,
        }
    }

    fn add(&mut self, trace_id: [u8; 16], start_ns: i64) {
        let latest = self.latest.entry(trace_id).or_insert(i64::MIN);
        if start_ns <= *latest {
            return;
        }
        *latest = start_ns;
        if self.latest.len() >= self.limit {
            let mut starts: Vec<i64> = self.latest.values().copied().collect();
            starts.sort_unstable_by(|left, right| right.cmp(left));
            self.threshold = starts[self.limit - 1];
        }
    }

    /// Whether a span starting at `start_ns` or earlier can still be among the results.
    fn wants(&self, start_ns: i64) -> bool {
        start_ns >= self.threshold
    }
}

/// Finds the traces with a matching span in one partition: (start of the latest matching
/// span, trace), at least the `limit` newest per index range. Rows are read a block at a time,
/// the blocks holding the latest starts first; a row's `start_ns` is its latest span start.
fn search_partition(
    partition: &Partition,
    connection: &rusqlite::Connection,
    query: &TraceQuery,
    limit: usize,
) -> Result<Vec<(i64, [u8; 16])>, StoreError> {
    let mut ranges: Vec<IndexRange> = Vec::new();
    match (&query.service, &query.operation) {
        (service, Some(operation)) => {
            let mut statement = connection.prepare_cached(
                "SELECT operations.id, operations.service_id FROM operations \
                 JOIN services ON services.id = operations.service_id \
                 WHERE operations.name = ?1 AND (?2 IS NULL OR services.name = ?2)",
            )?;
            let rows = statement.query_map(params![operation, service], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (operation_id, service_id) = row?;
                match ranges
                    .iter_mut()
                    .find(|range| range.service_id == service_id)
                {
                    Some(range) => {
                        if let Some(operation_ids) = range.operation_ids.as_mut() {
                            operation_ids.insert(operation_id);
                        }
                    }
                    None => ranges.push(IndexRange {
                        service_id,
                        operation_ids: Some(HashSet::from([operation_id])),
                    }),
                }
            }
        }
        (Some(service), None) => {
            let mut statement =
                connection.prepare_cached("SELECT id FROM services WHERE name = ?1")?;
            let rows = statement.query_map([service], |row| row.get::<_, i64>(0))?;
            for row in rows {
                ranges.push(IndexRange {
                    service_id: row?,
                    operation_ids: None,
                });
            }
        }
        (None, None) => {
            let mut statement = connection.prepare_cached("SELECT id FROM services")?;
            let rows = statement.query_map([], |row| row.get::<_, i64>(0))?;
            for row in rows {
                ranges.push(IndexRange {
                    service_id: row?,
                    operation_ids: None,
                });
            }
        }
    }
    let min_duration = query.min_duration_ns.unwrap_or(i64::MIN);
    let max_duration = query.max_duration_ns.unwrap_or(i64::MAX);
    let mut hits = Vec::new();
    let mut examined = 0usize;
    let mut chunk_cache: HashMap<i64, Vec<Span>> = HashMap::new();
    let mut statement = connection.prepare_cached(
        "SELECT chunk_id, start_ns, trace_id, spans FROM span_groups \
         WHERE service_id = ?1 AND chunk_id BETWEEN ?2 AND ?3",
    )?;
    for range in ranges {
        let mut found = SearchHits::new(limit);
        'blocks: for block in
            service_blocks(connection, range.service_id, query.start_ns, query.end_ns)?
        {
            // Blocks come latest first: once the newest `limit` traces all started after
            // every span of this block, no later block can add one either.
            if !found.wants(block.max_start_ns) {
                break;
            }
            let mut rows = statement.query(params![
                range.service_id,
                block.first_chunk_id,
                block.last_chunk_id
            ])?;
            while let Some(row) = rows.next()? {
                let key_start: i64 = row.get(1)?;
                if key_start < query.start_ns || !found.wants(key_start) {
                    continue;
                }
                let chunk_id: i64 = row.get(0)?;
                let trace: Vec<u8> = row.get(2)?;
                let Ok(trace_id) = <[u8; 16]>::try_from(trace.as_slice()) else {
                    continue;
                };
                let entries: Vec<u8> = row.get(3)?;
                for entry in decode_span_index(&entries)? {
                    examined += 1;
                    if examined > MAX_SEARCH_ROWS {
                        tracing::debug!(
                            "trace search stopped after {MAX_SEARCH_ROWS} index entries"
                        );
                        break 'blocks;
                    }
                    let start_ns = entry_start(key_start, &entry);
                    if start_ns < query.start_ns
                        || start_ns > query.end_ns
                        || entry.duration_ns < min_duration
                        || entry.duration_ns > max_duration
                        || !found.wants(start_ns)
                        || found
                            .latest
                            .get(&trace_id)
                            .is_some_and(|latest| *latest >= start_ns)
                    {
                        continue;
                    }
                    if range
                        .operation_ids
                        .as_ref()
                        .is_some_and(|operation_ids| !operation_ids.contains(&entry.operation_id))
                    {
                        continue;
                    }
                    if !query.tags.is_empty() {
                        if !chunk_cache.contains_key(&chunk_id) {
                            if chunk_cache.len() > 4_096 {
                                chunk_cache.clear();
                            }
                            chunk_cache
                                .insert(chunk_id, read_chunk(partition, connection, chunk_id)?);
                        }
                        let matched = chunk_cache
                            .get(&chunk_id)
                            .and_then(|spans| spans.get(usize::from(entry.position)))
                            .is_some_and(|span| query.matches(span));
                        if !matched {
                            continue;
                        }
                    }
                    found.add(trace_id, start_ns);
                }
            }
        }
        hits.extend(
            found
                .latest
                .into_iter()
                .map(|(trace_id, start_ns)| (start_ns, trace_id)),
        );
    }
    Ok(hits)
}
