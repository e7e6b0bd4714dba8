//! Authentication: who a request acts for.
//!
//! Two ways, usable together: a tokens file (`token owner` per line, reloaded on SIGHUP),
//! for simple deployments; and signed tokens (`--token-secret`): HMAC-SHA256 JWTs whose
//! `sub` is the owner and `exp` their expiry, so a web app's backend mints short-lived
//! upload tokens without calling the server. With neither, requests are anonymous.
//! The JWT check (HS256 only) is written here on `hmac` and `sha2`: a full JWT library
//! would bring a second crypto stack for one algorithm.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use storage::principal::{self, Principal};

use crate::error::ApiError;

/// How requests are authenticated.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Option<TokensFile>,
    secret: Option<Arc<Vec<u8>>>,
    /// Key of signed download URLs: the token secret, or a random key (URLs then last
    /// until a restart at most).
    url_key: Arc<Vec<u8>>,
}

/// A tokens file and its current content.
#[derive(Clone)]
struct TokensFile {
    path: PathBuf,
    map: Arc<RwLock<HashMap<String, String>>>,
}

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("this server needs `Authorization: Bearer <token>`")]
    Missing,
    /// The token is unknown, malformed, tampered with or expired.
    #[error("the bearer token is not valid: {0}")]
    Invalid(&'static str),
}

impl Auth {
    /// Authentication from a tokens file and/or a JWT secret; anonymous with neither.
    pub fn new(tokens_file: Option<&Path>, secret: Option<&str>) -> std::io::Result<Self> {
        let tokens = match tokens_file {
            Some(p) => Some(TokensFile {
                path: p.to_path_buf(),
                map: Arc::new(RwLock::new(read_tokens(p)?)),
            }),
            None => None,
        };
        let url_key = match secret {
            Some(s) => format!("content-url:{s}").into_bytes(),
            None => [
                uuid::Uuid::new_v4().into_bytes(),
                uuid::Uuid::new_v4().into_bytes(),
            ]
            .concat(),
        };
        Ok(Self {
            tokens,
            secret: secret.map(|s| Arc::new(s.as_bytes().to_vec())),
            url_key: Arc::new(url_key),
        })
    }

    fn url_mac(&self, id: &str, exp: i64) -> hmac::Hmac<Sha256> {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.url_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(format!("{id}.{exp}").as_bytes());
        mac
    }

    /// The query (`exp=..&sig=..`) of a signed download URL of upload `id`, valid until
    /// `exp` (Unix seconds).
    pub fn sign_content(&self, id: &str, exp: i64) -> String {
        let sig = hex::encode(self.url_mac(id, exp).finalize().into_bytes());
        format!("exp={exp}&sig={sig}")
    }

    /// Whether a signed download URL is genuine and not expired.
    pub fn verify_content(&self, id: &str, exp: i64, sig: &str, now: i64) -> bool {
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        exp > now && self.url_mac(id, exp).verify_slice(&sig).is_ok()
    }

    /// Whether any authentication is configured.
    pub fn enabled(&self) -> bool {
        self.tokens.is_some() || self.secret.is_some()
    }

    /// Re-reads the tokens file; keeps the old tokens when the file cannot be read.
    pub fn reload(&self) {
        let Some(t) = &self.tokens else { return };
        match read_tokens(&t.path) {
            Ok(map) => {
                let n = map.len();
                *t.map.write().unwrap_or_else(|e| e.into_inner()) = map;
                tracing::info!(tokens = n, "tokens file reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "tokens file not reloaded; keeping the old tokens")
            }
        }
    }

    /// The principal a bearer token stands for.
    pub fn principal(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        if !self.enabled() {
            return Ok(Principal::Anonymous);
        }
        let token = authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        if let Some(t) = &self.tokens {
            if let Some(owner) = t.map.read().unwrap_or_else(|e| e.into_inner()).get(token) {
                return Ok(Principal::Owner(owner.clone()));
            }
        }
        match &self.secret {
            Some(secret) => verify_jwt(token, secret, now()).map(Principal::Owner),
            None => Err(AuthError::Invalid("unknown token")),
        }
    }
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `exp` and `sig` of a signed content URL, if the request is one: `GET`/`HEAD` of
/// `/v1/uploads/{id}/content?exp=..&sig=..`. Returns the id text too. `Some(Err(()))`
/// when the query names `exp` or `sig` but is no well-formed signed URL (one of them
/// missing, `exp` not a number): such a request is refused rather than served as if it
/// had no query.
pub(crate) fn signed_content(req: &Request) -> Option<Result<(String, i64, String), ()>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    let id = req
        .uri()
        .path()
        .strip_prefix("/v1/uploads/")?
        .strip_suffix("/content")?;
    let (mut exp, mut sig, mut named) = (None, None, false);
    for pair in req.uri().query()?.split('&') {
        match pair.split_once('=') {
            Some(("exp", v)) => {
                named = true;
                exp = v.parse().ok();
            }
            Some(("sig", v)) => {
                named = true;
                sig = Some(v.to_string());
            }
            _ => {}
        }
    }
    named.then(|| match (exp, sig) {
        (Some(exp), Some(sig)) => Ok((id.to_string(), exp, sig)),
        _ => Err(()),
    })
}

/// `token owner` per line; blank lines and `#` comments are skipped.
fn read_tokens(path: &Path) -> std::io::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)?;
    let mut map = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.split_whitespace();
        match (it.next(), it.next(), it.next()) {
            (Some(token), Some(owner), None) => {
                map.insert(token.to_string(), owner.to_string());
            }
            _ => {
                return Err(std::io::Error::other(format!(
                    "{}:{}: expected `token owner`",
                    path.display(),
                    n + 1
                )))
            }
        }
    }
    Ok(map)
}

/// Checks an HS256 JWT and returns its `sub`.
pub fn verify_jwt(token: &str, secret: &[u8], now: i64) -> Result<String, AuthError> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Invalid("not a JWT"));
    };
    let header: serde_json::Value = b64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthError::Invalid("malformed header"))?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(AuthError::Invalid("only HS256 tokens are accepted"));
    }
    let sig = b64
        .decode(s)
        .map_err(|_| AuthError::Invalid("malformed signature"))?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret)
        .map_err(|_| AuthError::Invalid("unusable secret"))?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&sig)
        .map_err(|_| AuthError::Invalid("bad signature"))?;
    let claims: serde_json::Value = b64
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthError::Invalid("malformed claims"))?;
    let exp = claims
        .get("exp")
        .and_then(|e| e.as_i64())
        .ok_or(AuthError::Invalid("no exp claim"))?;
    if exp <= now {
        return Err(AuthError::Invalid("expired"));
    }
    if claims
        .get("nbf")
        .and_then(|n| n.as_i64())
        .is_some_and(|nbf| nbf > now)
    {
        return Err(AuthError::Invalid("not valid yet"));
    }
    claims
        .get("sub")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or(AuthError::Invalid("no sub claim"))
}

/// Runs each request as its principal. Public routes (health, the page, capabilities,
/// preflights) need no token.
pub async fn authenticate(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let public = req.method() == Method::OPTIONS
        || matches!(
            path,
            "/" | "/app.js" | "/upload-worker.js" | "/style.css" | "/healthz" | "/readyz" | "/v1"
        );
    if public {
        return next.run(req).await;
    }
    match signed_content(&req) {
        // A signed URL stands for the server itself, for this one upload's content.
        Some(Ok((id, exp, sig))) if auth.verify_content(&id, exp, &sig, now()) => {
            return next.run(req).await;
        }
        Some(Ok(_)) => {
            return ApiError::Unauthorized("the signed URL is invalid or expired".into())
                .into_response()
        }
        Some(Err(())) => {
            return ApiError::Unauthorized(
                "a signed URL needs both exp (Unix seconds) and sig".into(),
            )
            .into_response()
        }
        None => {}
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth.principal(authorization) {
        Ok(p) => principal::scope(p, next.run(req)).await,
        Err(e) => {
            let mut resp = ApiError::Unauthorized(e.to_string()).into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(secret: &[u8], claims: &str, alg: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let h = b64.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let p = b64.encode(claims);
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", b64.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn jwts_are_checked() {
        let s = b"secret";
        let ok = jwt(s, r#"{"sub":"alice","exp":2000}"#, "HS256");
        assert_eq!(verify_jwt(&ok, s, 1000), Ok("alice".into()));
        assert_eq!(verify_jwt(&ok, s, 2000), Err(AuthError::Invalid("expired")));
        assert!(verify_jwt(&ok, b"other", 1000).is_err());
        let mut tampered = ok.clone();
        tampered.replace_range(ok.find('.').unwrap() + 2..ok.find('.').unwrap() + 3, "A");
        assert!(verify_jwt(&tampered, s, 1000).is_err());
        let none = jwt(s, r#"{"sub":"alice","exp":2000}"#, "none");
        assert!(verify_jwt(&none, s, 1000).is_err());
        assert!(verify_jwt(&jwt(s, r#"{"exp":2000}"#, "HS256"), s, 1000).is_err());
        assert!(verify_jwt(&jwt(s, r#"{"sub":"a"}"#, "HS256"), s, 1000).is_err());
        assert!(verify_jwt("a.b", s, 1000).is_err());
    }

    #[test]
    fn signed_content_urls() {
        let a = Auth::new(None, Some("s")).unwrap();
        let q = a.sign_content("id1", 100);
        let sig = q.split("sig=").nth(1).unwrap();
        assert!(a.verify_content("id1", 100, sig, 99));
        assert!(!a.verify_content("id1", 100, sig, 100), "expired");
        assert!(!a.verify_content("id2", 100, sig, 99), "another upload");
        assert!(!a.verify_content("id1", 101, sig, 99), "another expiry");
        assert!(!a.verify_content("id1", 100, "zz", 99));
        let other = Auth::new(None, Some("t")).unwrap();
        assert!(!other.verify_content("id1", 100, sig, 99), "another key");
    }

    #[test]
    fn tokens_file_and_bearer_header() {
        let dir = std::env::temp_dir().join(format!("auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tokens");
        std::fs::write(&f, "# comment\n\nt1 alice\nt2 bob\n").unwrap();
        let auth = Auth::new(Some(&f), None).unwrap();
        assert_eq!(
            auth.principal(Some("Bearer t1")),
            Ok(Principal::Owner("alice".into()))
        );
        assert_eq!(auth.principal(None), Err(AuthError::Missing));
        assert!(auth.principal(Some("Bearer nope")).is_err());
        std::fs::write(&f, "t3 carol\n").unwrap();
        auth.reload();
        assert!(auth.principal(Some("Bearer t1")).is_err());
        assert_eq!(
            auth.principal(Some("Bearer t3")),
            Ok(Principal::Owner("carol".into()))
        );
        std::fs::write(&f, "broken line with three\n").unwrap();
        auth.reload();
        assert!(
            auth.principal(Some("Bearer t3")).is_ok(),
            "a bad file keeps the old tokens"
        );
        assert_eq!(Auth::default().principal(None), Ok(Principal::Anonymous));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
