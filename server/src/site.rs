//! Which web pages may drive a server that has no authentication (anonymous mode, the
//! default on loopback).
//!
//! Without tokens, any request that reaches the server acts for everyone, and a browser
//! can be made to send requests: a page on another site can post a form or text to
//! `http://127.0.0.1:8080` (a "simple" request, sent without asking the server first), and
//! a site whose name is made to resolve to 127.0.0.1 (DNS rebinding) is even same-origin
//! with it. So, when anonymous:
//! - the `Host` a request names must be an IP address, `localhost` (or a name under
//!   `.localhost`), the host of `--public-url`, or one of the names the operator lists
//!   (`--allowed-host`): a rebinding site's name is none of them. Behind a trusted proxy
//!   the public host it forwards (`X-Forwarded-Host`) must be one of them too, since the
//!   proxy passes on whatever name the browser used;
//! - a state-changing request (anything but `GET`, `HEAD`, `OPTIONS`) that a browser sent
//!   from a page must come from the server's own origin (the host the request names, or
//!   its public URL: `--public-url`, or what a trusted proxy forwards) or one allowed by
//!   `--cors-origin`: browsers say which page sent it in `Origin` (and `Sec-Fetch-Site`),
//!   which a page cannot forge.
//!
//! (JSON bodies must also be sent as JSON, see [`crate::extract::JsonBody`].) With
//! authentication configured none of this applies: a bearer token is not something a
//! browser adds on its own.

use axum::http::{header, HeaderMap, Method, Uri};

/// The rules above, as configured.
#[derive(Clone, Debug, Default)]
pub struct Site {
    /// Host names accepted besides IP addresses and `localhost`, lowercase, without port.
    allowed_hosts: Vec<String>,
    /// Origins allowed to call the API from a browser (`--cors-origin`); `*` allows any.
    origins: Vec<String>,
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The `Host` is not one this server answers for.
    Host(String),
    /// A browser sent it from another site's page.
    CrossOrigin(String),
}

impl Site {
    /// Accepts `allowed_hosts` (names, maybe with a port) and the host of `public_url`,
    /// and pages of `origins`.
    pub fn new(allowed_hosts: &[String], origins: &[String], public_url: Option<&str>) -> Self {
        Self {
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.trim())
                .chain(
                    public_url
                        .and_then(split_base)
                        .map(|(_, authority)| authority),
                )
                .map(|h| strip_port(h).to_ascii_lowercase())
                .collect(),
            origins: origins
                .iter()
                .map(|o| o.trim_end_matches('/').into())
                .collect(),
        }
    }

    /// Checks a request of `method` for `uri` with `headers`; probes (`/healthz`,
    /// `/readyz`) are not checked. The host is the `Host` header, or the URI's authority
    /// (HTTP/2); `public` is the request's public URL
    /// ([`PublicBase`](crate::forwarded::PublicBase)), when one is known.
    pub fn check(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        public: Option<&str>,
    ) -> Result<(), Refusal> {
        if matches!(uri.path(), "/healthz" | "/readyz") {
            return Ok(());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()));
        let public = public.and_then(split_base);
        for name in host
            .into_iter()
            .chain(public.map(|(_, authority)| authority))
        {
            if !self.host_allowed(name) {
                return Err(Refusal::Host(name.to_string()));
            }
        }
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Ok(());
        }
        let origin = headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("?"));
        match origin {
            Some(origin) if !self.origin_allowed(origin, host, public.map(|(o, _)| o)) => {
                Err(Refusal::CrossOrigin(origin.to_string()))
            }
            Some(_) => Ok(()),
            // No `Origin`: not a browser's cross-site request, unless the browser says so.
            None => match headers.get("sec-fetch-site").map(|v| v.as_bytes()) {
                Some(b"cross-site") if !self.origins.iter().any(|o| o == "*") => Err(
                    Refusal::CrossOrigin("a page of another site (Sec-Fetch-Site)".into()),
                ),
                _ => Ok(()),
            },
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = strip_port(host).to_ascii_lowercase();
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<std::net::IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.allowed_hosts.contains(&name)
    }

    fn origin_allowed(&self, origin: &str, host: Option<&str>, public: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/');
        if self
            .origins
            .iter()
            .map(String::as_str)
            .chain(public)
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        {
            return true;
        }
        // The server's own pages: the origin names the host the request was sent to.
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
    }
}

/// `https://host:port/path` → (`https://host:port`, `host:port`): a public URL's origin
/// and authority.
fn split_base(base: &str) -> Option<(&str, &str)> {
    let (_, rest) = base.split_once("://")?;
    let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
    let origin = &base[..base.len() - rest.len() + authority.len()];
    Some((origin, authority))
}

/// `name:port` → `name`; `[v6]:port` → `[v6]`.
fn strip_port(host: &str) -> &str {
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hosts_are_addresses_localhost_or_listed() {
        let site = Site::new(&["Files.Example.org:443".into()], &[], None);
        let v1 = Uri::from_static("/v1");
        let get = |host: &str| site.check(&Method::GET, &v1, &headers(&[("host", host)]), None);
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "localhost:8080",
            "app.localhost",
            "files.example.org",
            "FILES.example.org:8443",
            "10.0.0.5:80",
        ] {
            assert_eq!(get(ok), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "127.0.0.1.nip.io",
            "localhost.evil.com",
            "x",
        ] {
            assert_eq!(get(bad), Err(Refusal::Host(bad.into())), "{bad}");
        }
        // Probes answer whatever the host.
        let probe = site.check(
            &Method::GET,
            &Uri::from_static("/healthz"),
            &headers(&[("host", "x")]),
            None,
        );
        assert_eq!(probe, Ok(()));
        // HTTP/2 names the host in the request's authority.
        let h2 = Uri::from_static("https://rebind.example/v1");
        assert!(site
            .check(&Method::GET, &h2, &HeaderMap::new(), None)
            .is_err());
    }

    #[test]
    fn state_changes_come_from_the_servers_pages_or_allowed_origins() {
        let site = Site::new(&[], &["https://app.example".into()], None);
        let uploads = Uri::from_static("/v1/uploads");
        let post = |pairs: &[(&'static str, &str)]| {
            site.check(&Method::POST, &uploads, &headers(pairs), None)
        };
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(post(&[host]), Ok(()), "no Origin: not a browser page");
        assert_eq!(post(&[host, ("origin", "http://127.0.0.1:8080")]), Ok(()));
        assert_eq!(post(&[host, ("origin", "https://app.example")]), Ok(()));
        for bad in ["http://evil.example", "null", "http://127.0.0.1:9999"] {
            assert!(post(&[host, ("origin", bad)]).is_err(), "{bad}");
        }
        assert!(post(&[host, ("sec-fetch-site", "cross-site")]).is_err());
        assert_eq!(post(&[host, ("sec-fetch-site", "same-origin")]), Ok(()));
        // Reads are left to CORS.
        let get = site.check(
            &Method::GET,
            &Uri::from_static("/v1"),
            &headers(&[host, ("origin", "http://evil.example")]),
            None,
        );
        assert_eq!(get, Ok(()));
        let any = Site::new(&[], &["*".into()], None);
        assert_eq!(
            any.check(
                &Method::DELETE,
                &Uri::from_static("/v1/uploads/x"),
                &headers(&[host, ("origin", "http://elsewhere")]),
                None
            ),
            Ok(())
        );
    }

    #[test]
    fn the_public_url_is_the_servers_own_origin() {
        let uploads = Uri::from_static("/v1/uploads");
        // Behind a proxy that names the server by its address, the page's origin is the
        // public one the proxy forwards.
        let proxied = Site::new(&["files.example".into()], &[], None);
        let post = |public: &str, pairs: &[(&'static str, &str)]| {
            proxied.check(&Method::POST, &uploads, &headers(pairs), Some(public))
        };
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(
            post(
                "https://127.0.0.1:8443",
                &[host, ("origin", "https://127.0.0.1:8443")]
            ),
            Ok(())
        );
        assert_eq!(
            post(
                "https://files.example",
                &[host, ("origin", "https://FILES.example")]
            ),
            Ok(())
        );
        assert!(post(
            "https://files.example",
            &[host, ("origin", "https://evil.example")]
        )
        .is_err());
        assert!(post(
            "https://files.example",
            &[host, ("origin", "http://127.0.0.1:8443")]
        )
        .is_err());
        // A rebinding site's name forwarded by the proxy is not the server's.
        assert_eq!(
            post(
                "https://rebind.example",
                &[host, ("origin", "https://rebind.example")]
            ),
            Err(Refusal::Host("rebind.example".into()))
        );
        // `--public-url` names a host the server answers for, and its pages' origin.
        let public = Site::new(&[], &[], Some("https://Uploads.example/base"));
        let check = |pairs: &[(&'static str, &str)]| {
            public.check(
                &Method::POST,
                &uploads,
                &headers(pairs),
                Some("https://Uploads.example/base"),
            )
        };
        let named = ("host", "uploads.example");
        assert_eq!(
            check(&[named, ("origin", "https://uploads.example")]),
            Ok(())
        );
        assert!(check(&[named, ("origin", "https://uploads.example.evil")]).is_err());
        assert!(check(&[("host", "other.example")]).is_err());
        assert_eq!(
            split_base("http://[::1]:8080/x/y"),
            Some(("http://[::1]:8080", "[::1]:8080"))
        );
        assert_eq!(split_base("https://h"), Some(("https://h", "h")));
        assert_eq!(split_base("nonsense"), None);
    }
}
