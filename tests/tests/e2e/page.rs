//! The built-in upload page (`GET /`) in a real browser: headless Chromium driven by
//! `scripts/webclients/page.mjs` (playwright-core) against the real `upload-server`.
//!
//! - a 50 MiB file is uploaded, the page is reloaded once the server holds ≥ 40% of it, the
//!   same file is chosen again and the page resumes the SAME upload, sending only the missing
//!   chunks; the SHA-256 the page shows, the file's and the server's agree; a screenshot of
//!   the page mid-upload is kept in `target/test-artifacts/page-mid-upload.png`;
//! - Cancel (pressed with the keyboard) makes the server answer 410 for the upload.
//!
//! The driver also checks the page's incremental SHA-256 against known vectors and WebCrypto.
//! Needs `scripts/webclients/setup.sh install` (playwright-core, Debian chromium); without it
//! the tests print `SKIPPED …` and pass, unless `WEBCLIENTS_REQUIRED=1`.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{random_bytes, sha256_hex, write_file, Server};

const MIB: usize = 1 << 20;
/// Bound on one driver run (the driver's own watchdog is shorter).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(120);

/// One browser at a time: the machine is small and the reload test is about timing.
static BROWSER: Mutex<()> = Mutex::new(());

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// Whether node, playwright-core and Chromium are installed; otherwise `SKIPPED`, or a panic
/// with `WEBCLIENTS_REQUIRED=1`.
fn webclients_or_skip(name: &str) -> bool {
    let tools = std::env::var_os("WEBCLIENTS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/tools"));
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let missing: Vec<String> = [
        (!node_ok).then(|| "node".to_string()),
        (!tools
            .join("node/node_modules/playwright-core/package.json")
            .exists())
        .then(|| format!("playwright-core under {}", tools.display())),
        (!chromium.exists()).then(|| chromium.display().to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "missing {}; run `scripts/webclients/setup.sh install`",
        missing.join(", ")
    );
    if std::env::var("WEBCLIENTS_REQUIRED").is_ok_and(|v| !v.is_empty() && v != "0") {
        panic!("{name}: the web clients are required (WEBCLIENTS_REQUIRED is set): {why}");
    }
    eprintln!("SKIPPED {name}: {why}");
    false
}

/// Runs `page.mjs` in its own process group (so Chromium dies with it), bounded by
/// [`DRIVER_TIMEOUT`], and returns its one JSON line.
fn run_driver(server_url: &str, file: &Path, extra: &[&str]) -> Value {
    let script = repo_root().join("scripts/webclients/page.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .arg("--url")
        .arg(server_url)
        .arg("--file")
        .arg(file)
        .args(["--timeout", "90"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn node page.mjs");
    let pgid = child.id();
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("stdout")));
    let stderr = reader(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + DRIVER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the driver") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever happened, nothing the driver started outlives it.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let (out, err) = (stdout.join().unwrap(), stderr.join().unwrap());
    let Some(status) = status else {
        panic!("page.mjs did not finish within {DRIVER_TIMEOUT:?}\nstdout: {out}\nstderr: {err}");
    };
    let line = out.lines().last().unwrap_or_default();
    let json: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("page.mjs ({status}) printed no JSON ({e}): {out}\n{err}"));
    assert!(
        status.success() && json["ok"] == true,
        "page.mjs failed ({status}): {json:#}\nstderr: {err}"
    );
    json
}

/// A 50 MiB random file in `dir`, and its SHA-256.
fn big_file(dir: &Path, seed: u64) -> (PathBuf, String) {
    let data = random_bytes(50 * MIB, seed);
    let sha = sha256_hex(&data);
    (write_file(dir, "page-50MiB.bin", &data), sha)
}

/// `GET /v1/uploads/{id}`: status code and JSON body.
fn native_status(server: &Server, id: &str) -> (reqwest::StatusCode, Value) {
    let url = format!("{}/v1/uploads/{id}", server.url());
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client")
            .get(url)
            .send()
            .await
            .expect("GET status");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    })
}

/// Distinct requests (by request id) the server logged for `path_prefix`.
fn logged_requests(server: &Server, path_prefix: &str) -> usize {
    let needle = format!("path={path_prefix}");
    server
        .logs()
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.split("request_id=").nth(1))
        .map(|rest| {
            rest.split(['}', ' ', ','])
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect::<HashSet<_>>()
        .len()
}

#[test]
fn page_uploads_50mib_resumes_the_same_upload_after_a_reload() {
    if !webclients_or_skip("page_uploads_50mib_resumes_the_same_upload_after_a_reload") {
        return;
    }
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let (server, _data) = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("temp dir");
    let (file, sha) = big_file(tmp.path(), 6);
    let shot = repo_root().join("target/test-artifacts/page-mid-upload.png");
    let _ = std::fs::remove_file(&shot);

    let args = [
        "--reload-at",
        "0.4",
        "--screenshot",
        shot.to_str().expect("utf-8 path"),
    ];
    let r = run_driver(&server.url(), &file, &args);
    eprintln!("page.mjs: {r}");

    // The page is served from the binary, and its own SHA-256 passed its self-test.
    assert_eq!(r["page_content_type"], "text/html; charset=utf-8", "{r:#}");
    assert_eq!(r["sha256_selftest"]["ok"], true, "{r:#}");
    assert_eq!(r["secure_context"], true, "crypto.subtle needs it: {r:#}");

    // The SHA-256 shown on the page is the file's, and the server's.
    assert_eq!(r["sha256"], sha.as_str(), "{r:#}");
    let id = r["id"].as_str().expect("upload id").to_string();
    let (code, status) = native_status(&server, &id);
    assert_eq!(code, reqwest::StatusCode::OK, "{status:#}");
    assert_eq!(status["state"], "completed", "{status:#}");
    assert_eq!(status["sha256"], sha.as_str(), "{status:#}");
    assert_eq!(status["size"], 50 * MIB, "{status:#}");
    assert_eq!(r["link"], format!("/v1/uploads/{id}/content"), "{r:#}");

    // After the reload the page resumed the same upload and sent only what was missing.
    assert_eq!(r["resumed"], true, "{r:#}");
    assert_eq!(r["resumed_id"], id.as_str(), "{r:#}");
    let chunk_size = status["chunk_size"].as_u64().expect("chunk_size");
    let chunk_count = status["chunk_count"].as_u64().expect("chunk_count");
    let confirmed = r["confirmed_at_reload"]
        .as_u64()
        .expect("confirmed_at_reload");
    assert!(
        confirmed as f64 >= 0.4 * (50 * MIB) as f64,
        "reloaded too early: {r:#}"
    );
    let stored_before_reload = confirmed / chunk_size;
    let second = r["put_requests"][1].as_u64().expect("put_requests");
    assert!(
        second >= 1 && second <= chunk_count - stored_before_reload,
        "the second session sent {second} chunk PUTs; {stored_before_reload} of {chunk_count} \
         chunks were already stored: {r:#}"
    );
    let puts = logged_requests(&server, &format!("/v1/uploads/{id}/chunks/"));
    assert!(
        puts < chunk_count as usize + 4,
        "{puts} chunk PUTs in the server log for {chunk_count} chunks"
    );

    // The screenshot of the page mid-upload is a PNG.
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(
        png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        shot.display()
    );
    assert_eq!(r["screenshot_state"]["state"], "uploading", "{r:#}");
}

#[test]
fn page_cancel_makes_the_server_answer_410() {
    if !webclients_or_skip("page_cancel_makes_the_server_answer_410") {
        return;
    }
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let (server, _data) = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("temp dir");
    let (file, _) = big_file(tmp.path(), 7);

    let r = run_driver(&server.url(), &file, &["--cancel"]);
    eprintln!("page.mjs: {r}");
    assert_eq!(r["state"], "cancelled", "{r:#}");
    assert_eq!(r["status_after_cancel"], 410, "{r:#}");
    let id = r["id"].as_str().expect("upload id");
    let (code, problem) = native_status(&server, id);
    assert_eq!(code, reqwest::StatusCode::GONE, "{problem:#}");
    assert_eq!(problem["status"], 410, "{problem:#}");
}

/// With authentication on, the page sends the token typed in its field, and its download
/// link is a signed URL that works without one.
#[test]
fn page_uploads_with_a_token_and_links_a_signed_url() {
    if !webclients_or_skip("page_uploads_with_a_token_and_links_a_signed_url") {
        return;
    }
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().expect("temp dir");
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, "page-token carol\n").expect("tokens file");
    let server = Server::start_in(
        &tmp.path().join("data"),
        &["--tokens-file", tokens.to_str().expect("utf-8 path")],
    );
    let data = random_bytes(3 * MIB + 17, 8);
    let sha = sha256_hex(&data);
    let file = write_file(tmp.path(), "with-token.bin", &data);
    let r = run_driver(&server.url(), &file, &["--token", "page-token"]);
    eprintln!("page.mjs: {r}");
    assert_eq!(r["sha256"], sha.as_str(), "{r:#}");
    assert_eq!(r["server_state"], "completed", "{r:#}");
    let id = r["id"].as_str().expect("upload id").to_string();
    // Without the token the upload does not exist...
    let (code, _) = native_status(&server, &id);
    assert_eq!(code, reqwest::StatusCode::UNAUTHORIZED);
    // ...but the page's link downloads it.
    let link = r["link"].as_str().expect("link").to_string();
    assert!(
        link.starts_with(&format!("/v1/uploads/{id}/content?")),
        "{link}"
    );
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let body = rt.block_on(async {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(format!("{}{link}", server.url()))
            .send()
            .await
            .expect("GET signed link")
            .bytes()
            .await
            .expect("body")
    });
    assert_eq!(sha256_hex(&body), sha);
}
