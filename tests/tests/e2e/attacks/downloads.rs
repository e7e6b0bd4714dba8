//! Range and conditional requests on downloads, as RFC 9110 has them (§13.1.2
//! If-None-Match compared weakly, §13.1.5 If-Range compared strongly, §14.1.2 a suffix
//! range longer than the representation), with the same answers on both backends.

use sha2::{Digest, Sha256};
use tests::fixture::Storage;

use super::*;

/// A completed upload of `len` bytes: its id and bytes.
async fn completed(api: &Api, len: usize, chunk: usize) -> (String, Vec<u8>) {
    let file = tests::random_bytes(len, 14);
    let id = api.create(len, chunk).await.id.to_string();
    assert_eq!(
        api.put_chunk(&id, 0, &file).await.status(),
        StatusCode::CREATED
    );
    let done = api
        .req(Method::POST, &format!("/v1/uploads/{id}/complete"))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    (id, file)
}

async fn get(api: &Api, id: &str, headers: &[(&str, &str)]) -> Response {
    let mut r = api.req(Method::GET, &format!("/v1/uploads/{id}/content"));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn ranges_and_conditions_follow_rfc_9110() {
    ranges_and_conditions(Storage::Local).await;
}

#[tokio::test]
async fn ranges_and_conditions_follow_rfc_9110_on_s3() {
    ranges_and_conditions(Storage::S3).await;
}

async fn ranges_and_conditions(storage: Storage) {
    let (server, store) = tests::start_or_skip!(storage, &[]);
    let api = Api::new(&server);
    let (id, file) = completed(&api, 1000, store.chunk(64 * KIB)).await;
    let etag = format!("\"{}\"", hex::encode(Sha256::digest(&file)));

    // A suffix longer than the file: the whole file, as a range.
    let r = get(&api, &id, &[("range", "bytes=-5000")]).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 0-999/1000");
    assert_eq!(&r.bytes().await.unwrap()[..], &file[..]);
    // A suffix of nothing cannot be satisfied.
    let r = get(&api, &id, &[("range", "bytes=-0")]).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */1000");

    // If-Range with the current ETag: the range; with another, or a weak one (If-Range
    // compares strongly): the whole file.
    let r = get(&api, &id, &[("range", "bytes=10-19"), ("if-range", &etag)]).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.unwrap()[..], &file[10..20]);
    let weak = format!("W/{etag}");
    for other in ["\"another\"", weak.as_str()] {
        let r = get(&api, &id, &[("range", "bytes=10-19"), ("if-range", other)]).await;
        assert_eq!(r.status(), StatusCode::OK, "If-Range: {other}");
        assert_eq!(
            &r.bytes().await.unwrap()[..],
            &file[..],
            "If-Range: {other}"
        );
    }

    // If-None-Match compares weakly: the weak form of the ETag, alone or in a list, is 304.
    let list = format!("\"another\", {weak}");
    for tags in [etag.as_str(), weak.as_str(), list.as_str(), "*"] {
        let r = get(&api, &id, &[("if-none-match", tags)]).await;
        assert_eq!(
            r.status(),
            StatusCode::NOT_MODIFIED,
            "If-None-Match: {tags}"
        );
        assert_eq!(r.headers()["etag"], etag.as_str());
        assert!(r.bytes().await.unwrap().is_empty());
    }
    let r = get(&api, &id, &[("if-none-match", "W/\"another\"")]).await;
    assert_eq!(r.status(), StatusCode::OK);
}
