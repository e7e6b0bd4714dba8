//! A circuit breaker in front of a shared store (it counts the outcome of every store
//! request, see [`crate::backend::s3::deadline`]): when the store keeps failing, requests
//! are answered at once ("unavailable, retry after N s") instead of each waiting out its
//! deadline, and the breaker lets one request through now and then to notice that the
//! store is back.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// Consecutive store failures that open the breaker.
const THRESHOLD: u32 = 3;

/// The breaker's state.
#[derive(Debug)]
enum State {
    /// Requests go through; counts consecutive failures.
    Closed { failures: u32 },
    /// Requests are refused until `until`; then one goes through as a probe.
    Open { until: Instant },
    /// A probe is under way; others are refused until it ends.
    Probing,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    cooldown: Duration,
}

impl Breaker {
    /// A closed breaker that stays open for `cooldown` after tripping.
    pub fn new(cooldown: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            cooldown,
        }
    }

    /// May a request use the store now?
    pub fn check(&self) -> Result<()> {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => Ok(()),
            State::Open { until } if Instant::now() >= until => {
                *s = State::Probing;
                Ok(())
            }
            State::Open { until } => Err(Error::Unavailable {
                retry_after: until.saturating_duration_since(Instant::now()),
            }),
            State::Probing => Err(Error::Unavailable {
                retry_after: self.cooldown,
            }),
        }
    }

    /// Records how a store request went. Only failures of the store itself count
    /// (I/O errors), not answers such as "not found".
    pub fn record<T>(&self, outcome: &Result<T>) {
        let failed = matches!(outcome, Err(Error::Io(_)));
        if let Err(e) = outcome {
            crate::metrics::storage_error(e);
        }
        let mut s = self.lock();
        let was_open = !matches!(*s, State::Closed { .. });
        *s = match (&*s, failed) {
            (_, false) => State::Closed { failures: 0 },
            (State::Closed { failures }, true) if failures + 1 < THRESHOLD => State::Closed {
                failures: failures + 1,
            },
            (_, true) => {
                tracing::warn!(cooldown = ?self.cooldown, "storage keeps failing: circuit open");
                State::Open {
                    until: Instant::now() + self.cooldown,
                }
            }
        };
        let open = !matches!(*s, State::Closed { .. });
        if open != was_open {
            crate::metrics::circuit_open(open);
        }
    }

    /// Whether requests are being refused.
    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> Result<()> {
        Err(Error::Io(std::io::Error::other("down")))
    }

    #[test]
    fn opens_after_repeated_failures_and_probes_after_the_cooldown() {
        let b = Breaker::new(Duration::ZERO);
        for _ in 0..THRESHOLD - 1 {
            b.record(&io());
            assert!(b.check().is_ok());
        }
        b.record(&Err::<(), _>(Error::NotFound));
        b.record(&io());
        assert!(b.check().is_ok(), "a non-store error resets the count");
        for _ in 0..THRESHOLD {
            b.record(&io());
        }
        assert!(b.is_open());
        // Cooldown zero: one probe goes through, the next is refused while it runs.
        assert!(b.check().is_ok());
        assert!(matches!(b.check(), Err(Error::Unavailable { .. })));
        b.record(&Ok(()));
        assert!(!b.is_open());
        assert!(b.check().is_ok());

        let slow = Breaker::new(Duration::from_secs(60));
        for _ in 0..THRESHOLD {
            slow.record(&io());
        }
        match slow.check() {
            Err(Error::Unavailable { retry_after }) => {
                assert!(retry_after > Duration::from_secs(50))
            }
            other => panic!("{other:?}"),
        }
    }
}
