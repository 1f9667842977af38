//! Rewrites partitions whose term dictionaries are FSTs into the current format.
//!
//! Vigil's tantivy keeps term dictionaries as SSTables (tantivy's `quickwit` feature), which
//! cost a fraction of an FST to build at every commit and merge (docs/LOGS.md). A build of
//! tantivy reads only the dictionary type it was compiled with, so a partition written before
//! the change is rebuilt from its stored records when the store opens: every line keeps its
//! sequence number, timestamp and fields, and is found by the same queries as before.
//!
//! The rebuild is written beside the partition (`<partition>.rewrite`), synced, then swapped
//! in by two renames (the old one goes to `<partition>.old` first). [`recover`] finishes or
//! undoes a swap a crash interrupted, so a partition is never lost on the way.

use std::io;
use std::path::{Path, PathBuf};

use tantivy::schema::Value as _;
use tantivy::{Index, IndexReader, ReloadPolicy, TantivyDocument};
use vigil_model::LogRecord;

use crate::schema::LogSchema;

/// Suffix of a partition's rebuild while it is written.
const REWRITE_SUFFIX: &str = "rewrite";
/// Suffix of the old partition between the two renames of the swap.
const OLD_SUFFIX: &str = "old";
/// Memory budget of the rebuild's index writer (shared by its threads).
const REWRITE_WRITER_BYTES: usize = 128 << 20;

/// A partition could not be checked or rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// tantivy failed.
    #[error("{0}")]
    Index(#[from] tantivy::TantivyError),
    /// A file operation failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A stored record is not a log record.
    #[error("stored record of line {seq} is not valid: {source}")]
    Record {
        /// The line's sequence number.
        seq: u64,
        /// Why.
        source: serde_json::Error,
    },
}

fn with_suffix(partition: &Path, suffix: &str) -> PathBuf {
    let mut name = partition.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Finishes or undoes a rebuild a crash interrupted, before `partition` is opened: a partial
/// rebuild is deleted; an old partition left between the renames is put back when the
/// rebuild did not take its place, and deleted when it did.
///
/// # Errors
/// The I/O error of a rename or delete.
pub fn recover(partition: &Path) -> io::Result<()> {
    let rewrite = with_suffix(partition, REWRITE_SUFFIX);
    let old = with_suffix(partition, OLD_SUFFIX);
    if old.exists() {
        if partition.exists() {
            remove_dir_if_exists(&rewrite)?;
            std::fs::remove_dir_all(&old)?;
        } else {
            std::fs::rename(&old, partition)?;
        }
    }
    remove_dir_if_exists(&rewrite)
}

fn remove_dir_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Returns whether `reader`'s segments hold term dictionaries of another type than this
/// build reads (FSTs, written before the change).
///
/// # Errors
/// tantivy's error when a dictionary cannot be opened for another reason.
pub fn has_foreign_term_dictionaries(
    reader: &IndexReader,
    schema: &LogSchema,
) -> tantivy::Result<bool> {
    let fields = [
        schema.level,
        schema.service,
        schema.host,
        schema.trace_id,
        schema.span_id,
        schema.correlation_id,
        schema.message,
        schema.attributes,
    ];
    for segment in reader.searcher().segment_readers() {
        for field in fields {
            match segment.inverted_index(field) {
                Ok(_) => {}
                // tantivy's only sign of the type: its open error ("Unsupported dictionary
                // type, compiled tantivy with SSTable, but got Fst").
                Err(tantivy::TantivyError::IoError(error))
                    if error.to_string().contains("dictionary type") =>
                {
                    return Ok(true);
                }
                Err(error) => return Err(error),
            }
        }
    }
    Ok(false)
}

/// Rebuilds the partition at `path` (opened as `index`) from its stored records, in this
/// build's format, and swaps the rebuild in. Returns the lines rewritten. Open the partition
/// again afterwards.
///
/// # Errors
/// [`UpgradeError`] when a record cannot be read or the rebuild written; the partition is
/// then left as it was.
pub fn rewrite_partition(
    path: &Path,
    index: &Index,
    schema: &LogSchema,
) -> Result<u64, UpgradeError> {
    let rewrite = with_suffix(path, REWRITE_SUFFIX);
    remove_dir_if_exists(&rewrite)?;
    std::fs::create_dir_all(&rewrite)?;
    let rebuilt = Index::create_in_dir(&rewrite, schema.schema.clone())?;
    LogSchema::register_tokenizers(&rebuilt);
    let threads = std::thread::available_parallelism().map_or(2, |cores| cores.get().clamp(1, 4));
    let mut writer: tantivy::IndexWriter =
        rebuilt.writer_with_num_threads(threads, REWRITE_WRITER_BYTES)?;
    let reader: IndexReader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    let mut lines = 0u64;
    for segment in reader.searcher().segment_readers() {
        let store = segment.get_store_reader(16)?;
        let seqs = segment.fast_fields().u64("seq")?;
        for doc_id in segment.doc_ids_alive() {
            let seq = seqs.first(doc_id).unwrap_or(0);
            let stored: TantivyDocument = store.get(doc_id)?;
            let json = stored
                .get_first(schema.record)
                .and_then(|value| value.as_str())
                .unwrap_or("{}")
                .to_string();
            let record: LogRecord = serde_json::from_str(&json)
                .map_err(|source| UpgradeError::Record { seq, source })?;
            let mut document = schema.document_with_json(&record, json);
            document.add_u64(schema.seq, seq);
            writer.add_document(document)?;
            lines += 1;
        }
    }
    writer.commit()?;
    writer.wait_merging_threads()?;
    // The rebuild is complete and synced (tantivy's own directory syncs every commit);
    // now the swap.
    let old = with_suffix(path, OLD_SUFFIX);
    std::fs::rename(path, &old)?;
    std::fs::rename(&rewrite, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    std::fs::remove_dir_all(&old)?;
    Ok(lines)
}
