use super::*;

// ---------------------------------------------------------------------------------------
// 8. Store outage.
// ---------------------------------------------------------------------------------------

/// The S3 server goes down mid-upload: a chunk PUT fails with a server error within
/// seconds (not after object_store's default 180 s of retries), `/readyz` is 503,
/// nothing acknowledged is lost, and once the store is back the upload completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_outage_mid_upload() {
    let Some(s3) = s3_with_gateway_or_skip("store_outage_mid_upload").await else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let (file, chunks, id) = created(&api, 2 * CS + 999, 9).await;
    api.put_ok(id, 0, chunks[0].clone()).await;

    s3.go_down();
    let t = Instant::now();
    let resp = api.put(id, 1, chunks[1].clone()).await;
    let put_elapsed = t.elapsed();
    let put_code = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let ctype = resp
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("").to_string());
    let text = resp.text().await.unwrap_or_default();
    assert!(
        put_code == 500 || put_code == 503,
        "chunk PUT during the outage answered {put_code}: {text}"
    );
    assert_eq!(ctype.as_deref(), Some(common::PROBLEM_JSON), "{text}");
    assert!(
        put_elapsed < Duration::from_secs(15),
        "chunk PUT during the outage took {put_elapsed:?}"
    );

    let t = Instant::now();
    let resp = api.status_resp(id).await;
    let status_elapsed = t.elapsed();
    let status_code = resp.status().as_u16();
    assert!(
        status_code == 500 || status_code == 503,
        "status during the outage answered {status_code}"
    );

    let t = Instant::now();
    let resp = api.http.get(api.url("/readyz")).send().await.unwrap();
    let readyz_elapsed = t.elapsed();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    eprintln!(
        "outage: chunk PUT {put_code} in {put_elapsed:?} (Retry-After {retry_after:?}); \
         status {status_code} in {status_elapsed:?}; readyz 503 in {readyz_elapsed:?}"
    );

    s3.come_up();
    wait_until(Duration::from_secs(10), "/readyz to be 200 again", || {
        let api = api.clone();
        async move {
            api.http
                .get(api.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        }
    })
    .await;
    // Chunk 0 (acknowledged) is still there; chunk 1 (refused) is not.
    let now = api.status(id).await;
    assert_eq!(now.state, UploadState::Uploading);
    assert_eq!(now.received_bytes, CS as u64);
    assert_eq!(now.missing, vec![[1, 2]]);
    api.put_ok(id, 1, chunks[1].clone()).await;
    api.put_ok(id, 2, chunks[2].clone()).await;
    api.complete_ok(id, &file).await;
    api.assert_content(id, &file).await;
    assert_eq!(list_keys(&s3, "files/").await, vec![file_key(id)]);
}

/// While the store keeps failing, a circuit breaker answers at once (within a second)
/// with 503 + `Retry-After` (problem+json), `/readyz` is 503, and it closes by itself once
/// the store is back. Requests before it opens are reported (they answer 500 or 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_outage_opens_the_circuit_breaker() {
    let Some(s3) = s3_with_gateway_or_skip("store_outage_opens_the_circuit_breaker").await else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let (file, chunks, id) = created(&api, CS + 1, 10).await;
    api.put_ok(id, 0, chunks[0].clone()).await;
    s3.go_down();
    let down = Instant::now();
    // Until the breaker opens: each request waits out the store client's retries.
    let mut before = Vec::new();
    loop {
        let t = Instant::now();
        let resp = api.status_resp(id).await;
        let code = resp.status().as_u16();
        let retry_after = resp.headers().contains_key("retry-after");
        before.push((code, retry_after, t.elapsed()));
        assert!(
            code == 500 || code == 503,
            "status during the outage: {code}"
        );
        if code == 503 && retry_after {
            break;
        }
        assert!(before.len() <= 10, "the breaker never opened: {before:?}");
    }
    let opened_after = down.elapsed();
    // Open: every request is answered at once.
    for _ in 0..3 {
        let t = Instant::now();
        let resp = api.put(id, 1, chunks[1].clone()).await;
        let elapsed = t.elapsed();
        let retry_after = header(resp.headers(), "retry-after");
        assert!(
            retry_after
                .parse::<u64>()
                .is_ok_and(|s| (1..=60).contains(&s)),
            "Retry-After {retry_after}"
        );
        problem(resp, 503).await;
        assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    }
    let resp = api.http.get(api.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    eprintln!(
        "breaker: answers before it opened (code, Retry-After, time) {before:?}; \
         open after {opened_after:?}"
    );

    s3.come_up();
    let up = Instant::now();
    wait_until(Duration::from_secs(15), "the breaker to close", || {
        let api = api.clone();
        async move {
            api.http
                .get(api.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        }
    })
    .await;
    eprintln!(
        "breaker: closed {:?} after the store came back",
        up.elapsed()
    );
    let now = api.status(id).await;
    assert_eq!(now.received_bytes, CS as u64, "chunk 0 kept");
    api.put_ok(id, 1, chunks[1].clone()).await;
    api.complete_ok(id, &file).await;
    api.assert_content(id, &file).await;
}

/// A complete that cannot succeed answers at once, even with chunks ahead of the hashed
/// prefix kept in memory waiting for their turn: chunks missing → 409, cancelled → 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn complete_answers_at_once_with_chunks_ahead_of_the_prefix() {
    let Some(s3) = s3_or_skip("complete_answers_at_once_with_chunks_ahead_of_the_prefix").await
    else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let (_file, chunks, id) = created(&api, 2 * CS + 10, 11).await;
    api.put_ok(id, 2, chunks[2].clone()).await;

    let t = Instant::now();
    let p = problem(api.complete(id, None).await, 409).await;
    let premature = t.elapsed();
    assert_eq!(p.missing, Some(vec![[0, 1]]));
    assert!(
        premature < Duration::from_secs(2),
        "premature complete took {premature:?}"
    );

    assert_eq!(api.delete(id).await.status(), StatusCode::NO_CONTENT);
    let t = Instant::now();
    problem(api.complete(id, None).await, 410).await;
    let cancelled = t.elapsed();
    assert!(
        cancelled < Duration::from_secs(2),
        "complete after cancel took {cancelled:?}"
    );
}

/// Faults at the store, injected by a proxy between `upload-server` and the S3 server
/// (seeded): UploadPart requests reset mid-body, stalled, answered 503, or completed with
/// the answer dropped (the part is stored but the server never hears it); then the same
/// on every request at a lower rate, CompleteMultipartUpload and the conditional writes
/// included; then CompleteMultipartUpload alone, its answer dropped after the store joined
/// the parts, every time (the server's retries are answered no better; the client's retry
/// of the completion finds the joined object there). A client that retries what it is
/// told to retry finishes every upload with the right SHA-256 and one published object;
/// nothing acknowledged goes missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_faults_are_survived() {
    use tests::proxy::{Fault, Faults, Proxy};
    let Some(s3) = s3_or_skip("store_faults_are_survived").await else {
        return;
    };
    let scenarios = [
        (
            "UploadPart",
            "partNumber=",
            vec![
                Fault::Reset,
                Fault::Stall,
                Fault::Unavailable,
                Fault::DropResponse,
            ],
            0.3,
        ),
        (
            "every request",
            "/",
            vec![Fault::Reset, Fault::Unavailable, Fault::DropResponse],
            0.08,
        ),
        // Only CompleteMultipartUpload is a POST whose query begins with the upload id
        // (UploadPart's begins with its part number; ListParts is a GET, an abort a
        // DELETE, CreateMultipartUpload's query is `?uploads`).
        (
            "CompleteMultipartUpload, stored but its answer dropped",
            "POST *?uploadId=",
            vec![Fault::DropResponse],
            1.0,
        ),
    ];
    for (n, (what, matching, kinds, rate)) in scenarios.into_iter().enumerate() {
        let proxy = Proxy::start(
            s3.endpoint.trim_start_matches("http://"),
            Faults {
                rate,
                matching: matching.into(),
                kinds,
                seed: 900 + n as u64,
                stall_hold: Duration::from_secs(2),
                tamper_complete: false,
            },
        );
        let (server, _dir) = upload_server_via(&s3, &proxy.url(), &[]);
        let api = Api::new(&server);
        for round in 0..3u64 {
            let file = Bytes::from(random_bytes(3 * CS + 4321, 70 + 10 * n as u64 + round));
            let chunks = chunks_of(&file);
            // Creating is retried too: its record write may meet a fault.
            let id = retry(what, "create", || async {
                let resp = api
                    .http
                    .post(api.url("/v1/uploads"))
                    .header("idempotency-key", format!("faults-{n}-{round}"))
                    .json(&json!({"size": file.len(), "chunk_size": CS}))
                    .send()
                    .await
                    .ok()?;
                if !resp.status().is_success() {
                    return None;
                }
                let st: UploadStatus = resp.json().await.ok()?;
                Some(st.id)
            })
            .await;
            for (i, chunk) in chunks.iter().enumerate() {
                retry(what, "chunk", || async {
                    let resp = api
                        .http
                        .put(api.url(&format!("/v1/uploads/{id}/chunks/{i}")))
                        .header("content-digest", digest(chunk).to_header())
                        .body(chunk.clone())
                        .send()
                        .await
                        .ok()?;
                    let code = resp.status();
                    assert!(
                        code.is_success() || code.is_server_error(),
                        "{what}: chunk {i} answered {code}: {}",
                        resp.text().await.unwrap_or_default()
                    );
                    code.is_success().then_some(())
                })
                .await;
                // Acknowledged means stored: the status says so at once.
                let st = retry(what, "status", || async {
                    let resp = api.status_resp(id).await;
                    if !resp.status().is_success() {
                        return None;
                    }
                    resp.json::<UploadStatus>().await.ok()
                })
                .await;
                assert!(
                    !common::ranges::iter_ranges(&st.missing).any(|m| m == i as u64),
                    "{what}: acknowledged chunk {i} is missing: {:?}",
                    st.missing
                );
            }
            let done = retry(what, "complete", || async {
                let resp = api.complete(id, None).await;
                let code = resp.status();
                let st: UploadStatus = match code.as_u16() {
                    200 | 202 => resp.json().await.ok()?,
                    500..=599 => return None,
                    _ => panic!(
                        "{what}: complete answered {code}: {}",
                        resp.text().await.unwrap_or_default()
                    ),
                };
                (st.state == UploadState::Completed).then_some(st)
            })
            .await;
            assert_eq!(done.sha256, Some(digest(&file)), "{what}");
            let body = retry(what, "download", || async {
                let resp = api.content(id, None).await;
                if !resp.status().is_success() {
                    return None;
                }
                resp.bytes().await.ok()
            })
            .await;
            assert!(body == file, "{what}: downloaded bytes differ");
            assert!(
                list_keys(&s3, "files/").await.contains(&file_key(id)),
                "{what}: no published object"
            );
        }
        let faults = proxy.stats().faults();
        eprintln!("store faults ({what}): {faults} injected");
        assert!(faults >= 3, "{what}: only {faults} faults were injected");
        tests::tally(
            &format!("s3-store-faults-{n}"),
            "fault",
            &format!("S3 store ({what})"),
            faults,
        );
    }
}

/// Calls `attempt` until it gives `Some` (at most 60 s, 200 ms apart): a client retrying
/// 5xx answers and broken connections.
async fn retry<T, F, Fut>(what: &str, step: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {step} kept failing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The store down for 10 s in the middle of a CLI upload: meanwhile the server
/// refuses requests with a 5xx instead of hanging, the CLI keeps retrying (honouring
/// `Retry-After`), and once the store is back the same upload completes with the right
/// SHA-256 and exactly one published object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_outlasts_the_store_down_for_ten_seconds() {
    use std::io::BufRead;
    let Some(s3) = s3_with_gateway_or_skip("the_cli_outlasts_the_store_down_for_ten_seconds").await
    else {
        return;
    };
    let (server, dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let file = random_bytes(8 * CS + 123, 77);
    let path = dir.path().join("file.bin");
    std::fs::write(&path, &file).unwrap();
    let mut cmd = std::process::Command::new(tests::bin_path("uploader"));
    for (k, _) in std::env::vars() {
        if k.starts_with("UPLOADER_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .env("UPLOADER_STATE_DIR", dir.path().join("cli-state"))
        .args(["--server", &server.url(), "--json", "upload", "-j", "2"])
        .args([
            "--chunk-size",
            "5MiB",
            "--retries",
            "100",
            "--retry-max-delay",
            "1s",
        ])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn uploader");
    let stdout = child.stdout.take().unwrap();
    let (tx, events) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    // Down once the first chunk is acknowledged.
    let mut id = None;
    let mut seen = Vec::new();
    loop {
        let v = events
            .recv_timeout(Duration::from_secs(60))
            .expect("the CLI reports progress");
        if let Some(i) = v["id"].as_str() {
            id = Some(i.parse::<UploadId>().unwrap());
        }
        let progressed = v["event"] == "progress" && v["bytes"].as_u64().unwrap_or(0) > 0;
        seen.push(v);
        if progressed {
            break;
        }
    }
    let id = id.expect("the CLI named its upload");
    s3.go_down();
    let down = Instant::now();
    let during = api.status_resp(id).await.status();
    assert!(
        during.is_server_error(),
        "status with the store down answered {during}"
    );
    // The outage lasts 10 s: this sleep is the fault's duration, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    s3.come_up();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    // The reader ends at the CLI's end of output.
    seen.extend(events.iter());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the CLI failed ({}): {stderr}\n{:?}",
        out.status,
        seen.iter().rev().take(5).collect::<Vec<_>>()
    );
    let done = seen
        .iter()
        .find(|v| v["event"] == "completed")
        .unwrap_or_else(|| panic!("no completed event: {seen:?}"));
    assert_eq!(done["sha256"], sha256_hex(&file).as_str());
    let retries = seen.iter().filter(|v| v["event"] == "retry").count();
    assert!(retries > 0, "the outage caused no retry");
    eprintln!("store down 10 s: the CLI retried {retries} times and finished");
    assert_eq!(list_keys(&s3, "files/").await, vec![file_key(id)]);
    api.assert_content(id, &file).await;
    tests::tally(
        "s3-store-down",
        "fault",
        "S3 store down for 10 s during a CLI upload (requests it failed and the CLI retried)",
        retries as u64,
    );
}
