//! Chunk PUT semantics: retries, conflicts, digests, lengths, indexes, chunked bodies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::ChunkReceipt;
use common::UploadId;
use reqwest::StatusCode;
use serde_json::json;
use tests::{random_bytes, sha256_hex};

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunk_retries_conflicts_and_digests() {
    let (server, store) = start!(&[]);
    let api = Api::new(&server);
    let cs = store.chunk(64 * KIB);
    let file = random_bytes(3 * cs + 100, 10);
    let chunk = |i: usize| &file[i * cs..((i + 1) * cs).min(file.len())];
    let st = api
        .create(json!({"size": file.len(), "chunk_size": cs}))
        .await;
    let id = st.id;

    // Stored: 201. The same bytes again (a retry): 200 with the same receipt.
    api.put_ok(id, 1, chunk(1)).await;
    for with_digest in [true, false] {
        let resp = api.put(id, 1, chunk(1), with_digest).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let r: ChunkReceipt = resp.json().await.unwrap();
        assert_eq!((r.index, r.size), (1, cs as u64));
        assert_eq!(r.sha256.to_hex(), sha256_hex(chunk(1)));
    }
    // Other bytes for a stored index: 409, with or without their (correct) digest.
    let other = random_bytes(cs, 11);
    problem(api.put(id, 1, &other, true).await, 409).await;
    problem(api.put(id, 1, &other, false).await, 409).await;
    // The same bytes with a digest that does not match them: 400.
    let resp = api
        .http
        .put(api.chunk_url(id, 1))
        .header("content-digest", digest(&other).to_header())
        .body(chunk(1).to_vec())
        .send()
        .await
        .unwrap();
    problem(resp, 400).await;
    let st = api.status(id).await;
    assert_eq!(st.received_bytes, cs as u64);
    assert_eq!(st.missing, vec![[0, 0], [2, 3]]);

    // A wrong digest on a new chunk: 400 and nothing stored.
    let resp = api
        .http
        .put(api.chunk_url(id, 0))
        .header("content-digest", digest(&other).to_header())
        .body(chunk(0).to_vec())
        .send()
        .await
        .unwrap();
    let p = problem(resp, 400).await;
    assert_eq!(p.expected_sha256, Some(digest(&other)), "{p:?}");
    assert_eq!(p.actual_sha256, Some(digest(chunk(0))), "{p:?}");
    // A malformed digest header: 400 as well.
    for bad in ["sha-256=abc", "sha-256=:AAAA:", "sha-256", ""] {
        let resp = api
            .http
            .put(api.chunk_url(id, 0))
            .header("content-digest", bad)
            .body(chunk(0).to_vec())
            .send()
            .await
            .unwrap();
        problem(resp, 400).await;
    }
    let st = api.status(id).await;
    assert_eq!(
        st.received_bytes, cs as u64,
        "a refused chunk is not counted"
    );
    assert_eq!(st.missing, vec![[0, 0], [2, 3]]);
    // ...so the right bytes are then new (201), not a retry (200).
    api.put_ok(id, 0, chunk(0)).await;

    // Wrong lengths: short and long bodies, for a full chunk and for the short last one.
    for (i, len) in [
        (2usize, cs - 1),
        (2, cs + 1),
        (2, 0),
        (3, 99),
        (3, 101),
        (3, cs),
    ] {
        let body = random_bytes(len, 12);
        problem(api.put(id, i as u64, &body, false).await, 400).await;
    }
    // Indexes out of range or not numbers.
    for index in ["4", "5", "1000000", "18446744073709551615"] {
        let resp = api
            .http
            .put(api.chunk_url(id, index))
            .body(chunk(3).to_vec())
            .send()
            .await
            .unwrap();
        problem(resp, 400).await;
    }
    for index in [
        "abc",
        "-1",
        "1.0",
        "0x1",
        "%20",
        "18446744073709551616",
        "99999999999999999999999",
    ] {
        let resp = api
            .http
            .put(api.chunk_url(id, index))
            .body(chunk(3).to_vec())
            .send()
            .await
            .unwrap();
        problem(resp, 400).await;
    }
    let st = api.status(id).await;
    assert_eq!(st.received_bytes, 2 * cs as u64);
    assert_eq!(st.missing, vec![[2, 3]]);

    // Unknown upload: 404.
    problem(
        api.put(UploadId::new_random(), 0, chunk(0), true).await,
        404,
    )
    .await;

    // Chunked transfer encoding (no Content-Length): accepted and verified.
    let c2 = chunk(2).to_vec();
    let resp = api
        .http
        .put(api.chunk_url(id, 2))
        .header("content-digest", digest(&c2).to_header())
        .body(stream_body(vec![
            c2[..1000].to_vec(),
            c2[1000..40_000].to_vec(),
            c2[40_000..].to_vec(),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let r: ChunkReceipt = resp.json().await.unwrap();
    assert_eq!(r.sha256, digest(&c2));
    // Chunked bodies that are too short or too long: 400, not counted.
    let c3 = chunk(3).to_vec();
    let mut long = c3.clone();
    long.extend_from_slice(b"extra");
    for parts in [
        vec![c3[..50].to_vec()],
        vec![c3.clone(), b"extra".to_vec()],
        vec![long],
    ] {
        let resp = api
            .http
            .put(api.chunk_url(id, 3))
            .body(stream_body(parts))
            .send()
            .await
            .unwrap();
        problem(resp, 400).await;
    }
    let st = api.status(id).await;
    assert_eq!(st.missing, vec![[3, 3]]);
    assert_eq!(st.received_bytes, 3 * cs as u64);
    let resp = api
        .http
        .put(api.chunk_url(id, 3))
        .body(stream_body(vec![c3[..10].to_vec(), c3[10..].to_vec()]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    let resp = api
        .complete(id, Some(json!({"sha256": sha256_hex(&file)})))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    api.assert_content(id, &file).await;
}

/// A PUT racing its own retries, and PUTs of different bytes racing for one index: one
/// is stored (201), retries of it are 200, the others 409, and the stored bytes are one
/// sender's, whole.
/// A PUT by a client that honours `503` + `Retry-After` (on S3: the store briefly away),
/// for at most 30 s. Returns the final status.
async fn put_retrying_503(api: &Api, id: UploadId, index: u64, bytes: &[u8]) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = api.put(id, index, bytes, true).await;
        if resp.status() != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
            return resp.status().as_u16();
        }
        let wait: u64 = header(resp.headers(), "retry-after").parse().unwrap();
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_puts_to_one_index() {
    let (server, store) = start!(&[]);
    let api = Arc::new(Api::new(&server));
    let cs = store.chunk(256 * KIB);
    let rounds = race_rounds(1);
    for round in 0..rounds {
        let st = api.create(json!({"size": 2 * cs, "chunk_size": cs})).await;
        let id = st.id;

        // Same bytes, 8 at once.
        let same = Arc::new(random_bytes(cs, 20 + round));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (api, same) = (api.clone(), same.clone());
            tasks.spawn(async move { put_retrying_503(&api, id, 0, &same).await });
        }
        let mut codes = Vec::new();
        while let Some(r) = tasks.join_next().await {
            codes.push(r.unwrap());
        }
        codes.sort();
        assert_eq!(codes, [200, 200, 200, 200, 200, 200, 200, 201]);

        // Different bytes, 8 at once.
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..8u64 {
            let api = api.clone();
            tasks.spawn(async move {
                let body = random_bytes(cs, 100 + n + 8 * round);
                (put_retrying_503(&api, id, 1, &body).await, body)
            });
        }
        let mut winners = Vec::new();
        while let Some(r) = tasks.join_next().await {
            let (code, body) = r.unwrap();
            match code {
                201 => winners.push(body),
                409 => {}
                other => panic!("racing PUT answered {other}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one racing PUT stores its bytes");
        let st = api.status(id).await;
        assert!(st.missing.is_empty());
        assert_eq!(st.received_bytes, 2 * cs as u64);
        let mut file = same.to_vec();
        file.extend_from_slice(&winners[0]);
        let mut done = api.complete(id, None).await;
        if store.storage == Storage::S3 && done.status() == StatusCode::CONFLICT {
            // On S3 every racing write sends the chunk's part and the last to land is the
            // part: when it is not the winner's, completion asks for the chunk again (its
            // claim is the winner's, so only the winner's bytes are taken).
            let p = problem(done, 409).await;
            assert_eq!(p.missing, Some(vec![[1, 1]]), "{p:?}");
            assert_eq!(put_retrying_503(&api, id, 1, &winners[0]).await, 200);
            done = api.complete(id, None).await;
        }
        assert_eq!(done.status(), StatusCode::OK);
        api.assert_content(id, &file).await;
    }
    store.tally_races(
        "put",
        "racing PUTs of one chunk, 8 with equal and 8 with different bytes",
        16 * rounds,
    );
}

/// An error answered before the request body is read (here: an unknown upload, a wrong
/// `Content-Length`, an index out of range) must either keep the connection usable or say
/// `Connection: close`; otherwise keep-alive clients (reqwest, the CLI, browsers) send their
/// next request into a connection the server is closing and fail at random.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn early_error_answer_does_not_break_keep_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, store) = start!(&[]);
    let api = Api::new(&server);
    let cs = store.chunk(64 * KIB);
    let st = api.create(json!({"size": 2 * cs, "chunk_size": cs})).await;
    let unknown = UploadId::new_random();
    let body = random_bytes(MIB, 70);
    for (path, len) in [
        (format!("/v1/uploads/{unknown}/chunks/0"), MIB),
        (format!("/v1/uploads/{}/chunks/0", st.id), MIB),
        (format!("/v1/uploads/{}/chunks/7", st.id), MIB),
    ] {
        let mut s = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {len}\r\n\r\n",
            server.addr
        );
        s.write_all(head.as_bytes()).await.unwrap();
        // The server may answer (and stop reading) before the whole body is written.
        let _ = s.write_all(&body[..len]).await;
        let mut buf = vec![0u8; 64 * KIB];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        let first = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        assert!(first.starts_with("http/1.1 4"), "{path}: {first}");
        if first.contains("connection: close") {
            continue;
        }
        // Kept alive: the next request on this connection must be answered.
        let next = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
        let sent = s.write_all(next.as_bytes()).await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        out.extend_from_slice(&buf[..n]);
                        if String::from_utf8_lossy(&out).contains("\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        assert!(read.is_ok(), "{path}: no answer to the next request");
        let text = String::from_utf8_lossy(&out);
        assert!(
            sent.is_ok() && text.starts_with("HTTP/1.1 200"),
            "{path}: the connection was kept alive (no Connection: close) but the next \
             request failed: write {sent:?}, answer {text:?}"
        );
    }
}
