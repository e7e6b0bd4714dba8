//! The checksum extension, with the offset and length checks every PATCH passes first: a
//! stale offset is 409, a wrong checksum 460, a body past the length 400, and none of them
//! appends anything; right sha256, sha1 and md5 checksums are taken.

use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tests::random_bytes;
use tests::tus::{b64, Tus};

#[tokio::test]
async fn offsets_checksums_and_lengths() {
    let (server, _store) = start!(&[]);
    let tus = Tus::new(&server);
    let file = random_bytes(300_000, 12);
    let path = tus.create(file.len(), "").await;

    // A stale offset: 409, nothing appended.
    let resp = tus.patch(&path, 5, file[5..10].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(tus.offset(&path).await, 0);

    // A PATCH of file[a..b] with `Upload-Checksum: {alg} {digest}`.
    let checked = |alg: &str, digest: Vec<u8>, a: usize, b: usize| {
        tus.append(&path, a)
            .header("upload-checksum", format!("{alg} {}", b64(&digest)))
            .body(file[a..b].to_vec())
            .send()
    };
    // Right sha256: appended.
    let sha256 = Sha256::digest(&file[..100_000]).to_vec();
    let resp = checked("sha256", sha256, 0, 100_000).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(tests::http::header(&resp, "upload-offset"), "100000");
    // Wrong sha1: 460, nothing appended.
    let resp = checked("sha1", vec![0; 20], 100_000, 200_000)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 460);
    assert_eq!(tus.offset(&path).await, 100_000);
    // Right sha1 and md5.
    let sha1 = {
        use sha1::Digest as _;
        sha1::Sha1::digest(&file[100_000..200_000]).to_vec()
    };
    let resp = checked("sha1", sha1, 100_000, 200_000).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let md5 = {
        use md5::Digest as _;
        md5::Md5::digest(&file[200_000..250_000]).to_vec()
    };
    let resp = checked("md5", md5, 200_000, 250_000).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // Past the length: refused, nothing appended.
    let mut long = file[250_000..].to_vec();
    long.push(0);
    let resp = tus.patch(&path, 250_000, long).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(tus.offset(&path).await, 250_000);
    tus.patch_ok(&path, 250_000, &file[250_000..]).await;
    tus.assert_completed(&path, &file).await;
}
