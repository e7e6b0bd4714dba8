//! `104 Upload Resumption Supported`: the interim response that names an upload while its
//! creation request's body is still on its way, seen over raw HTTP/1.1.

use std::time::Duration;

use reqwest::StatusCode;
use tests::ietf::{Ietf, INTEROP};
use tests::random_bytes;

use super::MIB;

/// Reads from `conn` until `buf` holds a full response head (`\r\n\r\n`) and returns that
/// head, leaving what follows it in `buf`.
async fn read_head(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> String {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return String::from_utf8(head).expect("ASCII head");
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut chunk))
            .await
            .expect("a response head within 20 s")
            .expect("read");
        assert!(
            n > 0,
            "connection closed; got so far: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The value of header `name` in a raw response head.
fn head_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// `104 Upload Resumption Supported` over raw HTTP/1.1: a creation request whose body is
/// held back after its first half is answered 104, with the upload's `Location`,
/// `Upload-Limit` and interop version, before the body ends; the upload it names
/// exists meanwhile (seen from another connection), and the final response (200, after
/// the rest) names the same upload, which completes with the right SHA-256.
#[tokio::test]
async fn creation_is_answered_104_before_its_body_ends() {
    use tokio::io::AsyncWriteExt;
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(3 * MIB + 11, 104);
    let addr = server.url().trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "POST /uploads/ HTTP/1.1\r\nhost: {addr}\r\nupload-draft-interop-version: {INTEROP}\r\n\
         upload-complete: ?1\r\ncontent-length: {}\r\n\r\n",
        bytes.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let half = bytes.len() / 2;
    conn.write_all(&bytes[..half]).await.unwrap();
    let mut buf = Vec::new();
    let interim = read_head(&mut conn, &mut buf).await;
    assert!(
        interim.starts_with("HTTP/1.1 104 Upload Resumption Supported\r\n"),
        "{interim}"
    );
    let loc = head_value(&interim, "location").expect("104 names the upload");
    assert!(loc.starts_with("/uploads/"), "{loc}");
    assert!(
        head_value(&interim, "upload-limit").is_some_and(|l| l.contains("max-size=")),
        "{interim}"
    );
    assert_eq!(
        head_value(&interim, "upload-draft-interop-version").as_deref(),
        Some("8")
    );
    // The upload exists while its creation's body is still on its way.
    let (code, status) = c.native(&loc).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status["state"], "uploading");
    conn.write_all(&bytes[half..]).await.unwrap();
    let last = read_head(&mut conn, &mut buf).await;
    assert!(last.starts_with("HTTP/1.1 200 "), "{last}");
    assert_eq!(head_value(&last, "upload-complete").as_deref(), Some("?1"));
    assert_eq!(head_value(&last, "location").as_deref(), Some(loc.as_str()));
    c.assert_completed(&loc, &bytes).await;
}
