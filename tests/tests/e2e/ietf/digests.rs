//! `Repr-Digest`: the SHA-256 of the whole file, said at creation or on the completing
//! append, is checked against what arrived; a wrong one fails the upload, which is then
//! never served.

use reqwest::{Method, StatusCode};
use tests::http::header;
use tests::ietf::{problem, repr_digest, Ietf};
use tests::{random_bytes, sha256_hex};

#[tokio::test]
async fn repr_digest_is_verified_against_the_whole_file() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(200_000, 6);
    let wrong = repr_digest(b"something else");

    // Right, at creation.
    let resp = c
        .req(Method::POST, "/uploads/")
        .header("upload-complete", "?0")
        .header("upload-length", bytes.len().to_string())
        .header("repr-digest", repr_digest(&bytes))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let loc = header(&resp, "location");
    assert_eq!(
        c.native(&loc).await.1["sha256"],
        sha256_hex(&bytes).as_str()
    );
    c.finish(&loc, 0, &bytes).await;

    // Wrong, at creation: the domain fails the upload and never serves it.
    let resp = c
        .req(Method::POST, "/uploads/")
        .header("upload-complete", "?1")
        .header("repr-digest", &wrong)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    let loc = header(&resp, "location");
    let p = problem(resp).await;
    assert_eq!(p["actual_sha256"], sha256_hex(&bytes).as_str(), "{p}");
    let (code, status) = c.native(&loc).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status["state"], "failed", "{status}");
    assert_ne!(c.content(&loc).await.0, StatusCode::OK);
    assert_eq!(c.head_status(&loc).await, StatusCode::GONE);

    // On the completing append only: `digest` says the whole file's SHA-256.
    let complete_with = |loc: String, digest: String| {
        c.append(&loc, 1_000, true)
            .header("repr-digest", digest)
            .body(bytes[1_000..].to_vec())
            .send()
    };
    // Right: completed.
    let loc = c.start(bytes.len(), &bytes[..1_000]).await;
    let resp = complete_with(loc.clone(), repr_digest(&bytes))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    c.assert_completed(&loc, &bytes).await;

    // Wrong: refused, and the upload is removed.
    let loc = c.start(bytes.len(), &bytes[..1_000]).await;
    let resp = complete_with(loc.clone(), wrong).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    assert_eq!(
        problem(resp).await["actual_sha256"],
        sha256_hex(&bytes).as_str()
    );
    assert_eq!(c.content(&loc).await.0, StatusCode::GONE);
    assert_eq!(c.head_status(&loc).await, StatusCode::GONE);
}
