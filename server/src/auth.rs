//! Authentication: who a request acts for.
//!
//! Two ways, usable together: a tokens file (`token owner` per line, reloaded on SIGHUP),
//! for simple deployments; and signed tokens (`--token-secret`): HMAC-SHA256 JWTs whose
//! `sub` is the owner and `exp` their expiry, so a web app's backend mints short-lived
//! upload tokens without calling the server. With neither, requests are anonymous, and
//! [`crate::site`] decides which web pages may drive the server.
//! The JWT check (HS256 only) is written here on `hmac` and `sha2`: a full JWT library
//! would bring a second crypto stack for one algorithm.
//!
//! A signed download URL never outlives what minted it: one minted with a tokens-file
//! token names the token (by a keyed digest) and works only while the file still has it,
//! acting as its owner; one minted with a JWT expires with the JWT at the latest.
//!
//! Failed authentications are limited per client address (see
//! [`crate::rate_limit::AuthFailures`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use storage::principal::{self, Principal};

use crate::error::ApiError;
use crate::forwarded::PublicBase;
use crate::rate_limit::AuthFailures;
use crate::site::{Refusal, Site};

/// How requests are authenticated.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Option<TokensFile>,
    secret: Option<Arc<Vec<u8>>>,
    /// Key of signed download URLs: the token secret, or a random key (URLs then last
    /// until a restart at most).
    url_key: Arc<Vec<u8>>,
    /// Longest lifetime a JWT may have (`exp` from `iat`, or from now without one).
    max_jwt_lifetime: Option<Duration>,
    failures: AuthFailures,
    /// Which pages may drive the server when it is anonymous.
    site: Site,
    /// `/metrics` needs one of these owners' tokens.
    metrics_admins: Option<Arc<Vec<String>>>,
}

/// A tokens file and its current content.
#[derive(Clone)]
struct TokensFile {
    path: PathBuf,
    map: Arc<RwLock<Tokens>>,
}

/// Tokens by their text, and owners by the key id download URLs name them by.
#[derive(Default)]
struct Tokens {
    owners: HashMap<String, String>,
    by_kid: HashMap<String, String>,
}

/// What authenticated the request being handled: what a download URL it mints is tied to.
#[derive(Clone, Debug)]
enum Credential {
    /// A tokens-file token, by its key id.
    Listed(String),
    /// A JWT, valid until `exp`.
    Jwt { exp: i64 },
}

tokio::task_local! {
    static CREDENTIAL: Credential;
}

/// The claims of a valid JWT that matter here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The owner.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
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
        let url_key = Arc::new(match secret {
            Some(s) => format!("content-url:{s}").into_bytes(),
            None => [
                uuid::Uuid::new_v4().into_bytes(),
                uuid::Uuid::new_v4().into_bytes(),
            ]
            .concat(),
        });
        let tokens = match tokens_file {
            Some(p) => Some(TokensFile {
                path: p.to_path_buf(),
                map: Arc::new(RwLock::new(read_tokens(p, &url_key)?)),
            }),
            None => None,
        };
        Ok(Self {
            tokens,
            secret: secret.map(|s| Arc::new(s.as_bytes().to_vec())),
            url_key,
            ..Self::default()
        })
    }

    /// Refuses JWTs that live longer than `max` (`None`: any lifetime).
    pub fn max_jwt_lifetime(mut self, max: Option<Duration>) -> Self {
        self.max_jwt_lifetime = max;
        self
    }

    /// Limits failed authentications to `per_minute` a minute per client address.
    pub fn limit_failures(mut self, per_minute: u32) -> Self {
        self.failures = AuthFailures::new(per_minute);
        self
    }

    /// When anonymous, accepts `hosts` and the host of `public_url` besides addresses and
    /// `localhost`, and state changes from pages of `origins` besides the server's own.
    pub fn site(mut self, hosts: &[String], origins: &[String], public_url: Option<&str>) -> Self {
        self.site = Site::new(hosts, origins, public_url);
        self
    }

    /// `/metrics` needs the token of one of `admins`.
    pub fn restrict_metrics(mut self, admins: Vec<String>) -> Self {
        self.metrics_admins = Some(Arc::new(admins));
        self
    }

    /// The failed-authentication limiter (to forget idle addresses).
    pub fn failures(&self) -> &AuthFailures {
        &self.failures
    }

    fn url_mac(&self, id: &str, exp: i64, kid: Option<&str>) -> hmac::Hmac<Sha256> {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.url_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        match kid {
            Some(kid) => mac.update(format!("{id}.{exp}.{kid}").as_bytes()),
            None => mac.update(format!("{id}.{exp}").as_bytes()),
        }
        mac
    }

    /// The query (`exp=..&sig=..`) of a signed download URL of upload `id`, valid until
    /// `exp` (Unix seconds) at the latest; see [`Self::sign_content_until`].
    pub fn sign_content(&self, id: &str, exp: i64) -> String {
        self.sign_content_until(id, exp).0
    }

    /// The query of a signed download URL of upload `id`, tied to what authenticated the
    /// request minting it, and the expiry it has: `exp`, or the minting JWT's if earlier.
    /// A URL minted with a tokens-file token names it (`sig=<key id>.<mac>`) and works
    /// while the file has that token.
    pub fn sign_content_until(&self, id: &str, exp: i64) -> (String, i64) {
        let credential = CREDENTIAL.try_with(Clone::clone).ok();
        let (exp, kid) = match credential {
            Some(Credential::Jwt { exp: until }) => (exp.min(until), None),
            Some(Credential::Listed(kid)) => (exp, Some(kid)),
            None => (exp, None),
        };
        let mac = hex::encode(
            self.url_mac(id, exp, kid.as_deref())
                .finalize()
                .into_bytes(),
        );
        let sig = match kid {
            Some(kid) => format!("{kid}.{mac}"),
            None => mac,
        };
        (format!("exp={exp}&sig={sig}"), exp)
    }

    /// Whether a signed download URL is genuine, not expired, and (when a tokens-file
    /// token minted it) that token is still in the file.
    pub fn verify_content(&self, id: &str, exp: i64, sig: &str, now: i64) -> bool {
        self.verify_content_as(id, exp, sig, now).is_some()
    }

    /// [`Self::verify_content`], with whom the download acts for: `Some(None)` the server
    /// itself, `Some(Some(owner))` the owner of the token that minted it.
    fn verify_content_as(&self, id: &str, exp: i64, sig: &str, now: i64) -> Option<Option<String>> {
        let (kid, mac) = match sig.split_once('.') {
            Some((kid, mac)) => (Some(kid), mac),
            None => (None, sig),
        };
        let mac = hex::decode(mac).ok()?;
        if exp <= now || self.url_mac(id, exp, kid).verify_slice(&mac).is_err() {
            return None;
        }
        let Some(kid) = kid else {
            return Some(None);
        };
        let tokens = self.tokens.as_ref()?;
        let owner = tokens.read().by_kid.get(kid).cloned()?;
        Some(Some(owner))
    }

    /// Whether any authentication is configured.
    pub fn enabled(&self) -> bool {
        self.tokens.is_some() || self.secret.is_some()
    }

    /// Re-reads the tokens file; keeps the old tokens when the file cannot be read.
    pub fn reload(&self) {
        let Some(t) = &self.tokens else { return };
        match read_tokens(&t.path, &self.url_key) {
            Ok(tokens) => {
                let n = tokens.owners.len();
                *t.map.write().unwrap_or_else(|e| e.into_inner()) = tokens;
                tracing::info!(tokens = n, "tokens file reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "tokens file not reloaded; keeping the old tokens")
            }
        }
    }

    /// The principal a bearer token stands for.
    pub fn principal(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        self.credential(authorization).map(|(p, _)| p)
    }

    /// The principal a bearer token stands for, and what it is.
    fn credential(
        &self,
        authorization: Option<&str>,
    ) -> Result<(Principal, Option<Credential>), AuthError> {
        if !self.enabled() {
            return Ok((Principal::Anonymous, None));
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
            if let Some(owner) = t.read().owners.get(token) {
                let kid = key_id(&self.url_key, token);
                return Ok((
                    Principal::Owner(owner.clone()),
                    Some(Credential::Listed(kid)),
                ));
            }
        }
        match &self.secret {
            Some(secret) => {
                let c = check_jwt(token, secret, now(), self.max_jwt_lifetime)?;
                Ok((
                    Principal::Owner(c.sub),
                    Some(Credential::Jwt { exp: c.exp }),
                ))
            }
            None => Err(AuthError::Invalid("unknown token")),
        }
    }
}

impl TokensFile {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tokens> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The id a download URL names a tokens-file token by: keyed, so that it tells nothing
/// about the token to whoever holds the URL.
fn key_id(url_key: &[u8], token: &str) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(url_key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"token-id:");
    mac.update(token.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..12])
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
fn read_tokens(path: &Path, url_key: &[u8]) -> std::io::Result<Tokens> {
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
    let by_kid = map
        .iter()
        .map(|(token, owner)| (key_id(url_key, token), owner.clone()))
        .collect();
    Ok(Tokens {
        owners: map,
        by_kid,
    })
}

/// Checks an HS256 JWT and returns its `sub`.
pub fn verify_jwt(token: &str, secret: &[u8], now: i64) -> Result<String, AuthError> {
    check_jwt(token, secret, now, None).map(|c| c.sub)
}

/// Checks an HS256 JWT: signature, `exp` (required), `nbf` and `iat` (integers when
/// present), and a lifetime of at most `max_lifetime` (from `iat`, or from now).
pub fn check_jwt(
    token: &str,
    secret: &[u8],
    now: i64,
    max_lifetime: Option<Duration>,
) -> Result<Claims, AuthError> {
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
    // A time claim is an integer (RFC 7519's NumericDate, whole seconds here): one that
    // is not is refused rather than ignored.
    let time = |name: &str, bad: &'static str| match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or(AuthError::Invalid(bad)),
    };
    let exp = time("exp", "exp is not an integer")?.ok_or(AuthError::Invalid("no exp claim"))?;
    let nbf = time("nbf", "nbf is not an integer")?;
    let iat = time("iat", "iat is not an integer")?;
    if exp <= now {
        return Err(AuthError::Invalid("expired"));
    }
    if nbf.is_some_and(|nbf| nbf > now) {
        return Err(AuthError::Invalid("not valid yet"));
    }
    if let Some(max) = max_lifetime {
        let from = iat.unwrap_or(now).min(now);
        let max = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
        if exp.saturating_sub(from) > max {
            return Err(AuthError::Invalid(
                "it lives longer than this server allows (--jwt-max-lifetime)",
            ));
        }
    }
    let sub = claims
        .get("sub")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or(AuthError::Invalid("no sub claim"))?;
    Ok(Claims { sub, exp })
}

/// The client's address, when the connection gave one.
fn client(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
}

/// Refused for too many failed authentications from its address.
fn too_many_failures(wait: Duration) -> Response {
    ApiError::RateLimited(wait).into_response()
}

/// Runs each request as its principal. Public routes (health, the page, capabilities,
/// preflights) need no token. When anonymous, the request must come from a page allowed
/// to drive the server (see [`crate::site`]), and what it creates counts against its
/// client's address.
pub async fn authenticate(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let addr = client(&req);
    if !auth.enabled() {
        let public = req
            .extensions()
            .get::<PublicBase>()
            .and_then(|b| b.0.as_deref());
        match auth
            .site
            .check(req.method(), req.uri(), req.headers(), public)
        {
            Ok(()) => {}
            Err(Refusal::Host(host)) => {
                return ApiError::MisdirectedHost(format!(
                    "this server does not answer for the host {host:?}: name it by its address \
                     or localhost, or start it with --allowed-host"
                ))
                .into_response()
            }
            Err(Refusal::CrossOrigin(origin)) => {
                return ApiError::CrossOrigin(format!(
                    "a page of {origin} may not change uploads on this server (allow it with \
                     --cors-origin)"
                ))
                .into_response()
            }
        }
    }
    let path = req.uri().path();
    let public = req.method() == Method::OPTIONS
        || matches!(
            path,
            "/" | "/app.js" | "/upload-worker.js" | "/style.css" | "/healthz" | "/readyz" | "/v1"
        );
    if public {
        return next.run(req).await;
    }
    if let Some(Err(wait)) = addr.map(|a| auth.failures.check(a)) {
        return too_many_failures(wait);
    }
    let failed = |resp: Response| match addr.and_then(|a| auth.failures.failed(a)) {
        Some(wait) => too_many_failures(wait),
        None => resp,
    };
    match signed_content(&req) {
        // A signed URL acts for whoever minted it, for this one upload's content.
        Some(Ok((id, exp, sig))) => {
            return match auth.verify_content_as(&id, exp, &sig, now()) {
                Some(None) => next.run(req).await,
                Some(Some(owner)) => principal::scope(Principal::Owner(owner), next.run(req)).await,
                None => failed(
                    ApiError::Unauthorized("the signed URL is invalid or expired".into())
                        .into_response(),
                ),
            };
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
    match auth.credential(authorization) {
        Ok((Principal::Anonymous, _)) => {
            let run = principal::scope(Principal::Anonymous, next.run(req));
            match addr {
                Some(a) => storage::quota::scope_client(a, run).await,
                None => run.await,
            }
        }
        Ok((p, Some(c))) => {
            CREDENTIAL
                .scope(c, principal::scope(p, next.run(req)))
                .await
        }
        Ok((p, None)) => principal::scope(p, next.run(req)).await,
        Err(e) => {
            let missing = e == AuthError::Missing;
            let mut resp = ApiError::Unauthorized(e.to_string()).into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            // Sending no token is no guess.
            if missing {
                resp
            } else {
                failed(resp)
            }
        }
    }
}

/// `/metrics` for the admin owners only, when restricted (`--metrics-admin-only`).
pub async fn guard_metrics(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let Some(admins) = auth.metrics_admins.clone() else {
        return next.run(req).await;
    };
    let addr = client(&req);
    if let Some(Err(wait)) = addr.map(|a| auth.failures.check(a)) {
        return too_many_failures(wait);
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth.principal(authorization) {
        Ok(Principal::Owner(o)) if admins.contains(&o) => next.run(req).await,
        Ok(_) => ApiError::Forbidden(
            "only the server's admin owners (--admin-owner) may read the metrics".into(),
        )
        .into_response(),
        Err(e) => {
            let mut resp = ApiError::Unauthorized(e.to_string()).into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            match addr
                .filter(|_| e != AuthError::Missing)
                .and_then(|a| auth.failures.failed(a))
            {
                Some(wait) => too_many_failures(wait),
                None => resp,
            }
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

    /// Time claims are integers: a fractional or textual `nbf` (or `exp`, `iat`) is
    /// refused, not ignored; and a token may not live longer than the server allows.
    #[test]
    fn jwt_time_claims_and_lifetime() {
        let s = b"secret";
        let day = Duration::from_secs(24 * 3600);
        let check = |claims: &str, max| check_jwt(&jwt(s, claims, "HS256"), s, 1000, max);
        for bad in [
            r#"{"sub":"a","exp":2000,"nbf":999.5}"#,
            r#"{"sub":"a","exp":2000,"nbf":"900"}"#,
            r#"{"sub":"a","exp":2000,"iat":1e3}"#,
            r#"{"sub":"a","exp":2000.0}"#,
        ] {
            assert!(check(bad, None).is_err(), "{bad}");
        }
        assert!(check(r#"{"sub":"a","exp":2000,"nbf":1001}"#, None).is_err());
        assert_eq!(
            check(r#"{"sub":"a","exp":2000,"nbf":1000,"iat":900}"#, Some(day)),
            Ok(Claims {
                sub: "a".into(),
                exp: 2000
            })
        );
        let week = 1000 + 7 * 24 * 3600;
        let long = format!(r#"{{"sub":"a","exp":{week}}}"#);
        assert!(check(&long, None).is_ok());
        assert!(check(&long, Some(day)).is_err(), "a week from now");
        let long = format!(r#"{{"sub":"a","exp":{week},"iat":999}}"#);
        assert!(check(&long, Some(day)).is_err(), "a week from iat");
    }

    /// A download URL minted with a tokens-file token works while the file has the token,
    /// and acts for its owner; one minted with a JWT ends with the JWT.
    #[tokio::test]
    async fn signed_urls_end_with_what_minted_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "t1 alice\n").unwrap();
        let auth = Auth::new(Some(&f), Some("s")).unwrap();
        let (_, Some(c)) = auth.credential(Some("Bearer t1")).unwrap() else {
            panic!("a listed token")
        };
        let (q, exp) = CREDENTIAL
            .scope(c, async { auth.sign_content_until("id1", 500) })
            .await;
        assert_eq!(exp, 500);
        let sig = q.split("sig=").nth(1).unwrap();
        assert_eq!(
            auth.verify_content_as("id1", 500, sig, 100),
            Some(Some("alice".into()))
        );
        std::fs::write(&f, "t2 bob\n").unwrap();
        auth.reload();
        assert_eq!(
            auth.verify_content_as("id1", 500, sig, 100),
            None,
            "revoked"
        );
        // A JWT's URL expires with it.
        let token = jwt(b"s", r#"{"sub":"carol","exp":300}"#, "HS256");
        let c = Credential::Jwt {
            exp: check_jwt(&token, b"s", 100, None).unwrap().exp,
        };
        let (_, exp) = CREDENTIAL
            .scope(c, async { auth.sign_content_until("id1", 500) })
            .await;
        assert_eq!(exp, 300);
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
