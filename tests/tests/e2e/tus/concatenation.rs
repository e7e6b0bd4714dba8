//! The concatenation extension: partial uploads go up in parallel, a final upload joins
//! them (named by path or by URL) into one file with their bytes in order, and the parts
//! live on in it only.

use reqwest::StatusCode;
use tests::http::header;
use tests::random_bytes;
use tests::tus::{b64, Tus};

use super::MIB;

#[tokio::test]
async fn concatenation_joins_parallel_parts() {
    let (server, _store) = start!(&[]);
    let tus = Tus::new(&server);
    let file = random_bytes(9 * MIB + 77, 16);
    let bounds = [0, 3 * MIB + 1, 3 * MIB + 1, 9 * MIB + 77];
    let mut parts = Vec::new();
    for w in bounds.windows(2) {
        let resp = tus
            .post()
            .header("upload-concat", "partial")
            .header("upload-length", (w[1] - w[0]).to_string())
            .send()
            .await
            .unwrap();
        parts.push((Tus::created(&resp), w[0], w[1]));
    }
    // A final upload of an unfinished part is refused.
    let resp = tus
        .post()
        .header("upload-concat", format!("final;{}", parts[0].0))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // The parts go up in parallel (the empty middle one needs nothing).
    let mut tasks = tokio::task::JoinSet::new();
    for (path, a, b) in parts.clone() {
        let tus = Tus::new(&server);
        let bytes = file[a..b].to_vec();
        tasks.spawn(async move {
            if !bytes.is_empty() {
                tus.patch_ok(&path, 0, &bytes).await;
            }
            let head = tus.head(&path).await;
            assert_eq!(header(&head, "upload-concat"), "partial");
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // With a length: refused. Then the final upload, naming parts by path and by URL.
    let list = format!(
        "final;{} {} {}{}",
        parts[0].0,
        parts[1].0,
        server.url(),
        parts[2].0
    );
    let resp = tus
        .post()
        .header("upload-concat", &list)
        .header("upload-length", file.len().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = tus
        .post()
        .header("upload-concat", &list)
        .header(
            "upload-metadata",
            format!("filename {}", b64(b"joined.bin")),
        )
        .send()
        .await
        .unwrap();
    let path = Tus::created(&resp);
    let status = tus.assert_completed(&path, &file).await;
    assert_eq!(status.filename.as_deref(), Some("joined.bin"));
    let head = tus.head(&path).await;
    assert_eq!(header(&head, "upload-offset"), file.len().to_string());
    assert!(header(&head, "upload-concat").starts_with("final;/files/"));
    // The parts' bytes live on in the final upload only.
    for (p, _, _) in &parts {
        assert_eq!(tus.head(p).await.status(), StatusCode::GONE, "{p}");
    }
}
