//! StatsD aggregation per flush interval, with statsd_exporter's semantics.
//!
//! Two halves, so parsing can run on several threads and flushing on one:
//! - [`Aggregator`] (one per parser worker) takes datagrams and accumulates what one flush
//!   interval received per series. Series are found by the raw bytes of the name, tags and
//!   type, so a line of a known series costs one hash lookup and no allocation; tag decoding
//!   and mapping run once per new raw key and are cached.
//! - [`Flusher`] merges the intervals of every worker into the cumulative state and renders a
//!   [`MetricBatch`]:
//!   counters are running totals (increments divided by the sample rate);
//!   gauges keep their value and apply `+`/`-` deltas;
//!   timers are converted to seconds (`ms` / 1000), histograms and distributions stay as sent;
//!   observers become `name{quantile="…"}` (quantiles of the flush's observations) plus
//!   cumulative `name_sum` and `name_count`, and one [`SketchSample`] per series per flush;
//!   sets become a gauge of the distinct members seen during the flush.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;
use vigil_model::{
    Labels, MetricBatch, MetricMetadata, MetricType, Sample, SeriesSamples, Sketch, SketchSample,
};

use super::mapping::{MappedMetric, Mapper, MappingOutcome};
use super::parser::{self, FastSample, MetricKind, ParseError, SampleValue};
use super::raw_keys::{self, KeyParts, RawKeyTable};

type FastMap<K, V> = HashMap<K, V, foldhash::quality::RandomState>;

/// Fast-path samples whose lookups are started together (a 1,400-byte datagram holds about 40).
const LOOKUP_BATCH: usize = 64;

/// A worker forgets its raw-key cache past this many keys (at a flush, after handing over its
/// interval), so garbage names cannot grow memory without bound.
const MAX_CACHED_RAW_KEYS: usize = 1 << 18;

/// What a series is exported as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SeriesKind {
    /// A cumulative counter.
    Counter,
    /// A gauge.
    Gauge,
    /// A summary with quantiles, `_sum` and `_count`, and a sketch.
    Summary,
    /// A gauge of distinct set members per flush.
    Set,
}

impl SeriesKind {
    fn of(kind: MetricKind) -> Self {
        match kind {
            MetricKind::Counter => SeriesKind::Counter,
            MetricKind::Gauge => SeriesKind::Gauge,
            MetricKind::Timer | MetricKind::Histogram | MetricKind::Distribution => {
                SeriesKind::Summary
            }
            MetricKind::Set => SeriesKind::Set,
        }
    }

    fn metric_type(self) -> MetricType {
        match self {
            SeriesKind::Counter => MetricType::Counter,
            SeriesKind::Gauge | SeriesKind::Set => MetricType::Gauge,
            SeriesKind::Summary => MetricType::Summary,
        }
    }
}

/// The Prometheus identity of an aggregated series. Equality and hashing use the kind and the
/// labels only.
#[derive(Debug)]
pub struct SeriesIdentity {
    /// How the series is exported.
    pub kind: SeriesKind,
    /// Metric name (`__name__`) and labels.
    pub labels: Labels,
    /// Help text of the family.
    pub help: Option<Arc<str>>,
    /// Quantiles to export (summaries only).
    pub quantiles: Arc<[f64]>,
}

impl PartialEq for SeriesIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.labels == other.labels
    }
}

impl Eq for SeriesIdentity {}

impl Hash for SeriesIdentity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        self.labels.hash(state);
    }
}

/// What one worker accumulated for one series during one flush interval.
#[derive(Clone, Debug)]
pub enum IntervalValue {
    /// Sum of increments.
    Counter(f64),
    /// The last absolute value (with the sequence number of its batch) and the deltas after
    /// it, summed per batch, so the flusher can order sets and deltas across workers.
    Gauge {
        /// `(batch sequence, value)` of the last absolute set.
        last_set: Option<(u64, f64)>,
        /// `(batch sequence, summed delta)` received after that set (or during the whole
        /// interval without one), oldest first.
        deltas: GaugeDeltas,
    },
    /// Observations.
    Summary {
        /// The observations' sketch.
        sketch: BufferedSketch,
        /// Exact sum.
        sum: f64,
        /// Exact count.
        count: u64,
    },
    /// Hashes of the distinct members.
    Set(HashSet<u64, foldhash::fast::FixedState>),
}

impl IntervalValue {
    fn empty(kind: SeriesKind) -> Self {
        match kind {
            SeriesKind::Counter => IntervalValue::Counter(0.0),
            SeriesKind::Gauge => IntervalValue::Gauge {
                last_set: None,
                deltas: GaugeDeltas::default(),
            },
            SeriesKind::Summary => IntervalValue::Summary {
                sketch: BufferedSketch::new(),
                sum: 0.0,
                count: 0,
            },
            SeriesKind::Set => IntervalValue::Set(HashSet::default()),
        }
    }
}

/// Observations waiting next to the series' other interval state.
const PENDING_OBSERVATIONS: usize = 8;

/// Observations waiting next to the sketch, moved there from the series a batch at a time.
const SPILLED_OBSERVATIONS: usize = 64;

/// A sketch that takes observations in batches. Each add into the sketch increments a counter
/// somewhere in an array of several kilobytes, and across thousands of series that array is
/// rarely in cache: a batch of 64 observations whose values fall in a few buckets loads each
/// bucket once, where adding them one by one would miss the cache on each.
///
/// The first few observations wait in the series itself (already in cache while a line is
/// applied); a full set of them is copied next to the sketch, which drains once 64 are there.
#[derive(Clone, Debug)]
pub struct BufferedSketch {
    pending: [f64; PENDING_OBSERVATIONS],
    pending_count: usize,
    spill: Box<Spill>,
}

/// A sketch and the observations waiting to enter it.
#[derive(Clone, Debug)]
struct Spill {
    values: [f64; SPILLED_OBSERVATIONS],
    count: usize,
    sketch: Sketch,
}

impl Spill {
    /// Adds `values` to the waiting ones, draining first when they would not fit.
    fn take(&mut self, values: &[f64]) {
        if self.count + values.len() > SPILLED_OBSERVATIONS {
            self.drain();
        }
        match self.values.get_mut(self.count..self.count + values.len()) {
            Some(slots) => {
                slots.copy_from_slice(values);
                self.count += values.len();
            }
            None => values.iter().for_each(|value| self.sketch.add(*value)),
        }
    }

    /// Moves the waiting observations into the sketch, a run of equal values as one weighted
    /// add: timers in whole milliseconds and byte-size histograms repeat values often, and each
    /// add costs a logarithm.
    fn drain(&mut self) {
        let waiting = self.values.get(..self.count).unwrap_or_default();
        for run in waiting.chunk_by(|left, right| left.to_bits() == right.to_bits()) {
            if let Some(value) = run.first() {
                self.sketch.add_many(*value, run.len() as u64);
            }
        }
        self.count = 0;
    }
}

impl BufferedSketch {
    fn new() -> Self {
        BufferedSketch {
            pending: [0.0; PENDING_OBSERVATIONS],
            pending_count: 0,
            spill: Box::new(Spill {
                values: [0.0; SPILLED_OBSERVATIONS],
                count: 0,
                sketch: Sketch::new(),
            }),
        }
    }

    /// Adds `repeat` observations of `value`.
    fn add(&mut self, value: f64, repeat: u32) {
        if repeat != 1 {
            self.spill.sketch.add_many(value, u64::from(repeat));
            return;
        }
        if self.pending_count == PENDING_OBSERVATIONS {
            self.spill.take(&self.pending);
            self.pending_count = 0;
        }
        if let Some(slot) = self.pending.get_mut(self.pending_count) {
            *slot = value;
            self.pending_count += 1;
        }
    }

    /// Moves every waiting observation into the sketch.
    fn drain_pending(&mut self) {
        let pending = self.pending.get(..self.pending_count).unwrap_or_default();
        self.spill.take(pending);
        self.spill.drain();
        self.pending_count = 0;
    }

    fn merge(&mut self, other: BufferedSketch) {
        self.drain_pending();
        self.spill.sketch.merge(&other.into_sketch());
    }

    /// Returns the sketch of every observation.
    fn into_sketch(mut self) -> Sketch {
        self.drain_pending();
        self.spill.sketch
    }
}

/// Why lines were refused, counted per batch and published to telemetry by the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineStats {
    /// Lines received (good or bad).
    pub received: u64,
    /// Samples refused, per reason.
    pub rejected: Vec<(&'static str, u64)>,
    /// Single tags skipped as malformed.
    pub skipped_tags: u64,
    /// Samples dropped by a `drop` mapping rule.
    pub dropped_by_mapping: u64,
}

impl LineStats {
    fn reject(&mut self, reason: &'static str) {
        match self
            .rejected
            .iter_mut()
            .find(|(existing, _)| *existing == reason)
        {
            Some((_, count)) => *count += 1,
            None => self.rejected.push((reason, 1)),
        }
    }

    /// Returns how many samples were refused for `reason`.
    pub fn rejected_for(&self, reason: &str) -> u64 {
        self.rejected
            .iter()
            .find(|(existing, _)| *existing == reason)
            .map_or(0, |(_, count)| *count)
    }

    /// Returns true when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.received == 0
            && self.rejected.is_empty()
            && self.skipped_tags == 0
            && self.dropped_by_mapping == 0
    }
}

/// Families seen so far, shared by all workers: one name has one kind, as in statsd_exporter.
#[derive(Debug, Default)]
pub struct FamilyRegistry {
    kinds: Mutex<HashMap<String, SeriesKind>>,
}

impl FamilyRegistry {
    fn claim(&self, name: &str, kind: SeriesKind) -> bool {
        let mut kinds = self.kinds.lock();
        match kinds.get(name) {
            Some(existing) => *existing == kind,
            None => {
                kinds.insert(name.to_string(), kind);
                true
            }
        }
    }
}

/// What a raw key resolved to, cached.
#[derive(Clone, Copy, Debug)]
enum RawEntry {
    Series(u32),
    Dropped,
    Rejected(&'static str),
}

struct SeriesSlot {
    identity: Arc<SeriesIdentity>,
    interval: Option<IntervalValue>,
}

/// The shared, read-only settings of every worker.
#[derive(Clone, Debug)]
pub struct AggregatorSettings {
    /// Compiled mapping rules.
    pub mapper: Arc<Mapper>,
    /// Quantiles exported when a rule sets none.
    pub default_quantiles: Arc<[f64]>,
    /// Families shared by every worker.
    pub families: Arc<FamilyRegistry>,
}

impl AggregatorSettings {
    /// Returns settings with the given rules and quantiles and a fresh family registry.
    pub fn new(mapper: Mapper, default_quantiles: &[f64]) -> Self {
        AggregatorSettings {
            mapper: Arc::new(mapper),
            default_quantiles: Arc::from(default_quantiles),
            families: Arc::new(FamilyRegistry::default()),
        }
    }
}

/// One worker's accumulator for the current flush interval.
pub struct Aggregator {
    settings: AggregatorSettings,
    raw_keys: RawKeyTable<RawEntry>,
    mapping_cache: FastMap<(String, MetricKind), MappingOutcome>,
    series_index: FastMap<Arc<SeriesIdentity>, u32>,
    series: Vec<SeriesSlot>,
    touched: Vec<u32>,
    member_hasher: foldhash::fast::FixedState,
    stats: LineStats,
}

impl Aggregator {
    /// Returns an empty aggregator.
    pub fn new(settings: AggregatorSettings) -> Self {
        Aggregator {
            settings,
            raw_keys: RawKeyTable::new(),
            mapping_cache: FastMap::default(),
            series_index: FastMap::default(),
            series: Vec::new(),
            touched: Vec::new(),
            member_hasher: foldhash::fast::FixedState::with_seed(0x5eed),
            stats: LineStats::default(),
        }
    }

    /// Adds every line of a datagram (or of a chunk of complete TCP lines). `sequence` orders
    /// gauge sets across workers: a later batch has a larger sequence.
    ///
    /// Lines of the common shape ([`parser::fast_sample`]) are gathered and their series
    /// looked up together, so the cache misses of the lookups overlap; any other line is read
    /// by the general parser, after the lines before it, so samples apply in line order.
    pub fn ingest_datagram(&mut self, datagram: &[u8], sequence: u64) {
        let mut pending: Vec<PendingSample<'_>> = Vec::with_capacity(LOOKUP_BATCH);
        let mut rest = datagram;
        while !rest.is_empty() {
            // The fast path finds the line's end as it reads it; any other line is split off
            // as `parser::lines` splits it (empty lines skipped, a trailing `\r` removed).
            if let Some((sample, length)) = parser::fast_sample_at(rest) {
                rest = rest.get(length + 1..).unwrap_or_default();
                self.stats.received += 1;
                let hash = self.raw_keys.hash(&key_parts(&sample));
                self.raw_keys.prefetch_slot(hash);
                pending.push(PendingSample { sample, hash });
                if pending.len() == LOOKUP_BATCH {
                    self.apply_pending(&mut pending, sequence);
                }
                continue;
            }
            let (line, next) = match memchr::memchr(b'\n', rest) {
                Some(end) => (rest.get(..end).unwrap_or_default(), rest.get(end + 1..)),
                None => (rest, None),
            };
            rest = next.unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            self.stats.received += 1;
            self.apply_pending(&mut pending, sequence);
            self.ingest_line_general(line, sequence);
        }
        self.apply_pending(&mut pending, sequence);
    }

    /// Reads one line with the general parser (every sample of it, or its error).
    fn ingest_line_general(&mut self, line: &[u8], sequence: u64) {
        parser::for_each_sample(line, |sample| match sample {
            Ok(sample) => {
                let parts = KeyParts {
                    name: sample.name_section.as_bytes(),
                    tags: sample.dogstatsd_tags.as_bytes(),
                    kind: sample.kind as u8,
                };
                let hash = self.raw_keys.hash(&parts);
                let entry = self.entry(hash, &parts, sample.kind);
                self.apply_entry(entry, sample.kind, sample.value, sequence);
            }
            Err(error) => self.stats.reject(error.reason()),
        });
    }

    /// Reads every line with the general parser only: the reference the fast path is tested
    /// against.
    #[cfg(test)]
    fn ingest_datagram_general(&mut self, datagram: &[u8], sequence: u64) {
        for line in parser::lines(datagram) {
            self.stats.received += 1;
            self.ingest_line_general(line, sequence);
        }
    }

    /// Looks up the series of every pending sample in three passes (slots, entries, series),
    /// each starting the next one's loads, then applies the samples in order.
    fn apply_pending(&mut self, pending: &mut Vec<PendingSample<'_>>, sequence: u64) {
        for sample in pending.iter() {
            self.raw_keys.prefetch_entry(sample.hash);
        }
        let mut entries = [None; LOOKUP_BATCH];
        for (sample, entry) in pending.iter().zip(entries.iter_mut()) {
            *entry = self.raw_keys.get(sample.hash, &key_parts(&sample.sample));
            if let Some(RawEntry::Series(index)) = entry {
                if let Some(slot) = self.series.get(*index as usize) {
                    raw_keys::prefetch_bytes(slot);
                }
            }
        }
        for (sample, entry) in pending.drain(..).zip(entries) {
            let entry = match entry {
                Some(entry) => entry,
                // New this batch (an earlier sample of the batch may have added it since).
                None => self.entry(sample.hash, &key_parts(&sample.sample), sample.sample.kind),
            };
            self.apply_entry(entry, sample.sample.kind, sample.sample.value, sequence);
        }
    }

    /// Returns and resets the line counts since the last call.
    pub fn take_stats(&mut self) -> LineStats {
        std::mem::take(&mut self.stats)
    }

    /// Returns the number of distinct series this worker knows.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Hands over what this interval accumulated and starts the next interval.
    pub fn take_interval(&mut self) -> Vec<(Arc<SeriesIdentity>, IntervalValue)> {
        let mut taken = Vec::with_capacity(self.touched.len());
        for index in self.touched.drain(..) {
            if let Some(slot) = self.series.get_mut(index as usize) {
                if let Some(interval) = slot.interval.take() {
                    taken.push((Arc::clone(&slot.identity), interval));
                }
            }
        }
        if self.raw_keys.len() > MAX_CACHED_RAW_KEYS {
            self.raw_keys.clear();
            self.mapping_cache.clear();
            self.series_index.clear();
            self.series.clear();
        }
        taken
    }

    /// Returns what a raw key resolved to, resolving and caching it when new.
    fn entry(&mut self, hash: u64, parts: &KeyParts<'_>, kind: MetricKind) -> RawEntry {
        if let Some(entry) = self.raw_keys.get(hash, parts) {
            return entry;
        }
        let entry = match (
            std::str::from_utf8(parts.name),
            std::str::from_utf8(parts.tags),
        ) {
            (Ok(name_section), Ok(dogstatsd_tags)) => {
                self.resolve(name_section, dogstatsd_tags, kind)
            }
            _ => RawEntry::Rejected(ParseError::InvalidUtf8.reason()),
        };
        self.raw_keys.insert(hash, parts, entry);
        entry
    }

    fn apply_entry(
        &mut self,
        entry: RawEntry,
        kind: MetricKind,
        value: SampleValue<'_>,
        sequence: u64,
    ) {
        match entry {
            RawEntry::Series(index) => self.apply(index, kind, value, sequence),
            RawEntry::Dropped => self.stats.dropped_by_mapping += 1,
            RawEntry::Rejected(reason) => self.stats.reject(reason),
        }
    }

    /// Decodes tags, maps the name and finds or creates the series: once per raw key.
    fn resolve(&mut self, name_section: &str, dogstatsd_tags: &str, kind: MetricKind) -> RawEntry {
        let decoded = match parser::parse_name_and_tags(name_section, dogstatsd_tags) {
            Ok(decoded) => decoded,
            Err(error) => return RawEntry::Rejected(error.reason()),
        };
        // Counted once per raw key: the same tags on the same key are skipped the same way.
        self.stats.skipped_tags += decoded.skipped_tags as u64;
        let cache_key = (decoded.name.to_string(), kind);
        let outcome = match self.mapping_cache.get(&cache_key) {
            Some(outcome) => outcome.clone(),
            None => {
                let outcome = self.settings.mapper.map(&cache_key.0, kind);
                self.mapping_cache.insert(cache_key, outcome.clone());
                outcome
            }
        };
        let mapped = match outcome {
            MappingOutcome::Mapped(mapped) => mapped,
            MappingOutcome::Dropped => return RawEntry::Dropped,
        };
        if mapped.name.is_empty() {
            return RawEntry::Rejected(ParseError::EmptyName.reason());
        }
        let kind = SeriesKind::of(kind);
        if !self.settings.families.claim(&mapped.name, kind) {
            return RawEntry::Rejected("type_conflict");
        }
        let identity = self.identity(kind, mapped, decoded.tags);
        let index = match self.series_index.get(&identity) {
            Some(index) => *index,
            None => {
                let index = self.series.len() as u32;
                self.series.push(SeriesSlot {
                    identity: Arc::clone(&identity),
                    interval: None,
                });
                self.series_index.insert(identity, index);
                index
            }
        };
        RawEntry::Series(index)
    }

    fn identity(
        &self,
        kind: SeriesKind,
        mapped: MappedMetric,
        tags: Vec<(String, String)>,
    ) -> Arc<SeriesIdentity> {
        let mut labels = Labels::from_pairs(tags);
        for (label, value) in mapped.labels {
            if mapped.honor_labels && labels.get(&label).is_some() {
                continue;
            }
            labels.set(label, value);
        }
        labels.set(vigil_model::METRIC_NAME.to_string(), mapped.name);
        if kind == SeriesKind::Summary {
            labels.remove("quantile");
        }
        let quantiles = mapped
            .quantiles
            .unwrap_or_else(|| Arc::clone(&self.settings.default_quantiles));
        Arc::new(SeriesIdentity {
            kind,
            labels,
            help: mapped.help,
            quantiles,
        })
    }

    fn apply(&mut self, index: u32, kind: MetricKind, value: SampleValue<'_>, sequence: u64) {
        let Some(slot) = self.series.get_mut(index as usize) else {
            return;
        };
        let interval = match &mut slot.interval {
            Some(interval) => interval,
            None => {
                self.touched.push(index);
                slot.interval
                    .insert(IntervalValue::empty(slot.identity.kind))
            }
        };
        match (interval, value) {
            (IntervalValue::Counter(total), SampleValue::Counter(increment)) => *total += increment,
            (IntervalValue::Gauge { last_set, deltas }, SampleValue::Gauge { value, relative }) => {
                if relative {
                    deltas.add(sequence, value);
                } else {
                    *last_set = Some((sequence, value));
                    deltas.clear();
                }
            }
            (
                IntervalValue::Summary { sketch, sum, count },
                SampleValue::Observation {
                    value,
                    count: repeat,
                },
            ) => {
                let value = if kind == MetricKind::Timer {
                    value / 1000.0
                } else {
                    value
                };
                sketch.add(value, repeat);
                *sum += value * f64::from(repeat);
                *count += u64::from(repeat);
            }
            (IntervalValue::Set(members), SampleValue::Set(member)) => {
                let mut hasher = self.member_hasher.build_hasher();
                hasher.write(member.as_bytes());
                members.insert(hasher.finish());
            }
            // Unreachable: the raw key includes the type, and the kind follows from it.
            _ => self.stats.reject(ParseError::BadType.reason()),
        }
    }
}

/// A fast-path sample waiting for its lookup, with the hash of its raw key.
struct PendingSample<'a> {
    sample: FastSample<'a>,
    hash: u64,
}

fn key_parts<'a>(sample: &FastSample<'a>) -> KeyParts<'a> {
    KeyParts {
        name: sample.name_section,
        tags: sample.dogstatsd_tags,
        kind: sample.kind as u8,
    }
}

#[derive(Debug)]
enum CumulativeValue {
    Counter(f64),
    Gauge(f64),
    Summary { sum: f64, count: u64 },
    Set,
}

/// The cumulative state of every series, merged from the workers' intervals at each flush.
#[derive(Debug, Default)]
pub struct Flusher {
    series: FastMap<Arc<SeriesIdentity>, CumulativeValue>,
    announced_families: HashSet<String>,
}

impl Flusher {
    /// Returns an empty flusher.
    pub fn new() -> Self {
        Flusher::default()
    }

    /// Returns the number of series kept.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Merges the intervals of every worker and renders the samples of a flush at
    /// `timestamp_ms`: every known series, plus a sketch per observer series that received
    /// observations.
    pub fn flush(
        &mut self,
        worker_intervals: Vec<Vec<(Arc<SeriesIdentity>, IntervalValue)>>,
        timestamp_ms: i64,
    ) -> MetricBatch {
        let merged = merge_intervals(worker_intervals);
        let mut batch = MetricBatch::default();
        let mut merged_by_identity: FastMap<Arc<SeriesIdentity>, IntervalValue> =
            FastMap::default();
        for (identity, interval) in merged {
            let cumulative =
                self.series
                    .entry(Arc::clone(&identity))
                    .or_insert_with(|| match identity.kind {
                        SeriesKind::Counter => CumulativeValue::Counter(0.0),
                        SeriesKind::Gauge => CumulativeValue::Gauge(0.0),
                        SeriesKind::Summary => CumulativeValue::Summary { sum: 0.0, count: 0 },
                        SeriesKind::Set => CumulativeValue::Set,
                    });
            match (cumulative, &interval) {
                (CumulativeValue::Counter(total), IntervalValue::Counter(increment)) => {
                    *total += increment
                }
                (CumulativeValue::Gauge(current), IntervalValue::Gauge { last_set, deltas }) => {
                    if let Some((_, value)) = last_set {
                        *current = *value;
                    }
                    *current += deltas.iter().map(|(_, delta)| delta).sum::<f64>();
                }
                (
                    CumulativeValue::Summary { sum, count },
                    IntervalValue::Summary {
                        sum: added,
                        count: added_count,
                        ..
                    },
                ) => {
                    *sum += added;
                    *count += added_count;
                }
                _ => {}
            }
            merged_by_identity.insert(identity, interval);
        }
        let sample = |value: f64| {
            vec![Sample {
                timestamp_ms,
                value,
            }]
        };
        for (identity, cumulative) in &self.series {
            let name = identity
                .labels
                .metric_name()
                .unwrap_or_default()
                .to_string();
            if !self.announced_families.contains(&name) {
                self.announced_families.insert(name.clone());
                batch.metadata.push(MetricMetadata {
                    metric_name: name.clone(),
                    metric_type: identity.kind.metric_type(),
                    help: identity.help.as_deref().map_or_else(
                        || format!("StatsD {} aggregated by Vigil.", kind_word(identity.kind)),
                        str::to_string,
                    ),
                    unit: String::new(),
                });
            }
            let interval = merged_by_identity.remove(identity);
            match cumulative {
                CumulativeValue::Counter(total) | CumulativeValue::Gauge(total) => {
                    batch.series.push(SeriesSamples {
                        labels: identity.labels.clone(),
                        samples: sample(*total),
                    });
                }
                CumulativeValue::Set => {
                    let distinct = match &interval {
                        Some(IntervalValue::Set(members)) => members.len(),
                        _ => 0,
                    };
                    batch.series.push(SeriesSamples {
                        labels: identity.labels.clone(),
                        samples: sample(distinct as f64),
                    });
                }
                CumulativeValue::Summary { sum, count } => {
                    if let Some(IntervalValue::Summary {
                        sketch,
                        count: interval_count,
                        ..
                    }) = interval
                    {
                        if interval_count > 0 {
                            let sketch = sketch.into_sketch();
                            for quantile in identity.quantiles.iter() {
                                let Some(value) = sketch.quantile(*quantile) else {
                                    continue;
                                };
                                let mut labels = identity.labels.clone();
                                labels.set("quantile".to_string(), format!("{quantile}"));
                                batch.series.push(SeriesSamples {
                                    labels,
                                    samples: sample(value),
                                });
                            }
                            batch.sketches.push(SketchSample {
                                labels: identity.labels.clone(),
                                timestamp_ms,
                                sketch,
                            });
                        }
                    }
                    for (suffix, value) in [("_sum", *sum), ("_count", *count as f64)] {
                        let mut labels = identity.labels.clone();
                        labels.set(
                            vigil_model::METRIC_NAME.to_string(),
                            format!("{name}{suffix}"),
                        );
                        batch.series.push(SeriesSamples {
                            labels,
                            samples: sample(value),
                        });
                    }
                }
            }
        }
        batch
    }
}

fn kind_word(kind: SeriesKind) -> &'static str {
    match kind {
        SeriesKind::Counter => "counter",
        SeriesKind::Gauge => "gauge",
        SeriesKind::Summary => "timer, histogram or distribution",
        SeriesKind::Set => "set",
    }
}

/// Keeps at most this many per-batch delta entries per gauge and interval; past it, deltas
/// fold into the newest entry (sums stay exact, only cross-worker ordering coarsens).
const MAX_GAUGE_DELTA_ENTRIES: usize = 256;

/// A gauge's deltas of one interval, summed per batch, oldest first. The newest entry, the one
/// a delta line updates, sits inline in the series' interval, so a line never reads the heap.
#[derive(Clone, Debug, Default)]
pub struct GaugeDeltas {
    older: Vec<(u64, f64)>,
    newest: Option<(u64, f64)>,
}

impl GaugeDeltas {
    fn add(&mut self, sequence: u64, delta: f64) {
        let full = self.older.len() + 1 >= MAX_GAUGE_DELTA_ENTRIES;
        match &mut self.newest {
            Some((newest_sequence, sum)) if *newest_sequence == sequence || full => {
                *newest_sequence = (*newest_sequence).max(sequence);
                *sum += delta;
            }
            Some(newest) => {
                self.older.push(*newest);
                *newest = (sequence, delta);
            }
            None => self.newest = Some((sequence, delta)),
        }
    }

    fn clear(&mut self) {
        self.older.clear();
        self.newest = None;
    }

    /// Returns `(batch sequence, summed delta)` entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &(u64, f64)> {
        self.older.iter().chain(&self.newest)
    }
}

/// Merges one gauge from several workers in batch order: the latest absolute set wins, and
/// every delta from its batch on applies after it (a batch is parsed by one worker only, and
/// a worker forgets the deltas before its own set).
fn merge_gauges(intervals: Vec<IntervalValue>) -> IntervalValue {
    let mut latest_set: Option<(u64, f64)> = None;
    for interval in &intervals {
        if let IntervalValue::Gauge {
            last_set: Some((sequence, value)),
            ..
        } = interval
        {
            if latest_set.is_none_or(|(latest, _)| *sequence > latest) {
                latest_set = Some((*sequence, *value));
            }
        }
    }
    let since = latest_set.map_or(0, |(sequence, _)| sequence);
    let mut delta_sum = 0.0;
    for interval in &intervals {
        if let IntervalValue::Gauge { deltas, .. } = interval {
            delta_sum += deltas
                .iter()
                .filter(|(sequence, _)| *sequence >= since)
                .map(|(_, delta)| delta)
                .sum::<f64>();
        }
    }
    IntervalValue::Gauge {
        last_set: latest_set,
        deltas: GaugeDeltas {
            older: Vec::new(),
            newest: Some((since, delta_sum)),
        },
    }
}

/// Merges the same series from several workers: counters and summaries add up, sets unite,
/// gauges replay sets and deltas in batch order.
fn merge_intervals(
    worker_intervals: Vec<Vec<(Arc<SeriesIdentity>, IntervalValue)>>,
) -> Vec<(Arc<SeriesIdentity>, IntervalValue)> {
    if worker_intervals.len() == 1 {
        return worker_intervals.into_iter().flatten().collect();
    }
    let mut grouped: FastMap<Arc<SeriesIdentity>, Vec<IntervalValue>> = FastMap::default();
    for (identity, interval) in worker_intervals.into_iter().flatten() {
        grouped.entry(identity).or_default().push(interval);
    }
    let mut merged = Vec::with_capacity(grouped.len());
    for (identity, intervals) in grouped {
        if identity.kind == SeriesKind::Gauge {
            merged.push((identity, merge_gauges(intervals)));
            continue;
        }
        let mut combined = match intervals.first() {
            Some(first) => first.clone(),
            None => continue,
        };
        for interval in intervals.into_iter().skip(1) {
            match (&mut combined, interval) {
                (IntervalValue::Counter(total), IntervalValue::Counter(more)) => *total += more,
                (
                    IntervalValue::Summary { sketch, sum, count },
                    IntervalValue::Summary {
                        sketch: more_sketch,
                        sum: more_sum,
                        count: more_count,
                    },
                ) => {
                    sketch.merge(more_sketch);
                    *sum += more_sum;
                    *count += more_count;
                }
                (IntervalValue::Set(members), IntervalValue::Set(more)) => members.extend(more),
                _ => {}
            }
        }
        merged.push((identity, combined));
    }
    merged
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::sources::statsd::mapping::MappingRule;
    use proptest::prelude::*;

    fn settings(rules_json: &str) -> AggregatorSettings {
        let rules: Vec<MappingRule> = serde_json::from_str(rules_json).unwrap();
        AggregatorSettings::new(Mapper::new(&rules).unwrap(), &[0.5, 0.9, 0.99])
    }

    fn value_of(batch: &MetricBatch, series: &str) -> Option<f64> {
        batch
            .series
            .iter()
            .find(|candidate| candidate.labels.to_string() == series)
            .map(|candidate| candidate.samples[0].value)
    }

    fn flush_one(
        aggregator: &mut Aggregator,
        flusher: &mut Flusher,
        timestamp_ms: i64,
    ) -> MetricBatch {
        flusher.flush(vec![aggregator.take_interval()], timestamp_ms)
    }

    #[test]
    fn counters_are_cumulative_across_flushes() {
        let mut aggregator = Aggregator::new(settings("[]"));
        let mut flusher = Flusher::new();
        aggregator.ingest_datagram(b"gateway.requests:1|c|@0.5\ngateway.requests:3|c", 1);
        let first = flush_one(&mut aggregator, &mut flusher, 1000);
        assert_eq!(value_of(&first, "gateway_requests{}"), Some(5.0));
        assert_eq!(first.series[0].samples[0].timestamp_ms, 1000);
        let second = flush_one(&mut aggregator, &mut flusher, 2000);
        assert_eq!(value_of(&second, "gateway_requests{}"), Some(5.0));
        aggregator.ingest_datagram(b"gateway.requests:1|c", 2);
        let third = flush_one(&mut aggregator, &mut flusher, 3000);
        assert_eq!(value_of(&third, "gateway_requests{}"), Some(6.0));
        assert_eq!(first.metadata[0].metric_type, MetricType::Counter);
        assert!(second.metadata.is_empty());
    }

    #[test]
    fn gauge_deltas_apply_to_the_last_value() {
        let mut aggregator = Aggregator::new(settings("[]"));
        let mut flusher = Flusher::new();
        aggregator.ingest_datagram(b"x:+3|g", 1);
        assert_eq!(
            value_of(&flush_one(&mut aggregator, &mut flusher, 1), "x{}"),
            Some(3.0)
        );
        aggregator.ingest_datagram(b"x:10|g\nx:-4|g\nx:+1.5|g", 2);
        assert_eq!(
            value_of(&flush_one(&mut aggregator, &mut flusher, 2), "x{}"),
            Some(7.5)
        );
        aggregator.ingest_datagram(b"x:-0.5|g", 3);
        assert_eq!(
            value_of(&flush_one(&mut aggregator, &mut flusher, 3), "x{}"),
            Some(7.0)
        );
    }

    #[test]
    fn gauge_sets_across_workers_follow_batch_order() {
        let settings = settings("[]");
        let mut early = Aggregator::new(settings.clone());
        let mut late = Aggregator::new(settings);
        let mut flusher = Flusher::new();
        late.ingest_datagram(b"x:20|g\nx:+1|g", 9);
        early.ingest_datagram(b"x:5|g\nx:+2|g", 3);
        // A delta in a later batch on the other worker applies after the set.
        early.ingest_datagram(b"x:+4|g", 10);
        // A delta in an earlier batch is overwritten by the later set.
        late.ingest_datagram(b"x:+100|g", 2);
        let batch = flusher.flush(vec![late.take_interval(), early.take_interval()], 1);
        assert_eq!(value_of(&batch, "x{}"), Some(25.0));
    }

    #[test]
    fn timers_become_seconds_with_quantiles_sum_count_and_sketch() {
        let mut aggregator = Aggregator::new(settings("[]"));
        let mut flusher = Flusher::new();
        let mut datagram = Vec::new();
        for millis in 1..=100 {
            datagram.extend_from_slice(format!("api.latency:{millis}|ms\n").as_bytes());
        }
        aggregator.ingest_datagram(&datagram, 1);
        let batch = flush_one(&mut aggregator, &mut flusher, 10_000);
        let p99 = value_of(&batch, "api_latency{quantile=\"0.99\"}").unwrap();
        assert!((p99 - 0.099).abs() / 0.099 < 0.01, "{p99}");
        let p50 = value_of(&batch, "api_latency{quantile=\"0.5\"}").unwrap();
        assert!((p50 - 0.050).abs() / 0.050 < 0.03, "{p50}");
        assert!((value_of(&batch, "api_latency_sum{}").unwrap() - 5.05).abs() < 1e-9);
        assert_eq!(value_of(&batch, "api_latency_count{}"), Some(100.0));
        assert_eq!(batch.sketches.len(), 1);
        assert_eq!(batch.sketches[0].sketch.count(), 100);
        assert_eq!(batch.sketches[0].labels.to_string(), "api_latency{}");
        assert_eq!(batch.metadata[0].metric_type, MetricType::Summary);
        // Next flush: no observations, so no quantiles or sketch, cumulative sum and count stay.
        let quiet = flush_one(&mut aggregator, &mut flusher, 20_000);
        assert!(quiet.sketches.is_empty());
        assert_eq!(value_of(&quiet, "api_latency{quantile=\"0.99\"}"), None);
        assert_eq!(value_of(&quiet, "api_latency_count{}"), Some(100.0));
    }

    #[test]
    fn histograms_and_distributions_keep_their_unit() {
        let mut aggregator = Aggregator::new(settings("[]"));
        let mut flusher = Flusher::new();
        aggregator.ingest_datagram(b"size:300|h\nsize:100|d|@0.5", 1);
        let batch = flush_one(&mut aggregator, &mut flusher, 1);
        assert_eq!(value_of(&batch, "size_sum{}"), Some(500.0));
        assert_eq!(value_of(&batch, "size_count{}"), Some(3.0));
    }

    #[test]
    fn sets_count_distinct_members_per_flush() {
        let mut aggregator = Aggregator::new(settings("[]"));
        let mut flusher = Flusher::new();
        aggregator.ingest_datagram(b"users:u1|s\nusers:u2|s\nusers:u1|s", 1);
        assert_eq!(
            value_of(&flush_one(&mut aggregator, &mut flusher, 1), "users{}"),
            Some(2.0)
        );
        assert_eq!(
            value_of(&flush_one(&mut aggregator, &mut flusher, 2), "users{}"),
            Some(0.0)
        );
    }

    #[test]
    fn dogstatsd_tags_and_mapping_labels_combine() {
        let mut aggregator = Aggregator::new(settings(
            r#"[{"match": "simplebank-demo.*.request_reservation", "name": "request_reservation",
                 "labels": {"app": "$1"}}]"#,
        ));
        let mut flusher = Flusher::new();
        aggregator.ingest_datagram(
            b"simplebank-demo.account.request_reservation:1|c|#env:prod\n\
              simplebank-demo.account.request_reservation:2|c|#env:prod",
            1,
        );
        let batch = flush_one(&mut aggregator, &mut flusher, 1);
        assert_eq!(
            value_of(&batch, "request_reservation{app=\"account\", env=\"prod\"}"),
            Some(3.0)
        );
    }

    #[test]
    fn tag_order_does_not_split_a_series() {
        let mut aggregator = Aggregator::new(settings("[]"));
        let mut flusher = Flusher::new();
        aggregator.ingest_datagram(b"a:1|c|#x:1,y:2\na:1|c|#y:2,x:1\na,x=1,y=2:1|c", 1);
        let batch = flush_one(&mut aggregator, &mut flusher, 1);
        assert_eq!(batch.series.len(), 1);
        assert_eq!(value_of(&batch, "a{x=\"1\", y=\"2\"}"), Some(3.0));
    }

    #[test]
    fn drop_rules_and_type_conflicts_are_counted() {
        let mut aggregator =
            Aggregator::new(settings(r#"[{"match": "noisy.*", "action": "drop"}]"#));
        let mut flusher = Flusher::new();
        aggregator.ingest_datagram(
            b"noisy.a:1|c\nnoisy.a:1|c\nm:1|c\nm:1|g\nbad\nx:1|c|#flag",
            1,
        );
        let stats = aggregator.take_stats();
        assert_eq!(stats.received, 6);
        assert_eq!(stats.dropped_by_mapping, 2);
        assert_eq!(stats.rejected_for("type_conflict"), 1);
        assert_eq!(stats.rejected_for("malformed_line"), 1);
        assert_eq!(stats.skipped_tags, 1);
        let batch = flush_one(&mut aggregator, &mut flusher, 1);
        assert_eq!(value_of(&batch, "m{}"), Some(1.0));
        assert_eq!(value_of(&batch, "x{}"), Some(1.0));
    }

    #[test]
    fn summaries_merge_across_workers() {
        let settings = settings("[]");
        let mut left = Aggregator::new(settings.clone());
        let mut right = Aggregator::new(settings);
        let mut flusher = Flusher::new();
        left.ingest_datagram(b"t:100|ms", 1);
        right.ingest_datagram(b"t:300|ms\nt:1|c", 2);
        let batch = flusher.flush(vec![left.take_interval(), right.take_interval()], 1);
        assert_eq!(value_of(&batch, "t_count{}"), Some(2.0));
        assert_eq!(batch.sketches.len(), 1);
        assert_eq!(batch.sketches[0].sketch.count(), 2);
    }

    /// A flush rendered as sorted text, for comparing two aggregators' output.
    fn rendered(batch: &MetricBatch) -> Vec<String> {
        let mut lines: Vec<String> = batch
            .series
            .iter()
            .map(|series| format!("{} {:?}", series.labels, series.samples))
            .chain(batch.sketches.iter().map(|sketch| {
                format!(
                    "{} sketch count={} p50={:?} p99={:?}",
                    sketch.labels,
                    sketch.sketch.count(),
                    sketch.sketch.quantile(0.5),
                    sketch.sketch.quantile(0.99)
                )
            }))
            .collect();
        lines.sort();
        lines
    }

    fn statsd_line() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("a".to_string()),
            Just("b.c".to_string()),
            Just("load.svc12.requests.s3456".to_string()),
            Just("n,k=v".to_string()),
            Just("é".to_string()),
            Just("_e{1,1}".to_string()),
            Just(String::new()),
        ];
        let value = prop_oneof![
            Just("1"),
            Just("+2.5"),
            Just("-3"),
            Just("0"),
            Just("1e3"),
            Just("x"),
            Just(""),
            Just("1:2")
        ];
        let kind = prop_oneof![
            Just("c"),
            Just("g"),
            Just("ms"),
            Just("h"),
            Just("d"),
            Just("s"),
            Just("q"),
            Just("c:4|g")
        ];
        let component = prop_oneof![
            Just("|@0.5"),
            Just("|@0"),
            Just("|@2"),
            Just("|#t:1,u"),
            Just("|#u,t:1"),
            Just("|#env:bench,service:checkout"),
            Just("|#t:1\r"),
            Just("|#"),
            Just("|c:abc"),
            Just("|T17"),
            Just("|"),
            Just("|@0.25|#t:2")
        ];
        (
            name,
            value,
            kind,
            proptest::collection::vec(component, 0..3),
        )
            .prop_map(|(name, value, kind, components)| {
                format!("{name}:{value}|{kind}{}", components.concat())
            })
    }

    proptest! {
        #[test]
        fn a_buffered_sketch_holds_what_one_by_one_adds_hold(
            observations in proptest::collection::vec(
                (prop_oneof![Just(12.0), Just(0.0), Just(-3.5), 1e-12..1e9f64], 1..4u32),
                0..100,
            ),
        ) {
            // Runs of equal values enter the sketch as one weighted add; the buckets, count,
            // extremes and sum must be those of adding every observation on its own.
            let mut buffered = BufferedSketch::new();
            let mut direct = Sketch::new();
            for (value, repeat) in &observations {
                for _ in 0..*repeat {
                    buffered.add(*value, 1);
                    direct.add(*value);
                }
            }
            let buffered = buffered.into_sketch();
            prop_assert_eq!(buffered.count(), direct.count());
            prop_assert_eq!(buffered.min(), direct.min());
            prop_assert_eq!(buffered.max(), direct.max());
            let tolerance = 1e-9 * direct.sum().abs().max(1.0);
            prop_assert!((buffered.sum() - direct.sum()).abs() <= tolerance);
            for quantile in [0.0, 0.1, 0.5, 0.9, 0.99, 1.0] {
                prop_assert_eq!(buffered.quantile(quantile), direct.quantile(quantile));
            }
            prop_assert_eq!(buffered.encode().len(), direct.encode().len());
        }

        #[test]
        fn the_fast_path_aggregates_as_the_general_parser_does(
            datagrams in proptest::collection::vec(
                proptest::collection::vec(
                    (statsd_line(), prop_oneof![Just("\n"), Just("\r\n"), Just("\n\n"), Just("")]),
                    1..12,
                ),
                1..6,
            ),
        ) {
            let mut fast = Aggregator::new(settings("[]"));
            let mut general = Aggregator::new(settings("[]"));
            let (mut fast_flusher, mut general_flusher) = (Flusher::new(), Flusher::new());
            for (sequence, lines) in datagrams.iter().enumerate() {
                // Lines end in `\n`, `\r\n`, an empty line or nothing (the last one).
                let datagram: String = lines
                    .iter()
                    .enumerate()
                    .map(|(index, (line, end))| {
                        let end = if end.is_empty() && index + 1 < lines.len() { "\n" } else { end };
                        format!("{line}{end}")
                    })
                    .collect();
                fast.ingest_datagram(datagram.as_bytes(), sequence as u64);
                general.ingest_datagram_general(datagram.as_bytes(), sequence as u64);
            }
            prop_assert_eq!(fast.take_stats(), general.take_stats());
            let fast_batch = flush_one(&mut fast, &mut fast_flusher, 10_000);
            let general_batch = flush_one(&mut general, &mut general_flusher, 10_000);
            prop_assert_eq!(rendered(&fast_batch), rendered(&general_batch));
        }
    }
}
