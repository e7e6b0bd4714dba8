//! Request rate limits: a token bucket per owner (per client IP when anonymous), so one
//! client cannot crowd out the others. A request over its bucket gets 429 with a
//! `Retry-After` saying when the next one will be taken.
//!
//! The buckets are `governor`'s GCRA (equivalent to a token bucket). They live in this
//! process only: with several instances behind a load balancer each instance grants the
//! configured rate, which is what a per-instance limit on a shared resource should do.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

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
            .map(|ConnectInfo(addr)| Key::Ip(addr.ip())),
    };
    let Some(key) = key else {
        return next.run(req).await;
    };
    match limit.check(&key) {
        Ok(()) => next.run(req).await,
        Err(wait) => ApiError::RateLimited(wait).into_response(),
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
}
