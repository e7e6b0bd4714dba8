//! Authentication and owner isolation against the real server: bearer tokens from a file
//! (reloaded on SIGHUP) and signed JWTs; another owner's upload does not exist on any
//! route, native or tus; anonymous serving is refused off loopback.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::api::UploadStatus;
use hmac::{KeyInit, Mac};
use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde_json::json;
use sha2::Sha256;
use tests::{bin_path, random_bytes, sha256_hex, Server};

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

struct As {
    http: Client,
    base: String,
    token: String,
}

impl As {
    fn new(server: &Server, token: &str) -> Self {
        Self {
            http: client(),
            base: server.url(),
            token: token.to_string(),
        }
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn create(&self, size: usize) -> UploadStatus {
        let resp = self
            .req(Method::POST, "/v1/uploads")
            .json(&json!({"size": size, "chunk_size": 65536}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json().await.unwrap()
    }
}

fn jwt(secret: &[u8], sub: &str, exp: i64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let h = b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let p = b64.encode(format!(r#"{{"sub":"{sub}","exp":{exp}}}"#));
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{h}.{p}").as_bytes());
    format!("{h}.{p}.{}", b64.encode(mac.finalize().into_bytes()))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn owners_are_isolated_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "token-a alice\ntoken-b bob\n").unwrap();
    let data = dir.path().join("data");
    let server = Server::start_in(&data, &["--tokens-file", tokens.to_str().unwrap()]);
    let alice = As::new(&server, "token-a");
    let bob = As::new(&server, "token-b");

    // Public routes need no token; the API does.
    for path in ["/healthz", "/readyz", "/v1", "/"] {
        let resp = client()
            .get(format!("{}{path}", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    let resp = client()
        .post(format!("{}/v1/uploads", server.url()))
        .json(&json!({"size": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let wrong = As::new(&server, "nope");
    let resp = wrong
        .req(
            Method::GET,
            "/v1/uploads/00000000-0000-4000-8000-000000000000",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Alice's native upload, half sent.
    let file = random_bytes(2 * 65536, 1);
    let st = alice.create(file.len()).await;
    let id = st.id;
    let resp = alice
        .req(Method::PUT, &format!("/v1/uploads/{id}/chunks/0"))
        .body(file[..65536].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    // Bob sees nothing of it, exactly as for an id that does not exist.
    let unknown = "00000000-0000-4000-8000-000000000000";
    for target in [id.to_string(), unknown.to_string()] {
        for (method, path, body) in [
            (Method::GET, format!("/v1/uploads/{target}"), None),
            (
                Method::PUT,
                format!("/v1/uploads/{target}/chunks/1"),
                Some(file[65536..].to_vec()),
            ),
            (Method::POST, format!("/v1/uploads/{target}/complete"), None),
            (Method::GET, format!("/v1/uploads/{target}/content"), None),
            (Method::DELETE, format!("/v1/uploads/{target}"), None),
        ] {
            let mut r = bob.req(method.clone(), &path);
            if let Some(b) = body {
                r = r.body(b);
            }
            let resp = r.send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {path}");
            let p: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(p["type"], "/problems/not-found", "{method} {path}");
        }
    }
    // Nothing Bob did changed Alice's upload.
    let resp = alice
        .req(Method::PUT, &format!("/v1/uploads/{id}/chunks/1"))
        .body(file[65536..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = alice
        .req(Method::POST, &format!("/v1/uploads/{id}/complete"))
        .json(&json!({"sha256": sha256_hex(&file)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = bob
        .req(Method::GET, &format!("/v1/uploads/{id}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body = alice
        .req(Method::GET, &format!("/v1/uploads/{id}/content"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.as_ref(), &file[..]);

    // tus: the same rule.
    let resp = alice
        .req(Method::POST, "/files/")
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    for (method, ct) in [
        (Method::HEAD, None),
        (Method::PATCH, Some("application/offset+octet-stream")),
        (Method::DELETE, None),
    ] {
        let mut r = bob
            .req(method.clone(), &loc)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", "0");
        if let Some(ct) = ct {
            r = r.header("content-type", ct).body("0123456789");
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "tus {method}");
    }
    let resp = alice
        .req(Method::HEAD, &loc)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["upload-offset"], "0");

    // The IETF draft's endpoint: the same rule.
    let resp = alice
        .req(Method::POST, "/uploads/")
        .header("upload-draft-interop-version", "8")
        .header("upload-complete", "?0")
        .header("upload-length", "10")
        .body("01234")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    for (method, body) in [
        (Method::HEAD, None),
        (Method::PATCH, Some("56789")),
        (Method::DELETE, None),
    ] {
        let mut r = bob
            .req(method.clone(), &loc)
            .header("upload-draft-interop-version", "8");
        if let Some(body) = body {
            r = r
                .header("content-type", "application/partial-upload")
                .header("upload-offset", "5")
                .header("upload-complete", "?1")
                .body(body);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "IETF {method}");
    }
    let resp = alice
        .req(Method::HEAD, &loc)
        .header("upload-draft-interop-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        resp.headers()["upload-offset"],
        "5",
        "Bob's PATCH appended nothing"
    );
    assert_eq!(resp.headers()["upload-complete"], "?0");

    // Idempotency keys are per owner.
    let key_create = |who: &As| {
        who.req(Method::POST, "/v1/uploads")
            .header("idempotency-key", "same-key")
            .json(&json!({"size": 5}))
            .send()
    };
    let a: UploadStatus = key_create(&alice).await.unwrap().json().await.unwrap();
    let b: UploadStatus = key_create(&bob).await.unwrap().json().await.unwrap();
    assert_ne!(a.id, b.id);

    // SIGHUP reloads the tokens file: Bob's token goes, Carol's comes.
    std::fs::write(&tokens, "token-a alice\ntoken-c carol\n").unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let carol = As::new(&server, "token-c");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = carol
            .req(Method::GET, &format!("/v1/uploads/{unknown}"))
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tokens file was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = bob
        .req(Method::GET, &format!("/v1/uploads/{unknown}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn signed_tokens_are_checked() {
    let secret = "a-long-test-secret";
    let (server, _dir) = Server::start(&["--token-secret", secret]);
    let now = unix_now();
    let alice = As::new(&server, &jwt(secret.as_bytes(), "alice", now + 600));
    let st = alice.create(3).await;
    // The same owner with a freshly minted token sees it.
    let again = As::new(&server, &jwt(secret.as_bytes(), "alice", now + 900));
    let resp = again
        .req(Method::GET, &format!("/v1/uploads/{}", st.id))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Another subject does not.
    let bob = As::new(&server, &jwt(secret.as_bytes(), "bob", now + 600));
    let resp = bob
        .req(Method::GET, &format!("/v1/uploads/{}", st.id))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Expired, signed with another secret, and tampered tokens are refused.
    let expired = jwt(secret.as_bytes(), "alice", now - 1);
    let foreign = jwt(b"another secret", "alice", now + 600);
    let good = jwt(secret.as_bytes(), "alice", now + 600);
    let (h, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!(r#"{{"sub":"bob","exp":{}}}"#, now + 600));
    let tampered = format!("{h}.{forged_claims}.{sig}");
    for bad in [expired, foreign, tampered, "not.a.jwt".to_string()] {
        let who = As::new(&server, &bad);
        let resp = who
            .req(Method::GET, &format!("/v1/uploads/{}", st.id))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }
}

#[test]
fn anonymous_serving_off_loopback_needs_consent() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin_path("upload-server"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without authentication"),
        "{err}"
    );

    // With consent it starts, and says so loudly.
    let mut child = Command::new(bin_path("upload-server"))
        .args(["--listen", "0.0.0.0:0", "--allow-anonymous", "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::{BufRead, BufReader};
    // The server logs on stdout.
    let stdout = child.stdout.take().unwrap();
    let mut warned = false;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        warned |= line.contains("without authentication");
        if line.contains("listening on http://") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned);
}

#[test]
fn the_cli_sends_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "token-a alice\ntoken-b bob\n").unwrap();
    let server = Server::start_in(
        &dir.path().join("data"),
        &["--tokens-file", tokens.to_str().unwrap()],
    );
    let file = dir.path().join("f.bin");
    let bytes = random_bytes(300_000, 9);
    std::fs::write(&file, &bytes).unwrap();
    let uploader = |token: Option<&str>, args: &[&str]| {
        let mut c = Command::new(bin_path("uploader"));
        c.args(args)
            .arg("--server")
            .arg(server.url())
            .env("UPLOADER_STATE_DIR", dir.path().join("state"))
            .env_remove("UPLOADER_TOKEN")
            .stdin(Stdio::null());
        if let Some(t) = token {
            c.env("UPLOADER_TOKEN", t);
        }
        c.output().unwrap()
    };
    // No token: a clear one-line error, exit 1, nothing created.
    let out = uploader(None, &["upload", "--json", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Bearer"), "{stdout}");
    // Alice's token: uploaded and verified.
    let out = uploader(
        Some("token-a"),
        &["upload", "--json", file.to_str().unwrap()],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "completed")
        .expect("completed event");
    assert_eq!(done["sha256"], sha256_hex(&bytes));
    let id = done["id"].as_str().unwrap().to_string();
    // Bob cannot see it.
    let out = uploader(Some("token-b"), &["status", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no upload"));
    let out = uploader(Some("token-a"), &["status", &id]);
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test]
async fn signed_download_urls_need_no_token_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "token-a alice\ntoken-b bob\n").unwrap();
    let server = Server::start_in(
        &dir.path().join("data"),
        &["--tokens-file", tokens.to_str().unwrap()],
    );
    let alice = As::new(&server, "token-a");
    let bob = As::new(&server, "token-b");
    let mut ids = Vec::new();
    for seed in [1, 2] {
        let file = random_bytes(1000, seed);
        let st = alice.create(file.len()).await;
        let r = alice
            .req(Method::PUT, &format!("/v1/uploads/{}/chunks/0", st.id))
            .body(file.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = alice
            .req(Method::POST, &format!("/v1/uploads/{}/complete", st.id))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        ids.push((st.id, file));
    }
    let (id, file) = &ids[0];
    let mint = |who: &As, id: common::UploadId, ttl: u64| {
        who.req(Method::POST, &format!("/v1/uploads/{id}/content-url"))
            .json(&json!({"ttl_s": ttl}))
            .send()
    };
    // Only the owner mints one.
    assert_eq!(
        mint(&bob, *id, 60).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    // For at least a second and at most seven days.
    for ttl in [0, 7 * 24 * 3600 + 1, 1 << 63] {
        let r = mint(&alice, *id, ttl).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "ttl_s {ttl}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let signed: common::api::ContentUrl =
        mint(&alice, *id, 60).await.unwrap().json().await.unwrap();
    assert!(
        signed
            .url
            .starts_with(&format!("/v1/uploads/{id}/content?")),
        "{}",
        signed.url
    );
    // Anyone with the URL downloads, without a token.
    let anon = client();
    let got = anon
        .get(format!("{}{}", server.url(), signed.url))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), &file[..]);
    // Tampered, moved to another upload, or with another expiry: refused.
    let other = ids[1].0;
    for bad in [
        signed.url.replace("sig=", "sig=00"),
        signed.url.replace(&id.to_string(), &other.to_string()),
        {
            let exp: i64 = signed
                .url
                .split("exp=")
                .nth(1)
                .unwrap()
                .split('&')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            signed
                .url
                .replace(&format!("exp={exp}"), &format!("exp={}", exp + 1000))
        },
    ] {
        let r = anon
            .get(format!("{}{bad}", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }
    // A signed URL opens nothing else.
    let status_path = signed.url.replace("/content?", "?");
    let r = anon
        .get(format!("{}{status_path}", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // It expires.
    let short: common::api::ContentUrl = mint(&alice, *id, 1).await.unwrap().json().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = anon
            .get(format!("{}{}", server.url(), short.url))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(r.status(), StatusCode::OK);
        assert!(Instant::now() < deadline, "the signed URL did not expire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
