//! The listing of an owner's uploads (`Uploads::list`) on both backends, local disk and
//! S3 over a bucket in memory: newest first, a page at a time, owners apart, filtered by
//! state, bad limits and cursors refused, entries whose upload is gone removed; on S3 a
//! second server sees what the first stored; on local disk start-up writes the entries a
//! crash lost.

use std::sync::Arc;

use bytes::Bytes;
use common::api::{CreateUpload, UploadState};
use common::UploadId;
use futures_util::stream;
use storage::backend::s3::memory::MemoryStore;
use storage::backend::s3::{S3Backend, S3Config};
use storage::principal::{self, Principal};
use storage::{Backend, Error, ListQuery, LocalBackend, Uploads, UploadsConfig};

fn alice() -> Principal {
    Principal::Owner("alice".into())
}

fn bob() -> Principal {
    Principal::Owner("bob".into())
}

/// Creates `n` uploads for `who`; the even ones are sent whole and so completed. Returns
/// their ids, newest first.
async fn fill(up: &Arc<Uploads>, who: Principal, n: usize) -> Vec<UploadId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let bytes = vec![i as u8; 100 + i];
        let req = CreateUpload {
            size: Some(bytes.len() as u64),
            filename: Some(format!("f{i}")),
            ..Default::default()
        };
        let created = if i % 2 == 0 {
            let body = stream::iter(vec![Ok::<_, Error>(Bytes::from(bytes))]);
            principal::scope(who.clone(), up.create_whole(req, None, body)).await
        } else {
            principal::scope(who.clone(), up.create(req, None)).await
        };
        ids.push(created.unwrap().status.id);
    }
    ids.reverse();
    ids
}

/// Every upload `who` lists with `state`, in pages of `limit`.
async fn all(
    up: &Uploads,
    who: Principal,
    state: Option<UploadState>,
    limit: usize,
) -> Vec<(UploadId, UploadState)> {
    let mut out = Vec::new();
    let mut cursor = None;
    for _ in 0..100 {
        let page = principal::scope(
            who.clone(),
            up.list(ListQuery {
                state,
                limit: Some(limit),
                cursor: cursor.clone(),
            }),
        )
        .await
        .unwrap();
        assert!(page.uploads.len() <= limit);
        out.extend(page.uploads.iter().map(|s| (s.id, s.state)));
        match page.next {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
    panic!("the listing does not end");
}

fn ids(listed: &[(UploadId, UploadState)]) -> Vec<UploadId> {
    listed.iter().map(|(id, _)| *id).collect()
}

/// The checks both backends pass; `up` starts empty.
async fn lists_newest_first_per_owner(up: &Arc<Uploads>, backend: &dyn Backend) {
    let a = fill(up, alice(), 7).await;
    let b = fill(up, bob(), 2).await;
    for limit in [1, 2, 3, 100] {
        assert_eq!(
            ids(&all(up, alice(), None, limit).await),
            a,
            "limit {limit}"
        );
    }
    assert_eq!(ids(&all(up, bob(), None, 1).await), b);
    assert!(all(up, Principal::Anonymous, None, 10).await.is_empty());
    let done = all(up, alice(), Some(UploadState::Completed), 2).await;
    assert_eq!(ids(&done), [a[0], a[2], a[4], a[6]]);
    let open = all(up, alice(), Some(UploadState::Uploading), 2).await;
    assert_eq!(ids(&open), [a[1], a[3], a[5]]);
    assert!(all(up, alice(), Some(UploadState::Failed), 2)
        .await
        .is_empty());

    for bad in [Some(0), Some(1001)] {
        let q = ListQuery {
            limit: bad,
            ..Default::default()
        };
        let r = principal::scope(alice(), up.list(q)).await;
        assert!(matches!(r, Err(Error::Invalid(_))), "{bad:?}");
    }
    for junk in ["zz", "", "2e2e2f2e2e2f6574632f706173737764"] {
        let q = ListQuery {
            cursor: Some(junk.into()),
            ..Default::default()
        };
        let r = principal::scope(alice(), up.list(q)).await;
        assert!(matches!(r, Err(Error::Invalid(_))), "{junk:?}");
    }

    // A cancelled upload leaves the listing.
    principal::scope(alice(), up.cancel(a[1])).await.unwrap();
    let mut rest = a.clone();
    rest.remove(1);
    assert_eq!(ids(&all(up, alice(), None, 3).await), rest);

    // An entry without its upload, older than a creation under way could be, is skipped
    // and removed.
    let prefix = storage::index::owner_prefix(Some("alice"));
    let then = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    let nanos = then.unix_timestamp_nanos() as u64;
    let orphan = format!(
        "{prefix}/{:05}/{:020}.{}",
        99_999 - then.unix_timestamp() / 86_400,
        u64::MAX - nanos,
        UploadId::new_random()
    );
    backend.index_put(&orphan).await.unwrap();
    assert_eq!(ids(&all(up, alice(), None, 2).await), rest);
    let left = backend.index_list(&prefix, None, 100).await.unwrap();
    assert!(!left.contains(&orphan), "{left:?}");
    assert_eq!(left.len(), a.len(), "{left:?}");
}

#[tokio::test]
async fn local_disk_lists_and_rebuilds_lost_entries_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let backend = Arc::new(LocalBackend::open(dir.path()).unwrap());
        let up = Uploads::open(backend.clone(), UploadsConfig::default())
            .await
            .unwrap();
        lists_newest_first_per_owner(&up, backend.as_ref()).await;
        all(&up, alice(), None, 100).await
    };
    // Entries are not made durable one by one on local disk: a crash may lose them, and
    // start-up writes them again.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let backend = Arc::new(LocalBackend::open(dir.path()).unwrap());
    let up = Uploads::open(backend, UploadsConfig::default())
        .await
        .unwrap();
    assert_eq!(all(&up, alice(), None, 2).await, before);
}

#[tokio::test]
async fn s3_lists_in_one_request_a_page_and_servers_share_it() {
    let store = MemoryStore::new();
    let backend = Arc::new(S3Backend::over(store.clone(), &S3Config::default()));
    let up = Uploads::open(backend.clone(), UploadsConfig::default())
        .await
        .unwrap();
    lists_newest_first_per_owner(&up, backend.as_ref()).await;
    let listed = all(&up, alice(), None, 100).await;
    // Another server over the same bucket lists the same, with no backfill to do.
    let other = Arc::new(S3Backend::over(store.clone(), &S3Config::default()));
    let up2 = Uploads::open(other, UploadsConfig::default())
        .await
        .unwrap();
    // A page costs one listing, and a read of each upload on it (its record; the chunk
    // claims of an unfinished one) that this server has not cached: never every upload.
    let before = store.total_requests();
    let page = principal::scope(
        alice(),
        up2.list(ListQuery {
            limit: Some(2),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    assert_eq!(page.uploads.len(), 2);
    let cost = store.total_requests() - before;
    assert!(cost <= 1 + 2 * 2, "{cost} requests: {:?}", store.requests());
    assert_eq!(all(&up2, alice(), None, 4).await, listed);
    let made = fill(&up2, alice(), 1).await;
    assert_eq!(all(&up, alice(), None, 100).await[0].0, made[0]);
}
