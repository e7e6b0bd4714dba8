//! Creates under an `Idempotency-Key`: a refused one gives its key up, and one client's
//! refused retries never hold up another owner's creates.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tests::Server;

use super::*;

/// A server with two owners, `alice` and `bob`, each allowed one open upload.
fn two_owners(extra: &[&str]) -> (Server, [tempfile::TempDir; 2]) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "tok-alice alice\ntok-bob bob\n").unwrap();
    let mut args = vec![
        "--tokens-file",
        tokens.to_str().unwrap(),
        "--max-open-uploads",
        "1",
    ];
    args.extend_from_slice(extra);
    let (server, data) = Server::start(&args);
    (server, [dir, data])
}

async fn create_with_key(api: &Api, key: &str, size: usize) -> Response {
    api.req(Method::POST, "/v1/uploads")
        .header("idempotency-key", key)
        .json(&json!({"size": size, "chunk_size": 65536}))
        .send()
        .await
        .unwrap()
}

/// A create refused at the open-upload limit (429) leaves its key free: once there is
/// room, the client's next create under that key (even with another body) is a new
/// upload, not a "key reused" refusal.
#[tokio::test]
async fn a_refused_create_gives_its_key_up() {
    let (server, _dir) = two_owners(&[]);
    let alice = Api::with_token(&server, Some("tok-alice"));
    let first = alice.create(65536, 65536).await.id.to_string();
    let refused = create_with_key(&alice, "k-1", 1 << 20).await;
    problem(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-open-uploads",
    )
    .await;
    assert_eq!(alice.delete(&first).await.status(), StatusCode::NO_CONTENT);
    let again = create_with_key(&alice, "k-1", 2 << 20).await;
    assert_eq!(
        again.status(),
        StatusCode::CREATED,
        "{}",
        again.text().await.unwrap()
    );
    // The key now names that upload: the same request answers it again.
    let repeat = create_with_key(&alice, "k-1", 2 << 20).await;
    assert_eq!(repeat.status(), StatusCode::OK);
}

/// One client retrying refused creates under 20 keys (as the CLI does on 429) does not
/// hold up another owner's create: it used to wait 2 s per retry in a server-wide lock
/// (40 s here). The bound is far above a create's time and below one such wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_retries_do_not_stall_other_owners() {
    let (server, _dir) = two_owners(&["--rate-limit", "0"]);
    let alice = Api::with_token(&server, Some("tok-alice"));
    let bob = Api::with_token(&server, Some("tok-bob"));
    alice.create(65536, 65536).await;
    let retries: Vec<_> = (0..20)
        .map(|k| {
            let alice = Api::with_token(&server, Some("tok-alice"));
            tokio::spawn(async move {
                for _ in 0..3 {
                    let r = create_with_key(&alice, &format!("retry-{k}"), 1 << 20).await;
                    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
                }
            })
        })
        .collect();
    let started = Instant::now();
    let r = create_with_key(&bob, "bob-1", 1 << 20).await;
    let took = started.elapsed();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(
        took < Duration::from_secs(1),
        "bob's create waited {took:?} behind alice's retries"
    );
    for t in retries {
        t.await.unwrap();
    }
}
