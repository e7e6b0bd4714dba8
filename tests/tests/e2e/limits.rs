//! Resource limits against the real server: per-owner open uploads and byte quotas, the
//! request rate limit (and the CLI backing off from it), a full disk mid-upload, and a
//! slowloris crowd that must not stop a normal upload.

use crate::cli::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::api::{Problem, UploadStatus};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::json;
use tests::{random_bytes, sha256_hex, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{file_sha, random_file, Cli};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A client acting as one owner (or anonymously with no token).
struct As {
    http: Client,
    base: String,
    token: Option<String>,
}

impl As {
    fn new(server: &Server, token: Option<&str>) -> Self {
        Self {
            http: client(),
            base: server.url(),
            token: token.map(str::to_string),
        }
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn try_create(&self, size: usize, chunk_size: usize) -> Response {
        self.req(Method::POST, "/v1/uploads")
            .json(&json!({"size": size, "chunk_size": chunk_size}))
            .send()
            .await
            .unwrap()
    }

    async fn create(&self, size: usize, chunk_size: usize) -> UploadStatus {
        let resp = self.try_create(size, chunk_size).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json().await.unwrap()
    }

    async fn put_chunk(&self, id: &str, index: usize, bytes: &[u8]) -> Response {
        self.req(Method::PUT, &format!("/v1/uploads/{id}/chunks/{index}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap()
    }
}

/// Asserts a problem+json answer with `status` and problem type `slug`; returns it.
async fn problem(resp: Response, status: StatusCode, slug: &str) -> (Problem, Option<String>) {
    assert_eq!(resp.status(), status, "{resp:?}");
    assert_eq!(
        resp.headers()["content-type"],
        common::PROBLEM_JSON,
        "{resp:?}"
    );
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let p: Problem = resp.json().await.unwrap();
    assert_eq!(p.kind, format!("/problems/{slug}"));
    assert_eq!(p.status, status.as_u16());
    (p, retry_after)
}

fn tokens_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(&path, "tok-alice alice\ntok-bob bob\n").unwrap();
    path
}

/// Open uploads and reserved bytes are limited per owner (429 and 507), other owners are
/// not affected, closing an upload frees its share, and the counts survive a restart.
#[tokio::test]
async fn open_uploads_and_bytes_are_limited_per_owner() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let (mut server, _data) = Server::start(&[
        "--tokens-file",
        tokens.to_str().unwrap(),
        "--max-open-uploads",
        "3",
        "--quota",
        "1MiB",
    ]);
    let alice = As::new(&server, Some("tok-alice"));
    let bob = As::new(&server, Some("tok-bob"));

    let a1 = alice.create(400 * KIB, 64 * KIB).await;
    let a2 = alice.create(400 * KIB, 64 * KIB).await;
    // 800 KiB reserved: 300 KiB more would pass 1 MiB.
    let (p, retry) = problem(
        alice.try_create(300 * KIB, 64 * KIB).await,
        StatusCode::INSUFFICIENT_STORAGE,
        "quota-exceeded",
    )
    .await;
    assert!(p.detail.contains(&(1 << 20).to_string()), "{}", p.detail);
    assert_eq!(retry, None, "waiting does not free a quota");
    let _a3 = alice.create(200 * KIB, 64 * KIB).await;
    let (p, _) = problem(
        alice.try_create(1, 64 * KIB).await,
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-open-uploads",
    )
    .await;
    assert!(p.detail.contains('3'), "{}", p.detail);
    // Bob has quotas of his own.
    bob.create(MIB, 64 * KIB).await;

    // A completed upload no longer counts; neither does a cancelled one.
    let bytes = random_bytes(400 * KIB, 1);
    for (i, chunk) in bytes.chunks(64 * KIB).enumerate() {
        assert_eq!(
            alice.put_chunk(&a1.id.to_string(), i, chunk).await.status(),
            StatusCode::CREATED
        );
    }
    let done = alice
        .req(Method::POST, &format!("/v1/uploads/{}/complete", a1.id))
        .json(&json!({"sha256": sha256_hex(&bytes)}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let a4 = alice.create(400 * KIB, 64 * KIB).await;
    problem(
        alice.try_create(1, 64 * KIB).await,
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-open-uploads",
    )
    .await;
    let cancel = alice
        .req(Method::DELETE, &format!("/v1/uploads/{}", a2.id))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::NO_CONTENT);

    // After a restart the counts are rebuilt from storage: a3 and a4 are open (600 KiB).
    server.restart();
    let alice = As::new(&server, Some("tok-alice"));
    problem(
        alice.try_create(500 * KIB, 64 * KIB).await,
        StatusCode::INSUFFICIENT_STORAGE,
        "quota-exceeded",
    )
    .await;
    let _a5 = alice.create(400 * KIB, 64 * KIB).await;
    problem(
        alice.try_create(1, 64 * KIB).await,
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-open-uploads",
    )
    .await;
    let status: UploadStatus = alice
        .req(Method::GET, &format!("/v1/uploads/{}", a4.id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status.id, a4.id);
}

/// Over its rate a client gets 429 with `Retry-After`; every owner (and, anonymous,
/// every address) has a bucket of its own; health probes are never limited.
#[tokio::test]
async fn requests_over_the_rate_get_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let (server, _data) = Server::start(&[
        "--tokens-file",
        tokens.to_str().unwrap(),
        "--rate-limit",
        "1",
        "--rate-limit-burst",
        "5",
    ]);
    let alice = As::new(&server, Some("tok-alice"));
    let bob = As::new(&server, Some("tok-bob"));
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let resp = alice.req(
            Method::GET,
            "/v1/uploads/00000000-0000-4000-8000-000000000000",
        );
        statuses.push(resp.send().await.unwrap().status());
    }
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    // A burst of 5 at 1/s: 5 pass (6 if a second went by), the rest are refused.
    assert!((2..=3).contains(&limited), "{statuses:?}");
    assert!(statuses[..5].iter().all(|s| *s == StatusCode::NOT_FOUND));
    let (p, retry) = problem(
        alice
            .req(
                Method::GET,
                "/v1/uploads/00000000-0000-4000-8000-000000000000",
            )
            .send()
            .await
            .unwrap(),
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
    )
    .await;
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    assert!(p.detail.contains("retry in"), "{}", p.detail);
    // Bob is not slowed by Alice.
    assert_eq!(
        bob.req(
            Method::GET,
            "/v1/uploads/00000000-0000-4000-8000-000000000000"
        )
        .send()
        .await
        .unwrap()
        .status(),
        StatusCode::NOT_FOUND
    );
    // Probes always answer.
    for _ in 0..20 {
        let resp = alice.req(Method::GET, "/healthz").send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}

/// Anonymous clients are limited by address: one address over its rate is refused while
/// another (a second loopback address) is not.
#[tokio::test]
async fn anonymous_clients_are_limited_per_address() {
    let (server, _data) = Server::start(&["--rate-limit", "1", "--rate-limit-burst", "3"]);
    let from = |ip: [u8; 4]| {
        Client::builder()
            .no_proxy()
            .local_address(std::net::IpAddr::from(ip))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    let path = format!(
        "{}/v1/uploads/00000000-0000-4000-8000-000000000000",
        server.url()
    );
    let one = from([127, 0, 0, 1]);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(one.get(&path).send().await.unwrap().status());
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let other = from([127, 0, 0, 2]);
    for _ in 0..3 {
        assert_eq!(
            other.get(&path).send().await.unwrap().status(),
            StatusCode::NOT_FOUND,
            "another address has a bucket of its own"
        );
    }
}

/// The CLI meets the rate limit, honours `Retry-After`, and finishes the upload.
#[test]
fn the_cli_backs_off_from_the_rate_limit_and_succeeds() {
    let (server, _data) = Server::start(&["--rate-limit", "4", "--rate-limit-burst", "4"]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (path, sha) = random_file(dir.path(), "f.bin", 16 * 64 * KIB, 7);
    let url = server.url();
    let run = cli.run(&[
        "upload",
        path.to_str().unwrap(),
        "--server",
        &url,
        "--chunk-size",
        "64KiB",
        "-j",
        "4",
        "--json",
    ]);
    run.expect_code(0);
    let completed = run.one("completed");
    assert_eq!(completed["sha256"], sha.as_str(), "{}", run.dump());
    let retries: Vec<_> = run
        .events_of("retry")
        .into_iter()
        .filter(|e| e["reason"].as_str().unwrap_or("").contains("429"))
        .collect();
    assert!(!retries.is_empty(), "no 429 was met\n{}", run.dump());
    assert!(
        retries
            .iter()
            .all(|e| e["delay_ms"].as_u64().unwrap_or(0) >= 1000),
        "Retry-After (at least 1 s) was not honoured\n{}",
        run.dump()
    );
    let out = dir.path().join("back.bin");
    cli.run(&[
        "download",
        completed["id"].as_str().unwrap(),
        "--server",
        &url,
        "-o",
        out.to_str().unwrap(),
    ])
    .expect_code(0);
    assert_eq!(file_sha(&out), sha);
}

/// A tmpfs mounted for one test and unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the disk-full test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The disk fills mid-upload: 507 with `Retry-After`, the failed chunk is not counted,
/// every acknowledged chunk stays intact, and once space is freed the same upload
/// resumes and completes with the right SHA-256.
#[tokio::test]
async fn a_full_disk_answers_507_and_the_upload_resumes_after_space_is_freed() {
    let volume = Tmpfs::mount("6m");
    let mut server = Server::start_in(volume.path(), &[]);
    let anon = As::new(&server, None);
    // Another upload, completed before the disk fills: it must stay readable.
    let other = random_bytes(64 * 1024, 4);
    let done_up = anon.create(other.len(), 64 * 1024).await;
    let done_id = done_up.id.to_string();
    assert_eq!(
        anon.put_chunk(&done_id, 0, &other).await.status(),
        StatusCode::CREATED
    );
    let done = anon
        .req(Method::POST, &format!("/v1/uploads/{done_id}/complete"))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let bytes = random_bytes(12 * MIB, 3);
    let up = anon.create(bytes.len(), MIB).await;
    let id = up.id.to_string();
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for (i, chunk) in bytes.chunks(MIB).enumerate() {
        let resp = anon.put_chunk(&id, i, chunk).await;
        if resp.status() == StatusCode::CREATED {
            acknowledged.push(i);
            continue;
        }
        let (p, retry) = problem(resp, StatusCode::INSUFFICIENT_STORAGE, "storage-full").await;
        assert!(retry.is_some(), "507 storage-full says when to retry");
        assert!(p.detail.contains("full"), "{}", p.detail);
        refused = Some(i);
        break;
    }
    let refused = refused.expect("a 6 MiB volume cannot hold 12 MiB");
    // The full disk stops only what needs room: the other upload is still served.
    let got = anon
        .req(Method::GET, &format!("/v1/uploads/{done_id}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().to_vec(), other);
    let ready = anon.req(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(
        !acknowledged.is_empty() && acknowledged.len() < 6,
        "{acknowledged:?}"
    );
    let status: UploadStatus = anon
        .req(Method::GET, &format!("/v1/uploads/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status.received_bytes,
        (acknowledged.len() * MIB) as u64,
        "only acknowledged chunks are counted"
    );
    assert_eq!(
        common::ranges::count(&status.missing),
        (12 - acknowledged.len()) as u64
    );

    // Space comes back (and the server restarts, as an operator might): the upload
    // resumes where it stood.
    volume.resize("64m");
    server.restart();
    let anon = As::new(&server, None);
    for (i, chunk) in bytes.chunks(MIB).enumerate().skip(refused) {
        assert_eq!(
            anon.put_chunk(&id, i, chunk).await.status(),
            StatusCode::CREATED
        );
    }
    let done = anon
        .req(Method::POST, &format!("/v1/uploads/{id}/complete"))
        .json(&json!({"sha256": sha256_hex(&bytes)}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let content = anon
        .req(Method::GET, &format!("/v1/uploads/{id}/content"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(content[..] == bytes[..], "the published file differs");
    drop(server);
    tests::tally(
        "disk-full",
        "fault",
        "local disk: the data volume full mid-upload",
        1,
    );
}

/// 300 connections trickle bytes (half of them headers, half a chunk body) while a
/// 64 MiB upload runs through the CLI: the upload completes with the right SHA-256, and
/// the connections stuck in their headers are cut by the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_crowd_does_not_stop_a_normal_upload() {
    let (server, _data) = Server::start(&["--header-timeout", "3s"]);
    let anon = As::new(&server, None);
    let target = anon.create(150 * 64 * KIB, 64 * KIB).await;
    let addr = server.addr.clone();
    let mut header_trickles = Vec::new();
    let mut body_trickles = Vec::new();
    for i in 0..300 {
        let addr = addr.clone();
        let id = target.id.to_string();
        let task = tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let head = if i % 2 == 0 {
                // Headers that never end.
                format!("GET /v1/uploads/{id} HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            } else {
                // Complete headers, then a body one byte at a time.
                format!(
                    "PUT /v1/uploads/{id}/chunks/{} HTTP/1.1\r\nHost: x\r\n\
                     Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                    i / 2,
                    64 * KIB
                )
            };
            s.write_all(head.as_bytes()).await.unwrap();
            // Trickle until the server cuts the connection (or for at most 60 s).
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if s.write_all(b"a").await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut buf = [0u8; 256];
                match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    Ok(Ok(_)) => {
                        // An answer (408): the server is closing this connection.
                        return true;
                    }
                    Err(_) => {}
                }
            }
            false
        });
        if i % 2 == 0 {
            header_trickles.push(task);
        } else {
            body_trickles.push(task);
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let (path, sha) = random_file(dir.path(), "big.bin", 64 * MIB, 11);
    let url = server.url();
    let run = tokio::task::spawn_blocking(move || {
        let cli = Cli::new();
        cli.run(&[
            "upload",
            path.to_str().unwrap(),
            "--server",
            &url,
            "--chunk-size",
            "8MiB",
            "-j",
            "4",
            "--json",
        ])
    })
    .await
    .unwrap();
    run.expect_code(0);
    assert_eq!(run.one("completed")["sha256"], sha.as_str());

    let mut cut = 0;
    for t in header_trickles {
        if t.await.unwrap() {
            cut += 1;
        }
    }
    assert_eq!(cut, 150, "every connection stuck in its headers is cut");
    // The body tricklers move bytes, so they are served on; none blocked the upload.
    for t in body_trickles {
        assert!(!t.is_finished(), "a trickling body was cut while it moved");
        t.abort();
    }
}
