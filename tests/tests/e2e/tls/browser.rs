//! Browsers over https: the built-in page and Uppy in headless Chromium against the TLS
//! server. The DevTools protocol and the page's Resource Timing entries say which
//! protocol carried the chunks (`h2`) and over how many connections; four chunks must be
//! in flight at once on one connection.

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

/// The requests a driver recorded went over HTTP/2, on one connection, `in_flight` at once.
#[track_caller]
fn one_h2_connection(r: &DriverResult, network: &Value, in_flight: u64) {
    let requests = network["requests"].as_u64().unwrap_or(0);
    assert!(requests >= in_flight, "{r}");
    assert_eq!(network["protocols"]["h2"].as_u64(), Some(requests), "{r}");
    assert_eq!(network["connections"], 1, "{r}");
    assert_eq!(network["max_in_flight"].as_u64(), Some(in_flight), "{r}");
}

#[test]
fn the_page_uploads_over_https_with_four_chunks_on_one_http2_connection() {
    if !webclients::available_or_skip("tls_page_h2") {
        return;
    }
    let s = TlsServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    // Eight chunks of the server's default 8 MiB.
    let file = tests::write_file(dir.path(), "page.bin", &tests::random_bytes(64 * MIB, 61));
    let r = driver(
        "page.mjs",
        &[
            "--url",
            &s.url(),
            "--file",
            file.to_str().unwrap(),
            "--spki",
            &s.cert.spki_sha256,
            // Slow enough that every chunk is still on its way when the next ones start,
            // however fast the page hashes on a busy machine.
            "--throttle",
            "16",
        ],
        &s.ca_file,
    );
    r.assert_ok();
    assert_eq!(r.json["secure_context"], true, "{r}");
    one_h2_connection(&r, &r.json["chunk_network"], 4);
    let hops = r.json["chunk_next_hop"].as_array().expect("entries");
    assert!(!hops.is_empty() && hops.iter().all(|h| h == "h2"), "{r}");
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
    one_h2_connection(&r, &r.json["network"], 4);
}
