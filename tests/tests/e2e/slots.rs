//! Connection slots under abuse: 2,048 hostile connections against the default cap of
//! 1,024 — clients trickling header bytes (and reconnecting whenever they are closed),
//! event streams and downloads whose clients never read — and a normal client still gets
//! `/healthz` answered within a second and a 64 MiB upload through.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::cli::support::{random_file, Cli};
use tests::Server;

const MIB: usize = 1 << 20;

/// Raises this process's open-files limit: the test holds 2,048 sockets.
fn enough_descriptors() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < 8192 {
            lim.rlim_cur = lim.rlim_max.min(8192);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Sends a request's headers a line a second, forever; reconnects when closed.
async fn trickler(addr: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_err()
        {
            continue;
        }
        let mut buf = [0u8; 512];
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::select! {
                r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

/// Opens `GET path` and never reads the answer (a tiny receive buffer, so the server's
/// writes block as soon as they fill it); the socket is held until the test ends.
async fn non_reader(addr: String, path: String) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.set_recv_buffer_size(4096).ok()?;
    let mut s = socket.connect(addr.parse().ok()?).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    Some(s)
}

async fn metric(url: &str, series: &str) -> f64 {
    crate::tls::metric(&crate::tls::fresh_client(), url, series).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_client_gets_through_2048_hostile_connections() {
    enough_descriptors();
    // Anonymous on loopback, and no rate limit: the attack comes from many addresses.
    let (server, _data) = Server::start(&["--rate-limit", "0"]);
    let url = server.url();
    let addr = server.addr.clone();
    let http = crate::tls::fresh_client();
    // A completed 16 MiB upload to download, an open one to follow.
    let file = tests::random_bytes(16 * MIB, 81);
    let done = crate::tls::create(&http, &url, file.len(), file.len()).await;
    let put = http
        .put(format!("{url}/v1/uploads/{done}/chunks/0"))
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let complete = http
        .post(format!("{url}/v1/uploads/{done}/complete"))
        .send()
        .await
        .unwrap();
    assert_eq!(complete.status(), StatusCode::OK);
    let open = crate::tls::create(&http, &url, MIB, MIB).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut held = Vec::new();
    for i in 0..1024 {
        let path = if i % 2 == 0 {
            format!("/v1/uploads/{open}/events")
        } else {
            format!("/v1/uploads/{done}/content")
        };
        if let Some(s) = non_reader(addr.clone(), path).await {
            held.push(s);
        }
    }
    assert!(
        held.len() >= 1000,
        "only {} hostile readers connected",
        held.len()
    );
    let tricklers: Vec<_> = (0..1024)
        .map(|_| tokio::spawn(trickler(addr.clone(), stop.clone())))
        .collect();
    // The server is full.
    let t0 = Instant::now();
    while metric(&url, "upload_http_connections_open").await < 1000.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the slots never filled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // /healthz within a second, each time on a new connection.
    for i in 0..5 {
        let t = Instant::now();
        let resp = tokio::time::timeout(
            Duration::from_secs(1),
            crate::tls::fresh_client()
                .get(format!("{url}/healthz"))
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("/healthz #{i} took more than a second"))
        .expect("/healthz");
        assert_eq!(resp.status(), StatusCode::OK);
        eprintln!("/healthz #{i} answered in {:?}", t.elapsed());
    }
    // A 64 MiB upload with the CLI.
    let dir = tempfile::tempdir().unwrap();
    let (path, sha) = random_file(dir.path(), "normal.bin", 64 * MIB, 82);
    let run = tokio::task::spawn_blocking(move || {
        Cli::new().run(&["upload", path.to_str().unwrap(), "--server", &url, "--json"])
    })
    .await
    .unwrap();
    run.expect_code(0);
    assert_eq!(run.one("completed")["sha256"], sha.as_str());

    stop.store(true, Ordering::Relaxed);
    for t in tricklers {
        t.abort();
    }
    let url = server.url();
    // Room was made by closing hostile connections, not by waiting for them.
    let evicted = metric(
        &url,
        r#"upload_http_connections_closed_total{reason="evicted"}"#,
    )
    .await;
    assert!(evicted > 0.0, "nothing was evicted");
    drop(held);
}
