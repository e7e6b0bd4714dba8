//! Every backend the product ships, behind one face, so that one suite of domain tests
//! holds for all of them: local disk, the S3 backend over a bucket in memory, and the S3
//! backend over a real S3 server (the checkout's Ceph RGW, `scripts/ceph/run.sh`).
//!
//! The real store is used when it is running (`make test` starts it); otherwise its tests
//! say SKIPPED, unless `S3_REQUIRED=1`, when they fail.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use common::UploadId;
use futures_util::TryStreamExt;
use storage::backend::s3::memory::MemoryStore;
use storage::backend::s3::store::Store;
use storage::backend::s3::{S3Backend, S3Config};
use storage::{Backend, Content, LocalBackend, Uploads, UploadsConfig};

/// Where one test's uploads live; [`Backends::open`] again is a restart.
pub enum Backends {
    Local(tempfile::TempDir),
    Memory(Arc<MemoryStore>),
    Ceph { config: S3Config },
}

impl Backends {
    pub fn local() -> Self {
        Self::Local(tempfile::tempdir().unwrap())
    }

    pub fn memory() -> Self {
        Self::Memory(MemoryStore::new())
    }

    /// A prefix of this test's own in the suite's bucket, or `None` (SKIPPED) when no
    /// store runs and none is required.
    pub fn ceph(test: &str) -> Option<Self> {
        let bucket = ceph_bucket(test)?;
        let config = S3Config {
            bucket: bucket.clone(),
            prefix: format!("{test}-{}", UploadId::new_random()),
            endpoint: std::env::var("S3_ENDPOINT").ok(),
            allow_http: true,
            ..Default::default()
        };
        Some(Self::Ceph { config })
    }

    /// The smallest chunk the backend takes (S3's smallest part is 5 MiB).
    pub fn chunk(&self) -> usize {
        match self {
            Self::Local(_) => 64 * 1024,
            _ => 5 << 20,
        }
    }

    fn backend(&self) -> Arc<dyn Backend> {
        match self {
            Self::Local(dir) => Arc::new(LocalBackend::open(dir.path()).unwrap()),
            Self::Memory(store) => Arc::new(S3Backend::over(store.clone(), &S3Config::default())),
            Self::Ceph { config } => Arc::new(S3Backend::new(config).unwrap()),
        }
    }

    /// A server over the backend's stored state (a new one each call: a restart).
    pub async fn open(&self, config: UploadsConfig) -> Arc<Uploads> {
        self.open_with_backend(config).await.0
    }

    /// [`Backends::open`], with the backend for reading what it stored.
    pub async fn open_with_backend(
        &self,
        config: UploadsConfig,
    ) -> (Arc<Uploads>, Arc<dyn Backend>) {
        let backend = self.backend();
        let uploads = Uploads::open(backend.clone(), config).await.unwrap();
        (uploads, backend)
    }

    /// The published file's bytes, read as a download reads them.
    pub async fn published(&self, uploads: &Uploads, id: UploadId) -> Vec<u8> {
        let (record, content) = uploads.content(id).await.unwrap();
        match content {
            Content::File(path) => std::fs::read(path).unwrap(),
            Content::Object => {
                let stream = self
                    .backend()
                    .read_range(&record, 0, record.size)
                    .await
                    .unwrap();
                let pieces: Vec<Bytes> = stream.try_collect().await.unwrap();
                pieces.concat()
            }
        }
    }

    /// How many stored things (files, objects, multipart uploads) besides its record (a
    /// tombstone answers 410 for a while) still name the upload.
    pub async fn leftovers(&self, id: UploadId) -> usize {
        let id = id.to_string();
        match self {
            Self::Local(dir) => walk(dir.path())
                .iter()
                .filter(|p| p.is_file() && p.to_string_lossy().contains(&id))
                .filter(|p| !p.ends_with("record.json"))
                // A tombstone's listing entry stays with its record until the purge.
                .filter(|p| !p.starts_with(dir.path().join("index")))
                .count(),
            Self::Memory(store) => s3_leftovers(store.as_ref(), "", &id).await,
            Self::Ceph { config } => {
                s3_leftovers(&config.store().unwrap(), &config.prefix, &id).await
            }
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

async fn s3_leftovers(store: &dyn Store, prefix: &str, id: &str) -> usize {
    let objects = store.list(prefix).await.unwrap();
    let multipart = store.list_multipart_uploads(prefix).await.unwrap();
    objects
        .iter()
        .filter(|o| o.key.contains(id) && !o.key.ends_with("record.json"))
        .filter(|o| !o.key.contains("index/"))
        .count()
        + multipart.iter().filter(|m| m.key.contains(id)).count()
}

/// The suite's bucket on the checkout's running store, made once per test process.
fn ceph_bucket(test: &str) -> Option<String> {
    static BUCKET: OnceLock<Option<String>> = OnceLock::new();
    let bucket = BUCKET.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ceph/run.sh");
        let out = Command::new("bash").arg(script).arg("env").output().ok()?;
        if !out.status.success() {
            return None;
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = line.split_once('=') {
                if k == "S3_ENDPOINT" || k.starts_with("AWS_") {
                    // Read by the S3 client's `from_env`; set once, before any client is
                    // built, while every other store test waits on this cell.
                    std::env::set_var(k, v);
                }
            }
        }
        let name = format!("conformance-{:08x}", rand_u32());
        create_bucket(&name);
        Some(name)
    });
    if bucket.is_none() {
        if std::env::var("S3_REQUIRED").is_ok_and(|v| v == "1") {
            panic!("{test}: the S3 store is required (S3_REQUIRED=1) but not running: `make ceph-start`");
        }
        eprintln!("SKIPPED {test} on Ceph: the S3 store is not running (`make ceph-start`)");
    }
    bucket.clone()
}

fn rand_u32() -> u32 {
    let id = UploadId::new_random().to_string();
    u32::from_str_radix(&id[..8], 16).unwrap()
}

/// `PUT /{bucket}` signed with the store's keys (object_store makes no buckets).
fn create_bucket(name: &str) {
    let name = name.to_string();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                use object_store::signer::Signer;
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&name)
                    .with_allow_http(true)
                    .with_endpoint(std::env::var("S3_ENDPOINT").unwrap())
                    .build()
                    .unwrap();
                let url = s3
                    .signed_url(
                        http::Method::PUT,
                        &object_store::path::Path::from(""),
                        std::time::Duration::from_secs(60),
                    )
                    .await
                    .unwrap();
                let resp = reqwest::Client::new().put(url).send().await.unwrap();
                assert!(
                    resp.status().is_success(),
                    "creating bucket {name}: {} {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                );
            })
    })
    .join()
    .unwrap()
}

/// The suite's tests, once per backend: `mod local`, `mod memory`, `mod ceph`. Each test
/// is an `async fn(Backends)`.
macro_rules! conformance {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {
        mod local {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::backends::Backends::local()).await
            })*
        }
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::backends::Backends::memory()).await
            })*
        }
        mod ceph {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(b) = super::backends::Backends::ceph(stringify!($name)) {
                    super::$name(b).await
                }
            })*
        }
    };
}
