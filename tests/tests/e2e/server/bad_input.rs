//! Bad input: each gets a problem document with the right status, and nothing is stored.

use std::time::Duration;

use common::UploadId;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_create_requests_store_nothing() {
    let (server, store) = start!(&["--max-upload-size", "10MiB"]);
    let api = Api::new(&server);
    let caps: serde_json::Value = api
        .http
        .get(api.url("/v1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (min, max) = (
        caps["chunk_size"]["min"].as_u64().unwrap(),
        caps["chunk_size"]["max"].as_u64().unwrap(),
    );
    let max_chunks = caps["max_chunks"].as_u64().unwrap();
    let above_max = format!("{{\"size\": 10, \"chunk_size\": {}}}", max + 1);
    let cases: &[(&str, u16)] = &[
        // Malformed JSON and wrong shapes.
        ("{", 400),
        ("{\"size\": 10", 400),
        ("not json", 400),
        ("null", 400),
        ("[]", 400),
        ("\"size\"", 400),
        ("{}", 400),
        ("{\"chunk_size\": 65536}", 400),
        // Sizes: negative, fractional, non-numeric, not representable, above the maximum.
        ("{\"size\": -1}", 400),
        ("{\"size\": -9223372036854775808}", 400),
        ("{\"size\": 1.5}", 400),
        ("{\"size\": 1e30}", 400),
        ("{\"size\": \"10\"}", 400),
        ("{\"size\": null}", 400),
        ("{\"size\": true}", 400),
        ("{\"size\": 18446744073709551616}", 400),
        ("{\"size\": 99999999999999999999999999999}", 400),
        ("{\"size\": 18446744073709551615}", 413),
        ("{\"size\": 10485761}", 413),
        ("{\"size\": 1099511627776}", 413),
        // Chunk sizes outside the bounds.
        ("{\"size\": 10, \"chunk_size\": 0}", 400),
        ("{\"size\": 10, \"chunk_size\": 1}", 400),
        ("{\"size\": 10, \"chunk_size\": -65536}", 400),
        ("{\"size\": 10, \"chunk_size\": \"1MiB\"}", 400),
        (&above_max, 400),
        ("{\"size\": 10, \"chunk_size\": 18446744073709551615}", 400),
        // Other fields.
        ("{\"size\": 10, \"sha256\": \"xyz\"}", 400),
        ("{\"size\": 10, \"sha256\": 12}", 400),
        ("{\"size\": 10, \"filename\": \"a\\nb\"}", 400),
        ("{\"size\": 10, \"metadata\": {\"k\": 1}}", 400),
        ("{\"size\": 10, \"metadata\": \"k=v\"}", 400),
    ];
    for (body, status) in cases {
        let resp = api.create_raw(body).await;
        let got = resp.status().as_u16();
        assert_eq!(got, *status, "POST /v1/uploads {body}");
        problem(resp, *status).await;
    }
    // A JSON body over the size limit.
    let huge = format!(
        "{{\"size\": 10, \"filename\": \"{}\"}}",
        "a".repeat(200_000)
    );
    problem(api.create_raw(&huge).await, 400).await;
    // A bad Idempotency-Key.
    let resp = api
        .http
        .post(api.url("/v1/uploads"))
        .header("idempotency-key", "k".repeat(300))
        .header("content-type", "application/json")
        .body("{\"size\": 10}")
        .send()
        .await
        .unwrap();
    problem(resp, 400).await;
    // A bad body with a good key claims nothing.
    let resp = api
        .http
        .post(api.url("/v1/uploads"))
        .header("idempotency-key", "good-key")
        .header("content-type", "application/json")
        .body("{\"size\": 10485761}")
        .send()
        .await
        .unwrap();
    problem(resp, 413).await;
    assert_eq!(store.upload_count().await, 0, "nothing created");
    assert_eq!(store.idempotency_count().await, 0);

    // Too many chunks for the chunk size is refused too (one more than the most chunks of
    // the smallest size).
    let (server2, store2) = start!(&[]);
    let api2 = Api::new(&server2);
    let resp = api2
        .create_raw(&json!({"size": (max_chunks + 1) * min, "chunk_size": min}).to_string())
        .await;
    problem(resp, 400).await;
    assert_eq!(store2.upload_count().await, 0);

    // The exact maximum is accepted.
    let st = api.create(json!({"size": 10 * MIB})).await;
    assert_eq!(st.size, 10 * MIB as u64);
    assert_eq!(store.upload_count().await, 1);
}

/// An empty body, or a JSON array, is not a create request: the body is an object and
/// `size` is required.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_body_must_be_a_json_object() {
    let (server, store) = start!(&[]);
    let api = Api::new(&server);
    for body in ["", "   \n", "[10]", "[10, 65536]"] {
        let resp = api.create_raw(body).await;
        problem(resp, 400).await;
    }
    assert_eq!(store.upload_count().await, 0, "nothing created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ids_that_are_not_upload_ids_are_404() {
    let (server, store) = start!(&[]);
    let api = Api::new(&server);
    let real = api
        .create(json!({"size": 10, "chunk_size": store.chunk(64 * KIB)}))
        .await
        .id;
    let upper = real.to_string().to_uppercase();
    let bare = real.to_string().replace('-', "");
    let braced = format!("{{{real}}}");
    let urn = format!("urn:uuid:{real}");
    let unknown = UploadId::new_random().to_string();
    let ids = [
        "..%2F..%2Fetc%2Fpasswd",
        "..%2f..%2fetc%2fpasswd",
        "%2E%2E",
        "..",
        "...",
        "not-a-uuid",
        "123",
        "%00",
        "%2Fetc%2Fpasswd",
        upper.as_str(),
        bare.as_str(),
        braced.as_str(),
        urn.as_str(),
        unknown.as_str(),
    ];
    for id in ids {
        let base = api.url(&format!("/v1/uploads/{id}"));
        let reqs = [
            api.http.get(&base),
            api.http.head(&base),
            api.http.delete(&base),
            api.http.put(format!("{base}/chunks/0")).body("0123456789"),
            api.http.post(format!("{base}/complete")),
            api.http.get(format!("{base}/content")),
        ];
        for req in reqs {
            let r = req.build().unwrap();
            let what = format!("{} {}", r.method(), r.url());
            let resp = api.http.execute(r).await.unwrap();
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{what}");
            if resp.headers().contains_key("content-type") {
                assert_eq!(
                    header(resp.headers(), "content-type"),
                    common::PROBLEM_JSON,
                    "{what}"
                );
            }
        }
    }
    // Unnormalised dot segments straight on the wire (clients would resolve them).
    for path in [
        "/v1/uploads/../../etc/passwd",
        "/v1/uploads/..%2F..%2Fetc%2Fpasswd/content",
        "/v1/uploads/%2e%2e/%2e%2e/etc/passwd",
    ] {
        let mut s = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.addr
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("answer")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 404") || text.starts_with("HTTP/1.1 400"),
            "{path}: {text}"
        );
        assert!(!text.contains("root:"), "{path}: {text}");
    }
    // Nothing but the one real upload exists, and it is untouched.
    assert_eq!(store.upload_count().await, 1);
    let st = api.status(real).await;
    assert_eq!(st.received_bytes, 0);
    // Unknown routes and methods: problem documents too.
    problem(api.http.get(api.url("/v2")).send().await.unwrap(), 404).await;
    problem(
        api.http.patch(api.upload_url(real)).send().await.unwrap(),
        405,
    )
    .await;
}

/// Filenames and metadata are data: a path-like name is stored as it is and never used as
/// a path (nothing appears outside the data directory), names that would disguise
/// themselves (control characters, bidirectional overrides) or are too long or not UTF-8
/// are refused, and a download is always an attachment of type `application/octet-stream`
/// with `nosniff` and an RFC 6266 name, so uploaded HTML is never rendered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filenames_are_data_and_downloads_are_never_pages() {
    let (server, store) = start!(&[]);
    let api = Api::new(&server);
    let page = b"<html><script>alert(document.cookie)</script></html>".to_vec();
    for (name, ascii, encoded) in [
        (
            "../../../evil.html",
            ".._.._.._evil.html",
            "..%2F..%2F..%2Fevil.html",
        ),
        ("/etc/passwd", "_etc_passwd", "%2Fetc%2Fpasswd"),
        (
            "r\u{e9}sum\u{e9} \"q\".html",
            "r_sum_ _q_.html",
            "r%C3%A9sum%C3%A9%20%22q%22.html",
        ),
    ] {
        let st = api
            .create(json!({
                "size": page.len(),
                "filename": name,
                "metadata": {"path": "..\\..\\windows", "type": "text/html"},
            }))
            .await;
        assert_eq!(st.filename.as_deref(), Some(name), "kept as it was sent");
        api.put_ok(st.id, 0, &page).await;
        let done = api.complete(st.id, None).await;
        assert_eq!(done.status(), StatusCode::OK);
        let resp = api.content(st.id).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header(resp.headers(), "content-type"),
            "application/octet-stream"
        );
        assert_eq!(header(resp.headers(), "x-content-type-options"), "nosniff");
        assert_eq!(
            header(resp.headers(), "content-disposition"),
            format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
        );
        assert_eq!(resp.bytes().await.unwrap().to_vec(), page);
    }
    // The names were never used as paths: nothing of them in the data directory, nor
    // where the traversals would have led.
    let dir = store.dir.path();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains("evil") && !name.contains("passwd") && !name.contains("sum"),
                "{}",
                e.path().display()
            );
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(e.path());
            }
        }
    }
    for up in ["..", "../..", "../../..", "../../../.."] {
        assert!(!dir.join(up).join("evil.html").exists(), "{up}/evil.html");
    }

    // Refused: control characters, bidirectional overrides, metadata keys that tus could
    // not carry, too long, not UTF-8.
    for body in [
        json!({"size": 1, "filename": "a\u{0}b"}).to_string(),
        json!({"size": 1, "filename": "a\u{1b}[31mred"}).to_string(),
        json!({"size": 1, "filename": "invoice\u{202e}fdp.exe"}).to_string(),
        json!({"size": 1, "metadata": {"k": "x\u{2066}y"}}).to_string(),
        json!({"size": 1, "metadata": {"a key": "v"}}).to_string(),
        json!({"size": 1, "metadata": {"a,b": "v"}}).to_string(),
        json!({"size": 1, "filename": "n".repeat(5000)}).to_string(),
        json!({"size": 1, "metadata": {"k": "v".repeat(20_000)}}).to_string(),
    ] {
        problem(api.create_raw(&body).await, 400).await;
    }
    let not_utf8 = api
        .http
        .post(api.url("/v1/uploads"))
        .header("content-type", "application/json")
        .body(b"{\"size\": 1, \"filename\": \"\xff\xfe\"}".to_vec())
        .send()
        .await
        .unwrap();
    problem(not_utf8, 400).await;
}
