//! Uppy (@uppy/core + @uppy/tus) in headless Chromium, and the driver harness itself.

use super::*;

/// The Uppy result's `url` and its event list, checked.
fn assert_uppy_ok(r: &DriverResult) -> String {
    r.assert_ok();
    let events: Vec<&str> = r
        .get("events")
        .as_array()
        .unwrap_or_else(|| panic!("events: {r}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        events.contains(&"upload-success") && events.contains(&"complete"),
        "Uppy events {events:?}: {r}"
    );
    assert_eq!(r.str("url"), r.str("uploadURL"), "{r}");
    r.str("url").to_string()
}

#[tokio::test]
async fn uppy_in_headless_chromium_uploads_cross_origin() {
    if !webclients::available_or_skip("uppy_in_headless_chromium_uploads_cross_origin") {
        return;
    }
    let (server, _data) = start_server();
    let dir = tempfile::tempdir().unwrap();
    let len = 12 * MIB + 321;
    let (bytes, file) = test_file(dir.path(), "uppy-upload.bin", len, 6);
    let screenshot = webclients::artifacts_dir()
        .join("tus_clients_uppy.png")
        .display()
        .to_string();
    let ep = endpoint(&server);
    let r = {
        let screenshot = screenshot.clone();
        blocking(move || {
            webclients::uppy(&[
                "--endpoint",
                &ep,
                "--file",
                &file,
                "--screenshot",
                &screenshot,
            ])
        })
        .await
    };
    let url = assert_uppy_ok(&r);
    assert_eq!(r.u64("bytes"), len as u64, "{r}");
    // One POST and one PATCH: the browser's preflights are not counted by the driver.
    assert_eq!(requests(&r, "POST"), 1, "{r}");
    assert!(requests(&r, "PATCH") >= 1, "{r}");
    let status = assert_completed_natively(&server, &url, &bytes, "uppy-upload.bin").await;
    // Uppy adds its own `name` and `type` next to tus-js-client's `filename`/`filetype`.
    assert_eq!(status["metadata"]["name"], "uppy-upload.bin", "{status}");
    assert!(
        Path::new(&screenshot).exists(),
        "no screenshot at {screenshot}"
    );
}

/// A free loopback port for the Uppy page, so that the server can be started with exactly
/// that origin. (The port is free when chosen; another process could take it before the
/// page server binds it, which would fail this test with EADDRINUSE in the driver's JSON.)
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The server grants CORS to `origin` (echoed in a preflight's answer) and to no other.
async fn assert_cors_only_for(server: &Server, origin: &str) {
    let http = client();
    let preflight = |from: &str| {
        http.request(reqwest::Method::OPTIONS, endpoint(server))
            .header("Origin", from)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "tus-resumable,upload-length,upload-metadata",
            )
            .send()
    };
    let ok = preflight(origin).await.expect("preflight");
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some(origin),
        "preflight from {origin}: {:?}",
        ok.headers()
    );
    let other = preflight("http://127.0.0.1:1").await.expect("preflight");
    assert!(
        other.headers().get("access-control-allow-origin").is_none(),
        "a preflight from another origin was granted: {:?}",
        other.headers()
    );
}

#[tokio::test]
async fn uppy_with_exact_cors_origin_resumes_via_head_after_a_new_uppy_instance() {
    if !webclients::available_or_skip(
        "uppy_with_exact_cors_origin_resumes_via_head_after_a_new_uppy_instance",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let len = 5 * MIB + 99;
    let (bytes, file) = test_file(dir.path(), "uppy-twice.bin", len, 7);
    // The page's port is chosen before the server starts (its origin is a server flag); if
    // another process takes it in between, the page server cannot listen: start over.
    let mut attempt = 0;
    let (server, _data, origin, r) = loop {
        attempt += 1;
        let port = free_port();
        let origin = format!("http://127.0.0.1:{port}");
        let (server, data) = Server::start(&["--cors-origin", &origin]);
        assert_cors_only_for(&server, &origin).await;
        let (ep, file) = (endpoint(&server), file.clone());
        let r = blocking(move || {
            webclients::uppy(&[
                "--endpoint",
                &ep,
                "--file",
                &file,
                "--page-port",
                &port.to_string(),
                "--upload-twice",
            ])
        })
        .await;
        let in_use = r.json["error"]
            .as_str()
            .is_some_and(|e| e.contains("EADDRINUSE"));
        if !in_use || attempt == 3 {
            break (server, data, origin, r);
        }
        eprintln!("page port {port} was taken meanwhile; trying another: {r}");
    };
    let url = assert_uppy_ok(&r);
    assert_eq!(r.str("page"), format!("{origin}/"), "{r}");
    // A new Uppy instance on the same page found the URL in localStorage, HEADed it (which
    // needs Upload-Length exposed) and finished without a POST or a PATCH.
    let second = r.get("second");
    assert_eq!(second["ok"], true, "{r}");
    assert_eq!(second["url"], url.as_str(), "{r}");
    assert_eq!(second["requests"], serde_json::json!({"HEAD": 1}), "{r}");
    assert_completed_natively(&server, &url, &bytes, "uppy-twice.bin").await;
}

/// The harness itself: a driver that overruns its timeout is killed together with what it
/// started (as Chromium and the page server would be), and the test gets an error.
#[test]
fn an_overrunning_driver_is_killed_with_its_whole_process_group() {
    let started = std::time::Instant::now();
    // The shell starts a grandchild that would outlive it, prints its PID and hangs.
    let err = webclients::run_with_timeout(
        std::process::Command::new("sh").args(["-c", "sleep 60 & echo $!; wait"]),
        Duration::from_millis(500),
    )
    .expect_err("the command must time out");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.contains("did not finish"), "{err}");
    let pid: u32 = err
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no grandchild PID in: {err}"));
    // The grandchild was SIGKILLed; once its new parent has reaped it, it is gone. Poll
    // (bounded) for that, accepting a zombie in the meantime.
    let gone = |pid: u32| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s == "Z" || s == "X"),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gone(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "grandchild {pid} still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
