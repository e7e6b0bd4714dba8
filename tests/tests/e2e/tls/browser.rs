//! Browsers over https: the built-in page and Uppy in headless Chromium against the TLS
//! server. Resource Timing entries (the page) and the DevTools protocol (Uppy) say which
//! protocol carried the chunks (`h2`) and how many were in flight at once (the page's one
//! run, Uppy's four parts), the server's and the browser's connection counts that it was all
//! one connection.

use std::time::Duration;

use serde_json::Value;
use tests::webclients::{self, DriverResult};

use super::{TlsServer, MIB};

/// Runs a driver script of `scripts/webclients/` with Node trusting the server's CA.
fn driver(script: &str, args: &[&str], ca: &std::path::Path) -> DriverResult {
    let mut all = vec![webclients::scripts_dir().join(script).display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend(["--timeout".to_string(), "120".to_string()]);
    webclients::run_env(
        "node",
        &all,
        &[("NODE_EXTRA_CA_CERTS", ca.to_str().unwrap())],
        Duration::from_secs(150),
    )
}

/// The requests a driver recorded went over HTTP/2, `in_flight` at once.
#[track_caller]
fn h2_in_flight(r: &DriverResult, network: &Value, in_flight: u64) {
    let requests = network["requests"].as_u64().unwrap_or(0);
    assert!(requests >= in_flight, "{r}");
    assert_eq!(network["protocols"]["h2"].as_u64(), Some(requests), "{r}");
    assert_eq!(network["max_in_flight"].as_u64(), Some(in_flight), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_uploads_over_https_on_one_http2_connection() {
    if !webclients::available_or_skip("tls_page_h2") {
        return;
    }
    let s = TlsServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    // Eight chunks of the server's default 8 MiB.
    let file = tests::write_file(dir.path(), "page.bin", &tests::random_bytes(64 * MIB, 61));
    let r = tokio::task::block_in_place(|| {
        driver(
            "page.mjs",
            &[
                "--url",
                &s.url(),
                "--file",
                file.to_str().unwrap(),
                "--spki",
                &s.cert.spki_sha256,
            ],
            &s.ca_file,
        )
    });
    r.assert_ok();
    assert_eq!(r.json["secure_context"], true, "{r}");
    // A new upload goes as one run of its chunks.
    h2_in_flight(&r, &r.json["chunk_network"], 1);
    assert_eq!(r.json["run_requests"][0], 1, "{r}");
    // Page, worker and the run: one connection.
    let connections = s
        .metric(r#"upload_http_connections_total{protocol="h2",tls="true"}"#)
        .await;
    assert_eq!(connections, 1.0, "{r}");
}

#[test]
fn uppy_uploads_over_https_with_four_parts_on_one_http2_connection() {
    if !webclients::available_or_skip("tls_uppy_h2") {
        return;
    }
    let s = TlsServer::start(&["--cors-origin", "*"]);
    let dir = tempfile::tempdir().unwrap();
    let file = tests::write_file(dir.path(), "uppy.bin", &tests::random_bytes(32 * MIB, 62));
    let endpoint = format!("{}/files/", s.url());
    let r = driver(
        "uppy.mjs",
        &[
            "--endpoint",
            &endpoint,
            "--file",
            file.to_str().unwrap(),
            "--parallel",
            "4",
            "--spki",
            &s.cert.spki_sha256,
            "--throttle",
            "16",
        ],
        &s.ca_file,
    );
    r.assert_ok();
    assert!(r.str("url").starts_with(&endpoint), "{r}");
    h2_in_flight(&r, &r.json["network"], 4);
    assert_eq!(r.json["network"]["connections"], 1, "{r}");
}
