//! The server's TLS and edge: a bad certificate stops the start naming the file; SIGHUP
//! swaps the certificate without dropping open connections (nor the upload in flight on
//! one); `--public-url` makes the URLs handed out absolute; the `104` goes only where
//! RFC 9110 and proxies allow it; `--listen` takes the usual forms.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use tests::tls::{client_trusting, TestCa};
use tests::Server;

use super::{create, raw_exchange, status_lines, wait_for, TlsServer, MIB};

/// Runs `upload-server ARGS` expecting it to refuse to start: its exit status and stderr.
fn refuses_to_start(args: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(tests::bin_path("upload-server"));
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    if !args.contains(&"--data-dir") {
        cmd.arg("--data-dir").arg(data.path());
    }
    let mut child = cmd
        .args(args)
        .env_remove("UPLOAD_SERVER_LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("upload-server {args:?} started although it should not");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{args:?}: {status}\n{err}");
    err
}

#[test]
fn a_bad_certificate_or_key_stops_the_start_naming_the_file() {
    let ca = TestCa::new("start CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.issue(&[]).write(dir.path(), "good");
    let (_, other_key) = ca.issue(&[]).write(dir.path(), "other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let cases = [
        (
            vec![s(&missing), s(&key)],
            format!("--tls-cert {}", s(&missing)),
            "No such file",
        ),
        (
            vec![s(&cert), s(&missing)],
            format!("--tls-key {}", s(&missing)),
            "No such file",
        ),
        (
            vec![s(&garbage), s(&key)],
            format!("--tls-cert {}", s(&garbage)),
            "no certificate",
        ),
        (
            vec![s(&cert), s(&garbage)],
            format!("--tls-key {}", s(&garbage)),
            "no private key",
        ),
        (
            vec![s(&cert), s(&cert)],
            format!("--tls-key {}", s(&cert)),
            "no private key",
        ),
        (
            vec![s(&cert), s(&other_key)],
            format!("--tls-key {}", s(&other_key)),
            "does not belong",
        ),
    ];
    for (files, names, says) in cases {
        let err = refuses_to_start(&["--tls-cert", &files[0], "--tls-key", &files[1]]);
        assert!(
            err.contains(&names) && err.contains(says),
            "{files:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    // One without the other is a usage error.
    let err = refuses_to_start(&["--tls-cert", &s(&cert)]);
    assert!(err.contains("--tls-key"), "{err}");
    // And the other start-up errors name their flag too.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let err = refuses_to_start(&["--data-dir", file.to_str().unwrap()]);
    assert!(
        err.contains(&format!("--data-dir {}", file.display())),
        "{err}"
    );
    let err = refuses_to_start(&["--tokens-file", missing.to_str().unwrap()]);
    assert!(
        err.contains(&format!("--tokens-file {}", missing.display())),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_without_dropping_open_connections() {
    let s = TlsServer::start(&[]);
    let old = s.client();
    let url = s.url();
    let chunk = MIB;
    let file = tests::random_bytes(3 * chunk, 5);
    let id = create(&old, &url, file.len(), chunk).await;
    let put = |client: reqwest::Client, i: usize, body: reqwest::Body| {
        let url = url.clone();
        let id = id.clone();
        async move {
            client
                .put(format!("{url}/v1/uploads/{id}/chunks/{i}"))
                .header("content-length", chunk)
                .body(body)
                .send()
                .await
                .expect("chunk PUT")
        }
    };
    let first = put(old.clone(), 0, file[..chunk].to_vec().into()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(first.version(), reqwest::Version::HTTP_2);

    // Chunk 1 is in flight across the reload: half of it before, half after.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    let body = reqwest::Body::wrap_stream(tokio_stream_of(rx).map(Ok::<_, std::io::Error>));
    let in_flight = tokio::spawn(put(old.clone(), 1, body));
    tx.send(file[chunk..chunk + chunk / 2].to_vec())
        .await
        .unwrap();

    let ca2 = TestCa::new("renewed CA");
    let renewed = ca2.issue(&[]);
    std::fs::write(&s.cert_file, &renewed.cert_pem).unwrap();
    std::fs::write(&s.key_file, &renewed.key_pem).unwrap();
    s.server.send_signal("HUP");
    wait_for(Duration::from_secs(10), "the reload", || async {
        s.server.logs().contains("TLS certificate reloaded")
    })
    .await;
    tx.send(file[chunk + chunk / 2..2 * chunk].to_vec())
        .await
        .unwrap();
    drop(tx);
    let second = in_flight.await.unwrap();
    assert_eq!(
        second.status(),
        StatusCode::CREATED,
        "the request in flight went on"
    );

    // The old connection still serves: the last chunk and the completion, on it.
    let last = put(old.clone(), 2, file[2 * chunk..].to_vec().into()).await;
    assert_eq!(last.status(), StatusCode::CREATED);
    let done = old
        .post(format!("{url}/v1/uploads/{id}/complete"))
        .json(&serde_json::json!({"sha256": tests::sha256_hex(&file)}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let h2 = r#"upload_http_connections_total{protocol="h2",tls="true"}"#;
    let renewed_client = client_trusting(&ca2);
    let metrics = tests::tls::client_builder(&ca2)
        .http1_only()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert_eq!(
        super::metric(&metrics, &url, h2).await,
        1.0,
        "one connection throughout"
    );

    // New connections get the new certificate: refused by the old CA, accepted by the new.
    let err = client_trusting(&s.ca)
        .get(format!("{url}/healthz"))
        .send()
        .await;
    assert!(err.is_err(), "the old certificate is still served");
    let ok = renewed_client
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    // A reload that fails keeps the certificate in use.
    std::fs::write(&s.key_file, "half-written by a renewal tool").unwrap();
    s.server.send_signal("HUP");
    wait_for(Duration::from_secs(10), "the failed reload", || async {
        s.server.logs().contains("TLS certificate not reloaded")
    })
    .await;
    let logs = s.server.logs();
    assert!(
        logs.contains(&format!("--tls-key {}", s.key_file.display())),
        "{logs}"
    );
    let fresh = client_trusting(&ca2);
    assert_eq!(
        fresh
            .get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

/// The items of `rx` as a stream.
fn tokio_stream_of(
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> impl futures_util::Stream<Item = Vec<u8>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_url_makes_handed_out_urls_absolute() {
    let (server, _data) = Server::start(&["--public-url", "https://files.example/up/"]);
    let http = super::fresh_client();
    let url = server.url();
    let id = create(&http, &url, 5, MIB).await;
    let resp = http
        .post(format!("{url}/v1/uploads"))
        .json(&serde_json::json!({"size": 5}))
        .send()
        .await
        .unwrap();
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(
        loc.starts_with("https://files.example/up/v1/uploads/"),
        "{loc}"
    );
    // tus and IETF: Location too.
    let tus = http
        .post(format!("{url}/files/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(tus.status(), StatusCode::CREATED);
    let loc = tus.headers()["location"].to_str().unwrap();
    assert!(loc.starts_with("https://files.example/up/files/"), "{loc}");
    let ietf = http
        .post(format!("{url}/uploads/"))
        .header("upload-complete", "?1")
        .body("hello")
        .send()
        .await
        .unwrap();
    // Created and completed by one request: the answer of the completion.
    assert_eq!(ietf.status(), StatusCode::OK);
    let loc = ietf.headers()["location"].to_str().unwrap();
    assert!(
        loc.starts_with("https://files.example/up/uploads/"),
        "{loc}"
    );
    // The signed download URL.
    http.put(format!("{url}/v1/uploads/{id}/chunks/0"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(
        http.post(format!("{url}/v1/uploads/{id}/complete"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let signed: serde_json::Value = http
        .post(format!("{url}/v1/uploads/{id}/content-url"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let signed = signed["url"].as_str().unwrap();
    assert!(
        signed.starts_with(&format!(
            "https://files.example/up/v1/uploads/{id}/content?"
        )),
        "{signed}"
    );
    // Forwarding headers from a client that is not a trusted proxy change nothing.
    let spoofed = http
        .post(format!("{url}/files/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "5")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .unwrap();
    let loc = spoofed.headers()["location"].to_str().unwrap();
    assert!(loc.starts_with("https://files.example/up/files/"), "{loc}");
    let (plain, _d) = Server::start(&[]);
    let spoofed = http
        .post(format!("{}/files/", plain.url()))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "5")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let loc = spoofed.headers()["location"].to_str().unwrap();
    assert!(
        loc.starts_with("/files/"),
        "relative without a public URL: {loc}"
    );
}

/// An IETF creation with its whole body, on HTTP/`version` with `extra` headers.
fn ietf_create(version: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST /uploads/ HTTP/{version}\r\nHost: localhost\r\nUpload-Complete: ?1\r\n\
         Upload-Draft-Interop-Version: 8\r\nContent-Length: 5\r\nConnection: close\r\n{extra}\r\nhello"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_104_goes_only_to_http11_clients_that_reach_the_server_directly() {
    let (server, _data) = Server::start(&[]);
    let addr = server.addr.clone();
    let heads = |req: Vec<u8>| status_lines(&raw_exchange(&addr, &req));
    // HTTP/1.1, directly: the 104, then the final answer (200: created and completed).
    let direct = heads(ietf_create("1.1", ""));
    assert_eq!(direct.len(), 2, "{direct:?}");
    assert!(direct[0].starts_with("HTTP/1.1 104"), "{direct:?}");
    assert!(direct[1].starts_with("HTTP/1.1 200"), "{direct:?}");
    // HTTP/1.0 (RFC 9110 §15.2: no 1xx to an HTTP/1.0 client), or through a proxy.
    for (version, extra) in [
        ("1.0", ""),
        ("1.1", "X-Forwarded-For: 198.51.100.7\r\n"),
        ("1.1", "Via: 1.1 proxy.example\r\n"),
        ("1.1", "Forwarded: for=198.51.100.7\r\n"),
    ] {
        let got = heads(ietf_create(version, extra));
        assert_eq!(got.len(), 1, "HTTP/{version} {extra:?}: {got:?}");
        assert!(got[0].contains(" 200 "), "{got:?}");
    }
    // From a trusted proxy.
    let (proxied, _d2) = Server::start(&["--trusted-proxy", "127.0.0.0/8"]);
    let got = status_lines(&raw_exchange(&proxied.addr, &ietf_create("1.1", "")));
    assert_eq!(got.len(), 1, "{got:?}");
    // Turned off.
    let (off, _d3) = Server::start(&["--interim-responses", "false"]);
    let got = status_lines(&raw_exchange(&off.addr, &ietf_create("1.1", "")));
    assert_eq!(got.len(), 1, "{got:?}");
    // HTTP/2 (h2c): the creation is answered and the stream is intact.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .post(format!("{}/uploads/", server.url()))
        .header("upload-complete", "?1")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let st: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(st["state"], "completed", "{st}");
}

#[test]
fn listen_takes_a_bare_port_and_a_host_name() {
    for listen in ["localhost:0", ":0"] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(tests::bin_path("upload-server"))
            .args(["--listen", listen, "--allow-anonymous", "--data-dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The log goes to stdout.
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let mut seen = Vec::new();
        let addr = loop {
            let line = lines.next().expect("a log line").unwrap();
            if let Some(a) = line.split("listening on http://").nth(1) {
                break a.trim().to_string();
            }
            seen.push(line);
        };
        let _ = child.kill();
        let _ = child.wait();
        let want = if listen == ":0" {
            "0.0.0.0:"
        } else {
            "127.0.0.1:"
        };
        assert!(addr.starts_with(want), "{listen}: {addr}");
        // One start-up line per area.
        let all = seen.join("\n");
        for area in [
            "storage: local disk under",
            "auth: ",
            "limits: ",
            "events: ",
            "public URL: ",
            "TLS: off",
        ] {
            assert!(all.contains(area), "{area} missing from:\n{all}");
        }
    }
    let err = refuses_to_start(&["--listen", "8080"]);
    assert!(
        err.contains(":8080") && err.contains("127.0.0.1:8080"),
        "{err}"
    );
}
