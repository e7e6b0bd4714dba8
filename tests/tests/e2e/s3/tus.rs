use super::*;

// ---------------------------------------------------------------------------------------
// tus (in-order appends) on S3: short appends held as pieces until a part can be written.
// ---------------------------------------------------------------------------------------

/// The piece objects of an upload (short appends held until their chunk is whole).
async fn piece_keys(s3: &S3Server, id: UploadId) -> Vec<String> {
    list_keys(s3, &chunks_prefix(id))
        .await
        .into_iter()
        .filter(|k| k.contains(".pieces/"))
        .collect()
}

/// Uneven tus appends (100 kB, 3 MB, 7 MB across a chunk's end, 1 byte, …) on S3, sent
/// alternately to two servers on one bucket, one of which is killed (`kill -9`) after an
/// acknowledged short append: each answer's offset is what the other server's HEAD says,
/// the short appends are held as pieces of the partial chunk only (a chunk's pieces go
/// once its part is written), and the upload completes through the survivor with the
/// right SHA-256, content and no piece left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tus_uneven_appends_across_two_servers_and_a_kill() {
    let Some(s3) = s3_or_skip("tus_uneven_appends_across_two_servers_and_a_kill").await else {
        return;
    };
    let (mut a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let file = Bytes::from(random_bytes(20_000_123, 95));
    let path = tus_create(&a, file.len()).await;
    let id = tus_id(&path);
    let cs = Api::new(&a).status(id).await.chunk_size;
    assert_eq!(cs, 8 << 20, "the default chunk size for 20 MB");
    let mut offset = 0u64;
    let sizes = [100_000u64, 3_000_000, 7_000_000, 1];
    for (n, len) in sizes.into_iter().enumerate() {
        let (to, other) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let now = tus_send(to, &path, &file, offset, len).await;
        assert_eq!(now, offset + len, "PATCH {n}");
        offset = now;
        assert_eq!(
            tus_offset(other, &path).await,
            offset,
            "HEAD after PATCH {n}"
        );
    }
    // 10,100,001 bytes: chunk 0 is a part, chunk 1 holds 1,711,393 bytes in two pieces.
    let pieces = piece_keys(&s3, id).await;
    assert_eq!(pieces.len(), 2, "{pieces:#?}");
    assert!(
        pieces.iter().all(|k| k.contains("/chunks/00001.pieces/")),
        "{pieces:#?}"
    );
    let claims = claim_keys(&s3, id).await;
    assert_eq!(claims.len(), 1, "chunk 0's claim: {claims:#?}");
    a.kill9();
    let st = Api::new(&b).status(id).await;
    assert_eq!(st.received_bytes, offset);
    for len in [8_000_000u64, file.len() as u64 - offset - 8_000_000] {
        offset = tus_send(&b, &path, &file, offset, len).await;
    }
    assert_eq!(offset, file.len() as u64);
    assert_completed(&b, id, &file).await;
    assert_eq!(piece_keys(&s3, id).await, Vec::<String>::new());
    assert_eq!(multipart_uploads(&s3, "").await, Vec::<String>::new());
}

/// A tus PATCH whose body is cut mid-way (it promised the whole file and broke off after
/// 9 MB): the chunk it finished (a part) is kept, the part it was streaming when cut is
/// not, so the offset is exactly the chunk's end; the rest then completes the upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tus_patch_cut_short_keeps_its_whole_chunks() {
    let Some(s3) = s3_or_skip("tus_patch_cut_short_keeps_its_whole_chunks").await else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let file = Bytes::from(random_bytes(12_000_123, 96));
    let path = tus_create(&server, file.len()).await;
    let id = tus_id(&path);
    let sent = file.slice(..9_000_000);
    let pieces = futures_util::stream::iter([
        Ok::<Bytes, std::io::Error>(sent.slice(..4_000_000)),
        Ok(sent.slice(4_000_000..)),
        Err(std::io::Error::other("the client went away")),
    ]);
    let cut = tus_patch(&server, &path, 0)
        .header(reqwest::header::CONTENT_LENGTH, file.len())
        .body(reqwest::Body::wrap_stream(pieces))
        .send()
        .await;
    assert!(cut.is_err(), "a body cut short gets no answer: {cut:?}");
    // The server notices the cut on its own time: wait until it stored what it keeps.
    wait_until(
        Duration::from_secs(20),
        "the cut append's bytes to be committed",
        || async { claim_keys(&s3, id).await.len() == 1 },
    )
    .await;
    let offset = tus_offset(&server, &path).await;
    assert_eq!(offset, 8 << 20, "chunk 0 kept, chunk 1's cut part not");
    assert_eq!(piece_keys(&s3, id).await, Vec::<String>::new());
    let logs = synced_logs(&server).await;
    assert!(
        logs.contains("a body cut short: its last chunk's bytes must come again")
            && !logs.contains("no bytes held"),
        "the cut append was not settled as expected:\n{logs}"
    );
    let done = tus_send(&server, &path, &file, offset, file.len() as u64 - offset).await;
    assert_eq!(done, file.len() as u64);
    assert_completed(&server, id, &file).await;
}

/// One appender per upload across servers: while a PATCH is streaming through one
/// server, a PATCH of the same upload on another gets 423 Locked and stores nothing; once
/// the first ends, the next PATCH is taken at once (the lease was released, not left to
/// expire). A PATCH refused for its checksum (460) stores nothing and leaves the upload
/// free for the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tus_appends_take_turns_across_servers() {
    let Some(s3) = s3_or_skip("tus_appends_take_turns_across_servers").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let file = Bytes::from(random_bytes(3_000_000, 97));
    let path = tus_create(&a, file.len()).await;
    let id = tus_id(&path);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|b| (b, rx))
    }));
    let first = tokio::spawn(
        tus_patch(&a, &path, 0)
            .header(reqwest::header::CONTENT_LENGTH, 1_000_000)
            .body(body)
            .send(),
    );
    tx.send(Ok(file.slice(..500_000))).await.unwrap();
    let lease_key = format!("uploads/{id}/chunks/append-lease");
    wait_until(
        Duration::from_secs(20),
        "server A to hold the upload's append lease",
        || async {
            let (code, lease) = get_object(&s3, &lease_key).await;
            code == StatusCode::OK && !lease.starts_with(b"released")
        },
    )
    .await;
    let locked = tus_patch(&b, &path, 0)
        .body(file.slice(..1_000))
        .send()
        .await
        .unwrap();
    assert_eq!(locked.status(), StatusCode::LOCKED);
    tx.send(Ok(file.slice(500_000..1_000_000))).await.unwrap();
    drop(tx);
    assert_eq!(tus_patched(first.await.unwrap().unwrap()).await, 1_000_000);
    assert_eq!(piece_keys(&s3, id).await.len(), 1, "one piece, A's");

    // A wrong Upload-Checksum: 460, nothing stored, and the retry is not locked out.
    let next = file.slice(1_000_000..2_000_000);
    let wrong = tus_patch(&b, &path, 1_000_000)
        .header(
            "upload-checksum",
            format!("sha256 {}", b64(&Sha256::digest(b"other bytes"))),
        )
        .body(next.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 460);
    assert_eq!(tus_offset(&a, &path).await, 1_000_000);
    let right = tus_patch(&b, &path, 1_000_000)
        .header(
            "upload-checksum",
            format!("sha256 {}", b64(&Sha256::digest(&next))),
        )
        .body(next)
        .send()
        .await
        .unwrap();
    assert_eq!(tus_patched(right).await, 2_000_000);
    let done = tus_send(&a, &path, &file, 2_000_000, file.len() as u64 - 2_000_000).await;
    assert_eq!(done, file.len() as u64);
    assert_completed(&a, id, &file).await;
}

/// A tus upload created without its length (`Upload-Defer-Length: 1`): its path.
async fn tus_create_deferred(server: &Server) -> String {
    let resp = client()
        .post(format!("{}/files/", server.url()))
        .header("tus-resumable", "1.0.0")
        .header("upload-defer-length", "1")
        .send()
        .await
        .expect("tus POST");
    assert_eq!(resp.status(), StatusCode::CREATED);
    header(resp.headers(), "location")
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A tus upload whose length is said only with its last PATCH (creation-defer-length) on
/// S3: every append is held as pieces of its (large) chunk, and once the length is known
/// the last chunk's part is written from its pieces, checked against their hash chain:
/// the upload completes with the right SHA-256 and no piece left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tus_deferred_length_on_s3() {
    let Some(s3) = s3_or_skip("tus_deferred_length_on_s3").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let file = Bytes::from(random_bytes(6_500_001, 98));
    let path = tus_create_deferred(&a).await;
    let id = tus_id(&path);
    let first = tus_send(&a, &path, &file, 0, 4_000_000).await;
    assert_eq!(first, 4_000_000);
    assert_eq!(piece_keys(&s3, id).await.len(), 1);
    let last = tus_patch(&b, &path, first)
        .header("upload-length", file.len().to_string())
        .body(file.slice(4_000_000..))
        .send()
        .await
        .unwrap();
    assert_eq!(tus_patched(last).await, file.len() as u64);
    let st = assert_completed(&a, id, &file).await;
    assert_eq!(st.size, file.len() as u64);
    assert_eq!(piece_keys(&s3, id).await, Vec::<String>::new());
}

/// An append of unknown length (no `Content-Length`) to a deferred-length upload that
/// runs past the size limit is refused (413) after it stored whole chunks as parts; a
/// part cannot be removed, and Ceph refuses to join a multipart upload that holds parts
/// the join leaves out. When the length then said ends before those parts, completion
/// fails the upload with that reason (422 problem+json; the status says failed), instead of
/// calling it completed and failing every download: nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tus_parts_left_past_the_end_by_a_refused_append_fail_the_upload_clearly() {
    let Some(s3) =
        s3_or_skip("tus_parts_left_past_the_end_by_a_refused_append_fail_the_upload_clearly").await
    else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &["--max-upload-size", "20MiB"]);
    let path = tus_create_deferred(&server).await;
    let id = tus_id(&path);
    let too_much = Bytes::from(random_bytes(25 * MIB, 141));
    let pieces: Vec<Result<Bytes, std::io::Error>> = (0..too_much.len())
        .step_by(MIB)
        .map(|at| Ok(too_much.slice(at..at + MIB)))
        .collect();
    let refused = tus_patch(&server, &path, 0)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    problem(refused, 413).await;
    assert_eq!(tus_offset(&server, &path).await, 0);
    let file = too_much.slice(..7 * MIB);
    let last = tus_patch(&server, &path, 0)
        .header("upload-length", file.len().to_string())
        .body(file.clone())
        .send()
        .await
        .unwrap();
    let p = problem(last, 422).await;
    assert!(p.kind.ends_with("/assembly-failed"), "{p:?}");
    assert!(p.detail.contains("parts past the end"), "{p:?}");
    let st = Api::new(&server).status(id).await;
    assert_eq!(st.state, UploadState::Failed, "{st:?}");
    assert_eq!(list_keys(&s3, "files/").await, Vec::<String>::new());
}

/// The IETF resumable-upload draft on S3: an upload created with its first bytes and no
/// length, appended to unevenly (`application/partial-upload`) through two servers, and
/// completed by the append that says `Upload-Complete: ?1`: the right SHA-256 and content.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ietf_appends_on_s3() {
    let Some(s3) = s3_or_skip("ietf_appends_on_s3").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let file = Bytes::from(random_bytes(9_000_007, 99));
    let ietf = |server: &Server, method: reqwest::Method, path: &str| {
        client()
            .request(method, format!("{}{path}", server.url()))
            .header("upload-draft-interop-version", "8")
    };
    let resp = ietf(&a, reqwest::Method::POST, "/uploads/")
        .header("upload-complete", "?0")
        .body(file.slice(..1_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let path = header(resp.headers(), "location");
    let mut at = 1_000usize;
    for (n, len) in [65_537usize, 6_000_000, 777].into_iter().enumerate() {
        let to = if n % 2 == 0 { &b } else { &a };
        let resp = ietf(to, reqwest::Method::PATCH, &path)
            .header(CONTENT_TYPE, "application/partial-upload")
            .header("upload-offset", at.to_string())
            .header("upload-complete", "?0")
            .body(file.slice(at..at + len))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "append {n}");
        at += len;
        assert_eq!(header(resp.headers(), "upload-offset"), at.to_string());
    }
    let resp = ietf(&b, reqwest::Method::PATCH, &path)
        .header(CONTENT_TYPE, "application/partial-upload")
        .header("upload-offset", at.to_string())
        .header("upload-complete", "?1")
        .body(file.slice(at..))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(resp.headers(), "upload-complete"), "?1");
    let id: UploadId = path.rsplit('/').next().unwrap().parse().unwrap();
    assert_completed(&a, id, &file).await;
    assert_eq!(piece_keys(&s3, id).await, Vec::<String>::new());
}

/// The whole-file hash midstate of tus appends on S3 travels with the bytes: in each piece's
/// name (`{start:012}.{len}.{chunk midstate}.{file midstate}`) and in each appended chunk's
/// claim (`whole`). So appends alternating between two servers, one of them killed
/// (`kill -9`) with a short append held as a piece and the other never having seen the
/// upload before, continue the hash from what the bucket holds: the completion reads
/// nothing back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tus_on_s3_carries_the_hash_midstate_in_claims_and_piece_names() {
    let Some(s3) =
        s3_or_skip("tus_on_s3_carries_the_hash_midstate_in_claims_and_piece_names").await
    else {
        return;
    };
    let (mut a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let file = Bytes::from(random_bytes(10_000_003, 941));
    let path = tus_create(&a, file.len()).await;
    let id = tus_id(&path);
    let mut offset = tus_send(&a, &path, &file, 0, 2_000_000).await;
    // The piece of chunk 0: its name carries both midstates after its bytes.
    let pieces = piece_keys(&s3, id).await;
    assert_eq!(pieces.len(), 1, "{pieces:#?}");
    let name = pieces[0].rsplit('/').next().unwrap();
    let fields: Vec<&str> = name.split('.').collect();
    assert_eq!(fields.len(), 4, "{name}");
    assert_eq!(
        (fields[0], fields[1]),
        ("000000000000", "2000000"),
        "{name}"
    );
    assert!(
        fields[2..]
            .iter()
            .all(|m| m.len() > 64 && m.bytes().all(|b| b.is_ascii_hexdigit())),
        "{name}"
    );
    offset = tus_send(&a, &path, &file, offset, (8 << 20) - offset).await;
    // Chunk 0 (8 MiB) is a part now, claimed with the file's midstate after it; its
    // piece is gone.
    let c = claim(&s3, id, 0).await;
    assert_eq!(c["whole"]["hashed_bytes"], 8 << 20, "{c}");
    assert_eq!(piece_keys(&s3, id).await, Vec::<String>::new());
    a.kill9();
    for len in [500_000u64, file.len() as u64 - offset - 500_000] {
        offset = tus_send(&b, &path, &file, offset, len).await;
    }
    assert_eq!(offset, file.len() as u64);
    assert_completed(&b, id, &file).await;
    let lines = completed_lines(&synced_logs(&b).await, id);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(log_field(&lines[0], "read_back_at_completion"), 0);
    assert_eq!(log_field(&lines[0], "read_back_total"), 0);
}
