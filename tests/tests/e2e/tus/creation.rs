//! An upload's beginning and end: creation-with-upload (part of the file in the POST), an
//! empty upload complete at creation, and termination, after which the upload is gone from
//! tus and from the native API alike.

use reqwest::{Method, StatusCode};
use tests::http::{client, header};
use tests::random_bytes;
use tests::tus::{Tus, VERSION};

#[tokio::test]
async fn creation_with_upload_zero_length_and_termination() {
    let (server, _store) = start!(&[]);
    let tus = Tus::new(&server);
    let file = random_bytes(1_000_000, 13);
    // creation-with-upload: part of the file in the POST.
    let path = tus.create_with(Some(file.len()), &file[..400_000]).await;
    assert_eq!(tus.offset(&path).await, 400_000);
    tus.patch_ok(&path, 400_000, &file[400_000..]).await;
    tus.assert_completed(&path, &file).await;

    // A zero-length upload is complete at once.
    let empty = tus.create(0, "").await;
    tus.assert_completed(&empty, b"").await;

    // Termination: 204, then gone everywhere.
    let path = tus.create(10, "").await;
    let resp = tus.req(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "tus-resumable"), VERSION);
    assert_eq!(tus.head(&path).await.status(), StatusCode::GONE);
    let resp = tus.patch(&path, 0, b"0123456789".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::GONE);
    let id = path.trim_start_matches("/files/");
    let resp = client()
        .get(format!("{}/v1/uploads/{id}", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GONE);
}
