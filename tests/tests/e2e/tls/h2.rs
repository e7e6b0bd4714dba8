//! HTTP/2: four 8 MiB chunks in flight on one connection; h2c (prior knowledge) on a
//! plain socket; and the slow-client protections on HTTP/2: a stream that stalls is
//! answered and reset while the connection's other streams go on, a connection left
//! without requests is closed, and one that sends nothing after the preface too.

use std::io::Read;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{StatusCode, Version};
use tests::Server;

use super::{create, fresh_client, metric, wait_for, TlsServer, MIB};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_parallel_chunks_share_one_http2_connection() {
    let s = TlsServer::start(&[]);
    let client = s.client();
    let url = s.url();
    let chunk = 8 * MIB;
    let file = tests::random_bytes(4 * chunk, 23);
    let id = create(&client, &url, file.len(), chunk).await;
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let puts = (0..4).map(|i| {
        let client = client.clone();
        let body = file[i * chunk..(i + 1) * chunk].to_vec();
        let url = format!("{url}/v1/uploads/{id}/chunks/{i}");
        let started = started.clone();
        async move {
            started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            client.put(url).body(body).send().await.expect("PUT")
        }
    });
    for resp in futures_util::future::join_all(puts).await {
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let done = client
        .post(format!("{url}/v1/uploads/{id}/complete"))
        .json(&serde_json::json!({"sha256": tests::sha256_hex(&file)}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(
        s.metric(r#"upload_http_connections_total{protocol="h2",tls="true"}"#)
            .await,
        1.0
    );
}

/// A request body that sends `first` bytes, then nothing, ever.
fn stalling_body(first: usize) -> reqwest::Body {
    let head = futures_util::stream::iter([Ok::<_, std::io::Error>(vec![0u8; first])]);
    reqwest::Body::wrap_stream(head.chain(futures_util::stream::pending()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stalled_streams_are_answered_and_idle_connections_closed() {
    let (server, _data) = Server::start(&["--body-timeout", "2s", "--header-timeout", "3s"]);
    let url = server.url();
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let metrics = fresh_client();
    let h2_connections = r#"upload_http_connections_total{protocol="h2",tls="false"}"#;
    let idle_closed = r#"upload_http_connections_closed_total{reason="idle"}"#;
    let id = create(&h2c, &url, MIB, MIB).await;

    // A chunk that stalls after 64 KiB, on the connection...
    let stalled = tokio::spawn({
        let req = h2c
            .put(format!("{url}/v1/uploads/{id}/chunks/0"))
            .header("content-length", MIB)
            .body(stalling_body(64 << 10));
        async move { req.send().await }
    });
    // ...does not hold up its other streams,
    let t0 = Instant::now();
    let health = h2c.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.version(), Version::HTTP_2);
    assert_eq!(health.status(), StatusCode::OK);
    // and is answered (408) and reset after the body timeout.
    let answer = tokio::time::timeout(Duration::from_secs(15), stalled)
        .await
        .expect("the stalled stream ends")
        .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "before the body timeout"
    );
    match answer {
        Ok(resp) => assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e:?}"),
    }
    // Same connection throughout.
    assert_eq!(
        h2c.get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(metric(&metrics, &url, h2_connections).await, 1.0);

    // A stream opened with nothing sent on it is answered the same way, and then the
    // connection, which has no request left, is closed.
    let silent = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let before = metric(&metrics, &url, idle_closed).await;
    let resp = tokio::time::timeout(
        Duration::from_secs(15),
        silent
            .put(format!("{url}/v1/uploads/{id}/chunks/0"))
            .header("content-length", MIB)
            .body(stalling_body(0))
            .send(),
    )
    .await
    .expect("answered");
    if let Ok(r) = resp {
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
    }
    wait_for(
        Duration::from_secs(15),
        "idle HTTP/2 connections closed",
        || async { metric(&metrics, &url, idle_closed).await >= before + 2.0 },
    )
    .await;

    // A connection that sends the preface and nothing more is closed as well.
    let mut raw = std::net::TcpStream::connect(&server.addr).unwrap();
    std::io::Write::write_all(&mut raw, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match raw.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue, // the server's SETTINGS, GOAWAY
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(closed, "still open after {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_sockets_speak_h2c_to_clients_with_prior_knowledge_unless_turned_off() {
    let (server, _data) = Server::start(&[]);
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2c
        .get(format!("{}/v1", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let plain = fresh_client()
        .get(format!("{}/v1", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.version(), Version::HTTP_11);

    let (h1, _d) = Server::start(&["--http2", "false"]);
    let refused = h2c.get(format!("{}/v1", h1.url())).send().await;
    assert!(refused.is_err(), "{refused:?}");
}
