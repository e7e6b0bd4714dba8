//! Upload creation, complete in one request or not, and appends of uneven sizes across
//! chunk boundaries up to the completing one; OPTIONS says appends are welcome.

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tests::http::{header, header_u64};
use tests::ietf::{repr_digest, Ietf, PARTIAL};
use tests::{random_bytes, sha256_hex};

use super::MIB;

#[tokio::test]
async fn create_complete_in_one_request() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(300_001, 1);
    let resp = c
        .req(Method::POST, "/uploads")
        .header("upload-complete", "?1")
        .header(
            "content-disposition",
            "inline; filename=\"plain.bin\"; filename*=UTF-8''r%C3%A9sum%C3%A9.bin",
        )
        .header("content-type", "image/png")
        .body(bytes.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    assert_eq!(header_u64(&resp, "upload-offset"), bytes.len() as u64);
    assert_eq!(header(&resp, "repr-digest"), repr_digest(&bytes));
    assert!(header(&resp, "upload-limit").starts_with("max-size="));
    let loc = header(&resp, "location");
    let id = loc.strip_prefix("/uploads/").expect("location").to_string();
    assert_eq!(
        header(&resp, "content-location"),
        format!("/v1/uploads/{id}")
    );
    let body: Value = resp.json().await.expect("status JSON");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["state"], "completed");
    assert_eq!(body["sha256"], sha256_hex(&bytes).as_str());

    let status = c.assert_completed(&loc, &bytes).await;
    assert_eq!(status["filename"], "résumé.bin", "{status}");
    assert_eq!(status["metadata"]["filetype"], "image/png", "{status}");
    assert_eq!(c.head(&loc).await, (bytes.len() as u64, "?1".into()));

    // An empty file, complete at creation.
    let resp = c.create(true, None, Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let loc = header(&resp, "location");
    c.assert_completed(&loc, &[]).await;

    // OPTIONS says appends are welcome and what the limits are.
    let resp = c.req(Method::OPTIONS, "/uploads/").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "accept-patch"), PARTIAL);
    assert!(header(&resp, "upload-limit").starts_with("max-size="));
}

#[tokio::test]
async fn create_incomplete_then_uneven_appends_then_complete() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    // Past the 8 MiB chunk size, so appends straddle a chunk boundary.
    let bytes = random_bytes(9 * MIB + 4_321, 2);
    let first = 1_000;
    let resp = c
        .create(false, Some(bytes.len()), bytes[..first].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "upload-complete"), "?0");
    assert_eq!(header_u64(&resp, "upload-offset"), first as u64);
    assert_eq!(header_u64(&resp, "upload-length"), bytes.len() as u64);
    let limit = header(&resp, "upload-limit");
    assert!(
        limit.contains("max-size=") && limit.contains("max-age="),
        "{limit}"
    );
    let loc = header(&resp, "location");
    assert_eq!(c.head(&loc).await, (first as u64, "?0".into()));

    let mut at = first;
    for len in [1, 65_537, 8 * MIB - 3, 777] {
        let resp = c.patch(&loc, at, false, bytes[at..at + len].to_vec()).await;
        let code = resp.status();
        assert_eq!(code, StatusCode::NO_CONTENT, "append of {len} at {at}");
        at += len;
        assert_eq!(header_u64(&resp, "upload-offset"), at as u64);
        assert_eq!(header(&resp, "upload-complete"), "?0");
        assert_eq!(c.head(&loc).await, (at as u64, "?0".into()));
    }
    let (code, status) = c.native(&loc).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status["state"], "uploading");
    assert_eq!(status["received_bytes"], at as u64, "{status}");

    let resp = c.patch(&loc, at, true, bytes[at..].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    assert_eq!(header_u64(&resp, "upload-offset"), bytes.len() as u64);
    assert_eq!(header(&resp, "repr-digest"), repr_digest(&bytes));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["state"], "completed");
    c.assert_completed(&loc, &bytes).await;
    assert_eq!(c.head(&loc).await, (bytes.len() as u64, "?1".into()));
}
