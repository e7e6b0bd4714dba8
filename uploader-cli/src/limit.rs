//! `--limit-rate`: one budget of bytes per second shared by every chunk in flight, over all
//! the files of a run.
//!
//! The bucket is `governor`'s GCRA (the server's rate limiter uses it too). One cell is one
//! byte, or one KiB above 4 GiB/s (governor counts cells in `u32`). A burst of a tenth of a
//! second's worth (at least one piece) is allowed so that short pauses do not lose
//! throughput; idle time beyond it is not banked. Waits are tokio sleeps, so no timer
//! thread is started.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

/// Limits the total send rate.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    /// Bytes per cell.
    unit: u64,
    limiter: DefaultDirectRateLimiter,
    clock: DefaultClock,
}

impl RateLimiter {
    /// A limiter for `bytes_per_sec` (above zero).
    pub fn new(bytes_per_sec: u64) -> Self {
        let bytes_per_sec = bytes_per_sec.max(1);
        let unit = if bytes_per_sec > u64::from(u32::MAX) {
            1024
        } else {
            1
        };
        let cells = |bytes: u64| {
            NonZeroU32::new(u32::try_from(bytes.div_ceil(unit)).unwrap_or(u32::MAX))
                .unwrap_or(NonZeroU32::MIN)
        };
        let piece = Self::piece_for(bytes_per_sec) as u64;
        let burst = cells((bytes_per_sec / 10).max(piece));
        let quota = Quota::per_second(cells(bytes_per_sec)).allow_burst(burst);
        Self {
            bytes_per_sec,
            unit,
            limiter: DefaultDirectRateLimiter::direct(quota),
            clock: DefaultClock::default(),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> u64 {
        self.bytes_per_sec
    }

    fn piece_for(bytes_per_sec: u64) -> usize {
        let per_slice = bytes_per_sec / 16;
        usize::try_from(per_slice.clamp(4 << 10, 64 << 10)).unwrap_or(64 << 10)
    }

    /// A piece size that keeps each wait short (about 1/16 s of budget, 4 KiB to 64 KiB).
    pub fn piece_size(&self) -> usize {
        Self::piece_for(self.bytes_per_sec)
    }

    /// Takes `n` bytes from the budget if they are there now; otherwise how long to wait
    /// before asking again.
    pub fn try_take(&self, n: u64) -> Result<(), Duration> {
        let cells = NonZeroU32::new(u32::try_from(n.div_ceil(self.unit)).unwrap_or(u32::MAX))
            .unwrap_or(NonZeroU32::MIN);
        match self.limiter.check_n(cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            // More than the burst at once: cannot happen with pieces of `piece_size()`;
            // pace it as a full burst rather than never sending it.
            Err(_) => Err(Duration::from_millis(100)),
        }
    }

    /// Waits until `n` more bytes may be sent (taken a piece at a time, so that any `n`
    /// fits the burst).
    pub async fn acquire(&self, n: u64) {
        let piece = self.piece_size() as u64;
        let mut left = n;
        while left > 0 {
            let take = left.min(piece);
            while let Err(wait) = self.try_take(take) {
                tokio::time::sleep(wait).await;
            }
            left -= take;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn sustained_rate_is_respected() {
        let l = RateLimiter::new(4 << 20);
        let t0 = std::time::Instant::now();
        // 2 MiB at 4 MiB/s: ~0.5 s, less the 0.1 s burst.
        for _ in 0..32 {
            l.acquire(64 << 10).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        assert!((0.35..=0.8).contains(&secs), "{secs}");
    }

    #[test]
    fn burst_is_free_then_waits() {
        let l = RateLimiter::new(1_000_000);
        // A tenth of a second's worth is available at once.
        assert_eq!(l.try_take(50_000), Ok(()));
        assert_eq!(l.try_take(50_000), Ok(()));
        let w = l.try_take(50_000).unwrap_err();
        assert!(
            w > Duration::from_millis(30) && w <= Duration::from_millis(51),
            "{w:?}"
        );
    }

    #[test]
    fn piece_size_bounds_and_huge_rates() {
        assert_eq!(RateLimiter::new(1).piece_size(), 4 << 10);
        assert_eq!(RateLimiter::new(1 << 30).piece_size(), 64 << 10);
        assert_eq!(RateLimiter::new(320 << 10).piece_size(), 20 << 10);
        // Above u32::MAX bytes/s the cells are KiB; a piece still passes at once.
        let l = RateLimiter::new(100 << 30);
        assert_eq!(l.try_take(64 << 10), Ok(()));
        // A rate below the smallest piece still lets a piece through (after waiting).
        assert!(RateLimiter::new(1).try_take(4 << 10).is_ok());
    }
}
