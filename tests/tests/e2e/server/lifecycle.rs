//! Expiry of idle uploads, and graceful shutdown.

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::api::UploadState;
use reqwest::StatusCode;
use serde_json::json;
use tests::{random_bytes, sha256_hex};

use super::support::*;

/// `--upload-ttl 2s`: an idle upload becomes 410 and its bytes disappear, while one that
/// keeps receiving chunks lives on, and a completed one keeps its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_uploads_expire_active_ones_do_not() {
    let (server, store) = start!(&["--upload-ttl", "2s"]);
    let api = Api::new(&server);
    let cs = store.chunk(64 * KIB);
    // Enough chunks to feed the active upload until the idle one expires (~20 on disk,
    // fewer on S3, where each chunk takes longer to send).
    let active_chunks = match store.storage {
        Storage::Local => 200,
        Storage::S3 => 30,
    };

    let done_file = random_bytes(cs, 30);
    let done = api.create(json!({"size": cs, "chunk_size": cs})).await;
    api.put_ok(done.id, 0, &done_file).await;
    assert_eq!(api.complete(done.id, None).await.status(), StatusCode::OK);

    let active_file = random_bytes(active_chunks * cs, 31);
    let active = api
        .create(json!({"size": active_file.len(), "chunk_size": cs}))
        .await;
    let active_since = Instant::now();
    let idle_file = random_bytes(2 * cs, 32);
    let idle = api.create(json!({"size": 2 * cs, "chunk_size": cs})).await;
    api.put_ok(idle.id, 0, &idle_file[..cs]).await;
    assert!(store.has_bytes(idle.id).await);

    // Feed the active upload a chunk every ~100 ms until the idle one is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut next = 0usize;
    loop {
        let resp = api.status_resp(idle.id).await;
        if resp.status() == StatusCode::GONE {
            problem(resp, 410).await;
            break;
        }
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(Instant::now() < deadline, "the idle upload never expired");
        assert!(
            next < active_chunks,
            "the idle upload outlived the active chunks"
        );
        api.put_ok(
            active.id,
            next as u64,
            &active_file[next * cs..(next + 1) * cs],
        )
        .await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        active_since.elapsed() > Duration::from_secs(2),
        "the active upload outlived the TTL"
    );
    let st = api.status(active.id).await;
    assert_eq!(st.state, UploadState::Uploading);
    assert_eq!(st.received_bytes, (next * cs) as u64);
    store.tally_races(
        "expiry",
        "chunk PUTs of an active upload past its TTL while the sweeper expired an idle one",
        next as u64,
    );

    wait_until(
        Duration::from_secs(10),
        "the expired upload's bytes to go",
        || async { !store.has_bytes(idle.id).await },
    )
    .await;
    problem(api.put(idle.id, 1, &idle_file[cs..], true).await, 410).await;
    problem(api.complete(idle.id, None).await, 410).await;

    // The completed upload is not expired.
    api.assert_content(done.id, &done_file).await;

    // The active one finishes.
    for i in next..active_chunks {
        api.put_ok(active.id, i as u64, &active_file[i * cs..(i + 1) * cs])
            .await;
    }
    let resp = api
        .complete(active.id, Some(json!({"sha256": sha256_hex(&active_file)})))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    api.assert_content(active.id, &active_file).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_when_idle_exits_zero() {
    let (mut server, _store) = start!(&[]);
    let api = Api::new(&server);
    let resp = api.http.get(api.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = api.http.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    server.send_signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let s = server.wait_exit(Duration::from_secs(15));
        (s, server)
    })
    .await
    .unwrap()
    .0;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// SIGTERM while a chunk body is streaming: the request completes (201), the chunk is
/// durable, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_an_inflight_chunk_finish() {
    let (mut server, store) = start!(&["--shutdown-timeout", "20s"]);
    let api = Api::new(&server);
    let cs = store.chunk(4 * MIB);
    let file = random_bytes(cs, 40);
    let st = api.create(json!({"size": cs, "chunk_size": cs})).await;
    let id = st.id;

    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    let put = tokio::spawn({
        let req = api
            .http
            .put(api.chunk_url(id, 0))
            .header("content-length", cs)
            .header("content-digest", digest(&file).to_header())
            .body(reqwest::Body::wrap_stream(body));
        async move { req.send().await }
    });
    let half = cs * 3 / 8;
    tx.send(Bytes::copy_from_slice(&file[..half]))
        .await
        .unwrap();
    // The server is handling the chunk once it stores its first bytes.
    wait_until(
        Duration::from_secs(10),
        "the chunk being stored",
        || async { store.writing(&server, id, 0, &file[..4096]).await },
    )
    .await;

    server.send_signal("TERM");
    wait_until(Duration::from_secs(10), "the shutdown log line", || async {
        server.logs().contains("shutting down")
    })
    .await;
    // No new work is accepted now: a new connection is refused, or readiness says 503.
    match client().get(api.url("/readyz")).send().await {
        Ok(r) => assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE),
        Err(e) => assert!(e.is_connect() || e.is_request(), "{e:?}"),
    }

    tx.send(Bytes::copy_from_slice(&file[half..]))
        .await
        .unwrap();
    drop(tx);
    let resp = put.await.unwrap().expect("the in-flight PUT is answered");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let status = tokio::task::spawn_blocking(move || {
        let s = server.wait_exit(Duration::from_secs(15));
        (s, server)
    })
    .await
    .unwrap();
    let (status, mut server) = status;
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", server.logs());

    // The acknowledged chunk is there after a restart.
    server.restart();
    let api = Api::new(&server);
    let st = api.status(id).await;
    assert!(st.missing.is_empty());
    assert_eq!(st.received_bytes, cs as u64);
    assert_eq!(api.complete(id, None).await.status(), StatusCode::OK);
    api.assert_content(id, &file).await;
}

/// The shutdown wait is bounded: a chunk body that never ends, and a connection that
/// never sends a request, hold the exit back at most `--shutdown-timeout`; the stalled
/// chunk is not counted after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_is_bounded_by_its_timeout() {
    let (mut server, store) = start!(&["--shutdown-timeout", "1s", "--body-timeout", "60s"]);
    let api = Api::new(&server);
    let cs = store.chunk(2 * MIB);
    let file = random_bytes(cs, 41);
    let st = api.create(json!({"size": cs, "chunk_size": cs})).await;
    let _stalled = raw_put(&server, st.id, 0, cs, &file[..cs * 3 / 4]).await;
    let _silent = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the chunk being stored",
        || async { store.writing(&server, st.id, 0, &file[..4096]).await },
    )
    .await;
    let started = Instant::now();
    server.send_signal("TERM");
    let (status, mut server) = tokio::task::spawn_blocking(move || {
        let s = server.wait_exit(Duration::from_secs(10));
        (s, server)
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(took < Duration::from_secs(6), "exit took {took:?}");
    server.restart();
    let api = Api::new(&server);
    let st = api.status(st.id).await;
    assert_eq!(st.missing, vec![[0, 0]]);
    assert_eq!(st.received_bytes, 0);
}

/// A connection that is open but idle (no request yet) does not hold the exit back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_does_not_wait_for_idle_connections() {
    let (mut server, _store) = start!(&["--shutdown-timeout", "20s"]);
    let api = Api::new(&server);
    let _silent = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    // A kept-alive connection that served one request.
    let pooled = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = pooled.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let started = Instant::now();
    server.send_signal("TERM");
    let (status, _server) = tokio::task::spawn_blocking(move || {
        let s = server.wait_exit(Duration::from_secs(25));
        (s, server)
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "idle connections delayed the exit by {took:?}"
    );
}
