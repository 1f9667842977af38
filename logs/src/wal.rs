//! The write-ahead log: what makes an acknowledged batch survive a kill -9 between tantivy
//! commits.
//!
//! Files `wal-<generation>.log` under the store directory hold entries
//! `[payload length: u32 LE][checksum of the payload: u64 LE][payload]`, the payload
//! being the JSON of a [`WalEntry`]. A write appends one entry and `fdatasync`s; a commit of
//! every partition starts a new generation, and the next checkpoint (once that commit's
//! files are synced) deletes the older files. On open, entries are
//! read until the first torn or corrupt one (a crash mid-append) and replayed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vigil_model::LogRecord;

/// Entries larger than this are treated as corrupt on replay.
const MAX_ENTRY_BYTES: usize = 1 << 30;

/// One acknowledged write: records with consecutive sequence numbers from `first_seq`.
#[derive(Debug, Serialize, Deserialize)]
pub struct WalEntry {
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// The records.
    pub records: Vec<LogRecord>,
}

/// A WAL operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file could not be created, written, synced, read or deleted.
    #[error("write-ahead log `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An entry could not be serialised.
    #[error("cannot encode a write-ahead log entry: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The open WAL: the current generation's file.
pub struct Wal {
    directory: PathBuf,
    generation: u64,
    file: Arc<File>,
}

fn wal_path(directory: &Path, generation: u64) -> PathBuf {
    directory.join(format!("wal-{generation:012}.log"))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// High half of a checksum field holding a CRC-32 (`VCRC`); entries written before it hold
/// an FNV-1a 64 hash there instead.
const CRC_TAG: u64 = 0x5643_5243;
/// FNV-1a's offset basis: the hash of nothing.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Returns the checksum field of a payload: the tag `VCRC` above its CRC-32 (IEEE).
///
/// CRC-32 replaced FNV-1a 64, which hashes a byte at a time: over the ~700 bytes of JSON a
/// line takes in the WAL it was 3% of Vigil's CPU in the ingest benchmark's profile, against
/// a few GB/s for `crc32fast`'s SIMD CRC.
pub fn checksum(bytes: &[u8]) -> u64 {
    tagged_crc(crc32fast::hash(bytes))
}

fn tagged_crc(crc: u32) -> u64 {
    (CRC_TAG << 32) | u64::from(crc)
}

/// Returns the FNV-1a 64-bit hash of `bytes`: the checksum of entries written by earlier
/// versions, still accepted on replay.
pub fn legacy_checksum(bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Returns whether `stored` is the checksum of `payload`, as written now or by an earlier
/// version.
fn checksum_matches(payload: &[u8], stored: u64) -> bool {
    (stored >> 32 == CRC_TAG && stored == checksum(payload)) || stored == legacy_checksum(payload)
}

/// Returns the generations of the WAL files in `directory`, oldest first.
///
/// # Errors
/// [`WalError::Io`] when the directory cannot be listed.
pub fn existing_generations(directory: &Path) -> Result<Vec<u64>, WalError> {
    let mut generations = Vec::new();
    for entry in std::fs::read_dir(directory).map_err(io_error(directory))? {
        let entry = entry.map_err(io_error(directory))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(number) = name
            .strip_prefix("wal-")
            .and_then(|rest| rest.strip_suffix(".log"))
        else {
            continue;
        };
        if let Ok(generation) = number.parse::<u64>() {
            generations.push(generation);
        }
    }
    generations.sort_unstable();
    Ok(generations)
}

/// Reads the entries of one WAL file up to the first torn or corrupt entry.
///
/// # Errors
/// [`WalError::Io`] when the file cannot be read.
pub fn read_entries(directory: &Path, generation: u64) -> Result<Vec<WalEntry>, WalError> {
    let path = wal_path(directory, generation);
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(io_error(&path))?;
    Ok(decode_entries(&bytes))
}

/// Decodes entries from the bytes of a WAL file, stopping at the first torn or corrupt one.
pub fn decode_entries(bytes: &[u8]) -> Vec<WalEntry> {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    while let Some(header) = bytes.get(offset..offset + 12) {
        let mut length_bytes = [0u8; 4];
        length_bytes.copy_from_slice(&header[..4]);
        let mut checksum_bytes = [0u8; 8];
        checksum_bytes.copy_from_slice(&header[4..12]);
        let length = u32::from_le_bytes(length_bytes) as usize;
        if length > MAX_ENTRY_BYTES {
            break;
        }
        let Some(payload) = bytes.get(offset + 12..offset + 12 + length) else {
            break;
        };
        if !checksum_matches(payload, u64::from_le_bytes(checksum_bytes)) {
            tracing::warn!(
                offset,
                "write-ahead log entry with a bad checksum; replay stops here"
            );
            break;
        }
        match serde_json::from_slice::<WalEntry>(payload) {
            Ok(entry) => entries.push(entry),
            Err(error) => {
                tracing::warn!(%error, offset, "undecodable write-ahead log entry; replay stops here");
                break;
            }
        }
        offset += 12 + length;
    }
    entries
}

/// Encodes one entry as it is written to a file.
///
/// # Errors
/// [`WalError::Encode`] when a record cannot be serialised.
pub fn encode_entry(entry: &WalEntry) -> Result<Vec<u8>, WalError> {
    let payload = serde_json::to_vec(entry)?;
    let mut framed = Vec::with_capacity(payload.len() + 12);
    framed.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    framed.extend_from_slice(&checksum(&payload).to_le_bytes());
    framed.extend_from_slice(&payload);
    Ok(framed)
}

/// An entry encoded before its first sequence number is known, so the costly part (the
/// records' JSON and its checksum) is done outside the store's lock. The payload is
/// `{"records":[…],"first_seq":N}`, which decodes as a [`WalEntry`].
pub struct PendingEntry {
    /// The 12 header bytes (filled by [`PendingEntry::frame`]) and the payload so far.
    framed: Vec<u8>,
    /// CRC-32 of the payload so far.
    hasher: crc32fast::Hasher,
}

impl PendingEntry {
    /// Encodes the records, given as their JSON (as `serde_json` writes a [`LogRecord`]).
    pub fn new<'a>(record_json: impl ExactSizeIterator<Item = &'a str> + Clone) -> Self {
        let length: usize = record_json.clone().map(|json| json.len() + 1).sum();
        let mut framed = Vec::with_capacity(12 + 40 + length);
        framed.extend_from_slice(&[0u8; 12]);
        framed.extend_from_slice(b"{\"records\":[");
        for (index, json) in record_json.enumerate() {
            if index > 0 {
                framed.push(b',');
            }
            framed.extend_from_slice(json.as_bytes());
        }
        framed.extend_from_slice(b"],\"first_seq\":");
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&framed[12..]);
        PendingEntry { framed, hasher }
    }

    /// Completes the entry with its first sequence number; returns the bytes to append.
    pub fn frame(mut self, first_seq: u64) -> Vec<u8> {
        let suffix = format!("{first_seq}}}");
        self.hasher.update(suffix.as_bytes());
        let checksum = tagged_crc(self.hasher.finalize());
        self.framed.extend_from_slice(suffix.as_bytes());
        let payload_length = (self.framed.len() - 12) as u32;
        self.framed[..4].copy_from_slice(&payload_length.to_le_bytes());
        self.framed[4..12].copy_from_slice(&checksum.to_le_bytes());
        self.framed
    }
}

impl Wal {
    /// Creates generation `generation` (truncating a file of that name).
    ///
    /// # Errors
    /// [`WalError::Io`] when the file cannot be created.
    pub fn create(directory: &Path, generation: u64) -> Result<Wal, WalError> {
        let path = wal_path(directory, generation);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error(&path))?;
        // The new file's directory entry must survive a crash too.
        File::open(directory)
            .and_then(|handle| handle.sync_all())
            .map_err(io_error(directory))?;
        Ok(Wal {
            directory: directory.to_path_buf(),
            generation,
            file: Arc::new(file),
        })
    }

    /// Returns the current generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Appends framed bytes (from [`encode_entry`]) without syncing; returns the file handle
    /// to sync once the caller released its locks.
    ///
    /// # Errors
    /// [`WalError::Io`] when the write fails.
    pub fn append(&mut self, framed: &[u8]) -> Result<Arc<File>, WalError> {
        let path = wal_path(&self.directory, self.generation);
        (&*self.file).write_all(framed).map_err(io_error(&path))?;
        Ok(self.file.clone())
    }

    /// Starts the next generation; returns the previous one, to delete once its entries are
    /// committed.
    ///
    /// # Errors
    /// [`WalError::Io`] when the new file cannot be created.
    pub fn rotate(&mut self) -> Result<u64, WalError> {
        let previous = self.generation;
        let next = Wal::create(&self.directory, previous + 1)?;
        *self = next;
        Ok(previous)
    }

    /// Deletes every WAL file of a generation up to `generation`.
    ///
    /// # Errors
    /// [`WalError::Io`] when a file cannot be deleted.
    pub fn delete_up_to(&self, generation: u64) -> Result<(), WalError> {
        for old in existing_generations(&self.directory)? {
            if old <= generation && old != self.generation {
                let path = wal_path(&self.directory, old);
                std::fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }
        Ok(())
    }
}

/// Syncs a WAL file's data to disk.
///
/// # Errors
/// The I/O error of `fdatasync`.
pub fn sync(file: &File) -> std::io::Result<()> {
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(first_seq: u64, message: &str) -> WalEntry {
        WalEntry {
            first_seq,
            records: vec![LogRecord {
                message: message.to_string(),
                ..LogRecord::default()
            }],
        }
    }

    #[test]
    fn entries_round_trip_and_a_torn_tail_is_ignored() {
        let directory = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(directory.path(), 1).unwrap();
        wal.append(&encode_entry(&entry(1, "a")).unwrap()).unwrap();
        let second = encode_entry(&entry(2, "b")).unwrap();
        wal.append(&second).unwrap();
        // A crash in the middle of a third append.
        let third = encode_entry(&entry(3, "c")).unwrap();
        wal.append(&third[..third.len() / 2]).unwrap();
        let entries = read_entries(directory.path(), 1).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].records[0].message, "b");
    }

    #[test]
    fn pending_entries_decode_like_encoded_ones() {
        let records = [
            LogRecord {
                message: "a \"quoted\" line".to_string(),
                timestamp_ns: -5,
                ..LogRecord::default()
            },
            LogRecord {
                service: "b".to_string(),
                ..LogRecord::default()
            },
        ];
        let json: Vec<String> = records
            .iter()
            .map(|record| serde_json::to_string(record).unwrap())
            .collect();
        let framed = PendingEntry::new(json.iter().map(String::as_str)).frame(41);
        let mut bytes = encode_entry(&entry(7, "before")).unwrap();
        bytes.extend_from_slice(&framed);
        let entries = decode_entries(&bytes);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].first_seq, 41);
        assert_eq!(entries[1].records, records);
        // A flipped byte fails the checksum.
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        assert_eq!(decode_entries(&bytes).len(), 1);
    }

    #[test]
    fn entries_written_with_the_earlier_fnv_checksum_still_replay() {
        let payload = serde_json::to_vec(&entry(3, "written by an earlier version")).unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&legacy_checksum(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        bytes.extend_from_slice(&encode_entry(&entry(4, "written now")).unwrap());
        let entries = decode_entries(&bytes);
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0].records[0].message,
            "written by an earlier version"
        );
        assert_eq!(entries[1].first_seq, 4);
        // A flipped byte in the earlier entry still stops the replay there.
        bytes[20] ^= 1;
        assert!(decode_entries(&bytes).is_empty());
    }

    #[test]
    fn rotation_keeps_the_current_generation() {
        let directory = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(directory.path(), 5).unwrap();
        let previous = wal.rotate().unwrap();
        assert_eq!(previous, 5);
        assert_eq!(existing_generations(directory.path()).unwrap(), vec![5, 6]);
        wal.delete_up_to(previous).unwrap();
        assert_eq!(existing_generations(directory.path()).unwrap(), vec![6]);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_entries(&bytes);
        }
    }
}
