//! The upload's length: one that the requests contradict is the draft's
//! inconsistent-upload-length and appends nothing; one unknown at creation is learnt from
//! an append's `Upload-Length` (once, and kept) or from where the completing append ends,
//! and may grow to `--max-upload-size` and no further.

use reqwest::StatusCode;
use tests::http::{header, header_u64};
use tests::ietf::{assert_problem, repr_digest, Ietf};
use tests::random_bytes;

use super::MIB;

const INCONSISTENT: &str = "inconsistent-upload-length";

#[tokio::test]
async fn inconsistent_lengths_are_refused_and_append_nothing() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    // Upload-Length against the length a completing creation implies.
    let resp = c.create(true, Some(10), vec![7u8; 5]).await;
    assert_problem(resp, StatusCode::BAD_REQUEST, INCONSISTENT).await;
    // A first part longer than the length.
    let resp = c.create(false, Some(4), vec![7u8; 5]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let bytes = random_bytes(1_000, 5);
    let loc = c.start(1_000, &bytes[..400]).await;
    // Completing with too few bytes, past the length, or another Upload-Length.
    let resp = c.patch(&loc, 400, true, bytes[400..900].to_vec()).await;
    assert_problem(resp, StatusCode::BAD_REQUEST, INCONSISTENT).await;
    let resp = c.patch(&loc, 400, false, vec![0u8; 601]).await;
    assert_problem(resp, StatusCode::BAD_REQUEST, INCONSISTENT).await;
    let resp = c
        .patch_declaring(&loc, 400, false, 999, bytes[400..500].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(c.head(&loc).await, (400, "?0".into()));
    c.finish(&loc, 400, &bytes).await;
}

/// An upload created with no length: HEAD says no `Upload-Length` and the native status
/// `length_deferred`; appends go on; the append with `Upload-Complete: ?1` says where it
/// ends, which is the length, and completes it with the right SHA-256. A second upload
/// learns its length from an `Upload-Length` on an append, after which another length is
/// the draft's inconsistent-upload-length and appends nothing.
#[tokio::test]
async fn a_length_unknown_at_creation_is_learnt_from_the_appends() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(700_003, 31);
    let loc = c.start_unknown(&bytes[..200_000]).await;
    assert_eq!(c.head(&loc).await, (200_000, "?0".into()));
    assert_eq!(c.head_length(&loc).await, (200_000, "?0".into(), None));
    let (_, status) = c.native(&loc).await;
    assert_eq!(status["length_deferred"], true, "{status}");
    let resp = c
        .patch(&loc, 200_000, false, bytes[200_000..500_000].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = c
        .patch(&loc, 500_000, true, bytes[500_000..].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_u64(&resp, "upload-length"), bytes.len() as u64);
    let status = c.assert_completed(&loc, &bytes).await;
    assert!(status.get("length_deferred").is_none(), "{status}");

    let loc = c.start_unknown(&[]).await;
    let resp = c
        .patch_declaring(&loc, 0, false, bytes.len(), bytes[..100_000].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let length = Some(bytes.len() as u64);
    assert_eq!(c.head_length(&loc).await, (100_000, "?0".into(), length));
    let resp = c
        .patch_declaring(
            &loc,
            100_000,
            false,
            bytes.len() + 1,
            bytes[100_000..200_000].to_vec(),
        )
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, INCONSISTENT).await;
    assert_eq!(c.head(&loc).await, (100_000, "?0".into()));
    c.finish(&loc, 100_000, &bytes).await;
}

/// Created with `Upload-Complete: ?0`, no length and no body: the answer and HEAD say
/// `?0`, the offset and no `Upload-Length`, the native status `length_deferred` and
/// uploading; appends in several requests (across 8 MiB chunks, with a ceiling that gives
/// them) keep it so; the `?1` append says the length, where it ends, and completes it with
/// the right SHA-256; HEAD then says `?1` and `Upload-Length`. An append of nothing with
/// `?1` completes another upload at its offset, and an empty file at 0.
#[tokio::test]
async fn an_upload_without_a_length_is_completed_by_its_last_append() {
    let (server, _store) = start!(&["--max-upload-size", "32GiB"]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(17 * MIB + 5, 32);
    let len = bytes.len();
    let loc = c.start_unknown(&[]).await;
    assert_eq!(c.head_length(&loc).await, (0, "?0".into(), None));
    let (_, status) = c.native(&loc).await;
    assert_eq!(status["length_deferred"], true, "{status}");
    assert_eq!(status["state"], "uploading", "{status}");
    assert_eq!(status["size"], 32u64 << 30, "{status}");
    assert_eq!(status["chunk_size"], 8 * MIB as u64, "{status}");
    let mut at = 0;
    for end in [MIB, 8 * MIB + 3, 16 * MIB] {
        let resp = c.patch(&loc, at, false, bytes[at..end].to_vec()).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "append {at}..{end}");
        assert_eq!(header_u64(&resp, "upload-offset"), end as u64);
        assert_eq!(header(&resp, "upload-complete"), "?0");
        assert!(resp.headers().get("upload-length").is_none(), "{resp:?}");
        at = end;
        assert_eq!(c.head_length(&loc).await, (at as u64, "?0".into(), None));
        let (_, status) = c.native(&loc).await;
        assert_eq!(status["length_deferred"], true, "{status}");
        assert_eq!(status["received_bytes"], at as u64, "{status}");
    }
    let resp = c.patch(&loc, at, true, bytes[at..].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    assert_eq!(header_u64(&resp, "upload-offset"), len as u64);
    assert_eq!(header_u64(&resp, "upload-length"), len as u64);
    assert_eq!(header(&resp, "repr-digest"), repr_digest(&bytes));
    let status = c.assert_completed(&loc, &bytes).await;
    assert!(status.get("length_deferred").is_none(), "{status}");
    assert_eq!(status["chunk_count"], 3, "{status}");
    let length = Some(len as u64);
    assert_eq!(c.head_length(&loc).await, (len as u64, "?1".into(), length));

    // An empty completing append: the length is the offset.
    let loc = c.start_unknown(&bytes[..300_000]).await;
    let resp = c.patch(&loc, 300_000, true, Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_u64(&resp, "upload-length"), 300_000);
    c.assert_completed(&loc, &bytes[..300_000]).await;
    // An empty file.
    let loc = c.start_unknown(&[]).await;
    c.finish(&loc, 0, &[]).await;
    assert_eq!(c.head_length(&loc).await, (0, "?1".into(), Some(0)));
}

/// `Upload-Length` on an append of an upload created without one: below where the append
/// would end it is inconsistent-upload-length and the length stays unknown; otherwise it is
/// the length from then on (HEAD and the native status say so, the upload goes on); the
/// same value again is accepted, another is inconsistent-upload-length, a `?1` append that
/// ends elsewhere too, and neither appends anything; the `?1` append that ends there
/// completes it with the right SHA-256.
#[tokio::test]
async fn upload_length_on_an_append_is_said_once() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(5_000, 33);
    let part = |a: usize, b: usize| bytes[a..b].to_vec();
    let loc = c.start_unknown(&bytes[..1_000]).await;

    let resp = c
        .patch_declaring(&loc, 1_000, false, 1_500, part(1_000, 2_000))
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, INCONSISTENT).await;
    assert_eq!(c.head_length(&loc).await, (1_000, "?0".into(), None));

    let resp = c
        .patch_declaring(&loc, 1_000, false, 5_000, part(1_000, 2_000))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_u64(&resp, "upload-offset"), 2_000);
    assert_eq!(header(&resp, "upload-complete"), "?0");
    assert_eq!(c.head_length(&loc).await, (2_000, "?0".into(), Some(5_000)));
    let (_, status) = c.native(&loc).await;
    assert!(status.get("length_deferred").is_none(), "{status}");
    assert_eq!(status["size"], 5_000, "{status}");
    assert_eq!(status["state"], "uploading", "{status}");

    let resp = c
        .patch_declaring(&loc, 2_000, false, 5_000, part(2_000, 3_000))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    for other in [4_999, 5_001] {
        let resp = c
            .patch_declaring(&loc, 3_000, false, other, part(3_000, 4_000))
            .await;
        assert_problem(resp, StatusCode::BAD_REQUEST, INCONSISTENT).await;
    }
    let resp = c.patch(&loc, 3_000, true, part(3_000, 4_000)).await;
    assert_problem(resp, StatusCode::BAD_REQUEST, INCONSISTENT).await;
    assert_eq!(c.head_length(&loc).await, (3_000, "?0".into(), Some(5_000)));

    let resp = c
        .patch_declaring(&loc, 3_000, true, 5_000, part(3_000, 5_000))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    c.assert_completed(&loc, &bytes).await;
}

/// A refused append says no length: neither a `?1` append whose `Upload-Length` is not
/// where it ends (inconsistent-upload-length) nor an append whose `Content-Digest` does not
/// match its body leaves an `Upload-Length` behind on an upload created without one; the
/// upload then completes with a consistent `?1` append.
#[tokio::test]
async fn a_refused_append_says_no_length() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(3_000, 34);
    let loc = c.start_unknown(&bytes[..1_000]).await;
    let resp = c
        .patch_declaring(&loc, 1_000, true, 10_000, bytes[1_000..].to_vec())
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, INCONSISTENT).await;
    assert_eq!(c.head_length(&loc).await, (1_000, "?0".into(), None));
    let resp = c
        .append(&loc, 1_000, false)
        .header("upload-length", "10000")
        .header("content-digest", repr_digest(b"other"))
        .body(bytes[1_000..2_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(c.head_length(&loc).await, (1_000, "?0".into(), None));
    let (_, status) = c.native(&loc).await;
    assert_eq!(status["length_deferred"], true, "{status}");
    c.finish(&loc, 1_000, &bytes).await;
}

/// An upload created without a length may grow to `--max-upload-size` and no further: an
/// append past it is 413 with the `Upload-Limit`, as a creation past it is, and appends
/// nothing; one that ends at the limit with `?1` completes it.
#[tokio::test]
async fn an_append_past_the_limit_of_an_unknown_length_is_413() {
    let (server, _store) = start!(&["--max-upload-size", "1MiB"]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(MIB, 35);
    let loc = c.start_unknown(&bytes[..1_000]).await;
    let resp = c.patch(&loc, 1_000, false, vec![0u8; MIB]).await;
    let code = resp.status();
    let limit = tests::http::header_opt(&resp, "upload-limit");
    let body = resp.text().await.unwrap();
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        limit
            .as_deref()
            .unwrap_or("")
            .contains(&format!("max-size={MIB}")),
        "{limit:?}"
    );
    assert_eq!(c.head_length(&loc).await, (1_000, "?0".into(), None));
    c.finish(&loc, 1_000, &bytes).await;
}
