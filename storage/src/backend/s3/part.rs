//! One UploadPart streamed through a presigned URL (so that no part is held in memory),
//! shared by whole-chunk writes and in-order appends.

use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use tokio::sync::mpsc;

use super::store_err;
use crate::error::{Error, Result};

/// A part's body, piece by piece.
pub(super) type BodyRx = mpsc::Receiver<std::result::Result<Bytes, std::io::Error>>;

/// What a receiver of body pieces yields, as a stream.
pub(super) fn body_of(
    rx: BodyRx,
) -> impl Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|b| (b, rx)) })
}

/// Starts sending `body` (of `len` bytes) as part `number` of the multipart upload at
/// `key`; the task answers the part's ETag.
pub(super) async fn send_part<B>(
    http: &reqwest::Client,
    store: &AmazonS3,
    key: &Path,
    multipart_id: &str,
    number: u64,
    len: u64,
    body: B,
) -> tokio::task::JoinHandle<Result<String>>
where
    B: Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static,
{
    let url = store
        .signed_url_opts(
            http::Method::PUT,
            key,
            Duration::from_secs(3600),
            &SignedUrlOptions::new().with_query([
                ("partNumber".to_string(), number.to_string()),
                ("uploadId".to_string(), multipart_id.to_string()),
            ]),
        )
        .await;
    let http = http.clone();
    tokio::spawn(async move {
        let url = url.map_err(store_err)?;
        let resp = http
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(Error::Io(std::io::Error::other(format!(
                "UploadPart answered {status}: {}",
                text.chars().take(300).collect::<String>()
            ))));
        }
        resp.headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| Error::Io(std::io::Error::other("UploadPart answered no ETag")))
    })
}

/// The ETag a part being sent was answered with.
pub(super) async fn answered(response: tokio::task::JoinHandle<Result<String>>) -> Result<String> {
    response
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
}
