//! `GET /v1/uploads` against the real server: the caller's uploads only, newest first, in
//! pages joined by an opaque cursor (RFC 8288 `Link: rel="next"` too), filtered by state,
//! each entry the upload's status document; bad queries are RFC 9457 problems; the
//! listing outlives a restart; `uploader list --remote` shows it; the OpenAPI document
//! describes it.

use std::collections::BTreeSet;
use std::time::Duration;

use common::api::{UploadState, UploadStatus};
use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde_json::Value;
use tests::{random_bytes, Server};

/// Starts a server on this suite's storage with two token holders, alice and bob.
macro_rules! start {
    () => {{
        let tokens = tempfile::tempdir().expect("tokens dir");
        let file = tokens.path().join("tokens");
        std::fs::write(&file, "token-a alice\ntoken-b bob\n").expect("tokens file");
        let (server, store) =
            tests::start_or_skip!(super::STORAGE, &["--tokens-file", file.to_str().unwrap()]);
        (server, store, tokens)
    }};
}

const REL: &str = common::relpath::RELATIVE_PATH_KEY;

struct Api {
    http: Client,
    base: String,
    token: Option<&'static str>,
}

impl Api {
    fn new(server: &Server, token: Option<&'static str>) -> Self {
        Self {
            http: Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            base: server.url(),
            token,
        }
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Creates an upload of `len` bytes named `name`, sent from `dir/name`.
    async fn create(&self, len: usize, name: &str) -> UploadStatus {
        let body = serde_json::json!({
            "size": len, "filename": name, "metadata": { REL: format!("dir/{name}") },
        });
        let resp = self
            .req(Method::POST, "/v1/uploads")
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json().await.expect("status")
    }

    /// Sends the one chunk of `id` and completes it.
    async fn finish(&self, id: common::UploadId, bytes: Vec<u8>) {
        let resp = self
            .req(Method::PUT, &format!("/v1/uploads/{id}/chunks/0"))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .expect("PUT");
        assert!(resp.status().is_success(), "{}", resp.status());
        let resp = self
            .req(Method::POST, &format!("/v1/uploads/{id}/complete"))
            .send()
            .await
            .expect("complete");
        assert!(resp.status().is_success(), "{}", resp.status());
        tests::http::wait_until(Duration::from_secs(30), "completed", || async {
            self.status(id).await["state"] == "completed"
        })
        .await;
    }

    async fn status(&self, id: common::UploadId) -> Value {
        let resp = self
            .req(Method::GET, &format!("/v1/uploads/{id}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.expect("status")
    }

    /// `GET /v1/uploads?{query}`: status, Content-Type, Link and body.
    async fn get_list(&self, query: &str) -> (StatusCode, String, Option<String>, Value) {
        let resp = self
            .req(Method::GET, &format!("/v1/uploads?{query}"))
            .send()
            .await
            .expect("GET list");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (status, ctype, link) = (resp.status(), header("content-type"), header("link"));
        let body = resp.json().await.expect("JSON body");
        (status, ctype.unwrap_or_default(), link, body)
    }

    /// Every upload listed with `query`, following `next` with pages of `limit`; asserts
    /// that each page holds at most `limit` and that `Link` names the next page.
    async fn all(&self, query: &str, limit: usize) -> (Vec<Value>, usize) {
        let (mut out, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
        loop {
            let mut q = format!("limit={limit}&{query}");
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let (status, ctype, link, body) = self.get_list(&q).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(ctype.starts_with("application/json"), "{ctype}");
            let page = body["uploads"].as_array().expect("uploads").clone();
            assert!(
                page.len() <= limit,
                "a page of {} for limit {limit}",
                page.len()
            );
            out.extend(page);
            pages += 1;
            assert!(pages < 100, "the listing does not end");
            match body.get("next").and_then(Value::as_str) {
                Some(next) => {
                    let link = link.expect("Link with a next page");
                    assert!(link.contains("rel=\"next\""), "{link}");
                    assert!(link.contains(next), "{link}");
                    cursor = Some(next.to_string());
                }
                None => {
                    assert!(link.is_none(), "Link on the last page: {link:?}");
                    return (out, pages);
                }
            }
        }
    }
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|u| u["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn pages_list_the_callers_uploads_newest_first() {
    let (server, _store, _tokens) = start!();
    let alice = Api::new(&server, Some("token-a"));
    let bob = Api::new(&server, Some("token-b"));
    let mut created = Vec::new();
    for i in 0..7 {
        let len = 1000 + i;
        let st = alice.create(len, &format!("f{i}.bin")).await;
        if i % 2 == 0 {
            alice.finish(st.id, random_bytes(len, i as u64)).await;
        }
        created.push(st.id.to_string());
    }
    let bobs: Vec<String> = [
        bob.create(10, "b0.bin").await,
        bob.create(20, "b1.bin").await,
    ]
    .iter()
    .map(|s| s.id.to_string())
    .collect();
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let (listed, pages) = alice.all("", 3).await;
    assert_eq!(ids(&listed), newest_first);
    assert!(pages >= 3, "7 uploads in pages of 3 took {pages} page(s)");
    // Every entry is the upload's status document, as GET /v1/uploads/{id} answers it.
    for entry in &listed {
        let id = entry["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(*entry, alice.status(id).await);
        let name = entry["filename"].as_str().unwrap();
        assert_eq!(entry["metadata"][REL], format!("dir/{name}"));
        assert!(entry["created_at"].is_string());
    }
    let created_at: Vec<String> = listed
        .iter()
        .map(|u| u["created_at"].as_str().unwrap().to_string())
        .collect();
    let times: Vec<time::OffsetDateTime> = created_at
        .iter()
        .map(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{created_at:?}");

    // One page with room for everything.
    let (status, _, link, body) = alice.get_list("limit=1000").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("next").is_none() && link.is_none(), "{body}");
    assert_eq!(ids(body["uploads"].as_array().unwrap()), newest_first);
    // The default page holds them all too.
    let (_, _, _, body) = alice.get_list("").await;
    assert_eq!(ids(body["uploads"].as_array().unwrap()), newest_first);

    // Filtered by state.
    let (done, _) = alice.all("state=completed", 2).await;
    let want: Vec<String> = newest_first
        .iter()
        .enumerate()
        .filter(|(i, _)| (6 - i) % 2 == 0)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(ids(&done), want);
    assert!(done.iter().all(|u| u["state"] == "completed"));
    let (open, _) = alice.all("state=uploading", 2).await;
    assert_eq!(open.len(), 3);
    assert!(open.iter().all(|u| u["state"] == "uploading"));
    let (failed, _) = alice.all("state=failed", 5).await;
    assert!(failed.is_empty());

    // Owners see only their own; a cursor another owner got names nothing of theirs.
    let (bob_listed, _) = bob.all("", 1).await;
    assert_eq!(
        ids(&bob_listed),
        bobs.iter().rev().cloned().collect::<Vec<_>>()
    );
    let (_, _, _, first) = alice.get_list("limit=2").await;
    let alice_cursor = first["next"].as_str().expect("next").to_string();
    let (status, _, _, body) = bob.get_list(&format!("cursor={alice_cursor}")).await;
    assert_eq!(status, StatusCode::OK);
    let seen: BTreeSet<String> = ids(body["uploads"].as_array().unwrap())
        .into_iter()
        .collect();
    assert!(seen.iter().all(|id| bobs.contains(id)), "bob saw {seen:?}");
    // Without a token: refused, as on every route.
    let (status, ctype, _, _) = Api::new(&server, None).get_list("").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(ctype.starts_with("application/problem+json"), "{ctype}");

    // A cancelled upload leaves the listing.
    let gone = &newest_first[0];
    let resp = alice
        .req(Method::DELETE, &format!("/v1/uploads/{gone}"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let (listed, _) = alice.all("", 4).await;
    assert_eq!(ids(&listed), newest_first[1..].to_vec());
}

#[tokio::test]
async fn bad_queries_are_problems() {
    let (server, _store, _tokens) = start!();
    let alice = Api::new(&server, Some("token-a"));
    alice.create(5, "x.bin").await;
    let foreign = hex_encode("../../etc/passwd");
    for query in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "state=done",
        "state=",
        "cursor=zz",
        "cursor=",
        &format!("cursor={foreign}"),
    ] {
        let (status, ctype, _, body) = alice.get_list(query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(
            ctype.starts_with("application/problem+json"),
            "{query}: {ctype}"
        );
        assert_eq!(body["status"], 400, "{query}: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{query}: {body}"
        );
    }
}

fn hex_encode(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn the_listing_outlives_a_restart() {
    let (mut server, _store, _tokens) = start!();
    let alice = Api::new(&server, Some("token-a"));
    let mut created = Vec::new();
    for i in 0..3 {
        let st = alice.create(100, &format!("r{i}.bin")).await;
        if i == 1 {
            alice.finish(st.id, random_bytes(100, 7)).await;
        }
        created.push(st.id.to_string());
    }
    created.reverse();
    let (before, _) = alice.all("", 2).await;
    assert_eq!(ids(&before), created);
    server.restart();
    let alice = Api::new(&server, Some("token-a"));
    let (after, _) = alice.all("", 2).await;
    assert_eq!(ids(&after), created);
    let states: Vec<&str> = after.iter().map(|u| u["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["uploading", "completed", "uploading"]);
}

#[tokio::test]
async fn uploader_lists_the_servers_uploads() {
    let (server, _store, _tokens) = start!();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/a.bin"), random_bytes(3000, 1)).unwrap();
    std::fs::write(tree.join("c.bin"), random_bytes(2000, 2)).unwrap();
    let state = tempfile::tempdir().unwrap();
    let url = server.url();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(tests::bin_path("uploader"))
            .env_remove("UPLOADER_TOKEN")
            .env("UPLOADER_STATE_DIR", state.path())
            .args(["--server", &url, "--token", "token-a"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run uploader");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, out, err) = run(&["upload", tree.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}\n{err}");

    let (code, out, err) = run(&["--json", "list", "--remote"]);
    assert_eq!(code, Some(0), "{err}");
    let listed: Vec<UploadStatus> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a status document a line"))
        .collect();
    assert_eq!(listed.len(), 2, "{out}");
    assert!(listed.iter().all(|s| s.state == UploadState::Completed));
    let paths: BTreeSet<String> = listed
        .iter()
        .map(|s| s.metadata.get(REL).cloned().unwrap_or_default())
        .collect();
    assert!(
        paths.iter().any(|p| p.ends_with("sub/a.bin"))
            && paths.iter().any(|p| p.ends_with("c.bin")),
        "{paths:?}"
    );
    let sizes: BTreeSet<u64> = listed.iter().map(|s| s.size).collect();
    assert_eq!(sizes, BTreeSet::from([2000, 3000]));

    // The table: a header, then a row per upload with its state, size and path.
    let (code, out, err) = run(&["list", "--remote"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATE"),
        "{out}"
    );
    for s in &listed {
        let row = lines
            .iter()
            .find(|l| l.starts_with(&s.id.to_string()))
            .unwrap_or_else(|| panic!("no row for {}\n{out}", s.id));
        assert!(row.contains("completed"), "{row}");
        assert!(row.contains(s.metadata.get(REL).unwrap()), "{row}");
    }

    // Filters and limits; -q prints just ids.
    let (code, out, _) = run(&["list", "--remote", "--state", "uploading"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("no uploads"), "{out}");
    let (code, out, _) = run(&["-q", "list", "--remote", "--limit", "1"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().collect::<Vec<_>>(), [listed[0].id.to_string()]);
    // Bad values are usage errors (exit 2).
    let (code, _, err) = run(&["list", "--remote", "--state", "done"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = run(&["list", "--limit", "3"]);
    assert_eq!(code, Some(2), "{err}");
}

#[tokio::test]
async fn the_openapi_document_describes_the_listing() {
    let (server, _store, _tokens) = start!();
    let doc: Value = Api::new(&server, None)
        .req(Method::GET, "/v1/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let op = &doc["paths"]["/v1/uploads"]["get"];
    assert!(op.is_object(), "{}", doc["paths"]["/v1/uploads"]);
    let params: BTreeSet<&str> = op["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(params, BTreeSet::from(["cursor", "limit", "state"]));
    assert!(op["responses"]["200"].is_object() && op["responses"]["400"].is_object());
    let list = &doc["components"]["schemas"]["UploadList"]["properties"];
    assert!(
        list["uploads"].is_object() && list["next"].is_object(),
        "{list}"
    );
}
