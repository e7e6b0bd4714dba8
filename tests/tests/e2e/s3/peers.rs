// ---------------------------------------------------------------------------------------
// Servers on one bucket telling each other of their claims (`/internal/v1/peer-notes`).
// ---------------------------------------------------------------------------------------

use super::*;
use hmac::{KeyInit, Mac};

const NOTES: &str = "/internal/v1/peer-notes";
const SIGNATURE: &str = "x-upload-peer-signature";

/// HMAC-SHA256 of `body` under `key`, hex.
fn signed(key: &[u8], body: &str) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A server takes notes only when signed with the bucket's key (`peers/key`, made by the
/// first server on the bucket): unsigned, signed with another key, or altered after
/// signing, a note is refused with 401 problem+json; signed but not a batch of notes, 400;
/// a signed batch, 204.
#[tokio::test]
async fn only_notes_signed_with_the_buckets_key_are_heard() {
    let Some(s3) = s3_or_skip("only_notes_signed_with_the_buckets_key_are_heard").await else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let key = hex::decode(s3_get_text(&s3, &format!("/{}/peers/key", s3.bucket())).await)
        .expect("the bucket's key is hex");
    assert!(key.len() >= 32, "a key of {} bytes", key.len());
    let url = format!("{}{NOTES}", server.url());
    let body = json!({"from": "http://127.0.0.1:9", "notes": []}).to_string();
    let send = |body: String, signature: Option<String>| {
        let mut req = client()
            .post(&url)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(s) = signature {
            req = req.header(SIGNATURE, s);
        }
        req.send()
    };
    let resp = send(body.clone(), None).await.expect("POST");
    problem(resp, 401).await;
    let other_key = [7u8; 32];
    let resp = send(body.clone(), Some(signed(&other_key, &body)))
        .await
        .expect("POST");
    problem(resp, 401).await;
    let altered = body.replace("127.0.0.1:9", "127.0.0.1:10");
    let resp = send(altered, Some(signed(&key, &body)))
        .await
        .expect("POST");
    problem(resp, 401).await;
    let not_notes = r#"{"claims": 1}"#.to_string();
    let resp = send(not_notes.clone(), Some(signed(&key, &not_notes)))
        .await
        .expect("POST");
    problem(resp, 400).await;
    let resp = send(body.clone(), Some(signed(&key, &body)))
        .await
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

/// Notes that do not arrive cost reads, not correctness: one of two servers says the
/// others reach it at an address where nothing listens, so it hears nothing and reads the
/// claims written by the other from the store. An upload sent round-robin over both still
/// completes, verified, with its content intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_hears_nothing_reads_the_claims_instead() {
    let Some(s3) = s3_or_skip("a_server_that_hears_nothing_reads_the_claims_instead").await else {
        return;
    };
    let nowhere = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("address"))
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &["--peer-url", &nowhere]);
    let apis = [Api::new(&a), Api::new(&b)];
    let file = Bytes::from(random_bytes(6 * CS + 123, 140));
    let id = apis[0]
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await
        .id;
    let chunks = chunks_of(&file);
    futures_util::future::join_all(
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| apis[i % 2].put_ok(id, i as u64, c.clone())),
    )
    .await;
    let done = apis[1].complete_ok(id, &file).await;
    assert_eq!(done.sha256, Some(digest(&file)));
    apis[0].assert_content(id, &file).await;
    let heard = r#"upload_peer_notes_total{outcome="heard"}"#;
    assert_eq!(metric(&b, heard).await, 0.0, "b heard nothing");
    assert!(metric(&a, heard).await > 0.0, "a heard of b's claims");
}

/// A server on local disk shares nothing, and has no route for notes.
#[tokio::test]
async fn a_server_on_local_disk_takes_no_notes() {
    let (server, _dir) = Server::start(&[]);
    let resp = client()
        .post(format!("{}{NOTES}", server.url()))
        .body("{}")
        .send()
        .await
        .expect("POST");
    problem(resp, 404).await;
}
