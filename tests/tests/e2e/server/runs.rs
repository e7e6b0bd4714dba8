//! Runs of chunks in one body (`POST /v1/uploads/{id}/chunks?from=N`), and the chunk
//! digests a completion gives for them (`chunk_sha256`).

use std::time::Duration;

use common::api::UploadState;
use common::UploadId;
use reqwest::{Response, StatusCode};
use serde_json::json;
use tests::random_bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::support::*;

impl Api {
    /// A run's request from chunk `from` (as written in the query), without its body.
    fn post_run(&self, id: UploadId, from: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(&format!("/v1/uploads/{id}/chunks?from={from}")))
    }

    async fn run(&self, id: UploadId, from: u64, bytes: &[u8]) -> Response {
        self.post_run(id, &from.to_string())
            .body(bytes.to_vec())
            .send()
            .await
            .expect("POST run")
    }
}

/// Every chunk's SHA-256, as a completion's `chunk_sha256`.
fn chunk_digests(file: &[u8], cs: usize) -> Vec<String> {
    file.chunks(cs).map(tests::sha256_hex).collect()
}

/// Completes `id` with every chunk's digest (200), and checks the file is `file`.
async fn complete_with_digests(api: &Api, id: UploadId, file: &[u8], cs: usize) {
    let resp = api
        .complete(id, Some(json!({ "chunk_sha256": chunk_digests(file, cs) })))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    api.assert_content(id, file).await;
}

/// A new upload of `len` random bytes (from `seed`) in chunks of `cs`: its id and bytes.
async fn created(api: &Api, cs: usize, len: usize, seed: u64) -> (UploadId, Vec<u8>) {
    let file = random_bytes(len, seed);
    let id = api
        .create(json!({"size": file.len(), "chunk_size": cs}))
        .await
        .id;
    (id, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_stores_its_chunks_and_completion_checks_them() {
    let (server, store) = start!(&[]);
    let api = Api::new(&server);
    let cs = store.chunk(64 * KIB);
    let (id, file) = created(&api, cs, 3 * cs + 100, 40).await;

    let resp = api.run(id, 0, &file).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let st: common::api::UploadStatus = resp.json().await.unwrap();
    assert_eq!(st.received_bytes, file.len() as u64);
    assert!(st.missing.is_empty(), "{:?}", st.missing);

    // A digest of other bytes for chunk 2: 422 naming it, and nothing is published.
    let mut digests = chunk_digests(&file, cs);
    let good = digests.clone();
    digests[2] = tests::sha256_hex(b"other bytes");
    let p = problem(
        api.complete(id, Some(json!({ "chunk_sha256": digests })))
            .await,
        422,
    )
    .await;
    assert_eq!(p.mismatched, Some(vec![[2, 2]]), "{p:?}");
    assert_eq!(api.status(id).await.state, UploadState::Uploading);
    assert_ne!(api.content(id).await.status(), StatusCode::OK);
    // A list of another length: 400, also one far longer than other JSON bodies may be
    // (a completion has room for the digests of the largest upload).
    problem(
        api.complete(id, Some(json!({ "chunk_sha256": &good[..3] })))
            .await,
        400,
    )
    .await;
    let many = vec![good[0].clone(); 5000];
    let p = problem(
        api.complete(id, Some(json!({ "chunk_sha256": many })))
            .await,
        400,
    )
    .await;
    assert!(p.detail.contains("5000 chunk digests"), "{p:?}");

    // The right digests (and the file's): completed, the file as sent.
    let resp = api
        .complete(
            id,
            Some(json!({ "chunk_sha256": good, "sha256": tests::sha256_hex(&file) })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    api.assert_content(id, &file).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_cut_short_keeps_its_whole_chunks() {
    let (server, store) = start!(&[]);
    let api = Api::new(&server);
    let cs = store.chunk(64 * KIB);
    let (id, file) = created(&api, cs, 4 * cs, 41).await;

    // Two chunks and a half, then the connection goes away.
    let mut s = TcpStream::connect(&server.addr).await.expect("connect");
    let head = format!(
        "POST /v1/uploads/{id}/chunks HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        file.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&file[..2 * cs + cs / 2]).await.unwrap();
    s.flush().await.unwrap();
    wait_until(Duration::from_secs(30), "two chunks stored", || async {
        api.status(id).await.received_bytes == 2 * cs as u64
    })
    .await;
    drop(s);
    wait_until(Duration::from_secs(30), "the cut run to end", || async {
        // The cut chunk is not kept: a run of the rest is taken whole.
        api.run(id, 2, &file[2 * cs..]).await.status() == StatusCode::OK
    })
    .await;
    let st = api.status(id).await;
    assert!(st.missing.is_empty(), "{:?}", st.missing);
    complete_with_digests(&api, id, &file, cs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_again_is_a_retry_and_other_bytes_conflict() {
    let (server, store) = start!(&[]);
    let api = Api::new(&server);
    let cs = store.chunk(64 * KIB);
    let (id, file) = created(&api, cs, 3 * cs, 42).await;
    assert_eq!(
        api.run(id, 0, &file[..2 * cs]).await.status(),
        StatusCode::OK
    );
    // The same bytes again: a retry, answered 200.
    assert_eq!(
        api.run(id, 0, &file[..2 * cs]).await.status(),
        StatusCode::OK
    );
    // Chunk 1 with other bytes: 409; chunk 2 after it is not stored.
    let mut other = file[cs..].to_vec();
    other[10] ^= 1;
    problem(api.run(id, 1, &other).await, 409).await;
    let st = api.status(id).await;
    assert_eq!(st.received_bytes, 2 * cs as u64);
    assert_eq!(st.missing, vec![[2, 2]]);
    // A chunk sent on its own (with its digest) and the run's are checked alike.
    api.put_ok(id, 2, &file[2 * cs..]).await;
    complete_with_digests(&api, id, &file, cs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_run_is_refused_and_stores_nothing() {
    let (server, store) = start!(&[]);
    let api = Api::new(&server);
    let cs = store.chunk(64 * KIB);
    let (id, file) = created(&api, cs, 2 * cs + 10, 43).await;
    // Not ending at a chunk's end nor at the file's end; past the file's end; from a
    // chunk that is not there; empty.
    let longer = [&file[..], b"x"].concat();
    for (from, body) in [
        (0, &file[..cs + 1]),
        (1, &file[cs..cs + 10]),
        (0, &longer[..]),
        (3, &file[..10]),
        (0, &[][..]),
    ] {
        problem(api.run(id, from, body).await, 400).await;
    }
    // An index that is not one.
    for from in ["x", "-1", "1.0", ""] {
        let resp = api
            .post_run(id, from)
            .body(file[..cs].to_vec())
            .send()
            .await
            .unwrap();
        problem(resp, 400).await;
    }
    // A digest of the whole body: chunk digests go with the completion.
    let resp = api
        .post_run(id, "0")
        .header("content-digest", digest(&file[..cs]).to_header())
        .body(file[..cs].to_vec())
        .send()
        .await
        .unwrap();
    problem(resp, 400).await;
    // Without Content-Length (a chunked body): 411.
    let resp = api
        .post_run(id, "0")
        .body(stream_body(vec![file[..cs].to_vec()]))
        .send()
        .await
        .unwrap();
    problem(resp, 411).await;
    let st = api.status(id).await;
    assert_eq!(st.received_bytes, 0);

    // An upload whose size is deferred takes chunks one by one.
    let deferred = api
        .create(json!({"defer_length": true, "chunk_size": cs}))
        .await
        .id;
    problem(api.run(deferred, 0, &file[..cs]).await, 400).await;
}
