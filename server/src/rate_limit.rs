//! Request rate limits: a token bucket per owner (per client IP when anonymous, an IPv6
//! client by its /64), so one client cannot crowd out the others. A request over its
//! bucket gets 429 with a `Retry-After` saying when the next one will be taken.
//!
//! Failed authentications have a bucket of their own per client address
//! ([`AuthFailures`]): once it is empty, that address may not try to authenticate at all
//! (429, even with a good token) until it refills, so tokens and signed URLs cannot be
//! guessed at speed.
//!
//! The buckets are `governor`'s GCRA (equivalent to a token bucket). They live in this
//! process only: with several instances behind a load balancer each instance grants the
//! configured rate, which is what a per-instance limit on a shared resource should do.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use storage::principal::{self, Principal};

use crate::error::ApiError;

/// Whom a bucket belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// An authenticated owner, wherever they connect from.
    Owner(String),
    /// An anonymous client, by address.
    Ip(IpAddr),
}

/// The limiter shared by every request; cheap to clone.
#[derive(Clone)]
pub struct RateLimit {
    limiter: Option<Arc<DefaultKeyedRateLimiter<Key>>>,
}

impl RateLimit {
    /// `per_second` requests a second sustained, with bursts of up to `burst`; zero turns
    /// limiting off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            Arc::new(DefaultKeyedRateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        Self { limiter }
    }

    /// Whether a request under `key` may run now; if not, how long until one may.
    fn check(&self, key: &Key) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets buckets that are full again, so idle clients cost no memory.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Paths never limited: probes and metrics scrapes must answer under any load.
fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Middleware: runs inside authentication, so the owner is known.
pub async fn limit(State(limit): State<RateLimit>, req: Request, next: Next) -> Response {
    if limit.limiter.is_none() || exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let key = match principal::current() {
        Some(Principal::Owner(owner)) => Some(Key::Owner(owner)),
        _ => req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| Key::Ip(storage::quota::network(addr.ip()))),
    };
    let Some(key) = key else {
        return next.run(req).await;
    };
    match limit.check(&key) {
        Ok(()) => next.run(req).await,
        Err(wait) => ApiError::RateLimited(wait).into_response(),
    }
}

/// Failed authentications per client address; see the module documentation.
#[derive(Clone, Default)]
pub struct AuthFailures {
    limiter: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    /// Addresses whose bucket ran out, and until when they may not try again.
    blocked: Arc<Mutex<HashMap<IpAddr, Instant>>>,
}

impl AuthFailures {
    /// `per_minute` failures a minute per address, all at once at most; zero turns the
    /// limit off.
    pub fn new(per_minute: u32) -> Self {
        let limiter = NonZeroU32::new(per_minute).and_then(|n| {
            let quota = Quota::with_period(Duration::from_secs(60) / n.get())?.allow_burst(n);
            Some(Arc::new(DefaultKeyedRateLimiter::keyed(quota)))
        });
        Self {
            limiter,
            blocked: Arc::default(),
        }
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.blocked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `addr` may try to authenticate now; if not, how long until it may.
    pub fn check(&self, addr: IpAddr) -> Result<(), Duration> {
        let addr = storage::quota::network(addr);
        let mut blocked = self.blocked();
        match blocked.get(&addr) {
            Some(until) if *until > Instant::now() => Err(*until - Instant::now()),
            Some(_) => {
                blocked.remove(&addr);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A failed authentication from `addr`: once its bucket is empty, the address is
    /// refused until the bucket has room again. Returns that wait when it starts.
    pub fn failed(&self, addr: IpAddr) -> Option<Duration> {
        let limiter = self.limiter.as_ref()?;
        let addr = storage::quota::network(addr);
        let wait = limiter
            .check_key(&addr)
            .err()?
            .wait_time_from(DefaultClock::default().now());
        self.blocked().insert(addr, Instant::now() + wait);
        tracing::warn!(%addr, wait_s = wait.as_secs_f64(), "too many failed authentications; refusing the address for a while");
        Some(wait)
    }

    /// Forgets full buckets and ended blocks, so that idle addresses cost no memory.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let now = Instant::now();
        self.blocked().retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_taken_then_refused_with_a_wait() {
        let limit = RateLimit::new(2, 5);
        let a = Key::Owner("a".into());
        for _ in 0..5 {
            assert_eq!(limit.check(&a), Ok(()));
        }
        let wait = limit
            .check(&a)
            .expect_err("the sixth request is over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Another owner has a bucket of its own.
        assert_eq!(limit.check(&Key::Owner("b".into())), Ok(()));
    }

    #[test]
    fn zero_means_unlimited() {
        let limit = RateLimit::new(0, 0);
        for _ in 0..10_000 {
            assert_eq!(limit.check(&Key::Ip(IpAddr::from([127, 0, 0, 1]))), Ok(()));
        }
    }

    #[test]
    fn failed_authentications_block_the_address_for_a_while() {
        let failures = AuthFailures::new(3);
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        for _ in 0..3 {
            assert_eq!(failures.check(a), Ok(()));
            assert_eq!(failures.failed(a), None);
        }
        let wait = failures
            .failed(a)
            .expect("the fourth failure starts a block");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(
            failures.check(a).is_err(),
            "blocked, whatever it sends next"
        );
        assert_eq!(failures.check(b), Ok(()), "another address is not");
        // An IPv6 client is one client across its /64.
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..4 {
            failures.failed(v6);
        }
        assert!(failures.check("2001:db8::ffff".parse().unwrap()).is_err());
        assert_eq!(AuthFailures::new(0).failed(a), None, "0 turns it off");
    }
}
