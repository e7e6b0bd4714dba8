//! AWS Signature Version 4 for the tests' raw S3 requests, so that they reach a store
//! that checks signatures (Ceph RGW) the way any S3 client does.
//!
//! [`S3Client`]'s methods return an [`S3Request`], built like a `reqwest::RequestBuilder`
//! (`header`, `body`, `timeout`, `send`); it is signed as it is sent, over its method,
//! URL and every `x-amz-*` header (S3 refuses a request with one left unsigned). The
//! payload is not signed (`x-amz-content-sha256: UNSIGNED-PAYLOAD`, which S3 and RGW
//! accept), so a streamed body needs no second pass.
//!
//! Written here rather than taken from `aws-sigv4`, whose dependency tree (the AWS SDK's
//! runtime crates) is larger than these ~150 lines.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Body, Method, Request, Response, Url};
use sha2::{Digest, Sha256};
use time::macros::format_description;
use time::OffsetDateTime;

/// SigV4's URI encoding: everything but the unreserved characters `A-Z a-z 0-9 - . _ ~`.
const URI_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// What a store needs to check a signature: the key pair and the region.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

/// An HTTP client whose requests carry a SigV4 `Authorization` header.
///
/// It keeps no idle connection: the shared store outlives each test's tokio runtime, and
/// a pooled connection would belong to the runtime that opened it.
#[derive(Clone, Debug)]
pub struct S3Client {
    http: reqwest::Client,
    credentials: Credentials,
}

impl S3Client {
    pub fn new(credentials: Credentials) -> S3Client {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");
        S3Client { http, credentials }
    }

    pub fn get(&self, url: impl AsRef<str>) -> S3Request {
        self.request(Method::GET, url)
    }

    pub fn put(&self, url: impl AsRef<str>) -> S3Request {
        self.request(Method::PUT, url)
    }

    pub fn post(&self, url: impl AsRef<str>) -> S3Request {
        self.request(Method::POST, url)
    }

    pub fn head(&self, url: impl AsRef<str>) -> S3Request {
        self.request(Method::HEAD, url)
    }

    pub fn delete(&self, url: impl AsRef<str>) -> S3Request {
        self.request(Method::DELETE, url)
    }

    /// A request to `url` (absolute, path-style: `http://host:port/bucket/key?query`).
    pub fn request(&self, method: Method, url: impl AsRef<str>) -> S3Request {
        let url = Url::parse(url.as_ref())
            .unwrap_or_else(|e| panic!("S3 request URL {:?}: {e}", url.as_ref()));
        S3Request {
            builder: self.http.request(method, url),
            credentials: self.credentials.clone(),
        }
    }
}

/// A request being built; signed by [`S3Request::send`].
#[must_use = "an S3Request does nothing until sent"]
pub struct S3Request {
    builder: reqwest::RequestBuilder,
    credentials: Credentials,
}

impl S3Request {
    pub fn header<K, V>(self, name: K, value: V) -> S3Request
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        S3Request {
            builder: self.builder.header(name, value),
            ..self
        }
    }

    pub fn headers(self, headers: reqwest::header::HeaderMap) -> S3Request {
        S3Request {
            builder: self.builder.headers(headers),
            ..self
        }
    }

    pub fn body(self, body: impl Into<Body>) -> S3Request {
        S3Request {
            builder: self.builder.body(body),
            ..self
        }
    }

    pub fn timeout(self, timeout: Duration) -> S3Request {
        S3Request {
            builder: self.builder.timeout(timeout),
            ..self
        }
    }

    /// Signs the request now and sends it.
    pub async fn send(self) -> reqwest::Result<Response> {
        let (client, request) = self.builder.build_split();
        let mut request = request?;
        sign(&self.credentials, &mut request, OffsetDateTime::now_utc());
        client.execute(request).await
    }
}

/// Adds `x-amz-date`, `x-amz-content-sha256` and an `authorization` that signs the
/// method, URL, host and every `x-amz-*` header, as of `now`.
pub fn sign(credentials: &Credentials, request: &mut Request, now: OffsetDateTime) {
    let amz_date = now
        .format(format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .expect("format x-amz-date");
    let date = &amz_date[..8];
    let url = request.url().clone();
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let headers = request.headers_mut();
    headers.insert("x-amz-date", HeaderValue::from_str(&amz_date).unwrap());
    headers.insert(
        "x-amz-content-sha256",
        HeaderValue::from_static(UNSIGNED_PAYLOAD),
    );
    let mut signed: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-amz-"))
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes());
            (name.as_str().to_string(), value.trim().to_string())
        })
        .collect();
    signed.push(("host".to_string(), host));
    signed.sort();
    let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = signed
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{UNSIGNED_PAYLOAD}",
        request.method(),
        canonical_uri(url.path()),
        canonical_query(url.query().unwrap_or("")),
    );
    let scope = format!("{date}/{}/s3/aws4_request", credentials.region);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", credentials.secret_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [credentials.region.as_str(), "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, \
         Signature={signature}",
        credentials.access_key
    );
    request.headers_mut().insert(
        reqwest::header::AUTHORIZATION,
        HeaderValue::from_str(&authorization).expect("authorization header"),
    );
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Each path segment decoded, then encoded as SigV4 wants (S3 does not normalise paths).
fn canonical_uri(path: &str) -> String {
    let segments: Vec<String> = path.split('/').map(encode).collect();
    let uri = segments.join("/");
    if uri.is_empty() {
        "/".to_string()
    } else {
        uri
    }
}

/// Parameters decoded, encoded as SigV4 wants, sorted; `uploads` becomes `uploads=`.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(k), encode(v))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(raw: &str) -> String {
    let decoded = percent_decode_str(raw).decode_utf8_lossy();
    utf8_percent_encode(&decoded, URI_ENCODE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The canonical URI and query as SigV4 defines them (the store recomputes both from
    /// the request it receives; the end-to-end tests check the whole signature on Ceph).
    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_uri("/b/a%20b/c:d"), "/b/a%20b/c%3Ad");
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(
            canonical_query("uploadId=2~x&partNumber=10&uploads"),
            "partNumber=10&uploadId=2~x&uploads="
        );
        assert_eq!(
            canonical_query("list-type=2&prefix=uploads/a b"),
            "list-type=2&prefix=uploads%2Fa%20b"
        );
    }
}
