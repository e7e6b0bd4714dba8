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
