//! Uploads whose writers meet trouble: a second PATCH while one is running is 423, a
//! stalled PATCH is taken over and keeps what arrived, and an upload resumes after a kill
//! -9 with every acknowledged byte.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use tests::fixture::{Storage, Store};
use tests::http::wait_until;
use tests::tus::{upload_id, Tus};
use tests::{random_bytes, Server};

use super::MIB;

/// The sender feeding a running PATCH's body, and the PATCH.
type UnderWay = (
    tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
);

/// Starts a PATCH of all of `file` at offset 0 whose body arrives under the test's
/// control, sends more than the server's 1 MiB write buffer, and waits until those bytes
/// show in the store while the PATCH is still running.
async fn patch_under_way(
    tus: &Tus,
    store: &Store,
    server: &Server,
    path: &str,
    file: &[u8],
) -> UnderWay {
    let (tx, patch) = tus.slow_patch(path, file.len());
    tx.send(Ok(Bytes::copy_from_slice(&file[..MIB + 1000])))
        .await
        .unwrap();
    let id = upload_id(path);
    wait_until(
        Duration::from_secs(10),
        "the PATCH's bytes being stored",
        || store.writing(server, id, 0, &file[..MIB]),
    )
    .await;
    (tx, patch)
}

#[tokio::test]
async fn one_writer_at_a_time() {
    let (server, store) = start!(&[]);
    let tus = Tus::new(&server);
    let file = random_bytes(2 * MIB, 14);
    let path = tus.create(file.len(), "").await;
    let (tx, slow) = patch_under_way(&tus, &store, &server, &path, &file).await;
    let second = tus.patch(&path, 0, file.clone()).await;
    assert_eq!(second.status(), StatusCode::LOCKED);
    tx.send(Ok(Bytes::copy_from_slice(&file[MIB + 1000..])))
        .await
        .unwrap();
    drop(tx);
    let first = slow.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::NO_CONTENT);
    tus.assert_completed(&path, &file).await;
}

#[tokio::test]
async fn a_stalled_patch_is_taken_over_and_keeps_what_arrived() {
    let (server, store) = start!(&["--stall-takeover", "1s", "--body-timeout", "60s"]);
    if store.storage == Storage::S3 {
        // On S3 the PATCH streams its chunk into a part, which a cut does not keep, and
        // another server may hold the append lease: the S3 suite covers a cut PATCH.
        return;
    }
    let tus = Tus::new(&server);
    let file = random_bytes(2 * MIB, 17);
    let path = tus.create(file.len(), "").await;
    let (tx, stalled) = patch_under_way(&tus, &store, &server, &path, &file).await;
    // The first PATCH now stalls. A new one takes over once it has moved nothing for 1 s:
    // the stalled one keeps what arrived (tus semantics) and the new one learns the offset.
    // Until then it is answered 423, which clients retry (as tus-js-client does).
    let deadline = Instant::now() + Duration::from_secs(10);
    let resp = loop {
        let resp = tus.patch(&path, 0, file.clone()).await;
        if resp.status() != StatusCode::LOCKED || Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let offset = tus.offset(&path).await as usize;
    assert_eq!(offset, MIB + 1000);
    tus.patch_ok(&path, offset, &file[offset..]).await;
    tus.assert_completed(&path, &file).await;
    drop(tx);
    // The stalled request was answered (or its connection closed), not left hanging.
    let first = tokio::time::timeout(Duration::from_secs(10), stalled)
        .await
        .unwrap()
        .unwrap();
    if let Ok(r) = first {
        assert!(r.status().is_client_error(), "{:?}", r.status());
    }
}

#[tokio::test]
async fn resumes_after_kill9_with_partial_chunks() {
    let (mut server, _store) = start!(&[]);
    let file = random_bytes(10 * MIB + 333, 15);
    let path = {
        let tus = Tus::new(&server);
        let path = tus.create(file.len(), "").await;
        for (a, b) in [(0, 5 * MIB + 1), (5 * MIB + 1, 9 * MIB)] {
            tus.patch_ok(&path, a, &file[a..b]).await;
        }
        path
    };
    server.restart();
    let tus = Tus::new(&server);
    // Every acknowledged byte is there, nothing more.
    assert_eq!(tus.offset(&path).await, (9 * MIB) as u64);
    tus.patch_ok(&path, 9 * MIB, &file[9 * MIB..]).await;
    tus.assert_completed(&path, &file).await;
}
