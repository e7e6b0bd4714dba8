//! HTTP helpers every end-to-end test uses: one client, digests, bounded polling.

use std::future::Future;
use std::time::{Duration, Instant};

use common::Sha256Digest;
use reqwest::Client;
use sha2::{Digest, Sha256};

/// A client that never goes through a proxy and never waits forever. It keeps connections
/// alive, as real clients do.
pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// SHA-256 of `bytes` as a digest value.
pub fn digest(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
