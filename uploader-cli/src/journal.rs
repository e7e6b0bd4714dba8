//! Local state: one journal per unfinished upload, so that `uploader upload FILE` run again
//! (after Ctrl-C, a crash or a reboot) continues where it stopped.
//!
//! # Layout
//! `<state dir>/uploads/<id>.json`, where the state dir is `$UPLOADER_STATE_DIR`, or
//! `--state-dir`, or the platform's (`$XDG_STATE_HOME/uploader` on Linux, the local data
//! directory elsewhere). Each file is written to a temporary name, fsync'd and renamed
//! over the old one, so a crash leaves either the old or the new journal, never half of one.
//!
//! Besides the server URL, id and the file's identity (canonical path, size, mtime,
//! ctime, inode), a journal holds the SHA-256 *midstate* of the prefix of the file already
//! read: on resume the reader seeks past that prefix and continues the hash, so it neither
//! re-reads nor re-hashes it. The midstate is trusted only while the identity is unchanged;
//! a file whose identity changed is read again, and its chunks compared with the `.sums`
//! of what was sent.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::Sha256;

use common::ranges::IndexRanges;
use common::UploadId;

use crate::error::{Error, Result};

/// Version of the journal format.
const FORMAT: u32 = 1;

/// The identity of a local file: if any of these change, its content may have changed.
/// The ctime cannot be set back by anyone (`touch -r` restores the mtime, not the ctime),
/// and the inode changes when a file is replaced by another of the same name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Canonical absolute path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch (as text: it may exceed 2^53).
    pub mtime_ns: String,
    /// Status change time, nanoseconds since the Unix epoch (empty in older journals).
    #[serde(default)]
    pub ctime_ns: String,
    /// Device and inode number, `dev:ino` (empty in older journals).
    #[serde(default)]
    pub inode: String,
}

impl FileIdentity {
    /// Reads the identity of `path` (which must already be canonical).
    pub fn of(path: &Path, meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos().to_string())
            .unwrap_or_default();
        let ctime_ns =
            (i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec())).to_string();
        Self {
            path: path.to_path_buf(),
            size: meta.len(),
            mtime_ns,
            ctime_ns,
            inode: format!("{}:{}", meta.dev(), meta.ino()),
        }
    }

    /// What differs from `other`, in words ("mtime and ctime"), or `None` if nothing.
    pub fn differences(&self, other: &FileIdentity) -> Option<String> {
        let mut what = Vec::new();
        if self.path != other.path {
            what.push("path");
        }
        if self.size != other.size {
            what.push("size");
        }
        if self.mtime_ns != other.mtime_ns {
            what.push("modification time");
        }
        if self.ctime_ns != other.ctime_ns {
            what.push("ctime");
        }
        if self.inode != other.inode {
            what.push("inode");
        }
        match what.len() {
            0 => None,
            1 => Some(what[0].to_string()),
            n => Some(format!("{} and {}", what[..n - 1].join(", "), what[n - 1])),
        }
    }
}

/// The whole-file hash of the first `chunks` chunks, saved so it can be continued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Midstate {
    /// Number of leading chunks hashed.
    pub chunks: u64,
    /// The SHA-256 state after them, hex.
    pub state: String,
}

impl Midstate {
    /// Saves a running hasher that has consumed the first `chunks` chunks.
    pub fn save(chunks: u64, hasher: &Sha256) -> Self {
        Self {
            chunks,
            state: hex::encode(hasher.serialize().as_slice()),
        }
    }

    /// The hasher to continue with; `None` if the state does not parse (start over).
    pub fn restore(&self) -> Option<Sha256> {
        let bytes = hex::decode(&self.state).ok()?;
        let state = SerializedState::<Sha256>::try_from(bytes.as_slice()).ok()?;
        Sha256::deserialize(&state).ok()
    }
}

/// Everything this machine knows about one unfinished upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Format version.
    pub format: u32,
    /// Server base URL.
    pub server: String,
    /// Upload id on that server.
    pub id: UploadId,
    /// The file being uploaded.
    pub file: FileIdentity,
    /// Bytes per chunk.
    pub chunk_size: u64,
    /// Chunks the server acknowledged, as inclusive ranges.
    pub acked: IndexRanges,
    /// Bytes the server acknowledged.
    pub acked_bytes: u64,
    /// Hash of the prefix already read, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub midstate: Option<Midstate>,
    /// The file's path under the directory it was uploaded from, when it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_path: Option<String>,
    /// Last update, seconds since the Unix epoch.
    pub updated_at: u64,
}

impl Journal {
    /// A new journal with nothing acknowledged yet.
    pub fn new(server: &str, id: UploadId, file: FileIdentity, chunk_size: u64) -> Self {
        Self {
            format: FORMAT,
            server: server.to_string(),
            id,
            file,
            chunk_size,
            acked: Vec::new(),
            acked_bytes: 0,
            midstate: None,
            relative_path: None,
            updated_at: now_secs(),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A file this machine uploaded completely: uploading it again (same path and identity)
/// reports this upload instead of sending the file again, unless `--force`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Format version.
    pub format: u32,
    /// Server base URL.
    pub server: String,
    /// Upload id on that server.
    pub id: UploadId,
    /// The file as it was uploaded.
    pub file: FileIdentity,
    /// The verified SHA-256, hex.
    pub sha256: String,
    /// The path under the directory it was uploaded from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_path: Option<String>,
    /// When it completed, seconds since the Unix epoch.
    pub completed_at: u64,
}

/// Size of one record of a `.sums` file: chunk index (u64, little-endian) and SHA-256.
const SUM_RECORD: usize = 40;

/// The directory holding the journals.
///
/// `uploads/<id>.json` is the journal of an unfinished upload, `uploads/<id>.sums` the
/// SHA-256 of each chunk the server acknowledged (appended as they are; used to check a
/// file that changed before trusting what was sent of it), and `done/<key>.json` a file
/// uploaded completely, keyed by server and path.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    done: PathBuf,
}

impl Store {
    /// The store under `state_dir` if given, else under the platform state directory.
    pub fn open(state_dir: Option<&Path>) -> Result<Self> {
        let base = match state_dir {
            Some(d) => d.to_path_buf(),
            None => {
                let dirs = directories::ProjectDirs::from("", "", "uploader").ok_or_else(|| {
                    Error::Journal {
                        path: PathBuf::from("~"),
                        reason: "no home directory to keep local state in; set UPLOADER_STATE_DIR"
                            .into(),
                    }
                })?;
                dirs.state_dir()
                    .unwrap_or_else(|| dirs.data_local_dir())
                    .to_path_buf()
            }
        };
        Ok(Self {
            dir: base.join("uploads"),
            done: base.join("done"),
        })
    }

    /// Where the journals are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, id: &UploadId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `journal` atomically (temporary file, fsync, rename).
    pub fn save(&self, journal: &Journal) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::Journal {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        let mut j = journal.clone();
        j.updated_at = now_secs();
        write_atomic(&self.path_of(&journal.id), &j)
    }

    fn sums_path(&self, id: &UploadId) -> PathBuf {
        self.dir.join(format!("{id}.sums"))
    }

    /// Opens the chunk sums of upload `id` for appending.
    pub fn sums_writer(&self, id: &UploadId) -> Result<SumsWriter> {
        let path = self.sums_path(id);
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
            })
            .map(|file| SumsWriter { file })
            .map_err(|e| Error::Journal {
                path,
                reason: e.to_string(),
            })
    }

    /// The SHA-256 of each chunk of upload `id` acknowledged so far (a torn last record,
    /// from a crash, is ignored).
    pub fn sums(&self, id: &UploadId) -> HashMap<u64, [u8; 32]> {
        let bytes = std::fs::read(self.sums_path(id)).unwrap_or_default();
        bytes
            .chunks_exact(SUM_RECORD)
            .map(|r| {
                let mut index = [0u8; 8];
                index.copy_from_slice(&r[..8]);
                let mut sha = [0u8; 32];
                sha.copy_from_slice(&r[8..]);
                (u64::from_le_bytes(index), sha)
            })
            .collect()
    }

    fn done_path(&self, server: &str, path: &Path) -> PathBuf {
        use sha2::Digest;
        let mut h = Sha256::new();
        h.update(server.as_bytes());
        h.update([0]);
        h.update(path.as_os_str().as_encoded_bytes());
        self.done
            .join(format!("{}.json", &hex::encode(h.finalize())[..32]))
    }

    /// Remembers a completed upload of `done.file.path`, replacing an older one.
    pub fn save_done(&self, done: &Done) -> Result<()> {
        std::fs::create_dir_all(&self.done).map_err(|e| Error::Journal {
            path: self.done.clone(),
            reason: e.to_string(),
        })?;
        let path = self.done_path(&done.server, &done.file.path);
        write_atomic(&path, done)
    }

    /// The completed upload of the canonical `path` to `server`, if this machine made one.
    pub fn find_done(&self, server: &str, path: &Path) -> Option<Done> {
        let bytes = std::fs::read(self.done_path(server, path)).ok()?;
        serde_json::from_slice::<Done>(&bytes)
            .ok()
            .filter(|d| d.format == FORMAT && d.server == server && d.file.path == path)
    }

    /// Every completed upload remembered, oldest first.
    pub fn list_done(&self) -> Vec<Done> {
        let mut out: Vec<Done> = std::fs::read_dir(&self.done)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice::<Done>(&b).ok())
                    .filter(|d| d.format == FORMAT)
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|d| (d.completed_at, d.id));
        out
    }

    /// Forgets the completed upload of `path` on `server`.
    pub fn remove_done(&self, server: &str, path: &Path) {
        let _ = std::fs::remove_file(self.done_path(server, path));
    }

    /// Forgets the upload `id` (no error if it was not known).
    pub fn remove(&self, id: &UploadId) -> Result<()> {
        let _ = std::fs::remove_file(self.sums_path(id));
        let path = self.path_of(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Journal {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Every journal, oldest first. Unreadable files are skipped: one corrupt journal must
    /// not stop the others from resuming.
    pub fn list(&self) -> Result<Vec<Journal>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::Journal {
                    path: self.dir.clone(),
                    reason: e.to_string(),
                })
            }
        };
        let mut out: Vec<Journal> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .filter_map(|p| std::fs::read(&p).ok())
            .filter_map(|b| serde_json::from_slice::<Journal>(&b).ok())
            .filter(|j| j.format == FORMAT)
            .collect();
        out.sort_by_key(|j| (j.updated_at, j.id));
        Ok(out)
    }

    /// The journal of upload `id`, if known.
    pub fn find_by_id(&self, id: &UploadId) -> Result<Option<Journal>> {
        match std::fs::read(self.path_of(id)) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Journal {
                path: self.path_of(id),
                reason: e.to_string(),
            }),
        }
    }

    /// The most recent journal for the canonical `path` on `server`.
    pub fn find_by_path(&self, server: &str, path: &Path) -> Result<Option<Journal>> {
        Ok(self
            .list()?
            .into_iter()
            .rfind(|j| j.server == server && j.file.path == path))
    }

    /// The most recent journal for the canonical `path` on any server.
    pub fn find_by_path_any_server(&self, path: &Path) -> Result<Option<Journal>> {
        Ok(self.list()?.into_iter().rfind(|j| j.file.path == path))
    }
}

/// Appends chunk sums to an upload's `.sums` file.
#[derive(Debug)]
pub struct SumsWriter {
    file: std::fs::File,
}

impl SumsWriter {
    /// Records the SHA-256 of chunk `index` (one write, so a crash leaves whole records
    /// or a torn last one).
    pub fn append(&mut self, index: u64, sha256: &[u8; 32]) -> std::io::Result<()> {
        let mut rec = [0u8; SUM_RECORD];
        rec[..8].copy_from_slice(&index.to_le_bytes());
        rec[8..].copy_from_slice(sha256);
        self.file.write_all(&rec)
    }
}

/// Writes `value` as JSON to `path` atomically: a temporary file, fsync, rename, so a crash
/// leaves the old or the new content, never half of one.
fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let err = |e: std::io::Error| Error::Journal {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let body = serde_json::to_vec_pretty(value).map_err(|e| Error::Journal {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn midstate_continues_the_hash() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = Sha256::digest(&data);
        let mut h = Sha256::new();
        h.update(&data[..65_536]);
        let saved = Midstate::save(2, &h);
        // Through JSON, as on disk.
        let json = serde_json::to_string(&saved).unwrap();
        let back: Midstate = serde_json::from_str(&json).unwrap();
        let mut h2 = back.restore().expect("restores");
        h2.update(&data[65_536..]);
        assert_eq!(h2.finalize(), whole);
        assert!(Midstate {
            chunks: 1,
            state: "abcd".into()
        }
        .restore()
        .is_none());
    }

    #[test]
    fn journal_round_trip_find_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Some(dir.path())).unwrap();
        assert!(store.list().unwrap().is_empty());
        let file = FileIdentity {
            path: PathBuf::from("/data/a.bin"),
            size: 10 << 20,
            mtime_ns: "1700000000123456789".into(),
            ctime_ns: "1700000000123456789".into(),
            inode: "1:2".into(),
        };
        let id = UploadId::new_random();
        let mut j = Journal::new("http://h:1", id, file.clone(), 1 << 20);
        j.acked = vec![[0, 3], [5, 5]];
        j.acked_bytes = 5 << 20;
        let mut h = Sha256::new();
        h.update([1u8; 64]);
        j.midstate = Some(Midstate::save(4, &h));
        store.save(&j).unwrap();
        store.save(&j).unwrap(); // overwrite in place

        let back = store.find_by_id(&id).unwrap().unwrap();
        assert_eq!(back.acked, j.acked);
        assert_eq!(back.midstate, j.midstate);
        assert_eq!(back.file, file);
        assert_eq!(
            store
                .find_by_path("http://h:1", &file.path)
                .unwrap()
                .map(|j| j.id),
            Some(id)
        );
        assert!(store
            .find_by_path("http://other:1", &file.path)
            .unwrap()
            .is_none());
        assert!(store.find_by_path_any_server(&file.path).unwrap().is_some());
        // No temporary files left behind; a stray corrupt file is ignored.
        std::fs::write(store.dir().join("junk.json"), b"{not json").unwrap();
        let names: Vec<String> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(store.list().unwrap().len(), 1);

        store.remove(&id).unwrap();
        store.remove(&id).unwrap();
        assert!(store.find_by_id(&id).unwrap().is_none());
    }
}
