//! The core protocol: OPTIONS and what it advertises, HEAD and PATCH with offsets across
//! chunk boundaries and metadata, `Tus-Resumable` on every request, the status codes of
//! requests the server does not take, and CORS for browser clients.

use common::api::UploadStatus;
use reqwest::{Method, StatusCode};
use tests::http::{client, header};
use tests::random_bytes;
use tests::tus::{b64, Tus, OCTETS, VERSION};

use super::MIB;

#[tokio::test]
async fn options_advertises_the_protocol() {
    let (server, _store) = start!(&["--max-upload-size", "5GiB"]);
    let tus = Tus::new(&server);
    let resp = client()
        .request(Method::OPTIONS, format!("{}/files/", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "tus-version"), VERSION);
    assert_eq!(header(&resp, "tus-max-size"), (5u64 << 30).to_string());
    let ext = header(&resp, "tus-extension");
    for e in [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
        "concatenation",
    ] {
        assert!(ext.split(',').any(|x| x == e), "{e} missing from {ext}");
    }
    let algs = header(&resp, "tus-checksum-algorithm");
    for a in ["sha1", "sha256", "md5"] {
        assert!(algs.split(',').any(|x| x == a), "{a} missing from {algs}");
    }
    // The path without its trailing slash works too.
    let resp = tus.req(Method::OPTIONS, "/files").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn version_media_type_and_header_errors() {
    let (server, _store) = start!(&[]);
    let tus = Tus::new(&server);
    let url = format!("{}/files/", server.url());
    // No Tus-Resumable, and an unknown version: 412 with the version we speak.
    for version in [None, Some("0.2.2")] {
        let mut r = client().post(&url).header("upload-length", "10");
        if let Some(v) = version {
            r = r.header("tus-resumable", v);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(header(&resp, "tus-version"), VERSION);
    }
    // Missing (and not deferred) or bad Upload-Length; a deferred length with a length,
    // or with a value other than 1; bad metadata.
    let bad: [&[(&str, &str)]; 7] = [
        &[("x-none", "1")],
        &[("upload-length", "-1")],
        &[("upload-length", "ten")],
        &[("upload-defer-length", "1"), ("upload-length", "10")],
        &[("upload-defer-length", "0")],
        &[("upload-defer-length", "yes")],
        &[
            ("upload-length", "10"),
            ("upload-metadata", "filename !!notbase64"),
        ],
    ];
    for headers in bad {
        let mut req = tus.post();
        for (h, v) in headers {
            req = req.header(*h, *v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{headers:?}");
    }
    // Too large.
    let resp = tus
        .post()
        .header("upload-length", (2u64 << 40).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let path = tus.create(10, "").await;
    // Wrong content type: 415; no offset: 400; a bad checksum header: 400.
    let resp = tus
        .req(Method::PATCH, &path)
        .header("content-type", "text/plain")
        .header("upload-offset", "0")
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let resp = tus
        .req(Method::PATCH, &path)
        .header("content-type", OCTETS)
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = tus
        .append(&path, 0)
        .header("upload-checksum", "crc32 AAAAAA==")
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(tus.offset(&path).await, 0);
    // Unknown and malformed ids.
    for p in [
        "/files/00000000-0000-4000-8000-000000000000",
        "/files/..%2F..%2Fetc%2Fpasswd",
    ] {
        let resp = tus.head(p).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{p}");
    }
}

#[tokio::test]
async fn uneven_patches_across_chunks_complete_and_verify() {
    let (server, _store) = start!(&[]);
    let tus = Tus::new(&server);
    let file = random_bytes(20 * MIB + 12_345, 11);
    let meta = format!(
        "filename {},filetype {},empty",
        b64(b"r\xc3\xa9port.bin"),
        b64(b"application/pdf")
    );
    let path = tus.create(file.len(), &meta).await;

    let head = tus.head(&path).await;
    assert_eq!(header(&head, "upload-offset"), "0");
    assert_eq!(header(&head, "upload-length"), file.len().to_string());
    assert_eq!(header(&head, "cache-control"), "no-store");
    assert!(!header(&head, "upload-expires").is_empty());
    let echoed = header(&head, "upload-metadata");
    for pair in meta.split(',') {
        assert!(
            echoed.split(',').any(|p| p == pair),
            "{pair} not in {echoed}"
        );
    }

    // Pieces that start and end inside chunks, one that is a single byte, one that
    // crosses two chunk boundaries.
    let cuts = [
        3 * MIB + 7,
        3 * MIB + 8,
        8 * MIB,
        8 * MIB + 1,
        19 * MIB,
        file.len(),
    ];
    let mut at = 0;
    for cut in cuts {
        tus.patch_ok(&path, at, &file[at..cut]).await;
        at = cut;
        if cut < file.len() {
            assert_eq!(tus.offset(&path).await, cut as u64);
            assert_eq!(tus.native(&path).await.received_bytes, cut as u64);
        }
    }
    let status = tus.assert_completed(&path, &file).await;
    assert_eq!(status.filename.as_deref(), Some("r\u{e9}port.bin"));
    assert_eq!(status.metadata["filetype"], "application/pdf");
    assert_eq!(status.metadata["empty"], "");
    assert_eq!(tus.offset(&path).await, file.len() as u64);
    // Nothing more can be appended.
    let resp = tus.patch(&path, file.len(), b"x".to_vec()).await;
    assert!(resp.status().is_client_error());
}

#[tokio::test]
async fn protocols_do_not_mix_writes() {
    let (server, _store) = start!(&[]);
    let tus = Tus::new(&server);
    let http = client();
    // A tus upload takes no native chunk...
    let path = tus.create(10, "").await;
    let id = path.trim_start_matches("/files/");
    let resp = http
        .put(format!("{}/v1/uploads/{id}/chunks/0", server.url()))
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    // ...and a native upload takes no tus PATCH.
    let resp = http
        .post(format!("{}/v1/uploads", server.url()))
        .json(&serde_json::json!({"size": 10}))
        .send()
        .await
        .unwrap();
    let st: UploadStatus = resp.json().await.unwrap();
    let resp = tus
        .patch(&format!("/files/{}", st.id), 0, b"0123456789".to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn cors_for_configured_origins_only() {
    let (server, _store) = start!(&["--cors-origin", "http://app.example"]);
    let http = client();
    let preflight = |origin: &'static str| {
        http.request(Method::OPTIONS, format!("{}/files/", server.url()))
            .header("origin", origin)
            .header("access-control-request-method", "PATCH")
            .header(
                "access-control-request-headers",
                "tus-resumable,upload-offset,content-type",
            )
            .send()
    };
    let resp = preflight("http://app.example").await.unwrap();
    assert!(resp.status().is_success());
    assert_eq!(
        header(&resp, "access-control-allow-origin"),
        "http://app.example"
    );
    let allowed = header(&resp, "access-control-allow-headers").to_lowercase();
    for h in ["tus-resumable", "upload-offset", "content-type"] {
        assert!(allowed.contains(h), "{h} not in {allowed}");
    }
    assert!(header(&resp, "access-control-allow-methods").contains("PATCH"));
    // Another origin gets no permission.
    let resp = preflight("http://evil.example").await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    // A real request exposes what tus clients read.
    let resp = http
        .post(format!("{}/files/", server.url()))
        .header("origin", "http://app.example")
        .header("tus-resumable", VERSION)
        .header("upload-length", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let exposed = header(&resp, "access-control-expose-headers").to_lowercase();
    for h in [
        "location",
        "upload-offset",
        "upload-length",
        "tus-resumable",
        "x-request-id",
    ] {
        assert!(exposed.contains(h), "{h} not in {exposed}");
    }
}
