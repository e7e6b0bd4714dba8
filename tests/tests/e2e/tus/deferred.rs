//! creation-defer-length: an upload created with `Upload-Defer-Length: 1` grows up to the
//! server's ceiling with its length unsaid (HEAD says so and no `Upload-Length`, the native
//! status says `length_deferred` and the ceiling as its size), learns its length from a
//! PATCH, keeps it from then on, and survives a restart either way.

use common::api::UploadState;
use reqwest::StatusCode;
use tests::http::header;
use tests::random_bytes;
use tests::tus::Tus;

use super::MIB;

/// HEAD of a deferred upload at `offset`: (offset, no `Upload-Length`, `Upload-Defer-Length: 1`).
fn deferred_at(offset: usize) -> (u64, Option<u64>, Option<String>) {
    (offset as u64, None, Some("1".into()))
}

/// HEAD of an upload of `length` at `offset` (`Upload-Length`, no `Upload-Defer-Length`).
fn known_at(offset: usize, length: usize) -> (u64, Option<u64>, Option<String>) {
    (offset as u64, Some(length as u64), None)
}

/// creation-defer-length: created with `Upload-Defer-Length: 1` (and a first part),
/// HEAD says so and no `Upload-Length`, the native status says `length_deferred`; a PATCH
/// past the ceiling is 413; the length cannot be below the bytes stored, is said by the
/// last PATCH, and never changes; the upload completes with the file's SHA-256.
#[tokio::test]
async fn a_deferred_length_is_said_by_the_last_patch() {
    let (server, _store) = start!(&["--max-upload-size", "3MiB"]);
    let tus = Tus::new(&server);
    let bytes = random_bytes(2 * MIB + 4_321, 41);
    let len = bytes.len();
    let loc = tus.create_with(None, &bytes[..700_000]).await;
    assert_eq!(tus.lengths(&loc).await, deferred_at(700_000));
    let status = tus.native(&loc).await;
    assert!(status.length_deferred);
    assert_eq!(status.size, 3 * MIB as u64);
    // Past the ceiling: nothing appended.
    let resp = tus.patch(&loc, 700_000, random_bytes(3 * MIB, 42)).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(tus.offset(&loc).await, 700_000);
    tus.patch_ok(&loc, 700_000, &bytes[700_000..2 * MIB]).await;
    // A length below what this PATCH ends at.
    let rest = bytes[2 * MIB..].to_vec();
    let resp = tus
        .patch_declaring(&loc, 2 * MIB, 2 * MIB + 10, rest.clone())
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(tus.offset(&loc).await, 2 * MIB as u64);
    let resp = tus.patch_declaring(&loc, 2 * MIB, len, rest).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "upload-offset"), len.to_string());
    let status = tus.assert_completed(&loc, &bytes).await;
    assert!(!status.length_deferred);
    assert_eq!(tus.lengths(&loc).await, known_at(len, len));

    // Once said, the length stays: another one is refused, nothing appended.
    let loc = tus.create_deferred().await;
    let resp = tus
        .patch_declaring(&loc, 0, len, bytes[..1000].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = tus
        .patch_declaring(&loc, 1000, len + 1, bytes[1000..2000].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(tus.offset(&loc).await, 1000);
}

/// creation-defer-length up to the ceiling: a deferred upload takes appends in several
/// PATCHes (HEAD: its offset, `Upload-Defer-Length: 1`, no `Upload-Length`; native status:
/// uploading, `length_deferred`, `size` the ceiling) up to exactly `--max-upload-size`, where
/// it is still not complete; a byte more is 413, a length below the offset is 400, a length
/// above the ceiling is 413, each leaving it as it was; an empty PATCH saying the length is
/// the offset completes it with the file's SHA-256.
#[tokio::test]
async fn a_deferred_upload_grows_to_the_ceiling_and_completes_only_once_said() {
    let (server, _store) = start!(&["--max-upload-size", "1MiB"]);
    let tus = Tus::new(&server);
    let bytes = random_bytes(MIB, 43);
    let loc = tus.create_deferred().await;
    assert_eq!(tus.lengths(&loc).await, deferred_at(0));
    let mut at = 0;
    for end in [300_000, 700_001, MIB] {
        tus.patch_ok(&loc, at, &bytes[at..end]).await;
        at = end;
        assert_eq!(tus.lengths(&loc).await, deferred_at(at));
        let status = tus.native(&loc).await;
        assert_eq!(status.state, UploadState::Uploading, "at {at}");
        assert!(status.length_deferred, "at {at}");
        assert_eq!(status.size, MIB as u64);
        assert_eq!(status.received_bytes, at as u64);
        assert!(status.sha256.is_none());
    }
    // Full to the ceiling, and still deferred: nothing more fits.
    let resp = tus.patch(&loc, MIB, b"x".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A length below the offset, and one above the ceiling.
    let resp = tus.patch_declaring(&loc, MIB, MIB - 1, Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = tus.patch_declaring(&loc, MIB, MIB + 1, Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(tus.lengths(&loc).await, deferred_at(MIB));
    assert_eq!(tus.native(&loc).await.state, UploadState::Uploading);

    let resp = tus.patch_declaring(&loc, MIB, MIB, Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "upload-offset"), MIB.to_string());
    let status = tus.assert_completed(&loc, &bytes).await;
    assert!(!status.length_deferred);
    assert_eq!(tus.lengths(&loc).await, known_at(MIB, MIB));
}

/// A length said by a PATCH in the middle of a deferred upload is kept: from then on HEAD
/// has `Upload-Length` and no `Upload-Defer-Length`, the native status has `size` the length
/// and no `length_deferred` while the upload goes on; the same `Upload-Length` again is
/// accepted, another one is 400 and appends nothing, and so is a body past the length; the
/// upload completes, without saying the length again, with the file's SHA-256. An upload
/// whose length was known at creation takes its own length on a PATCH and refuses another.
#[tokio::test]
async fn a_deferred_length_said_mid_upload_is_kept() {
    let (server, _store) = start!(&[]);
    let tus = Tus::new(&server);
    let bytes = random_bytes(6 * MIB + 777, 44);
    let len = bytes.len();
    let part = |a: usize, b: usize| bytes[a..b].to_vec();
    let loc = tus.create_deferred().await;
    tus.patch_ok(&loc, 0, &bytes[..3 * MIB]).await;
    let resp = tus
        .patch_declaring(&loc, 3 * MIB, len, part(3 * MIB, 4 * MIB))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "upload-offset"), (4 * MIB).to_string());
    assert_eq!(tus.lengths(&loc).await, known_at(4 * MIB, len));
    let status = tus.native(&loc).await;
    assert_eq!(status.state, UploadState::Uploading);
    assert!(!status.length_deferred);
    assert_eq!(status.size, len as u64);
    assert_eq!(status.received_bytes, (4 * MIB) as u64);

    // The same length again: fine.
    let resp = tus
        .patch_declaring(&loc, 4 * MIB, len, part(4 * MIB, 5 * MIB))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // Another length, either way: 400, nothing appended.
    for other in [len - 1, len + 1] {
        let resp = tus
            .patch_declaring(&loc, 5 * MIB, other, part(5 * MIB, 6 * MIB))
            .await;
        let code = resp.status();
        assert_eq!(code, StatusCode::BAD_REQUEST, "Upload-Length {other}");
    }
    // A body past the length said.
    let mut long = part(5 * MIB, len);
    long.push(0);
    let resp = tus.patch(&loc, 5 * MIB, long).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(tus.lengths(&loc).await, known_at(5 * MIB, len));
    tus.patch_ok(&loc, 5 * MIB, &bytes[5 * MIB..]).await;
    tus.assert_completed(&loc, &bytes).await;

    // Known at creation: its own length on a PATCH is accepted, another one is not.
    let known = tus.create(10, "").await;
    let resp = tus.patch_declaring(&known, 0, 10, b"01234".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = tus.patch_declaring(&known, 5, 11, b"56789".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(tus.lengths(&known).await, known_at(5, 10));
}

/// A deferred upload (created with a first part) survives a kill -9 with its length still
/// deferred and every acknowledged byte, across 8 MiB chunk boundaries (with a ceiling of
/// 32 GiB, deferred uploads have 8 MiB chunks); the length said after the restart cuts the
/// last chunk, the upload completes with the file's SHA-256, and stays so after another
/// restart.
#[tokio::test]
async fn a_deferred_upload_resumes_after_kill9_and_is_said_after() {
    let (mut server, _store) = start!(&["--max-upload-size", "32GiB"]);
    let bytes = random_bytes(17 * MIB + 4_321, 45);
    let len = bytes.len();
    let loc = {
        let tus = Tus::new(&server);
        let loc = tus.create_with(None, &bytes[..MIB]).await;
        assert_eq!(tus.native(&loc).await.chunk_size, 8 * MIB as u64);
        tus.patch_ok(&loc, MIB, &bytes[MIB..9 * MIB + 100]).await;
        loc
    };
    server.restart();
    let tus = Tus::new(&server);
    assert_eq!(tus.lengths(&loc).await, deferred_at(9 * MIB + 100));
    let status = tus.native(&loc).await;
    assert!(status.length_deferred);
    assert_eq!(status.state, UploadState::Uploading);
    assert_eq!(status.received_bytes, (9 * MIB + 100) as u64);
    tus.patch_ok(&loc, 9 * MIB + 100, &bytes[9 * MIB + 100..16 * MIB])
        .await;
    let resp = tus
        .patch_declaring(&loc, 16 * MIB, len, bytes[16 * MIB..].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "upload-offset"), len.to_string());
    let status = tus.assert_completed(&loc, &bytes).await;
    assert_eq!(status.chunk_count, 3);

    server.restart();
    let tus = Tus::new(&server);
    let status = tus.assert_completed(&loc, &bytes).await;
    assert!(!status.length_deferred);
    assert_eq!(tus.lengths(&loc).await, known_at(len, len));
}
