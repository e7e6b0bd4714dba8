//! Upload cancellation: DELETE removes the upload from the draft's endpoint and from the
//! native API alike.

use reqwest::{Method, StatusCode};
use tests::ietf::Ietf;

#[tokio::test]
async fn delete_cancels_the_upload() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let loc = c.start(1_000, &[9u8; 300]).await;
    let resp = c.req(Method::DELETE, &loc).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(c.head_status(&loc).await, StatusCode::GONE);
    let resp = c.patch(&loc, 300, false, vec![1u8; 10]).await;
    assert_eq!(resp.status(), StatusCode::GONE);
    assert_eq!(c.native(&loc).await.0, StatusCode::GONE);
    assert_eq!(c.content(&loc).await.0, StatusCode::GONE);
}
