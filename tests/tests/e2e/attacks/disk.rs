//! A full disk: acknowledged chunks must survive it, and the API must be able to clear it.

use reqwest::StatusCode;
use tests::{random_bytes, Server};

use super::*;

/// The review's reproduction: the disk fills while a chunk's receipt is appended (after
/// 73 receipts the journal is 8 bytes short of a page), so part of the receipt is written.
/// Chunks acknowledged once space is back must all be there after a restart.
#[tokio::test]
async fn chunks_acknowledged_after_a_full_disk_survive_a_restart() {
    let volume = Tmpfs::mount("64m");
    let data = volume.path().join("data");
    let mut server = Server::start_in(&data, &[]);
    let api = Api::new(&server);
    let cs = 64 * KIB;
    let file = random_bytes(200 * cs, 18);
    let up = api.create(file.len(), cs).await;
    let id = up.id.to_string();
    for i in 0..73 {
        let r = api.put_chunk(&id, i, &file[i * cs..(i + 1) * cs]).await;
        assert_eq!(r.status(), StatusCode::CREATED, "chunk {i}");
    }
    let journal = data.join("uploads").join(&id).join("chunks.journal");
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 73 * 56);

    let mut filler = Filler::fill(&volume.path().join("filler"));
    filler.free(64 * KIB as u64);
    let full = api.put_chunk(&id, 73, &file[73 * cs..74 * cs]).await;
    problem(full, StatusCode::INSUFFICIENT_STORAGE, "storage-full").await;
    drop(filler);
    std::fs::remove_file(volume.path().join("filler")).unwrap();

    for i in 73..90 {
        let r = api.put_chunk(&id, i, &file[i * cs..(i + 1) * cs]).await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "chunk {i} after space came back"
        );
    }
    assert_eq!(
        std::fs::metadata(&journal).unwrap().len() % 56,
        0,
        "no fragment is left in the journal"
    );
    server.restart();
    let api = Api::new(&server);
    let status = api.status(&id).await;
    assert_eq!(
        status.received_bytes,
        90 * cs as u64,
        "every acknowledged chunk is there after the restart: missing {:?}",
        status.missing
    );
    assert_eq!(status.missing, vec![[90, 199]]);
    // And the upload completes with the right bytes.
    for i in 90..200 {
        let r = api.put_chunk(&id, i, &file[i * cs..(i + 1) * cs]).await;
        assert_eq!(r.status(), StatusCode::CREATED, "chunk {i}");
    }
    let done = api
        .req(Method::POST, &format!("/v1/uploads/{id}/complete"))
        .json(&json!({"sha256": tests::sha256_hex(&file)}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
}

/// Fills a volume: chunks of a new upload until the disk refuses one (507), then a file
/// for whatever room is left. Returns the upload's id.
async fn fill_with_an_upload(api: &Api, volume: &Tmpfs) -> (String, Filler) {
    let cs = 64 * KIB;
    let big = api.create(1 << 30, cs).await;
    let id = big.id.to_string();
    let chunk = tests::random_bytes(cs, 7);
    for i in 0.. {
        let r = api.put_chunk(&id, i, &chunk).await;
        if r.status() == StatusCode::INSUFFICIENT_STORAGE {
            break;
        }
        assert_eq!(r.status(), StatusCode::CREATED, "chunk {i}");
    }
    (id, Filler::fill(&volume.path().join("filler")))
}

/// A full disk is cleared through the API: DELETE frees an upload's bytes (and cancels
/// one that has none) instead of answering 507 because its record needs room first.
#[tokio::test]
async fn delete_works_on_a_full_disk() {
    let volume = Tmpfs::mount("16m");
    let server = Server::start_in(&volume.path().join("data"), &[]);
    let api = Api::new(&server);
    let cs = 64 * KIB;
    let with_bytes = api.create(64 * cs, cs).await.id.to_string();
    for i in 0..32 {
        let r = api
            .put_chunk(&with_bytes, i, &random_bytes(cs, i as u64))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let without_bytes = api.create(64 * cs, cs).await.id.to_string();
    let (big, _filler) = fill_with_an_upload(&api, &volume).await;
    assert!(volume.free() < cs as u64, "the volume is full");

    let r = api.delete(&without_bytes).await;
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "{}",
        r.text().await.unwrap()
    );
    let before = volume.free();
    let r = api.delete(&with_bytes).await;
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "{}",
        r.text().await.unwrap()
    );
    assert!(
        volume.free() >= before + 32 * cs as u64 - 256 * KIB as u64,
        "the upload's 2 MiB are free again: {} -> {}",
        before,
        volume.free()
    );
    for id in [&without_bytes, &with_bytes] {
        let gone = api
            .req(Method::GET, &format!("/v1/uploads/{id}"))
            .send()
            .await
            .unwrap();
        problem(gone, StatusCode::GONE, "upload-gone").await;
    }
    // The upload that filled the disk goes too, and the freed room is usable.
    assert_eq!(api.delete(&big).await.status(), StatusCode::NO_CONTENT);
    let again = api.create(cs, cs).await.id.to_string();
    let r = api.put_chunk(&again, 0, &random_bytes(cs, 1)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// Idle uploads expire on a full disk, each freeing its bytes, whatever the others do.
#[tokio::test]
async fn idle_uploads_expire_on_a_full_disk() {
    let volume = Tmpfs::mount("16m");
    let server = Server::start_in(&volume.path().join("data"), &["--upload-ttl", "2s"]);
    let api = Api::new(&server);
    let cs = 64 * KIB;
    let small = api.create(64 * cs, cs).await.id.to_string();
    for i in 0..16 {
        let r = api.put_chunk(&small, i, &random_bytes(cs, i as u64)).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let (big, _filler) = fill_with_an_upload(&api, &volume).await;
    assert!(volume.free() < cs as u64, "the volume is full");
    for id in [&small, &big] {
        eventually(
            std::time::Duration::from_secs(30),
            "the idle upload expires on the full disk",
            || async {
                let r = api
                    .req(Method::GET, &format!("/v1/uploads/{id}"))
                    .send()
                    .await
                    .unwrap();
                r.status() == StatusCode::GONE
            },
        )
        .await;
    }
    assert!(
        volume.free() > 8 * MIB as u64,
        "the expired uploads' bytes are free: {} bytes",
        volume.free()
    );
}
