//! Requests the endpoint does not take, and how it says so: the draft's problem types
//! (completed-upload, inconsistent-upload-length) as each interop version expects them,
//! interop versions it does not speak, a length past the limit, the appends' media type,
//! a `Content-Digest` that does not match, and ids that name no upload.

use reqwest::{Method, StatusCode};
use tests::http::{header, header_u64};
use tests::ietf::{assert_problem, problem, repr_digest, Ietf, INTEROP};
use tests::random_bytes;

#[tokio::test]
async fn appending_to_a_completed_upload_is_refused() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(2_000, 4);
    // Created with ?0, but the whole length arrives: the upload is complete.
    let resp = c.create(false, Some(bytes.len()), bytes.clone()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    let loc = header(&resp, "location");
    assert_eq!(c.head(&loc).await, (2_000, "?1".into()));

    // An empty append that does not complete: completed-upload.
    let resp = c.patch(&loc, 2_000, false, Vec::new()).await;
    assert_eq!(header(&resp, "upload-complete"), "?1");
    assert_problem(resp, StatusCode::BAD_REQUEST, "completed-upload").await;
    // A non-empty one: in the current draft an inconsistent length ...
    let resp = c.patch(&loc, 2_000, false, vec![1, 2, 3]).await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "inconsistent-upload-length").await;
    // ... and completed-upload for draft -05 clients (interop version 6).
    let resp = c
        .append_v(&loc, 2_000, true, "6")
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::BAD_REQUEST, "completed-upload").await;
    // The client's own empty completing append is answered like the completing request.
    c.finish(&loc, 2_000, &bytes).await;
}

#[tokio::test]
async fn requests_the_endpoint_does_not_take() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    // No Upload-Complete; an interop version this server does not speak.
    let resp = c
        .req(Method::POST, "/uploads/")
        .header("upload-length", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = c
        .req_v(Method::POST, "/uploads/", "3")
        .header("upload-complete", "?1")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(problem(resp).await["detail"]
        .as_str()
        .unwrap()
        .contains("5, 6, 7, 8"));
    // Larger than --max-upload-size: 413 with the limit.
    let resp = c.create(false, Some(1 << 41), Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        header(&resp, "upload-limit"),
        format!("max-size={}", 1u64 << 40)
    );
    // Appends must be application/partial-upload (draft -03 clients send no type).
    let loc = c.start(10, b"abc").await;
    let typed = |v: &str, content_type: Option<&str>| {
        let mut r = c
            .req_v(Method::PATCH, &loc, v)
            .header("upload-offset", "3")
            .header("upload-complete", "?0");
        if let Some(t) = content_type {
            r = r.header("content-type", t);
        }
        r.body("de").send()
    };
    let resp = typed(INTEROP, Some("application/offset+octet-stream"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let resp = typed("5", None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_u64(&resp, "upload-offset"), 5);
    // A Content-Digest that does not match the body: 400, nothing appended.
    let digested = |digest: String| {
        c.append(&loc, 5, false)
            .header("content-digest", digest)
            .body("fg")
            .send()
    };
    let resp = digested(repr_digest(b"other")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(c.head(&loc).await, (5, "?0".into()));
    let resp = digested(repr_digest(b"fg")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_u64(&resp, "upload-offset"), 7);
    // An id that is not one, and an unknown one.
    for p in [
        "/uploads/nope",
        "/uploads/00000000-0000-4000-8000-000000000000",
    ] {
        assert_eq!(c.head_status(p).await, StatusCode::NOT_FOUND, "{p}");
    }
}
