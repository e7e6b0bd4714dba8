//! The built-in upload page (`GET /`) in a real browser: headless Chromium driven by
//! `scripts/webclients/page.mjs` (playwright-core) against the real `upload-server`.
//!
//! - a 256 MiB file goes up in one request (a run of chunks) and is verified: the page's
//!   completion gives every chunk's SHA-256, which are the file's; the SHA-256 the page shows
//!   is the file's and the server's; the page says how the file was checked, and it asks for
//!   no token from a server that needs none;
//! - Pause (pressed with the keyboard) stops the upload, a reload lists it as unfinished,
//!   and choosing the same file again resumes the SAME upload, sending only what is missing;
//!   a screenshot of the page mid-upload is kept in `target/test-artifacts/page-mid-upload.png`;
//! - a wrong token fails the card with words that name the token field; the right one and
//!   Retry finish the upload, whose download link is then a signed URL;
//! - a file damaged on the way (by the fault proxy) is not published: the server's check of
//!   the page's chunk digests fails; the card says so, and Retry sends the file again; a
//!   chunk PUT damaged on the way is refused at once, and Retry resends it;
//! - a run cut mid-way, or refused by a proxy (413), is picked up chunk by chunk from what
//!   the server stored, and the completion still covers every chunk with the page's digests;
//! - several files chosen at once are listed, and uploaded, in the order chosen;
//! - Cancel (pressed with the keyboard) makes the server answer 410 for the upload.
//!
//! Buttons are found by the names a screen reader announces. Needs
//! `scripts/webclients/setup.sh install` (playwright-core, Debian chromium); without it the
//! tests print `SKIPPED …` and pass, unless `WEBCLIENTS_REQUIRED=1`.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::proxy::{Fault, Faults, Proxy};
use tests::{random_bytes, sha256_hex, write_file, Server};

const MIB: usize = 1 << 20;
/// Bound on one driver run (the driver's own watchdog is shorter).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(120);

/// One browser at a time: the machine is small and the pause test is about timing.
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

/// A random file of `len` bytes in `dir`, and its SHA-256.
fn random_file(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, String) {
    let data = random_bytes(len, seed);
    let sha = sha256_hex(&data);
    (write_file(dir, name, &data), sha)
}

/// `GET {url}` with an optional bearer token: status code and JSON body.
fn get_json(url: &str, token: Option<&str>) -> (reqwest::StatusCode, Value) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let mut req = client.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("GET");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    })
}

/// `GET /v1/uploads/{id}`: status code and JSON body.
fn native_status(server: &Server, id: &str) -> (reqwest::StatusCode, Value) {
    get_json(&format!("{}/v1/uploads/{id}", server.url()), None)
}

/// Distinct requests (by request id) the server logged for `path_prefix`, with `status` if
/// given.
fn logged_requests(server: &Server, path_prefix: &str, status: Option<u16>) -> usize {
    let needle = format!("path={path_prefix}");
    let status = status.map(|s| format!("status={s} "));
    server
        .logs()
        .lines()
        .filter(|l| l.contains(&needle))
        .filter(|l| status.as_ref().is_none_or(|s| l.contains(s.as_str())))
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

/// The upload `r` reports is completed on the server with the file's SHA-256, which the
/// page showed.
fn assert_verified(server: &Server, r: &Value, sha: &str, size: usize, token: Option<&str>) {
    assert_eq!(r["sha256"], sha, "the page shows the file's SHA-256: {r:#}");
    let id = r["id"].as_str().expect("upload id");
    let (code, status) = get_json(&format!("{}/v1/uploads/{id}", server.url()), token);
    assert_eq!(code, reqwest::StatusCode::OK, "{status:#}");
    assert_eq!(status["state"], "completed", "{status:#}");
    assert_eq!(status["sha256"], sha, "{status:#}");
    assert_eq!(status["size"], size, "{status:#}");
    assert_eq!(
        r["put_without_digest"], 0,
        "a chunk PUT without Content-Digest: {r:#}"
    );
}

/// The page's (last) completion gave the SHA-256 of every chunk of `file`, cut at
/// `chunk_size`.
fn assert_chunk_digests(r: &Value, file: &Path, chunk_size: usize) {
    let bytes = std::fs::read(file).expect("read the file");
    let expected: Vec<String> = bytes.chunks(chunk_size).map(sha256_hex).collect();
    assert_eq!(
        r["completion_chunk_sha256"],
        serde_json::json!(expected),
        "the page's chunk digests: {r:#}"
    );
}

/// The card failed saying that something arrived damaged, and offers Retry and Dismiss.
fn assert_failed_damaged(r: &Value) {
    let error = r["failure"]["error"].as_str().expect("failure message");
    assert!(
        error.contains("arrived damaged") && error.contains("Retry"),
        "{error}"
    );
    assert_eq!(
        r["failure"]["buttons"],
        serde_json::json!(["retry", "dismiss"]),
        "{r:#}"
    );
}

/// A fault proxy in front of `upstream` that gives `fault` to every request `matching`
/// selects.
fn faulty_proxy(upstream: &str, matching: &str, fault: Fault) -> Proxy {
    Proxy::start(
        upstream,
        Faults {
            rate: 1.0,
            matching: matching.into(),
            kinds: vec![fault],
            ..Faults::none()
        },
    )
}

#[test]
fn page_uploads_256mib_verified_by_its_own_chunk_digests() {
    if !webclients_or_skip("page_uploads_256mib_verified_by_its_own_chunk_digests") {
        return;
    }
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let (server, _data) = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("temp dir");
    let (file, sha) = random_file(tmp.path(), "page-256MiB.bin", 256 * MIB, 5);

    let r = run_driver(&server.url(), &file, &[]);
    eprintln!("page.mjs: {r}");

    // Served from the binary under a policy that allows this origin's worker and nothing
    // more: no eval, no WebAssembly.
    assert_eq!(r["page_content_type"], "text/html; charset=utf-8", "{r:#}");
    let csp = r["page_csp"].as_str().expect("Content-Security-Policy");
    assert!(csp.contains("worker-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(r["secure_context"], true, "crypto.subtle needs it: {r:#}");

    // A server that needs no token says so, and the page asks for none.
    let (_, caps) = get_json(&format!("{}/v1", server.url()), None);
    assert_eq!(caps["token_required"], false, "{caps:#}");
    assert_eq!(r["token_field_visible"], false, "{r:#}");

    assert_verified(&server, &r, &sha, 256 * MIB, None);
    let id = r["id"].as_str().expect("upload id");
    assert_eq!(r["link"], format!("/v1/uploads/{id}/content"), "{r:#}");
    let (_, status) = native_status(&server, id);
    let chunks = status["chunk_count"].as_u64().expect("chunk_count");
    // A new upload goes as one run of its 16 MiB chunks (one request costs the browser the
    // least CPU), and the completion gives each chunk's SHA-256 as the page read it.
    assert_eq!(status["chunk_size"], 16 * MIB, "{status:#}");
    assert_eq!(chunks, 16, "{status:#}");
    assert_eq!(r["run_requests"][0], 1, "one run: {r:#}");
    assert_eq!(r["put_requests"][0], 0, "no chunk PUT: {r:#}");
    assert_eq!(
        logged_requests(&server, &format!("/v1/uploads/{id}/chunks"), Some(200)),
        1
    );
    assert_chunk_digests(&r, &file, 16 * MIB);
    // It says, in words, how the file was checked.
    let how = r["verification"].as_str().expect("verification text");
    assert!(
        how.contains("this browser computed its SHA-256")
            && how.contains("the server recomputed it")
            && how.contains("SHA-256 of the whole file"),
        "{how}"
    );
    assert_eq!(
        r["buttons_when_done"],
        serde_json::json!(["dismiss"]),
        "{r:#}"
    );
}

#[test]
fn page_pauses_reloads_and_resumes_the_same_upload() {
    if !webclients_or_skip("page_pauses_reloads_and_resumes_the_same_upload") {
        return;
    }
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let (server, _data) = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("temp dir");
    let (file, sha) = random_file(tmp.path(), "page-50MiB.bin", 50 * MIB, 6);
    let shot = repo_root().join("target/test-artifacts/page-mid-upload.png");
    let _ = std::fs::remove_file(&shot);

    let args = [
        "--pause-reload-at",
        "0.4",
        "--screenshot",
        shot.to_str().expect("utf-8 path"),
    ];
    let r = run_driver(&server.url(), &file, &args);
    eprintln!("page.mjs: {r}");
    assert_verified(&server, &r, &sha, 50 * MIB, None);
    let id = r["id"].as_str().expect("upload id").to_string();
    let (_, status) = native_status(&server, &id);

    // Paused: the card offers Resume (focused) and Cancel, and the server holds what the
    // card says is stored.
    assert_eq!(
        r["paused"]["buttons"],
        serde_json::json!(["resume", "cancel"]),
        "{r:#}"
    );
    let file_name = file.file_name().expect("name").to_string_lossy();
    assert_eq!(
        r["focused_after_pause"],
        format!("Resume the upload of {file_name}"),
        "{r:#}"
    );
    let confirmed = r["paused"]["confirmed"].as_u64().expect("confirmed");
    assert!(
        confirmed as f64 >= 0.4 * (50 * MIB) as f64,
        "paused too early: {r:#}"
    );
    assert_eq!(r["server_received_at_pause"], confirmed, "{r:#}");

    // After the reload the page resumed the same upload and sent only what was missing.
    assert_eq!(r["resumed"], true, "{r:#}");
    assert_eq!(r["resumed_id"], id.as_str(), "{r:#}");
    let chunk_size = status["chunk_size"].as_u64().expect("chunk_size");
    let chunk_count = status["chunk_count"].as_u64().expect("chunk_count");
    let stored_before = confirmed / chunk_size;
    let second = r["put_requests"][1].as_u64().expect("put_requests");
    assert!(
        second >= 1 && second <= chunk_count - stored_before,
        "the second session sent {second} chunk PUTs; {stored_before} of {chunk_count} \
         chunks were already stored: {r:#}"
    );
    let puts = logged_requests(&server, &format!("/v1/uploads/{id}/chunks/"), None);
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
    let (file, _) = random_file(tmp.path(), "page-50MiB.bin", 50 * MIB, 7);

    let r = run_driver(&server.url(), &file, &["--cancel"]);
    eprintln!("page.mjs: {r}");
    assert_eq!(r["state"], "cancelled", "{r:#}");
    assert_eq!(r["status_after_cancel"], 410, "{r:#}");
    let id = r["id"].as_str().expect("upload id");
    let (code, problem) = native_status(&server, id);
    assert_eq!(code, reqwest::StatusCode::GONE, "{problem:#}");
    assert_eq!(problem["status"], 410, "{problem:#}");
}

/// With authentication on, the page shows its token field; a wrong token fails the cards
/// with words that name the field; one is dismissed, and the right token plus Retry finishes
/// the other, whose download link is a signed URL that works without a token.
#[test]
fn page_wrong_token_then_the_right_one() {
    if !webclients_or_skip("page_wrong_token_then_the_right_one") {
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
    let (_, caps) = get_json(&format!("{}/v1", server.url()), None);
    assert_eq!(caps["token_required"], true, "{caps:#}");
    let (file, sha) = random_file(tmp.path(), "with-token.bin", 3 * MIB + 17, 8);
    let (other, _) = random_file(tmp.path(), "dismissed.bin", MIB, 10);

    let r = run_driver(
        &server.url(),
        &file,
        &[
            "--wrong-token",
            "not-the-token",
            "--token",
            "page-token",
            "--more-files",
            other.to_str().expect("utf-8 path"),
        ],
    );
    eprintln!("page.mjs: {r}");
    assert_eq!(r["token_field_visible"], true, "{r:#}");
    // The other file's card failed too; Dismiss took it off the list.
    assert_eq!(
        r["after_dismiss"]["cards"],
        serde_json::json!(["with-token.bin"]),
        "{r:#}"
    );

    // The failure names the field, without header syntax, and offers Retry and Dismiss.
    let error = r["failure"]["error"].as_str().expect("failure message");
    assert!(error.contains("“Access token” field"), "{error}");
    assert!(
        !error.contains("Authorization") && !error.contains("Bearer"),
        "{error}"
    );
    assert_eq!(r["token_invalid_marked"], true, "{r:#}");
    assert_eq!(
        r["failure"]["buttons"],
        serde_json::json!(["retry", "dismiss"]),
        "{r:#}"
    );
    assert_eq!(
        r["failure"]["id"],
        Value::Null,
        "nothing was created: {r:#}"
    );

    assert_verified(&server, &r, &sha, 3 * MIB + 17, Some("page-token"));
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

/// A run damaged between the browser and the server (one byte flipped by the fault proxy)
/// is stored, but the server's check of the page's chunk digests at completion fails and
/// nothing is published; the card says so and offers Retry, which sends the file again
/// (the damaged upload is cancelled) and finishes with the file's SHA-256.
#[test]
fn page_sends_a_damaged_run_again_from_the_card() {
    if !webclients_or_skip("page_sends_a_damaged_run_again_from_the_card") {
        return;
    }
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let (server, _data) = Server::start(&[]);
    let proxy = faulty_proxy(&server.addr, "POST /v1/uploads/*/chunks?", Fault::Corrupt);
    proxy.limit_faults(1);
    let tmp = tempfile::tempdir().expect("temp dir");
    let (file, sha) = random_file(tmp.path(), "damaged.bin", 20 * MIB + 5, 9);

    let r = run_driver(&proxy.url(), &file, &["--expect-failure"]);
    eprintln!("page.mjs: {r}");
    assert_eq!(proxy.stats().corrupted.load(Ordering::Relaxed), 1);
    assert_failed_damaged(&r);
    let id = r["id"].as_str().expect("upload id");
    let damaged = r["failure"]["id"].as_str().expect("the failed upload's id");
    assert_ne!(
        damaged, id,
        "Retry sent the file again as a new upload: {r:#}"
    );
    assert_eq!(
        logged_requests(
            &server,
            &format!("/v1/uploads/{damaged}/complete"),
            Some(422)
        ),
        1,
        "the server refused to publish the damaged upload"
    );
    let (code, _) = native_status(&server, damaged);
    assert_eq!(
        code,
        reqwest::StatusCode::GONE,
        "the damaged upload was cancelled"
    );
    assert_verified(&server, &r, &sha, 20 * MIB + 5, None);
}

/// A chunk PUT damaged on the way (the page goes chunk by chunk here: a proxy in front
/// refuses runs with 413) is refused by the server, whose check of the page's digest
/// fails; the card says so and offers Retry, which resends it on the same upload.
#[test]
fn page_retries_a_damaged_chunk_from_the_card() {
    if !webclients_or_skip("page_retries_a_damaged_chunk_from_the_card") {
        return;
    }
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let (server, _data) = Server::start(&[]);
    let damaging = faulty_proxy(&server.addr, "PUT /v1/uploads/*/chunks/", Fault::Corrupt);
    damaging.limit_faults(1);
    let no_runs = faulty_proxy(
        &damaging.url(),
        "POST /v1/uploads/*/chunks?",
        Fault::TooLarge,
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let (file, sha) = random_file(tmp.path(), "damaged-put.bin", 20 * MIB + 5, 13);

    let r = run_driver(&no_runs.url(), &file, &["--expect-failure"]);
    eprintln!("page.mjs: {r}");
    assert_eq!(damaging.stats().corrupted.load(Ordering::Relaxed), 1);
    assert_failed_damaged(&r);
    let id = r["id"].as_str().expect("upload id");
    assert_eq!(
        r["failure"]["id"], id,
        "Retry went on with the same upload: {r:#}"
    );
    assert!(
        logged_requests(&server, &format!("/v1/uploads/{id}/chunks/"), Some(400)) >= 1,
        "the server refused the damaged chunk"
    );
    assert_verified(&server, &r, &sha, 20 * MIB + 5, None);
}

/// A run that does not get through is picked up from what the server stored, chunk by
/// chunk, each with its digest, whether the connection was cut mid-way (the chunks before
/// the cut are kept) or a proxy refused a body that large (413); the completion still
/// covers every chunk with the page's digests, and the card never fails.
#[test]
fn page_goes_on_chunk_by_chunk_when_a_run_does_not_get_through() {
    if !webclients_or_skip("page_goes_on_chunk_by_chunk_when_a_run_does_not_get_through") {
        return;
    }
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let (server, _data) = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("temp dir");
    for (fault, seed) in [(Fault::Reset, 11), (Fault::TooLarge, 12)] {
        // Every run (Chromium itself may send one again on a new connection).
        let proxy = faulty_proxy(&server.addr, "POST /v1/uploads/*/chunks?", fault);
        let size = 40 * MIB + 3;
        let (file, sha) = random_file(tmp.path(), &format!("{fault:?}.bin"), size, seed);
        let r = run_driver(&proxy.url(), &file, &[]);
        eprintln!("page.mjs ({fault:?}): {r}");
        assert_eq!(
            r["run_requests"][0], 1,
            "one run, not retried as a run: {r:#}"
        );
        let id = r["id"].as_str().expect("upload id");
        let (_, status) = native_status(&server, id);
        let chunk_size = status["chunk_size"].as_u64().expect("chunk_size") as usize;
        let chunks = status["chunk_count"].as_u64().expect("chunk_count");
        let puts = r["put_requests"][0].as_u64().expect("put_requests");
        let kept = logged_requests(&server, &format!("/v1/uploads/{id}/chunks/"), Some(201));
        assert_eq!(kept as u64, puts, "{fault:?}: {r:#}");
        if fault == Fault::Reset {
            // The proxy cut the run after half its body: what came before stayed stored.
            assert!(
                puts >= 1 && puts < chunks,
                "{fault:?}: {puts} PUTs of {chunks}: {r:#}"
            );
        } else {
            assert_eq!(puts, chunks, "{fault:?}: every chunk PUT: {r:#}");
        }
        assert_chunk_digests(&r, &file, chunk_size);
        assert_verified(&server, &r, &sha, size, None);
    }
}

/// Files chosen together are listed in the order chosen, each uploaded and verified.
#[test]
fn page_lists_files_in_the_order_chosen() {
    if !webclients_or_skip("page_lists_files_in_the_order_chosen") {
        return;
    }
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let (server, _data) = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("temp dir");
    let files: Vec<(PathBuf, String)> = ["b-second.bin", "a-first.bin", "c-third.bin", "d.bin"]
        .iter()
        .enumerate()
        .map(|(i, name)| random_file(tmp.path(), name, (i + 1) * MIB + i, 20 + i as u64))
        .collect();
    let more = files[1..]
        .iter()
        .map(|(p, _)| p.to_str().expect("utf-8 path"))
        .collect::<Vec<_>>()
        .join(",");
    let r = run_driver(&server.url(), &files[0].0, &["--more-files", &more]);
    eprintln!("page.mjs: {r}");
    let cards = r["cards"].as_array().expect("cards");
    assert_eq!(cards.len(), files.len(), "{r:#}");
    for (card, (path, sha)) in cards.iter().zip(&files) {
        let name = path.file_name().expect("name").to_string_lossy();
        assert_eq!(card["name"], name.as_ref(), "{r:#}");
        assert_eq!(card["state"], "done", "{r:#}");
        assert_eq!(card["sha256"], sha.as_str(), "{r:#}");
    }
}
