//! The attack suite: each reproduction of an outside review's attacks on the release
//! build (a full disk, requests that cost the server far more than they cost the client,
//! quota gaps, cross-site requests, token misuse), replayed against the real server on
//! loopback, with the behaviour the server must keep.
//!
//! Each module is one kind of abuse; every test is bounded in time (a few seconds to a
//! minute) and listens on 127.0.0.1 only. The disk tests mount a small tmpfs (root).

mod auth;
mod creates;
mod disk;
mod downloads;
mod memory;
mod quota;
mod requests;
mod streams;
mod web;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::api::{Problem, UploadStatus};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use tests::Server;

pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;

/// A client of one server, anonymous or with a bearer token.
pub struct Api {
    pub http: Client,
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(server: &Server) -> Self {
        Self::with_token(server, None)
    }

    pub fn with_token(server: &Server, token: Option<&str>) -> Self {
        Self {
            http: Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            base: server.url(),
            token: token.map(str::to_string),
        }
    }

    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn try_create(&self, body: Value) -> Response {
        self.req(Method::POST, "/v1/uploads")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn create(&self, size: usize, chunk_size: usize) -> UploadStatus {
        let resp = self
            .try_create(json!({"size": size, "chunk_size": chunk_size}))
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "create");
        resp.json().await.unwrap()
    }

    pub async fn put_chunk(&self, id: &str, index: usize, bytes: &[u8]) -> Response {
        self.req(Method::PUT, &format!("/v1/uploads/{id}/chunks/{index}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap()
    }

    pub async fn status(&self, id: &str) -> UploadStatus {
        let resp = self
            .req(Method::GET, &format!("/v1/uploads/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "status of {id}");
        resp.json().await.unwrap()
    }

    pub async fn delete(&self, id: &str) -> Response {
        self.req(Method::DELETE, &format!("/v1/uploads/{id}"))
            .send()
            .await
            .unwrap()
    }
}

/// The problem document of `resp`, which must have `status` and the problem type `slug`.
pub async fn problem(resp: Response, status: StatusCode, slug: &str) -> Problem {
    assert_eq!(resp.status(), status, "expected {status} {slug}");
    let p: Problem = resp.json().await.unwrap();
    assert!(
        p.kind.ends_with(slug),
        "problem type {} is not {slug}",
        p.kind
    );
    p
}

/// Polls `check` every 50 ms until it holds, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tmpfs of a given size mounted for one test (needs root), unmounted when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the disk tests mount a small tmpfs and need root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes free on the volume.
    pub fn free(&self) -> u64 {
        let out = Command::new("stat")
            .args(["-f", "-c", "%a %S"])
            .arg(self.path())
            .output()
            .expect("run stat");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        it.next().unwrap() * it.next().unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A file that takes every free byte of a volume, then gives some back.
pub struct Filler {
    file: std::fs::File,
    len: u64,
}

impl Filler {
    /// Writes to `path` until the volume is full.
    pub fn fill(path: &Path) -> Self {
        use std::io::Write;
        let mut file = std::fs::File::create(path).unwrap();
        let mut len = 0u64;
        let block = vec![0x5Au8; 4096];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(n) => len += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the volume: {e}"),
            }
        }
        Self { file, len }
    }

    /// Gives `bytes` back to the volume.
    pub fn free(&mut self, bytes: u64) {
        self.len = self.len.saturating_sub(bytes);
        self.file.set_len(self.len).unwrap();
    }
}
