//! The S3 backend's logic in process, over a bucket in memory with S3's semantics
//! (`storage::backend::s3::memory`): chunk writes, retries and conflicts, the whole-file
//! hash across servers and restarts, spills, publication without a copy, cancel and
//! expiry, appends; and what each costs in store requests.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::api::{CreateUpload, UploadState};
use common::{Sha256Digest, UploadId};
use futures_util::stream;
use sha2::{Digest, Sha256};
use storage::backend::s3::memory::MemoryStore;
use storage::backend::s3::{S3Backend, S3Config};
use storage::{Append, Completion, Dialect, Error, NewStream, Uploads, UploadsConfig};

const MIB: usize = 1 << 20;
const CHUNK: usize = 5 * MIB;

fn sha(b: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(b).into())
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

fn body(b: &[u8]) -> impl futures_util::Stream<Item = storage::Result<Bytes>> + Send + Unpin {
    let pieces: Vec<storage::Result<Bytes>> = b
        .chunks(256 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(pieces)
}

/// A server over `store`.
async fn server(store: &Arc<MemoryStore>, config: UploadsConfig) -> Arc<Uploads> {
    let backend = Arc::new(S3Backend::over(store.clone(), &S3Config::default()));
    Uploads::open(backend, config).await.unwrap()
}

async fn create(up: &Uploads, file: &[u8]) -> UploadId {
    up.create(
        CreateUpload {
            size: Some(file.len() as u64),
            chunk_size: Some(CHUNK as u64),
            sha256: Some(sha(file)),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap()
    .status
    .id
}

async fn put(up: &Uploads, id: UploadId, file: &[u8], index: usize) -> storage::Result<bool> {
    let bytes = &file[index * CHUNK..((index + 1) * CHUNK).min(file.len())];
    up.put_chunk(
        id,
        index as u64,
        Some(bytes.len() as u64),
        Some(sha(bytes)),
        body(bytes),
    )
    .await
    .map(|s| s.new)
}

async fn content(store: &MemoryStore, up: &Uploads, id: UploadId) -> Vec<u8> {
    use futures_util::TryStreamExt;
    let (record, _) = up.content(id).await.unwrap();
    let got: Vec<Bytes> = up
        .read_content(&record, 0, record.size)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let _ = store;
    got.concat()
}

/// An upload sent in order, four chunks at a time, on one server: at most three store
/// requests a chunk in all (its part and its claim while it is sent, its claim read back at
/// completion), nothing spilled or copied, and the file appears only once verified.
#[tokio::test]
async fn in_order_chunks_cost_three_requests_and_no_copy() {
    let store = MemoryStore::new();
    let up = server(&store, UploadsConfig::default()).await;
    let file = data(8 * CHUNK + 1234, 1);
    let id = create(&up, &file).await;
    let file_key = format!("files/{id}");
    let before = store.total_requests();
    let writes_before = store.object_bytes_written();
    let sends: Vec<_> = (0..9)
        .map(|i| {
            let (up, file) = (up.clone(), file.clone());
            tokio::spawn(async move { put(&up, id, &file, i).await })
        })
        .collect();
    for s in sends {
        assert!(s.await.unwrap().unwrap(), "a new chunk");
    }
    assert!(
        !store.keys().contains(&file_key),
        "no file before verification"
    );
    let Completion::Done(st) = up.complete(id, None).await.unwrap() else {
        panic!("verified inline")
    };
    assert_eq!(st.state, UploadState::Completed);
    assert_eq!(st.sha256, Some(sha(&file)));
    let requests = store.total_requests() - before;
    let small_writes = store.object_bytes_written() - writes_before;
    assert!(
        small_writes < 64 * 1024,
        "{small_writes} bytes written besides the parts: spilled or copied"
    );
    let by_op = store.requests();
    let n = |op: &str| by_op.get(op).copied().unwrap_or(0);
    assert_eq!(n("upload_part"), 9, "{by_op:?}");
    assert_eq!(n("copy"), 0, "{by_op:?}");
    // Per chunk: its part and its claim while it is sent, its claim read at completion;
    // then a handful for the whole upload (its record read and written, the listings of
    // its chunks, one ListParts, the join, the clean-up).
    let per_upload = 16;
    assert!(
        requests <= 9 * 3 + per_upload,
        "{requests} requests for 9 chunks: {by_op:?}"
    );
    assert_eq!(content(&store, &up, id).await, file);
    assert_eq!(up.stats().bytes_read_back, 0);
}

/// A retry of a stored chunk with the same bytes is 200 (not new); with other bytes it is
/// a conflict (409). On the server that saw the chunk stored, the other bytes never reach
/// the store; on another server they replace the part, and completion asks for the chunk
/// again (409 with it missing, and missing in the status), takes only the acknowledged
/// bytes, and publishes them.
#[tokio::test]
async fn retries_are_answered_and_conflicts_refused() {
    let store = MemoryStore::new();
    let up = server(&store, UploadsConfig::default()).await;
    let file = data(2 * CHUNK, 2);
    let id = create(&up, &file).await;
    assert!(put(&up, id, &file, 0).await.unwrap());
    assert!(!put(&up, id, &file, 0).await.unwrap(), "a retry");
    let other = data(CHUNK, 9);
    let other_bytes = |up: Arc<Uploads>| {
        let other = other.clone();
        async move {
            up.put_chunk(id, 0, Some(CHUNK as u64), Some(sha(&other)), body(&other))
                .await
        }
    };
    let parts_before = store.requests().get("upload_part").copied();
    let conflict = other_bytes(up.clone()).await;
    assert!(
        matches!(conflict, Err(Error::ChunkConflict { index: 0, .. })),
        "{conflict:?}"
    );
    assert_eq!(
        store.requests().get("upload_part").copied(),
        parts_before,
        "nothing sent"
    );
    let elsewhere = server(&store, UploadsConfig::default()).await;
    let conflict = other_bytes(elsewhere).await;
    assert!(
        matches!(conflict, Err(Error::ChunkConflict { index: 0, .. })),
        "{conflict:?}"
    );
    assert!(put(&up, id, &file, 1).await.unwrap());
    match up.complete(id, None).await {
        Err(Error::MissingChunks(m)) => assert_eq!(m, vec![[0, 0]]),
        other => panic!("{other:?}"),
    }
    // The status asks for it again, on every server, also the one that saw it claimed.
    let resent = server(&store, UploadsConfig::default()).await;
    assert_eq!(resent.status(id).await.unwrap().missing, vec![[0, 0]]);
    assert!(
        put(&up, id, &file, 0).await.unwrap(),
        "the acknowledged bytes, stored again"
    );
    up.complete(id, None).await.unwrap();
    assert_eq!(content(&store, &up, id).await, file);
}

/// Chunks sent alternately to two servers on one bucket, four at a time: each server
/// continues the whole-file hash from the midstate the other stored with its chunks, so
/// the file is verified without reading anything back.
#[tokio::test]
async fn two_servers_hash_in_turn_through_the_claims() {
    let store = MemoryStore::new();
    let a = server(&store, UploadsConfig::default()).await;
    let b = server(&store, UploadsConfig::default()).await;
    let file = data(6 * CHUNK + 77, 3);
    let id = create(&a, &file).await;
    for round in (0..7).collect::<Vec<_>>().chunks(2) {
        let sends: Vec<_> = round
            .iter()
            .map(|&i| {
                let up = if i % 2 == 0 { a.clone() } else { b.clone() };
                let file = file.clone();
                tokio::spawn(async move { put(&up, id, &file, i).await })
            })
            .collect();
        for s in sends {
            s.await.unwrap().unwrap();
        }
    }
    let st = b.complete(id, None).await.unwrap();
    let Completion::Done(st) = st else {
        panic!("inline")
    };
    assert_eq!(st.sha256, Some(sha(&file)));
    assert_eq!(a.stats().bytes_read_back + b.stats().bytes_read_back, 0);
    assert_eq!(content(&store, &b, id).await, file);
}

/// Hands every claim one server writes straight to another (what the HTTP layer does
/// between processes, see `storage::peers`).
#[derive(Default)]
struct Relay(std::sync::OnceLock<Arc<Uploads>>);

impl storage::peers::Announce for Relay {
    fn claimed(&self, note: storage::peers::ClaimNote) {
        if let Some(to) = self.0.get() {
            to.learn(&[note]);
        }
    }
}

/// Store reads (GetObject) of an upload sent in order, one chunk at a time, alternately
/// to two servers, and completed on the second; with `told`, each server tells the other
/// of the claims it writes.
async fn reads_alternating(told: bool) -> u64 {
    let store = MemoryStore::new();
    let a = server(&store, UploadsConfig::default()).await;
    let b = server(&store, UploadsConfig::default()).await;
    if told {
        for (from, to) in [(&a, &b), (&b, &a)] {
            let relay = Arc::new(Relay::default());
            let _ = relay.0.set(to.clone());
            from.announce_to(relay);
        }
    }
    let file = data(6 * CHUNK + 5, 9);
    let id = create(&a, &file).await;
    let before = store.requests().get("get").copied().unwrap_or(0);
    for i in 0..7 {
        put(if i % 2 == 0 { &a } else { &b }, id, &file, i)
            .await
            .unwrap();
    }
    let Completion::Done(st) = b.complete(id, None).await.unwrap() else {
        panic!("inline")
    };
    assert_eq!(st.sha256, Some(sha(&file)));
    assert_eq!(a.stats().bytes_read_back + b.stats().bytes_read_back, 0);
    assert_eq!(content(&store, &b, id).await, file);
    store.requests().get("get").copied().unwrap_or(0) - before
}

/// Servers that tell each other of their claims read none of them from the store: not
/// the chunk before each chunk (6 here), nor at completion the last one (written by the
/// other server, which no chunk followed).
#[tokio::test]
async fn servers_told_of_each_others_claims_read_none() {
    let silent = reads_alternating(false).await;
    let told = reads_alternating(true).await;
    assert!(
        told + 7 <= silent,
        "reads with notes {told}, without {silent}: 7 claims fewer expected"
    );
}

/// A server restarted mid-upload (its memory lost) finishes from what the bucket holds:
/// the chunks acknowledged before, with their midstates.
#[tokio::test(start_paused = true)]
async fn a_restart_keeps_every_acknowledged_chunk() {
    let store = MemoryStore::new();
    let file = data(4 * CHUNK, 4);
    let id = {
        let up = server(&store, UploadsConfig::default()).await;
        let id = create(&up, &file).await;
        put(&up, id, &file, 0).await.unwrap();
        put(&up, id, &file, 1).await.unwrap();
        id
    };
    let up = server(&store, UploadsConfig::default()).await;
    let st = up.status(id).await.unwrap();
    assert_eq!(st.received_bytes, 2 * CHUNK as u64);
    put(&up, id, &file, 3).await.unwrap();
    put(&up, id, &file, 2).await.unwrap();
    up.complete(id, None).await.unwrap();
    assert_eq!(content(&store, &up, id).await, file);
}

/// A chunk whose turn in the whole-file hash does not come (the chunk before it never
/// arrives while it waits) is spilled: acknowledged with its bytes kept readable, and read
/// back at completion.
#[tokio::test(start_paused = true)]
async fn a_chunk_whose_turn_does_not_come_is_spilled() {
    let store = MemoryStore::new();
    let up = server(&store, UploadsConfig::default()).await;
    let file = data(3 * CHUNK, 5);
    let id = create(&up, &file).await;
    assert!(put(&up, id, &file, 2).await.unwrap());
    assert!(
        store.keys().iter().any(|k| k.ends_with(".spill")),
        "{:?}",
        store.keys()
    );
    put(&up, id, &file, 0).await.unwrap();
    put(&up, id, &file, 1).await.unwrap();
    up.complete(id, None).await.unwrap();
    assert_eq!(content(&store, &up, id).await, file);
    assert_eq!(up.stats().bytes_read_back, CHUNK as u64);
    assert!(
        !store.keys().iter().any(|k| k.ends_with(".spill")),
        "spills removed"
    );
}

/// A wrong whole-file SHA-256 publishes nothing; cancel aborts the multipart upload and
/// removes every object of the upload.
#[tokio::test]
async fn a_mismatch_publishes_nothing_and_cancel_leaves_nothing() {
    let store = MemoryStore::new();
    let up = server(&store, UploadsConfig::default()).await;
    let file = data(CHUNK + 5, 6);
    let id = up
        .create(
            CreateUpload {
                size: Some(file.len() as u64),
                chunk_size: Some(CHUNK as u64),
                sha256: Some(sha(b"something else")),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap()
        .status
        .id;
    put(&up, id, &file, 0).await.unwrap();
    put(&up, id, &file, 1).await.unwrap();
    assert!(matches!(
        up.complete(id, None).await,
        Err(Error::Sha256Mismatch { .. })
    ));
    assert!(!store.keys().contains(&format!("files/{id}")));
    assert_eq!(store.multipart_count(), 0, "aborted");

    let id = create(&up, &file).await;
    put(&up, id, &file, 0).await.unwrap();
    up.cancel(id).await.unwrap();
    assert_eq!(store.multipart_count(), 0);
    let left: Vec<String> = store
        .keys()
        .into_iter()
        // The tombstone (its record) and its listing entry stay until the purge.
        .filter(|k| {
            k.contains(&id.to_string()) && !k.ends_with("record.json") && !k.starts_with("index/")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(matches!(put(&up, id, &file, 1).await, Err(Error::Gone(_))));
}

/// An idle upload expires; a chunk write that began before the expiry looked again
/// undoes it.
#[tokio::test]
async fn idle_uploads_expire_and_abort_their_parts() {
    let store = MemoryStore::new();
    let config = UploadsConfig {
        upload_ttl: Duration::from_millis(300),
        ..UploadsConfig::default()
    };
    let up = server(&store, config).await;
    let file = data(2 * CHUNK, 7);
    let id = create(&up, &file).await;
    put(&up, id, &file, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let report = up.sweep().await.unwrap();
    assert_eq!(report.expired, 1);
    assert_eq!(store.multipart_count(), 0);
    assert!(matches!(up.status(id).await, Err(Error::Gone("expired"))));
}

/// tus appends of uneven sizes over S3: short ones held as pieces, chunks streamed as
/// parts, the file verified and published with no copy.
#[tokio::test]
async fn uneven_appends_become_parts() {
    let store = MemoryStore::new();
    let up = server(&store, UploadsConfig::default()).await;
    let file = data(2 * 8 * MIB + 999, 8);
    let new = NewStream {
        length: Some(file.len() as u64),
        ..Default::default()
    };
    let id = up
        .create_stream(Dialect::Tus, new, Append::default(), body(&[]), |_| {})
        .await
        .unwrap()
        .status
        .id;
    let mut at = 0;
    for len in [1000, 3 * MIB, 6 * MIB, 10, file.len() - 1000 - 9 * MIB - 10] {
        let req = Append {
            offset: at as u64,
            body_len: Some(len as u64),
            has_body: true,
            ..Default::default()
        };
        let a = up
            .append_stream(id, Dialect::Tus, req, body(&file[at..at + len]))
            .await
            .unwrap();
        at += len;
        assert_eq!(a.offset, at as u64);
    }
    let st = up.status(id).await.unwrap();
    assert_eq!(st.state, UploadState::Completed);
    assert_eq!(st.sha256, Some(sha(&file)));
    assert_eq!(content(&store, &up, id).await, file);
}

/// A store that hangs (accepts requests, never answers) is a failure within its
/// deadline: new requests are "retry soon" (503) in seconds, the health check fails, and
/// service resumes by itself once the store answers again; nothing acknowledged is lost.
#[tokio::test(start_paused = true)]
async fn a_hung_store_is_unavailable_in_seconds_and_service_resumes() {
    use storage::backend::s3::deadline::{Deadlined, Deadlines};
    let store = MemoryStore::new();
    let deadlines = Deadlines {
        request: Duration::from_secs(3),
        stall: Duration::from_secs(4),
    };
    let timed = Arc::new(Deadlined::new(store.clone(), deadlines));
    let backend = Arc::new(S3Backend::over(timed, &S3Config::default()));
    let up = Uploads::open(backend, UploadsConfig::default())
        .await
        .unwrap();
    let file = data(3 * CHUNK, 10);
    let id = create(&up, &file).await;
    put(&up, id, &file, 0).await.unwrap();

    store.set_hanging(true);
    for attempt in 0..4 {
        let began = tokio::time::Instant::now();
        let r = put(&up, id, &file, 1).await;
        assert!(
            matches!(r, Err(Error::Unavailable { .. })),
            "attempt {attempt}: {r:?}"
        );
        assert!(
            began.elapsed() <= Duration::from_secs(5),
            "attempt {attempt} took {:?}",
            began.elapsed()
        );
    }
    let began = tokio::time::Instant::now();
    assert!(up.health().await.is_err());
    assert!(
        began.elapsed() <= Duration::from_secs(5),
        "health: {:?}",
        began.elapsed()
    );
    let began = tokio::time::Instant::now();
    assert!(up.status(id).await.is_err());
    assert!(
        began.elapsed() <= Duration::from_secs(5),
        "status: {:?}",
        began.elapsed()
    );

    store.set_hanging(false);
    let back = tokio::time::Instant::now();
    loop {
        match put(&up, id, &file, 1).await {
            Ok(_) => break,
            Err(Error::Unavailable { .. }) => {
                assert!(
                    back.elapsed() <= Duration::from_secs(5),
                    "not back in 5 s: {:?}",
                    up.health().await
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    put(&up, id, &file, 2).await.unwrap();
    up.complete(id, None).await.unwrap();
    assert_eq!(content(&store, &up, id).await, file);
}

/// A deferred-length upload over S3 grows in appends up to the ceiling and completes once
/// its length is said, by an empty append or by the last bytes.
#[tokio::test]
async fn deferred_length_completes_when_said() {
    let store = MemoryStore::new();
    let config = UploadsConfig {
        max_upload_size: MIB as u64,
        ..Default::default()
    };
    let up = server(&store, config).await;
    let file = data(MIB, 9);
    for (i, ends) in [[300_000, 700_001, MIB], [1000, 2000, MIB]]
        .iter()
        .enumerate()
    {
        let new = NewStream {
            defer_length: true,
            ..Default::default()
        };
        let id = up
            .create_stream(Dialect::Tus, new, Append::default(), body(&[]), |_| {})
            .await
            .unwrap()
            .status
            .id;
        let mut at = 0;
        for &end in ends {
            let req = Append {
                offset: at as u64,
                body_len: Some((end - at) as u64),
                has_body: true,
                length: (i == 1 && end == MIB).then_some(MIB as u64),
                ..Default::default()
            };
            up.append_stream(id, Dialect::Tus, req, body(&file[at..end]))
                .await
                .unwrap();
            at = end;
        }
        if i == 0 {
            let req = Append {
                offset: MIB as u64,
                length: Some(MIB as u64),
                ..Default::default()
            };
            up.append_stream(id, Dialect::Tus, req, body(&[]))
                .await
                .unwrap();
        }
        let st = up.status(id).await.unwrap();
        assert_eq!(st.state, UploadState::Completed);
        assert_eq!(st.sha256, Some(sha(&file)));
        assert_eq!(content(&store, &up, id).await, file);
    }
}
