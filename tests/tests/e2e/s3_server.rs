//! The local S3-compatible test server (`scripts/s3-server/launcher.py` over moto)
//! gives the guarantees the S3 backend relies on: atomic conditional creates,
//! `404 NoSuchUpload` for unknown or finished multipart uploads, S3's part-size rule,
//! a reset, and an outage that keeps state. Raw HTTP, no SDK.
//!
//! Skipped (with a message) when the venv is not installed, unless `S3_REQUIRED=1`.

use std::sync::Arc;

use reqwest::StatusCode;
use tests::s3::S3Server;
use tokio::sync::Barrier;

const MIB: usize = 1024 * 1024;

/// The text of the first `<tag>…</tag>` in an XML document.
fn xml_field(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml[start..end].to_string())
}

/// `POST /{bucket}/{key}?uploads` → the upload id.
async fn create_multipart(s3: &S3Server, bucket: &str, key: &str) -> String {
    let resp = s3
        .client()
        .post(s3.url(&format!("/{bucket}/{key}?uploads")))
        .send()
        .await
        .expect("CreateMultipartUpload");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.text().await.unwrap();
    xml_field(&body, "UploadId").unwrap_or_else(|| panic!("no UploadId in {body}"))
}

/// `PUT /{bucket}/{key}?partNumber=N&uploadId=ID` → the response.
async fn upload_part(
    s3: &S3Server,
    bucket: &str,
    key: &str,
    upload_id: &str,
    part: u32,
    data: Vec<u8>,
) -> reqwest::Response {
    s3.client()
        .put(s3.url(&format!(
            "/{bucket}/{key}?partNumber={part}&uploadId={upload_id}"
        )))
        .body(data)
        .send()
        .await
        .expect("UploadPart")
}

/// Uploads a part and returns its ETag.
async fn upload_part_ok(
    s3: &S3Server,
    bucket: &str,
    key: &str,
    upload_id: &str,
    part: u32,
    data: Vec<u8>,
) -> String {
    let resp = upload_part(s3, bucket, key, upload_id, part, data).await;
    assert_eq!(resp.status(), StatusCode::OK, "part {part}");
    resp.headers()
        .get("etag")
        .expect("ETag of part")
        .to_str()
        .unwrap()
        .to_string()
}

/// `POST /{bucket}/{key}?uploadId=ID` with the given (part number, ETag) list.
async fn complete_multipart(
    s3: &S3Server,
    bucket: &str,
    key: &str,
    upload_id: &str,
    parts: &[(u32, String)],
) -> (StatusCode, String) {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (n, etag) in parts {
        xml.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    let resp = s3
        .client()
        .post(s3.url(&format!("/{bucket}/{key}?uploadId={upload_id}")))
        .body(xml)
        .send()
        .await
        .expect("CompleteMultipartUpload");
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

async fn get_object(s3: &S3Server, bucket: &str, key: &str) -> (StatusCode, Vec<u8>) {
    let resp = s3
        .client()
        .get(s3.url(&format!("/{bucket}/{key}")))
        .send()
        .await
        .expect("GetObject");
    let status = resp.status();
    (status, resp.bytes().await.unwrap().to_vec())
}

fn assert_no_such_upload(status: StatusCode, body: &str, what: &str) {
    assert_eq!(status, StatusCode::NOT_FOUND, "{what}: {body}");
    assert!(body.contains("NoSuchUpload"), "{what}: {body}");
}

/// 16 concurrent `PUT` with `If-None-Match: *` to one key: exactly one 200, the others
/// 412, and the object holds the winner's bytes. Many rounds, with Python threads
/// switching every microsecond, since a race shows only sometimes: without the
/// launcher's lock this finds two winners in about one round of 15.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_create_has_exactly_one_winner() {
    let Some(s3) = S3Server::start_with_args_or_skip(
        "conditional_create_has_exactly_one_winner",
        &["--switch-interval", "1e-6"],
    ) else {
        return;
    };
    let s3 = Arc::new(s3);
    s3.create_bucket("race").await;
    const WRITERS: usize = 16;
    const ROUNDS: usize = 60;
    const BODY: usize = 4 * 1024;
    for round in 0..ROUNDS {
        let key = format!("k{round}");
        let barrier = Arc::new(Barrier::new(WRITERS));
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let (s3, barrier, key) = (s3.clone(), barrier.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let body = tests::random_bytes(BODY, writer as u64);
                let req = s3
                    .client()
                    .put(s3.url(&format!("/race/{key}")))
                    .header("If-None-Match", "*")
                    .body(body.clone());
                barrier.wait().await;
                let resp = req.send().await.expect("PUT");
                (resp.status(), body)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (status, body) = task.await.unwrap();
            match status {
                StatusCode::OK => winners.push(body),
                StatusCode::PRECONDITION_FAILED => {}
                other => panic!("round {round}: unexpected status {other}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
        let (status, stored) = get_object(&s3, "race", &key).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            stored, winners[0],
            "round {round}: the object is the winner's"
        );
    }
}

/// Unknown, aborted and completed upload ids answer 404 NoSuchUpload (moto alone: 500)
/// for UploadPart and CompleteMultipartUpload, as S3 does.
#[tokio::test]
async fn unknown_or_finished_upload_id_is_no_such_upload() {
    let Some(s3) = S3Server::start_or_skip("unknown_or_finished_upload_id_is_no_such_upload")
    else {
        return;
    };
    s3.create_bucket("uploads").await;

    let resp = upload_part(&s3, "uploads", "k", "bogus", 1, b"x".to_vec()).await;
    let status = resp.status();
    assert_no_such_upload(status, &resp.text().await.unwrap(), "part of bogus id");
    let (status, body) = complete_multipart(&s3, "uploads", "k", "bogus", &[]).await;
    assert_no_such_upload(status, &body, "complete of bogus id");

    // Aborted.
    let aborted = create_multipart(&s3, "uploads", "aborted").await;
    let resp = s3
        .client()
        .delete(s3.url(&format!("/uploads/aborted?uploadId={aborted}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = upload_part(&s3, "uploads", "aborted", &aborted, 1, b"x".to_vec()).await;
    let status = resp.status();
    assert_no_such_upload(status, &resp.text().await.unwrap(), "part after abort");
    let (status, body) = complete_multipart(&s3, "uploads", "aborted", &aborted, &[]).await;
    assert_no_such_upload(status, &body, "complete after abort");

    // Completed.
    let done = create_multipart(&s3, "uploads", "done").await;
    let etag = upload_part_ok(&s3, "uploads", "done", &done, 1, b"only part".to_vec()).await;
    let (status, body) = complete_multipart(&s3, "uploads", "done", &done, &[(1, etag)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let resp = upload_part(&s3, "uploads", "done", &done, 2, b"late".to_vec()).await;
    let status = resp.status();
    assert_no_such_upload(status, &resp.text().await.unwrap(), "part after complete");

    // The server is still healthy after all of this.
    let (status, bytes) = get_object(&s3, "uploads", "done").await;
    assert_eq!((status, bytes), (StatusCode::OK, b"only part".to_vec()));
}

/// Two parts uploaded out of order (the first 5 MiB, the last short), completed in
/// order: the object is their concatenation.
#[tokio::test]
async fn multipart_out_of_order_round_trips() {
    let Some(s3) = S3Server::start_or_skip("multipart_out_of_order_round_trips") else {
        return;
    };
    s3.create_bucket("multi").await;
    let part1 = tests::random_bytes(5 * MIB, 1);
    let part2 = tests::random_bytes(1234, 2);
    let id = create_multipart(&s3, "multi", "obj").await;
    let etag2 = upload_part_ok(&s3, "multi", "obj", &id, 2, part2.clone()).await;
    let etag1 = upload_part_ok(&s3, "multi", "obj", &id, 1, part1.clone()).await;
    let (status, body) =
        complete_multipart(&s3, "multi", "obj", &id, &[(1, etag1), (2, etag2)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("CompleteMultipartUploadResult"), "{body}");
    let (status, got) = get_object(&s3, "multi", "obj").await;
    assert_eq!(status, StatusCode::OK);
    let mut want = part1;
    want.extend_from_slice(&part2);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "object bytes differ from the parts");
}

/// A non-last part under 5 MiB makes CompleteMultipartUpload fail with EntityTooSmall.
#[tokio::test]
async fn short_non_last_part_is_entity_too_small() {
    let Some(s3) = S3Server::start_or_skip("short_non_last_part_is_entity_too_small") else {
        return;
    };
    s3.create_bucket("small").await;
    let id = create_multipart(&s3, "small", "obj").await;
    let etag1 = upload_part_ok(&s3, "small", "obj", &id, 1, vec![1; 1024]).await;
    let etag2 = upload_part_ok(&s3, "small", "obj", &id, 2, vec![2; 10]).await;
    let (status, body) =
        complete_multipart(&s3, "small", "obj", &id, &[(1, etag1), (2, etag2)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("EntityTooSmall"), "{body}");
    let (status, _) = get_object(&s3, "small", "obj").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no object after a failed complete"
    );
}

/// `reset` empties the server; an outage (`go_down`/`come_up`) refuses connections
/// and keeps every object.
#[tokio::test]
async fn reset_and_outage() {
    let Some(s3) = S3Server::start_or_skip("reset_and_outage") else {
        return;
    };
    s3.create_bucket("gone").await;
    s3.reset().await;
    let resp = s3.client().head(s3.url("/gone")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "bucket after reset");

    s3.create_bucket("kept").await;
    let resp = s3
        .client()
        .put(s3.url("/kept/obj"))
        .body("still here")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    s3.go_down();
    let fresh = reqwest::Client::new();
    let err = fresh.get(s3.url("/kept/obj")).send().await;
    assert!(err.is_err(), "a request while down must fail: {err:?}");
    s3.come_up();
    let (status, body) = get_object(&s3, "kept", "obj").await;
    assert_eq!((status, body), (StatusCode::OK, b"still here".to_vec()));
}
