//! Offset retrieval and resumption: an append at the wrong offset is 409 with the expected
//! and provided offsets and appends nothing, and after a restart HEAD says where to resume.

use reqwest::StatusCode;
use tests::http::header_u64;
use tests::ietf::{assert_problem, Ietf};
use tests::random_bytes;

use super::MIB;

#[tokio::test]
async fn offset_mismatch_is_409_with_expected_and_provided_offsets() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(1_000, 3);
    let loc = c.start(bytes.len(), &bytes[..100]).await;
    let mismatch = "mismatching-upload-offset";
    let resp = c.patch(&loc, 150, false, bytes[150..200].to_vec()).await;
    assert_eq!(header_u64(&resp, "upload-offset"), 100);
    let p = assert_problem(resp, StatusCode::CONFLICT, mismatch).await;
    assert_eq!(p["expected-offset"], 100, "{p}");
    assert_eq!(p["provided-offset"], 150, "{p}");
    // Behind the offset is a mismatch too; nothing was appended either time.
    let resp = c.patch(&loc, 50, false, bytes[50..200].to_vec()).await;
    let p = assert_problem(resp, StatusCode::CONFLICT, mismatch).await;
    assert_eq!(p["provided-offset"], 50, "{p}");
    assert_eq!(c.head(&loc).await, (100, "?0".into()));
    c.finish(&loc, 100, &bytes).await;
}

#[tokio::test]
async fn a_restart_mid_upload_resumes_from_head() {
    let (mut server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(5 * MIB + 3, 7);
    let loc = c.start(bytes.len(), &bytes[..MIB + 7]).await;
    let at = MIB + 7;
    let resp = c
        .patch(&loc, at, false, bytes[at..at + 2 * MIB].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    server.restart();
    let c = Ietf::new(&server);
    let (offset, complete) = c.head(&loc).await;
    assert_eq!((offset, complete.as_str()), ((3 * MIB + 7) as u64, "?0"));
    c.finish(&loc, offset as usize, &bytes).await;
}
