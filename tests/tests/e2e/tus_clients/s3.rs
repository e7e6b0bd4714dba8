//! tus-js-client and tuspy against a server on S3 storage, where short appends are held
//! as piece objects until their chunk is whole.

use super::*;
use tests::s3::S3Server;

const DEFAULT_CHUNK: u64 = 8 * MIB as u64;

/// A test bucket of the shared S3 store, emptied and removed on drop.
struct Bucket {
    s3: &'static S3Server,
    name: String,
}

impl Drop for Bucket {
    fn drop(&mut self) {
        self.s3.drop_bucket(&self.name);
    }
}

/// An `upload-server` on S3 storage in a bucket of its own. Dropped in field order: the
/// server is killed before its bucket goes.
struct S3Upload {
    server: Server,
    _data: tempfile::TempDir,
    bucket: Bucket,
}

/// Starts an [`S3Upload`], or returns `None` (with `SKIPPED test: …`) when the S3 test
/// server is not installed, unless `S3_REQUIRED=1`, which makes that a panic.
async fn start_s3_server(test: &str) -> Option<S3Upload> {
    let s3 = S3Server::shared_or_skip(test)?;
    let bucket = Bucket {
        s3,
        name: s3.new_bucket().await,
    };
    let data = tempfile::tempdir().expect("temp dir");
    let args = [
        "--storage",
        "s3",
        "--s3-bucket",
        &bucket.name,
        "--s3-endpoint",
        &s3.endpoint,
        "--s3-allow-http",
        "--s3-region",
        "us-east-1",
    ];
    let server = Server::start_with_env(data.path(), &args, &s3.aws_env());
    Some(S3Upload {
        server,
        _data: data,
        bucket,
    })
}

/// Skips `test` unless both the web clients and the S3 test server are there (each with
/// its own message, and each a failure under its `…_REQUIRED=1`).
macro_rules! s3_or_skip {
    ($test:expr) => {{
        if !webclients::available_or_skip($test) {
            return;
        }
        match start_s3_server($test).await {
            Some(started) => started,
            None => return,
        }
    }};
}

impl S3Upload {
    /// Keys of the test's bucket under `prefix` (ListObjectsV2, one page), sorted. With a
    /// client of its own: the shared S3 server outlives this test's runtime.
    async fn keys(&self, prefix: &str) -> Vec<String> {
        let url = self.bucket.s3.url(&format!(
            "/{}?list-type=2&prefix={prefix}",
            self.bucket.name
        ));
        let resp = self
            .bucket
            .s3
            .client()
            .get(&url)
            .send()
            .await
            .expect("ListObjectsV2");
        let status = resp.status();
        let body = resp.text().await.expect("listing");
        assert_eq!(status, StatusCode::OK, "GET {url}: {body}");
        assert!(
            !body.contains("<IsTruncated>true</IsTruncated>"),
            "listing truncated: {body}"
        );
        let mut keys: Vec<String> = body
            .split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }

    /// The upload behind the tus `url` left no piece in the bucket (neither its own nor,
    /// for a concatenation, its parts'), its record is there (so the listing looks where
    /// the upload lives), and its file is published as `files/{id}`.
    async fn assert_no_piece_left(&self, url: &str) {
        let id = upload_id(&self.server, url);
        let own = self.keys(&format!("uploads/{id}/")).await;
        assert!(
            own.contains(&format!("uploads/{id}/record.json")),
            "no record of {id} in the bucket: {own:?}"
        );
        let pieces: Vec<&String> = own
            .iter()
            .filter(|k| is_piece(k, &format!("uploads/{id}/chunks/")))
            .collect();
        assert!(
            pieces.is_empty(),
            "pieces of {id} left after completion: {pieces:?}"
        );
        let anywhere: Vec<String> = self
            .keys("uploads/")
            .await
            .into_iter()
            .filter(|k| k.contains(".pieces/"))
            .collect();
        assert!(
            anywhere.is_empty(),
            "pieces left in the bucket: {anywhere:?}"
        );
        assert_eq!(
            self.keys(&format!("files/{id}")).await,
            vec![format!("files/{id}")],
            "the file of {id} is not published"
        );
    }
}

/// Whether `key` is `{chunks}{index:05}.pieces/{name}`.
fn is_piece(key: &str, chunks: &str) -> bool {
    key.strip_prefix(chunks)
        .and_then(|rest| rest.split_once(".pieces/"))
        .is_some_and(|(index, name)| {
            index.len() == 5 && index.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty()
        })
}

/// tus-js-client on S3 with 1 MiB PATCHes, far below S3's 5 MiB part minimum: each is held
/// as a piece until its 8 MiB chunk is whole (the 8th completes chunk 0, the 13th, short,
/// the last chunk). The native status says completed with the file's SHA-256, the content
/// is the file, and no piece is left in the bucket.
#[tokio::test]
async fn tusjs_on_s3_in_1mib_patches_held_as_pieces_until_each_chunk_is_whole() {
    let up = s3_or_skip!("tusjs_on_s3_in_1mib_patches_held_as_pieces_until_each_chunk_is_whole");
    let dir = tempfile::tempdir().unwrap();
    let len = 12 * MIB + 4_321;
    let (bytes, file) = test_file(dir.path(), "s3-pieces.bin", len, 11);
    let r = tusjs_upload(&up.server, &file, &["--chunk-size", "1048576"]).await;
    r.assert_ok();
    assert_eq!(r.str("mode"), "single", "{r}");
    assert_eq!(r.str("sha256"), sha256_hex(&bytes), "{r}");
    assert_eq!(requests(&r, "POST"), 1, "{r}");
    assert_eq!(requests(&r, "PATCH"), len.div_ceil(MIB) as u64, "{r}");
    let status = assert_completed_natively(&up.server, r.str("url"), &bytes, "s3-pieces.bin").await;
    // Every PATCH was shorter than the upload's chunks: the premise of the test.
    assert_eq!(status["chunk_size"], DEFAULT_CHUNK, "{status}");
    assert_eq!(status["chunk_count"], 2, "{status}");
    assert_eq!(
        tus_head(r.str("url")).await,
        (StatusCode::OK, Some(len as u64), Some(len as u64))
    );
    up.assert_no_piece_left(r.str("url")).await;
}

/// tus-js-client's `parallelUploads: 4` on S3: four partial uploads of ~3 MiB (each one
/// short last chunk), then a final upload whose bytes are theirs, appended through pieces
/// into 8 MiB parts. Right SHA-256 and content, and no piece left (the parts are removed).
#[tokio::test]
async fn tusjs_parallel_uploads_on_s3_are_concatenated_into_one_verified_file() {
    let up = s3_or_skip!("tusjs_parallel_uploads_on_s3_are_concatenated_into_one_verified_file");
    let url = tusjs_parallel_upload(&up.server).await;
    let status = native_status(&client(), &up.server, &upload_id(&up.server, &url)).await;
    assert_eq!(status["chunk_size"], DEFAULT_CHUNK, "{status}");
    up.assert_no_piece_left(&url).await;
}

/// tus-js-client on S3 in 4 MiB PATCHes (the first of each 8 MiB chunk held as a piece, the
/// second writing the chunk's part from it), aborted once 40% is sent and resumed by a new
/// `Upload` from its fingerprint store: the same checks as on local disk (the offset HEAD
/// answers is what the bucket holds), and no piece left once it is complete.
#[tokio::test]
async fn tusjs_interrupted_upload_on_s3_resumes_from_its_fingerprint_store() {
    let up = s3_or_skip!("tusjs_interrupted_upload_on_s3_resumes_from_its_fingerprint_store");
    let url = tusjs_interrupted_upload_resumes(&up.server).await;
    up.assert_no_piece_left(&url).await;
}

/// tuspy on S3 with `upload_checksum` (sha256): PATCHes of 3,000,000 bytes, each checked
/// and held as pieces, the third straddling the end of the first 8 MiB chunk.
#[tokio::test]
async fn tuspy_upload_on_s3_with_sha256_upload_checksum() {
    let up = s3_or_skip!("tuspy_upload_on_s3_with_sha256_upload_checksum");
    let url = tuspy_upload_with_sha256_checksums(&up.server).await;
    up.assert_no_piece_left(&url).await;
}

/// tuspy on S3 stopped after two PATCHes of 3,000,000 bytes (with sha1 checksums): the
/// bucket holds exactly those bytes as two pieces of chunk 0, named `{start:012}.{len}.…`,
/// and HEAD answers their end. A second process resumes from the stored URL (its PATCH over
/// the end of chunk 0 writes that part from the pieces), and no piece is left.
#[tokio::test]
async fn tuspy_on_s3_stops_with_two_pieces_held_then_resumes() {
    let up = s3_or_skip!("tuspy_on_s3_stops_with_two_pieces_held_then_resumes");
    let dir = tempfile::tempdir().unwrap();
    let len = 10 * MIB + 5;
    let chunk = 3_000_000u64;
    let (bytes, file) = test_file(dir.path(), "tuspy-s3-resume.bin", len, 12);
    let ep = endpoint(&up.server);
    let run = |extra: Vec<String>| {
        let (ep, file) = (ep.clone(), file.clone());
        blocking(move || {
            let mut args = vec![
                "--endpoint".to_string(),
                ep,
                "--file".to_string(),
                file,
                "--checksum".to_string(),
                "--chunk-size".to_string(),
                chunk.to_string(),
            ];
            args.extend(extra);
            webclients::tuspy(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    let first = run(vec!["--stop-after-chunks".into(), "2".into()]).await;
    first.assert_ok();
    assert_eq!(first.str("mode"), "partial", "{first}");
    assert_eq!(first.u64("offset"), 2 * chunk, "{first}");
    let url = first.str("url").to_string();
    let id = upload_id(&up.server, &url);
    let prefix = format!("uploads/{id}/chunks/");
    let pieces: Vec<(u64, u64)> = up
        .keys(&prefix)
        .await
        .iter()
        .filter(|k| is_piece(k, &prefix))
        .map(|k| {
            let name = k.rsplit('/').next().unwrap_or_default();
            let mut parts = name.splitn(3, '.');
            let num = |p: Option<&str>| p.and_then(|v| v.parse::<u64>().ok());
            match (num(parts.next()), num(parts.next()), parts.next()) {
                (Some(start), Some(len), Some(state)) if !state.is_empty() => {
                    assert!(
                        k.starts_with(&format!("{prefix}00000.pieces/")),
                        "a piece outside chunk 0: {k}"
                    );
                    (start, len)
                }
                _ => panic!("piece {k} is not named {{start}}.{{len}}.{{state}}"),
            }
        })
        .collect();
    assert_eq!(
        pieces,
        vec![(0, chunk), (chunk, chunk)],
        "pieces of {id}: {:?}",
        up.keys(&prefix).await
    );
    assert_eq!(
        tus_head(&url).await,
        (StatusCode::OK, Some(2 * chunk), Some(len as u64)),
        "HEAD {url} between the two processes"
    );
    let native = native_status(&client(), &up.server, &id).await;
    assert_eq!(native["state"], "uploading", "{native}");
    assert_eq!(native["chunk_size"], DEFAULT_CHUNK, "{native}");

    let r = run(vec!["--resume-url".into(), url.clone()]).await;
    r.assert_ok();
    assert_eq!(r.str("mode"), "resume", "{r}");
    assert_eq!(r.str("url"), url, "{r}");
    assert_eq!(r.u64("resumed_offset"), 2 * chunk, "{r}");
    assert_eq!(r.get("complete"), &Value::Bool(true), "{r}");
    assert_eq!(
        r.u64("chunks_sent"),
        (len as u64 - 2 * chunk).div_ceil(chunk),
        "only the rest was sent: {r}"
    );
    assert_completed_natively(&up.server, &url, &bytes, "tuspy-s3-resume.bin").await;
    up.assert_no_piece_left(&url).await;
}
