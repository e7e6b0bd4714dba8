//! A server without authentication (the default on loopback) driven by a web page the
//! local user visits: a cross-site request, or a site whose name is made to resolve to
//! 127.0.0.1 (DNS rebinding).

use std::time::Duration;

use reqwest::StatusCode;
use tests::Server;

use super::*;

const TIB: u64 = 1 << 40;

async fn post_create(api: &Api, headers: &[(&str, &str)], body: &str) -> Response {
    let mut r = api.req(Method::POST, "/v1/uploads");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(body.to_string()).send().await.unwrap()
}

/// What a page can send cross-site without asking the server first: a form, or text. A
/// JSON body is taken only as JSON.
#[tokio::test]
async fn json_bodies_must_be_sent_as_json() {
    let (server, _data) = Server::start(&[]);
    let api = Api::new(&server);
    let body = format!(r#"{{"size": {TIB}}}"#);
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let r = post_create(&api, &headers, &body).await;
        problem(
            r,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        )
        .await;
    }
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "application/merge-patch+json",
    ] {
        let r = post_create(&api, &[("content-type", ct)], r#"{"size": 10}"#).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{ct}");
    }
    // A body on complete is JSON too; none at all is fine.
    let id = api.create(0, 65536).await.id;
    let r = api
        .req(Method::POST, &format!("/v1/uploads/{id}/complete"))
        .header("content-type", "text/plain")
        .body(r#"{"sha256": null}"#)
        .send()
        .await
        .unwrap();
    problem(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
    )
    .await;
    let r = api
        .req(Method::POST, &format!("/v1/uploads/{id}/complete"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// DNS rebinding: a page of `rebind.example`, whose name now resolves to 127.0.0.1, is
/// same-origin with the server; the `Host` it sends names its site, which the server does
/// not answer for. The server's own names (addresses, localhost, `--allowed-host`) work.
#[tokio::test]
async fn a_rebound_site_name_is_refused() {
    let (server, _data) = Server::start(&["--allowed-host", "files.example"]);
    let api = Api::new(&server);
    let port = server.addr.rsplit(':').next().unwrap();
    let json = ("content-type", "application/json");
    let body = r#"{"size": 10}"#;
    for host in [format!("rebind.example:{port}"), "127.0.0.1.nip.io".into()] {
        let r = post_create(&api, &[json, ("host", &host)], body).await;
        problem(r, StatusCode::MISDIRECTED_REQUEST, "misdirected-request").await;
        let r = api
            .req(Method::GET, "/v1/admin/events/dead")
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::MISDIRECTED_REQUEST,
            "reads too: {host}"
        );
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "files.example".into(),
    ] {
        let r = post_create(&api, &[json, ("host", &host)], body).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{host}");
    }
    // Probes answer whatever the name.
    let r = api
        .req(Method::GET, "/healthz")
        .header("host", "rebind.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// A page of another site: its state-changing requests carry its `Origin` (or
/// `Sec-Fetch-Site: cross-site`), which a page cannot forge. The server's own page and
/// the origins allowed by `--cors-origin` may.
#[tokio::test]
async fn a_cross_site_page_cannot_change_uploads() {
    let (server, _data) = Server::start(&["--cors-origin", "https://app.example"]);
    let api = Api::new(&server);
    let own = format!("http://{}", server.addr);
    let json = ("content-type", "application/json");
    let body = r#"{"size": 10}"#;
    let victim = api.create(10, 65536).await.id.to_string();
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let r = post_create(&api, &[json, ("origin", origin)], body).await;
        problem(r, StatusCode::FORBIDDEN, "cross-origin-request").await;
        let r = api
            .req(Method::DELETE, &format!("/v1/uploads/{victim}"))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        problem(r, StatusCode::FORBIDDEN, "cross-origin-request").await;
    }
    let r = post_create(&api, &[json, ("sec-fetch-site", "cross-site")], body).await;
    problem(r, StatusCode::FORBIDDEN, "cross-origin-request").await;
    for origin in [own.as_str(), "https://app.example"] {
        let r = post_create(&api, &[json, ("origin", origin)], body).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{origin}");
    }
    assert_eq!(
        api.status(&victim).await.id.to_string(),
        victim,
        "still there"
    );
}

/// Behind a trusted proxy, or under `--public-url`, the server's own pages have the public
/// origin, not the address the proxy reaches the server by; a site name the proxy forwards
/// is checked like a `Host`.
#[tokio::test]
async fn behind_a_proxy_the_public_origin_is_the_servers_own() {
    let json = ("content-type", "application/json");
    let body = r#"{"size": 10}"#;
    // The test's client is on 127.0.0.1, the trusted proxy; it reaches the server by its
    // address (nginx's default `Host`) and forwards what the browser used.
    let (server, _data) = Server::start(&[
        "--trusted-proxy",
        "127.0.0.1",
        "--allowed-host",
        "files.example",
    ]);
    let api = Api::new(&server);
    for public in ["127.0.0.1:8443", "files.example"] {
        let origin = format!("https://{public}");
        let forwarded = [
            json,
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", public),
            ("x-forwarded-for", "192.0.2.7"),
        ];
        let mut page = forwarded.to_vec();
        page.push(("origin", &origin));
        let r = post_create(&api, &page, body).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{origin}");
        let location = r.headers()["location"].to_str().unwrap().to_string();
        assert!(location.starts_with(&format!("{origin}/")), "{location}");
        let mut other = forwarded.to_vec();
        other.push(("origin", "https://evil.example"));
        let r = post_create(&api, &other, body).await;
        problem(r, StatusCode::FORBIDDEN, "cross-origin-request").await;
    }
    // A rebinding site's name, passed on by the proxy.
    let rebound = [
        json,
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "rebind.example"),
        ("origin", "https://rebind.example"),
    ];
    let r = post_create(&api, &rebound, body).await;
    problem(r, StatusCode::MISDIRECTED_REQUEST, "misdirected-request").await;

    // `--public-url`: its host is one the server answers for, its origin the server's own.
    let (server, _data) = Server::start(&["--public-url", "https://uploads.example"]);
    let api = Api::new(&server);
    let named = ("host", "uploads.example");
    let r = post_create(
        &api,
        &[json, named, ("origin", "https://uploads.example")],
        body,
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = post_create(
        &api,
        &[json, named, ("origin", "https://evil.example")],
        body,
    )
    .await;
    problem(r, StatusCode::FORBIDDEN, "cross-origin-request").await;
    let r = post_create(&api, &[json, ("host", "rebind.example")], body).await;
    problem(r, StatusCode::MISDIRECTED_REQUEST, "misdirected-request").await;
}

/// With authentication none of this applies: a browser does not add a bearer token by
/// itself, and a server behind a proxy is reached by any name.
#[tokio::test]
async fn with_tokens_the_site_is_not_checked() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "tok owner\n").unwrap();
    let (server, _data) = Server::start(&["--tokens-file", tokens.to_str().unwrap()]);
    let api = Api::with_token(&server, Some("tok"));
    let headers = [
        ("content-type", "application/json"),
        ("host", "files.behind.a.proxy"),
        ("origin", "https://another.example"),
    ];
    let r = post_create(&api, &headers, r#"{"size": 10}"#).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// The same attacks from real pages in a real browser (headless Chromium): a page of
/// another origin posting the JSON as text (fetch and form) or as JSON, and a page whose
/// site name resolves to 127.0.0.1 (DNS rebinding). Nothing is created.
#[tokio::test]
async fn hostile_pages_in_a_browser_create_nothing() {
    if !tests::webclients::available_or_skip("hostile_pages_in_a_browser_create_nothing") {
        return;
    }
    let (server, data) = Server::start(&[]);
    let script = tests::webclients::scripts_dir().join("cross-site.mjs");
    let url = server.url();
    let result = tokio::task::spawn_blocking(move || {
        tests::webclients::run(
            "node",
            &[
                script.display().to_string(),
                "--url".into(),
                url,
                "--timeout".into(),
                "60".into(),
            ],
            Duration::from_secs(90),
        )
    })
    .await
    .unwrap();
    result.assert_ok();
    let attempts = result.get("attempts").as_array().unwrap().clone();
    assert_eq!(attempts.len(), 4, "{attempts:?}");
    let rebound = attempts.iter().find(|a| a["page"] == "rebinding").unwrap();
    assert_eq!(rebound["status"], 421, "{rebound}");
    let created = std::fs::read_dir(data.path().join("uploads"))
        .unwrap()
        .count();
    assert_eq!(created, 0, "the pages created uploads: {attempts:?}");
}
