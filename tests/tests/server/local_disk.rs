//! Tests of what only local-disk storage has (run by `server`, not `server_s3`): one
//! server per data directory. On S3 any number of servers share a bucket by design.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tests::Server;

use crate::support::*;

/// A second server on a data directory in use refuses to start (two writers would corrupt
/// the journals), and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_server_on_the_same_directory_refuses_to_start() {
    let (server, dir) = Server::start(&[]);
    let api = Api::new(&server);
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || {
            let mut child = std::process::Command::new(tests::bin_path("upload-server"))
                .args(["--listen", "127.0.0.1:0", "--data-dir"])
                .arg(&dir)
                .env_remove("UPLOAD_SERVER_LISTEN")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            child.wait_with_output().unwrap()
        }
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "second server: {:?}\n{text}",
        out.status
    );
    assert!(!text.contains("listening on"), "{text}");
    // The first one is unaffected.
    let resp = api.http.get(api.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
