//! The storage a test's server keeps uploads in, for suites that run the same tests on
//! local disk and on S3 ([`Storage`]): [`start`] starts an `upload-server` on it and
//! answers a [`Store`], through which a test looks at what is stored. Test modules name
//! their storage in a `STORAGE` constant and start servers with [`start_or_skip!`].

use std::path::{Path, PathBuf};

use common::UploadId;
use reqwest::StatusCode;

use crate::http::client;
use crate::s3::S3Server;
use crate::Server;

const MIB: usize = 1 << 20;

/// Where the servers of a test binary keep uploads: `server` tests them on local disk,
/// `server_s3` the same tests on S3 (the shared Ceph store, a bucket per test).
/// Each binary names its storage in a `STORAGE` constant at its root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// `--data-dir` on local disk.
    Local,
    /// `--storage s3` on a fresh bucket of the binary's shared S3 test server.
    S3,
}

/// S3's smallest part, hence the smallest chunk but the last.
const S3_MIN_CHUNK: usize = 5 * MIB;

/// Starts an `upload-server` with `args` on `$storage`: `let (server, store) =
/// start_or_skip!(STORAGE, &[...]);`. On S3 the test returns early (skipped, with a
/// message) when the S3 store is not installed, unless `S3_REQUIRED=1`.
#[macro_export]
macro_rules! start_or_skip {
    ($storage:expr, $args:expr) => {
        match $crate::fixture::start($storage, module_path!(), $args).await {
            Some(started) => started,
            None => return,
        }
    };
}

/// See [`start_or_skip!`]: the server and its [`Store`], or `None` when S3 is not
/// available.
pub async fn start(storage: Storage, test: &str, args: &[&str]) -> Option<(Server, Store)> {
    let dir = tempfile::tempdir().expect("temp dir");
    match storage {
        Storage::Local => {
            let server = Server::start_in(dir.path(), args);
            Some((
                server,
                Store {
                    storage: Storage::Local,
                    dir,
                    s3: None,
                },
            ))
        }
        Storage::S3 => {
            let s3 = S3Server::shared_or_skip(test)?;
            let bucket = s3.new_bucket().await;
            let mut all = vec![
                "--storage",
                "s3",
                "--s3-bucket",
                &bucket,
                "--s3-endpoint",
                &s3.endpoint,
                "--s3-allow-http",
                "--s3-region",
                "us-east-1",
            ];
            all.extend_from_slice(args);
            let server = Server::start_with_env(dir.path(), &all, &s3.aws_env());
            Some((
                server,
                Store {
                    storage: Storage::S3,
                    dir,
                    s3: Some((s3, bucket)),
                },
            ))
        }
    }
}

/// One test's storage, and what the test may look at inside it. On S3 its bucket is
/// emptied and removed when it is dropped.
pub struct Store {
    /// Which storage.
    pub storage: Storage,
    /// The server's data directory (on S3 it holds nothing of the uploads).
    pub dir: tempfile::TempDir,
    s3: Option<(&'static S3Server, String)>,
}

impl Store {
    /// The `storage` name in `GET /v1`.
    pub fn name(&self) -> &'static str {
        match self.storage {
            Storage::Local => "local",
            Storage::S3 => "s3",
        }
    }

    /// Records how many racing or duplicate requests a test tried, per backend, for the
    /// torture table.
    pub fn tally_races(&self, key: &str, what: &str, count: u64) {
        crate::tally(
            &format!("race-{}-{key}", self.name()),
            "race",
            &format!("{what} ({})", self.name()),
            count,
        );
    }

    /// The chunk size a test uses where it would use `local` on local disk: on S3 the
    /// smallest part S3 takes (5 MiB), so tests there keep their chunk counts small.
    pub fn chunk(&self, local: usize) -> usize {
        match self.storage {
            Storage::Local => local,
            Storage::S3 => S3_MIN_CHUNK,
        }
    }

    /// How many chunks a test sends where it would send `local` on local disk: at most 4
    /// on S3, where chunks are 5 MiB.
    pub fn count(&self, local: usize) -> usize {
        match self.storage {
            Storage::Local => local,
            Storage::S3 => local.min(4),
        }
    }

    fn bucket(&self) -> (&'static S3Server, &str) {
        let (s3, bucket) = self.s3.as_ref().expect("an S3 store");
        (s3, bucket.as_str())
    }

    /// Keys of the test's bucket under `prefix` (ListObjectsV2, one page).
    async fn keys(&self, prefix: &str) -> Vec<String> {
        let (s3, bucket) = self.bucket();
        let resp = s3
            .client()
            .get(s3.url(&format!("/{bucket}?list-type=2&prefix={prefix}")))
            .send()
            .await
            .expect("ListObjectsV2");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.text().await.expect("listing");
        assert!(!body.contains("<IsTruncated>true</IsTruncated>"), "{body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// Whether `key` is an object of the test's bucket.
    async fn object_exists(&self, key: &str) -> bool {
        let (s3, bucket) = self.bucket();
        let resp = s3
            .client()
            .head(s3.url(&format!("/{bucket}/{key}")))
            .send()
            .await
            .expect("HeadObject");
        match resp.status() {
            StatusCode::OK => true,
            StatusCode::NOT_FOUND => false,
            other => panic!("HEAD {key}: {other}"),
        }
    }

    /// Uploads stored, tombstones included.
    pub async fn upload_count(&self) -> usize {
        match self.storage {
            Storage::Local => upload_dirs(self.dir.path()),
            Storage::S3 => self
                .keys("uploads/")
                .await
                .iter()
                .filter(|k| k.ends_with("/record.json"))
                .count(),
        }
    }

    /// Idempotency keys claimed.
    pub async fn idempotency_count(&self) -> usize {
        match self.storage {
            Storage::Local => std::fs::read_dir(self.dir.path().join("idempotency"))
                .map(|rd| rd.flatten().count())
                .unwrap_or(0),
            Storage::S3 => self.keys("idempotency/").await.len(),
        }
    }

    /// Whether any bytes or chunk receipts of upload `id` are stored (before or after
    /// completion): the data file and journal on disk; on S3 its multipart upload (at
    /// `files/{id}`), its chunk objects or the published file.
    pub async fn has_bytes(&self, id: UploadId) -> bool {
        match self.storage {
            Storage::Local => ["data", "chunks.journal", "content"]
                .iter()
                .any(|name| upload_file(self.dir.path(), id, name).exists()),
            Storage::S3 => {
                let (s3, bucket) = self.bucket();
                let file = format!("files/{id}");
                let resp = s3
                    .client()
                    .get(s3.url(&format!("/{bucket}?uploads&prefix={file}")))
                    .send()
                    .await
                    .expect("ListMultipartUploads");
                let body = resp.text().await.expect("listing");
                body.contains("<UploadId>")
                    || !self.keys(&format!("uploads/{id}/chunks/")).await.is_empty()
                    || self.object_exists(&file).await
            }
        }
    }

    /// Whether the completed file of upload `id` is stored.
    pub async fn has_content(&self, id: UploadId) -> bool {
        match self.storage {
            Storage::Local => upload_file(self.dir.path(), id, "content").exists(),
            Storage::S3 => self.object_exists(&format!("files/{id}")).await,
        }
    }

    /// Whether `server` is storing chunk `index` of `id` (not yet acknowledged), whose
    /// bytes from the chunk's start are `first`: on disk they are in the data file at
    /// `offset`; on S3 an UploadPart is under way (the part streams to the store: the
    /// server's `upload_store_requests_in_flight{op="upload_part"}`).
    pub async fn writing(&self, server: &Server, id: UploadId, offset: u64, first: &[u8]) -> bool {
        match self.storage {
            Storage::Local => data_holds(self.dir.path(), id, offset, first),
            Storage::S3 => {
                let Ok(resp) = client()
                    .get(format!("{}/metrics", server.url()))
                    .send()
                    .await
                else {
                    return false;
                };
                let text = resp.text().await.unwrap_or_default();
                text.lines()
                    .filter(|l| {
                        l.starts_with("upload_store_requests_in_flight")
                            && l.contains("op=\"upload_part\"")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .any(|n| n >= 1.0)
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some((s3, bucket)) = &self.s3 {
            s3.drop_bucket(bucket);
        }
    }
}

/// Number of upload directories in the server's data directory.
pub fn upload_dirs(data_dir: &Path) -> usize {
    match std::fs::read_dir(data_dir.join("uploads")) {
        Ok(rd) => rd.flatten().count(),
        Err(_) => 0,
    }
}

/// `DATA/uploads/{id}/{name}`.
pub fn upload_file(data_dir: &Path, id: UploadId, name: &str) -> PathBuf {
    data_dir.join("uploads").join(id.to_string()).join(name)
}

/// Whether the server has already written `expected` at `offset` of the upload's `data`
/// file: proof that a chunk request is being handled, though not acknowledged.
pub fn data_holds(data_dir: &Path, id: UploadId, offset: u64, expected: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(upload_file(data_dir, id, "data")) else {
        return false;
    };
    let mut buf = vec![0u8; expected.len()];
    f.read_exact_at(&mut buf, offset).is_ok() && buf == expected
}
