//! A partition's tantivy directory whose commits do not wait for the disk.
//!
//! tantivy's `MmapDirectory` `fsync`s every file a commit or a merge writes (each segment file,
//! `.managed.json` once per new file, `meta.json`), so a commit that only has to publish a few
//! thousand lines waits behind whatever the disk is flushing at the time: a merge's output,
//! another partition's commit, other programs. In the ingest benchmark those waits made commits
//! take 1–3 s and were the slow-commit warnings; with the store on tmpfs there were none.
//!
//! [`DeferredSyncDirectory`] writes the same files through the page cache without `fsync`
//! and syncs them later, at a checkpoint ([`DeferredSyncDirectory::sync`]), off the path that
//! makes lines searchable. Why nothing acknowledged is lost:
//! - **kill -9**: written files are in the page cache, which outlives the process; the
//!   index is as the last commit left it.
//! - **power loss**: the write-ahead log is `fdatasync`ed before each acknowledgement and
//!   its files are deleted only after a checkpoint covering their lines (the store's
//!   `checkpoint`). A checkpoint reads `meta.json`, `fsync`s every file written since the
//!   last one, then the directory, and only then stores that `meta.json` durably as
//!   [`SYNCED_META`]. Files tantivy deletes (segments merged away) are kept until the next
//!   checkpoint, so everything the synced copy names exists. On open, the synced copy
//!   replaces `meta.json` ([`restore_synced_meta`]): the index is at the last checkpoint and
//!   the write-ahead log replays every line after it.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, Directory, DirectoryLock, FileHandle, Lock, MmapDirectory, TerminatingWrite,
    WatchCallback, WatchHandle, WritePtr,
};

/// The durable copy of `meta.json` made by the last checkpoint.
pub const SYNCED_META: &str = "vigil-synced-meta.json";
const META: &str = "meta.json";

/// Files written and deletions asked for since the last checkpoint.
#[derive(Debug, Default)]
struct Pending {
    /// Files written (relative to the directory) whose data may still be only in memory.
    unsynced: HashSet<PathBuf>,
    /// Files tantivy deleted: removed at the next checkpoint.
    deleted: HashSet<PathBuf>,
}

/// A tantivy directory over a partition's files that defers `fsync` to
/// [`DeferredSyncDirectory::sync`] (module docs).
#[derive(Clone, Debug)]
pub struct DeferredSyncDirectory {
    inner: MmapDirectory,
    root: PathBuf,
    pending: Arc<Mutex<Pending>>,
    /// One checkpoint at a time.
    syncing: Arc<Mutex<()>>,
}

/// A file being written: data goes to the page cache; when tantivy finishes it, its path is
/// remembered for the next checkpoint.
struct DeferredFile {
    file: File,
    path: PathBuf,
    pending: Arc<Mutex<Pending>>,
}

impl Write for DeferredFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TerminatingWrite for DeferredFile {
    fn terminate_ref(&mut self, _: AntiCallToken) -> io::Result<()> {
        self.pending.lock().unsynced.insert(self.path.clone());
        Ok(())
    }
}

/// Syncs a directory's entries (new, renamed and removed files).
fn sync_directory_entries(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Writes `bytes` to `path` through a temporary file renamed over it; with `durable`, the
/// data and the directory entry are synced.
fn write_atomically(directory: &Path, name: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let target = directory.join(name);
    let mut temporary_name = name.as_os_str().to_owned();
    temporary_name.push(".tmp");
    let temporary = directory.join(temporary_name);
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    if durable {
        file.sync_all()?;
    }
    drop(file);
    std::fs::rename(&temporary, &target)?;
    if durable {
        sync_directory_entries(directory)?;
    }
    Ok(())
}

/// Puts the last checkpoint's `meta.json` back, before the index is opened: segments
/// committed after it may not have reached the disk, and the write-ahead log holds their
/// lines. A partition without a synced copy (written before checkpoints existed, when
/// every commit was synced) gets one of its current `meta.json`.
///
/// # Errors
/// The I/O error of reading or writing either file.
pub fn restore_synced_meta(directory: &Path) -> io::Result<()> {
    match std::fs::read(directory.join(SYNCED_META)) {
        Ok(synced) => write_atomically(directory, Path::new(META), &synced, true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            match std::fs::read(directory.join(META)) {
                Ok(meta) => write_atomically(directory, Path::new(SYNCED_META), &meta, true),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(error) => Err(error),
            }
        }
        Err(error) => Err(error),
    }
}

impl DeferredSyncDirectory {
    /// Opens the directory (which must exist).
    ///
    /// # Errors
    /// tantivy's error when it is not a readable directory.
    pub fn open(path: &Path) -> Result<Self, tantivy::directory::error::OpenDirectoryError> {
        Ok(DeferredSyncDirectory {
            inner: MmapDirectory::open(path)?,
            root: path.to_path_buf(),
            pending: Arc::default(),
            syncing: Arc::default(),
        })
    }

    /// Checkpoint: makes everything written so far durable and records the `meta.json` it
    /// covers as [`SYNCED_META`], then removes the files tantivy deleted before it.
    ///
    /// # Errors
    /// The I/O error of a sync or write; what was not synced is tried again next time.
    pub fn sync(&self) -> io::Result<()> {
        let _one_at_a_time = self.syncing.lock();
        // Order matters: files deleted before `meta.json` is read are not named by it, and
        // files it names were finished before it was written, so they are in `unsynced`.
        let deleted = std::mem::take(&mut self.pending.lock().deleted);
        let meta = match std::fs::read(self.root.join(META)) {
            Ok(meta) => Some(meta),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => {
                self.pending.lock().deleted.extend(deleted);
                return Err(error);
            }
        };
        let unsynced = std::mem::take(&mut self.pending.lock().unsynced);
        let synced = self.sync_files(&unsynced, meta.as_deref());
        if let Err(error) = synced {
            let mut pending = self.pending.lock();
            pending.unsynced.extend(unsynced);
            pending.deleted.extend(deleted);
            return Err(error);
        }
        for path in deleted {
            match std::fs::remove_file(self.root.join(&path)) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    self.pending.lock().deleted.insert(path);
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    fn sync_files(&self, unsynced: &HashSet<PathBuf>, meta: Option<&[u8]>) -> io::Result<()> {
        for path in unsynced {
            match File::open(self.root.join(path)) {
                Ok(file) => file.sync_all()?,
                // Written and deleted again (a temporary file).
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        sync_directory_entries(&self.root)?;
        if let Some(meta) = meta {
            write_atomically(&self.root, Path::new(SYNCED_META), meta, true)?;
        }
        Ok(())
    }

    /// Returns how many written files wait for a checkpoint.
    pub fn unsynced_files(&self) -> usize {
        self.pending.lock().unsynced.len()
    }
}

impl Directory for DeferredSyncDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        self.inner.get_file_handle(path)
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        let mut pending = self.pending.lock();
        if pending.deleted.contains(path) || !self.root.join(path).exists() {
            return Err(DeleteError::FileDoesNotExist(path.to_path_buf()));
        }
        pending.deleted.insert(path.to_path_buf());
        Ok(())
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        if self.pending.lock().deleted.contains(path) {
            return Ok(false);
        }
        self.inner.exists(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.root.join(path))
            .map_err(|error| {
                if error.kind() == io::ErrorKind::AlreadyExists {
                    OpenWriteError::FileAlreadyExists(path.to_path_buf())
                } else {
                    OpenWriteError::wrap_io_error(error, path.to_path_buf())
                }
            })?;
        Ok(BufWriter::new(Box::new(DeferredFile {
            file,
            path: path.to_path_buf(),
            pending: self.pending.clone(),
        })))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.inner.atomic_read(path)
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        write_atomically(&self.root, path, data, false)?;
        self.pending.lock().unsynced.insert(path.to_path_buf());
        Ok(())
    }

    fn sync_directory(&self) -> io::Result<()> {
        // Done by the checkpoint.
        Ok(())
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        self.inner.acquire_lock(lock)
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(watch_callback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(directory: &DeferredSyncDirectory, name: &str, bytes: &[u8]) {
        let mut writer = directory.open_write(Path::new(name)).unwrap();
        writer.write_all(bytes).unwrap();
        writer.terminate().unwrap();
    }

    #[test]
    fn a_checkpoint_syncs_written_files_and_records_the_meta_it_covers() {
        let root = tempfile::tempdir().unwrap();
        let directory = DeferredSyncDirectory::open(root.path()).unwrap();
        write_file(&directory, "a.idx", b"segment data");
        directory
            .atomic_write(Path::new(META), b"{\"first\":1}")
            .unwrap();
        assert_eq!(directory.unsynced_files(), 2);
        assert!(!root.path().join(SYNCED_META).exists());
        directory.sync().unwrap();
        assert_eq!(directory.unsynced_files(), 0);
        assert_eq!(
            std::fs::read(root.path().join(SYNCED_META)).unwrap(),
            b"{\"first\":1}"
        );
        // A later meta.json, never synced, is replaced by the synced one on open.
        directory
            .atomic_write(Path::new(META), b"{\"second\":2}")
            .unwrap();
        restore_synced_meta(root.path()).unwrap();
        assert_eq!(
            directory.atomic_read(Path::new(META)).unwrap(),
            b"{\"first\":1}"
        );
    }

    #[test]
    fn deleted_files_stay_on_disk_until_the_next_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let directory = DeferredSyncDirectory::open(root.path()).unwrap();
        write_file(&directory, "merged-away.store", b"old segment");
        directory.delete(Path::new("merged-away.store")).unwrap();
        assert!(!directory.exists(Path::new("merged-away.store")).unwrap());
        assert!(matches!(
            directory.delete(Path::new("merged-away.store")),
            Err(DeleteError::FileDoesNotExist(_))
        ));
        // Still there for the synced meta.json that may name it.
        assert!(root.path().join("merged-away.store").exists());
        directory.sync().unwrap();
        assert!(!root.path().join("merged-away.store").exists());
    }

    #[test]
    fn a_partition_without_a_synced_copy_gets_one_of_its_meta() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(META), b"{\"written\":\"earlier\"}").unwrap();
        restore_synced_meta(root.path()).unwrap();
        assert_eq!(
            std::fs::read(root.path().join(SYNCED_META)).unwrap(),
            b"{\"written\":\"earlier\"}"
        );
        let empty = tempfile::tempdir().unwrap();
        restore_synced_meta(empty.path()).unwrap();
        assert!(!empty.path().join(SYNCED_META).exists());
    }
}
