//! Quota gaps: uploads whose length is not known yet, and anonymous clients sharing one
//! quota.

use std::net::IpAddr;

use futures_util::stream;
use reqwest::StatusCode;
use tests::{random_bytes, Server};

use super::*;

const OCTETS: &str = "application/offset+octet-stream";

fn tus(api: &Api, method: Method, path: &str) -> RequestBuilder {
    api.req(method, path).header("tus-resumable", "1.0.0")
}

async fn tus_offset(api: &Api, path: &str) -> u64 {
    let r = tus(api, Method::HEAD, path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.headers()["upload-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn tus_patch(api: &Api, path: &str, offset: u64, body: reqwest::Body) -> Response {
    tus(api, Method::PATCH, path)
        .header("content-type", OCTETS)
        .header("upload-offset", offset.to_string())
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The review's reproduction, scaled down: under `--quota 1MiB`, a tus upload of deferred
/// length (`Upload-Defer-Length: 1`) stored as much as its client sent, counted as 0
/// bytes. Its bytes now count as they are stored: an append past the quota is refused
/// before it is written (or cut where it passes the quota, when its length is not said),
/// and so is a length above the quota.
#[tokio::test]
async fn deferred_length_uploads_count_against_the_quota() {
    let (server, _data) = Server::start(&["--quota", "1MiB"]);
    let api = Api::new(&server);
    let created = tus(&api, Method::POST, "/files/")
        .header("upload-defer-length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let path = created.headers()["location"].to_str().unwrap().to_string();
    let half = random_bytes(512 * KIB, 1);
    let r = tus_patch(&api, &path, 0, half.clone().into()).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Its 512 KiB count: another upload cannot take the whole quota.
    let other = api
        .try_create(json!({"size": MIB, "chunk_size": 65536}))
        .await;
    problem(other, StatusCode::INSUFFICIENT_STORAGE, "quota-exceeded").await;
    // An append of known length past the quota is refused before it is written.
    let r = tus_patch(
        &api,
        &path,
        512 * KIB as u64,
        random_bytes(768 * KIB, 2).into(),
    )
    .await;
    problem(r, StatusCode::INSUFFICIENT_STORAGE, "quota-exceeded").await;
    assert_eq!(tus_offset(&api, &path).await, 512 * KIB as u64);
    // One of unknown length (chunked) is cut where it would pass the quota.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = (0..32)
        .map(|i| Ok(random_bytes(64 * KIB, 10 + i)))
        .collect();
    let body = reqwest::Body::wrap_stream(stream::iter(pieces));
    let r = tus_patch(&api, &path, 512 * KIB as u64, body).await;
    problem(r, StatusCode::INSUFFICIENT_STORAGE, "quota-exceeded").await;
    let offset = tus_offset(&api, &path).await;
    assert!(
        (512 * KIB as u64..=MIB as u64).contains(&offset),
        "the cut append kept what fits the quota: offset {offset}"
    );
    // A length above the quota is refused, and the upload stays of deferred length.
    let r = tus(&api, Method::PATCH, &path)
        .header("content-type", OCTETS)
        .header("upload-offset", offset.to_string())
        .header("upload-length", (2 * MIB).to_string())
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::INSUFFICIENT_STORAGE, "quota-exceeded").await;
    let head = tus(&api, Method::HEAD, &path).send().await.unwrap();
    assert_eq!(head.headers()["upload-defer-length"], "1");
    // A length within it completes the upload.
    let r = tus(&api, Method::PATCH, &path)
        .header("content-type", OCTETS)
        .header("upload-offset", offset.to_string())
        .header("upload-length", offset.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

/// The same through the IETF draft: an upload created without a length counts what it
/// stores.
#[tokio::test]
async fn ietf_uploads_without_a_length_count_against_the_quota() {
    let (server, _data) = Server::start(&["--quota", "1MiB"]);
    let api = Api::new(&server);
    let ietf = |method: Method, path: &str| {
        api.req(method, path)
            .header("upload-draft-interop-version", "8")
    };
    let created = ietf(Method::POST, "/uploads/")
        .header("upload-complete", "?0")
        .body(random_bytes(768 * KIB, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let path = created.headers()["location"].to_str().unwrap().to_string();
    let r = ietf(Method::PATCH, &path)
        .header("content-type", "application/partial-upload")
        .header("upload-offset", (768 * KIB).to_string())
        .header("upload-complete", "?0")
        .body(random_bytes(512 * KIB, 4))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::INSUFFICIENT_STORAGE, "quota-exceeded").await;
    let head = ietf(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(
        head.headers()["upload-offset"],
        (768 * KIB).to_string().as_str()
    );
}

/// Anonymous clients (no authentication) used to be one owner: one client reserving the
/// quota locked every other out. Each client address now has a quota of its own.
#[tokio::test]
async fn each_anonymous_client_has_its_own_quota() {
    let (server, _data) = Server::start(&["--quota", "1MiB", "--max-open-uploads", "2"]);
    let from = |ip: &str| Api {
        http: Client::builder()
            .no_proxy()
            .local_address(ip.parse::<IpAddr>().unwrap())
            .build()
            .unwrap(),
        base: server.url(),
        token: None,
    };
    let greedy = from("127.0.0.1");
    greedy.create(MIB, 65536).await;
    let more = greedy
        .try_create(json!({"size": 1, "chunk_size": 65536}))
        .await;
    problem(more, StatusCode::INSUFFICIENT_STORAGE, "quota-exceeded").await;
    let other = from("127.0.0.2");
    other.create(MIB, 65536).await;
    other.create(0, 65536).await;
    let third = other
        .try_create(json!({"size": 0, "chunk_size": 65536}))
        .await;
    problem(
        third,
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-open-uploads",
    )
    .await;
}
