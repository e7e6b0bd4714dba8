//! The S3 test store (Ceph RGW, `scripts/ceph/run.sh`, see `tests::s3`) gives the
//! guarantees the S3 backend relies on: signatures checked, atomic conditional creates,
//! S3's answers for unknown or finished multipart uploads (and where RGW departs from
//! them), S3's part-size rule, a gateway that can go down, hang and come back with every
//! object kept, and store requests counted by operation. Raw HTTP, no SDK.
//!
//! Skipped (with a message) when the store is not installed, unless `S3_REQUIRED=1`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
/// 412, and the object holds the winner's bytes. Many rounds, since a race shows only
/// sometimes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_create_has_exactly_one_winner() {
    let Some(s3) = S3Server::start_or_skip("conditional_create_has_exactly_one_winner") else {
        return;
    };
    let s3 = Arc::new(s3);
    let bucket = s3.bucket().to_string();
    const WRITERS: usize = 16;
    const ROUNDS: usize = 20;
    const BODY: usize = 4 * 1024;
    for round in 0..ROUNDS {
        let key = format!("k{round}");
        let barrier = Arc::new(Barrier::new(WRITERS));
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let (s3, barrier, key) = (s3.clone(), barrier.clone(), key.clone());
            let url = s3.url(&format!("/{bucket}/{key}"));
            tasks.push(tokio::spawn(async move {
                let body = tests::random_bytes(BODY, writer as u64);
                let req = s3
                    .client()
                    .put(url)
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
                // 409 ConditionalRequestConflict: S3's answer to a conditional write
                // racing another in progress.
                StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT => {}
                other => panic!("round {round}: unexpected status {other}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
        let (status, stored) = get_object(&s3, &bucket, &key).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            stored, winners[0],
            "round {round}: the object is the winner's"
        );
    }
}

/// A request signed with a wrong secret is refused (403 SignatureDoesNotMatch), and one
/// without any signature cannot read the test's objects: the store checks what moto
/// did not.
#[tokio::test]
async fn signatures_are_checked() {
    let Some(s3) = S3Server::start_or_skip("signatures_are_checked") else {
        return;
    };
    let bucket = s3.bucket();
    let resp = s3
        .client()
        .put(s3.url(&format!("/{bucket}/obj")))
        .body("signed")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let forged = tests::s3::S3Client::new(tests::s3::Credentials {
        access_key: "uploadtest".into(),
        secret_key: "not-the-secret".into(),
        region: "us-east-1".into(),
    });
    let resp = forged
        .get(s3.url(&format!("/{bucket}/obj")))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    let anonymous = reqwest::Client::new()
        .get(s3.url(&format!("/{bucket}/obj")))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::FORBIDDEN);
}

/// UploadPart to an unknown, aborted or completed upload id answers 404 NoSuchUpload,
/// as S3 does. Where RGW departs from S3 (the backend must cope with both), the test
/// pins RGW's answer: CompleteMultipartUpload of an unknown or aborted id is a 500
/// (S3: 404 NoSuchUpload), ListParts of one is a 404 NoSuchKey (S3: NoSuchUpload).
#[tokio::test]
async fn unknown_or_finished_upload_ids() {
    let Some(s3) = S3Server::start_or_skip("unknown_or_finished_upload_ids") else {
        return;
    };
    let b = s3.bucket();

    let resp = upload_part(&s3, b, "k", "bogus", 1, b"x".to_vec()).await;
    let status = resp.status();
    assert_no_such_upload(status, &resp.text().await.unwrap(), "part of bogus id");
    let (status, body) = complete_multipart(&s3, b, "k", "bogus", &[(1, "\"x\"".into())]).await;
    assert_rgw_complete_of_unknown(status, &body, "complete of bogus id");
    let (status, body) = list_parts(&s3, b, "k", "bogus").await;
    assert_rgw_list_parts_of_unknown(status, &body, "ListParts of bogus id");

    // Aborted.
    let aborted = create_multipart(&s3, b, "aborted").await;
    let resp = s3
        .client()
        .delete(s3.url(&format!("/{b}/aborted?uploadId={aborted}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = upload_part(&s3, b, "aborted", &aborted, 1, b"x".to_vec()).await;
    let status = resp.status();
    assert_no_such_upload(status, &resp.text().await.unwrap(), "part after abort");
    let (status, body) =
        complete_multipart(&s3, b, "aborted", &aborted, &[(1, "\"x\"".into())]).await;
    assert_rgw_complete_of_unknown(status, &body, "complete after abort");
    let (status, body) = list_parts(&s3, b, "aborted", &aborted).await;
    assert_rgw_list_parts_of_unknown(status, &body, "ListParts after abort");

    // Completed.
    let done = create_multipart(&s3, b, "done").await;
    let etag = upload_part_ok(&s3, b, "done", &done, 1, b"only part".to_vec()).await;
    let (status, body) = complete_multipart(&s3, b, "done", &done, &[(1, etag)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let resp = upload_part(&s3, b, "done", &done, 2, b"late".to_vec()).await;
    let status = resp.status();
    assert_no_such_upload(status, &resp.text().await.unwrap(), "part after complete");

    let (status, bytes) = get_object(&s3, b, "done").await;
    assert_eq!((status, bytes), (StatusCode::OK, b"only part".to_vec()));
}

async fn list_parts(s3: &S3Server, bucket: &str, key: &str, id: &str) -> (StatusCode, String) {
    let resp = s3
        .client()
        .get(s3.url(&format!("/{bucket}/{key}?uploadId={id}")))
        .send()
        .await
        .expect("ListParts");
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

fn assert_rgw_complete_of_unknown(status: StatusCode, body: &str, what: &str) {
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{what}: {body}");
}

fn assert_rgw_list_parts_of_unknown(status: StatusCode, body: &str, what: &str) {
    assert_eq!(status, StatusCode::NOT_FOUND, "{what}: {body}");
    assert!(body.contains("NoSuchKey"), "{what}: {body}");
}

/// Two parts uploaded out of order (the first 5 MiB, the last short), completed in
/// order: the object is their concatenation.
#[tokio::test]
async fn multipart_out_of_order_round_trips() {
    let Some(s3) = S3Server::start_or_skip("multipart_out_of_order_round_trips") else {
        return;
    };
    let b = s3.bucket();
    let part1 = tests::random_bytes(5 * MIB, 1);
    let part2 = tests::random_bytes(1234, 2);
    let id = create_multipart(&s3, b, "obj").await;
    let etag2 = upload_part_ok(&s3, b, "obj", &id, 2, part2.clone()).await;
    let etag1 = upload_part_ok(&s3, b, "obj", &id, 1, part1.clone()).await;
    let (status, body) = complete_multipart(&s3, b, "obj", &id, &[(1, etag1), (2, etag2)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("CompleteMultipartUploadResult"), "{body}");
    let (status, got) = get_object(&s3, b, "obj").await;
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
    let b = s3.bucket();
    let id = create_multipart(&s3, b, "obj").await;
    let etag1 = upload_part_ok(&s3, b, "obj", &id, 1, vec![1; 1024]).await;
    let etag2 = upload_part_ok(&s3, b, "obj", &id, 2, vec![2; 10]).await;
    let (status, body) = complete_multipart(&s3, b, "obj", &id, &[(1, etag1), (2, etag2)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("EntityTooSmall"), "{body}");
    let (status, _) = get_object(&s3, b, "obj").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no object after a failed complete"
    );
}

/// The test's own gateway taken down (killed) refuses connections; started again on
/// the same port it serves every object written before: the cluster kept them.
#[tokio::test]
async fn gateway_outage_keeps_every_object() {
    let Some(s3) = S3Server::with_gateway_or_skip("gateway_outage_keeps_every_object") else {
        return;
    };
    let b = s3.bucket();
    let resp = s3
        .client()
        .put(s3.url(&format!("/{b}/obj")))
        .body("still here")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    s3.go_down();
    let err = s3.client().get(s3.url(&format!("/{b}/obj"))).send().await;
    assert!(err.is_err(), "a request while down must fail: {err:?}");
    s3.come_up();
    let (status, body) = get_object(&s3, b, "obj").await;
    assert_eq!((status, body), (StatusCode::OK, b"still here".to_vec()));
}

/// The test's own gateway stopped (SIGSTOP) accepts connections and answers nothing, as
/// a hung store does; continued (SIGCONT), it answers the requests it held.
#[tokio::test]
async fn a_hung_gateway_answers_nothing_until_continued() {
    let Some(s3) = S3Server::with_gateway_or_skip("a_hung_gateway_answers_nothing_until_continued")
    else {
        return;
    };
    let b = s3.bucket().to_string();
    s3.hang();
    let held = s3
        .client()
        .get(s3.url(&format!("/{b}?list-type=2")))
        .timeout(Duration::from_secs(30))
        .send();
    let held = tokio::spawn(held);
    let quick = s3
        .client()
        .get(s3.url(&format!("/{b}?list-type=2")))
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    assert!(
        quick.as_ref().is_err_and(|e| e.is_timeout()),
        "a hung gateway must not answer: {quick:?}"
    );
    s3.resume();
    let resp = held.await.unwrap().expect("the held request is answered");
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Store requests are counted by S3 operation for one bucket and time window: a known
/// sequence of requests is counted exactly, including a copy and the bytes it copied.
#[tokio::test]
async fn requests_are_counted_by_operation() {
    let Some(s3) = S3Server::start_or_skip("requests_are_counted_by_operation") else {
        return;
    };
    let b = s3.bucket();
    let since = SystemTime::now();
    let part = tests::random_bytes(5 * MIB, 3);
    let id = create_multipart(&s3, b, "multi").await;
    let e1 = upload_part_ok(&s3, b, "multi", &id, 1, part.clone()).await;
    let e2 = upload_part_ok(&s3, b, "multi", &id, 2, b"tail".to_vec()).await;
    let (status, body) = complete_multipart(&s3, b, "multi", &id, &[(1, e1), (2, e2)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let copy = s3
        .client()
        .put(s3.url(&format!("/{b}/copy")))
        .header("x-amz-copy-source", format!("/{b}/multi"))
        .send()
        .await
        .unwrap();
    assert_eq!(copy.status(), StatusCode::OK);
    for _ in 0..3 {
        let (status, _) = get_object(&s3, b, "copy").await;
        assert_eq!(status, StatusCode::OK);
    }
    let counted = s3.requests(b, since);
    let want: std::collections::BTreeMap<String, u64> = [
        ("CreateMultipartUpload", 1),
        ("UploadPart", 2),
        ("CompleteMultipartUpload", 1),
        ("CopyObject", 1),
        ("GetObject", 3),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(counted.by_operation, want, "{counted:?}");
    assert_eq!(counted.total, 8);
    assert_eq!(counted.copied_bytes, (5 * MIB + 4) as u64);
    // Another bucket's requests and earlier ones are not counted.
    assert_eq!(s3.requests(b, SystemTime::now()).total, 0);
}
