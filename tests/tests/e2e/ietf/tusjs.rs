//! tus-js-client 4.3.1 with its IETF draft protocols (`ietf-draft-05`, `ietf-draft-03`):
//! a whole upload, one interrupted and resumed, and a stream whose length it learns at
//! the end; each upload is checked through the native API.

use tests::ietf::Ietf;
use tests::webclients::{self, DriverResult};
use tests::{random_bytes, sha256_hex, write_file, Server};

use super::MIB;

fn requests(r: &DriverResult, method: &str) -> u64 {
    r.get("requests")[method].as_u64().unwrap_or(0)
}

/// Runs tus-js-client on `bytes` (as file `name`) against the server's `/uploads/` with
/// `protocol`, in 4 MiB parts and with `extra` arguments; asserts it succeeded with the
/// protocol asked for.
async fn tusjs(
    server: &Server,
    protocol: &str,
    name: &str,
    bytes: &[u8],
    extra: &[&str],
) -> DriverResult {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), name, bytes).display().to_string();
    let endpoint = format!("{}/uploads/", server.url());
    let common = [
        "--endpoint",
        &endpoint,
        "--file",
        &file,
        "--protocol",
        protocol,
        "--chunk-size",
        "4194304",
    ];
    let args: Vec<String> = common.iter().chain(extra).map(|a| a.to_string()).collect();
    let r = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        webclients::tusjs(&args)
    })
    .await
    .expect("driver thread");
    r.assert_ok();
    assert_eq!(r.str("protocol"), protocol, "{r}");
    r
}

/// Asserts that the client read `bytes` (their SHA-256) and that the upload at its URL
/// (`{server}/uploads/{id}`) is completed natively with exactly them; returns its status.
async fn uploaded(server: &Server, r: &DriverResult, bytes: &[u8]) -> serde_json::Value {
    assert_eq!(r.str("sha256"), sha256_hex(bytes), "{r}");
    let url = r.str("url");
    let path = url
        .strip_prefix(&server.url())
        .unwrap_or_else(|| panic!("{url} is not on {}", server.url()));
    assert!(path.starts_with("/uploads/"), "{url}");
    Ietf::new(server).assert_completed(path, bytes).await
}

async fn tusjs_single(protocol: &'static str, seed: u64) {
    let name = format!("tusjs_{protocol}_single_upload");
    if !webclients::available_or_skip(&name) {
        return;
    }
    let (server, _store) = start!(&[]);
    let bytes = random_bytes(9 * MIB + 123, seed);
    let r = tusjs(&server, protocol, "ietf.bin", &bytes, &[]).await;
    assert_eq!(requests(&r, "POST"), 1, "{r}");
    assert_eq!(requests(&r, "PATCH"), 3, "{r}");
    let status = uploaded(&server, &r, &bytes).await;
    // Upload-Metadata (tus's form, which tus-js-client sends in every protocol).
    assert_eq!(status["filename"], "ietf.bin", "{status}");
}

#[tokio::test]
async fn tusjs_ietf_draft_05_single_upload() {
    tusjs_single("ietf-draft-05", 11).await;
}

#[tokio::test]
async fn tusjs_ietf_draft_03_single_upload() {
    tusjs_single("ietf-draft-03", 12).await;
}

#[tokio::test]
async fn tusjs_ietf_draft_05_interrupted_upload_resumes() {
    if !webclients::available_or_skip("tusjs_ietf_draft_05_interrupted_upload_resumes") {
        return;
    }
    let (server, _store) = start!(&[]);
    let len = 16 * MIB + 1_000;
    let bytes = random_bytes(len, 13);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("urls.json").display().to_string();
    let extra = ["--interrupt-at", "0.4", "--url-store", &store];
    let r = tusjs(&server, "ietf-draft-05", "resumed.bin", &bytes, &extra).await;
    eprintln!("tus-js-client ietf-draft-05 interrupt+resume: {}", r.json);
    assert_eq!(r.u64("previous_uploads_found"), 1, "{r}");
    assert_eq!(r.str("first_url"), r.str("url"), "{r}");
    let resumed = r.u64("resumed_offset");
    assert!(
        resumed >= 4 * MIB as u64 && resumed <= r.u64("aborted_after_sent") && resumed < len as u64,
        "resumed at {resumed}: {r}"
    );
    assert_eq!(requests(&r, "POST"), 1, "{r}");
    assert_eq!(requests(&r, "HEAD"), 1, "{r}");
    uploaded(&server, &r, &bytes).await;
}

/// tus-js-client's `ietf-draft-05` with `uploadLengthDeferred` and a stream source (a plain
/// Readable, whose size it does not know): it creates the upload with `Upload-Complete: ?0`
/// and no length, appends 4 MiB parts, and its last append (`?1`, with `Upload-Length`)
/// completes it; the native status has the file's SHA-256. (The length is no multiple of
/// the part size: tus-js-client 4.3.1's stream source never finishes one that is.)
#[tokio::test]
async fn tusjs_ietf_draft_05_stream_with_its_length_deferred() {
    if !webclients::available_or_skip("tusjs_ietf_draft_05_stream_with_its_length_deferred") {
        return;
    }
    let (server, _store) = start!(&[]);
    let bytes = random_bytes(9 * MIB + 4_567, 14);
    let extra = ["--defer-length", "--stream"];
    let r = tusjs(&server, "ietf-draft-05", "unknown.bin", &bytes, &extra).await;
    assert_eq!(requests(&r, "POST"), 1, "{r}");
    assert_eq!(requests(&r, "PATCH"), 3, "{r}");
    let status = uploaded(&server, &r, &bytes).await;
    assert!(status.get("length_deferred").is_none(), "{status}");
    assert_eq!(status["filename"], "unknown.bin", "{status}");
}
