//! The log store: one tantivy index per time partition (a day by default) under
//! `<data_dir>/logs/`, fed through a write-ahead log.
//!
//! Writer → serializer → reader:
//! - **Writer.** [`LogStore::write`] waits while `max_uncommitted_lines` lines are not yet
//!   searchable (the backlog bound), assigns each record a sequence number, appends the batch
//!   to the WAL, hands the documents to the partition's `IndexWriter` (in memory), releases
//!   the lock and `fdatasync`s the WAL. Only then is the batch acknowledged.
//! - **Serializer.** [`LogStore::commit`] (every `commit_interval`, 250 ms by default, and on
//!   shutdown) starts a new WAL generation, takes the writers of partitions written since the
//!   last commit out of the lock, commits them side by side (records arriving for them
//!   meanwhile wait in memory, already in the WAL), puts them back, reloads their readers
//!   and wakes the writes waiting on the backlog. Commits do not `fsync`
//!   ([`crate::directory`]).
//! - **Checkpoint.** [`LogStore::checkpoint`] (every 2 s, apart from commits) syncs the
//!   files the finished commits wrote, records each partition's synced `meta.json`, and
//!   deletes the WAL files those commits cover.
//! - **Reader.** Searches see what the last commit published: a line is searchable within
//!   `commit_interval` plus the commit's duration.
//!
//! On open each partition goes back to its last checkpoint and the WAL is replayed: a record
//! whose sequence number is above the largest one its partition holds is indexed again, so
//! nothing acknowledged is lost or doubled, after a kill -9 or a power loss.
//! Retention deletes whole partitions whose end is older than `now - retention`, then the
//! oldest partitions while all of them together use more than `retention_size_bytes`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use tantivy::indexer::IndexWriterOptions;
use tantivy::merge_policy::LogMergePolicy;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument};
use vigil_model::{LogRecord, LogSink, LogSinkError};

use crate::directory::{restore_synced_meta, DeferredSyncDirectory};
use crate::schema::LogSchema;
use crate::upgrade;
use crate::wal::{self, PendingEntry, Wal, WalEntry, WalError};

/// Nanoseconds in an hour.
pub const HOUR_NS: i64 = 3_600_000_000_000;
/// Nanoseconds in a day.
pub const DAY_NS: i64 = 24 * HOUR_NS;
/// Index writers open at once (each holds `writer_memory_bytes`).
pub const MAX_OPEN_WRITERS: usize = 4;
/// A partition commit taking this long (in milliseconds) is logged as a warning: lines
/// acknowledged meanwhile miss the 1 s ack-to-searchable goal.
const SLOW_COMMIT_MS: u64 = 1_000;
/// A commit waiting this long (in milliseconds) for the writers' lock is logged (debug).
const SLOW_LOCK_MS: u64 = 100;
/// Default of [`LogStoreOptions::commit_interval`]. A line acknowledged just after a commit
/// started is searchable once the next commit ends: this interval plus a commit's duration, or
/// two commits' durations when commits take longer (docs/LOGS.md, "Searchable within 1 s").
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(250);
/// Default of [`LogStoreOptions::max_uncommitted_lines`].
pub const DEFAULT_MAX_UNCOMMITTED_LINES: usize = 40_000;
/// Segments of about the same size merged together (tantivy's default is 8).
pub const MERGE_FACTOR: usize = 32;
/// Segments holding more documents than this are never merged again.
pub const MAX_DOCS_BEFORE_MERGE: usize = 200_000;

/// Returns the merge policy of a partition's writer.
///
/// Commits every 250 ms leave two small segments per commit (one per indexing thread, about
/// 10,000 lines each at 80,000 lines/s). Under tantivy's default policy (8 at a time, up to
/// 10 M documents) each line was rewritten two or three times as segments climbed the levels.
/// Merging 32 at a time and leaving a segment alone once it holds over 200,000 lines rewrites a
/// line about once at full ingest (segments of 300,000–600,000 lines, as plain tantivy
/// committing every 10 s makes), at the cost of up to 31 small segments per partition waiting
/// to be merged.
pub fn merge_policy() -> LogMergePolicy {
    let mut policy = LogMergePolicy::default();
    policy.set_min_num_segments(MERGE_FACTOR);
    policy.set_max_docs_before_merge(MAX_DOCS_BEFORE_MERGE);
    policy
}

/// How the store is run.
#[derive(Clone, Debug)]
pub struct LogStoreOptions {
    /// Partitions older than this are deleted (`logs.retention`).
    pub retention: Duration,
    /// While the partitions together use more bytes than this, the oldest is deleted
    /// (`logs.retention_size`); 0 means no limit. The newest partition is never deleted.
    pub retention_size_bytes: u64,
    /// How often written lines are committed and become searchable.
    pub commit_interval: Duration,
    /// Width of a partition in nanoseconds (a whole number of hours).
    pub partition_ns: i64,
    /// Memory budget of one partition's index writer (shared by its indexing threads).
    pub writer_memory_bytes: usize,
    /// Indexing threads of one partition's writer.
    pub indexing_threads: usize,
    /// Writers of partitions not written for this long are closed after a commit.
    pub idle_writer_timeout: Duration,
    /// A write waits (before its acknowledgement) while this many lines are not yet
    /// searchable, so a store falling behind slows its clients instead of letting the lag of
    /// acknowledged lines grow.
    pub max_uncommitted_lines: usize,
    /// A write that waited this long for commits is refused as overloaded (HTTP 503).
    pub max_backlog_wait: Duration,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        LogStoreOptions {
            retention: Duration::from_secs(7 * 86_400),
            retention_size_bytes: 0,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            partition_ns: DAY_NS,
            writer_memory_bytes: 128 << 20,
            indexing_threads: std::thread::available_parallelism()
                .map_or(2, |cores| cores.get())
                .clamp(1, 4),
            idle_writer_timeout: Duration::from_secs(300),
            max_uncommitted_lines: DEFAULT_MAX_UNCOMMITTED_LINES,
            max_backlog_wait: Duration::from_secs(5),
        }
    }
}

/// The log store failed.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    /// A directory could not be created, listed or removed.
    #[error("log store directory `{path}`: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// tantivy failed on a partition.
    #[error("log partition `{path}`: {source}")]
    Index {
        /// The partition's directory.
        path: PathBuf,
        /// Why.
        source: tantivy::TantivyError,
    },
    /// A partition of an earlier index format could not be rebuilt.
    #[error("log partition `{path}` could not be rebuilt in the current format: {source}")]
    Upgrade {
        /// The partition's directory.
        path: PathBuf,
        /// Why.
        source: upgrade::UpgradeError,
    },
    /// The write-ahead log failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// Too many lines wait to become searchable; the write was not acknowledged.
    #[error("log store is behind: lines wait to become searchable, retry later")]
    Overloaded,
    /// `partition_ns` is not a positive whole number of hours.
    #[error("partition width of {0} ns is not a positive whole number of hours")]
    PartitionWidth(i64),
}

/// One time partition: an index over `[start_ns, start_ns + width)`.
pub struct Partition {
    /// First nanosecond of the partition.
    pub start_ns: i64,
    /// First nanosecond after the partition.
    pub end_ns: i64,
    /// Its directory.
    pub path: PathBuf,
    /// The index.
    pub index: Index,
    /// Its reader (reloaded after each commit).
    pub reader: IndexReader,
    /// Its files, synced at checkpoints rather than at each commit.
    pub directory: DeferredSyncDirectory,
}

struct OpenWriter {
    writer: IndexWriter,
    /// Lines added since its last commit (0: nothing to commit).
    uncommitted: usize,
    last_write: Instant,
}

struct WriteState {
    wal: Wal,
    writers: HashMap<i64, OpenWriter>,
    next_seq: u64,
    /// Partitions whose writer is out being committed, with the documents of the records
    /// (already in the WAL) that arrived for them meanwhile, by sequence number.
    committing: HashMap<i64, Vec<(u64, TantivyDocument)>>,
    /// Lines acknowledged (or being acknowledged) that no finished commit covers yet: in
    /// writers, in writers being committed, and waiting in `committing`.
    uncommitted_lines: usize,
}

/// Counts of stored lines per (service, level) since start, for `vigil_log_records_total`.
pub type RecordCounts = BTreeMap<(String, String), u64>;

/// The log store. Cheap to share behind an `Arc`.
pub struct LogStore {
    directory: PathBuf,
    options: LogStoreOptions,
    schema: LogSchema,
    partitions: RwLock<BTreeMap<i64, Arc<Partition>>>,
    write_state: Mutex<WriteState>,
    counts: Mutex<RecordCounts>,
    /// One commit at a time.
    commit_lock: Mutex<()>,
    /// Signalled after each commit, for writes waiting on the backlog.
    committed: Condvar,
    /// The newest WAL generation whose lines a finished commit covers (0: none yet): the
    /// next checkpoint may delete it and the older ones.
    committed_generation: Mutex<u64>,
    /// One checkpoint at a time.
    checkpoint_lock: Mutex<()>,
}

fn directory_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogStoreError + '_ {
    move |source| LogStoreError::Directory {
        path: path.to_path_buf(),
        source,
    }
}

fn index_error(path: &Path) -> impl FnOnce(tantivy::TantivyError) -> LogStoreError + '_ {
    move |source| LogStoreError::Index {
        path: path.to_path_buf(),
        source,
    }
}

/// Returns the directory name of the partition starting at `start_ns` (`2024-05-01T00`).
pub fn partition_name(start_ns: i64) -> String {
    let time = chrono::DateTime::from_timestamp_nanos(start_ns);
    time.format("p-%Y-%m-%dT%H").to_string()
}

/// Parses a partition directory name back into its start.
pub fn parse_partition_name(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("p-")?;
    let parsed =
        chrono::NaiveDateTime::parse_from_str(&format!("{rest}:00:00"), "%Y-%m-%dT%H:%M:%S")
            .ok()?;
    parsed.and_utc().timestamp_nanos_opt()
}

impl LogStore {
    /// Opens (or creates) the store in `directory` and replays its write-ahead log.
    ///
    /// # Errors
    /// [`LogStoreError`] when a directory, partition or WAL cannot be opened.
    pub fn open(directory: &Path, options: LogStoreOptions) -> Result<LogStore, LogStoreError> {
        if options.partition_ns <= 0 || options.partition_ns % HOUR_NS != 0 {
            return Err(LogStoreError::PartitionWidth(options.partition_ns));
        }
        std::fs::create_dir_all(directory).map_err(directory_error(directory))?;
        let schema = LogSchema::new();
        // Partition rebuilds a crash interrupted are finished or undone first.
        for entry in std::fs::read_dir(directory).map_err(directory_error(directory))? {
            let entry = entry.map_err(directory_error(directory))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Some((partition, _)) = name.rsplit_once('.') else {
                continue;
            };
            if parse_partition_name(partition).is_some() {
                let path = directory.join(partition);
                upgrade::recover(&path).map_err(directory_error(&path))?;
            }
        }
        let mut partitions = BTreeMap::new();
        for entry in std::fs::read_dir(directory).map_err(directory_error(directory))? {
            let entry = entry.map_err(directory_error(directory))?;
            let Some(start_ns) = entry.file_name().to_str().and_then(parse_partition_name) else {
                continue;
            };
            let partition = open_partition(directory, &schema, start_ns, options.partition_ns)?;
            partitions.insert(start_ns, Arc::new(partition));
        }
        let mut max_seq_per_partition = BTreeMap::new();
        let mut max_seq = 0u64;
        for (start_ns, partition) in &partitions {
            let partition_max = max_seq_of(partition)?;
            max_seq = max_seq.max(partition_max);
            max_seq_per_partition.insert(*start_ns, partition_max);
        }
        let generations = wal::existing_generations(directory)?;
        let next_generation = generations.last().map_or(1, |last| last + 1);
        let wal = Wal::create(directory, next_generation)?;
        let store = LogStore {
            directory: directory.to_path_buf(),
            options,
            schema,
            partitions: RwLock::new(partitions),
            write_state: Mutex::new(WriteState {
                wal,
                writers: HashMap::new(),
                next_seq: max_seq + 1,
                committing: HashMap::new(),
                uncommitted_lines: 0,
            }),
            counts: Mutex::new(BTreeMap::new()),
            commit_lock: Mutex::new(()),
            committed: Condvar::new(),
            committed_generation: Mutex::new(0),
            checkpoint_lock: Mutex::new(()),
        };
        let mut replayed = 0usize;
        for generation in &generations {
            for entry in wal::read_entries(directory, *generation)? {
                replayed += store.replay_entry(entry, &max_seq_per_partition)?;
            }
        }
        store.commit()?;
        if let Some(last) = generations.last() {
            let mut committed = store.committed_generation.lock();
            *committed = (*committed).max(*last);
        }
        store.checkpoint()?;
        if replayed > 0 {
            tracing::info!(
                replayed,
                "log store: replayed lines from the write-ahead log"
            );
        }
        Ok(store)
    }

    /// Returns the schema.
    pub fn schema(&self) -> &LogSchema {
        &self.schema
    }

    /// Returns the options the store runs with.
    pub fn options(&self) -> &LogStoreOptions {
        &self.options
    }

    fn replay_entry(
        &self,
        entry: WalEntry,
        max_seq_per_partition: &BTreeMap<i64, u64>,
    ) -> Result<usize, LogStoreError> {
        let mut state = self.write_state.lock();
        let mut replayed = Vec::new();
        for (offset, record) in entry.records.iter().enumerate() {
            let seq = entry.first_seq + offset as u64;
            let start_ns = self.partition_start(record.timestamp_ns);
            let committed = max_seq_per_partition.get(&start_ns).copied().unwrap_or(0);
            state.next_seq = state.next_seq.max(seq + 1);
            if seq <= committed {
                continue;
            }
            let document = self.schema.document(record, seq);
            self.add_document(&mut state, start_ns, seq, document)?;
            state.uncommitted_lines += 1;
            replayed.push(record);
        }
        drop(state);
        let count = replayed.len();
        self.count(replayed);
        Ok(count)
    }

    fn partition_start(&self, timestamp_ns: i64) -> i64 {
        timestamp_ns.div_euclid(self.options.partition_ns) * self.options.partition_ns
    }

    fn partition(&self, start_ns: i64) -> Result<Arc<Partition>, LogStoreError> {
        if let Some(partition) = self.partitions.read().get(&start_ns) {
            return Ok(partition.clone());
        }
        let mut partitions = self.partitions.write();
        if let Some(partition) = partitions.get(&start_ns) {
            return Ok(partition.clone());
        }
        let partition = Arc::new(open_partition(
            &self.directory,
            &self.schema,
            start_ns,
            self.options.partition_ns,
        )?);
        partitions.insert(start_ns, partition.clone());
        Ok(partition)
    }

    /// Hands a record's document (with its sequence number) to its partition's writer.
    fn add_document(
        &self,
        state: &mut WriteState,
        start_ns: i64,
        seq: u64,
        document: TantivyDocument,
    ) -> Result<(), LogStoreError> {
        // Its writer is being committed: the record waits (it is in the WAL already).
        if let Some(waiting) = state.committing.get_mut(&start_ns) {
            waiting.push((seq, document));
            return Ok(());
        }
        if !state.writers.contains_key(&start_ns) && state.writers.len() >= MAX_OPEN_WRITERS {
            self.close_least_recent_writer(state)?;
        }
        if let std::collections::hash_map::Entry::Vacant(vacant) = state.writers.entry(start_ns) {
            let partition = self.partition(start_ns)?;
            let threads = self.options.indexing_threads.max(1);
            let options = IndexWriterOptions::builder()
                .num_worker_threads(threads)
                .memory_budget_per_thread(self.options.writer_memory_bytes / threads)
                .num_merge_threads(1)
                .build();
            let writer: IndexWriter = partition
                .index
                .writer_with_options(options)
                .map_err(index_error(&partition.path))?;
            writer.set_merge_policy(Box::new(merge_policy()));
            vacant.insert(OpenWriter {
                writer,
                uncommitted: 0,
                last_write: Instant::now(),
            });
        }
        let Some(open) = state.writers.get_mut(&start_ns) else {
            return Ok(());
        };
        open.writer
            .add_document(document)
            .map_err(|source| LogStoreError::Index {
                path: self.directory.join(partition_name(start_ns)),
                source,
            })?;
        open.uncommitted += 1;
        open.last_write = Instant::now();
        Ok(())
    }

    /// Commits (if needed) and closes the writer written least recently, so lines spread over
    /// many partitions (a backfill) never hold more than [`MAX_OPEN_WRITERS`] memory budgets.
    fn close_least_recent_writer(&self, state: &mut WriteState) -> Result<(), LogStoreError> {
        let Some(oldest) = state
            .writers
            .iter()
            .min_by_key(|(_, open)| open.last_write)
            .map(|(start_ns, _)| *start_ns)
        else {
            return Ok(());
        };
        let Some(mut open) = state.writers.remove(&oldest) else {
            return Ok(());
        };
        if open.uncommitted > 0 {
            let path = self.directory.join(partition_name(oldest));
            open.writer.commit().map_err(index_error(&path))?;
            state.uncommitted_lines = state.uncommitted_lines.saturating_sub(open.uncommitted);
            if let Some(partition) = self.partitions.read().get(&oldest) {
                partition.reader.reload().map_err(index_error(&path))?;
            }
        }
        Ok(())
    }

    fn count<'a>(&self, records: impl IntoIterator<Item = &'a LogRecord>) {
        // Counted per batch first, so the shared map is locked once and its keys are made once
        // per distinct (service, level) of the batch, not once per line.
        let mut batch_counts: HashMap<(&str, &str), u64> = HashMap::new();
        for record in records {
            *batch_counts
                .entry((record.service.as_str(), record.level.as_str()))
                .or_insert(0) += 1;
        }
        let mut counts = self.counts.lock();
        for ((service, level), count) in batch_counts {
            *counts
                .entry((service.to_string(), level.to_string()))
                .or_insert(0) += count;
        }
    }

    /// Writes records durably: appended to the WAL and synced before returning.
    ///
    /// # Errors
    /// [`LogStoreError`] when the WAL or an index writer fails; the batch is not acknowledged.
    pub fn write_records(&self, records: Vec<LogRecord>) -> Result<(), LogStoreError> {
        if records.is_empty() {
            return Ok(());
        }
        // Outside the lock: each record's JSON (the WAL's payload and the stored field, made
        // once) and its document; under it only sequence numbers, the append and hand-over.
        let mut json = Vec::with_capacity(records.len());
        for record in &records {
            json.push(serde_json::to_string(record).map_err(WalError::Encode)?);
        }
        let pending = PendingEntry::new(json.iter().map(String::as_str));
        let record_count = records.len();
        let documents: Vec<(i64, TantivyDocument)> = records
            .iter()
            .zip(json)
            .map(|(record, json)| {
                (
                    self.partition_start(record.timestamp_ns),
                    self.schema.document_with_json(record, json),
                )
            })
            .collect();
        let file = {
            let mut state = self.write_state.lock();
            self.wait_for_backlog(&mut state, documents.len())?;
            let first_seq = state.next_seq;
            let file = state.wal.append(&pending.frame(first_seq))?;
            state.next_seq += documents.len() as u64;
            for (seq, (start_ns, mut document)) in (first_seq..).zip(documents) {
                document.add_u64(self.schema.seq, seq);
                self.add_document(&mut state, start_ns, seq, document)?;
            }
            state.uncommitted_lines += record_count;
            file
        };
        self.count(&records);
        // Outside the lock, so concurrent writers share the disk flush.
        wal::sync(&file).map_err(|source| WalError::Io {
            path: self.directory.clone(),
            source,
        })?;
        Ok(())
    }

    /// Waits until the lines not yet searchable leave room for `incoming` more (a batch
    /// larger than the limit waits for an empty backlog, then goes alone).
    ///
    /// # Errors
    /// [`LogStoreError::Overloaded`] after `max_backlog_wait`.
    fn wait_for_backlog(
        &self,
        state: &mut parking_lot::MutexGuard<'_, WriteState>,
        incoming: usize,
    ) -> Result<(), LogStoreError> {
        let limit = self.options.max_uncommitted_lines;
        let deadline = Instant::now() + self.options.max_backlog_wait;
        while state.uncommitted_lines > 0 && state.uncommitted_lines + incoming > limit {
            if self.committed.wait_until(state, deadline).timed_out() {
                return Err(LogStoreError::Overloaded);
            }
        }
        Ok(())
    }

    /// Commits every partition written since the last commit, makes it searchable, and
    /// deletes the WAL files it covered. Closes writers idle past `idle_writer_timeout`.
    ///
    /// # Errors
    /// [`LogStoreError`] when a commit fails (the WAL is then kept for the next try).
    pub fn commit(&self) -> Result<usize, LogStoreError> {
        let _one_commit_at_a_time = self.commit_lock.lock();
        // Take the dirty writers out under the lock, commit them without it (ingest goes on:
        // records for these partitions wait in `committing`), then put them back.
        let (previous_generation, mut taken) = {
            let asked = Instant::now();
            let mut state = self.write_state.lock();
            let lock_wait_ms = asked.elapsed().as_millis() as u64;
            if lock_wait_ms >= SLOW_LOCK_MS {
                // Writers hold the lock while they hand documents to tantivy, whose
                // indexing queue blocks them when full.
                tracing::debug!(lock_wait_ms, "log commit waited for the writers");
            }
            let dirty: Vec<i64> = state
                .writers
                .iter()
                .filter(|(_, open)| open.uncommitted > 0)
                .map(|(start_ns, _)| *start_ns)
                .collect();
            if dirty.is_empty() {
                let idle_timeout = self.options.idle_writer_timeout;
                state.writers.retain(|_, open| {
                    open.uncommitted > 0 || open.last_write.elapsed() < idle_timeout
                });
                return Ok(0);
            }
            let previous_generation = state.wal.rotate()?;
            let mut taken = Vec::with_capacity(dirty.len());
            for start_ns in dirty {
                if let Some(open) = state.writers.remove(&start_ns) {
                    state.committing.insert(start_ns, Vec::new());
                    taken.push((start_ns, open));
                }
            }
            (previous_generation, taken)
        };
        let partitions = self.partitions.read().clone();
        // Partitions commit side by side: a partition with a few lines (today's, while a
        // backfill fills yesterday's) is not kept waiting behind a heavy one.
        let outcomes: Vec<Result<usize, LogStoreError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = taken
                .iter_mut()
                .map(|(start_ns, open)| {
                    let partition = partitions.get(start_ns).cloned();
                    let path = self.directory.join(partition_name(*start_ns));
                    scope.spawn(move || commit_writer(open, partition.as_deref(), &path))
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle.join().unwrap_or_else(|_| {
                        Err(LogStoreError::Index {
                            path: self.directory.clone(),
                            source: tantivy::TantivyError::ErrorInThread(
                                "partition commit thread panicked".to_string(),
                            ),
                        })
                    })
                })
                .collect()
        });
        let mut committed_count = 0;
        let mut committed_lines = 0;
        let mut outcome = Ok(());
        for result in outcomes {
            match result {
                Ok(lines) => {
                    committed_count += 1;
                    committed_lines += lines;
                }
                Err(error) => outcome = Err(error),
            }
        }
        let mut state = self.write_state.lock();
        state.uncommitted_lines = state.uncommitted_lines.saturating_sub(committed_lines);
        self.committed.notify_all();
        let mut waiting = Vec::new();
        for (start_ns, open) in taken {
            state.writers.insert(start_ns, open);
            let arrived = state.committing.remove(&start_ns).unwrap_or_default();
            waiting.extend(
                arrived
                    .into_iter()
                    .map(|(seq, document)| (seq, start_ns, document)),
            );
        }
        waiting.sort_by_key(|(seq, _, _)| *seq);
        let (handed_over, handing_started) = (waiting.len(), Instant::now());
        for (seq, start_ns, document) in waiting {
            self.add_document(&mut state, start_ns, seq, document)?;
        }
        drop(state);
        let hand_over_ms = handing_started.elapsed().as_millis() as u64;
        if hand_over_ms >= SLOW_LOCK_MS {
            // The next commit cannot start before this: lines that arrived during a commit
            // go to tantivy's queue, which blocks while its indexing threads are behind.
            tracing::debug!(
                lines = handed_over,
                hand_over_ms,
                "log commit handed the lines that arrived meanwhile to the writers"
            );
        }
        outcome?;
        // Every record of the older generations is now committed; their WAL files go at the
        // next checkpoint, once the commit's files are synced.
        let mut committed = self.committed_generation.lock();
        *committed = (*committed).max(previous_generation);
        Ok(committed_count)
    }

    /// Makes every finished commit durable (each partition's files synced, its `meta.json`
    /// recorded as synced) and deletes the WAL files those commits cover. Runs apart from
    /// commits, so making lines searchable never waits for the disk; until a checkpoint, the
    /// WAL keeps the lines (docs/LOGS.md).
    ///
    /// # Errors
    /// [`LogStoreError`] when a sync or a WAL deletion fails (the WAL is then kept).
    pub fn checkpoint(&self) -> Result<(), LogStoreError> {
        let _one_checkpoint_at_a_time = self.checkpoint_lock.lock();
        // Read first: every commit it counts finished writing before the syncs below start.
        let generation = *self.committed_generation.lock();
        let partitions: Vec<Arc<Partition>> = self.partitions.read().values().cloned().collect();
        for partition in partitions {
            if let Err(source) = partition.directory.sync() {
                // Deleted by retention meanwhile: its lines went with it.
                if !partition.path.exists() {
                    continue;
                }
                return Err(LogStoreError::Directory {
                    path: partition.path.clone(),
                    source,
                });
            }
        }
        if generation > 0 {
            self.write_state.lock().wal.delete_up_to(generation)?;
        }
        Ok(())
    }

    /// Deletes partitions that ended before `now_ns - retention`, then the oldest partitions
    /// while the total size exceeds `retention_size_bytes` (never the newest partition, which
    /// is the one being written); returns how many were deleted.
    ///
    /// # Errors
    /// [`LogStoreError`] when a partition's directory cannot be removed.
    pub fn enforce_retention(&self, now_ns: i64) -> Result<usize, LogStoreError> {
        let retention_ns = i64::try_from(self.options.retention.as_nanos()).unwrap_or(i64::MAX);
        let cutoff = now_ns.saturating_sub(retention_ns);
        let expired: Vec<i64> = self
            .partitions
            .read()
            .values()
            .filter(|partition| partition.end_ns <= cutoff)
            .map(|partition| partition.start_ns)
            .collect();
        let mut deleted = 0;
        for start_ns in expired {
            if self.delete_partition(start_ns, "age")? {
                deleted += 1;
            }
        }
        if self.options.retention_size_bytes > 0 {
            deleted += self.enforce_retention_size(self.options.retention_size_bytes)?;
        }
        Ok(deleted)
    }

    /// Deletes the oldest partitions while all of them use more than `limit_bytes`.
    fn enforce_retention_size(&self, limit_bytes: u64) -> Result<usize, LogStoreError> {
        let sizes: Vec<(i64, u64)> = self
            .partitions
            .read()
            .values()
            .map(|partition| (partition.start_ns, directory_size(&partition.path)))
            .collect();
        let mut total: u64 = sizes.iter().map(|(_, bytes)| bytes).sum();
        let mut deleted = 0;
        // Oldest first; the newest partition is left out.
        let deletable = sizes.len().saturating_sub(1);
        for (start_ns, bytes) in sizes.into_iter().take(deletable) {
            if total <= limit_bytes {
                break;
            }
            if self.delete_partition(start_ns, "size")? {
                total = total.saturating_sub(bytes);
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Closes the partition's writer and deletes its directory. A partition whose writer is
    /// being committed is left for the next round (`Ok(false)`).
    fn delete_partition(&self, start_ns: i64, cause: &'static str) -> Result<bool, LogStoreError> {
        // Close its writer first: the index lock and files are released.
        let mut state = self.write_state.lock();
        if state.committing.contains_key(&start_ns) {
            return Ok(false);
        }
        if let Some(open) = state.writers.remove(&start_ns) {
            // Its lines go with the partition.
            state.uncommitted_lines = state.uncommitted_lines.saturating_sub(open.uncommitted);
            drop(open);
        }
        let removed = self.partitions.write().remove(&start_ns);
        drop(state);
        let Some(partition) = removed else {
            return Ok(false);
        };
        std::fs::remove_dir_all(&partition.path).map_err(directory_error(&partition.path))?;
        tracing::info!(
            partition = %partition_name(start_ns),
            cause,
            "log retention: partition deleted"
        );
        Ok(true)
    }

    /// Returns the partitions overlapping `[start_ns, end_ns]`, oldest first.
    pub fn partitions_between(&self, start_ns: i64, end_ns: i64) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .values()
            .filter(|partition| partition.end_ns > start_ns && partition.start_ns <= end_ns)
            .cloned()
            .collect()
    }

    /// Returns the sequence number of the newest line written (committed or not).
    pub fn last_seq(&self) -> u64 {
        self.write_state.lock().next_seq.saturating_sub(1)
    }

    /// Returns the number of lines stored per (service, level) since the process started.
    pub fn record_counts(&self) -> RecordCounts {
        self.counts.lock().clone()
    }

    /// Returns the number of partitions and the bytes they use on disk.
    pub fn disk_usage(&self) -> (usize, u64) {
        let partitions = self.partitions.read();
        let mut bytes = 0u64;
        for partition in partitions.values() {
            bytes += directory_size(&partition.path);
        }
        (partitions.len(), bytes)
    }
}

/// Commits one partition's writer and reloads its reader; on success marks the writer clean
/// and returns how many lines the commit made searchable.
fn commit_writer(
    open: &mut OpenWriter,
    partition: Option<&Partition>,
    path: &Path,
) -> Result<usize, LogStoreError> {
    let started = Instant::now();
    let lines = open.uncommitted;
    open.writer.commit().map_err(index_error(path))?;
    if let Some(partition) = partition {
        partition.reader.reload().map_err(index_error(path))?;
    }
    open.uncommitted = 0;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if elapsed_ms >= SLOW_COMMIT_MS {
        tracing::warn!(
            partition = %path.display(),
            elapsed_ms,
            "slow log partition commit: lines written meanwhile become searchable late"
        );
    } else {
        tracing::debug!(partition = %path.display(), lines, elapsed_ms, "log partition committed");
    }
    Ok(lines)
}

fn directory_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .filter(|metadata| metadata.is_file())
        .map(|metadata| metadata.len())
        .sum()
}

fn open_partition(
    directory_root: &Path,
    schema: &LogSchema,
    start_ns: i64,
    width_ns: i64,
) -> Result<Partition, LogStoreError> {
    let path = directory_root.join(partition_name(start_ns));
    std::fs::create_dir_all(&path).map_err(directory_error(&path))?;
    restore_synced_meta(&path).map_err(directory_error(&path))?;
    let directory = DeferredSyncDirectory::open(&path).map_err(|error| LogStoreError::Index {
        path: path.clone(),
        source: error.into(),
    })?;
    // A partition written by an earlier version keeps its schema (the same fields in the same
    // order, perhaps with other index options), so documents of this schema fit it.
    let exists = Index::exists(&directory).map_err(|error| LogStoreError::Index {
        path: path.clone(),
        source: error.into(),
    })?;
    let index = if exists {
        Index::open(directory.clone())
    } else {
        Index::create(
            directory.clone(),
            schema.schema.clone(),
            tantivy::IndexSettings::default(),
        )
    }
    .map_err(index_error(&path))?;
    if !exists {
        // A new partition's first `meta.json` is synced at once, so it always has a synced
        // copy to be restored to.
        directory.sync().map_err(directory_error(&path))?;
    }
    LogSchema::register_tokenizers(&index);
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()
        .map_err(index_error(&path))?;
    if upgrade::has_foreign_term_dictionaries(&reader, schema).map_err(index_error(&path))? {
        let started = Instant::now();
        tracing::info!(
            partition = %path.display(),
            "log partition written by an earlier Vigil (FST term dictionaries): rebuilding it \
             from its stored records, once"
        );
        drop(reader);
        let lines = upgrade::rewrite_partition(&path, &index, schema).map_err(|source| {
            LogStoreError::Upgrade {
                path: path.clone(),
                source,
            }
        })?;
        drop(index);
        drop(directory);
        tracing::info!(
            partition = %path.display(),
            lines,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "log partition rebuilt in the current index format"
        );
        return open_partition(directory_root, schema, start_ns, width_ns);
    }
    Ok(Partition {
        start_ns,
        end_ns: start_ns.saturating_add(width_ns),
        path,
        index,
        reader,
        directory,
    })
}

/// Returns the largest sequence number committed in a partition (0 when empty).
fn max_seq_of(partition: &Partition) -> Result<u64, LogStoreError> {
    let searcher = partition.reader.searcher();
    let mut max_seq = 0u64;
    for segment in searcher.segment_readers() {
        let column = segment
            .fast_fields()
            .u64("seq")
            .map_err(index_error(&partition.path))?;
        if segment.num_docs() > 0 {
            max_seq = max_seq.max(column.max_value());
        }
    }
    Ok(max_seq)
}

impl LogSink for LogStore {
    fn write(&self, records: Vec<LogRecord>) -> Result<(), LogSinkError> {
        self.write_records(records).map_err(|error| match error {
            LogStoreError::Overloaded => LogSinkError::Overloaded,
            other => LogSinkError::Storage(other.to_string()),
        })
    }
}
