// ---------------------------------------------------------------------------------------
// Chunks and their parts: retries, writes of other bytes, parts changed in the store, and
// multipart uploads nothing names.
// ---------------------------------------------------------------------------------------

use super::*;
use std::time::SystemTime;

/// The multipart upload id an upload's record names.
async fn multipart_id(s3: &S3Server, id: UploadId) -> String {
    let (code, record) = get_object(s3, &format!("uploads/{id}/record.json")).await;
    assert_eq!(code, StatusCode::OK);
    let record: Value = serde_json::from_slice(&record).unwrap();
    record["multipart_id"].as_str().unwrap().to_string()
}

/// An UploadPart straight to the store, as another writer would send it.
async fn upload_part(
    s3: &S3Server,
    id: UploadId,
    multipart: &str,
    number: u64,
    bytes: Vec<u8>,
) -> Response {
    s3.client()
        .put(s3.url(&format!(
            "/{}/{}?partNumber={number}&uploadId={multipart}",
            s3.bucket(),
            file_key(id)
        )))
        .body(bytes)
        .send()
        .await
        .unwrap()
}

/// A chunk PUT that must be answered 200: the bytes of a stored chunk again.
async fn put_again(api: &Api, id: UploadId, index: u64, bytes: Bytes) {
    let sha = digest(&bytes);
    let resp = api.put(id, index, bytes).await;
    let code = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(code, StatusCode::OK, "PUT chunk {index} again: {text}");
    let receipt: ChunkReceipt = serde_json::from_str(&text).expect("receipt JSON");
    assert_eq!((receipt.index, receipt.sha256), (index, sha));
}

/// A chunk PUT after completion asked for the chunk again (its part was replaced): the
/// acknowledged bytes are stored anew, 201.
async fn put_asked_again(api: &Api, id: UploadId, index: u64, bytes: Bytes) {
    let sha = digest(&bytes);
    let resp = api.put(id, index, bytes).await;
    let code = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(
        code,
        StatusCode::CREATED,
        "PUT chunk {index} asked for again: {text}"
    );
    let receipt: ChunkReceipt = serde_json::from_str(&text).expect("receipt JSON");
    assert_eq!((receipt.index, receipt.sha256), (index, sha));
}

/// The store's UploadPart requests for the test bucket since `since` (every request
/// answered before the call is counted).
fn parts_sent(s3: &S3Server, since: SystemTime) -> u64 {
    s3.requests(s3.bucket(), since).count("UploadPart")
}

/// A retry of a stored chunk through another server than the one that stored it (its
/// answer was lost, the client went elsewhere) is a retry: 200 with the same receipt,
/// whatever that server knew. Other bytes for it on that server, which now knows the
/// claim, are refused (409) without reaching the store; the upload completes with the
/// acknowledged bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_of_a_stored_chunk_on_another_server_is_200() {
    let Some(s3) = s3_or_skip("a_retry_of_a_stored_chunk_on_another_server_is_200").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));
    let (file, chunks, id) = created(&api_a, CS + 17, 78).await;
    api_a.put_ok(id, 0, chunks[0].clone()).await;
    put_again(&api_b, id, 0, chunks[0].clone()).await;
    let other = Bytes::from(random_bytes(CS, 79));
    let since = SystemTime::now();
    problem(api_b.put(id, 0, other).await, 409).await;
    assert_eq!(
        parts_sent(&s3, since),
        0,
        "other bytes reached the store through a server that knew the claim"
    );
    assert_eq!(
        claim(&s3, id, 0).await["sha256"],
        digest(&chunks[0]).to_hex()
    );
    api_b.put_ok(id, 1, chunks[1].clone()).await;
    api_b.complete_ok(id, &file).await;
    api_a.assert_content(id, &file).await;
}

/// Other bytes for a stored chunk through a second server that heard of its claim from
/// the server that wrote it (see `storage::peers`): refused (409) without reaching the
/// store, as through the server that stored it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_bytes_through_a_server_told_of_the_claim_never_reach_the_store() {
    let Some(s3) =
        s3_or_skip("other_bytes_through_a_server_told_of_the_claim_never_reach_the_store").await
    else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));
    let (file, chunks, id) = created(&api_a, 2 * CS + 5, 84).await;
    for (i, c) in chunks.iter().enumerate() {
        api_a.put_ok(id, i as u64, c.clone()).await;
    }
    wait_until(
        Duration::from_secs(10),
        "b to hear of the claims",
        || async {
            metric(&b, r#"upload_peer_notes_total{outcome="heard"}"#).await >= chunks.len() as f64
        },
    )
    .await;
    let since = SystemTime::now();
    problem(
        api_b.put(id, 1, Bytes::from(random_bytes(CS, 85))).await,
        409,
    )
    .await;
    assert_eq!(
        parts_sent(&s3, since),
        0,
        "through a server told of the claim"
    );
    api_b.complete_ok(id, &file).await;
    api_a.assert_content(id, &file).await;
}

/// Other bytes for a stored chunk through a second server, which has neither seen nor
/// heard of its claim (`--peer-url off`, or a note that did not arrive):
/// they are refused (409), but their part replaced the acknowledged one in the store (a
/// chunk has one part number, and a part cannot be read before it is joined). The claim
/// stays the first writer's, so completion, which checks every part against its claim,
/// answers 409 with that chunk missing instead of publishing other bytes; the claimed
/// bytes sent again (through the second server, which learnt the claim from its
/// conflict) are stored anew (201: completion set the chunk aside, and the status asks
/// for it), and the upload completes
/// with the right SHA-256. Through the server that stored the chunk, other bytes never
/// reach the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_bytes_through_a_second_server_are_asked_for_again_at_completion() {
    let Some(s3) =
        s3_or_skip("other_bytes_through_a_second_server_are_asked_for_again_at_completion").await
    else {
        return;
    };
    let (a, _da) = upload_server(&s3, &["--peer-url", "off"]);
    let (b, _db) = upload_server(&s3, &["--peer-url", "off"]);
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));
    let (file, chunks, id) = created(&api_a, 2 * CS + 5, 82).await;
    for (i, c) in chunks.iter().enumerate() {
        api_a.put_ok(id, i as u64, c.clone()).await;
    }
    let other = Bytes::from(random_bytes(CS, 83));
    let since = SystemTime::now();
    problem(api_a.put(id, 1, other.clone()).await, 409).await;
    assert_eq!(
        parts_sent(&s3, since),
        0,
        "through the server that stored it"
    );
    let since = SystemTime::now();
    problem(api_b.put(id, 1, other).await, 409).await;
    assert_eq!(parts_sent(&s3, since), 1, "through a second server");
    assert_eq!(
        claim(&s3, id, 1).await["sha256"],
        digest(&chunks[1]).to_hex()
    );

    let p = problem(api_a.complete(id, None).await, 409).await;
    assert_eq!(p.missing, Some(vec![[1, 1]]), "{p:?}");
    assert_eq!(list_keys(&s3, "files/").await, Vec::<String>::new());
    let st = api_a.status(id).await;
    assert_eq!(st.state, UploadState::Uploading);
    assert_eq!(st.missing, vec![[1, 1]]);
    put_asked_again(&api_b, id, 1, chunks[1].clone()).await;
    let done = api_b.complete_ok(id, &file).await;
    assert_eq!(done.sha256, Some(digest(&file)));
    api_a.assert_content(id, &file).await;
}

/// A part that no longer holds the bytes its claim names (rewritten in the store from
/// outside, as a write of other bytes through another server would): completion finds it
/// (its ETag is not the claimed one), answers 409 with that chunk missing instead of
/// failing the upload or publishing other bytes; once the client sends it again (through
/// the server that claimed it), the upload completes with the right SHA-256.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_part_overwritten_after_its_receipt_is_sent_again_not_fatal() {
    let Some(s3) = s3_or_skip("a_part_overwritten_after_its_receipt_is_sent_again_not_fatal").await
    else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let (file, chunks, id) = created(&api, 2 * CS + 5, 80).await;
    for (i, c) in chunks.iter().enumerate() {
        api.put_ok(id, i as u64, c.clone()).await;
    }
    let multipart = multipart_id(&s3, id).await;
    let part = claim(&s3, id, 1).await["part"].as_u64().unwrap();
    assert_eq!(part, 2, "chunk i is part i + 1");
    let late = upload_part(&s3, id, &multipart, part, random_bytes(CS, 81)).await;
    assert!(late.status().is_success(), "{}", late.status());
    let refused = api.complete(id, None).await;
    let p = problem(refused, 409).await;
    assert_eq!(p.missing, Some(vec![[1, 1]]), "{p:?}");
    let st = api.status(id).await;
    assert_eq!(st.state, UploadState::Uploading);
    // Completion, which checks the parts, set the chunk aside: the status asks for it too.
    assert_eq!(st.missing, vec![[1, 1]]);
    assert_eq!(st.received_bytes, (file.len() - CS) as u64);
    put_asked_again(&api, id, 1, chunks[1].clone()).await;
    api.complete_ok(id, &file).await;
    api.assert_content(id, &file).await;
}

/// Begins a multipart upload at `key` straight in the store, as a server that died right
/// after would leave it.
async fn begin_multipart(s3: &S3Server, key: &str) {
    let resp = s3
        .client()
        .post(s3.url(&format!("/{}/{key}?uploads", s3.bucket())))
        .send()
        .await
        .expect("CreateMultipartUpload");
    assert!(resp.status().is_success(), "CreateMultipartUpload {key}");
}

/// The multipart uploads in progress: (key, upload id), sorted.
async fn multipart_upload_ids(s3: &S3Server) -> Vec<(String, String)> {
    let body = s3_get_text(s3, &format!("/{}?uploads", s3.bucket())).await;
    let mut ids: Vec<(String, String)> = xml_all(&body, "Upload")
        .iter()
        .filter_map(|u| {
            Some((
                xml_all(u, "Key").pop()?,
                xml_all(u, "UploadId").pop()?.replace("&amp;", "&"),
            ))
        })
        .collect();
    ids.sort();
    ids
}

/// Multipart uploads that no upload names are aborted by the sweep once older than
/// `--s3-leftover-grace` (here 1 s, counted from when the server first saw them;
/// `--upload-ttl 10s` makes the sweep run every 2.5 s): one begun for an upload whose
/// record was never written (a create that died between its two requests) and one at a
/// live upload's key that its record does not name (a create that lost a race). The
/// live upload's own multipart upload stays, and the upload completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweep_aborts_multipart_uploads_nothing_names() {
    let Some(s3) = s3_or_skip("the_sweep_aborts_multipart_uploads_nothing_names").await else {
        return;
    };
    let never_recorded = UploadId::new_random();
    begin_multipart(&s3, &file_key(never_recorded)).await;

    let (server, _dir) = upload_server(&s3, &["--s3-leftover-grace", "1s", "--upload-ttl", "10s"]);
    let api = Api::new(&server);
    let (file, chunks, id) = created(&api, CS + 7, 91).await;
    let own = (file_key(id), multipart_id(&s3, id).await);
    begin_multipart(&s3, &file_key(id)).await;
    assert_eq!(multipart_upload_ids(&s3).await.len(), 3);
    api.put_ok(id, 0, chunks[0].clone()).await;
    wait_until(
        Duration::from_secs(20),
        "the two leftovers to be aborted",
        || async { multipart_upload_ids(&s3).await == vec![own.clone()] },
    )
    .await;
    api.put_ok(id, 1, chunks[1].clone()).await;
    api.complete_ok(id, &file).await;
    api.assert_content(id, &file).await;
    let logs = synced_logs(&server).await;
    let aborted: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("aborted a multipart upload nothing names"))
        .collect();
    assert_eq!(aborted.len(), 2, "{aborted:#?}");
    for key in [file_key(never_recorded), file_key(id)] {
        assert!(
            aborted.iter().any(|l| l.contains(&key)),
            "{key} not among {aborted:#?}"
        );
    }
}
