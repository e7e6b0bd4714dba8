//! tus 1.0 conformance over raw HTTP, against the real `upload-server` process: every
//! status code of the core protocol and the supported extensions, uneven appends mapped
//! onto chunks, a restart mid-upload, and the upload's life in the native API.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use common::api::{UploadState, UploadStatus};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use sha2::{Digest, Sha256};
use tests::fixture::Storage;
use tests::http::wait_until;
use tests::{random_bytes, sha256_hex, Server};

/// Starts a server on this suite's storage (`super::STORAGE`: local disk or S3).
macro_rules! start {
    ($args:expr) => {
        tests::start_or_skip!(super::STORAGE, $args)
    };
}

const MIB: usize = 1 << 20;
const OCTETS: &str = "application/offset+octet-stream";

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

struct Tus {
    http: Client,
    base: String,
}

impl Tus {
    fn new(server: &Server) -> Self {
        Self {
            http: client(),
            base: server.url(),
        }
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("tus-resumable", "1.0.0")
    }

    /// Creates an upload and returns its path (`/files/{id}`).
    async fn create(&self, len: usize, metadata: &str) -> String {
        let mut r = self
            .req(Method::POST, "/files/")
            .header("upload-length", len.to_string());
        if !metadata.is_empty() {
            r = r.header("upload-metadata", metadata);
        }
        let resp = r.send().await.expect("POST");
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(header(&resp, "tus-resumable"), "1.0.0");
        let loc = header(&resp, "location");
        assert!(loc.starts_with("/files/"), "{loc}");
        loc
    }

    async fn patch(&self, path: &str, offset: usize, body: Vec<u8>) -> Response {
        self.req(Method::PATCH, path)
            .header("content-type", OCTETS)
            .header("upload-offset", offset.to_string())
            .body(body)
            .send()
            .await
            .expect("PATCH")
    }

    /// Creates an upload with `Upload-Defer-Length: 1` and no body; returns its path.
    async fn create_deferred(&self) -> String {
        let resp = self
            .req(Method::POST, "/files/")
            .header("upload-defer-length", "1")
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert!(resp.headers().get("upload-length").is_none(), "{resp:?}");
        let loc = header(&resp, "location");
        assert!(loc.starts_with("/files/"), "{loc}");
        loc
    }

    /// A PATCH that also says `Upload-Length: length`.
    async fn patch_declaring(
        &self,
        path: &str,
        offset: usize,
        length: usize,
        body: Vec<u8>,
    ) -> Response {
        self.req(Method::PATCH, path)
            .header("content-type", OCTETS)
            .header("upload-offset", offset.to_string())
            .header("upload-length", length.to_string())
            .body(body)
            .send()
            .await
            .expect("PATCH")
    }

    /// `HEAD`: (Upload-Offset, Upload-Length, Upload-Defer-Length), the last two if sent.
    async fn lengths(&self, path: &str) -> (u64, Option<u64>, Option<String>) {
        let resp = self.req(Method::HEAD, path).send().await.expect("HEAD");
        assert_eq!(resp.status(), StatusCode::OK);
        let get = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().expect("ascii header").to_string())
        };
        (
            header(&resp, "upload-offset").parse().expect("offset"),
            get("upload-length").map(|v| v.parse().expect("length")),
            get("upload-defer-length"),
        )
    }

    async fn offset(&self, path: &str) -> u64 {
        let resp = self.req(Method::HEAD, path).send().await.expect("HEAD");
        assert_eq!(resp.status(), StatusCode::OK);
        header(&resp, "upload-offset").parse().expect("offset")
    }

    async fn native(&self, path: &str) -> UploadStatus {
        let id = path.trim_start_matches("/files/");
        let resp = self
            .http
            .get(format!("{}/v1/uploads/{id}", self.base))
            .send()
            .await
            .expect("status");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.expect("status json")
    }

    async fn content_sha(&self, path: &str) -> String {
        let id = path.trim_start_matches("/files/");
        let bytes = self
            .http
            .get(format!("{}/v1/uploads/{id}/content", self.base))
            .send()
            .await
            .expect("content")
            .bytes()
            .await
            .expect("content body");
        sha256_hex(&bytes)
    }
}

/// The upload id of a tus path.
fn tus_id(path: &str) -> common::UploadId {
    path.trim_start_matches("/files/")
        .parse()
        .expect("an upload id")
}

/// Starts a PATCH at offset 0 whose body is fed by the returned sender.
fn slow_patch(
    tus: &Tus,
    path: &str,
    content_length: usize,
) -> (
    tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    tokio::task::JoinHandle<reqwest::Result<Response>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|b| (b, rx))
    }));
    let req = tus
        .req(Method::PATCH, path)
        .header("content-type", OCTETS)
        .header("upload-offset", "0")
        .header("content-length", content_length.to_string())
        .body(body)
        .send();
    (tx, tokio::spawn(req))
}

fn header(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {resp:?}"))
        .to_str()
        .expect("ascii header")
        .to_string()
}

#[tokio::test]
async fn options_advertises_the_protocol() {
    let (server, _store) = start!(&["--max-upload-size", "5GiB"]);
    let tus = Tus::new(&server);
    let resp = client()
        .request(Method::OPTIONS, format!("{}/files/", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "tus-version"), "1.0.0");
    assert_eq!(header(&resp, "tus-max-size"), (5u64 << 30).to_string());
    let ext = header(&resp, "tus-extension");
    for e in [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
        "concatenation",
    ] {
        assert!(ext.split(',').any(|x| x == e), "{e} missing from {ext}");
    }
    let algs = header(&resp, "tus-checksum-algorithm");
    for a in ["sha1", "sha256", "md5"] {
        assert!(algs.split(',').any(|x| x == a), "{a} missing from {algs}");
    }
    // The path without its trailing slash works too.
    let resp = tus.req(Method::OPTIONS, "/files").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn version_media_type_and_header_errors() {
    let (server, _store) = start!(&[]);
    let tus = Tus::new(&server);
    let url = format!("{}/files/", server.url());
    // No Tus-Resumable, and an unknown version: 412 with the version we speak.
    for version in [None, Some("0.2.2")] {
        let mut r = client().post(&url).header("upload-length", "10");
        if let Some(v) = version {
            r = r.header("tus-resumable", v);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(header(&resp, "tus-version"), "1.0.0");
    }
    // Missing (and not deferred) or bad Upload-Length.
    for (h, v) in [
        ("x-none", "1"),
        ("upload-length", "-1"),
        ("upload-length", "ten"),
    ] {
        let resp = tus
            .req(Method::POST, "/files/")
            .header(h, v)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{h}: {v}");
    }
    // A deferred length with a length, or with a value other than 1.
    for (defer, length) in [("1", Some("10")), ("0", None), ("yes", None)] {
        let mut req = tus
            .req(Method::POST, "/files/")
            .header("upload-defer-length", defer);
        if let Some(l) = length {
            req = req.header("upload-length", l);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{defer} {length:?}");
    }
    // Too large.
    let resp = tus
        .req(Method::POST, "/files/")
        .header("upload-length", (2u64 << 40).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Bad metadata.
    let resp = tus
        .req(Method::POST, "/files/")
        .header("upload-length", "10")
        .header("upload-metadata", "filename !!notbase64")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let path = tus.create(10, "").await;
    // Wrong content type: 415; no offset: 400; a bad checksum header: 400.
    let resp = tus
        .req(Method::PATCH, &path)
        .header("content-type", "text/plain")
        .header("upload-offset", "0")
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let resp = tus
        .req(Method::PATCH, &path)
        .header("content-type", OCTETS)
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = tus
        .req(Method::PATCH, &path)
        .header("content-type", OCTETS)
        .header("upload-offset", "0")
        .header("upload-checksum", "crc32 AAAAAA==")
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(tus.offset(&path).await, 0);
    // Unknown and malformed ids.
    for p in [
        "/files/00000000-0000-4000-8000-000000000000",
        "/files/..%2F..%2Fetc%2Fpasswd",
    ] {
        let resp = tus.req(Method::HEAD, p).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{p}");
    }
}

#[tokio::test]
async fn uneven_patches_across_chunks_complete_and_verify() {
    let (server, _store) = start!(&[]);
    let tus = Tus::new(&server);
    let file = random_bytes(20 * MIB + 12_345, 11);
    let meta = format!(
        "filename {},filetype {},empty",
        b64(b"r\xc3\xa9port.bin"),
        b64(b"application/pdf")
    );
    let path = tus.create(file.len(), &meta).await;

    let head = tus.req(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(header(&head, "upload-offset"), "0");
    assert_eq!(header(&head, "upload-length"), file.len().to_string());
    assert_eq!(header(&head, "cache-control"), "no-store");
    assert!(!header(&head, "upload-expires").is_empty());
    let echoed = header(&head, "upload-metadata");
    for pair in meta.split(',') {
        assert!(
            echoed.split(',').any(|p| p == pair),
            "{pair} not in {echoed}"
        );
    }

    // Pieces that start and end inside chunks, one that is a single byte, one that
    // crosses two chunk boundaries.
    let cuts = [
        3 * MIB + 7,
        3 * MIB + 8,
        8 * MIB,
        8 * MIB + 1,
        19 * MIB,
        file.len(),
    ];
    let mut at = 0;
    for cut in cuts {
        let resp = tus.patch(&path, at, file[at..cut].to_vec()).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "PATCH {at}..{cut}");
        assert_eq!(header(&resp, "upload-offset"), cut.to_string());
        assert_eq!(header(&resp, "tus-resumable"), "1.0.0");
        at = cut;
        if cut < file.len() {
            assert_eq!(tus.offset(&path).await, cut as u64);
            assert_eq!(tus.native(&path).await.received_bytes, cut as u64);
        }
    }
    let status = tus.native(&path).await;
    assert_eq!(status.state, UploadState::Completed);
    assert_eq!(status.sha256.unwrap().to_hex(), sha256_hex(&file));
    assert_eq!(status.filename.as_deref(), Some("r\u{e9}port.bin"));
    assert_eq!(status.metadata["filetype"], "application/pdf");
    assert_eq!(status.metadata["empty"], "");
    assert_eq!(tus.content_sha(&path).await, sha256_hex(&file));
    assert_eq!(tus.offset(&path).await, file.len() as u64);
    // Nothing more can be appended.
    let resp = tus.patch(&path, file.len(), b"x".to_vec()).await;
    assert!(resp.status().is_client_error());
}

#[tokio::test]
async fn offsets_checksums_and_lengths() {
    let (server, _store) = start!(&[]);
    let tus = Tus::new(&server);
    let file = random_bytes(300_000, 12);
    let path = tus.create(file.len(), "").await;

    // A stale offset: 409, nothing appended.
    let resp = tus.patch(&path, 5, file[5..10].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(tus.offset(&path).await, 0);

    let part = |a: usize, b: usize| file[a..b].to_vec();
    let checked = |alg: &str, digest: Vec<u8>, a: usize, b: usize| {
        tus.req(Method::PATCH, &path)
            .header("content-type", OCTETS)
            .header("upload-offset", a.to_string())
            .header("upload-checksum", format!("{alg} {}", b64(&digest)))
            .body(part(a, b))
    };
    // Right sha256: appended.
    let resp = checked(
        "sha256",
        Sha256::digest(&file[..100_000]).to_vec(),
        0,
        100_000,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "upload-offset"), "100000");
    // Wrong sha1: 460, nothing appended.
    let resp = checked("sha1", vec![0; 20], 100_000, 200_000)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 460);
    assert_eq!(tus.offset(&path).await, 100_000);
    // Right sha1 and md5.
    let sha1 = {
        use sha1::Digest as _;
        sha1::Sha1::digest(&file[100_000..200_000]).to_vec()
    };
    let resp = checked("sha1", sha1, 100_000, 200_000)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let md5 = {
        use md5::Digest as _;
        md5::Md5::digest(&file[200_000..250_000]).to_vec()
    };
    let resp = checked("md5", md5, 200_000, 250_000).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // Past the length: refused, nothing appended.
    let mut long = part(250_000, 300_000);
    long.push(0);
    let resp = tus.patch(&path, 250_000, long).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(tus.offset(&path).await, 250_000);
    let resp = tus.patch(&path, 250_000, part(250_000, 300_000)).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let status = tus.native(&path).await;
    assert_eq!(status.state, UploadState::Completed);
    assert_eq!(status.sha256.unwrap().to_hex(), sha256_hex(&file));
}

/// creation-defer-length: created with `Upload-Defer-Length: 1` (and a first part),
/// HEAD says so and no `Upload-Length`, the native status says `length_deferred`; a PATCH
/// past the ceiling is 413; the length cannot be below the bytes stored, is said by the
/// last PATCH, and never changes; the upload completes with the file's SHA-256.
#[tokio::test]
async fn a_deferred_length_is_said_by_the_last_patch() {
    let (server, _store) = start!(&["--max-upload-size", "3MiB"]);
    let tus = Tus::new(&server);
    let bytes = random_bytes(2 * MIB + 4_321, 41);
    let resp = tus
        .req(Method::POST, "/files/")
        .header("upload-defer-length", "1")
        .header("content-type", OCTETS)
        .body(bytes[..700_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "upload-offset"), "700000");
    let loc = header(&resp, "location");
    let head = tus.req(Method::HEAD, &loc).send().await.unwrap();
    assert_eq!(header(&head, "upload-defer-length"), "1");
    assert!(head.headers().get("upload-length").is_none());
    let status = tus.native(&loc).await;
    assert!(status.length_deferred);
    assert_eq!(status.size, 3 * MIB as u64);
    // Past the ceiling: nothing appended.
    let resp = tus.patch(&loc, 700_000, random_bytes(3 * MIB, 42)).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(tus.offset(&loc).await, 700_000);
    let resp = tus
        .patch(&loc, 700_000, bytes[700_000..2 * MIB].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // A length below what this PATCH ends at.
    let resp = tus
        .req(Method::PATCH, &loc)
        .header("content-type", OCTETS)
        .header("upload-offset", (2 * MIB).to_string())
        .header("upload-length", (2 * MIB + 10).to_string())
        .body(bytes[2 * MIB..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(tus.offset(&loc).await, 2 * MIB as u64);
    let resp = tus
        .req(Method::PATCH, &loc)
        .header("content-type", OCTETS)
        .header("upload-offset", (2 * MIB).to_string())
        .header("upload-length", bytes.len().to_string())
        .body(bytes[2 * MIB..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "upload-offset"), bytes.len().to_string());
    let status = tus.native(&loc).await;
    assert_eq!(status.state, UploadState::Completed);
    assert!(!status.length_deferred);
    assert_eq!(status.size, bytes.len() as u64);
    assert_eq!(tus.content_sha(&loc).await, sha256_hex(&bytes));
    let head = tus.req(Method::HEAD, &loc).send().await.unwrap();
    assert_eq!(header(&head, "upload-length"), bytes.len().to_string());
    assert!(head.headers().get("upload-defer-length").is_none());

    // Once said, the length stays: another one is refused, nothing appended.
    let loc = {
        let resp = tus
            .req(Method::POST, "/files/")
            .header("upload-defer-length", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        header(&resp, "location")
    };
    let resp = tus
        .req(Method::PATCH, &loc)
        .header("content-type", OCTETS)
        .header("upload-offset", "0")
        .header("upload-length", bytes.len().to_string())
        .body(bytes[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = tus
        .req(Method::PATCH, &loc)
        .header("content-type", OCTETS)
        .header("upload-offset", "1000")
        .header("upload-length", (bytes.len() + 1).to_string())
        .body(bytes[1000..2000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(tus.offset(&loc).await, 1000);
}

/// creation-defer-length up to the ceiling: a deferred upload takes appends in several
/// PATCHes (HEAD: its offset, `Upload-Defer-Length: 1`, no `Upload-Length`; native status:
/// uploading, `length_deferred`, `size` the ceiling) up to exactly `--max-upload-size`, where
/// it is still not complete; a byte more is 413, a length below the offset is 400, a length
/// above the ceiling is 413, each leaving it as it was; an empty PATCH saying the length is
/// the offset completes it with the file's SHA-256.
#[tokio::test]
async fn a_deferred_upload_grows_to_the_ceiling_and_completes_only_once_said() {
    let (server, _store) = start!(&["--max-upload-size", "1MiB"]);
    let tus = Tus::new(&server);
    let bytes = random_bytes(MIB, 43);
    let loc = tus.create_deferred().await;
    assert_eq!(tus.lengths(&loc).await, (0, None, Some("1".into())));
    let mut at = 0;
    for end in [300_000, 700_001, MIB] {
        let resp = tus.patch(&loc, at, bytes[at..end].to_vec()).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "PATCH {at}..{end}");
        assert_eq!(header(&resp, "upload-offset"), end.to_string());
        at = end;
        assert_eq!(tus.lengths(&loc).await, (at as u64, None, Some("1".into())));
        let status = tus.native(&loc).await;
        assert_eq!(status.state, UploadState::Uploading, "at {at}");
        assert!(status.length_deferred, "at {at}");
        assert_eq!(status.size, MIB as u64);
        assert_eq!(status.received_bytes, at as u64);
        assert!(status.sha256.is_none());
    }
    // Full to the ceiling, and still deferred: nothing more fits.
    let resp = tus.patch(&loc, MIB, b"x".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A length below the offset, and one above the ceiling.
    let resp = tus.patch_declaring(&loc, MIB, MIB - 1, Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = tus.patch_declaring(&loc, MIB, MIB + 1, Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        tus.lengths(&loc).await,
        (MIB as u64, None, Some("1".into()))
    );
    assert_eq!(tus.native(&loc).await.state, UploadState::Uploading);

    let resp = tus.patch_declaring(&loc, MIB, MIB, Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "upload-offset"), MIB.to_string());
    let status = tus.native(&loc).await;
    assert_eq!(status.state, UploadState::Completed);
    assert_eq!(status.sha256.unwrap().to_hex(), sha256_hex(&bytes));
    assert_eq!(status.size, MIB as u64);
    assert!(!status.length_deferred);
    assert_eq!(tus.content_sha(&loc).await, sha256_hex(&bytes));
    assert_eq!(
        tus.lengths(&loc).await,
        (MIB as u64, Some(MIB as u64), None)
    );
}

/// A length said by a PATCH in the middle of a deferred upload is kept: from then on HEAD
/// has `Upload-Length` and no `Upload-Defer-Length`, the native status has `size` the length
/// and no `length_deferred` while the upload goes on; the same `Upload-Length` again is
/// accepted, another one is 400 and appends nothing, and so is a body past the length; the
/// upload completes, without saying the length again, with the file's SHA-256. An upload
/// whose length was known at creation takes its own length on a PATCH and refuses another.
#[tokio::test]
async fn a_deferred_length_said_mid_upload_is_kept() {
    let (server, _store) = start!(&[]);
    let tus = Tus::new(&server);
    let bytes = random_bytes(6 * MIB + 777, 44);
    let len = bytes.len();
    let loc = tus.create_deferred().await;
    let resp = tus.patch(&loc, 0, bytes[..3 * MIB].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = tus
        .patch_declaring(&loc, 3 * MIB, len, bytes[3 * MIB..4 * MIB].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "upload-offset"), (4 * MIB).to_string());
    assert_eq!(
        tus.lengths(&loc).await,
        ((4 * MIB) as u64, Some(len as u64), None)
    );
    let status = tus.native(&loc).await;
    assert_eq!(status.state, UploadState::Uploading);
    assert!(!status.length_deferred);
    assert_eq!(status.size, len as u64);
    assert_eq!(status.received_bytes, (4 * MIB) as u64);

    // The same length again: fine.
    let resp = tus
        .patch_declaring(&loc, 4 * MIB, len, bytes[4 * MIB..5 * MIB].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // Another length, either way: 400, nothing appended.
    for other in [len - 1, len + 1] {
        let resp = tus
            .patch_declaring(&loc, 5 * MIB, other, bytes[5 * MIB..6 * MIB].to_vec())
            .await;
        assert_eq!(
            resp.status(),
            StatusCode::BAD_REQUEST,
            "Upload-Length {other}"
        );
    }
    // A body past the length said.
    let mut long = bytes[5 * MIB..].to_vec();
    long.push(0);
    let resp = tus.patch(&loc, 5 * MIB, long).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        tus.lengths(&loc).await,
        ((5 * MIB) as u64, Some(len as u64), None)
    );
    let resp = tus.patch(&loc, 5 * MIB, bytes[5 * MIB..].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "upload-offset"), len.to_string());
    let status = tus.native(&loc).await;
    assert_eq!(status.state, UploadState::Completed);
    assert_eq!(status.sha256.unwrap().to_hex(), sha256_hex(&bytes));
    assert_eq!(tus.content_sha(&loc).await, sha256_hex(&bytes));

    // Known at creation: its own length on a PATCH is accepted, another one is not.
    let known = tus.create(10, "").await;
    let resp = tus.patch_declaring(&known, 0, 10, b"01234".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = tus.patch_declaring(&known, 5, 11, b"56789".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(tus.lengths(&known).await, (5, Some(10), None));
}

/// A deferred upload (created with a first part) survives a kill -9 with its length still
/// deferred and every acknowledged byte, across 8 MiB chunk boundaries (with a ceiling of
/// 32 GiB, deferred uploads have 8 MiB chunks); the length said after the restart cuts the
/// last chunk, the upload completes with the file's SHA-256, and stays so after another
/// restart.
#[tokio::test]
async fn a_deferred_upload_resumes_after_kill9_and_is_said_after() {
    let (mut server, _store) = start!(&["--max-upload-size", "32GiB"]);
    let bytes = random_bytes(17 * MIB + 4_321, 45);
    let len = bytes.len();
    let loc = {
        let tus = Tus::new(&server);
        let resp = tus
            .req(Method::POST, "/files/")
            .header("upload-defer-length", "1")
            .header("content-type", OCTETS)
            .body(bytes[..MIB].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(header(&resp, "upload-offset"), MIB.to_string());
        let loc = header(&resp, "location");
        assert_eq!(tus.native(&loc).await.chunk_size, 8 * MIB as u64);
        let resp = tus
            .patch(&loc, MIB, bytes[MIB..9 * MIB + 100].to_vec())
            .await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        loc
    };
    server.restart();
    let tus = Tus::new(&server);
    assert_eq!(
        tus.lengths(&loc).await,
        ((9 * MIB + 100) as u64, None, Some("1".into()))
    );
    let status = tus.native(&loc).await;
    assert!(status.length_deferred);
    assert_eq!(status.state, UploadState::Uploading);
    assert_eq!(status.received_bytes, (9 * MIB + 100) as u64);
    let resp = tus
        .patch(&loc, 9 * MIB + 100, bytes[9 * MIB + 100..16 * MIB].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = tus
        .patch_declaring(&loc, 16 * MIB, len, bytes[16 * MIB..].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "upload-offset"), len.to_string());
    let status = tus.native(&loc).await;
    assert_eq!(status.state, UploadState::Completed);
    assert_eq!(status.size, len as u64);
    assert_eq!(status.chunk_count, 3);
    assert_eq!(status.sha256.unwrap().to_hex(), sha256_hex(&bytes));
    assert_eq!(tus.content_sha(&loc).await, sha256_hex(&bytes));

    server.restart();
    let tus = Tus::new(&server);
    let status = tus.native(&loc).await;
    assert_eq!(status.state, UploadState::Completed);
    assert!(!status.length_deferred);
    assert_eq!(status.sha256.unwrap().to_hex(), sha256_hex(&bytes));
    assert_eq!(tus.content_sha(&loc).await, sha256_hex(&bytes));
    assert_eq!(
        tus.lengths(&loc).await,
        (len as u64, Some(len as u64), None)
    );
}

#[tokio::test]
async fn creation_with_upload_zero_length_and_termination() {
    let (server, _store) = start!(&[]);
    let tus = Tus::new(&server);
    let file = random_bytes(1_000_000, 13);
    // creation-with-upload: part of the file in the POST.
    let resp = tus
        .req(Method::POST, "/files/")
        .header("upload-length", file.len().to_string())
        .header("content-type", OCTETS)
        .body(file[..400_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "upload-offset"), "400000");
    let path = header(&resp, "location");
    assert_eq!(tus.offset(&path).await, 400_000);
    let resp = tus.patch(&path, 400_000, file[400_000..].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(tus.content_sha(&path).await, sha256_hex(&file));

    // A zero-length upload is complete at once.
    let empty = tus.create(0, "").await;
    let status = tus.native(&empty).await;
    assert_eq!(status.state, UploadState::Completed);
    assert_eq!(status.sha256.unwrap().to_hex(), sha256_hex(b""));

    // Termination: 204, then gone everywhere.
    let path = tus.create(10, "").await;
    let resp = tus.req(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "tus-resumable"), "1.0.0");
    let resp = tus.req(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::GONE);
    let resp = tus.patch(&path, 0, b"0123456789".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::GONE);
    let id = path.trim_start_matches("/files/");
    let resp = client()
        .get(format!("{}/v1/uploads/{id}", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GONE);
}

#[tokio::test]
async fn one_writer_at_a_time() {
    let (server, store) = start!(&[]);
    let tus = Tus::new(&server);
    let file = random_bytes(2 * MIB, 14);
    let path = tus.create(file.len(), "").await;
    // A PATCH whose body arrives under the test's control; more than the server's 1 MiB
    // write buffer goes first, so its bytes show on disk while it is still running.
    let (tx, slow) = slow_patch(&tus, &path, 2 * MIB);
    tx.send(Ok(Bytes::copy_from_slice(&file[..MIB + 1000])))
        .await
        .unwrap();
    let id = tus_id(&path);
    wait_until(
        Duration::from_secs(10),
        "the PATCH's bytes being stored",
        || store.writing(&server, id, 0, &file[..MIB]),
    )
    .await;
    let second = tus.patch(&path, 0, file.clone()).await;
    assert_eq!(second.status(), StatusCode::LOCKED);
    tx.send(Ok(Bytes::copy_from_slice(&file[MIB + 1000..])))
        .await
        .unwrap();
    drop(tx);
    let first = slow.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        tus.native(&path).await.sha256.unwrap().to_hex(),
        sha256_hex(&file)
    );
}

#[tokio::test]
async fn resumes_after_kill9_with_partial_chunks() {
    let (mut server, _store) = start!(&[]);
    let file = random_bytes(10 * MIB + 333, 15);
    let path = {
        let tus = Tus::new(&server);
        let path = tus.create(file.len(), "").await;
        for (a, b) in [(0, 5 * MIB + 1), (5 * MIB + 1, 9 * MIB)] {
            let resp = tus.patch(&path, a, file[a..b].to_vec()).await;
            assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        }
        path
    };
    server.restart();
    let tus = Tus::new(&server);
    // Every acknowledged byte is there, nothing more.
    assert_eq!(tus.offset(&path).await, (9 * MIB) as u64);
    let resp = tus.patch(&path, 9 * MIB, file[9 * MIB..].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let status = tus.native(&path).await;
    assert_eq!(status.state, UploadState::Completed);
    assert_eq!(status.sha256.unwrap().to_hex(), sha256_hex(&file));
    assert_eq!(tus.content_sha(&path).await, sha256_hex(&file));
}

#[tokio::test]
async fn protocols_do_not_mix_writes() {
    let (server, _store) = start!(&[]);
    let tus = Tus::new(&server);
    let http = client();
    // A tus upload takes no native chunk...
    let path = tus.create(10, "").await;
    let id = path.trim_start_matches("/files/");
    let resp = http
        .put(format!("{}/v1/uploads/{id}/chunks/0", server.url()))
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    // ...and a native upload takes no tus PATCH.
    let resp = http
        .post(format!("{}/v1/uploads", server.url()))
        .json(&serde_json::json!({"size": 10}))
        .send()
        .await
        .unwrap();
    let st: UploadStatus = resp.json().await.unwrap();
    let resp = tus
        .patch(&format!("/files/{}", st.id), 0, b"0123456789".to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn cors_for_configured_origins_only() {
    let (server, _store) = start!(&["--cors-origin", "http://app.example"]);
    let http = client();
    let preflight = |origin: &'static str| {
        http.request(Method::OPTIONS, format!("{}/files/", server.url()))
            .header("origin", origin)
            .header("access-control-request-method", "PATCH")
            .header(
                "access-control-request-headers",
                "tus-resumable,upload-offset,content-type",
            )
            .send()
    };
    let resp = preflight("http://app.example").await.unwrap();
    assert!(resp.status().is_success());
    assert_eq!(
        header(&resp, "access-control-allow-origin"),
        "http://app.example"
    );
    let allowed = header(&resp, "access-control-allow-headers").to_lowercase();
    for h in ["tus-resumable", "upload-offset", "content-type"] {
        assert!(allowed.contains(h), "{h} not in {allowed}");
    }
    assert!(header(&resp, "access-control-allow-methods").contains("PATCH"));
    // Another origin gets no permission.
    let resp = preflight("http://evil.example").await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    // A real request exposes what tus clients read.
    let resp = http
        .post(format!("{}/files/", server.url()))
        .header("origin", "http://app.example")
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let exposed = header(&resp, "access-control-expose-headers").to_lowercase();
    for h in [
        "location",
        "upload-offset",
        "upload-length",
        "tus-resumable",
        "x-request-id",
    ] {
        assert!(exposed.contains(h), "{h} not in {exposed}");
    }
}

#[tokio::test]
async fn concatenation_joins_parallel_parts() {
    let (server, _store) = start!(&[]);
    let tus = Tus::new(&server);
    let file = random_bytes(9 * MIB + 77, 16);
    let bounds = [0, 3 * MIB + 1, 3 * MIB + 1, 9 * MIB + 77];
    let mut parts = Vec::new();
    for w in bounds.windows(2) {
        let resp = tus
            .req(Method::POST, "/files/")
            .header("upload-concat", "partial")
            .header("upload-length", (w[1] - w[0]).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        parts.push((header(&resp, "location"), w[0], w[1]));
    }
    // A final upload of an unfinished part is refused.
    let resp = tus
        .req(Method::POST, "/files/")
        .header("upload-concat", format!("final;{}", parts[0].0))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // The parts go up in parallel (the empty middle one needs nothing).
    let mut tasks = tokio::task::JoinSet::new();
    for (path, a, b) in parts.clone() {
        let tus = Tus {
            http: client(),
            base: server.url(),
        };
        let bytes = file[a..b].to_vec();
        tasks.spawn(async move {
            if !bytes.is_empty() {
                let resp = tus.patch(&path, 0, bytes).await;
                assert_eq!(resp.status(), StatusCode::NO_CONTENT);
            }
            let head = tus.req(Method::HEAD, &path).send().await.unwrap();
            assert_eq!(header(&head, "upload-concat"), "partial");
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // With a length: refused. Then the final upload, naming parts by path and by URL.
    let list = format!(
        "final;{} {} {}{}",
        parts[0].0,
        parts[1].0,
        server.url(),
        parts[2].0
    );
    let resp = tus
        .req(Method::POST, "/files/")
        .header("upload-concat", &list)
        .header("upload-length", file.len().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = tus
        .req(Method::POST, "/files/")
        .header("upload-concat", &list)
        .header(
            "upload-metadata",
            format!("filename {}", b64(b"joined.bin")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let path = header(&resp, "location");
    let status = tus.native(&path).await;
    assert_eq!(status.state, UploadState::Completed);
    assert_eq!(status.size, file.len() as u64);
    assert_eq!(status.sha256.unwrap().to_hex(), sha256_hex(&file));
    assert_eq!(status.filename.as_deref(), Some("joined.bin"));
    assert_eq!(tus.content_sha(&path).await, sha256_hex(&file));
    let head = tus.req(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(header(&head, "upload-offset"), file.len().to_string());
    assert!(header(&head, "upload-concat").starts_with("final;/files/"));
    // The parts' bytes live on in the final upload only.
    for (p, _, _) in &parts {
        let resp = tus.req(Method::HEAD, p).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::GONE);
    }
}

#[tokio::test]
async fn a_stalled_patch_is_taken_over_and_keeps_what_arrived() {
    let (server, store) = start!(&["--stall-takeover", "1s", "--body-timeout", "60s"]);
    if store.storage == Storage::S3 {
        // On S3 the PATCH streams its chunk into a part, which a cut does not keep, and
        // another server may hold the append lease: the S3 suite covers a cut PATCH.
        return;
    }
    let tus = Tus::new(&server);
    let file = random_bytes(2 * MIB, 17);
    let path = tus.create(file.len(), "").await;
    let (tx, stalled) = slow_patch(&tus, &path, 2 * MIB);
    tx.send(Ok(Bytes::copy_from_slice(&file[..MIB + 1000])))
        .await
        .unwrap();
    let id = tus_id(&path);
    wait_until(
        Duration::from_secs(10),
        "the PATCH's bytes being stored",
        || store.writing(&server, id, 0, &file[..MIB]),
    )
    .await;
    // The first PATCH now stalls. A new one takes over once it has moved nothing for 1 s:
    // the stalled one keeps what arrived (tus semantics) and the new one learns the offset.
    // Until then it is answered 423, which clients retry (as tus-js-client does).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let resp = loop {
        let resp = tus.patch(&path, 0, file.clone()).await;
        if resp.status() != StatusCode::LOCKED || std::time::Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let offset = tus.offset(&path).await as usize;
    assert_eq!(offset, MIB + 1000);
    let resp = tus.patch(&path, offset, file[offset..].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        tus.native(&path).await.sha256.unwrap().to_hex(),
        sha256_hex(&file)
    );
    drop(tx);
    // The stalled request was answered (or its connection closed), not left hanging.
    let first = tokio::time::timeout(Duration::from_secs(10), stalled)
        .await
        .unwrap()
        .unwrap();
    if let Ok(r) = first {
        assert!(r.status().is_client_error(), "{:?}", r.status());
    }
}
