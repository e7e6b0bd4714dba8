// ---------------------------------------------------------------------------------------
// Publication: the parts joined at `files/{id}` once verified, nothing copied; chunks the
// whole-file hash could not reach as they passed are spilled and read back.
// ---------------------------------------------------------------------------------------

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// Whether `files/{id}` exists (HeadObject).
async fn file_exists(s3: &S3Server, id: UploadId) -> bool {
    let resp = s3
        .client()
        .head(s3.url(&format!("/{}/{}", s3.bucket(), file_key(id))))
        .send()
        .await
        .expect("HeadObject");
    match resp.status() {
        StatusCode::OK => true,
        StatusCode::NOT_FOUND => false,
        other => panic!("HEAD files/{id}: {other}"),
    }
}

/// Completes `id` through `api` while another task looks for `files/{id}` in the store
/// every few milliseconds: the completion's answer, and how often the file was seen
/// (and looked for) before that answer came.
async fn complete_watching(s3: &Arc<S3Server>, api: &Api, id: UploadId) -> (Response, u64, u64) {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (seen, looks) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let watcher = tokio::spawn({
        let (s3, done, seen, looks) = (s3.clone(), done.clone(), seen.clone(), looks.clone());
        async move {
            while !done.load(Ordering::SeqCst) {
                if file_exists(&s3, id).await {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                looks.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let resp = api.complete(id, None).await;
    done.store(true, Ordering::SeqCst);
    watcher.await.unwrap();
    (
        resp,
        seen.load(Ordering::SeqCst),
        looks.load(Ordering::SeqCst),
    )
}

/// Publication joins the chunks' parts at `files/{id}` with no copy, and only after the
/// whole-file SHA-256 matched. An upload declared with a wrong SHA-256 (every chunk
/// acknowledged, in order): its verification fails (422), `files/{id}` is never seen
/// while it runs nor after, and the store's request log shows no
/// CompleteMultipartUpload for it, only the abort. The same file declared right: 200,
/// one CompleteMultipartUpload, zero CopyObject and UploadPartCopy (0 bytes copied), and
/// the object is the chunks' parts joined (a multipart ETag of as many parts as chunks).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publication_joins_the_parts_after_verification_and_copies_nothing() {
    let Some(s3) =
        s3_or_skip("publication_joins_the_parts_after_verification_and_copies_nothing").await
    else {
        return;
    };
    let s3 = Arc::new(s3);
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let file = Bytes::from(random_bytes(3 * CS + 999, 120));
    let chunks = chunks_of(&file);

    let since = SystemTime::now();
    let wrong = sha256_hex(b"not the file");
    let id = api
        .create(json!({"size": file.len(), "chunk_size": CS, "sha256": wrong}))
        .await
        .id;
    put_in_order(&api, id, &chunks, &[0, 1, 2, 3]).await;
    assert!(!file_exists(&s3, id).await, "published before completion");
    let (resp, seen, looks) = complete_watching(&s3, &api, id).await;
    let p = problem(resp, 422).await;
    assert_eq!(p.actual_sha256, Some(digest(&file)));
    assert_eq!(seen, 0, "files/{id} appeared during a failing verification");
    assert!(!file_exists(&s3, id).await, "a failed upload was published");
    let failed = s3.requests(s3.bucket(), since);
    assert_eq!(failed.count("CompleteMultipartUpload"), 0, "{failed:?}");
    assert_eq!(failed.count("AbortMultipartUpload"), 1, "{failed:?}");
    assert_eq!(failed.count("UploadPart"), 4, "{failed:?}");

    let since = SystemTime::now();
    let id = api
        .create(json!({"size": file.len(), "chunk_size": CS, "sha256": sha256_hex(&file)}))
        .await
        .id;
    put_in_order(&api, id, &chunks, &[0, 1, 2, 3]).await;
    assert!(!file_exists(&s3, id).await, "published before completion");
    let (resp, _, _) = complete_watching(&s3, &api, id).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let published = s3.requests(s3.bucket(), since);
    assert_eq!(
        published.count("CompleteMultipartUpload"),
        1,
        "{published:?}"
    );
    assert_eq!(published.count("CopyObject"), 0, "{published:?}");
    assert_eq!(published.count("UploadPartCopy"), 0, "{published:?}");
    assert_eq!(published.copied_bytes, 0, "{published:?}");
    assert_eq!(published.count("UploadPart"), 4, "{published:?}");
    assert!(published_etag(&s3, id).await.ends_with("-4"));
    api.assert_content(id, &file).await;
    eprintln!(
        "publication: looked for files/{{id}} {looks} times during the failing verification; \
         store requests of the published upload {:?}",
        published.by_operation
    );
}

/// A chunk whose turn in the whole-file hash does not come (here the last, sent first on
/// its own: the chunks before it are not being sent anywhere) is acknowledged with its
/// bytes spilled (`…/chunks/{index:05}.{part}.{etag}.spill`, its claim says `spilled`), while
/// its part holds the same bytes for the join. The others, sent in order, are hashed as
/// they pass; completion reads back exactly the spilled bytes, the file verifies, and no
/// spill or claim is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_whose_turn_does_not_come_is_spilled_and_read_back() {
    let Some(s3) = s3_or_skip("a_chunk_whose_turn_does_not_come_is_spilled_and_read_back").await
    else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let (file, chunks, id) = created(&api, 2 * CS + 77_777, 121).await;
    api.put_ok(id, 2, chunks[2].clone()).await;
    let spilled = claim(&s3, id, 2).await;
    assert_eq!(spilled["spilled"], true, "{spilled}");
    assert_eq!(spilled["part"], 3, "{spilled}");
    assert_eq!(spilled["size"], chunks[2].len(), "{spilled}");
    // The spill is named by the part it stands for (number and ETag, as the claim says),
    // so that no later write of the chunk replaces it.
    let etag = spilled["etag"]
        .as_str()
        .expect("the part's ETag in the claim");
    assert!(!etag.is_empty(), "{spilled}");
    let spill = format!(
        "{}00002.3.{}.spill",
        chunks_prefix(id),
        etag.trim_matches('"').to_ascii_lowercase()
    );
    assert_eq!(spill_keys(&s3, id).await, vec![spill.clone()]);
    let (code, bytes) = get_object(&s3, &spill).await;
    assert_eq!(code, StatusCode::OK);
    assert!(bytes == chunks[2], "the spill holds the chunk's bytes");

    put_in_order(&api, id, &chunks, &[0, 1]).await;
    for i in 0..2 {
        let c = claim(&s3, id, i).await;
        assert!(c["whole"].is_object(), "chunk {i} hashed in turn: {c}");
        assert_ne!(c["spilled"], true, "{c}");
    }
    assert_eq!(spill_keys(&s3, id).await.len(), 1);
    let read_back = complete_and_read_back(&server, id, &file).await;
    assert_eq!(
        read_back,
        chunks[2].len() as u64,
        "the spilled chunk is read back"
    );
    assert_eq!(
        list_keys(&s3, &chunks_prefix(id)).await,
        Vec::<String>::new()
    );
    assert_eq!(multipart_uploads(&s3, "").await, Vec::<String>::new());
}
