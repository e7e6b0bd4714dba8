//! Durability across `kill -9`, and chunk bodies that stall or are cut off.

use std::time::{Duration, Instant};

use common::api::UploadState;
use reqwest::StatusCode;
use serde_json::json;
use tests::{random_bytes, sha256_hex};
use tokio::io::AsyncReadExt;

use super::support::*;

/// Acknowledged chunks survive `kill -9`; the status after a restart names exactly them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_chunks_survive_kill9() {
    let (mut server, store) = start!(&[]);
    let api = Api::new(&server);
    let (cs, n) = (store.chunk(256 * KIB), store.count(10));
    let file = random_bytes(n * cs + 777, 50);
    let chunk = |i: usize| &file[i * cs..((i + 1) * cs).min(file.len())];
    let st = api
        .create(json!({"size": file.len(), "chunk_size": cs, "sha256": sha256_hex(&file)}))
        .await;
    let id = st.id;
    // Every third chunk and the short last one: 0, 3, 6, 9, 10 (0, 3, 4 on S3).
    let sent: Vec<usize> = (0..=n).filter(|i| i % 3 == 0 || *i == n).collect();
    for &i in &sent {
        api.put_ok(id, i as u64, chunk(i)).await;
    }
    let before = api.status(id).await;

    server.kill9();
    server.restart();
    let api = Api::new(&server);
    let st = api.status(id).await;
    assert_eq!(st.state, UploadState::Uploading);
    let missing: Vec<usize> = (0..=n).filter(|i| !sent.contains(i)).collect();
    assert_eq!(
        st.missing,
        common::ranges::to_ranges(missing.iter().map(|&i| i as u64))
    );
    assert_eq!(st.received_bytes, ((sent.len() - 1) * cs + 777) as u64);
    assert_eq!(st.sha256, before.sha256);
    assert_eq!(st.created_at, before.created_at);
    // Acknowledged chunks are recognised as such.
    assert_eq!(
        api.put(id, 3, chunk(3), true).await.status(),
        StatusCode::OK
    );
    problem(api.put(id, 3, chunk(0), true).await, 409).await;

    for &i in &missing {
        api.put_ok(id, i as u64, chunk(i)).await;
    }
    let resp = api.complete(id, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    api.assert_content(id, &file).await;

    // And a completed upload survives a crash too.
    server.restart();
    let api = Api::new(&server);
    assert_eq!(api.status(id).await.state, UploadState::Completed);
    api.assert_content(id, &file).await;
}

/// `kill -9` while a chunk body is half sent: after the restart the chunk is missing, its
/// bytes are not counted, and sending it again stores it as new.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_mid_chunk_counts_nothing() {
    let (mut server, store) = start!(&[]);
    let api = Api::new(&server);
    let cs = store.chunk(4 * MIB);
    let file = random_bytes(2 * cs + 100, 51);
    let st = api
        .create(json!({"size": file.len(), "chunk_size": cs}))
        .await;
    let id = st.id;
    api.put_ok(id, 1, &file[cs..2 * cs]).await;

    let half = cs * 5 / 8;
    let _conn = raw_put(&server, id, 0, cs, &file[..half]).await;
    wait_until(
        Duration::from_secs(10),
        "the chunk being stored",
        || async { store.writing(&server, id, 0, &file[..64 * KIB]).await },
    )
    .await;
    server.kill9();
    server.restart();
    let api = Api::new(&server);
    let st = api.status(id).await;
    assert_eq!(st.missing, vec![[0, 0], [2, 2]]);
    assert_eq!(st.received_bytes, cs as u64, "no partial bytes counted");

    // The same index is new (201), not a retry (200) or a conflict (409).
    api.put_ok_retrying(id, 0, &file[..cs]).await;
    api.put_ok(id, 2, &file[2 * cs..]).await;
    let resp = api
        .complete(id, Some(json!({"sha256": sha256_hex(&file)})))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    api.assert_content(id, &file).await;
}

/// Reads whatever the server answers on a raw connection until it closes or `limit`.
async fn read_answer(conn: &mut tokio::net::TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Err(_) => panic!(
                "no answer and no close within {limit:?}; got so far: {}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                // One answer is enough; the connection may stay open.
                let text = String::from_utf8_lossy(&out);
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if rest.len() >= len {
                        break;
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `--body-timeout 1s`: a chunk body that stalls is answered 408 (or cut) within a few
/// seconds and counts nothing; a client that disconnects mid-chunk counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_and_abandoned_bodies_count_nothing() {
    let (server, store) = start!(&["--body-timeout", "1s"]);
    let api = Api::new(&server);
    let cs = store.chunk(2 * MIB);
    let file = random_bytes(2 * cs, 60);
    let st = api
        .create(json!({"size": file.len(), "chunk_size": cs}))
        .await;
    let id = st.id;

    // Half a chunk, then nothing; and the head alone, then nothing.
    for sent in [cs / 2, 0] {
        let started = Instant::now();
        let mut conn = raw_put(&server, id, 0, cs, &file[..sent]).await;
        let answer = read_answer(&mut conn, Duration::from_secs(8)).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(6), "answered after {took:?}");
        if !answer.is_empty() {
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            assert!(
                answer.to_ascii_lowercase().contains(common::PROBLEM_JSON),
                "{answer}"
            );
        }
        let st = api.status(id).await;
        assert_eq!(st.missing, vec![[0, 1]]);
        assert_eq!(st.received_bytes, 0);
    }

    // A client that goes away mid-chunk, once the server is writing its bytes.
    let sent = cs * 3 / 4;
    let conn = raw_put(&server, id, 1, cs, &file[cs..cs + sent]).await;
    wait_until(
        Duration::from_secs(10),
        "the chunk being stored",
        || async {
            store
                .writing(&server, id, cs as u64, &file[cs..cs + 4096])
                .await
        },
    )
    .await;
    drop(conn);
    let st = api.status(id).await;
    assert_eq!(st.missing, vec![[0, 1]]);
    assert_eq!(st.received_bytes, 0);

    // The worker was freed: both chunks are then stored as new.
    api.put_ok(id, 1, &file[cs..]).await;
    api.put_ok(id, 0, &file[..cs]).await;
    let resp = api
        .complete(id, Some(json!({"sha256": sha256_hex(&file)})))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    api.assert_content(id, &file).await;
}

/// The body timeout covers every request body, not only chunks: a create or complete
/// whose JSON body stalls is answered 408 (or cut) and frees its worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_json_bodies_time_out() {
    use tokio::io::AsyncWriteExt;
    let (server, store) = start!(&["--body-timeout", "1s"]);
    let api = Api::new(&server);
    let st = api
        .create(json!({"size": 10, "chunk_size": store.chunk(64 * KIB)}))
        .await;
    for path in [
        "/v1/uploads".to_string(),
        format!("/v1/uploads/{}/complete", st.id),
    ] {
        let started = Instant::now();
        let mut conn = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"size\": 1",
            server.addr
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let answer = read_answer(&mut conn, Duration::from_secs(8)).await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(6),
            "{path}: answered after {took:?}"
        );
        if !answer.is_empty() {
            assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        }
    }
    assert_eq!(store.upload_count().await, 1);
    assert_eq!(api.status(st.id).await.state, UploadState::Uploading);
}

/// A retry of a chunk whose first request stalled (a half-open connection) takes over
/// after the stall-takeover time instead of waiting for the body timeout; the stalled
/// request is told so, and its partial bytes never count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_takes_over_a_stalled_chunk_write() {
    let (server, store) = start!(&["--stall-takeover", "1s", "--body-timeout", "60s"]);
    let api = Api::new(&server);
    let cs = store.chunk(2 * MIB);
    let chunk = random_bytes(cs, 31);
    let st = api.create(json!({"size": cs, "chunk_size": cs})).await;
    let id = st.id;
    // More than the server's 1 MiB write buffer, so that the bytes show on disk.
    let mut stalled = raw_put(&server, id, 0, cs, &chunk[..MIB + 1000]).await;
    wait_until(
        Duration::from_secs(10),
        "the stalled write to begin",
        || async { store.writing(&server, id, 0, &chunk[..MIB]).await },
    )
    .await;
    let started = Instant::now();
    if store.storage == Storage::Local {
        let resp = api.put(id, 0, &chunk, true).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    } else {
        // On S3 the stalled write holds the chunk's lease until it expires (15 s): the
        // retry is told 503 + Retry-After meanwhile, then takes over.
        api.put_ok_retrying(id, 0, &chunk).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the retry waited {:?}, as long as a body timeout",
        started.elapsed()
    );
    if store.storage == Storage::Local {
        // One process: the stalled request is told at once. On S3 the retry may have
        // reached another server, and the stalled one learns it at its next byte (its
        // lease is gone) or at its body timeout.
        let answer = read_answer(&mut stalled, Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
        assert!(answer.contains("superseded"), "{answer}");
    }
    let st = api.status(id).await;
    assert_eq!(st.received_bytes, cs as u64);
    api.complete(id, Some(json!({"sha256": sha256_hex(&chunk)})))
        .await
        .error_for_status()
        .expect("complete");
}
