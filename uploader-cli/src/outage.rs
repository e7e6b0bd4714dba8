//! Riding out a server that is down: one gate shared by every request of a run.
//!
//! A request that cannot reach the server ([`Error::is_outage`]) does not spend its
//! retries: it waits here. The first one to arrive probes the server (`GET /v1`) at growing
//! intervals (1 s, 2 s, 4 s … up to `--retry-max-delay`) while the others wait; the
//! reporter shows one status line that updates ("server unreachable, retrying in 8 s, for
//! 1m12s") instead of a line per chunk. When a probe gets through, every waiter retries at
//! once; after `--give-up-after` of outage, every waiter fails with
//! [`Error::OutageTooLong`] and the run prints the command that resumes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::progress::Reporter;

/// Where the server is, as far as this run knows.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Reachable (or not known otherwise).
    Up,
    /// Unreachable since then.
    Down { since: Instant },
    /// Unreachable for longer than allowed.
    GaveUp { after: Duration, reason: String },
}

/// The outage gate of one run.
pub struct Outage {
    give_up_after: Duration,
    longest_wait: Duration,
    phase: watch::Sender<Phase>,
    probing: AtomicBool,
}

/// `1m12s`, `8s`, `2h0m5s`: a duration as a person reads it, to the second.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, sec) => format!("{h}h{m:02}m{sec:02}s"),
    }
}

/// The wait before probe number `n` (0 for the first, which is immediate).
fn probe_delay(n: u32, longest: Duration) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (n - 1).min(16)).min(longest.max(Duration::from_secs(1)))
}

impl Outage {
    /// A gate that gives up after `give_up_after` of outage and probes at most every
    /// `longest_wait`.
    pub fn new(give_up_after: Duration, longest_wait: Duration) -> Self {
        Self {
            give_up_after,
            longest_wait,
            phase: watch::Sender::new(Phase::Up),
            probing: AtomicBool::new(false),
        }
    }

    /// Called after a request failed with `error` ([`Error::is_outage`]): returns once the
    /// server answers again, with `true` if it really was unreachable for a while (the
    /// failure then costs the request no retry), or fails once the outage lasted longer
    /// than allowed.
    pub async fn wait(&self, client: &Client, reporter: &Reporter, error: &Error) -> Result<bool> {
        let mut rx = self.phase.subscribe();
        let mut waited = false;
        loop {
            let phase = rx.borrow_and_update().clone();
            match phase {
                Phase::GaveUp { after, reason } => {
                    return Err(Error::OutageTooLong {
                        url: client.base().to_string(),
                        after,
                        reason,
                    })
                }
                Phase::Up if waited => return Ok(true),
                Phase::Up => {
                    self.phase.send_if_modified(|p| {
                        let up = *p == Phase::Up;
                        if up {
                            *p = Phase::Down {
                                since: Instant::now(),
                            };
                        }
                        up
                    });
                }
                Phase::Down { since } => {
                    if !self.probing.swap(true, Ordering::AcqRel) {
                        return self.probe(client, reporter, error, since).await;
                    }
                    waited = true;
                    if rx.changed().await.is_err() {
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// Probes until the server answers or the time is up; tells the reporter as it goes.
    async fn probe(
        &self,
        client: &Client,
        reporter: &Reporter,
        error: &Error,
        since: Instant,
    ) -> Result<bool> {
        let _seat = Seat(self);
        let mut reason = error.short_reason();
        let mut announced = false;
        for n in 0u32.. {
            let wait = probe_delay(n, self.longest_wait);
            let next = Instant::now() + wait;
            // The status line counts down, once a second.
            while Instant::now() < next {
                if announced {
                    reporter.unreachable_tick(&reason, since.elapsed(), next - Instant::now());
                }
                let step = (next - Instant::now()).min(Duration::from_secs(1));
                tokio::time::sleep(step).await;
            }
            match client.probe().await {
                Ok(()) => {
                    self.phase.send_replace(Phase::Up);
                    if announced {
                        reporter.reachable(since.elapsed());
                    }
                    return Ok(announced);
                }
                Err(e) => reason = e.short_reason(),
            }
            let down_for = since.elapsed();
            if down_for >= self.give_up_after {
                reporter.reachable_never(&reason, down_for);
                self.phase.send_replace(Phase::GaveUp {
                    after: down_for,
                    reason: reason.clone(),
                });
                return Err(Error::OutageTooLong {
                    url: client.base().to_string(),
                    after: down_for,
                    reason,
                });
            }
            announced = true;
            reporter.unreachable(&reason, down_for, probe_delay(n + 1, self.longest_wait));
        }
        unreachable!("the probe loop only ends by returning")
    }
}

/// The prober's seat, given up however the probing ends (also when its request is
/// dropped): the waiters are woken so that one of them probes on if the server is still
/// down.
struct Seat<'a>(&'a Outage);

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::Release);
        self.0.phase.send_modify(|_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations_as_people_read_them() {
        assert_eq!(format_duration(Duration::from_millis(8_400)), "8s");
        assert_eq!(format_duration(Duration::from_secs(72)), "1m12s");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m00s");
        assert_eq!(format_duration(Duration::from_secs(7_205)), "2h00m05s");
    }

    #[test]
    fn probes_back_off_to_the_cap() {
        let cap = Duration::from_secs(10);
        let d: Vec<u64> = (0..7).map(|n| probe_delay(n, cap).as_secs()).collect();
        assert_eq!(d, [0, 1, 2, 4, 8, 10, 10]);
    }
}
