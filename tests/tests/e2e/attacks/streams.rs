//! Answers whose client stops reading: a download that is never read must not hold its
//! connection (and the memory of its buffers) forever.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::*;

/// A client asks for a 16 MiB download and reads nothing (a tiny receive buffer, so the
/// server's writes block at once): once its writes have been blocked for
/// `--send-timeout`, the server closes the connection, and says why in its metrics.
#[tokio::test]
async fn a_download_whose_client_reads_nothing_is_cut() {
    let (server, _data) = Server::start(&["--send-timeout", "2s"]);
    let api = Api::new(&server);
    let file = tests::random_bytes(16 * MIB, 18);
    let id = api.create(file.len(), file.len()).await.id.to_string();
    assert_eq!(
        api.put_chunk(&id, 0, &file).await.status(),
        StatusCode::CREATED
    );
    let done = api
        .req(Method::POST, &format!("/v1/uploads/{id}/complete"))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr.parse().unwrap()).await.unwrap();
    let request = format!(
        "GET /v1/uploads/{id}/content HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();

    let series = r#"upload_http_connections_closed_total{reason="send_timeout"}"#;
    let t0 = Instant::now();
    let http = crate::tls::fresh_client();
    while crate::tls::metric(&http, &server.url(), series).await < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "a download nobody reads was never cut"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What was sent before the cut can still be read; then the connection ends, short of
    // the whole file.
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * KIB];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received += n,
            Err(_) => panic!("the connection stayed open after the send timeout"),
        }
    }
    assert!(
        received < file.len(),
        "the whole file arrived ({received} bytes): nothing was cut"
    );
}
