//! Behind a real reverse proxy: Debian's nginx terminating TLS (HTTP/2 and HTTP/1.1
//! towards clients) in front of `upload-server` (HTTP/1.1 upstream, request bodies
//! streamed, no size limit), with the configuration the README gives
//! (`tests::nginx::site_config`). Through it the CLI (killed and resumed), tus-js-client
//! (tus and the IETF draft), the built-in page in Chromium, and plain HTTP/1.1 and HTTP/2
//! clients complete uploads; the URLs the server hands out are the public `https://`
//! ones; and no `104` reaches a client (nginx 1.22 would pass one on as the final answer).
//!
//! Needs `scripts/nginx/setup.sh install` (and the web clients for two of the tests);
//! without them the tests print `SKIPPED …`, unless `NGINX_REQUIRED=1` /
//! `WEBCLIENTS_REQUIRED=1`.

use std::time::Duration;

use reqwest::{StatusCode, Version};
use serde_json::Value;
use tests::nginx::{self, Nginx};
use tests::tls::{ServerCert, TestCa};
use tests::{webclients, Server};

use crate::cli::support::{random_file, Cli};

const MIB: usize = 1 << 20;

/// nginx with a certificate of a throwaway CA, in front of a server that trusts it as
/// its proxy.
struct Setup {
    nginx: Nginx,
    _server: Server,
    ca: TestCa,
    cert: ServerCert,
    ca_file: std::path::PathBuf,
    _certs: tempfile::TempDir,
    _data: tempfile::TempDir,
}

impl Setup {
    fn start(args: &[&str]) -> Setup {
        let ca = TestCa::new("proxy test CA");
        let cert = ca.issue(&[]);
        let certs = tempfile::tempdir().unwrap();
        let ca_file = ca.write(certs.path(), "ca.pem");
        let (cert_file, key_file) = cert.write(certs.path(), "nginx");
        let data = tempfile::tempdir().unwrap();
        let mut all = vec!["--trusted-proxy", "127.0.0.1"];
        all.extend_from_slice(args);
        let server = Server::start_in(data.path(), &all);
        let nginx = Nginx::start(&cert_file, &key_file, &server.addr);
        Setup {
            nginx,
            _server: server,
            ca,
            cert,
            ca_file,
            _certs: certs,
            _data: data,
        }
    }

    fn url(&self) -> String {
        self.nginx.url()
    }

    fn client(&self) -> reqwest::Client {
        tests::tls::client_trusting(&self.ca)
    }

    fn h1_client(&self) -> reqwest::Client {
        tests::tls::client_builder(&self.ca)
            .http1_only()
            .build()
            .unwrap()
    }
}

#[test]
fn the_cli_uploads_through_nginx_and_resumes_after_being_killed() {
    if !nginx::available_or_skip("nginx_cli_kill_resume") {
        return;
    }
    let s = Setup::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let size = 48 * MIB;
    let (path, sha) = random_file(dir.path(), "proxied.bin", size, 71);
    let p = path.to_str().unwrap();
    let url = s.url();
    let ca = s.ca_file.to_str().unwrap();
    let args = [
        "upload",
        p,
        "--server",
        &url,
        "--cacert",
        ca,
        "--chunk-size",
        "1MiB",
        "-j",
        "4",
        "--json",
    ];
    let mut first_args = args.to_vec();
    first_args.extend(["--limit-rate", "16MiB/s"]);
    let first = cli.run_signalled(&first_args, "KILL", |e| {
        e["event"] == "progress" && e["bytes"].as_u64().unwrap_or(0) >= (size / 3) as u64
    });
    assert_eq!(first.code, -1, "killed\n{}", first.dump());
    let second = cli.run(&args);
    second.expect_code(0);
    let done = second.one("completed");
    assert_eq!(done["sha256"], sha.as_str(), "{}", second.dump());
    assert!(
        second.one("started")["resumed_bytes"].as_u64().unwrap() >= (size / 4) as u64,
        "{}",
        second.dump()
    );
    let id = done["id"].as_str().unwrap();
    assert_eq!(
        done["url"].as_str().unwrap(),
        format!("{url}/v1/uploads/{id}/content")
    );
    // Every request went through nginx, and none was refused there.
    let log = s.nginx.access_log();
    assert!(log.contains("PUT /v1/uploads/"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_are_public_and_ietf_uploads_get_no_104_through_nginx() {
    if !nginx::available_or_skip("nginx_public_urls_ietf") {
        return;
    }
    let s = Setup::start(&[]);
    let url = s.url();
    for (client, version) in [
        (s.client(), Version::HTTP_2),
        (s.h1_client(), Version::HTTP_11),
    ] {
        // Native: Location and the signed download URL.
        let resp = client
            .post(format!("{url}/v1/uploads"))
            .json(&serde_json::json!({"size": 5, "filename": "a.txt"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), StatusCode::CREATED);
        let loc = resp.headers()["location"].to_str().unwrap().to_string();
        let st: Value = resp.json().await.unwrap();
        let id = st["id"].as_str().unwrap();
        assert_eq!(loc, format!("{url}/v1/uploads/{id}"));
        let put = client
            .put(format!("{url}/v1/uploads/{id}/chunks/0"))
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), StatusCode::CREATED);
        let done = client
            .post(format!("{url}/v1/uploads/{id}/complete"))
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), StatusCode::OK);
        let signed: Value = client
            .post(format!("{url}/v1/uploads/{id}/content-url"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let signed = signed["url"].as_str().unwrap();
        assert!(
            signed.starts_with(&format!("{url}/v1/uploads/{id}/content?")),
            "{signed}"
        );
        let got = client.get(signed).send().await.unwrap();
        assert_eq!(got.text().await.unwrap(), "hello");

        // tus: Location.
        let tus = client
            .post(format!("{url}/files/"))
            .header("tus-resumable", "1.0.0")
            .header("upload-length", "5")
            .send()
            .await
            .unwrap();
        assert_eq!(tus.status(), StatusCode::CREATED);
        let loc = tus.headers()["location"].to_str().unwrap();
        assert!(loc.starts_with(&format!("{url}/files/")), "{loc}");

        // IETF: the final answer arrives as the final answer, with its body.
        let ietf = client
            .post(format!("{url}/uploads/"))
            .header("upload-complete", "?1")
            .header("upload-draft-interop-version", "8")
            .body(vec![7u8; 3 * MIB])
            .send()
            .await
            .unwrap();
        // Created and completed by one request: the completion's answer.
        assert_eq!(ietf.status(), StatusCode::OK, "{version:?}");
        let loc = ietf.headers()["location"].to_str().unwrap().to_string();
        assert!(loc.starts_with(&format!("{url}/uploads/")), "{loc}");
        let st: Value = ietf.json().await.expect("the final answer's own body");
        assert_eq!(st["state"], "completed", "{st}");
        assert_eq!(st["size"], 3 * MIB);
    }
}

#[test]
fn tus_js_client_uploads_through_nginx_with_tus_and_the_ietf_draft() {
    if !nginx::available_or_skip("nginx_tusjs") || !webclients::available_or_skip("nginx_tusjs") {
        return;
    }
    let s = Setup::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = random_file(dir.path(), "tus.bin", 24 * MIB, 72);
    let ca = s.ca_file.to_str().unwrap();
    for (protocol, base) in [("tus-v1", "/files/"), ("ietf-draft-05", "/uploads/")] {
        let endpoint = format!("{}{base}", s.url());
        let r = webclients::tusjs_env(
            &[
                "--endpoint",
                &endpoint,
                "--file",
                path.to_str().unwrap(),
                "--chunk-size",
                &(4 * MIB).to_string(),
                "--protocol",
                protocol,
            ],
            &[("NODE_EXTRA_CA_CERTS", ca)],
        );
        r.assert_ok();
        assert!(r.str("url").starts_with(&endpoint), "{protocol}: {r}");
    }
}

#[test]
fn the_page_uploads_through_nginx_over_http2() {
    if !nginx::available_or_skip("nginx_page") || !webclients::available_or_skip("nginx_page") {
        return;
    }
    let s = Setup::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (path, sha) = random_file(dir.path(), "page.bin", 40 * MIB, 73);
    let mut args = vec![webclients::scripts_dir()
        .join("page.mjs")
        .display()
        .to_string()];
    args.extend(
        [
            "--url",
            &s.url(),
            "--file",
            path.to_str().unwrap(),
            "--spki",
            &s.cert.spki_sha256,
            "--timeout",
            "120",
        ]
        .map(String::from),
    );
    let r = webclients::run_env(
        "node",
        &args,
        &[("NODE_EXTRA_CA_CERTS", s.ca_file.to_str().unwrap())],
        Duration::from_secs(150),
    );
    r.assert_ok();
    assert_eq!(r.str("server_sha256"), sha, "{r}");
    let net = &r.json["chunk_network"];
    assert_eq!(net["protocols"]["h2"], net["requests"], "{r}");
}

/// The README's nginx configuration is the one these tests run.
#[test]
fn the_readme_has_the_tested_nginx_configuration() {
    let readme = std::fs::read_to_string(webclients::repo_root().join("README.md")).unwrap();
    let tested = nginx::site_config(
        "443",
        "uploads.example.com",
        std::path::Path::new("/etc/ssl/certs/uploads.example.com.pem"),
        std::path::Path::new("/etc/ssl/private/uploads.example.com.key"),
        "127.0.0.1:8080",
    );
    assert!(
        readme.contains(&format!("```nginx\n{tested}```")),
        "README.md's nginx block differs from tests::nginx::site_config:\n{tested}"
    );
}
