//! When to retry and how long to wait: exponential backoff with full jitter, capped, and
//! the server's `Retry-After` honoured.
//!
//! Full jitter (a uniformly random wait between zero and the exponential ceiling) spreads
//! the retries of parallel chunks apart, so that a server that shed load is not hit by all
//! of them again at the same instant.

use std::time::{Duration, SystemTime};

/// How a failed request is repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (so `retries + 1` attempts in all).
    pub retries: u32,
    /// Ceiling of the first wait; it doubles with each attempt.
    pub base: Duration,
    /// Highest ceiling, whatever the attempt.
    pub cap: Duration,
    /// Longest `Retry-After` honoured; a longer one is cut to this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 10,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The ceiling of the wait before retry number `retry` (1 for the first retry):
    /// `min(cap, base × 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1).min(32);
        let ceiling = self.base.saturating_mul(1u32 << shift.min(31));
        ceiling.min(self.cap)
    }

    /// The wait before retry number `retry`. With a `Retry-After` from the server, that
    /// long (capped at `max_retry_after`) plus a little jitter so parallel retries do not
    /// land together; otherwise a uniformly random duration in `[0, ceiling(retry)]`.
    pub fn delay(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        match retry_after {
            Some(after) => {
                let jitter = jitter(self.base, rng);
                after.min(self.max_retry_after) + jitter
            }
            None => jitter(self.ceiling(retry), rng),
        }
    }
}

fn jitter(ceiling: Duration, rng: &mut fastrand::Rng) -> Duration {
    let max = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rng.u64(0..=max))
}

/// Whether an HTTP status is worth retrying: 408, 429, 500, 502, 503, 504.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Parses a `Retry-After` value: delta-seconds (`120`) or an HTTP-date, relative to
/// `now`. A date in the past means "now" (zero).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            retries: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let p = policy();
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(3), Duration::from_millis(400));
        assert_eq!(p.ceiling(5), Duration::from_millis(1600));
        assert_eq!(p.ceiling(6), Duration::from_secs(2));
        assert_eq!(p.ceiling(1000), Duration::from_secs(2));
        assert_eq!(p.ceiling(0), Duration::from_millis(100));
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_spreads() {
        let p = policy();
        let mut rng = fastrand::Rng::with_seed(7);
        for retry in 1..12 {
            let ceiling = p.ceiling(retry);
            let delays: Vec<Duration> = (0..200).map(|_| p.delay(retry, None, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "retry {retry}");
            let min = delays.iter().min().copied().unwrap_or_default();
            let max = delays.iter().max().copied().unwrap_or_default();
            // Full jitter: both the low and the high end of the range are used.
            assert!(
                min < ceiling / 4 && max > ceiling * 3 / 4,
                "retry {retry}: {min:?}..{max:?}"
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = policy();
        let mut rng = fastrand::Rng::with_seed(1);
        let d = p.delay(1, Some(Duration::from_secs(3)), &mut rng);
        assert!(
            d >= Duration::from_secs(3) && d <= Duration::from_millis(3100),
            "{d:?}"
        );
        let d = p.delay(1, Some(Duration::from_secs(3600)), &mut rng);
        assert!(
            d >= Duration::from_secs(60) && d <= Duration::from_millis(60_100),
            "{d:?}"
        );
    }

    #[test]
    fn parses_retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21 07:28:00 GMT
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn retryable_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [200, 400, 401, 404, 409, 410, 413, 422, 501] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }
}
