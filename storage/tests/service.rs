//! The domain core without HTTP: the rules every protocol relies on, held by every
//! backend (local disk, S3 over a bucket in memory, S3 over Ceph RGW; see `backends`).

#[macro_use]
mod backends;
use backends::Backends;

use std::sync::Arc;

use bytes::Bytes;
use common::api::{CreateUpload, UploadState, UploadStatus};
use common::{Sha256Digest, UploadId};
use futures_util::stream;
use sha2::{Digest, Sha256};
use storage::{Append, Appended, Completion, Dialect, Error, NewStream, Uploads, UploadsConfig};

fn sha(b: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(b).into())
}

fn body(b: &[u8]) -> impl futures_util::Stream<Item = storage::Result<Bytes>> + Send + Unpin {
    // Several pieces, as a network body arrives.
    let pieces: Vec<storage::Result<Bytes>> = b
        .chunks(7000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(pieces)
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

async fn parallel_out_of_order_chunks_then_restart_keeps_every_ack(b: Backends) {
    let chunk_size = b.chunk();
    let file = data(chunk_size * 9 + 123, 1);
    let id;
    {
        let uploads = b.open(UploadsConfig::default()).await;
        let created = uploads
            .create(
                CreateUpload {
                    size: Some(file.len() as u64),
                    chunk_size: Some(chunk_size as u64),
                    sha256: Some(sha(&file)),
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        id = created.status.id;
        assert_eq!(created.status.chunk_count, 10);
        let mut tasks = Vec::new();
        for i in [7u64, 3, 9, 1, 5] {
            let (uploads, chunk) = (
                uploads.clone(),
                file.chunks(chunk_size).nth(i as usize).unwrap().to_vec(),
            );
            tasks.push(tokio::spawn(async move {
                uploads
                    .put_chunk(
                        id,
                        i,
                        Some(chunk.len() as u64),
                        Some(sha(&chunk)),
                        body(&chunk),
                    )
                    .await
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap().unwrap().new);
        }
    }
    // A new service over the same directory: a restart.
    let uploads = b.open(UploadsConfig::default()).await;
    let status = uploads.status(id).await.unwrap();
    assert_eq!(status.missing, vec![[0, 0], [2, 2], [4, 4], [6, 6], [8, 8]]);
    assert_eq!(status.received_bytes, (4 * chunk_size + 123) as u64);
    for i in [0u64, 2, 4, 6, 8] {
        let chunk = file.chunks(chunk_size).nth(i as usize).unwrap();
        uploads
            .put_chunk(id, i, None, None, body(chunk))
            .await
            .unwrap();
    }
    let done = uploads.complete(id, None).await.unwrap();
    let Completion::Done(status) = done else {
        panic!("expected an inline completion")
    };
    assert_eq!(status.state, UploadState::Completed);
    assert_eq!(status.sha256, Some(sha(&file)));
    assert!(
        b.published(&uploads, id).await == file,
        "published bytes differ"
    );
}

async fn in_order_upload_is_hashed_in_flight_without_reading_back(b: Backends) {
    let chunk_size = b.chunk();
    let uploads = b.open(UploadsConfig::default()).await;
    let file = data(chunk_size * 6, 2);
    let id = uploads
        .create(
            CreateUpload {
                size: Some(file.len() as u64),
                chunk_size: Some(chunk_size as u64),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap()
        .status
        .id;
    for (i, c) in file.chunks(chunk_size).enumerate() {
        uploads
            .put_chunk(id, i as u64, None, None, body(c))
            .await
            .unwrap();
    }
    let Completion::Done(status) = uploads.complete(id, Some(sha(&file))).await.unwrap() else {
        panic!("expected an inline completion")
    };
    assert_eq!(status.sha256, Some(sha(&file)));
    assert_eq!(uploads.stats().bytes_read_back, 0);
}

async fn retries_conflicts_and_bad_bodies_change_nothing(b: Backends) {
    let chunk_size = b.chunk();
    let uploads = b.open(UploadsConfig::default()).await;
    let file = data(chunk_size * 2, 3);
    let id = uploads
        .create(
            CreateUpload {
                size: Some(file.len() as u64),
                chunk_size: Some(chunk_size as u64),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap()
        .status
        .id;
    let c0 = &file[..chunk_size];
    let other = data(chunk_size, 9);
    // Wrong digest: refused, nothing stored.
    let e = uploads
        .put_chunk(id, 0, None, Some(sha(b"x")), body(c0))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ChunkDigestMismatch { .. }), "{e}");
    // Short and long bodies.
    let e = uploads
        .put_chunk(id, 0, None, None, body(&c0[..100]))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::BodyTooShort { expected, got: 100 } if expected == chunk_size as u64),
        "{e}"
    );
    let mut long = c0.to_vec();
    long.push(0);
    let e = uploads
        .put_chunk(id, 0, None, None, body(&long))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::BodyTooLong { .. }), "{e}");
    // A body that fails midway (client gone).
    let broken = stream::iter(vec![
        Ok(Bytes::copy_from_slice(&c0[..1000])),
        Err(Error::BodyRead("reset".into())),
    ]);
    assert!(uploads.put_chunk(id, 0, None, None, broken).await.is_err());
    assert_eq!(uploads.status(id).await.unwrap().received_bytes, 0);
    // Stored, then a retry with the same bytes, then other bytes.
    assert!(
        uploads
            .put_chunk(id, 0, None, None, body(c0))
            .await
            .unwrap()
            .new
    );
    assert!(
        !uploads
            .put_chunk(id, 0, None, None, body(c0))
            .await
            .unwrap()
            .new
    );
    let e = uploads
        .put_chunk(id, 0, None, None, body(&other))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ChunkConflict { index: 0, .. }), "{e}");
    // Out of range.
    assert!(matches!(
        uploads
            .put_chunk(id, 2, None, None, body(c0))
            .await
            .unwrap_err(),
        Error::Invalid(_)
    ));
    // Complete with a chunk missing, then a wrong hash: failed, never served.
    assert!(matches!(
        uploads.complete(id, None).await.unwrap_err(),
        Error::MissingChunks(m) if m == vec![[1, 1]]
    ));
    uploads
        .put_chunk(id, 1, None, None, body(&file[chunk_size..]))
        .await
        .unwrap();
    let e = uploads
        .complete(id, Some(sha(b"not it")))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Sha256Mismatch { actual, .. } if actual == sha(&file)),
        "{e}"
    );
    assert_eq!(uploads.status(id).await.unwrap().state, UploadState::Failed);
    assert!(matches!(
        uploads.content(id).await.unwrap_err(),
        Error::WrongState("failed")
    ));
}

async fn concurrent_completes_complete_once(b: Backends) {
    let chunk_size = b.chunk();
    let uploads = b.open(UploadsConfig::default()).await;
    let file = data(chunk_size * 3, 4);
    let id = uploads
        .create(
            CreateUpload {
                size: Some(file.len() as u64),
                chunk_size: Some(chunk_size as u64),
                sha256: Some(sha(&file)),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap()
        .status
        .id;
    for (i, c) in file.chunks(chunk_size).enumerate().rev() {
        uploads
            .put_chunk(id, i as u64, None, None, body(c))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let uploads = uploads.clone();
        tasks.push(tokio::spawn(
            async move { uploads.complete(id, None).await },
        ));
    }
    let mut verifying = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Completion::Done(s) => assert_eq!(s.sha256, Some(sha(&file))),
            Completion::Verifying(_) => verifying += 1,
        }
    }
    // On one server a small upload is verified inline, and the others wait for it; on a
    // shared bucket a completion that finds another verifying says so (202).
    if matches!(b, Backends::Local(_)) {
        assert_eq!(verifying, 0, "small uploads verify inline");
    }
    let status = uploads.status(id).await.unwrap();
    assert_eq!(status.state, UploadState::Completed);
    assert_eq!(status.sha256, Some(sha(&file)));
}

async fn idempotent_create_and_cancel(b: Backends) {
    let uploads = b.open(UploadsConfig::default()).await;
    let req = CreateUpload {
        size: Some(10),
        ..Default::default()
    };
    let a = uploads.create(req.clone(), Some("k1")).await.unwrap();
    let again = uploads.create(req.clone(), Some("k1")).await.unwrap();
    assert!(a.new && !again.new);
    assert_eq!(a.status.id, again.status.id);
    let other = CreateUpload {
        size: Some(11),
        ..req
    };
    assert!(matches!(
        uploads.create(other, Some("k1")).await.unwrap_err(),
        Error::IdempotencyConflict
    ));
    uploads.cancel(a.status.id).await.unwrap();
    assert!(matches!(
        uploads.status(a.status.id).await.unwrap_err(),
        Error::Gone("cancelled")
    ));
    assert_eq!(
        b.leftovers(a.status.id).await,
        0,
        "a cancelled upload's bytes are freed"
    );
}

async fn idle_uploads_expire_busy_ones_do_not(b: Backends) {
    let config = UploadsConfig {
        upload_ttl: std::time::Duration::from_millis(1),
        ..Default::default()
    };
    let uploads = b.open(config).await;
    let id = uploads
        .create(
            CreateUpload {
                size: Some(10),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap()
        .status
        .id;
    // A chunk body that never ends keeps the upload busy.
    let (tx, rx) = tokio::sync::mpsc::channel::<storage::Result<Bytes>>(1);
    tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
    let body = tokio_stream_from(rx);
    let u2 = uploads.clone();
    let pending = tokio::spawn(async move { u2.put_chunk(id, 0, None, None, body).await });
    // The channel holds one piece: this send returns once the write took the first one,
    // so the write is under way.
    tx.send(Ok(Bytes::from_static(b"d"))).await.unwrap();
    assert_eq!(uploads.sweep().await.unwrap().expired, 0);
    drop(tx);
    assert!(pending.await.unwrap().is_err(), "the short body is refused");
    let mut expired = 0;
    for _ in 0..1000 {
        expired += uploads.sweep().await.unwrap().expired;
        if expired > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(expired, 1);
    assert!(matches!(
        uploads.status(id).await.unwrap_err(),
        Error::Gone("expired")
    ));
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<storage::Result<Bytes>>,
) -> impl futures_util::Stream<Item = storage::Result<Bytes>> + Send + Unpin {
    Box::pin(stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Creates an in-order upload without a length, as tus creation-defer-length does.
async fn create_deferred(uploads: &Arc<Uploads>) -> UploadStatus {
    let new = NewStream {
        defer_length: true,
        ..Default::default()
    };
    uploads
        .create_stream(Dialect::Tus, new, Append::default(), body(&[]), |_| {})
        .await
        .unwrap()
        .status
}

/// Appends `bytes` at `at` as a tus PATCH does.
async fn append(
    uploads: &Arc<Uploads>,
    id: UploadId,
    at: u64,
    bytes: impl futures_util::Stream<Item = storage::Result<Bytes>> + Send + Unpin,
) -> storage::Result<Appended> {
    let req = Append {
        offset: at,
        has_body: true,
        ..Default::default()
    };
    uploads.append_stream(id, Dialect::Tus, req, bytes).await
}

/// An in-order upload created without a length (tus creation-defer-length, an IETF
/// upload with no length yet): it grows to at most the ceiling, never completes on its
/// own, learns its length once (never below what is stored, never changed after), and
/// then completes with the whole file's SHA-256 when its bytes reach that length.
async fn a_deferred_length_is_declared_once_then_the_upload_completes(b: Backends) {
    const MIB: usize = 1 << 20;
    let config = UploadsConfig {
        max_upload_size: 40 * MIB as u64,
        ..UploadsConfig::default()
    };
    let uploads = b.open(config).await;
    let file = data(17 * MIB + 3, 7);
    let created = create_deferred(&uploads).await;
    let id = created.id;
    assert!(created.length_deferred);
    assert_eq!(created.size, 40 * MIB as u64);
    let first = 9 * MIB + 11;
    let appended = append(&uploads, id, 0, body(&file[..first])).await.unwrap();
    assert_eq!(appended.offset, first as u64);
    assert!(!appended.done());
    // Past the ceiling: refused, nothing appended.
    let too_much = data(32 * MIB, 8);
    let req = Append {
        offset: first as u64,
        body_len: Some(too_much.len() as u64),
        has_body: true,
        ..Default::default()
    };
    assert!(matches!(
        uploads
            .append_stream(id, Dialect::Tus, req, body(&too_much))
            .await,
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(
        uploads.status(id).await.unwrap().received_bytes,
        first as u64
    );
    // A length below what is stored, or above the ceiling, is refused.
    assert!(matches!(
        uploads.declare_length(id, first as u64 - 1).await,
        Err(Error::InconsistentLength(_))
    ));
    assert!(matches!(
        uploads.declare_length(id, 41 * MIB as u64).await,
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(
        uploads.declare_length(id, file.len() as u64).await.unwrap(),
        None
    );
    let status = uploads.status(id).await.unwrap();
    assert!(!status.length_deferred);
    assert_eq!(status.size, file.len() as u64);
    assert_eq!(status.chunk_count, 3);
    // Once said, the length stays.
    assert!(matches!(
        uploads.declare_length(id, file.len() as u64 + 1).await,
        Err(Error::InconsistentLength(_))
    ));
    assert_eq!(
        uploads.declare_length(id, file.len() as u64).await.unwrap(),
        None
    );
    let done = append(&uploads, id, first as u64, body(&file[first..]))
        .await
        .unwrap()
        .status;
    assert_eq!(done.state, UploadState::Completed);
    assert_eq!(done.sha256, Some(sha(&file)));
    // The content is the file exactly: not what the refused append left past its end.
    assert!(
        b.published(&uploads, id).await == file,
        "published bytes differ"
    );
}

/// The length declared where the bytes end, after a restart lost the hash of the
/// partly appended last chunk: that chunk is read back, closed with its digest, and the
/// upload completes with the right SHA-256.
async fn a_length_declared_at_the_end_after_a_restart_completes(b: Backends) {
    const MIB: usize = 1 << 20;
    let config = UploadsConfig {
        max_upload_size: 40 * MIB as u64,
        ..UploadsConfig::default()
    };
    let file = data(9 * MIB + 7, 9);
    let id = {
        let uploads = b.open(config.clone()).await;
        let id = create_deferred(&uploads).await.id;
        append(&uploads, id, 0, body(&file)).await.unwrap();
        id
    };
    let uploads = b.open(config).await;
    let done = uploads
        .declare_length(id, file.len() as u64)
        .await
        .unwrap()
        .expect("every byte is there");
    assert_eq!(done.state, UploadState::Completed);
    assert_eq!(done.sha256, Some(sha(&file)));
    assert_eq!(done.size, file.len() as u64);
}

/// Uneven in-order appends (across chunk ends, a body cut short) leave receipts whose
/// digests are each chunk's SHA-256, and the whole-file hash is the file's: the two
/// hashes an append computes beside its receiving are the bytes', chunk by chunk.
async fn appends_receipt_each_chunk_with_its_digest(b: Backends) {
    use storage::backend::Receipt;
    const MIB: usize = 1 << 20;
    let (uploads, backend) = b.open_with_backend(UploadsConfig::default()).await;
    let file = data(3 * 8 * MIB + 12_345, 11);
    let id = uploads
        .create_stream(
            Dialect::Tus,
            NewStream {
                length: Some(file.len() as u64),
                ..Default::default()
            },
            Append::default(),
            body(&[]),
            |_| {},
        )
        .await
        .unwrap()
        .status
        .id;
    assert_eq!(uploads.status(id).await.unwrap().chunk_size, 8 * MIB as u64);
    let mut at = 0;
    for len in [1, 5 * MIB, 7 * MIB + 3, 1_000, 9 * MIB] {
        let appended = append(&uploads, id, at as u64, body(&file[at..at + len]))
            .await
            .unwrap();
        at += len;
        assert_eq!(appended.offset, at as u64);
    }
    // A body cut short: what arrived is kept.
    let cut = stream::iter(vec![
        Ok(Bytes::copy_from_slice(&file[at..at + 100_000])),
        Err(Error::Io(std::io::Error::other("cut"))),
    ]);
    assert!(append(&uploads, id, at as u64, cut).await.is_err());
    at += 100_000;
    assert_eq!(uploads.status(id).await.unwrap().received_bytes, at as u64);
    let loaded = backend.load(id).await.unwrap().unwrap();
    let mut whole = 0;
    for r in &loaded.receipts {
        if let Receipt::Chunk(c) = r {
            let from = c.index as usize * 8 * MIB;
            let want = Sha256::digest(&file[from..from + c.size as usize]);
            // A bucket's listing names the chunks stored; their digests are in the claims.
            if c.sha256.0 != [0; 32] {
                assert_eq!(c.sha256.0, <[u8; 32]>::from(want), "chunk {}", c.index);
            }
            whole += 1;
        }
    }
    assert_eq!(whole, at / (8 * MIB), "a receipt for each whole chunk");
    let done = append(&uploads, id, at as u64, body(&file[at..]))
        .await
        .unwrap();
    assert!(done.done(), "completed by its last append");
    let st = done.status;
    assert_eq!(st.state, UploadState::Completed);
    assert_eq!(
        st.sha256,
        Some(Sha256Digest(<[u8; 32]>::from(Sha256::digest(&file))))
    );
}

conformance!(
    parallel_out_of_order_chunks_then_restart_keeps_every_ack,
    in_order_upload_is_hashed_in_flight_without_reading_back,
    retries_conflicts_and_bad_bodies_change_nothing,
    concurrent_completes_complete_once,
    idempotent_create_and_cancel,
    idle_uploads_expire_busy_ones_do_not,
    a_deferred_length_is_declared_once_then_the_upload_completes,
    a_length_declared_at_the_end_after_a_restart_completes,
    appends_receipt_each_chunk_with_its_digest,
);
