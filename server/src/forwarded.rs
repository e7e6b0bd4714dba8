//! How a request reached the server: directly or through a trusted reverse proxy, from
//! which client, and under which public URL.
//!
//! - **Public URL.** The URLs the server hands out (`Location`, `Content-Location`, signed
//!   download URLs) are relative by default, which a client resolves against the URL it
//!   used, right through any proxy that keeps paths. They become absolute under
//!   `--public-url` when one is configured, or under the scheme and host a trusted proxy
//!   names in `X-Forwarded-Proto` and `X-Forwarded-Host` (its own `Host` otherwise).
//! - **Client address.** From a `--trusted-proxy`, the client is the right-most address of
//!   `X-Forwarded-For` that is not itself a trusted proxy, so that limits keyed by address
//!   and the access log see clients, not the proxy.
//! - **Through a proxy.** A request from a trusted proxy, or carrying the headers proxies
//!   add (`Forwarded`, `X-Forwarded-*`, `Via`), gets no interim (1xx) response: some
//!   proxies (nginx 1.22) forward a `104` as if it were the final answer.
//!
//! Headers of anyone else are ignored: a client cannot choose the URLs the server hands
//! out to it, nor the address it is counted under.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use ipnet::IpNet;

/// What the server was told of its public face (`--public-url`, `--trusted-proxy`).
#[derive(Clone, Debug, Default)]
pub struct Edge {
    /// `--public-url`, without a trailing slash.
    pub public_url: Option<Arc<str>>,
    /// Proxies whose forwarding headers are believed.
    pub trusted: Vec<IpNet>,
}

/// What [`Edge::classify`] made of one request.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// The client: the peer, or the address a trusted proxy forwarded for.
    pub client: SocketAddr,
    /// Base of absolute URLs, when one is known.
    pub base: PublicBase,
    /// Whether the request came through a proxy (trusted or announced by its headers).
    pub proxied: bool,
}

impl Edge {
    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Reads how the request from `peer` with `headers` arrived; `tls` is whether the
    /// connection to this server is encrypted.
    pub fn classify(&self, peer: SocketAddr, headers: &HeaderMap, tls: bool) -> Arrival {
        let trusted = self.is_trusted(peer.ip());
        let announced = [
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "via",
        ]
        .iter()
        .any(|h| headers.contains_key(*h));
        let client = if trusted {
            forwarded_for(headers, |ip| self.is_trusted(ip))
                .map_or(peer, |ip| SocketAddr::new(ip, 0))
        } else {
            peer
        };
        let base = match &self.public_url {
            Some(url) => PublicBase(Some(url.clone())),
            None if trusted => PublicBase(forwarded_base(headers, tls).map(Arc::from)),
            None => PublicBase(None),
        };
        Arrival {
            client,
            base,
            proxied: trusted || announced,
        }
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:10.0.0.1`, as a dual-stack socket reports
/// it) as the IPv4 address, so that `10.0.0.0/8` matches it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The right-most address of `X-Forwarded-For` (each proxy appends the one it saw) that is
/// not a trusted proxy; the left-most when every one is.
fn forwarded_for(headers: &HeaderMap, trusted: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .map(|hop| {
            hop.parse::<IpAddr>()
                .or_else(|_| hop.parse::<SocketAddr>().map(|a| a.ip()))
                .ok()
        })
        .collect::<Option<Vec<_>>>()?;
    hops.iter()
        .rev()
        .copied()
        .find(|ip| !trusted(*ip))
        .or_else(|| hops.first().copied())
        .map(canonical)
}

/// `scheme://host` from a trusted proxy's `X-Forwarded-Proto` and `X-Forwarded-Host` (or
/// its `Host`); `None` when neither names anything usable.
fn forwarded_base(headers: &HeaderMap, tls: bool) -> Option<String> {
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let proto = first("x-forwarded-proto");
    let host = first("x-forwarded-host");
    if proto.is_none() && host.is_none() {
        return None;
    }
    let scheme = match proto.map(str::to_ascii_lowercase).as_deref() {
        Some("https") => "https",
        Some("http") => "http",
        Some(_) => return None,
        None if tls => "https",
        None => "http",
    };
    let host = host.or_else(|| first(header::HOST.as_str()))?;
    is_host(host).then(|| format!("{scheme}://{host}"))
}

/// Whether `s` is a plausible `host[:port]` (a name, an IPv4 or a bracketed IPv6
/// address): nothing that could smuggle a path, a user or another header into a URL.
fn is_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

/// Base of the absolute URLs handed out for a request (see the module documentation);
/// `None`: URLs stay relative. An extractor: absent (a request not from the accept loop)
/// reads as `None`.
#[derive(Clone, Debug, Default)]
pub struct PublicBase(pub Option<Arc<str>>);

impl PublicBase {
    /// `path` (absolute, starting with `/`) under the public base, or as it is.
    pub fn absolute(&self, path: &str) -> String {
        match &self.0 {
            Some(base) if path.starts_with('/') && !path.starts_with("//") => {
                format!("{base}{path}")
            }
            _ => path.to_string(),
        }
    }

    /// Makes the `Location` and `Content-Location` headers among `headers` absolute.
    pub fn absolutize(&self, headers: &mut HeaderMap) {
        if self.0.is_none() {
            return;
        }
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(path) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            if let Ok(v) = HeaderValue::from_str(&self.absolute(path)) {
                headers.insert(name, v);
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PublicBase {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<PublicBase>()
            .cloned()
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn edge(public: Option<&str>, trusted: &[&str]) -> Edge {
        Edge {
            public_url: public.map(Arc::from),
            trusted: trusted.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    const PROXY: &str = "10.0.0.2:50000";
    const CLIENT: &str = "203.0.113.9:40000";

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let e = edge(None, &["10.0.0.0/24"]);
        let h = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "up.example"),
            ("x-forwarded-for", "198.51.100.1, 198.51.100.7"),
        ]);
        let via_proxy = e.classify(PROXY.parse().unwrap(), &h, false);
        assert_eq!(via_proxy.base.0.as_deref(), Some("https://up.example"));
        assert_eq!(via_proxy.client.ip().to_string(), "198.51.100.7");
        assert!(via_proxy.proxied);
        // The same headers from a client are its own business: ignored, but it came
        // through something that calls itself a proxy, so no interim responses.
        let direct = e.classify(CLIENT.parse().unwrap(), &h, false);
        assert_eq!(direct.base.0, None);
        assert_eq!(direct.client, CLIENT.parse().unwrap());
        assert!(direct.proxied);
        let plain = e.classify(CLIENT.parse().unwrap(), &HeaderMap::new(), false);
        assert!(!plain.proxied);
    }

    #[test]
    fn forwarded_for_skips_trusted_hops_and_survives_spoofing() {
        let e = edge(None, &["10.0.0.0/24"]);
        // The client claims to be 1.2.3.4; the proxy appended what it saw.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.0.0.3")]);
        let a = e.classify(PROXY.parse().unwrap(), &h, false);
        assert_eq!(a.client.ip().to_string(), "198.51.100.7");
        let garbage = headers(&[("x-forwarded-for", "not-an-address")]);
        assert_eq!(
            e.classify(PROXY.parse().unwrap(), &garbage, false).client,
            PROXY.parse().unwrap()
        );
        let mapped: SocketAddr = "[::ffff:10.0.0.2]:1".parse().unwrap();
        assert!(e.is_trusted(mapped.ip()));
    }

    #[test]
    fn public_url_wins_and_bad_hosts_are_refused() {
        let e = edge(Some("https://files.example/up"), &["10.0.0.0/24"]);
        let h = headers(&[
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let a = e.classify(PROXY.parse().unwrap(), &h, false);
        assert_eq!(
            a.base.absolute("/v1/uploads/x"),
            "https://files.example/up/v1/uploads/x"
        );
        let e = edge(None, &["10.0.0.0/24"]);
        for host in ["evil.example/path", "a@b", "x y"] {
            let h = headers(&[("x-forwarded-proto", "https"), ("x-forwarded-host", host)]);
            assert_eq!(
                e.classify(PROXY.parse().unwrap(), &h, false).base.0,
                None,
                "{host}"
            );
        }
        let h = headers(&[("x-forwarded-proto", "gopher"), ("host", "a")]);
        assert_eq!(e.classify(PROXY.parse().unwrap(), &h, false).base.0, None);
        let h = headers(&[("x-forwarded-proto", "https"), ("host", "up.example:8443")]);
        assert_eq!(
            e.classify(PROXY.parse().unwrap(), &h, false)
                .base
                .0
                .as_deref(),
            Some("https://up.example:8443")
        );
    }

    #[test]
    fn absolutize_rewrites_only_paths() {
        let base = PublicBase(Some(Arc::from("https://up.example")));
        let mut h = headers(&[
            ("location", "/files/abc"),
            ("content-location", "//elsewhere/x"),
        ]);
        base.absolutize(&mut h);
        assert_eq!(h["location"], "https://up.example/files/abc");
        assert_eq!(h["content-location"], "//elsewhere/x");
        let mut h = headers(&[("location", "/files/abc")]);
        PublicBase(None).absolutize(&mut h);
        assert_eq!(h["location"], "/files/abc");
    }
}
