//! HTTP helpers every end-to-end test uses: one client, digests, bounded polling, headers.

use std::future::Future;
use std::time::{Duration, Instant};

use common::Sha256Digest;
use reqwest::{Client, Response};
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

/// The value of header `name` of `resp`, if it has one; panics on a value that is not
/// ASCII, which no header these tests read may carry.
pub fn header_opt(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_string())
}

/// The value of header `name` of `resp`; panics, naming the header and the response,
/// when it is missing.
pub fn header(resp: &Response, name: &str) -> String {
    header_opt(resp, name).unwrap_or_else(|| panic!("no {name} header in {resp:?}"))
}

/// The value of header `name` of `resp` as an integer (an offset or a length).
pub fn header_u64(resp: &Response, name: &str) -> u64 {
    let value = header(resp, name);
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name}: {value} is not an integer"))
}

/// `GET {base}/v1/uploads/{id}{rest}`: the native API's view of an upload that another
/// protocol (tus, the IETF draft) made, `rest` empty for its status or `/content`.
pub async fn get_native(http: &Client, base: &str, id: &str, rest: &str) -> Response {
    http.get(format!("{base}/v1/uploads/{id}{rest}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /v1/uploads/{id}{rest}: {e}"))
}
