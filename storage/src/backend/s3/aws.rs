//! [`Store`] on a real S3-compatible server: `object_store` for what it has calls for, and
//! requests it signs (presigned URLs) for what it has not (UploadPart with a checksum,
//! ListParts, CompleteMultipartUpload of chosen part numbers, ListMultipartUploads), whose
//! XML answers are read with `quick-xml`.
//!
//! The client's own timeouts and retries are bounded by the request deadlines; the
//! deadlines themselves, and counting requests, are [`super::deadline::Deadlined`]'s.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::Sha256Digest;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, UpdateVersion,
};
use serde::Deserialize;
use time::OffsetDateTime;

use super::deadline::Deadlines;
use super::store::{
    io, normalize_etag, op, Got, Joined, MultipartInfo, ObjectInfo, PartBody, PartInfo, Put, Store,
};
use crate::backend::ByteStream;
use crate::error::{Error, Result};

/// Where and how to reach the bucket.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint for non-AWS stores (MinIO, Garage, Ceph, R2...).
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Allow plain http endpoints.
    pub allow_http: bool,
    /// Request deadlines (the client's own timeouts follow them).
    pub deadlines: Deadlines,
}

/// An `object_store` client of the bucket, its timeouts and retries within the request
/// deadline; credentials come from the standard `AWS_*` environment variables.
pub fn client(endpoint: &Endpoint) -> Result<AmazonS3> {
    let d = endpoint.deadlines;
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&endpoint.bucket)
        .with_allow_http(endpoint.allow_http)
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(endpoint.allow_http)
                .with_connect_timeout(d.request)
                .with_timeout(d.request),
        )
        .with_retry(object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: d.request,
            ..Default::default()
        });
    if let Some(e) = &endpoint.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(r) = &endpoint.region {
        b = b.with_region(r);
    }
    b.build().map_err(io)
}

/// How long the URL of a signed request is good for.
const SIGNED_FOR: Duration = Duration::from_secs(3600);

/// See the module documentation.
pub struct AwsStore {
    s3: Arc<AmazonS3>,
    http: reqwest::Client,
}

impl AwsStore {
    /// A client of the bucket; credentials come from the standard `AWS_*` variables.
    pub fn connect(endpoint: &Endpoint) -> Result<Self> {
        let d = endpoint.deadlines;
        let s3 = client(endpoint)?;
        let http = reqwest::Client::builder()
            .connect_timeout(d.request)
            .build()
            .map_err(io)?;
        Ok(Self {
            s3: Arc::new(s3),
            http,
        })
    }

    /// The region requests are signed for, as the client reads it (flag or `AWS_*`).
    pub fn signing_region(endpoint: &Endpoint) -> String {
        let mut b = AmazonS3Builder::from_env();
        if let Some(r) = &endpoint.region {
            b = b.with_region(r);
        }
        b.get_config_value(&AmazonS3ConfigKey::Region)
            .unwrap_or_else(|| "us-east-1".into())
    }

    /// Runs a request (its deadline and count are [`super::deadline::Deadlined`]'s).
    async fn small<T>(
        &self,
        _what: &'static str,
        request: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        request.await
    }

    async fn signed(
        &self,
        method: http::Method,
        key: &str,
        query: Vec<(String, String)>,
        headers: &[(&'static str, String)],
    ) -> Result<url::Url> {
        let mut options = SignedUrlOptions::new().with_query(query);
        for (name, value) in headers {
            options = options.with_signed_header(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_str(value).map_err(io)?,
            );
        }
        self.s3
            .signed_url_opts(method, &Path::from(key), SIGNED_FOR, &options)
            .await
            .map_err(store_err)
    }

    /// A signed request's answer, as text; an error status is an error.
    async fn text(&self, resp: reqwest::Response, what: &str) -> Result<String> {
        let status = resp.status();
        let text = resp.text().await.map_err(io)?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(Error::NotFound);
        }
        if !status.is_success() {
            return Err(io(format!(
                "{what} answered {status}: {}",
                error_code(&text)
            )));
        }
        Ok(text)
    }
}

/// An `object_store` failure as the crate's error.
fn store_err(e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound,
        object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. } => {
            Error::Conflict
        }
        other => io(other),
    }
}

fn info(m: object_store::ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        key: m.location.to_string(),
        etag: m.e_tag.as_deref().map(normalize_etag).unwrap_or_default(),
        size: m.size,
        last_modified: OffsetDateTime::from_unix_timestamp(m.last_modified.timestamp())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
    }
}

/// The `<Code>` of an S3 error document, or nothing.
fn error_code(text: &str) -> String {
    #[derive(Deserialize)]
    struct ErrorDoc {
        #[serde(rename = "Code")]
        code: String,
    }
    quick_xml::de::from_str::<ErrorDoc>(text)
        .map(|e| e.code)
        .unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListPartsResult {
    #[serde(default, rename = "Part")]
    parts: Vec<XmlPart>,
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_part_number_marker: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct XmlPart {
    part_number: u64,
    #[serde(rename = "ETag")]
    etag: String,
    size: u64,
    #[serde(default, rename = "ChecksumSHA256")]
    checksum_sha256: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListMultipartUploadsResult {
    #[serde(default, rename = "Upload")]
    uploads: Vec<XmlUpload>,
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct XmlUpload {
    key: String,
    upload_id: String,
    initiated: String,
}

#[async_trait]
impl Store for AwsStore {
    async fn get(&self, key: &str) -> Result<Option<Got>> {
        self.small(op::GET, async {
            match self.s3.get(&Path::from(key)).await {
                Ok(got) => {
                    let etag = got
                        .meta
                        .e_tag
                        .as_deref()
                        .map(normalize_etag)
                        .unwrap_or_default();
                    let bytes = got.bytes().await.map_err(store_err)?;
                    Ok(Some(Got { bytes, etag }))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(store_err(e)),
            }
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<ByteStream> {
        let got = self
            .small(op::GET_RANGE, async {
                self.s3
                    .get_opts(
                        &Path::from(key),
                        GetOptions {
                            range: Some(GetRange::Bounded(range)),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(store_err)
            })
            .await?;
        Ok(got.into_stream().map_err(store_err).boxed())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.small(op::HEAD, async {
            match self.s3.head(&Path::from(key)).await {
                Ok(m) => Ok(Some(info(m))),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(store_err(e)),
            }
        })
        .await
    }

    async fn put(&self, key: &str, body: Vec<Bytes>, condition: Put) -> Result<String> {
        let mode = match condition {
            Put::Overwrite => PutMode::Overwrite,
            Put::Create => PutMode::Create,
            Put::Update(etag) => PutMode::Update(UpdateVersion {
                e_tag: Some(format!("\"{etag}\"")),
                version: None,
            }),
        };
        self.small(op::PUT, async {
            let put = self
                .s3
                .put_opts(
                    &Path::from(key),
                    body.into_iter().collect::<PutPayload>(),
                    PutOptions::from(mode),
                )
                .await
                .map_err(store_err)?;
            Ok(put.e_tag.as_deref().map(normalize_etag).unwrap_or_default())
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.small(op::DELETE, async {
            match self.s3.delete(&Path::from(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(store_err(e)),
            }
        })
        .await
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<()> {
        for batch in keys.chunks(1000) {
            let locations = futures_util::stream::iter(
                batch
                    .iter()
                    .map(|k| Ok(Path::from(k.as_str())))
                    .collect::<Vec<_>>(),
            )
            .boxed();
            self.small(op::DELETE_MANY, async {
                let deleted: Vec<_> = self.s3.delete_stream(locations).collect().await;
                for d in deleted {
                    match d {
                        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(store_err(e)),
                    }
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let dir = Path::from(prefix.trim_end_matches('/'));
        self.small(op::LIST, async {
            let listed: Vec<_> = self
                .s3
                .list(Some(&dir))
                .try_collect()
                .await
                .map_err(store_err)?;
            let mut found: Vec<ObjectInfo> = listed.into_iter().map(info).collect();
            found.retain(|o| o.key.starts_with(prefix));
            found.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(found)
        })
        .await
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>> {
        let dir = Path::from(prefix);
        self.small(op::LIST, async {
            let listed = match after {
                Some(a) => self.s3.list_with_offset(Some(&dir), &Path::from(a)),
                None => self.s3.list(Some(&dir)),
            };
            let found: Vec<_> = listed.take(limit).try_collect().await.map_err(store_err)?;
            Ok(found.into_iter().map(info).collect())
        })
        .await
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = Path::from(prefix.trim_end_matches('/'));
        self.small(op::LIST, async {
            let listed = self
                .s3
                .list_with_delimiter(Some(&dir))
                .await
                .map_err(store_err)?;
            Ok(listed
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_string))
                .collect())
        })
        .await
    }

    async fn create_multipart(&self, key: &str) -> Result<String> {
        use object_store::multipart::MultipartStore;
        self.small(op::CREATE_MULTIPART, async {
            self.s3
                .create_multipart(&Path::from(key))
                .await
                .map_err(store_err)
        })
        .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u64,
        len: u64,
        sha256: Option<Sha256Digest>,
        body: PartBody,
    ) -> Result<String> {
        let query = vec![
            ("partNumber".to_string(), number.to_string()),
            ("uploadId".to_string(), upload_id.to_string()),
        ];
        let headers: Vec<(&'static str, String)> = sha256
            .iter()
            .map(|d| ("x-amz-checksum-sha256", d.to_base64()))
            .collect();
        let url = self.signed(http::Method::PUT, key, query, &headers).await?;
        let mut request = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(body));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let resp = request.send().await.map_err(io)?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            if status == reqwest::StatusCode::NOT_FOUND {
                return Err(Error::NotFound);
            }
            return Err(io(format!(
                "UploadPart answered {status}: {}",
                error_code(&text)
            )));
        }
        resp.headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(normalize_etag)
            .ok_or_else(|| io("UploadPart answered no ETag"))
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<PartInfo>> {
        let mut parts = Vec::new();
        let mut marker = 0u64;
        loop {
            let mut query = vec![("uploadId".to_string(), upload_id.to_string())];
            if marker > 0 {
                query.push(("part-number-marker".to_string(), marker.to_string()));
            }
            let page: ListPartsResult = self
                .small(op::LIST_PARTS, async {
                    let url = self.signed(http::Method::GET, key, query, &[]).await?;
                    let resp = self.http.get(url).send().await.map_err(io)?;
                    let text = self.text(resp, "ListParts").await?;
                    quick_xml::de::from_str(&text).map_err(io)
                })
                .await?;
            for p in &page.parts {
                parts.push(PartInfo {
                    number: p.part_number,
                    etag: normalize_etag(&p.etag),
                    size: p.size,
                    sha256: p
                        .checksum_sha256
                        .as_deref()
                        .and_then(|c| Sha256Digest::from_base64(c).ok()),
                });
            }
            let next = page
                .next_part_number_marker
                .or_else(|| page.parts.last().map(|p| p.part_number));
            match next {
                Some(n) if page.is_truncated && n > marker => marker = n,
                _ => return Ok(parts),
            }
        }
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u64, String)],
    ) -> Result<Joined> {
        let mut body = String::from(
            r#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">"#,
        );
        for (number, etag) in parts {
            body.push_str(&format!(
                "<Part><ETag>\"{}\"</ETag><PartNumber>{number}</PartNumber></Part>",
                normalize_etag(etag)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let joined = async {
            let query = vec![("uploadId".to_string(), upload_id.to_string())];
            let url = self.signed(http::Method::POST, key, query, &[]).await?;
            let resp = self.http.post(url).body(body).send().await.map_err(io)?;
            let status = resp.status();
            let text = resp.text().await.map_err(io)?;
            let code = error_code(&text);
            // S3 may answer 200 with an error in the body, transient or not.
            match (status.is_success(), code.as_str()) {
                (true, "") => Ok(Joined::Done),
                (_, "NoSuchUpload") => Err(Error::NotFound),
                (_, "InternalError" | "ServiceUnavailable" | "SlowDown") => {
                    Err(io(format!("CompleteMultipartUpload answered {code}")))
                }
                _ if status.is_server_error() => {
                    Err(io(format!("CompleteMultipartUpload answered {status}")))
                }
                _ => Ok(Joined::Refused(format!("{status}: {code}"))),
            }
        };
        joined.await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        use object_store::multipart::MultipartStore;
        self.small(op::ABORT_MULTIPART, async {
            match self
                .s3
                .abort_multipart(&Path::from(key), &upload_id.to_string())
                .await
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(store_err(e)),
            }
        })
        .await
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<MultipartInfo>> {
        let mut found = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = vec![
                ("uploads".to_string(), String::new()),
                ("prefix".to_string(), prefix.to_string()),
            ];
            if let Some((key, upload)) = &markers {
                query.push(("key-marker".to_string(), key.clone()));
                query.push(("upload-id-marker".to_string(), upload.clone()));
            }
            let page: ListMultipartUploadsResult = self
                .small(op::LIST_MULTIPART, async {
                    let url = self.signed(http::Method::GET, "", query, &[]).await?;
                    let resp = self.http.get(url).send().await.map_err(io)?;
                    let text = self.text(resp, "ListMultipartUploads").await?;
                    quick_xml::de::from_str(&text).map_err(io)
                })
                .await?;
            for u in page.uploads {
                let initiated = OffsetDateTime::parse(
                    &u.initiated,
                    &time::format_description::well_known::Rfc3339,
                )
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                found.push(MultipartInfo {
                    key: u.key,
                    upload_id: u.upload_id,
                    initiated,
                });
            }
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(k), Some(u)) => markers = Some((k, u)),
                _ => return Ok(found),
            }
        }
    }
}
