//! The happy paths of the native API v1: capabilities, parallel out-of-order upload,
//! download (ranges, HEAD, ETag), empty and boundary-sized files, idempotent create,
//! completion rules, cancellation, request ids.

use std::sync::Arc;
use std::time::Duration;

use common::api::{UploadState, UploadStatus};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tests::{random_bytes, sha256_hex};

use super::support::*;

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capabilities_have_exactly_the_contract_fields() {
    let (server, store) = start!(&["--max-upload-size", "3GiB"]);
    let api = Api::new(&server);
    let resp = api.http.get(api.url("/v1")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(header(resp.headers(), "content-type").starts_with("application/json"));
    let caps: Value = resp.json().await.unwrap();
    let obj = caps.as_object().unwrap();
    for key in [
        "version",
        "max_upload_size",
        "chunk_size",
        "max_chunks",
        "storage",
        "checksums",
    ] {
        assert!(obj.contains_key(key), "GET /v1 lacks {key}: {caps}");
    }
    assert_eq!(caps["version"], json!("1"));
    assert_eq!(
        caps["max_upload_size"],
        json!(3u64 << 30),
        "follows the flag"
    );
    assert_eq!(caps["storage"], json!(store.name()));
    assert_eq!(caps["checksums"], json!(["sha-256"]));
    assert_eq!(caps["chunk_size"]["default"], json!(8 * MIB));
    let min = caps["chunk_size"]["min"].as_u64().unwrap();
    let max = caps["chunk_size"]["max"].as_u64().unwrap();
    assert!(
        min > 0 && min <= store.chunk(MIB) as u64,
        "min chunk size {min} must be ≤ 1 MiB (5 MiB on S3)"
    );
    assert!(max >= 8 * MIB as u64, "max chunk size {max}");
    assert_eq!(caps["chunk_size"].as_object().unwrap().len(), 3, "{caps}");
    assert!(caps["max_chunks"].as_u64().unwrap() >= 10_000, "{caps}");
}

/// 10 chunks of 1 MiB (4 of 5 MiB on S3) plus a 123,457-byte tail, sent concurrently in shuffled order with
/// `Content-Digest`, then downloaded whole, by range, by HEAD, and conditionally.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_out_of_order_upload_round_trips() {
    let (server, store) = start!(&[]);
    let api = Arc::new(Api::new(&server));
    let (cs, n) = (store.chunk(MIB), store.count(10));
    let file = Arc::new(random_bytes(n * cs + 123_457, 1));
    let sha = sha256_hex(&file);
    let st = api
        .create(
            json!({"size": file.len(), "chunk_size": cs, "filename": "b\u{e9}b\u{e9} \"1\".bin",
                       "metadata": {"owner": "tests"}}),
        )
        .await;
    assert_eq!(st.size, file.len() as u64);
    assert_eq!(st.chunk_size, cs as u64);
    assert_eq!(st.chunk_count, n as u64 + 1);
    assert_eq!(st.missing, vec![[0, n as u64]]);
    assert_eq!(st.filename.as_deref(), Some("b\u{e9}b\u{e9} \"1\".bin"));
    assert_eq!(st.metadata.get("owner").map(String::as_str), Some("tests"));
    assert!(st.expires_at.is_some());
    let id = st.id;

    let mut order: Vec<usize> = (0..=n).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    let mut tasks = tokio::task::JoinSet::new();
    for i in order {
        let (api, file) = (api.clone(), file.clone());
        tasks.spawn(async move {
            let end = ((i + 1) * cs).min(file.len());
            api.put_ok(id, i as u64, &file[i * cs..end]).await;
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("chunk task");
    }
    let st = api.status(id).await;
    assert_eq!(st.received_bytes, file.len() as u64);
    assert!(st.missing.is_empty(), "{:?}", st.missing);
    assert_eq!(st.state, UploadState::Uploading);

    // Before completion the content is never served.
    problem(api.content(id).await, 409).await;

    let resp = api.complete(id, Some(json!({"sha256": sha}))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let done: UploadStatus = resp.json().await.unwrap();
    assert_eq!(done.state, UploadState::Completed);
    assert_eq!(done.sha256.unwrap().to_hex(), sha);
    assert_eq!(done.received_bytes, file.len() as u64);
    assert!(done.missing.is_empty());

    api.assert_content(id, &file).await;
    assert!(store.has_content(id).await);

    // Range.
    let resp = api
        .http
        .get(api.url(&format!("/v1/uploads/{id}/content")))
        .header("range", format!("bytes={}-{}", cs - 6, cs + 9))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(resp.headers(), "content-range"),
        format!("bytes {}-{}/{}", cs - 6, cs + 9, file.len())
    );
    assert_eq!(header(resp.headers(), "content-length"), "16");
    assert_eq!(&resp.bytes().await.unwrap()[..], &file[cs - 6..=cs + 9]);
    // Suffix range: the last 100 bytes.
    let resp = api
        .http
        .get(api.url(&format!("/v1/uploads/{id}/content")))
        .header("range", "bytes=-100")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&resp.bytes().await.unwrap()[..], &file[file.len() - 100..]);

    // HEAD.
    let resp = api
        .http
        .head(api.url(&format!("/v1/uploads/{id}/content")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(resp.headers(), "content-length"),
        file.len().to_string()
    );
    let etag = header(resp.headers(), "etag");
    assert_eq!(etag, format!("\"{sha}\""));
    assert!(resp.bytes().await.unwrap().is_empty());

    // If-None-Match.
    let resp = api
        .http
        .get(api.url(&format!("/v1/uploads/{id}/content")))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(resp.headers(), "etag"), etag);
    assert!(resp.bytes().await.unwrap().is_empty());
    // Another tag: the whole file.
    let resp = api
        .http
        .get(api.url(&format!("/v1/uploads/{id}/content")))
        .header("if-none-match", format!("\"{EMPTY_SHA256}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().len(), file.len());

    // HEAD of the status.
    let resp = api.http.head(api.upload_url(id)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Chunks after completion: 409.
    problem(api.put(id, 0, &file[..cs], true).await, 409).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_and_boundary_sized_uploads_complete() {
    let (server, store) = start!(&[]);
    let api = Api::new(&server);
    let cs = store.chunk(64 * KIB);

    // Size 0: no chunks, completes at once with the SHA-256 of nothing.
    let st = api.create(json!({"size": 0})).await;
    assert_eq!(st.chunk_count, 0);
    assert!(st.missing.is_empty());
    problem(api.put(st.id, 0, b"", false).await, 400).await;
    let resp = api.complete(st.id, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let done: UploadStatus = resp.json().await.unwrap();
    assert_eq!(done.state, UploadState::Completed);
    assert_eq!(done.sha256.unwrap().to_hex(), EMPTY_SHA256);
    api.assert_content(st.id, b"").await;

    // Exactly 3 chunks, and 3 chunks + 1 byte (a 1-byte last chunk).
    for (size, count, seed) in [(3 * cs, 3u64, 2u64), (3 * cs + 1, 4, 3)] {
        let file = random_bytes(size, seed);
        let st = api
            .create(json!({"size": size, "chunk_size": cs, "sha256": sha256_hex(&file)}))
            .await;
        assert_eq!(st.chunk_count, count);
        assert_eq!(st.sha256.unwrap().to_hex(), sha256_hex(&file));
        // The last chunk is exactly the rest: 1 byte more or less is refused.
        let last = (count - 1) as usize;
        let tail = &file[last * cs..];
        let mut longer = tail.to_vec();
        longer.push(0);
        problem(api.put(st.id, last as u64, &longer, false).await, 400).await;
        problem(api.put(st.id, last as u64, &tail[1..], false).await, 400).await;
        problem(api.put(st.id, count, &tail[..1], false).await, 400).await;
        api.put_all(st.id, &file, cs).await;
        let resp = api.complete(st.id, None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let done: UploadStatus = resp.json().await.unwrap();
        assert_eq!(done.sha256.unwrap().to_hex(), sha256_hex(&file));
        assert_eq!(done.received_bytes, size as u64);
        api.assert_content(st.id, &file).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_returns_the_same_upload() {
    let (server, store) = start!(&[]);
    let api = Api::new(&server);
    let cs = store.chunk(64 * KIB);
    let body = json!({"size": 1000, "chunk_size": cs, "filename": "a.txt"});
    let send = |key: &'static str, body: Value| {
        api.http
            .post(api.url("/v1/uploads"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
    };
    let first = send("key-1", body.clone()).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: UploadStatus = first.json().await.unwrap();

    let again = send("key-1", body.clone()).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(
        header(again.headers(), "location"),
        format!("/v1/uploads/{}", first.id)
    );
    let again: UploadStatus = again.json().await.unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(store.upload_count().await, 1);

    let other = send(
        "key-1",
        json!({"size": 1001, "chunk_size": cs, "filename": "a.txt"}),
    )
    .await
    .unwrap();
    problem(other, 422).await;
    assert_eq!(
        store.upload_count().await,
        1,
        "nothing created on a reused key"
    );

    // Another key: another upload. No key: always a new upload.
    let third = send("key-2", body.clone()).await.unwrap();
    assert_eq!(third.status(), StatusCode::CREATED);
    let third: UploadStatus = third.json().await.unwrap();
    assert_ne!(third.id, first.id);
    let fourth = api.create(body.clone()).await;
    assert_ne!(fourth.id, first.id);
    assert_eq!(store.upload_count().await, 3);

    // Concurrent creates under one new key: one upload.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let http = api.http.clone();
        let url = api.url("/v1/uploads");
        let body = body.to_string();
        tasks.spawn(async move {
            let resp = http
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", "key-3")
                .body(body)
                .send()
                .await
                .unwrap();
            let code = resp.status().as_u16();
            (code, resp.json::<UploadStatus>().await.unwrap().id)
        });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.unwrap());
    }
    assert_eq!(
        results.iter().filter(|(c, _)| *c == 201).count(),
        1,
        "{results:?}"
    );
    assert!(results
        .iter()
        .all(|(c, id)| (*c == 201 || *c == 200) && *id == results[0].1));
    assert_eq!(store.upload_count().await, 4);

    // The key survives a restart.
    let mut server = server;
    server.restart();
    let api = Api::new(&server);
    let resp = api
        .http
        .post(api.url("/v1/uploads"))
        .header("content-type", "application/json")
        .header("idempotency-key", "key-1")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let after: UploadStatus = resp.json().await.unwrap();
    assert_eq!(after.id, first.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn complete_checks_chunks_and_hash() {
    let (server, store) = start!(&[]);
    let api = Api::new(&server);
    let cs = store.chunk(64 * KIB);
    let file = random_bytes(5 * cs + 10, 4);

    // Missing chunks: 409 listing them as ranges; nothing changes.
    let st = api
        .create(json!({"size": file.len(), "chunk_size": cs}))
        .await;
    for i in [0u64, 2, 3] {
        api.put_ok(st.id, i, &file[i as usize * cs..(i as usize + 1) * cs])
            .await;
    }
    let p = problem(api.complete(st.id, None).await, 409).await;
    assert_eq!(p.missing, Some(vec![[1, 1], [4, 5]]));
    let now = api.status(st.id).await;
    assert_eq!(now.state, UploadState::Uploading);
    assert_eq!(now.missing, vec![[1, 1], [4, 5]]);
    assert_eq!(now.received_bytes, 3 * cs as u64);

    // Wrong SHA-256: 422, failed, never served.
    for i in [1usize, 4, 5] {
        api.put_ok(
            st.id,
            i as u64,
            &file[i * cs..((i + 1) * cs).min(file.len())],
        )
        .await;
    }
    let wrong = sha256_hex(b"something else");
    let p = problem(
        api.complete(st.id, Some(json!({"sha256": wrong}))).await,
        422,
    )
    .await;
    assert_eq!(p.expected_sha256.unwrap().to_hex(), wrong);
    assert_eq!(p.actual_sha256.unwrap().to_hex(), sha256_hex(&file));
    let failed = api.status(st.id).await;
    assert_eq!(failed.state, UploadState::Failed);
    problem(api.content(st.id).await, 409).await;
    let resp = api
        .http
        .head(api.url(&format!("/v1/uploads/{}/content", st.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(!store.has_content(st.id).await);
    assert!(
        !store.has_bytes(st.id).await,
        "a failed upload keeps no bytes"
    );
    // Completing again does not revive it; nor does the right hash.
    problem(api.complete(st.id, None).await, 422).await;
    let resp = api
        .complete(st.id, Some(json!({"sha256": sha256_hex(&file)})))
        .await;
    assert!(
        resp.status().is_client_error(),
        "a failed upload must stay failed, got {}",
        resp.status()
    );
    problem(api.put(st.id, 0, &file[..cs], true).await, 409).await;
    problem(api.content(st.id).await, 409).await;

    // Success, then a repeated complete answers 200 with the same hash.
    let st = api
        .create(json!({"size": file.len(), "chunk_size": cs}))
        .await;
    api.put_all(st.id, &file, cs).await;
    let resp = api
        .complete(st.id, Some(json!({"sha256": sha256_hex(&file)})))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    for body in [
        None,
        Some(json!({})),
        Some(json!({"sha256": sha256_hex(&file)})),
    ] {
        let resp = api.complete(st.id, body).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let again: UploadStatus = resp.json().await.unwrap();
        assert_eq!(again.state, UploadState::Completed);
        assert_eq!(again.sha256.unwrap().to_hex(), sha256_hex(&file));
    }
    api.assert_content(st.id, &file).await;
}

/// 12 completes at once: all 200 with the same hash, and one completion in the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_completes_complete_once() {
    let (server, store) = start!(&[]);
    let api = Arc::new(Api::new(&server));
    let (cs, n) = (store.chunk(64 * KIB), store.count(12));
    let file = random_bytes(n * cs + 99, 5);
    let sha = sha256_hex(&file);
    let st = api
        .create(json!({"size": file.len(), "chunk_size": cs}))
        .await;
    // Out of order, so that completion has hashing left to do.
    for i in (0..=n).rev() {
        api.put_ok(
            st.id,
            i as u64,
            &file[i * cs..((i + 1) * cs).min(file.len())],
        )
        .await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..16 {
        let api = api.clone();
        let sha = sha.clone();
        tasks.spawn(async move {
            let body = (n % 2 == 0).then(|| json!({"sha256": sha}));
            let resp = api.complete(st.id, body).await;
            let status = resp.status();
            let text = resp.text().await.unwrap();
            (status, text)
        });
    }
    let mut answers = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (status, text) = r.unwrap();
        let st: UploadStatus = serde_json::from_str(&text).unwrap();
        match status {
            StatusCode::OK => {
                assert_eq!(st.state, UploadState::Completed, "{text}");
                assert_eq!(st.sha256.unwrap().to_hex(), sha);
            }
            // On shared storage a request that finds another one verifying does not
            // wait for it: it says so, and the client polls the status.
            StatusCode::ACCEPTED if store.storage == Storage::S3 => {
                assert_eq!(st.state, UploadState::Completing, "{text}");
            }
            other => panic!("complete answered {other}: {text}"),
        }
        answers.push(status);
    }
    assert!(answers.contains(&StatusCode::OK), "{answers:?}");
    wait_until(
        Duration::from_secs(30),
        "the upload to complete",
        || async { api.status(st.id).await.state == UploadState::Completed },
    )
    .await;
    assert_eq!(api.status(st.id).await.sha256.unwrap().to_hex(), sha);
    let logs = synced_logs(&api, &server).await;
    let completions = logs
        .lines()
        .filter(|l| l.contains("upload completed") && l.contains(&st.id.to_string()))
        .count();
    assert_eq!(completions, 1, "logs:\n{logs}");
    api.assert_content(st.id, &file).await;
    store.tally_races("complete", "concurrent completes of one upload", 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_cancels_and_frees_the_bytes() {
    let (server, store) = start!(&[]);
    let api = Api::new(&server);
    let cs = store.chunk(64 * KIB);
    let file = random_bytes(3 * cs, 6);
    let st = api
        .create(json!({"size": file.len(), "chunk_size": cs}))
        .await;
    api.put_ok(st.id, 1, &file[cs..2 * cs]).await;
    assert!(store.has_bytes(st.id).await);

    let resp = api.http.delete(api.upload_url(st.id)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.headers().contains_key("x-request-id"));
    assert!(
        !store.has_bytes(st.id).await,
        "the bytes of a cancelled upload are removed"
    );

    problem(api.status_resp(st.id).await, 410).await;
    problem(api.put(st.id, 0, &file[..cs], true).await, 410).await;
    problem(api.complete(st.id, None).await, 410).await;
    problem(api.content(st.id).await, 410).await;
    let again = api.http.delete(api.upload_url(st.id)).send().await.unwrap();
    assert!(
        matches!(again.status().as_u16(), 404 | 410),
        "{}",
        again.status()
    );

    // Still gone after a restart.
    let mut server = server;
    server.restart();
    let api = Api::new(&server);
    problem(api.status_resp(st.id).await, 410).await;
    problem(api.put(st.id, 0, &file[..cs], true).await, 410).await;
    assert!(!store.has_bytes(st.id).await);

    // Cancelling a completed upload removes its content too.
    let st = api.create(json!({"size": cs, "chunk_size": cs})).await;
    api.put_ok(st.id, 0, &file[..cs]).await;
    assert_eq!(api.complete(st.id, None).await.status(), StatusCode::OK);
    let resp = api.http.delete(api.upload_url(st.id)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    problem(api.content(st.id).await, 410).await;
    assert!(!store.has_content(st.id).await);
    assert!(!store.has_bytes(st.id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_response_carries_a_request_id() {
    let (server, store) = start!(&[]);
    let api = Api::new(&server);
    let st = api
        .create(json!({"size": 10, "chunk_size": store.chunk(64 * KIB)}))
        .await;
    let requests = [
        api.http.get(api.url("/healthz")),
        api.http.get(api.url("/readyz")),
        api.http.get(api.url("/v1")),
        api.http.get(api.url("/nope")),
        api.http.post(api.url("/v1")),
        api.http.get(api.upload_url(st.id)),
        api.http.get(api.upload_url("not-a-uuid")),
        api.http.put(api.chunk_url(st.id, 0)).body("0123456789"),
        api.http.put(api.chunk_url(st.id, 9)).body("x"),
        api.http.post(api.url("/v1/uploads")).body("{"),
        api.http
            .get(api.url(&format!("/v1/uploads/{}/content", st.id))),
    ];
    for (n, req) in requests.into_iter().enumerate() {
        let probe = req.try_clone().unwrap().build().unwrap().url().clone();
        let resp = req.try_clone().unwrap().send().await.unwrap();
        let generated = header(resp.headers(), "x-request-id");
        assert!(!generated.is_empty(), "{probe}");
        let mine = format!("test-{n}-abc");
        let resp = req.header("x-request-id", &mine).send().await.unwrap();
        assert_eq!(header(resp.headers(), "x-request-id"), mine, "{probe}");
    }
    let logs = synced_logs(&api, &server).await;
    assert!(
        logs.contains("test-0-abc"),
        "the request id is logged:\n{logs}"
    );
    let resp = api.http.get(api.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = api.http.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// With `--inline-verify-limit 0`, completing an upload whose hash is not caught up may
/// answer 202 with `Location`; the status then reaches `completed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn background_verification_is_polled_to_completion() {
    let (server, store) = start!(&["--inline-verify-limit", "0"]);
    let api = Api::new(&server);
    let (cs, n) = (store.chunk(256 * KIB), store.count(24));
    let file = random_bytes(n * cs + 5, 8);
    let sha = sha256_hex(&file);
    let st = api
        .create(json!({"size": file.len(), "chunk_size": cs, "sha256": sha}))
        .await;
    // Everything but chunk 0 first, so that the whole-file hash can only start at the end.
    for i in (1..=n).chain([0]) {
        api.put_ok(
            st.id,
            i as u64,
            &file[i * cs..((i + 1) * cs).min(file.len())],
        )
        .await;
    }
    let resp = api.complete(st.id, None).await;
    match resp.status() {
        StatusCode::ACCEPTED => {
            assert_eq!(
                header(resp.headers(), "location"),
                format!("/v1/uploads/{}", st.id)
            );
            let body: UploadStatus = resp.json().await.unwrap();
            assert!(
                matches!(body.state, UploadState::Completing | UploadState::Completed),
                "{:?}",
                body.state
            );
            // The content is not served before verification ends.
            if body.state == UploadState::Completing {
                let c = api.content(st.id).await.status();
                assert!(matches!(c.as_u16(), 200 | 409), "{c}");
            }
        }
        StatusCode::OK => {}
        other => panic!("complete answered {other}: {}", resp.text().await.unwrap()),
    }
    wait_until(Duration::from_secs(20), "state completed", || async {
        let st = api.status(st.id).await;
        assert_ne!(st.state, UploadState::Failed);
        st.state == UploadState::Completed
    })
    .await;
    let st = api.status(st.id).await;
    assert_eq!(st.sha256.unwrap().to_hex(), sha);
    api.assert_content(st.id, &file).await;
}

/// `kill -9` right after a complete that answered 202: the verification resumes after the
/// restart and the upload completes (or, if it had finished, stays completed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verification_resumes_after_kill9() {
    let (mut server, store) = start!(&["--inline-verify-limit", "0"]);
    let api = Api::new(&server);
    let (cs, n) = (store.chunk(256 * KIB), store.count(32));
    let file = random_bytes(n * cs, 9);
    let sha = sha256_hex(&file);
    let st = api
        .create(json!({"size": file.len(), "chunk_size": cs}))
        .await;
    for i in (0..n).rev() {
        api.put_ok(st.id, i as u64, &file[i * cs..(i + 1) * cs])
            .await;
    }
    let resp = api.complete(st.id, Some(json!({"sha256": sha}))).await;
    assert!(
        matches!(resp.status().as_u16(), 200 | 202),
        "{}",
        resp.status()
    );
    server.kill9();
    server.restart();
    let api = Api::new(&server);
    wait_until(Duration::from_secs(20), "state completed", || async {
        let st = api.status(st.id).await;
        assert_ne!(st.state, UploadState::Failed);
        assert_ne!(st.state, UploadState::Uploading);
        st.state == UploadState::Completed
    })
    .await;
    let resp = api.complete(st.id, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    api.assert_content(st.id, &file).await;
}

/// A complete whose answer was lost (the client hung up before it came) and its retry:
/// the upload is completed once, and the retry gets the completed status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_complete_after_a_lost_answer_completes_once() {
    let (server, store) = start!(&[]);
    let api = Api::new(&server);
    let cs = store.chunk(64 * KIB);
    let file = random_bytes(2 * cs + 7, 8);
    let st = api
        .create(json!({"size": file.len(), "chunk_size": cs}))
        .await;
    api.put_all(st.id, &file, cs).await;
    // The first complete: sent whole, then the connection is dropped unread.
    {
        let addr = server.url().trim_start_matches("http://").to_string();
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let req = format!(
            "POST /v1/uploads/{}/complete HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\n\r\n",
            st.id
        );
        use tokio::io::AsyncWriteExt;
        conn.write_all(req.as_bytes()).await.unwrap();
    }
    // The retry answers with the final state, however far the first one got.
    wait_until(Duration::from_secs(30), "the retried complete", || async {
        let resp = api.complete(st.id, None).await;
        match resp.status() {
            StatusCode::OK => {
                let done: UploadStatus = resp.json().await.unwrap();
                assert_eq!(done.sha256.unwrap().to_hex(), sha256_hex(&file));
                true
            }
            StatusCode::ACCEPTED => false,
            other => panic!("retried complete answered {other}"),
        }
    })
    .await;
    let logs = synced_logs(&api, &server).await;
    let completions = logs
        .lines()
        .filter(|l| l.contains("upload completed") && l.contains(&st.id.to_string()))
        .count();
    assert_eq!(completions, 1, "logs:\n{logs}");
    api.assert_content(st.id, &file).await;
    store.tally_races(
        "complete-retry",
        "a complete whose answer was lost, and its retries",
        2,
    );
}

/// Cancel racing complete, many times: each upload ends in one state, and a file is
/// served only if it completed with the right SHA-256 and was not cancelled after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_racing_complete_has_one_outcome() {
    let (server, store) = start!(&[]);
    let api = Arc::new(Api::new(&server));
    let cs = store.chunk(64 * KIB);
    let rounds = race_rounds(8);
    for round in 0..rounds {
        let file = random_bytes(2 * cs, 40 + round);
        let st = api
            .create(json!({"size": file.len(), "chunk_size": cs, "sha256": sha256_hex(&file)}))
            .await;
        api.put_all(st.id, &file, cs).await;
        let (a, b) = (api.clone(), api.clone());
        let id = st.id;
        let complete = tokio::spawn(async move { a.complete(id, None).await.status() });
        let cancel = tokio::spawn(async move {
            // On S3 a cancel that loses a conditional write to the complete is told to
            // retry (503 + Retry-After), as a client would.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let resp = b.http.delete(b.upload_url(id)).send().await.unwrap();
                if resp.status() != StatusCode::SERVICE_UNAVAILABLE
                    || std::time::Instant::now() > deadline
                {
                    return resp.status();
                }
                let wait: u64 = header(resp.headers(), "retry-after").parse().unwrap();
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
        });
        let (complete, cancel) = (complete.await.unwrap(), cancel.await.unwrap());
        assert!(
            matches!(complete.as_u16(), 200 | 202 | 409 | 410),
            "round {round}: complete answered {complete}"
        );
        assert!(
            matches!(cancel.as_u16(), 204 | 409),
            "round {round}: cancel answered {cancel}"
        );
        // Settle whatever is still verifying, then read the outcome.
        wait_until(Duration::from_secs(30), "a final state", || async {
            let s = api.status_resp(id).await.status();
            s == StatusCode::GONE
                || (s == StatusCode::OK && api.status(id).await.state != UploadState::Completing)
        })
        .await;
        let content = api.content(id).await;
        match api.status_resp(id).await.status() {
            StatusCode::GONE => {
                assert_eq!(cancel, StatusCode::NO_CONTENT, "round {round}");
                assert_eq!(content.status(), StatusCode::GONE, "round {round}");
                assert!(!store.has_content(id).await, "round {round}: content kept");
            }
            StatusCode::OK => {
                // The cancel lost (the upload was completing); the file is whole.
                assert_eq!(cancel, StatusCode::CONFLICT, "round {round}");
                assert_eq!(api.status(id).await.state, UploadState::Completed);
                assert_eq!(content.status(), StatusCode::OK);
                assert_eq!(content.bytes().await.unwrap().to_vec(), file);
            }
            other => panic!("round {round}: status {other}"),
        }
    }
    store.tally_races(
        "cancel-complete",
        "a cancel racing a complete, per round both",
        2 * rounds,
    );
}
