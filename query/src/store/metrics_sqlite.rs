//! The metric store: SQLite in WAL mode, samples in compressed chunks (one blob per series per
//! time block, see [`super::chunk`]), an in-memory head of recent samples, and sketches.
//!
//! Write path: a write appends one record to the `wal` table (one row per request, whatever its
//! size) in a transaction; when that commits the batch is acknowledged and its samples join the
//! in-memory head. A background flush cuts the head into chunks (raw, and the rollup levels) and
//! deletes the WAL rows it covered, in one transaction. On open, the WAL rows are replayed into
//! the head. A kill -9 therefore loses nothing that a write acknowledged.
//!
//! Read path: a selection copies the head samples of the matching series first, then reads
//! chunks; samples with equal timestamps are de-duplicated, so a flush racing the read can
//! neither hide nor double a sample.
//!
//! Rollup levels (1m and 1h by default) hold per bucket its count, min, max, sum, first and
//! last sample with their real timestamps, and the resets with their correction (see
//! [`super::buckets`], stored column by column). That keeps selectors, counters (`rate`,
//! `increase`, `delta`, `resets`), gauges and `count`/`min`/`max_over_time` right at the
//! level's resolution when the raw samples have aged out. Sketches are kept per flush and
//! merged per rollup bucket, so quantiles over any window stay within the sketch's error.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rusqlite::{params, Connection, OptionalExtension};
use vigil_model::{
    Bucket, LabelMatcher, Labels, MetricBatch, MetricMetadata, MetricReader, MetricSink,
    MetricType, ReadError, Sample, SelectHints, SeriesSamples, SeriesSketches, SinkError, Sketch,
};

use super::buckets::{
    bucket_end, buckets_from_samples, decode_bucket_statistics, decode_buckets, encode_buckets,
    merge_buckets, samples_of_buckets,
};
use super::chunk::{
    decode_chunk, encode_chunk, read_varint, unzigzag, write_varint, zigzag, ChunkDecodeError,
};
use super::index::{SeriesId, SeriesIndex};

/// One rollup level: samples thinned to the first and last of every `resolution` bucket, kept
/// for `retention`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RollupLevel {
    /// Bucket width.
    pub resolution: Duration,
    /// How long the level keeps data, measured back from the newest sample.
    pub retention: Duration,
}

/// Tunables of the metric store.
#[derive(Clone, Debug)]
pub struct MetricStoreOptions {
    /// How long raw samples are kept, measured back from the newest sample (as Prometheus does).
    pub raw_retention: Duration,
    /// Rollup levels, finest first.
    pub rollups: Vec<RollupLevel>,
    /// At most this many series per metric name; more are rejected.
    pub max_series_per_metric: usize,
    /// At most this many bytes per label name or value.
    pub max_label_bytes: usize,
    /// The head is cut into chunks when it holds this many samples (and on every flush tick).
    pub head_flush_samples: usize,
    /// At most this many threads read and decode the rollup buckets of one range query
    /// (one per core, at most 4, by default).
    pub bucket_read_threads: usize,
}

impl Default for MetricStoreOptions {
    fn default() -> Self {
        MetricStoreOptions {
            raw_retention: Duration::from_secs(2 * 86_400),
            rollups: vec![
                RollupLevel {
                    resolution: Duration::from_secs(60),
                    retention: Duration::from_secs(30 * 86_400),
                },
                RollupLevel {
                    resolution: Duration::from_secs(3_600),
                    retention: Duration::from_secs(365 * 86_400),
                },
            ],
            max_series_per_metric: 100_000,
            max_label_bytes: 4_096,
            head_flush_samples: 2_000_000,
            bucket_read_threads: std::thread::available_parallelism()
                .map_or(1, |cores| cores.get())
                .min(4),
        }
    }
}

/// The metric store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory cannot be created.
    #[error("cannot create data directory `{path}`: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("cannot open metric store `{path}`: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The WAL holds a record that cannot be read.
    #[error("metric store write-ahead record {record} is corrupt: {reason}")]
    CorruptWal {
        /// The record's sequence number.
        record: i64,
        /// What is wrong.
        reason: String,
    },
}

/// Sizes of the store, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricStoreStats {
    /// Float series.
    pub series: usize,
    /// Sketch series.
    pub sketch_series: usize,
    /// Samples in the in-memory head.
    pub head_samples: usize,
    /// Bytes of the database and its WAL on disk.
    pub disk_bytes: u64,
}

#[derive(Default)]
struct Head {
    samples: HashMap<SeriesId, Vec<Sample>>,
    total_samples: usize,
}

impl Head {
    fn append(&mut self, id: SeriesId, new_samples: &[Sample]) {
        let samples = self.samples.entry(id).or_default();
        for sample in new_samples {
            match samples.last() {
                Some(last) if last.timestamp_ms >= sample.timestamp_ms => {
                    let position =
                        samples.partition_point(|s| s.timestamp_ms < sample.timestamp_ms);
                    if samples
                        .get(position)
                        .is_some_and(|s| s.timestamp_ms == sample.timestamp_ms)
                    {
                        samples[position] = *sample;
                        continue;
                    }
                    samples.insert(position, *sample);
                }
                _ => samples.push(*sample),
            }
            self.total_samples += 1;
        }
    }
}

/// The SQLite metric store. Implements [`MetricSink`] and [`MetricReader`].
pub struct MetricStore {
    path: PathBuf,
    options: MetricStoreOptions,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    float_index: RwLock<SeriesIndex>,
    sketch_index: RwLock<SeriesIndex>,
    head: RwLock<Head>,
    newest_timestamp_ms: AtomicI64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,            -- 0 float samples, 1 sketches
    labels TEXT NOT NULL,
    UNIQUE (kind, labels)
);
CREATE TABLE IF NOT EXISTS chunks (
    series_id INTEGER NOT NULL,
    level INTEGER NOT NULL,           -- 0 raw, 1.. rollup levels
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (series_id, level, start_ms, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_end ON chunks (level, end_ms);
CREATE TABLE IF NOT EXISTS sketches (
    series_id INTEGER NOT NULL,
    level INTEGER NOT NULL,           -- 0 per flush, 1.. rollup levels (bucket end time)
    bucket_end_ms INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (series_id, level, bucket_end_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wal (
    seq INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS metadata (
    metric_name TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    help TEXT NOT NULL,
    unit TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS store_state (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// Raw samples are kept in chunks of at most two hours, as Prometheus' head blocks.
const RAW_BLOCK_MS: i64 = 2 * 3_600_000;
/// Rollup chunks hold 120 buckets (2 h at 1 m, 5 days at 1 h), so a window decodes little more
/// than it needs.
const ROLLUP_BLOCK_BUCKETS: i64 = 120;
const KIND_FLOAT: i64 = 0;
const KIND_SKETCH: i64 = 1;

fn storage_error(error: rusqlite::Error) -> SinkError {
    SinkError::Storage(error.to_string())
}

fn read_error(error: rusqlite::Error) -> ReadError {
    ReadError::Storage(error.to_string())
}

/// How many of at most `threads` threads read the buckets of `series` series: only as many as
/// selections big enough to repay a thread.
fn bucket_read_workers(threads: usize, series: usize) -> usize {
    const SERIES_PER_WORKER: usize = 64;
    threads.min(series / SERIES_PER_WORKER).max(1)
}

/// One level's buckets ending in `[first_end_ms, last_end_ms]`, read for a part of a selection.
struct BucketRead {
    level: usize,
    first_end_ms: i64,
    last_end_ms: i64,
}

impl BucketRead {
    fn visit_part(
        &self,
        connection: &Connection,
        part: &[(SeriesId, Labels)],
        head_buckets: &HashMap<SeriesId, Vec<Bucket>>,
        visit: &(dyn Fn(&Labels, &[Bucket]) + Sync),
    ) -> Result<(), ReadError> {
        let mut statement = connection
            .prepare_cached(
                "SELECT data FROM chunks WHERE series_id = ?1 AND level = ?2
                 AND start_ms <= ?4 AND end_ms >= ?3 ORDER BY start_ms, seq",
            )
            .map_err(read_error)?;
        // One buffer for every series: its memory is reused, not allocated per series.
        let mut stored: Vec<Bucket> = Vec::new();
        for (id, labels) in part {
            stored.clear();
            let window = params![id, self.level as i64, self.first_end_ms, self.last_end_ms];
            for_each_blob(&mut statement, window, |blob| {
                decode_bucket_statistics(blob, &mut stored)
                    .map_err(|error| ReadError::Storage(error.to_string()))
            })?;
            if let Some(recent) = head_buckets.get(id) {
                stored = merge_buckets(std::mem::take(&mut stored), recent);
            }
            let from = stored.partition_point(|bucket| bucket.end_ms < self.first_end_ms);
            let to = stored.partition_point(|bucket| bucket.end_ms <= self.last_end_ms);
            if from < to {
                visit(labels, &stored[from..to]);
            }
        }
        Ok(())
    }
}

/// Runs a query whose first column is a blob and hands each row's blob to `read`.
fn for_each_blob(
    statement: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
    mut read: impl FnMut(&[u8]) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let mut rows = statement.query(params).map_err(read_error)?;
    while let Some(row) = rows.next().map_err(read_error)? {
        let blob = row
            .get_ref(0)
            .and_then(|value| value.as_blob().map_err(Into::into))
            .map_err(read_error)?;
        read(blob)?;
    }
    Ok(())
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    // 16 KiB pages keep a chunk blob (a few KiB) inside its b-tree cell, so reading it needs
    // neither an overflow page chain nor a copy. Takes effect only when the file is created.
    connection.pragma_update(None, "page_size", 16_384)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode: a commit survives a crash of the process (kill -9); an OS crash may
    // lose the last transactions. See docs/ARCHITECTURE.md.
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "cache_size", -65_536)?;
    // Reads map the file instead of copying pages through pread.
    connection.pragma_update(None, "mmap_size", 1_i64 << 30)?;
    connection.busy_timeout(Duration::from_secs(10))?;
    Ok(connection)
}

/// The series a write creates, in creation order, with lookups by key and per metric so that
/// a batch of many new series is resolved in linear time.
#[derive(Default)]
struct NewSeries {
    list: Vec<(i64, SeriesId, Labels)>,
    ids: HashMap<(i64, String), SeriesId>,
    per_metric: HashMap<(i64, String), usize>,
}

/// What a chunk holds: raw samples (level 0) or rollup buckets (the other levels).
trait ChunkItem: Sized {
    /// The time that places the item in a block: a sample's timestamp, a bucket's end.
    fn time_ms(&self) -> i64;
    fn decode(blob: &[u8], out: &mut Vec<Self>) -> Result<(), ChunkDecodeError>;
    fn encode(items: &[Self]) -> Vec<u8>;
    /// Merges `newer` items (sorted) into `stored` (sorted).
    fn merge(stored: Vec<Self>, newer: &[Self]) -> Vec<Self>;
}

impl ChunkItem for Sample {
    fn time_ms(&self) -> i64 {
        self.timestamp_ms
    }

    fn decode(blob: &[u8], out: &mut Vec<Self>) -> Result<(), ChunkDecodeError> {
        decode_chunk(blob, out)
    }

    fn encode(items: &[Self]) -> Vec<u8> {
        encode_chunk(items)
    }

    /// New samples win on equal timestamps.
    fn merge(mut stored: Vec<Self>, newer: &[Self]) -> Vec<Self> {
        stored.extend_from_slice(newer);
        // Stable sort: for equal timestamps the newer sample (later in `stored`) stays last.
        stored.sort_by_key(|sample| sample.timestamp_ms);
        let mut deduplicated: Vec<Sample> = Vec::with_capacity(stored.len());
        for sample in stored {
            match deduplicated.last_mut() {
                Some(last) if last.timestamp_ms == sample.timestamp_ms => *last = sample,
                _ => deduplicated.push(sample),
            }
        }
        deduplicated
    }
}

impl ChunkItem for Bucket {
    fn time_ms(&self) -> i64 {
        self.end_ms
    }

    fn decode(blob: &[u8], out: &mut Vec<Self>) -> Result<(), ChunkDecodeError> {
        decode_buckets(blob, out)
    }

    fn encode(items: &[Self]) -> Vec<u8> {
        encode_buckets(items)
    }

    fn merge(stored: Vec<Self>, newer: &[Self]) -> Vec<Self> {
        merge_buckets(stored, newer)
    }
}

impl MetricStore {
    /// Opens (or creates) the store in `data_dir/metrics.db` and replays its write-ahead records.
    ///
    /// # Errors
    /// [`OpenError`] when the directory or database cannot be opened or the WAL is corrupt.
    pub fn open(data_dir: &Path, options: MetricStoreOptions) -> Result<Self, OpenError> {
        std::fs::create_dir_all(data_dir).map_err(|source| OpenError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join("metrics.db");
        let sqlite = |source| OpenError::Sqlite {
            path: path.clone(),
            source,
        };
        let writer = open_connection(&path).map_err(sqlite)?;
        writer.execute_batch(SCHEMA).map_err(sqlite)?;

        let mut float_index = SeriesIndex::default();
        let mut sketch_index = SeriesIndex::default();
        {
            let mut statement = writer
                .prepare("SELECT id, kind, labels FROM series")
                .map_err(sqlite)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                })
                .map_err(sqlite)?;
            for row in rows {
                let (id, kind, key) = row.map_err(sqlite)?;
                let labels = Labels::from_canonical_key(&key);
                if kind == KIND_SKETCH {
                    sketch_index.insert(id as SeriesId, labels);
                } else {
                    float_index.insert(id as SeriesId, labels);
                }
            }
        }
        let newest: Option<i64> = writer
            .query_row(
                "SELECT value FROM store_state WHERE key = 'newest_timestamp_ms'",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(sqlite)?;

        let store = MetricStore {
            path: path.clone(),
            options,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            float_index: RwLock::new(float_index),
            sketch_index: RwLock::new(sketch_index),
            head: RwLock::new(Head::default()),
            newest_timestamp_ms: AtomicI64::new(newest.unwrap_or(i64::MIN)),
        };
        store.replay_wal()?;
        Ok(store)
    }

    fn replay_wal(&self) -> Result<(), OpenError> {
        let writer = self.writer.lock();
        let sqlite = |source| OpenError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let mut statement = writer
            .prepare("SELECT seq, data FROM wal ORDER BY seq")
            .map_err(sqlite)?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
            })
            .map_err(sqlite)?;
        let mut head = self.head.write();
        for row in rows {
            let (seq, blob) = row.map_err(sqlite)?;
            let records = decode_wal_record(&blob).map_err(|reason| OpenError::CorruptWal {
                record: seq,
                reason,
            })?;
            for (id, samples) in records {
                if let Some(last) = samples.last() {
                    self.newest_timestamp_ms
                        .fetch_max(last.timestamp_ms, Ordering::Relaxed);
                }
                head.append(id, &samples);
            }
        }
        Ok(())
    }

    /// Returns sizes for `/metrics`.
    pub fn stats(&self) -> MetricStoreStats {
        let disk_bytes = ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| {
                let mut name = self.path.clone().into_os_string();
                name.push(suffix);
                std::fs::metadata(name).ok().map(|metadata| metadata.len())
            })
            .sum();
        MetricStoreStats {
            series: self.float_index.read().len(),
            sketch_series: self.sketch_index.read().len(),
            head_samples: self.head.read().total_samples,
            disk_bytes,
        }
    }

    fn resolve_series(
        &self,
        transaction: &rusqlite::Transaction<'_>,
        kind: i64,
        labels: &Labels,
        new_series: &mut NewSeries,
    ) -> Result<Option<SeriesId>, SinkError> {
        let key = labels.canonical_key();
        let index = if kind == KIND_SKETCH {
            &self.sketch_index
        } else {
            &self.float_index
        };
        if let Some(id) = index.read().id_of(&key) {
            return Ok(Some(id));
        }
        if let Some(id) = new_series.ids.get(&(kind, key.clone())) {
            return Ok(Some(*id));
        }
        if labels.iter().any(|label| {
            label.name.len() > self.options.max_label_bytes
                || label.value.len() > self.options.max_label_bytes
        }) {
            return Ok(None);
        }
        let metric_name = labels.metric_name().unwrap_or_default();
        let pending_of_metric = new_series
            .per_metric
            .get(&(kind, metric_name.to_string()))
            .copied()
            .unwrap_or(0);
        if index.read().series_count_of_metric(metric_name) + pending_of_metric
            >= self.options.max_series_per_metric
        {
            return Ok(None);
        }
        transaction
            .execute(
                "INSERT INTO series (kind, labels) VALUES (?1, ?2)",
                params![kind, key],
            )
            .map_err(storage_error)?;
        let id = transaction.last_insert_rowid() as SeriesId;
        new_series.ids.insert((kind, key), id);
        *new_series
            .per_metric
            .entry((kind, metric_name.to_string()))
            .or_insert(0) += 1;
        new_series.list.push((kind, id, labels.clone()));
        Ok(Some(id))
    }

    /// Cuts the head into chunks (raw and rollup levels) and drops the WAL rows it covered.
    /// Called by the background maintenance loop and on shutdown.
    ///
    /// # Errors
    /// [`SinkError::Storage`] when SQLite fails; the head and WAL are then left as they were.
    pub fn flush_head(&self) -> Result<usize, SinkError> {
        let mut writer = self.writer.lock();
        let snapshot: Vec<(SeriesId, Vec<Sample>)> = {
            let head = self.head.read();
            head.samples
                .iter()
                .filter(|(_, samples)| !samples.is_empty())
                .map(|(id, samples)| (*id, samples.clone()))
                .collect()
        };
        let flushed: usize = snapshot.iter().map(|(_, samples)| samples.len()).sum();
        let transaction = writer.transaction().map_err(storage_error)?;
        {
            for (id, samples) in &snapshot {
                self.merge_into_blocks(&transaction, *id, 0, samples)?;
                for (level_index, level) in self.options.rollups.iter().enumerate() {
                    let buckets =
                        buckets_from_samples(samples, level.resolution.as_millis() as i64);
                    self.merge_into_blocks(&transaction, *id, level_index + 1, &buckets)?;
                }
            }
            transaction
                .execute("DELETE FROM wal", [])
                .map_err(storage_error)?;
        }
        // The WAL is emptied under the writer lock, so no write can land between the snapshot
        // and the delete: every WAL record is in the snapshot.
        // Readers of buckets hold the head lock while they take their snapshot, so they see
        // either the chunks before this commit and the undrained head, or both after.
        let mut head = self.head.write();
        transaction.commit().map_err(storage_error)?;
        for (id, flushed_samples) in &snapshot {
            if let Some(samples) = head.samples.get_mut(id) {
                // Writes hold the writer lock too, so the head still holds exactly the snapshot.
                let count = flushed_samples.len().min(samples.len());
                samples.drain(..count);
                head.total_samples = head.total_samples.saturating_sub(count);
            }
        }
        head.samples.retain(|_, samples| !samples.is_empty());
        Ok(flushed)
    }

    /// Returns the time block of a level: one chunk per series holds at most one block, so a
    /// day of raw samples is 12 chunks, a day of minute buckets 12, a year of hourly ones 73.
    fn block_ms(&self, level: usize) -> i64 {
        match level
            .checked_sub(1)
            .and_then(|index| self.options.rollups.get(index))
        {
            None => RAW_BLOCK_MS,
            Some(rollup) => (rollup.resolution.as_millis() as i64)
                .saturating_mul(ROLLUP_BLOCK_BUCKETS)
                .max(1),
        }
    }

    /// Merges `items` (sorted by time) of one series into the chunk of each block they fall
    /// in, so every (series, level, block) keeps a single chunk.
    fn merge_into_blocks<T: ChunkItem>(
        &self,
        transaction: &rusqlite::Transaction<'_>,
        id: SeriesId,
        level: usize,
        items: &[T],
    ) -> Result<(), SinkError> {
        let block_ms = self.block_ms(level);
        let mut select = transaction
            .prepare_cached(
                "SELECT data FROM chunks WHERE series_id = ?1 AND level = ?2
                 AND start_ms >= ?3 AND start_ms < ?4 ORDER BY start_ms, seq",
            )
            .map_err(storage_error)?;
        let mut delete = transaction
            .prepare_cached(
                "DELETE FROM chunks WHERE series_id = ?1 AND level = ?2
                 AND start_ms >= ?3 AND start_ms < ?4",
            )
            .map_err(storage_error)?;
        let mut insert = transaction
            .prepare_cached(
                "INSERT INTO chunks (series_id, level, start_ms, end_ms, seq, data)
                 VALUES (?1, ?2, ?3, ?4, 0, ?5)",
            )
            .map_err(storage_error)?;
        let level_key = level as i64;
        let mut index = 0;
        while index < items.len() {
            let block_start = items[index].time_ms().div_euclid(block_ms) * block_ms;
            let block_end = block_start.saturating_add(block_ms);
            let part_end =
                index + items[index..].partition_point(|item| item.time_ms() < block_end);
            let part = &items[index..part_end];
            index = part_end;

            let mut stored: Vec<T> = Vec::new();
            let mut rows = select
                .query(params![id, level_key, block_start, block_end])
                .map_err(storage_error)?;
            while let Some(row) = rows.next().map_err(storage_error)? {
                let blob: Vec<u8> = row.get(0).map_err(storage_error)?;
                T::decode(&blob, &mut stored).map_err(|error| {
                    SinkError::Storage(format!("corrupt chunk of series {id}: {error}"))
                })?;
            }
            drop(rows);
            let had_chunks = !stored.is_empty();
            let merged = T::merge(stored, part);
            let (Some(first), Some(last)) = (merged.first(), merged.last()) else {
                continue;
            };
            if had_chunks {
                delete
                    .execute(params![id, level_key, block_start, block_end])
                    .map_err(storage_error)?;
            }
            insert
                .execute(params![
                    id,
                    level_key,
                    first.time_ms(),
                    last.time_ms(),
                    T::encode(&merged)
                ])
                .map_err(storage_error)?;
        }
        Ok(())
    }

    /// Deletes chunks and sketches older than each level's retention, measured back from the
    /// newest sample, and forgets series with no data left. Runs in small transactions so
    /// ingest never waits long.
    ///
    /// # Errors
    /// [`SinkError::Storage`] when SQLite fails.
    pub fn enforce_retention(&self) -> Result<usize, SinkError> {
        let newest = self.newest_timestamp_ms.load(Ordering::Relaxed);
        if newest == i64::MIN {
            return Ok(0);
        }
        let mut horizons =
            vec![newest.saturating_sub(self.options.raw_retention.as_millis() as i64)];
        for level in &self.options.rollups {
            horizons.push(newest.saturating_sub(level.retention.as_millis() as i64));
        }
        let mut deleted = 0;
        for (level, horizon) in horizons.iter().enumerate() {
            loop {
                let writer = self.writer.lock();
                let removed = writer
                    .execute(
                        "DELETE FROM chunks WHERE (series_id, level, start_ms, seq) IN
                           (SELECT series_id, level, start_ms, seq FROM chunks WHERE level = ?1 AND end_ms < ?2 LIMIT 5000)",
                        params![level as i64, horizon],
                    )
                    .map_err(storage_error)?;
                let removed_sketches = writer
                    .execute(
                        "DELETE FROM sketches WHERE (series_id, level, bucket_end_ms) IN
                           (SELECT series_id, level, bucket_end_ms FROM sketches WHERE level = ?1 AND bucket_end_ms < ?2 LIMIT 5000)",
                        params![level as i64, horizon],
                    )
                    .map_err(storage_error)?;
                drop(writer);
                deleted += removed + removed_sketches;
                if removed < 5000 && removed_sketches < 5000 {
                    break;
                }
            }
        }
        if deleted > 0 {
            self.forget_empty_series()?;
        }
        Ok(deleted)
    }

    fn forget_empty_series(&self) -> Result<(), SinkError> {
        let writer = self.writer.lock();
        let head = self.head.read();
        let mut statement = writer
            .prepare(
                "SELECT id, kind FROM series s WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.series_id = s.id)
                 AND NOT EXISTS (SELECT 1 FROM sketches k WHERE k.series_id = s.id)",
            )
            .map_err(storage_error)?;
        let empty: Vec<(i64, i64)> = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(storage_error)?
            .collect::<Result<_, _>>()
            .map_err(storage_error)?;
        for (id, kind) in empty {
            let id = id as SeriesId;
            if head.samples.contains_key(&id) {
                continue;
            }
            writer
                .execute("DELETE FROM series WHERE id = ?1", params![id])
                .map_err(storage_error)?;
            if kind == KIND_SKETCH {
                self.sketch_index.write().remove(id);
            } else {
                self.float_index.write().remove(id);
            }
        }
        Ok(())
    }

    fn with_reader<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        let connection = self.take_reader()?;
        let result = read(&connection);
        self.return_reader(connection);
        result
    }

    /// Takes a pooled reader connection, or opens one.
    fn take_reader(&self) -> Result<Connection, ReadError> {
        let pooled = self.readers.lock().pop();
        match pooled {
            Some(connection) => Ok(connection),
            None => open_connection(&self.path).map_err(read_error),
        }
    }

    /// Ends the read transactions of `connections` and returns them to the pool.
    fn end_reads(&self, connections: Vec<Connection>) {
        for connection in connections {
            let _ = connection.execute_batch("COMMIT");
            self.return_reader(connection);
        }
    }

    fn return_reader(&self, connection: Connection) {
        let mut readers = self.readers.lock();
        if readers.len() < 8 {
            readers.push(connection);
        }
    }

    /// Returns the coarsest level (0 raw, 1.. rollups) that gives the same answer as the raw
    /// samples: the caller needs only bucket edges and the windows are whole buckets.
    fn first_level_for(&self, hints: &SelectHints) -> usize {
        if !hints.first_last_suffice {
            return 0;
        }
        // Range windows are (start - 1, end]; a selector's lookback is [start, end].
        for (level_index, rollup) in self.options.rollups.iter().enumerate().rev() {
            let resolution = rollup.resolution.as_millis() as i64;
            if resolution > 0
                && ((hints.start_ms - 1).rem_euclid(resolution) == 0
                    || hints.start_ms.rem_euclid(resolution) == 0)
                && hints.end_ms.rem_euclid(resolution) == 0
                && hints.step_ms.rem_euclid(resolution) == 0
            {
                return level_index + 1;
            }
        }
        0
    }

    /// Returns the coarsest rollup level (1..) whose buckets tile every window of a range
    /// function: its resolution divides the step, the range and the window ends.
    fn bucket_level_for(&self, hints: &SelectHints) -> Option<usize> {
        for (level_index, rollup) in self.options.rollups.iter().enumerate().rev() {
            let resolution = rollup.resolution.as_millis() as i64;
            if resolution > 0
                && hints.range_ms >= resolution
                && hints.range_ms.rem_euclid(resolution) == 0
                && hints.end_ms.rem_euclid(resolution) == 0
                && hints.step_ms.rem_euclid(resolution) == 0
            {
                return Some(level_index + 1);
            }
        }
        None
    }

    /// Returns, per level (0 raw, 1.. rollups), the oldest timestamp the level still holds.
    fn horizons(&self) -> Vec<i64> {
        let newest = self.newest_timestamp_ms.load(Ordering::Relaxed);
        let mut horizons =
            vec![newest.saturating_sub(self.options.raw_retention.as_millis() as i64)];
        for level in &self.options.rollups {
            horizons.push(newest.saturating_sub(level.retention.as_millis() as i64));
        }
        horizons
    }
}

fn encode_wal_record(records: &[(SeriesId, &[Sample])]) -> Vec<u8> {
    let mut out = Vec::new();
    write_varint(&mut out, records.len() as u64);
    for (id, samples) in records {
        write_varint(&mut out, u64::from(*id));
        write_varint(&mut out, samples.len() as u64);
        for sample in *samples {
            write_varint(&mut out, zigzag(sample.timestamp_ms));
            out.extend_from_slice(&sample.value.to_bits().to_le_bytes());
        }
    }
    out
}

fn decode_wal_record(blob: &[u8]) -> Result<Vec<(SeriesId, Vec<Sample>)>, String> {
    let mut offset = 0;
    let count = read_varint(blob, &mut offset).map_err(|error| error.to_string())?;
    let mut records = Vec::new();
    for _ in 0..count {
        let id = read_varint(blob, &mut offset).map_err(|error| error.to_string())?;
        let sample_count = read_varint(blob, &mut offset).map_err(|error| error.to_string())?;
        if sample_count > blob.len() as u64 {
            return Err(format!("sample count {sample_count} exceeds the record"));
        }
        let mut samples = Vec::with_capacity(sample_count as usize);
        for _ in 0..sample_count {
            let timestamp_ms =
                unzigzag(read_varint(blob, &mut offset).map_err(|error| error.to_string())?);
            let bytes: [u8; 8] = blob
                .get(offset..offset + 8)
                .and_then(|slice| slice.try_into().ok())
                .ok_or_else(|| format!("truncated at byte {offset}"))?;
            offset += 8;
            samples.push(Sample {
                timestamp_ms,
                value: f64::from_bits(u64::from_le_bytes(bytes)),
            });
        }
        records.push((id as SeriesId, samples));
    }
    Ok(records)
}

/// Decodes a chunk of `level`: samples for raw chunks, and for rollup chunks the samples that
/// stand in for each bucket (first and newest).
fn decode_level_chunk(level: usize, blob: &[u8]) -> Result<Vec<Sample>, ReadError> {
    let mut samples = Vec::new();
    if level == 0 {
        decode_chunk(blob, &mut samples).map_err(|error| ReadError::Storage(error.to_string()))?;
        return Ok(samples);
    }
    let mut buckets = Vec::new();
    decode_buckets(blob, &mut buckets).map_err(|error| ReadError::Storage(error.to_string()))?;
    Ok(samples_of_buckets(&buckets))
}

impl MetricSink for MetricStore {
    fn write(&self, batch: MetricBatch) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer.lock();
        let transaction = writer.transaction().map_err(storage_error)?;
        let mut new_series = NewSeries::default();
        let mut rejected = 0usize;
        let mut records: Vec<(SeriesId, Vec<Sample>)> = Vec::with_capacity(batch.series.len());
        for series in &batch.series {
            if series.samples.is_empty() {
                continue;
            }
            match self.resolve_series(&transaction, KIND_FLOAT, &series.labels, &mut new_series)? {
                Some(id) => {
                    let mut samples = series.samples.clone();
                    samples.sort_by_key(|sample| sample.timestamp_ms);
                    records.push((id, samples));
                }
                None => rejected += 1,
            }
        }
        if !records.is_empty() {
            let borrowed: Vec<(SeriesId, &[Sample])> = records
                .iter()
                .map(|(id, samples)| (*id, samples.as_slice()))
                .collect();
            transaction
                .execute(
                    "INSERT INTO wal (data) VALUES (?1)",
                    params![encode_wal_record(&borrowed)],
                )
                .map_err(storage_error)?;
        }
        let mut newest = i64::MIN;
        for sketch in &batch.sketches {
            let Some(id) =
                self.resolve_series(&transaction, KIND_SKETCH, &sketch.labels, &mut new_series)?
            else {
                rejected += 1;
                continue;
            };
            newest = newest.max(sketch.timestamp_ms);
            transaction
                .execute(
                    "INSERT OR REPLACE INTO sketches (series_id, level, bucket_end_ms, data) VALUES (?1, 0, ?2, ?3)",
                    params![id, sketch.timestamp_ms, sketch.sketch.encode()],
                )
                .map_err(storage_error)?;
            for (level_index, level) in self.options.rollups.iter().enumerate() {
                let end = bucket_end(sketch.timestamp_ms, level.resolution.as_millis() as i64);
                let existing: Option<Vec<u8>> = transaction
                    .query_row(
                        "SELECT data FROM sketches WHERE series_id = ?1 AND level = ?2 AND bucket_end_ms = ?3",
                        params![id, (level_index + 1) as i64, end],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(storage_error)?;
                let mut merged = existing
                    .and_then(|blob| Sketch::decode(&blob).ok())
                    .unwrap_or_default();
                merged.merge(&sketch.sketch);
                transaction
                    .execute(
                        "INSERT OR REPLACE INTO sketches (series_id, level, bucket_end_ms, data) VALUES (?1, ?2, ?3, ?4)",
                        params![id, (level_index + 1) as i64, end, merged.encode()],
                    )
                    .map_err(storage_error)?;
            }
        }
        for metadata in &batch.metadata {
            let type_name = match metadata.metric_type {
                MetricType::Counter => "counter",
                MetricType::Gauge => "gauge",
                MetricType::Histogram => "histogram",
                MetricType::Summary => "summary",
                MetricType::Unknown => "unknown",
            };
            transaction
                .execute(
                    "INSERT OR REPLACE INTO metadata (metric_name, type, help, unit) VALUES (?1, ?2, ?3, ?4)",
                    params![metadata.metric_name, type_name, metadata.help, metadata.unit],
                )
                .map_err(storage_error)?;
        }
        for (_, samples) in &records {
            if let Some(last) = samples.last() {
                newest = newest.max(last.timestamp_ms);
            }
        }
        if newest > self.newest_timestamp_ms.load(Ordering::Relaxed) {
            transaction
                .execute(
                    "INSERT OR REPLACE INTO store_state (key, value) VALUES ('newest_timestamp_ms', ?1)",
                    params![newest],
                )
                .map_err(storage_error)?;
        }
        transaction.commit().map_err(storage_error)?;
        // Acknowledged from here on: publish the new series and samples to readers.
        for (kind, id, labels) in new_series.list {
            if kind == KIND_SKETCH {
                self.sketch_index.write().insert(id, labels);
            } else {
                self.float_index.write().insert(id, labels);
            }
        }
        self.newest_timestamp_ms
            .fetch_max(newest, Ordering::Relaxed);
        let head_samples = {
            let mut head = self.head.write();
            for (id, samples) in &records {
                head.append(*id, samples);
            }
            head.total_samples
        };
        drop(writer);
        if head_samples >= self.options.head_flush_samples {
            self.flush_head()?;
        }
        if rejected > 0 {
            return Err(SinkError::LimitExceeded {
                rejected,
                reason: format!(
                    "more than {} series for one metric name, or a label longer than {} bytes",
                    self.options.max_series_per_metric, self.options.max_label_bytes
                ),
            });
        }
        Ok(())
    }
}

impl MetricReader for MetricStore {
    fn select(
        &self,
        matchers: &[LabelMatcher],
        hints: &SelectHints,
    ) -> Result<Vec<SeriesSamples>, ReadError> {
        let selected: Vec<(SeriesId, Labels)> = {
            let index = self.float_index.read();
            index
                .select(matchers)
                .into_iter()
                .filter_map(|id| index.labels(id).map(|labels| (id, labels.clone())))
                .collect()
        };
        // Head first, then chunks: see the module documentation.
        let mut head_samples: HashMap<SeriesId, Vec<Sample>> = HashMap::new();
        {
            let head = self.head.read();
            for (id, _) in &selected {
                if let Some(samples) = head.samples.get(id) {
                    let in_window: Vec<Sample> = samples
                        .iter()
                        .filter(|sample| {
                            sample.timestamp_ms >= hints.start_ms
                                && sample.timestamp_ms <= hints.end_ms
                        })
                        .copied()
                        .collect();
                    if !in_window.is_empty() {
                        head_samples.insert(*id, in_window);
                    }
                }
            }
        }
        let horizons = self.horizons();
        let first_level = self.first_level_for(hints);
        self.with_reader(|connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT data FROM chunks WHERE series_id = ?1 AND level = ?2
                     AND start_ms <= ?4 AND end_ms >= ?3 ORDER BY start_ms, seq",
                )
                .map_err(read_error)?;
            let mut out = Vec::with_capacity(selected.len());
            for (id, labels) in selected {
                let mut samples: Vec<Sample> = Vec::new();
                // Level 0 covers [horizon0, end]; level k covers [horizon_k, horizon_{k-1}).
                let mut upper = hints.end_ms;
                for (level, horizon) in horizons.iter().enumerate().skip(first_level) {
                    let lower = hints.start_ms.max(*horizon);
                    if lower <= upper {
                        let window = params![id, level as i64, lower, upper];
                        for_each_blob(&mut statement, window, |blob| {
                            let decoded = decode_level_chunk(level, blob)?;
                            samples.extend(decoded.into_iter().filter(|sample| {
                                sample.timestamp_ms >= lower && sample.timestamp_ms <= upper
                            }));
                            Ok(())
                        })?;
                    }
                    if *horizon <= hints.start_ms {
                        break;
                    }
                    upper = upper.min(horizon.saturating_sub(1));
                }
                if let Some(head) = head_samples.remove(&id) {
                    samples.extend(head);
                }
                if samples.is_empty() {
                    continue;
                }
                // Stable sort keeps the later write of a duplicated timestamp last; keep it.
                samples.sort_by_key(|sample| sample.timestamp_ms);
                let mut deduplicated: Vec<Sample> = Vec::with_capacity(samples.len());
                for sample in samples {
                    match deduplicated.last_mut() {
                        Some(last) if last.timestamp_ms == sample.timestamp_ms => *last = sample,
                        _ => deduplicated.push(sample),
                    }
                }
                out.push(SeriesSamples {
                    labels,
                    samples: deduplicated,
                });
            }
            Ok(out)
        })
    }

    fn visit_buckets(
        &self,
        matchers: &[LabelMatcher],
        hints: &SelectHints,
        visit: &(dyn Fn(&Labels, &[Bucket]) + Sync),
    ) -> Result<Option<i64>, ReadError> {
        let Some(level) = self.bucket_level_for(hints) else {
            return Ok(None);
        };
        let resolution = self.options.rollups[level - 1].resolution.as_millis() as i64;
        let selected: Vec<(SeriesId, Labels)> = {
            let index = self.float_index.read();
            index
                .select(matchers)
                .into_iter()
                .filter_map(|id| index.labels(id).map(|labels| (id, labels.clone())))
                .collect()
        };
        let read = BucketRead {
            level,
            first_end_ms: hints.start_ms,
            last_end_ms: hints.end_ms,
        };
        // Series are split among a few reader threads, each with its own connection: reading
        // and decoding the buckets is most of a range query's time.
        let workers = bucket_read_workers(self.options.bucket_read_threads, selected.len());
        let mut connections = Vec::with_capacity(workers);
        for _ in 0..workers {
            connections.push(self.take_reader()?);
        }
        // Every connection takes its SQLite snapshot, and the head is copied, under the head
        // lock: a flush commits and drains the head under the same lock, so no sample is
        // counted twice or missed.
        let snapshot = (|| {
            let head = self.head.read();
            for connection in &connections {
                connection.execute_batch("BEGIN").map_err(read_error)?;
                connection
                    .query_row("SELECT COUNT(*) FROM store_state", [], |row| {
                        row.get::<_, i64>(0)
                    })
                    .map_err(read_error)?;
            }
            Ok::<_, ReadError>(
                selected
                    .iter()
                    .filter_map(|(id, _)| {
                        head.samples
                            .get(id)
                            .map(|samples| (*id, buckets_from_samples(samples, resolution)))
                    })
                    .collect::<HashMap<SeriesId, Vec<Bucket>>>(),
            )
        })();
        let head_buckets = match snapshot {
            Ok(head_buckets) => head_buckets,
            Err(error) => {
                self.end_reads(connections);
                return Err(error);
            }
        };
        let per_worker = selected.len().div_ceil(workers).max(1);
        let (result, connections) = std::thread::scope(|scope| {
            let mut parts = selected.chunks(per_worker);
            let mut connections = connections.into_iter();
            let own = connections.next();
            let own_part = parts.next().unwrap_or_default();
            let mut helpers = Vec::new();
            let mut result = Ok(());
            for (connection, part) in connections.zip(parts) {
                let (head_buckets, read) = (&head_buckets, &read);
                let spawned = std::thread::Builder::new()
                    .name("vigil-bucket-read".to_owned())
                    .spawn_scoped(scope, move || {
                        let result = read.visit_part(&connection, part, head_buckets, visit);
                        (connection, result)
                    });
                match spawned {
                    Ok(handle) => helpers.push(handle),
                    Err(error) => result = Err(ReadError::Storage(error.to_string())),
                }
            }
            let mut returned = Vec::with_capacity(workers);
            if let Some(connection) = own {
                if result.is_ok() {
                    result = read.visit_part(&connection, own_part, &head_buckets, visit);
                }
                returned.push(connection);
            }
            for handle in helpers {
                match handle.join() {
                    Ok((connection, part_result)) => {
                        returned.push(connection);
                        result = result.and(part_result);
                    }
                    Err(_) => {
                        result = result.and(Err(ReadError::Storage(
                            "a bucket reader thread panicked".to_owned(),
                        )));
                    }
                }
            }
            (result, returned)
        });
        self.end_reads(connections);
        result.map(|()| Some(resolution))
    }

    fn select_sketches(
        &self,
        matchers: &[LabelMatcher],
        hints: &SelectHints,
    ) -> Result<Vec<SeriesSketches>, ReadError> {
        let selected: Vec<(SeriesId, Labels)> = {
            let index = self.sketch_index.read();
            index
                .select(matchers)
                .into_iter()
                .filter_map(|id| index.labels(id).map(|labels| (id, labels.clone())))
                .collect()
        };
        // The window is (start, end]. Use the coarsest level whose buckets tile it exactly and
        // whose data reaches back far enough; else the per-flush sketches.
        let horizons = self.horizons();
        let window_start = hints.start_ms;
        let mut level = 0usize;
        for (level_index, rollup) in self.options.rollups.iter().enumerate().rev() {
            let resolution = rollup.resolution.as_millis() as i64;
            if resolution > 0
                && window_start.rem_euclid(resolution) == 0
                && hints.end_ms.rem_euclid(resolution) == 0
                && horizons
                    .get(level_index + 1)
                    .is_some_and(|horizon| *horizon <= window_start)
            {
                level = level_index + 1;
                break;
            }
        }
        self.with_reader(|connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT bucket_end_ms, data FROM sketches WHERE series_id = ?1 AND level = ?2
                     AND bucket_end_ms > ?3 AND bucket_end_ms <= ?4 ORDER BY bucket_end_ms",
                )
                .map_err(read_error)?;
            let mut out = Vec::new();
            for (id, labels) in selected {
                let mut sketches = Vec::new();
                let mut rows = statement
                    .query(params![id, level as i64, window_start, hints.end_ms])
                    .map_err(read_error)?;
                while let Some(row) = rows.next().map_err(read_error)? {
                    let end: i64 = row.get(0).map_err(read_error)?;
                    let blob: Vec<u8> = row.get(1).map_err(read_error)?;
                    let sketch = Sketch::decode(&blob)
                        .map_err(|error| ReadError::Storage(error.to_string()))?;
                    sketches.push((end, Arc::new(sketch)));
                }
                if !sketches.is_empty() {
                    out.push(SeriesSketches { labels, sketches });
                }
            }
            Ok(out)
        })
    }

    fn series(
        &self,
        selectors: &[Vec<LabelMatcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Labels>, ReadError> {
        let hints = SelectHints {
            start_ms,
            end_ms,
            step_ms: 0,
            range_ms: 0,
            first_last_suffice: false,
        };
        let mut seen: BTreeMap<String, Labels> = BTreeMap::new();
        for matchers in selectors {
            for series in self.select(matchers, &hints)? {
                seen.insert(series.labels.canonical_key(), series.labels);
            }
        }
        Ok(seen.into_values().collect())
    }

    fn metadata(&self) -> Result<Vec<MetricMetadata>, ReadError> {
        self.with_reader(|connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT metric_name, type, help, unit FROM metadata ORDER BY metric_name",
                )
                .map_err(read_error)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                })
                .map_err(read_error)?;
            let mut out = Vec::new();
            for row in rows {
                let (metric_name, type_name, help, unit) = row.map_err(read_error)?;
                let metric_type = match type_name.as_str() {
                    "counter" => MetricType::Counter,
                    "gauge" => MetricType::Gauge,
                    "histogram" => MetricType::Histogram,
                    "summary" => MetricType::Summary,
                    _ => MetricType::Unknown,
                };
                out.push(MetricMetadata {
                    metric_name,
                    metric_type,
                    help,
                    unit,
                });
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests;
