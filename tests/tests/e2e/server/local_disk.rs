//! Tests of what only local-disk storage has (run by `server`, not `server_s3`): one
//! server per data directory. On S3 any number of servers share a bucket by design.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tests::Server;

use super::support::*;

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

/// An fsync that fails (EIO, injected: no real disk fails on demand) is never taken for
/// success: the chunk is answered 5xx and not counted, even after a restart, and its retry
/// writes and syncs the bytes again (201, a new chunk, not 200), so the upload completes
/// with the right SHA-256. Once for the chunk's data, once for its receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_fsync_is_never_an_acknowledgement() {
    for point in ["data-fsync", "journal-fsync"] {
        let dir = tempfile::tempdir().unwrap();
        let fault = format!("{point}@2");
        let mut server = Server::start_in(dir.path(), &["--faults", &fault]);
        let api = Api::new(&server);
        let cs = 64 * KIB;
        let file = tests::random_bytes(3 * cs, 60);
        let st = api
            .create(serde_json::json!({"size": file.len(), "chunk_size": cs}))
            .await;
        api.put_ok(st.id, 0, &file[..cs]).await;
        let failed = api.put(st.id, 1, &file[cs..2 * cs], true).await;
        assert!(
            failed.status().is_server_error(),
            "{point}: the chunk whose fsync failed answered {}",
            failed.status()
        );
        let status = api.status(st.id).await;
        assert_eq!(status.received_bytes, cs as u64, "{point}: not counted");
        assert_eq!(status.missing, vec![[1, 2]], "{point}");
        if point == "data-fsync" {
            // Its receipt was never written: a restart (without faults) does not find it
            // either.
            server.kill9();
            server = Server::start_in(dir.path(), &[]);
            let api = Api::new(&server);
            let status = api.status(st.id).await;
            assert_eq!(status.received_bytes, cs as u64, "{point}: after a restart");
        }
        let api = Api::new(&server);
        api.put_ok(st.id, 1, &file[cs..2 * cs]).await;
        api.put_ok(st.id, 2, &file[2 * cs..]).await;
        let done = api
            .complete(
                st.id,
                Some(serde_json::json!({"sha256": tests::sha256_hex(&file)})),
            )
            .await;
        assert_eq!(done.status(), StatusCode::OK, "{point}");
        api.assert_content(st.id, &file).await;
        let logs = server.logs();
        if point == "journal-fsync" {
            assert!(logs.contains("injected fault"), "{point}: {logs}");
        }
    }
    tests::tally(
        "fsync-eio",
        "fault",
        "local disk: fsync EIO, of a chunk's data and of its receipt",
        2,
    );
}
