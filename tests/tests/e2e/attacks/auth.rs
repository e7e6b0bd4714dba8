//! Tokens and signed URLs: what a revoked or long-lived token can still do, guessing
//! tokens at speed, and who reads the metrics.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use hmac::{KeyInit, Mac};
use reqwest::StatusCode;
use sha2::Sha256;
use tests::{random_bytes, Server};

use super::*;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn jwt(secret: &[u8], claims: Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let h = b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let p = b64.encode(claims.to_string());
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{h}.{p}").as_bytes());
    format!("{h}.{p}.{}", b64.encode(mac.finalize().into_bytes()))
}

/// A completed upload of `api`'s owner; returns its id.
async fn completed(api: &Api) -> String {
    let bytes = random_bytes(1000, 5);
    let id = api.create(bytes.len(), 65536).await.id.to_string();
    assert_eq!(
        api.put_chunk(&id, 0, &bytes).await.status(),
        StatusCode::CREATED
    );
    let done = api
        .req(Method::POST, &format!("/v1/uploads/{id}/complete"))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    id
}

async fn mint(api: &Api, id: &str) -> Value {
    let r = api
        .req(Method::POST, &format!("/v1/uploads/{id}/content-url"))
        .json(&json!({"ttl_s": 7 * 24 * 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// The review found signed download URLs working for up to 7 days after their owner's
/// token was revoked. A URL minted with a tokens-file token works only while the file
/// has that token.
#[tokio::test]
async fn a_revoked_tokens_download_urls_stop_working() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "tok-alice alice\ntok-bob bob\n").unwrap();
    let (server, _data) = Server::start(&["--tokens-file", tokens.to_str().unwrap()]);
    let alice = Api::with_token(&server, Some("tok-alice"));
    let id = completed(&alice).await;
    let url = mint(&alice, &id).await["url"].as_str().unwrap().to_string();
    let anyone = Api::new(&server);
    let get = || anyone.req(Method::GET, &url).send();
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);

    std::fs::write(&tokens, "tok-bob bob\n").unwrap();
    server.send_signal("HUP");
    eventually(
        Duration::from_secs(10),
        "the tokens file is reloaded",
        || async {
            alice
                .req(Method::GET, &format!("/v1/uploads/{id}"))
                .send()
                .await
                .unwrap()
                .status()
                == StatusCode::UNAUTHORIZED
        },
    )
    .await;
    let r = get().await.unwrap();
    problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

/// A download URL minted with a JWT expires with the JWT; a JWT may not live longer than
/// `--jwt-max-lifetime` (24 h by default), and a time claim must be an integer.
#[tokio::test]
async fn jwts_are_bounded_in_time() {
    let secret = b"a-long-test-secret";
    let (server, _data) = Server::start(&["--token-secret", "a-long-test-secret"]);
    let now = unix_now();
    let short = jwt(secret, json!({"sub": "alice", "exp": now + 600}));
    let alice = Api::with_token(&server, Some(&short));
    let id = completed(&alice).await;
    let minted: common::api::ContentUrl = serde_json::from_value(mint(&alice, &id).await).unwrap();
    let exp = minted.expires_at.unix_timestamp();
    assert!(exp <= now + 600, "the URL outlives the JWT: {exp}");
    let r = Api::new(&server)
        .req(Method::GET, &minted.url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let refused = [
        json!({"sub": "alice", "exp": now + 8 * 24 * 3600}),
        json!({"sub": "alice", "exp": now + 600, "iat": now - 2 * 24 * 3600}),
        json!({"sub": "alice", "exp": now + 600, "nbf": (now - 10) as f64 + 0.5}),
        json!({"sub": "alice", "exp": now + 600, "nbf": (now - 10).to_string()}),
    ];
    for claims in refused {
        let who = Api::with_token(&server, Some(&jwt(secret, claims.clone())));
        let r = who
            .req(Method::GET, &format!("/v1/uploads/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{claims}");
    }
    let ok = jwt(
        secret,
        json!({"sub": "alice", "exp": now + 3600, "iat": now, "nbf": now - 5}),
    );
    let r = Api::with_token(&server, Some(&ok))
        .req(Method::GET, &format!("/v1/uploads/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Failed authentications are limited per client address: past the allowance, that
/// address may not authenticate at all for a while (even with a good token), so tokens
/// cannot be guessed at speed; other addresses are not affected.
#[tokio::test]
async fn guessing_tokens_is_slowed_down_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "tok-alice alice\n").unwrap();
    let (server, _data) = Server::start(&[
        "--tokens-file",
        tokens.to_str().unwrap(),
        "--auth-failures-per-minute",
        "5",
    ]);
    let from = |ip: &str, token: &str| Api {
        http: Client::builder()
            .no_proxy()
            .local_address(ip.parse::<IpAddr>().unwrap())
            .build()
            .unwrap(),
        base: server.url(),
        token: Some(token.into()),
    };
    for guess in 0..5 {
        let r = from("127.0.0.1", &format!("guess-{guess}"))
            .req(
                Method::GET,
                "/v1/uploads/00000000-0000-4000-8000-000000000000",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let limited = from("127.0.0.1", "guess-5")
        .req(Method::GET, "/v1/uploads")
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    // Even the right token, from that address.
    let r = from("127.0.0.1", "tok-alice")
        .try_create(json!({"size": 1}))
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = from("127.0.0.2", "tok-alice")
        .try_create(json!({"size": 1}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// `/metrics` is public by default (like `/healthz`); `--metrics-admin-only` gives it to
/// the admin owners, and needs authentication to start.
#[tokio::test]
async fn metrics_can_be_kept_to_admins() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "tok-alice alice\ntok-admin ops\n").unwrap();
    let (server, _data) = Server::start(&[
        "--tokens-file",
        tokens.to_str().unwrap(),
        "--admin-owner",
        "ops",
        "--metrics-admin-only",
    ]);
    let metrics = |token: Option<&str>| {
        let api = Api::with_token(&server, token);
        async move { api.req(Method::GET, "/metrics").send().await.unwrap() }
    };
    problem(
        metrics(None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    problem(
        metrics(Some("tok-alice")).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let r = metrics(Some("tok-admin")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("# TYPE"));

    let (open, _d) = Server::start(&["--tokens-file", tokens.to_str().unwrap()]);
    let r = Api::new(&open)
        .req(Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "public by default");

    let out = std::process::Command::new(tests::bin_path("upload-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-admin-only",
            "--data-dir",
        ])
        .arg(dir.path().join("d"))
        .env_remove("UPLOAD_SERVER_LISTEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--metrics-admin-only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
