//! `--limit-rate`: one budget of bytes per second shared by every chunk in flight.
//!
//! A virtual clock (GCRA): each grant of `n` bytes moves the time at which the link is free
//! again by `n / rate`; a sender waits until its grant starts. A small burst (a tenth of a
//! second's worth) is allowed so that short pauses do not lose throughput.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits the total send rate.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    next_free: Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter for `bytes_per_sec` (above zero).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> u64 {
        self.bytes_per_sec
    }

    /// A piece size that keeps each wait short (about 1/16 s of budget, 4 KiB to 64 KiB).
    pub fn piece_size(&self) -> usize {
        let per_slice = self.bytes_per_sec / 16;
        usize::try_from(per_slice.clamp(4 << 10, 64 << 10)).unwrap_or(64 << 10)
    }

    /// Reserves `n` bytes now and returns how long to wait before sending them.
    pub fn reserve(&self, n: u64, now: Instant) -> Duration {
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
        let burst = Duration::from_millis(100);
        let mut next = match self.next_free.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Idle time beyond the burst allowance is not banked.
        let earliest = now.checked_sub(burst).unwrap_or(now);
        let start = (*next).max(earliest);
        *next = start + cost;
        start.saturating_duration_since(now)
    }

    /// Waits until `n` more bytes may be sent.
    pub async fn acquire(&self, n: u64) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sustained_rate_is_respected() {
        let l = RateLimiter::new(1_000_000);
        let t0 = Instant::now();
        // 10 MB granted at the same instant must be spread over ~10 s.
        let mut last = Duration::ZERO;
        for _ in 0..100 {
            last = l.reserve(100_000, t0);
        }
        let secs = last.as_secs_f64();
        assert!((9.8..=10.0).contains(&secs), "{secs}");
    }

    #[test]
    fn small_burst_is_free_but_idle_time_is_not_banked() {
        let l = RateLimiter::new(1_000_000);
        let t0 = Instant::now();
        assert_eq!(l.reserve(50_000, t0), Duration::ZERO);
        // After a long idle period, only the burst allowance is available.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(l.reserve(100_000, later), Duration::ZERO);
        assert_eq!(l.reserve(100_000, later), Duration::ZERO);
        let w = l.reserve(100_000, later);
        assert!(
            w >= Duration::from_millis(99) && w <= Duration::from_millis(101),
            "{w:?}"
        );
    }

    #[test]
    fn piece_size_bounds() {
        assert_eq!(RateLimiter::new(1).piece_size(), 4 << 10);
        assert_eq!(RateLimiter::new(1 << 30).piece_size(), 64 << 10);
        assert_eq!(RateLimiter::new(320 << 10).piece_size(), 20 << 10);
    }
}
