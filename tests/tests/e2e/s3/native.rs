use super::*;

// ---------------------------------------------------------------------------------------
// 1. Native round trip.
// ---------------------------------------------------------------------------------------

/// Five 5 MiB chunks and a short last one, sent in parallel out of order with
/// `Content-Digest`; retries, conflicts, a premature complete, completion, download with
/// ranges; the chunks ahead of a missing one are spilled (their turn in the whole-file hash
/// does not come); the bucket then holds `files/{id}` and no claim, spill nor multipart
/// upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trip_with_parallel_out_of_order_chunks() {
    let Some(s3) = s3_or_skip("round_trip_with_parallel_out_of_order_chunks").await else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);

    let caps: Value = api
        .http
        .get(api.url("/v1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(caps["storage"], "s3");
    assert_eq!(caps["chunk_size"]["min"], CS as u64);
    assert_eq!(caps["max_chunks"], 10_000);

    let file = Bytes::from(random_bytes(5 * CS + 123_457, 1));
    let chunks = chunks_of(&file);
    assert_eq!(chunks.len(), 6);
    let st = api
        .create(json!({"size": file.len(), "chunk_size": CS, "filename": "round.bin"}))
        .await;
    let id = st.id;
    assert_eq!(st.chunk_count, 6);
    assert_eq!(
        multipart_uploads(&s3, &file_key(id)).await,
        vec![file_key(id)]
    );
    assert_eq!(list_keys(&s3, "files/").await, Vec::<String>::new());
    assert!(list_keys(&s3, &format!("uploads/{id}/record.json"))
        .await
        .contains(&format!("uploads/{id}/record.json")));

    // Chunk 0 only: a premature complete lists what is missing.
    api.put_ok(id, 0, chunks[0].clone()).await;
    let p = problem(api.complete(id, None).await, 409).await;
    assert_eq!(p.missing, Some(vec![[1, 5]]));
    let now = api.status(id).await;
    assert_eq!(now.state, UploadState::Uploading);
    assert_eq!(now.missing, vec![[1, 5]]);
    assert_eq!(now.received_bytes, CS as u64);

    // 5, 4, 2 in parallel; then 1 and 3 are the missing ones.
    let mut tasks = tokio::task::JoinSet::new();
    for i in [5usize, 4, 2] {
        let api = api.clone();
        let c = chunks[i].clone();
        tasks.spawn(async move { api.put_ok(id, i as u64, c).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("chunk task");
    }
    let now = api.status(id).await;
    assert_eq!(now.missing, vec![[1, 1], [3, 3]]);
    assert_eq!(now.received_bytes, (3 * CS + 123_457) as u64);
    // One claim per stored chunk; 2, 4 and 5 waited in vain for the chunk before them to
    // be hashed, so their bytes are spilled.
    assert_eq!(claim_keys(&s3, id).await.len(), 4);
    assert_eq!(spill_keys(&s3, id).await.len(), 3);

    let mut tasks = tokio::task::JoinSet::new();
    for i in [3usize, 1] {
        let api = api.clone();
        let c = chunks[i].clone();
        tasks.spawn(async move { api.put_ok(id, i as u64, c).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("chunk task");
    }

    // A retry with the same bytes: 200 and the same receipt. Other bytes: 409.
    let resp = api.put(id, 5, chunks[5].clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let receipt: ChunkReceipt = resp.json().await.unwrap();
    assert_eq!(receipt.sha256, digest(&chunks[5]));
    let mut other = chunks[5].to_vec();
    other[7] ^= 0xff;
    problem(api.put(id, 5, Bytes::from(other)).await, 409).await;
    assert_eq!(claim_keys(&s3, id).await.len(), 6);
    // Nothing is published before verification.
    assert_eq!(list_keys(&s3, "files/").await, Vec::<String>::new());

    let st = api.complete_ok(id, &file).await;
    assert_eq!(st.missing, Vec::<[u64; 2]>::new());
    api.assert_content(id, &file).await;

    // Ranges.
    let resp = api.content(id, Some("bytes=5242870-5242889")).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(resp.headers(), "content-range"),
        format!("bytes 5242870-5242889/{}", file.len())
    );
    assert_eq!(
        resp.bytes().await.unwrap(),
        file.slice(5_242_870..5_242_890)
    );
    let resp = api.content(id, Some("bytes=-100")).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap(), file.slice(file.len() - 100..));

    // The bucket: the verified file at files/{id}, no claim or spill, no multipart upload.
    let (code, published) = get_object(&s3, &file_key(id)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(published.len(), file.len());
    assert_eq!(sha256_hex(&published), sha256_hex(&file));
    assert_eq!(list_keys(&s3, "files/").await, vec![file_key(id)]);
    assert_eq!(
        list_keys(&s3, &chunks_prefix(id)).await,
        Vec::<String>::new(),
        "claims or spills left"
    );
    assert_eq!(multipart_uploads(&s3, "").await, Vec::<String>::new());

    // Completing again answers the same.
    api.complete_ok(id, &file).await;
}

// ---------------------------------------------------------------------------------------
// 2. Failed verification.
// ---------------------------------------------------------------------------------------

/// A wrong SHA-256 at completion: 422, failed, nothing at `files/{id}`, the multipart
/// upload aborted and the chunks' claims removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_sha256_publishes_nothing_and_aborts_the_multipart_upload() {
    let Some(s3) =
        s3_or_skip("wrong_sha256_publishes_nothing_and_aborts_the_multipart_upload").await
    else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let file = Bytes::from(random_bytes(CS + 1000, 2));
    let st = api
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await;
    let id = st.id;
    for (i, c) in chunks_of(&file).into_iter().enumerate() {
        api.put_ok(id, i as u64, c).await;
    }
    let wrong = sha256_hex(b"something else");
    let p = problem(api.complete(id, Some(json!({"sha256": wrong}))).await, 422).await;
    assert_eq!(p.expected_sha256.unwrap().to_hex(), wrong);
    assert_eq!(p.actual_sha256.unwrap(), digest(&file));
    let failed = api.status(id).await;
    assert_eq!(failed.state, UploadState::Failed);
    problem(api.content(id, None).await, 409).await;
    problem(api.complete(id, None).await, 422).await;

    let (code, _) = get_object(&s3, &file_key(id)).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "a failed upload was published");
    assert_eq!(list_keys(&s3, "files/").await, Vec::<String>::new());
    assert_eq!(
        multipart_uploads(&s3, &file_key(id)).await,
        Vec::<String>::new(),
        "multipart upload not aborted"
    );
    assert_eq!(
        list_keys(&s3, &chunks_prefix(id)).await,
        Vec::<String>::new()
    );
    assert_eq!(
        list_keys(&s3, &format!("uploads/{id}/")).await,
        vec![format!("uploads/{id}/record.json")],
        "only the failed record stays"
    );
}

// ---------------------------------------------------------------------------------------
// 3. Cancel.
// ---------------------------------------------------------------------------------------

/// Cancel: 204, then 410 for everything; the multipart upload is aborted and no chunk
/// claim is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_aborts_the_multipart_upload() {
    let Some(s3) = s3_or_skip("cancel_aborts_the_multipart_upload").await else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let (_file, chunks, id) = created(&api, 2 * CS + 10, 3).await;
    api.put_ok(id, 0, chunks[0].clone()).await;
    api.put_ok(id, 2, chunks[2].clone()).await;
    assert_eq!(claim_keys(&s3, id).await.len(), 2);
    assert_eq!(
        multipart_uploads(&s3, &file_key(id)).await,
        vec![file_key(id)]
    );

    let resp = api.delete(id).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    problem(api.status_resp(id).await, 410).await;
    problem(api.delete(id).await, 410).await;
    problem(api.put(id, 1, chunks[1].clone()).await, 410).await;
    // (complete → 410: see `complete_answers_at_once_with_chunks_ahead_of_the_prefix`.)

    assert_eq!(
        multipart_uploads(&s3, &file_key(id)).await,
        Vec::<String>::new(),
        "multipart upload not aborted"
    );
    assert_eq!(
        list_keys(&s3, &chunks_prefix(id)).await,
        Vec::<String>::new()
    );
    assert_eq!(
        list_keys(&s3, &format!("uploads/{id}/")).await,
        vec![format!("uploads/{id}/record.json")],
        "only the tombstone record stays"
    );
    assert_eq!(list_keys(&s3, "files/").await, Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------
// 4. Three servers on one bucket.
// ---------------------------------------------------------------------------------------

/// Three `upload-server` processes on one bucket: chunks round-robin in parallel, the
/// same status from each, `kill -9` of one while it streams a chunk to the store, the rest
/// through the other two, a fresh third instance, then three simultaneous completes: one
/// completion, the right SHA-256, one object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_share_one_bucket() {
    let Some(s3) = s3_or_skip("three_servers_share_one_bucket").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let (mut c, _dc) = upload_server(&s3, &[]);
    let file = Bytes::from(random_bytes(4 * CS + 777_777, 4));
    let chunks = chunks_of(&file);
    assert_eq!(chunks.len(), 5);

    let apis = [Api::new(&a), Api::new(&b), Api::new(&c)];
    let st = apis[1]
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await;
    let id = st.id;

    // Chunks 2, 1, 0 round-robin over the three, in parallel.
    let mut tasks = tokio::task::JoinSet::new();
    for (n, i) in [2usize, 1, 0].into_iter().enumerate() {
        let api = apis[n % 3].clone();
        let chunk = chunks[i].clone();
        tasks.spawn(async move { api.put_ok(id, i as u64, chunk).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("chunk task");
    }
    let seen = [
        apis[0].status(id).await,
        apis[1].status(id).await,
        apis[2].status(id).await,
    ];
    assert_eq!(seen[0], seen[1], "status from A and B differ");
    assert_eq!(seen[0], seen[2], "status from A and C differ");
    assert_eq!(seen[0].received_bytes, 3 * CS as u64);
    assert_eq!(seen[0].missing, vec![[3, 4]]);

    // C dies while it streams chunk 3 to the store: the chunk is not acknowledged.
    let written_before = bytes_written(c.pid());
    let mut conn = tokio::net::TcpStream::connect(&c.addr).await.unwrap();
    let head = format!(
        "PUT /v1/uploads/{id}/chunks/3 HTTP/1.1\r\nHost: {}\r\nContent-Length: {CS}\r\n\r\n",
        c.addr
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&chunks[3][..3 * MIB]).await.unwrap();
    conn.flush().await.unwrap();
    let pid = c.pid();
    wait_until(
        Duration::from_secs(10),
        "C to stream 2 MiB of chunk 3 to the store",
        || async { bytes_written(pid) >= written_before + 2 * MIB as u64 },
    )
    .await;
    c.kill9();
    drop(conn);
    let after_kill = apis[0].status(id).await;
    assert_eq!(after_kill.missing, vec![[3, 4]], "a chunk C never finished");
    assert_eq!(after_kill.received_bytes, 3 * CS as u64);

    // The rest through A and B, in parallel.
    let (r3, r4) = tokio::join!(
        apis[0].put_ok(id, 3, chunks[3].clone()),
        apis[1].put_ok(id, 4, chunks[4].clone()),
    );
    let ((), ()) = (r3, r4);

    // A fresh third instance; the status is the same from all three.
    let (c2, _dc2) = upload_server(&s3, &[]);
    let apis = [apis[0].clone(), apis[1].clone(), Api::new(&c2)];
    let seen = [
        apis[0].status(id).await,
        apis[1].status(id).await,
        apis[2].status(id).await,
    ];
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
    assert_eq!(seen[0].received_bytes, file.len() as u64);
    assert!(seen[0].missing.is_empty(), "{:?}", seen[0].missing);

    // Three simultaneous completes.
    let answers = futures_util::future::join_all(apis.iter().map(|api| async move {
        let resp = api.complete(id, None).await;
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (code, text)
    }))
    .await;
    for (code, text) in &answers {
        assert!(
            *code == 200 || *code == 202,
            "complete answered {code}: {text}"
        );
    }
    eprintln!(
        "three completes answered {:?}",
        answers.iter().map(|(c, _)| *c).collect::<Vec<_>>()
    );
    assert!(
        answers.iter().any(|(code, _)| *code == 200),
        "no complete answered 200: {answers:?}"
    );
    for api in &apis {
        wait_until(
            Duration::from_secs(20),
            "the upload to be completed",
            || {
                let api = api.clone();
                async move { api.status(id).await.state == UploadState::Completed }
            },
        )
        .await;
        let st = api.status(id).await;
        assert_eq!(st.sha256, Some(digest(&file)));
    }
    let servers = [&a, &b, &c2];
    let mut lines = Vec::new();
    for s in servers {
        lines.extend(completed_lines(&synced_logs(s).await, id));
    }
    lines.extend(completed_lines(&c.logs(), id));
    assert_eq!(lines.len(), 1, "completions: {lines:#?}");

    assert_eq!(list_keys(&s3, "files/").await, vec![file_key(id)]);
    let (code, published) = get_object(&s3, &file_key(id)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(sha256_hex(&published), sha256_hex(&file));
    assert_eq!(
        multipart_uploads(&s3, &file_key(id)).await,
        Vec::<String>::new()
    );
    apis[2].assert_content(id, &file).await;
}

/// Two servers race on one chunk with different bytes: one outcome. Exactly one request
/// is acknowledged (201), the other gets 409, the status names the winner's bytes, and
/// completion publishes the winner's bytes. Both writes send the chunk's part: when the
/// loser's part lands last it replaces the winner's, and completion answers 409 with the
/// chunk missing; the winner's bytes, sent again (here through the loser's server, which
/// saw the claim), are then taken, and completion publishes them. Several rounds (one-chunk
/// uploads of 1000 bytes), anomalies reported together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_race_on_one_chunk_with_different_bytes() {
    let Some(s3) = s3_or_skip("two_servers_race_on_one_chunk_with_different_bytes").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let apis = [Api::new(&a), Api::new(&b)];
    const ROUNDS: u64 = 12;
    let mut anomalies = Vec::new();
    let mut codes_seen = std::collections::BTreeMap::new();
    let mut resent = 0;
    for round in 0..ROUNDS {
        let x = Bytes::from(random_bytes(1000, 100 + 2 * round));
        let y = Bytes::from(random_bytes(1000, 101 + 2 * round));
        let st = apis[0].create(json!({"size": 1000})).await;
        let id = st.id;
        // A racer told 503 ("being written elsewhere") retries, as clients do, until it
        // gets a final answer.
        let put_final = |api: &Api, bytes: Bytes| {
            let api = api.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(40);
                loop {
                    let code = api.put(id, 0, bytes.clone()).await.status().as_u16();
                    if code != 503 || Instant::now() > deadline {
                        return code;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let codes = tokio::join!(
            put_final(&apis[0], x.clone()),
            put_final(&apis[1], y.clone())
        );
        *codes_seen.entry(codes).or_insert(0) += 1;
        let winner = match codes {
            (201, 409) => Some(&x),
            (409, 201) => Some(&y),
            _ => None,
        };
        let Some(winner) = winner else {
            anomalies.push(format!("round {round}: PUT answers {codes:?} (A, B)"));
            continue;
        };
        let st = apis[1].status(id).await;
        if st.received_bytes != 1000 || !st.missing.is_empty() {
            anomalies.push(format!("round {round}: status {st:?}"));
            continue;
        }
        let completer = &apis[(round % 2) as usize];
        let resp = completer.complete(id, None).await;
        let mut code = resp.status().as_u16();
        let mut text = resp.text().await.unwrap_or_default();
        if code == 409 {
            // The loser's part replaced the winner's: the chunk is asked for again.
            let p: Problem = serde_json::from_str(&text).expect("problem JSON");
            if p.missing != Some(vec![[0, 0]]) {
                anomalies.push(format!("round {round}: complete answered 409 {text}"));
                continue;
            }
            let loser = if winner == &x { &apis[1] } else { &apis[0] };
            // Asked for again, the acknowledged bytes are stored anew.
            let again = loser.put(id, 0, winner.clone()).await.status().as_u16();
            if again != 201 {
                anomalies.push(format!(
                    "round {round}: the winner's bytes sent again answered {again}"
                ));
                continue;
            }
            resent += 1;
            let resp = completer.complete(id, None).await;
            code = resp.status().as_u16();
            text = resp.text().await.unwrap_or_default();
        }
        if code != 200 {
            let again = apis[0].complete(id, None).await.status().as_u16();
            let later = apis[0].status(id).await;
            let cause = [&a, &b]
                .iter()
                .flat_map(|s| {
                    s.logs()
                        .lines()
                        .filter(|l| l.contains(&id.to_string()) && l.contains("refused"))
                        .map(|l| {
                            let at = l.find("Server returned").unwrap_or(0);
                            l[at..].chars().take(60).collect::<String>()
                        })
                        .collect::<Vec<_>>()
                })
                .next()
                .unwrap_or_default();
            anomalies.push(format!(
                "round {round}: PUT answers {codes:?}, complete answered {code}, then {again}; \
                 state now {:?}; log: {cause}",
                later.state
            ));
            continue;
        }
        let done: UploadStatus = serde_json::from_str(&text).expect("status JSON");
        if done.sha256 != Some(digest(winner)) {
            anomalies.push(format!(
                "round {round}: PUT answers {codes:?}, completed with {:?}, the acknowledged \
                 bytes are {}",
                done.sha256,
                digest(winner)
            ));
            continue;
        }
        let body = apis[0].content(id, None).await.bytes().await.unwrap();
        if body != *winner {
            anomalies.push(format!(
                "round {round}: content is not the acknowledged bytes"
            ));
        }
    }
    eprintln!(
        "chunk race: (A, B) answers over {ROUNDS} rounds: {codes_seen:?}; the winner's \
         bytes were sent again in {resent} rounds"
    );
    assert!(
        anomalies.is_empty(),
        "{} of {ROUNDS} rounds went wrong:\n{}",
        anomalies.len(),
        anomalies.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 5. Expiry.
// ---------------------------------------------------------------------------------------

/// `--upload-ttl 2s`: an idle upload becomes 410, its multipart upload is aborted and its
/// chunks' claims are removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_aborts_the_multipart_upload() {
    let Some(s3) = s3_or_skip("expiry_aborts_the_multipart_upload").await else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &["--upload-ttl", "2s"]);
    let api = Api::new(&server);
    let (_file, chunks, id) = created(&api, CS + 5, 5).await;
    api.put_ok(id, 0, chunks[0].clone()).await;
    assert_eq!(claim_keys(&s3, id).await.len(), 1);
    assert_eq!(
        multipart_uploads(&s3, &file_key(id)).await,
        vec![file_key(id)]
    );
    let started = Instant::now();

    wait_until(
        Duration::from_secs(20),
        "the upload to expire (410)",
        || {
            let api = api.clone();
            async move { api.status_resp(id).await.status() == StatusCode::GONE }
        },
    )
    .await;
    let expired_after = started.elapsed();
    assert!(
        expired_after >= Duration::from_secs(1),
        "expired after only {expired_after:?}"
    );
    // The record turns into a tombstone first, then the bytes go.
    wait_until(
        Duration::from_secs(10),
        "the multipart upload to be aborted",
        || async { multipart_uploads(&s3, &file_key(id)).await.is_empty() },
    )
    .await;
    // The upload's objects go one after another: wait until only the tombstone is left.
    wait_until(
        Duration::from_secs(10),
        "every object but the tombstone record to go",
        || async { list_keys(&s3, &format!("uploads/{id}/")).await.len() == 1 },
    )
    .await;
    assert_eq!(
        list_keys(&s3, &format!("uploads/{id}/")).await,
        vec![format!("uploads/{id}/record.json")],
        "only the tombstone record stays"
    );
    problem(api.put(id, 1, chunks[1].clone()).await, 410).await;
    // Logged once the sweep's discard returned, which may be after the last object went.
    wait_until(Duration::from_secs(10), "the expiry log line", || async {
        synced_logs(&server)
            .await
            .lines()
            .any(|l| l.contains("upload expired") && l.contains(&id.to_string()))
    })
    .await;
    eprintln!("expiry: 410 after {expired_after:?} (ttl 2s)");
}

// ---------------------------------------------------------------------------------------
// 6. Bytes read back at completion.
// ---------------------------------------------------------------------------------------

/// Bytes read back from the store at completion (the `read_back_at_completion` field of
/// the "upload completed" log line): none for an in-order upload on one connection, none
/// in reverse order either (chunks ahead of the hashed prefix keep their bytes until their
/// turn), and, when the process keeping them dies (`kill -9`), exactly the chunks it kept,
/// with the right SHA-256 all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_back_at_completion() {
    let Some(s3) = s3_or_skip("read_back_at_completion").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let api = Api::new(&a);
    let size = 2 * CS + 4321;
    let mut figures = Vec::new();

    // In order, one connection.
    let (file, chunks, id) = created(&api, size, 6).await;
    put_in_order(&api, id, &chunks, &[0, 1, 2]).await;
    let n = complete_and_read_back(&a, id, &file).await;
    figures.push(("in order", n));
    assert_eq!(n, 0, "in order");

    // Reverse order, one connection.
    let (file, chunks, id) = created(&api, size, 7).await;
    put_in_order(&api, id, &chunks, &[2, 1, 0]).await;
    let n = complete_and_read_back(&a, id, &file).await;
    figures.push(("reverse", n));
    assert!(n <= (size - CS) as u64, "reverse: {n}");

    // Chunks 2 and 1 through B, which dies keeping them; chunk 0 through A.
    let (mut b, _db) = upload_server(&s3, &[]);
    let (file, chunks, id) = created(&api, size, 8).await;
    put_in_order(&Api::new(&b), id, &chunks, &[2, 1]).await;
    b.kill9();
    put_in_order(&api, id, &chunks, &[0]).await;
    let n = complete_and_read_back(&a, id, &file).await;
    figures.push(("reverse, keeper killed", n));
    assert_eq!(n, (size - CS) as u64, "chunks 1 and 2 are read back");

    eprintln!("read back at completion ({size} bytes, {CS} B chunks): {figures:?}");
}

// ---------------------------------------------------------------------------------------
// 7. Idempotency-Key.
// ---------------------------------------------------------------------------------------

async fn create_with_key(api: &Api, key: &str, body: &Value) -> (u16, String) {
    let resp = api
        .http
        .post(api.url("/v1/uploads"))
        .header(CONTENT_TYPE, "application/json")
        .header("idempotency-key", key)
        .body(body.to_string())
        .send()
        .await
        .expect("POST /v1/uploads");
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap_or_default())
}

fn id_of(text: &str) -> UploadId {
    serde_json::from_str::<UploadStatus>(text)
        .unwrap_or_else(|e| panic!("{e}: {text}"))
        .id
}

/// Same key and body: 200 with the same id (from either of two servers); another body:
/// 422, nothing created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_on_s3() {
    let Some(s3) = s3_or_skip("idempotency_key_on_s3").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));
    let body = json!({"size": 1000, "filename": "a.txt"});

    let (code, text) = create_with_key(&api_a, "key-1", &body).await;
    assert_eq!(code, 201, "{text}");
    let first = id_of(&text);
    for api in [&api_a, &api_b] {
        let (code, text) = create_with_key(api, "key-1", &body).await;
        assert_eq!(code, 200, "{text}");
        assert_eq!(id_of(&text), first);
    }
    let other = json!({"size": 1001, "filename": "a.txt"});
    let resp = api_b
        .http
        .post(api_b.url("/v1/uploads"))
        .header(CONTENT_TYPE, "application/json")
        .header("idempotency-key", "key-1")
        .body(other.to_string())
        .send()
        .await
        .unwrap();
    problem(resp, 422).await;

    // One upload, one multipart upload, one claim in the bucket.
    assert_eq!(
        list_keys(&s3, "uploads/").await,
        vec![format!("uploads/{first}/record.json")]
    );
    assert_eq!(
        multipart_uploads(&s3, "files/").await,
        vec![file_key(first)]
    );
    let claims = list_keys(&s3, "idempotency/").await;
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert!(claims[0].ends_with(".json"), "{claims:?}");
    assert!(
        !claims[0].contains("key-1"),
        "the key itself is not in the name"
    );

    // The upload behind the key works.
    let file = random_bytes(1000, 8);
    api_b.put_ok(first, 0, Bytes::from(file.clone())).await;
    api_a.complete_ok(first, &file).await;
}

/// Concurrent creates under one new key, spread over two servers: one upload, every
/// answer 200/201 with its id, and one multipart upload in the bucket. A race shows only
/// sometimes, so several rounds run and the anomalies of all are reported together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_idempotent_creates_on_two_servers() {
    let Some(s3) = s3_or_skip("concurrent_idempotent_creates_on_two_servers").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let apis = [Api::new(&a), Api::new(&b)];
    let body = json!({"size": 1000, "filename": "a.txt"});
    const ROUNDS: usize = 20;
    let mut anomalies = Vec::new();
    for round in 0..ROUNDS {
        let key = format!("race-{round}");
        let answers = futures_util::future::join_all(
            (0..8).map(|n| create_with_key(&apis[n % 2], &key, &body)),
        )
        .await;
        let created = answers.iter().filter(|(c, _)| *c == 201).count();
        let ids: Vec<UploadId> = answers
            .iter()
            .filter(|(c, _)| *c == 200 || *c == 201)
            .map(|(_, t)| id_of(t))
            .collect();
        assert!(!ids.is_empty(), "round {round}: {answers:#?}");
        let others: Vec<&(u16, String)> = answers
            .iter()
            .filter(|(c, _)| *c != 200 && *c != 201)
            .collect();
        let multiparts = multipart_uploads(&s3, &file_key(ids[0])).await;
        if created != 1
            || !others.is_empty()
            || ids.iter().any(|i| *i != ids[0])
            || multiparts.len() != 1
        {
            anomalies.push(format!(
                "round {round}: {created} × 201, other answers {others:?}, ids {:?}, \
                 {} multipart uploads for {}",
                ids.iter().collect::<std::collections::BTreeSet<_>>(),
                multiparts.len(),
                ids[0]
            ));
        }
    }
    assert!(
        anomalies.is_empty(),
        "{} of {ROUNDS} rounds went wrong:\n{}",
        anomalies.len(),
        anomalies.join("\n")
    );
    assert_eq!(list_keys(&s3, "idempotency/").await.len(), ROUNDS);
    assert_eq!(multipart_uploads(&s3, "files/").await.len(), ROUNDS);
}
