//! The span store: time-partitioned SQLite files under `<data_dir>/traces/`.
//!
//! Each partition (`spans-<created ms>.db`) holds the spans written while it was the newest
//! ("head") partition. Writes go only to the head, one transaction per [`SpanSink::write`]
//! call, so a write never touches more than one file and retention drops whole files without
//! touching the write path. A new head starts every `partition_duration` (and early when the
//! head grows past a share of `retention_size`).
//!
//! Tables of a partition (see docs/TRACES.md for why):
//! - `chunks(id, trace_id, body)`: the spans of one trace written by one call, postcard
//!   encoded ([`crate::codec`]), appended in rowid order; indexed by `trace_id` (one index entry
//!   per trace per call, not per span).
//! - `span_groups(service_id, chunk_id, start_ns, trace_id, spans)`: clustered (WITHOUT ROWID)
//!   index rows, one per chunk and service, keyed in write order; `start_ns` is the latest
//!   start of the row and `spans` packs each span's operation, start, duration, error flag,
//!   span and parent IDs ([`crate::codec::IndexedSpan`]), so service/operation/time searches,
//!   duration filters and the dependency graph read the index alone. Keys grow with every
//!   write per service, so inserts land at the right edge of the B-tree however far apart the
//!   starts of the spans in one export are.
//! - `span_blocks(service_id, first_chunk_id, last_chunk_id, min_start_ns, max_start_ns)`: the
//!   range of span starts in each run of [`BLOCK_ROWS`] consecutive `span_groups` rows of a
//!   service, so a time window reads only the runs that can hold spans started inside it.
//! - `correlation(value, trace_id)`: one row per trace and correlation value (request ID…),
//!   from the configured span attributes.
//! - `services`, `operations`: name dictionaries; `meta`: first and last span start.
//!
//! Durability: WAL with `synchronous=NORMAL`: a committed write survives a kill of the process
//! (not a power loss). Checkpoints run on a background thread, not in the write path.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;
use vigil_model::{Span, SpanSink, SpanSinkError, StatusCode};

use crate::codec::{
    decode_chunk, decode_correlation_values, encode_chunk, encode_correlation_values,
    encode_span_index, DecodeError, IndexedSpan,
};

/// Spans per chunk at most (an index entry names its span by a `u16` position).
const MAX_SPANS_PER_CHUNK: usize = 4_096;
/// `span_groups` rows one `span_blocks` row covers at most.
const BLOCK_ROWS: i64 = 512;
/// Spans one group commit takes at most (more wait for the next).
const MAX_GROUP_SPANS: usize = 16_384;
/// Reader connections kept per partition.
const MAX_IDLE_READERS: usize = 8;
/// Entries (chunks and correlation values) the head keeps in its [`RecentIndex`] before they
/// are merged into `trace_index` and `correlation` in one sorted pass.
const RECENT_INDEX_ENTRIES: usize = 131_072;
/// How often the background thread checkpoints the head's WAL.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// WAL size past which a checkpoint finishes under the writer lock, and to which an idle WAL
/// file is truncated.
const WAL_RESET_BYTES: u64 = 64 << 20;

/// The layout version of a partition file (`PRAGMA user_version`).
const PARTITION_FORMAT: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    trace_id BLOB NOT NULL,
    correlation BLOB,
    body_offset INTEGER NOT NULL,
    body_length INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS trace_index (
    trace_id BLOB NOT NULL,
    chunk_id INTEGER NOT NULL,
    PRIMARY KEY (trace_id, chunk_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS services (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY,
    service_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    UNIQUE (service_id, name)
);
CREATE TABLE IF NOT EXISTS span_groups (
    service_id INTEGER NOT NULL,
    chunk_id INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    trace_id BLOB NOT NULL,
    spans BLOB NOT NULL,
    PRIMARY KEY (service_id, chunk_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS span_blocks (
    service_id INTEGER NOT NULL,
    first_chunk_id INTEGER NOT NULL,
    last_chunk_id INTEGER NOT NULL,
    min_start_ns INTEGER NOT NULL,
    max_start_ns INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    PRIMARY KEY (service_id, first_chunk_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS correlation (
    value TEXT NOT NULL,
    trace_id BLOB NOT NULL,
    PRIMARY KEY (value, trace_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Options of a [`SpanStore`].
#[derive(Clone, Debug)]
pub struct SpanStoreOptions {
    /// Partitions whose newest span was written longer ago than this are dropped.
    pub retention: Duration,
    /// Total bytes on disk above which the oldest partitions are dropped; 0 = no limit.
    pub retention_size: u64,
    /// Span attributes whose values are correlation IDs.
    pub correlation_attributes: Vec<String>,
    /// A new partition starts after this long.
    pub partition_duration: Duration,
    /// SQLite page cache of the writer, KiB.
    pub cache_kib: i64,
    /// Trace-ID and correlation index entries the head keeps in memory before merging them
    /// into its file (see [`RecentIndex`]).
    pub recent_index_entries: usize,
}

impl Default for SpanStoreOptions {
    fn default() -> Self {
        SpanStoreOptions {
            retention: Duration::from_secs(7 * 86_400),
            retention_size: 0,
            correlation_attributes: vec![
                "correlation_id".to_string(),
                "request_id".to_string(),
                "uuid".to_string(),
            ],
            partition_duration: Duration::from_secs(86_400),
            // Small on purpose: SQLite walks the whole page cache at every commit
            // (`pcache1Truncate`), and what a write touches besides the recent-index merge is the
            // right edge of a few B-trees.
            cache_kib: 16_384,
            recent_index_entries: RECENT_INDEX_ENTRIES,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory could not be created, read or removed.
    #[error("span store I/O on `{path}`: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("span store SQLite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A partition file could not be opened.
    #[error("failed to open span partition `{path}`: {source}")]
    Open {
        /// The partition file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A stored chunk did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A chunk did not encode.
    #[error("span chunk does not encode: {0}")]
    Encode(#[from] postcard::Error),
}

/// The trace-ID and correlation index entries of a partition's newest chunks, kept in memory
/// instead of in `trace_index` and `correlation`: trace IDs and request IDs are random, so each
/// entry inserted one write at a time dirties a page of its own at a random place of those
/// B-trees, and every dirty page is written whole to the WAL and again at the checkpoint. Held
/// here, entries are merged in key order every [`RECENT_INDEX_ENTRIES`], touching each page once.
/// Not lost by a crash: the chunks past `meta.indexed_chunk_id` carry their trace ID and
/// correlation values, and opening the partition indexes them.
#[derive(Debug, Default)]
pub(crate) struct RecentIndex {
    chunks_by_trace: HashMap<[u8; 16], Vec<i64>>,
    traces_by_value: HashMap<String, Vec<[u8; 16]>>,
    entries: usize,
}

impl RecentIndex {
    fn add_chunk(&mut self, trace_id: [u8; 16], chunk_id: i64) {
        self.chunks_by_trace
            .entry(trace_id)
            .or_default()
            .push(chunk_id);
        self.entries += 1;
    }

    fn add_value(&mut self, value: String, trace_id: [u8; 16]) {
        let traces = self.traces_by_value.entry(value).or_default();
        if !traces.contains(&trace_id) {
            traces.push(trace_id);
            self.entries += 1;
        }
    }
}

/// One partition file.
pub(crate) struct Partition {
    /// Creation time, ms since the epoch; also the name of the file.
    pub(crate) created_ms: i64,
    path: PathBuf,
    /// Earliest and latest span start stored, ns (`i64::MAX`/`i64::MIN` when empty).
    min_start_ns: AtomicI64,
    max_start_ns: AtomicI64,
    readers: Mutex<Vec<Connection>>,
    /// Index entries not yet merged into the file's indexes (only the head's grow).
    recent: RwLock<RecentIndex>,
    /// The chunk bodies file, opened for reading on first use.
    bodies: std::sync::OnceLock<File>,
}

impl Partition {
    fn new(created_ms: i64, path: PathBuf, min_start_ns: i64, max_start_ns: i64) -> Partition {
        Partition {
            created_ms,
            path,
            min_start_ns: AtomicI64::new(min_start_ns),
            max_start_ns: AtomicI64::new(max_start_ns),
            readers: Mutex::new(Vec::new()),
            recent: RwLock::new(RecentIndex::default()),
            bodies: std::sync::OnceLock::new(),
        }
    }

    /// The file of the chunk bodies: `<partition file>.bodies`.
    fn bodies_path(&self) -> PathBuf {
        let mut text = self.path.as_os_str().to_owned();
        text.push(".bodies");
        PathBuf::from(text)
    }

    fn bodies_error(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.bodies_path(),
            source,
        }
    }

    fn bodies_file(&self) -> Result<&File, StoreError> {
        if let Some(file) = self.bodies.get() {
            return Ok(file);
        }
        let opened = File::open(self.bodies_path()).map_err(|error| self.bodies_error(error))?;
        Ok(self.bodies.get_or_init(|| opened))
    }

    /// Reads `length` bytes of chunk bodies at `offset`.
    pub(crate) fn read_body(&self, offset: u64, length: usize) -> Result<Vec<u8>, StoreError> {
        let mut body = vec![0u8; length];
        self.bodies_file()?
            .read_exact_at(&mut body, offset)
            .map_err(|error| self.bodies_error(error))?;
        Ok(body)
    }

    /// Flushes the chunk bodies to disk, so a checkpoint does not move rows naming bodies
    /// that a power loss could still take back into the file.
    fn sync_bodies(&self) -> Result<(), StoreError> {
        self.bodies_file()?
            .sync_data()
            .map_err(|error| self.bodies_error(error))
    }

    /// Returns the chunks of `trace_id` not yet in `trace_index`. Read before the file, so an
    /// entry merged meanwhile is found in the file.
    pub(crate) fn recent_chunks(&self, trace_id: &[u8; 16]) -> Vec<i64> {
        self.recent
            .read()
            .chunks_by_trace
            .get(trace_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Returns the traces carrying the correlation `value` not yet in `correlation`.
    pub(crate) fn recent_traces_with_value(&self, value: &str) -> Vec<[u8; 16]> {
        self.recent
            .read()
            .traces_by_value
            .get(value)
            .cloned()
            .unwrap_or_default()
    }

    /// Whether spans starting in `[start_ns, end_ns]` may be here.
    pub(crate) fn overlaps(&self, start_ns: i64, end_ns: i64) -> bool {
        let min = self.min_start_ns.load(Ordering::Relaxed);
        let max = self.max_start_ns.load(Ordering::Relaxed);
        min <= end_ns && max >= start_ns
    }

    /// Runs `work` on a pooled read connection.
    pub(crate) fn read<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().pop();
        let connection = match pooled {
            Some(connection) => connection,
            None => open_reader(&self.path)?,
        };
        let outcome = work(&connection);
        let mut readers = self.readers.lock();
        if readers.len() < MAX_IDLE_READERS {
            readers.push(connection);
        }
        outcome
    }

    fn files(&self) -> [PathBuf; 4] {
        let text = self.path.as_os_str().to_owned();
        let mut wal = text.clone();
        wal.push("-wal");
        let mut shm = text;
        shm.push("-shm");
        [
            self.path.clone(),
            PathBuf::from(wal),
            PathBuf::from(shm),
            self.bodies_path(),
        ]
    }

    fn disk_bytes(&self) -> u64 {
        self.files()
            .iter()
            .filter_map(|path| std::fs::metadata(path).ok())
            .map(|metadata| metadata.len())
            .sum()
    }
}

/// The writer of the head partition, with its name dictionaries.
struct Writer {
    partition: Arc<Partition>,
    connection: Connection,
    /// The head's chunk bodies, appended before the transaction naming them commits (so a
    /// crash in between leaves unnamed bytes at the end, never a name without its bytes).
    bodies: File,
    /// Bytes in `bodies`: where the next write appends.
    bodies_length: u64,
    services: HashMap<String, i64>,
    /// Operation IDs by service ID and name.
    operations: HashMap<i64, HashMap<String, i64>>,
    /// The `span_blocks` row each service's next `span_groups` rows extend.
    blocks: HashMap<i64, SpanBlock>,
}

/// A run of consecutive `span_groups` rows of one service and the range of span starts in it
/// (a `span_blocks` row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SpanBlock {
    pub(crate) first_chunk_id: i64,
    pub(crate) last_chunk_id: i64,
    pub(crate) min_start_ns: i64,
    pub(crate) max_start_ns: i64,
    rows: i64,
}

impl SpanBlock {
    fn new(chunk_id: i64) -> SpanBlock {
        SpanBlock {
            first_chunk_id: chunk_id,
            last_chunk_id: chunk_id,
            min_start_ns: i64::MAX,
            max_start_ns: i64::MIN,
            rows: 0,
        }
    }

    /// Reads the block from the five `span_blocks` columns starting at `first` (in table order).
    fn from_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<SpanBlock> {
        Ok(SpanBlock {
            first_chunk_id: row.get(first)?,
            last_chunk_id: row.get(first + 1)?,
            min_start_ns: row.get(first + 2)?,
            max_start_ns: row.get(first + 3)?,
            rows: row.get(first + 4)?,
        })
    }

    fn add(&mut self, chunk_id: i64, min_start_ns: i64, max_start_ns: i64) {
        self.last_chunk_id = chunk_id;
        self.min_start_ns = self.min_start_ns.min(min_start_ns);
        self.max_start_ns = self.max_start_ns.max(max_start_ns);
        self.rows += 1;
    }
}

/// Returns the blocks of `service_id` that may hold spans started in `[start_ns, end_ns]`,
/// latest `max_start_ns` first.
pub(crate) fn service_blocks(
    connection: &Connection,
    service_id: i64,
    start_ns: i64,
    end_ns: i64,
) -> Result<Vec<SpanBlock>, StoreError> {
    let mut statement = connection.prepare_cached(
        "SELECT first_chunk_id, last_chunk_id, min_start_ns, max_start_ns, rows FROM span_blocks \
         WHERE service_id = ?1 AND max_start_ns >= ?2 AND min_start_ns <= ?3",
    )?;
    let rows = statement.query_map(params![service_id, start_ns, end_ns], |row| {
        SpanBlock::from_row(row, 0)
    })?;
    let mut blocks = rows.collect::<Result<Vec<_>, _>>()?;
    blocks.sort_unstable_by_key(|block| std::cmp::Reverse(block.max_start_ns));
    Ok(blocks)
}

/// The span store. Implements [`SpanSink`]; queries are in [`crate::query`].
pub struct SpanStore {
    directory: PathBuf,
    options: SpanStoreOptions,
    /// Oldest first; the last is the head.
    partitions: RwLock<Vec<Arc<Partition>>>,
    writer: Mutex<Writer>,
    queue: Mutex<CommitQueue>,
    committed: Condvar,
    stopping: Arc<AtomicBool>,
    /// Group commits run, and the write calls (batches) they carried.
    group_commits: AtomicU64,
    grouped_batches: AtomicU64,
}

impl std::fmt::Debug for SpanStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SpanStore")
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

fn configure(connection: &Connection, cache_kib: i64) -> rusqlite::Result<()> {
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "cache_size", -cache_kib)?;
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    connection.pragma_update(None, "mmap_size", 1_i64 << 30)?;
    connection.busy_timeout(Duration::from_secs(5))?;
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let open = || -> rusqlite::Result<Connection> {
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.pragma_update(None, "query_only", true)?;
        connection.pragma_update(None, "cache_size", -8_192)?;
        connection.pragma_update(None, "mmap_size", 1_i64 << 30)?;
        Ok(connection)
    };
    open().map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })
}

fn open_writer(path: &Path, cache_kib: i64) -> Result<Connection, StoreError> {
    let open = || -> rusqlite::Result<Connection> {
        let connection = Connection::open(path)?;
        configure(&connection, cache_kib)?;
        // Checkpoints run on the background thread.
        connection.pragma_update(None, "wal_autocheckpoint", 0)?;
        connection.pragma_update(None, "journal_size_limit", WAL_RESET_BYTES as i64)?;
        connection.execute_batch(SCHEMA)?;
        connection.pragma_update(None, "user_version", PARTITION_FORMAT)?;
        Ok(connection)
    };
    open().map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether the file at `path` is a partition of an older layout (written before
/// [`PARTITION_FORMAT`]): a file with tables but another `user_version`.
fn is_older_partition(path: &Path) -> Result<bool, StoreError> {
    let inspect = || -> rusqlite::Result<bool> {
        // Read-write, so a WAL left by a killed process is recovered before reading.
        let connection = Connection::open(path)?;
        connection.busy_timeout(Duration::from_secs(5))?;
        let format: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        let tables: i64 =
            connection.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))?;
        Ok(format != PARTITION_FORMAT && tables > 0)
    };
    inspect().map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes index entries into `trace_index` and `correlation` in key order (so each page of
/// those B-trees is written once however many entries land on it) and records that the chunks
/// up to `indexed_chunk_id` are indexed, in one transaction.
fn merge_index_entries(
    connection: &Connection,
    mut chunks: Vec<([u8; 16], i64)>,
    mut values: Vec<(String, [u8; 16])>,
    indexed_chunk_id: i64,
) -> Result<(), StoreError> {
    chunks.sort_unstable();
    values.sort_unstable();
    let transaction = connection.unchecked_transaction()?;
    {
        let mut insert_chunk = transaction.prepare_cached(
            "INSERT OR IGNORE INTO trace_index (trace_id, chunk_id) VALUES (?1, ?2)",
        )?;
        for (trace_id, chunk_id) in &chunks {
            insert_chunk.execute(params![&trace_id[..], chunk_id])?;
        }
        let mut insert_value = transaction.prepare_cached(
            "INSERT OR IGNORE INTO correlation (value, trace_id) VALUES (?1, ?2)",
        )?;
        for (value, trace_id) in &values {
            insert_value.execute(params![value, &trace_id[..]])?;
        }
        transaction
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('indexed_chunk_id', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute([indexed_chunk_id])?;
    }
    transaction.commit()?;
    Ok(())
}

/// Indexes the chunks written after the last merge: the recent index of a process that
/// stopped (or was killed) before merging it.
fn index_unindexed_chunks(connection: &Connection) -> Result<(), StoreError> {
    let indexed_chunk_id: i64 = connection
        .query_row(
            "SELECT value FROM meta WHERE key = 'indexed_chunk_id'",
            [],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let mut chunks = Vec::new();
    let mut values = Vec::new();
    let mut last_chunk_id = indexed_chunk_id;
    {
        let mut statement =
            connection.prepare("SELECT id, trace_id, correlation FROM chunks WHERE id > ?1")?;
        let mut rows = statement.query([indexed_chunk_id])?;
        while let Some(row) = rows.next()? {
            let chunk_id: i64 = row.get(0)?;
            last_chunk_id = chunk_id;
            let trace: Vec<u8> = row.get(1)?;
            let Ok(trace_id) = <[u8; 16]>::try_from(trace.as_slice()) else {
                continue;
            };
            chunks.push((trace_id, chunk_id));
            let Some(encoded) = row.get::<_, Option<Vec<u8>>>(2)? else {
                continue;
            };
            match decode_correlation_values(&encoded) {
                Ok(decoded) => values.extend(decoded.into_iter().map(|value| (value, trace_id))),
                Err(error) => {
                    tracing::warn!(%error, chunk_id, "correlation values of a span chunk do not decode")
                }
            }
        }
    }
    if last_chunk_id == indexed_chunk_id {
        return Ok(());
    }
    tracing::info!(
        chunks = chunks.len(),
        "indexing span chunks written before the last stop"
    );
    merge_index_entries(connection, chunks, values, last_chunk_id)
}

fn read_meta(connection: &Connection) -> rusqlite::Result<(i64, i64)> {
    let get = |key: &str, default: i64| -> rusqlite::Result<i64> {
        Ok(connection
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?
            .unwrap_or(default))
    };
    Ok((
        get("min_start_ns", i64::MAX)?,
        get("max_start_ns", i64::MIN)?,
    ))
}

fn partition_path(directory: &Path, created_ms: i64) -> PathBuf {
    directory.join(format!("spans-{created_ms:013}.db"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl SpanStore {
    /// Opens (or creates) the store in `directory`: every partition file found there, the
    /// newest as head (SQLite recovers each file's WAL). Starts the checkpoint thread.
    ///
    /// # Errors
    /// [`StoreError`] when the directory or a partition cannot be opened.
    pub fn open(directory: &Path, options: SpanStoreOptions) -> Result<Arc<SpanStore>, StoreError> {
        std::fs::create_dir_all(directory).map_err(|source| StoreError::Io {
            path: directory.to_path_buf(),
            source,
        })?;
        let listing = std::fs::read_dir(directory).map_err(|source| StoreError::Io {
            path: directory.to_path_buf(),
            source,
        })?;
        let mut created: Vec<i64> = Vec::new();
        for entry in listing.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name
                .strip_prefix("spans-")
                .and_then(|rest| rest.strip_suffix(".db"))
            else {
                continue;
            };
            if let Ok(created_ms) = stem.parse::<i64>() {
                created.push(created_ms);
            }
        }
        created.sort_unstable();
        let mut partitions = Vec::with_capacity(created.len());
        for created_ms in &created {
            let path = partition_path(directory, *created_ms);
            if is_older_partition(&path)? {
                tracing::warn!(
                    path = %path.display(),
                    "span partition written by an older Vigil in another layout: not read; delete it to free its space"
                );
                continue;
            }
            // Opening read-write once recovers the WAL and creates the schema if needed.
            let connection = open_writer(&path, 2_048)?;
            index_unindexed_chunks(&connection)?;
            let (min_start_ns, max_start_ns) = read_meta(&connection)?;
            drop(connection);
            partitions.push(Arc::new(Partition::new(
                *created_ms,
                path,
                min_start_ns,
                max_start_ns,
            )));
        }
        let head = match partitions.last() {
            Some(head) => head.clone(),
            None => {
                let created_ms = now_ms().max(created.last().map_or(0, |last| last + 1));
                let head = Arc::new(Partition::new(
                    created_ms,
                    partition_path(directory, created_ms),
                    i64::MAX,
                    i64::MIN,
                ));
                partitions.push(head.clone());
                head
            }
        };
        let writer = Writer::open(head, options.cache_kib)?;
        let store = Arc::new(SpanStore {
            directory: directory.to_path_buf(),
            options,
            partitions: RwLock::new(partitions),
            writer: Mutex::new(writer),
            queue: Mutex::new(CommitQueue::default()),
            committed: Condvar::new(),
            stopping: Arc::new(AtomicBool::new(false)),
            group_commits: AtomicU64::new(0),
            grouped_batches: AtomicU64::new(0),
        });
        spawn_checkpointer(Arc::downgrade(&store), store.stopping.clone());
        Ok(store)
    }

    /// Returns the options the store was opened with.
    pub fn options(&self) -> &SpanStoreOptions {
        &self.options
    }

    /// Returns the partitions, newest first.
    pub(crate) fn partitions_newest_first(&self) -> Vec<Arc<Partition>> {
        let mut partitions = self.partitions.read().clone();
        partitions.reverse();
        partitions
    }

    /// Writes a batch in one transaction of the head partition.
    ///
    /// # Errors
    /// [`StoreError`] when nothing of the batch was written.
    pub fn write_spans(&self, spans: &[Span]) -> Result<(), StoreError> {
        let references: Vec<&Span> = spans.iter().collect();
        self.write_references(&references)
    }

    fn write_references(&self, spans: &[&Span]) -> Result<(), StoreError> {
        if spans.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer.lock();
        let head_age_ms = now_ms().saturating_sub(writer.partition.created_ms);
        if head_age_ms
            >= i64::try_from(self.options.partition_duration.as_millis()).unwrap_or(i64::MAX)
        {
            self.roll(&mut writer)?;
        }
        let outcome = writer.write(
            spans,
            &self.options.correlation_attributes,
            self.options.recent_index_entries,
        );
        if outcome.is_err() {
            // Names written in the failed transaction are gone: reload the dictionaries.
            if let Err(error) = writer.load_names() {
                tracing::warn!(%error, "reloading span store names failed");
            }
        }
        outcome
    }

    /// Writes a batch together with the batches other threads are writing at the same time
    /// (group commit): the first caller to find no commit running commits every queued batch
    /// in one transaction, the others wait for it. Returns once the batch is committed.
    ///
    /// # Errors
    /// The store's error as text when the transaction holding the batch failed.
    pub fn write_grouped(&self, spans: Vec<Span>) -> Result<(), String> {
        let mut queue = self.queue.lock();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.pending.push((ticket, spans));
        loop {
            if let Some(result) = queue.results.remove(&ticket) {
                return result;
            }
            if queue.committing {
                self.committed.wait(&mut queue);
                continue;
            }
            queue.committing = true;
            let mut taken = Vec::new();
            let mut taken_spans = 0usize;
            while let Some((_, next)) = queue.pending.first() {
                if !taken.is_empty() && taken_spans + next.len() > MAX_GROUP_SPANS {
                    break;
                }
                taken_spans += next.len();
                taken.push(queue.pending.remove(0));
            }
            drop(queue);
            let references: Vec<&Span> = taken.iter().flat_map(|(_, spans)| spans.iter()).collect();
            let outcome = self
                .write_references(&references)
                .map_err(|error| error.to_string());
            drop(references);
            self.group_commits.fetch_add(1, Ordering::Relaxed);
            self.grouped_batches
                .fetch_add(taken.len() as u64, Ordering::Relaxed);
            queue = self.queue.lock();
            for (taken_ticket, _) in taken {
                queue.results.insert(taken_ticket, outcome.clone());
            }
            queue.committing = false;
            self.committed.notify_all();
        }
    }

    /// Starts a new head partition. Called with the writer lock held.
    fn roll(&self, writer: &mut Writer) -> Result<(), StoreError> {
        let mut created_ms = now_ms().max(writer.partition.created_ms + 1);
        while partition_path(&self.directory, created_ms).exists() {
            created_ms += 1;
        }
        let partition = Arc::new(Partition::new(
            created_ms,
            partition_path(&self.directory, created_ms),
            i64::MAX,
            i64::MIN,
        ));
        // The old head's recent entries go into its file; if that fails they stay in memory
        // (queries read them) and the next open indexes them.
        if let Err(error) = writer.merge_recent_index() {
            tracing::warn!(%error, "merging the span index of the old head failed");
        }
        let new_writer = Writer::open(partition.clone(), self.options.cache_kib)?;
        let old_writer = std::mem::replace(writer, new_writer);
        self.partitions.write().push(partition);
        // Closing checkpoints the old head's WAL into its file.
        drop(old_writer);
        tracing::info!(created_ms, "started a new span partition");
        Ok(())
    }

    /// Checkpoints the head's WAL. A passive checkpoint copies pages without stopping
    /// writes; when the WAL has grown past [`WAL_RESET_BYTES`] (writes kept coming while it
    /// ran), the rest is copied under the writer lock so the checkpoint completes and the next
    /// write starts the WAL from the beginning again (`journal_size_limit` then truncates it).
    fn checkpoint(&self) -> Result<(), StoreError> {
        let head = match self.partitions.read().last() {
            Some(head) => head.clone(),
            None => return Ok(()),
        };
        head.sync_bodies()?;
        head.read(|connection| {
            connection.pragma_update(None, "query_only", false)?;
            let outcome = connection
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .map_err(StoreError::from);
            connection.pragma_update(None, "query_only", true)?;
            outcome
        })?;
        let [_, wal, _, _] = head.files();
        let wal_bytes = std::fs::metadata(&wal)
            .map(|metadata| metadata.len())
            .unwrap_or(0);
        if wal_bytes > WAL_RESET_BYTES {
            let writer = self.writer.lock();
            if Arc::ptr_eq(&writer.partition, &head) {
                writer
                    .connection
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
            }
        }
        Ok(())
    }

    /// Returns how many group commits [`SpanStore::write_grouped`] ran and how many write
    /// calls they carried, since the store was opened (their ratio is the batches per commit).
    pub fn group_commit_counts(&self) -> (u64, u64) {
        (
            self.group_commits.load(Ordering::Relaxed),
            self.grouped_batches.load(Ordering::Relaxed),
        )
    }

    /// Returns the number of partitions and the bytes they take on disk.
    pub fn disk_usage(&self) -> (usize, u64) {
        let partitions = self.partitions.read();
        let bytes = partitions
            .iter()
            .map(|partition| partition.disk_bytes())
            .sum();
        (partitions.len(), bytes)
    }

    /// Drops partitions past `retention` (by the time the next partition started, so every
    /// span in them was written before the cutoff) and, while the store is over
    /// `retention_size`, the oldest ones. The head is never dropped: when it alone is over the
    /// size limit a new head starts so the next run can drop it. Returns the partitions dropped.
    ///
    /// # Errors
    /// [`StoreError`] when a new head cannot be created; files that cannot be removed are
    /// logged and skipped.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize, StoreError> {
        let retention_ms = i64::try_from(self.options.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff_ms = now_ms.saturating_sub(retention_ms);
        if self.options.retention_size > 0 {
            // A head over an eighth of the size limit is cut first, so the limit is kept to
            // within about one partition, and the new head's files count below.
            let mut writer = self.writer.lock();
            if writer.partition.disk_bytes() > self.options.retention_size / 8 {
                self.roll(&mut writer)?;
            }
        }
        let mut dropped = Vec::new();
        {
            let mut partitions = self.partitions.write();
            while partitions.len() > 1 && partitions[1].created_ms <= cutoff_ms {
                dropped.push(partitions.remove(0));
            }
            if self.options.retention_size > 0 {
                let mut total: u64 = partitions
                    .iter()
                    .map(|partition| partition.disk_bytes())
                    .sum();
                while partitions.len() > 1 && total > self.options.retention_size {
                    let oldest = partitions.remove(0);
                    total = total.saturating_sub(oldest.disk_bytes());
                    dropped.push(oldest);
                }
            }
        }
        let count = dropped.len();
        for partition in dropped {
            let files = partition.files();
            drop(partition);
            for path in files {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => {
                        tracing::warn!(%error, path = %path.display(), "removing a span partition failed")
                    }
                }
            }
        }
        Ok(count)
    }
}

impl Drop for SpanStore {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

fn spawn_checkpointer(store: Weak<SpanStore>, stopping: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("span-checkpoint".to_string())
        .spawn(move || loop {
            std::thread::sleep(CHECKPOINT_INTERVAL);
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            let Some(store) = store.upgrade() else { return };
            if let Err(error) = store.checkpoint() {
                tracing::warn!(%error, "span store checkpoint failed");
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start the span checkpoint thread; WAL grows until restart");
    }
}

impl Writer {
    fn open(partition: Arc<Partition>, cache_kib: i64) -> Result<Writer, StoreError> {
        let connection = open_writer(&partition.path, cache_kib)?;
        let bodies_path = partition.bodies_path();
        let io_error = |source| StoreError::Io {
            path: bodies_path.clone(),
            source,
        };
        let bodies = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&bodies_path)
            .map_err(io_error)?;
        let bodies_length = bodies.metadata().map_err(io_error)?.len();
        let mut writer = Writer {
            partition,
            connection,
            bodies,
            bodies_length,
            services: HashMap::new(),
            operations: HashMap::new(),
            blocks: HashMap::new(),
        };
        writer.load_names()?;
        Ok(writer)
    }

    fn load_names(&mut self) -> Result<(), StoreError> {
        self.services.clear();
        self.operations.clear();
        let mut statement = self.connection.prepare("SELECT id, name FROM services")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (id, name) = row?;
            self.services.insert(name, id);
        }
        let mut statement = self
            .connection
            .prepare("SELECT id, service_id, name FROM operations")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (id, service_id, name) = row?;
            self.operations
                .entry(service_id)
                .or_default()
                .insert(name, id);
        }
        self.blocks.clear();
        let mut statement = self.connection.prepare(
            "SELECT service_id, first_chunk_id, last_chunk_id, min_start_ns, max_start_ns, rows \
             FROM span_blocks WHERE (service_id, first_chunk_id) IN \
             (SELECT service_id, max(first_chunk_id) FROM span_blocks GROUP BY service_id)",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, i64>(0)?, SpanBlock::from_row(row, 1)?))
        })?;
        for row in rows {
            let (service_id, block) = row?;
            self.blocks.insert(service_id, block);
        }
        Ok(())
    }

    fn write(
        &mut self,
        spans: &[&Span],
        correlation_attributes: &[String],
        recent_index_entries: usize,
    ) -> Result<(), StoreError> {
        // Group by trace, keeping the order of first appearance.
        let mut group_of: HashMap<[u8; 16], usize> = HashMap::new();
        let mut groups: Vec<Vec<&Span>> = Vec::new();
        for span in spans.iter().copied() {
            let index = *group_of.entry(span.trace_id).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[index].push(span);
        }
        let mut min_start = i64::MAX;
        let mut max_start = i64::MIN;
        // Index entries of this write, for the recent index once committed.
        let mut new_chunks: Vec<([u8; 16], i64)> = Vec::new();
        let mut new_values: Vec<(String, [u8; 16])> = Vec::new();
        // The chunk bodies of this write, appended to the bodies file in one call.
        let mut body_buffer: Vec<u8> = Vec::new();
        // Blocks this write filled, and the services whose open block it extended.
        let mut closed_blocks: Vec<(i64, SpanBlock)> = Vec::new();
        let mut touched_services: Vec<i64> = Vec::new();
        let transaction = self.connection.unchecked_transaction()?;
        {
            let mut insert_chunk = transaction.prepare_cached(
                "INSERT INTO chunks (trace_id, correlation, body_offset, body_length) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut insert_group = transaction.prepare_cached(
                "INSERT INTO span_groups (service_id, chunk_id, start_ns, trace_id, spans) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            // (service, start, entry) of the chunk being written, reused across chunks.
            let mut entries: Vec<(i64, i64, IndexedSpan)> = Vec::new();
            for group in &groups {
                let trace_id = group[0].trace_id;
                let mut values: Vec<String> = Vec::new();
                for span in group {
                    for attribute in correlation_attributes {
                        if let Some(value) =
                            span.attributes.get(attribute).and_then(correlation_text)
                        {
                            if !values.contains(&value) {
                                values.push(value);
                            }
                        }
                    }
                }
                // The trace's correlation values ride on its first chunk.
                let mut chunk_values = if values.is_empty() {
                    None
                } else {
                    Some(encode_correlation_values(&values)?)
                };
                new_values.extend(values.into_iter().map(|value| (value, trace_id)));
                for chunk in group.chunks(MAX_SPANS_PER_CHUNK) {
                    let body = encode_chunk(trace_id, chunk)?;
                    let body_offset = self.bodies_length + body_buffer.len() as u64;
                    body_buffer.extend_from_slice(&body);
                    insert_chunk.execute(params![
                        &trace_id[..],
                        chunk_values.take(),
                        i64::try_from(body_offset).unwrap_or(i64::MAX),
                        body.len() as i64
                    ])?;
                    let chunk_id = transaction.last_insert_rowid();
                    new_chunks.push((trace_id, chunk_id));
                    entries.clear();
                    for (position, span) in chunk.iter().enumerate() {
                        let span_service_id =
                            service_id(&transaction, &mut self.services, &span.service)?;
                        let span_operation_id = operation_id(
                            &transaction,
                            &mut self.operations,
                            span_service_id,
                            span,
                        )?;
                        entries.push((
                            span_service_id,
                            span.start_unix_nano,
                            IndexedSpan {
                                position: u16::try_from(position).unwrap_or(u16::MAX),
                                operation_id: span_operation_id,
                                start_offset_ns: 0,
                                duration_ns: span.duration_ns,
                                error: span.status == StatusCode::Error,
                                span_id: span.span_id,
                                parent_span_id: span.parent_span_id,
                            },
                        ));
                        min_start = min_start.min(span.start_unix_nano);
                        max_start = max_start.max(span.start_unix_nano);
                    }
                    // One row per service, keyed by the chunk; `start_ns` is the row's latest
                    // start and each entry says how long before it the span started.
                    entries.sort_by_key(|(service_id, start, _)| (*service_id, *start));
                    let mut run_begin = 0;
                    while run_begin < entries.len() {
                        let row_service_id = entries[run_begin].0;
                        let mut run_end = run_begin + 1;
                        while run_end < entries.len() && entries[run_end].0 == row_service_id {
                            run_end += 1;
                        }
                        let run = &mut entries[run_begin..run_end];
                        let row_min_start = run[0].1;
                        let row_max_start = run[run.len() - 1].1;
                        let indexed: Vec<IndexedSpan> = run
                            .iter_mut()
                            .map(|(_, start, entry)| {
                                entry.start_offset_ns =
                                    u64::try_from(row_max_start.saturating_sub(*start))
                                        .unwrap_or(0);
                                entry.clone()
                            })
                            .collect();
                        insert_group.execute(params![
                            row_service_id,
                            chunk_id,
                            row_max_start,
                            &trace_id[..],
                            encode_span_index(&indexed)?,
                        ])?;
                        let block = self
                            .blocks
                            .entry(row_service_id)
                            .or_insert_with(|| SpanBlock::new(chunk_id));
                        if block.rows >= BLOCK_ROWS {
                            closed_blocks.push((row_service_id, *block));
                            *block = SpanBlock::new(chunk_id);
                        }
                        block.add(chunk_id, row_min_start, row_max_start);
                        if !touched_services.contains(&row_service_id) {
                            touched_services.push(row_service_id);
                        }
                        run_begin = run_end;
                    }
                }
            }
            let mut upsert_block = transaction.prepare_cached(
                "INSERT INTO span_blocks \
                 (service_id, first_chunk_id, last_chunk_id, min_start_ns, max_start_ns, rows) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (service_id, first_chunk_id) DO UPDATE SET \
                 last_chunk_id = excluded.last_chunk_id, min_start_ns = excluded.min_start_ns, \
                 max_start_ns = excluded.max_start_ns, rows = excluded.rows",
            )?;
            let open_blocks = touched_services
                .iter()
                .filter_map(|service_id| Some((*service_id, *self.blocks.get(service_id)?)));
            for (block_service_id, block) in closed_blocks.iter().copied().chain(open_blocks) {
                upsert_block.execute(params![
                    block_service_id,
                    block.first_chunk_id,
                    block.last_chunk_id,
                    block.min_start_ns,
                    block.max_start_ns,
                    block.rows
                ])?;
            }
        }
        let partition = &self.partition;
        let new_min = partition
            .min_start_ns
            .load(Ordering::Relaxed)
            .min(min_start);
        let new_max = partition
            .max_start_ns
            .load(Ordering::Relaxed)
            .max(max_start);
        transaction
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('min_start_ns', ?1), ('max_start_ns', ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![new_min, new_max])?;
        self.bodies
            .write_all_at(&body_buffer, self.bodies_length)
            .map_err(|source| StoreError::Io {
                path: self.partition.bodies_path(),
                source,
            })?;
        // Past these bytes whether or not the commit succeeds: unnamed bytes stay unused.
        self.bodies_length += body_buffer.len() as u64;
        transaction.commit()?;
        partition.min_start_ns.store(new_min, Ordering::Relaxed);
        partition.max_start_ns.store(new_max, Ordering::Relaxed);
        let recent_entries = {
            let mut recent = partition.recent.write();
            for (trace_id, chunk_id) in new_chunks {
                recent.add_chunk(trace_id, chunk_id);
            }
            for (value, trace_id) in new_values {
                recent.add_value(value, trace_id);
            }
            recent.entries
        };
        if recent_entries >= recent_index_entries {
            // The write is committed either way; unmerged entries stay in memory and are
            // merged with the next write or indexed at the next open.
            if let Err(error) = self.merge_recent_index() {
                tracing::warn!(%error, "merging the recent span index failed");
            }
        }
        Ok(())
    }

    /// Moves the head's recent index entries into its file.
    fn merge_recent_index(&mut self) -> Result<(), StoreError> {
        let (chunks, values, last_chunk_id) = {
            let recent = self.partition.recent.read();
            let mut chunks = Vec::with_capacity(recent.entries);
            let mut last_chunk_id = i64::MIN;
            for (trace_id, chunk_ids) in &recent.chunks_by_trace {
                for chunk_id in chunk_ids {
                    chunks.push((*trace_id, *chunk_id));
                    last_chunk_id = last_chunk_id.max(*chunk_id);
                }
            }
            let mut values = Vec::new();
            for (value, trace_ids) in &recent.traces_by_value {
                for trace_id in trace_ids {
                    values.push((value.clone(), *trace_id));
                }
            }
            (chunks, values, last_chunk_id)
        };
        if chunks.is_empty() {
            return Ok(());
        }
        merge_index_entries(&self.connection, chunks, values, last_chunk_id)?;
        // Cleared only once the file has the entries (the writer lock keeps writes out).
        *self.partition.recent.write() = RecentIndex::default();
        Ok(())
    }
}

/// The text of a correlation attribute's value: strings as they are, numbers printed; other
/// kinds are not correlation IDs.
pub(crate) fn correlation_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn service_id(
    connection: &Connection,
    services: &mut HashMap<String, i64>,
    name: &str,
) -> Result<i64, StoreError> {
    if let Some(id) = services.get(name) {
        return Ok(*id);
    }
    connection
        .prepare_cached("INSERT INTO services (name) VALUES (?1)")?
        .execute([name])?;
    let id = connection.last_insert_rowid();
    services.insert(name.to_string(), id);
    Ok(id)
}

fn operation_id(
    connection: &Connection,
    operations: &mut HashMap<i64, HashMap<String, i64>>,
    service_id: i64,
    span: &Span,
) -> Result<i64, StoreError> {
    let of_service = operations.entry(service_id).or_default();
    if let Some(id) = of_service.get(span.name.as_str()) {
        return Ok(*id);
    }
    connection
        .prepare_cached("INSERT INTO operations (service_id, name, kind) VALUES (?1, ?2, ?3)")?
        .execute(params![service_id, span.name, span.kind.as_str()])?;
    let id = connection.last_insert_rowid();
    of_service.insert(span.name.clone(), id);
    Ok(id)
}

impl SpanSink for SpanStore {
    fn write(&self, spans: Vec<Span>) -> Result<(), SpanSinkError> {
        let count = spans.len();
        self.write_grouped(spans).map_err(|error| {
            tracing::warn!(%error, spans = count, "span store write failed");
            SpanSinkError::Storage(error)
        })
    }
}

/// Batches waiting for a group commit, and the outcomes of committed ones.
#[derive(Default)]
struct CommitQueue {
    next_ticket: u64,
    pending: Vec<(u64, Vec<Span>)>,
    results: HashMap<u64, Result<(), String>>,
    committing: bool,
}

/// Reads every span of `trace_id` in one partition: the chunks `trace_index` names and
/// `recent_chunks` (the partition's [`Partition::recent_chunks`], read before this).
pub(crate) fn read_trace(
    partition: &Partition,
    connection: &Connection,
    trace_id: &[u8; 16],
    recent_chunks: &[i64],
) -> Result<Vec<Span>, StoreError> {
    let mut chunk_ids = recent_chunks.to_vec();
    {
        let mut statement =
            connection.prepare_cached("SELECT chunk_id FROM trace_index WHERE trace_id = ?1")?;
        let rows = statement.query_map([&trace_id[..]], |row| row.get::<_, i64>(0))?;
        for row in rows {
            chunk_ids.push(row?);
        }
    }
    chunk_ids.sort_unstable();
    chunk_ids.dedup();
    let mut spans = Vec::new();
    for chunk_id in chunk_ids {
        spans.extend(read_chunk(partition, connection, chunk_id)?);
    }
    Ok(spans)
}

/// Reads the spans of chunk `chunk_id` of `partition`, decoded (empty when there is no such
/// chunk).
pub(crate) fn read_chunk(
    partition: &Partition,
    connection: &Connection,
    chunk_id: i64,
) -> Result<Vec<Span>, StoreError> {
    let location: Option<(i64, i64)> = connection
        .prepare_cached("SELECT body_offset, body_length FROM chunks WHERE id = ?1")?
        .query_row([chunk_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((offset, length)) = location else {
        return Ok(Vec::new());
    };
    let body = partition.read_body(
        u64::try_from(offset).unwrap_or(0),
        usize::try_from(length).unwrap_or(0),
    )?;
    Ok(decode_chunk(&body)?)
}
