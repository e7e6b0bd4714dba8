//! What operators and integrators see of a running server: the Prometheus
//! metrics checked by `promtool` and against what the test did, the request log (one JSON
//! line per request, no credentials in it), and the OpenAPI document fuzzed by
//! Schemathesis against the real server.
//!
//! `promtool` and Schemathesis come from `scripts/api-tools/setup.sh install` (`make test`
//! runs it) under `target/tools` (or `API_TOOLS`). Without them the tests print `SKIPPED`
//! and return, unless `API_TOOLS_REQUIRED=1` (set by `make test`), when they fail.
//! Build the binaries first (`cargo build --workspace --bins`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tests::{random_bytes, sha256_hex, Server};

const KIB: usize = 1 << 10;

/// Where `scripts/api-tools/setup.sh` installs its tools.
fn tools_dir() -> PathBuf {
    match std::env::var_os("API_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => tests::webclients::repo_root().join("target").join("tools"),
    }
}

/// The path of an installed tool, or `None` (after saying so) when the test is to be
/// skipped; panics instead when `API_TOOLS_REQUIRED=1`.
fn tool(test: &str, relative: &str) -> Option<PathBuf> {
    let path = tools_dir().join(relative);
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "{} is missing: run `scripts/api-tools/setup.sh install`",
        path.display()
    );
    assert!(
        std::env::var_os("API_TOOLS_REQUIRED").is_none(),
        "API_TOOLS_REQUIRED is set but {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
    None
}

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// One scrape of `/metrics`, as `series{labels}` → value.
async fn scrape(http: &Client, server: &Server) -> (String, BTreeMap<String, f64>) {
    let resp = http
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = resp.text().await.unwrap();
    let values = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect();
    (text, values)
}

/// The value of `series`, 0 when absent (a labelled series appears at its first sample).
fn value(values: &BTreeMap<String, f64>, series: &str) -> f64 {
    values.get(series).copied().unwrap_or(0.0)
}

/// A loopback port nobody listens on: webhook deliveries to it fail at once.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Creates an upload of `bytes` in `chunk_size` chunks, sends them in order, and
/// completes it declaring `sha256`; returns the id and the complete's status.
async fn upload(
    http: &Client,
    server: &Server,
    bytes: &[u8],
    chunk_size: usize,
    sha256: &str,
) -> (String, StatusCode) {
    let url = server.url();
    let st: Value = http
        .post(format!("{url}/v1/uploads"))
        .json(&json!({"size": bytes.len(), "chunk_size": chunk_size}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = st["id"].as_str().unwrap().to_string();
    for (i, chunk) in bytes.chunks(chunk_size).enumerate() {
        let resp = http
            .put(format!("{url}/v1/uploads/{id}/chunks/{i}"))
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let done = http
        .post(format!("{url}/v1/uploads/{id}/complete"))
        .json(&json!({ "sha256": sha256 }))
        .send()
        .await
        .unwrap();
    (id, done.status())
}

/// The metrics pass `promtool check metrics` and count exactly what happened: uploads by
/// outcome, bytes stored, bytes read back (0 for in-order uploads), chunk request
/// durations by outcome, webhook attempts by outcome and the dead-letter set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_count_what_happened() {
    let Some(promtool) = tool(
        "metrics_pass_promtool_and_count_what_happened",
        "prometheus/usr/bin/promtool",
    ) else {
        return;
    };
    let hook = format!("http://127.0.0.1:{}/hook", closed_port());
    let (server, _dir) = Server::start(&[
        "--webhook-url",
        &hook,
        "--webhook-secret",
        "s3cret",
        "--webhook-max-attempts",
        "2",
        "--webhook-retry-base",
        "20ms",
        "--webhook-retry-max",
        "50ms",
    ]);
    let http = client();
    let url = server.url();
    let cs = 64 * KIB;

    // Completed, failed (wrong SHA-256), cancelled; and a chunk refused for its digest.
    let good = random_bytes(3 * cs, 1);
    let (_, status) = upload(&http, &server, &good, cs, &sha256_hex(&good)).await;
    assert_eq!(status, StatusCode::OK);
    let bad = random_bytes(cs, 2);
    let (_, status) = upload(&http, &server, &bad, cs, &sha256_hex(b"other")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let st: Value = http
        .post(format!("{url}/v1/uploads"))
        .json(&json!({"size": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = st["id"].as_str().unwrap();
    let refused = http
        .put(format!("{url}/v1/uploads/{id}/chunks/0"))
        .header(
            "content-digest",
            format!("sha-256=:{}:", "A".repeat(43) + "="),
        )
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let cancelled = http
        .delete(format!("{url}/v1/uploads/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::NO_CONTENT);

    // Six events (created and an end for each upload), each tried twice and then given
    // up: wait until all of them are dead letters.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (text, values) = loop {
        let (text, values) = scrape(&http, &server).await;
        if value(&values, "upload_webhook_dead_letters") >= 6.0 {
            break (text, values);
        }
        assert!(
            Instant::now() < deadline,
            "the webhook events did not all become dead letters:\n{text}\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let expect = [
        ("upload_created_total", 3.0),
        ("upload_completed_total", 1.0),
        ("upload_failed_total", 1.0),
        ("upload_cancelled_total", 1.0),
        ("upload_expired_total", 0.0),
        ("upload_active", 0.0),
        ("upload_received_bytes_total", (4 * cs) as f64),
        ("upload_read_back_at_completion_bytes_total", 0.0),
        (
            "upload_hashed_bytes_total{source=\"in_flight\"}",
            (4 * cs) as f64,
        ),
        (
            "upload_chunk_request_duration_seconds_count{protocol=\"native\",outcome=\"success\"}",
            4.0,
        ),
        (
            "upload_chunk_request_duration_seconds_count{protocol=\"native\",outcome=\"client_error\"}",
            1.0,
        ),
        ("upload_webhook_deliveries_total{outcome=\"retry\"}", 6.0),
        ("upload_webhook_deliveries_total{outcome=\"dead\"}", 6.0),
        ("upload_webhook_dead_letters", 6.0),
        ("upload_storage_circuit_open", 0.0),
        ("upload_verification_duration_seconds_count", 1.0),
        // The scrape itself.
        ("upload_http_requests_in_flight", 1.0),
    ];
    for (series, want) in expect {
        assert_eq!(value(&values, series), want, "{series}\n{text}");
    }
    assert!(text.contains("# TYPE upload_chunk_request_duration_seconds histogram"));
}

/// With `--log-format json` every line is a JSON object, each request has one line with
/// its method, path, status, duration, request id, upload id and bytes, and neither a
/// bearer token nor a signed URL's signature appears anywhere in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_is_json_with_one_line_per_request_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let token = "tok-7f3a9c1e5b2d4f60";
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{token} alice\n")).unwrap();
    let (server, _data) = Server::start(&[
        "--log-format",
        "json",
        "--tokens-file",
        tokens.to_str().unwrap(),
    ]);
    let http = client();
    let url = server.url();
    let auth = format!("Bearer {token}");
    let bytes = random_bytes(100, 3);
    let st: Value = http
        .post(format!("{url}/v1/uploads"))
        .header("authorization", &auth)
        .json(&json!({"size": 100, "sha256": sha256_hex(&bytes)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = st["id"].as_str().unwrap().to_string();
    let put = http
        .put(format!("{url}/v1/uploads/{id}/chunks/0"))
        .header("authorization", &auth)
        .header("x-request-id", "req-put-0")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let done = http
        .post(format!("{url}/v1/uploads/{id}/complete"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let signed: Value = http
        .post(format!("{url}/v1/uploads/{id}/content-url"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let signed_url = signed["url"].as_str().unwrap().to_string();
    let sig = signed_url
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("sig="))
        .expect("a sig= parameter")
        .to_string();
    let got = http.get(format!("{url}{signed_url}")).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().to_vec(), bytes);

    // The last request's line is written once its body was sent: poll for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let logs = loop {
        let logs = server.logs();
        let lines = logs.lines().filter(|l| l.contains("\"status\"")).count();
        if lines >= 5 || Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!logs.contains(token), "a token in the log:\n{logs}");
    assert!(!logs.contains(&sig), "a signature in the log:\n{logs}");
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // Every field of a line, its span's included, in one map.
    let fields = |line: &Value| {
        let mut all = serde_json::Map::new();
        for key in ["span", "fields"] {
            if let Some(Value::Object(m)) = line.get(key) {
                all.extend(m.clone());
            }
        }
        if let Some(Value::Array(spans)) = line.get("spans") {
            for s in spans {
                if let Value::Object(m) = s {
                    all.extend(m.clone());
                }
            }
        }
        all
    };
    let requests: Vec<_> = lines
        .iter()
        .map(fields)
        .filter(|f| f.contains_key("status") && f.contains_key("method"))
        .collect();
    let put_lines: Vec<_> = requests
        .iter()
        .filter(|f| f.get("request_id") == Some(&json!("req-put-0")))
        .collect();
    assert_eq!(put_lines.len(), 1, "one line for the PUT: {requests:#?}");
    let line = put_lines[0];
    assert_eq!(line["method"], "PUT");
    assert_eq!(line["path"], format!("/v1/uploads/{id}/chunks/0"));
    assert_eq!(line["upload_id"], id.as_str());
    assert_eq!(line["status"], 201);
    assert_eq!(line["bytes_in"], 100);
    assert!(line["duration_ms"].as_f64().is_some(), "{line:?}");
    let content_line = requests
        .iter()
        .find(|f| f.get("path") == Some(&json!(format!("/v1/uploads/{id}/content"))))
        .expect("a line for the signed download");
    assert_eq!(content_line["bytes_out"], 100);
}

/// `/v1/openapi.json` is an OpenAPI 3.1 document of the native API, and Schemathesis,
/// generating requests from it (examples, boundary cases, random data and stateful
/// sequences that follow the document's links), finds no 5xx and no response that
/// departs from the document (status, content type, headers, body schema).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let Some(schemathesis) = tool(
        "schemathesis_finds_no_server_error_and_no_schema_violation",
        "api-venv/bin/schemathesis",
    ) else {
        return;
    };
    let (server, _dir) = Server::start(&["--rate-limit", "0"]);
    let http = client();
    let doc: Value = http
        .get(format!("{}/v1/openapi.json", server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/v1",
        "/v1/uploads",
        "/v1/uploads/{id}",
        "/v1/uploads/{id}/chunks/{index}",
        "/v1/uploads/{id}/complete",
        "/v1/uploads/{id}/content",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }

    // A fixed seed in `make test` (repeatable); `SCHEMATHESIS_SEED` / `_EXAMPLES` for more.
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261201".into());
    let examples = std::env::var("SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "40".into());
    let spec = format!("{}/v1/openapi.json", server.url());
    let config = tests::webclients::repo_root().join("scripts/api-tools/schemathesis.toml");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis)
            // Which checks run, and why one is off: see the file.
            .arg("--config-file")
            .arg(config)
            .arg("run")
            .arg(&spec)
            .args([
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
            ])
            .args(["--max-examples", &examples, "--seed", &seed])
            .args(["--workers", "1", "--no-color"])
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Its summary is at the end; a long report is cut from the front.
    let tail: String = {
        let lines: Vec<&str> = report.lines().collect();
        lines[lines.len().saturating_sub(120)..].join("\n")
    };
    assert!(out.status.success(), "schemathesis failed:\n{tail}");
    let generated: u64 = report
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_suffix(" generated")
                .or_else(|| l.trim().split_once(" generated,").map(|(n, _)| n))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no test case count in:\n{tail}"));
    assert!(generated >= 100, "only {generated} cases:\n{tail}");
    let logs = server.logs();
    assert!(
        !logs.contains("request failed"),
        "the server logged failures:\n{logs}"
    );
}
