//! One writer per chunk, and takeover of a stalled one.
//!
//! Two requests for the same chunk must not write its bytes at once. Usually the second is
//! a client's retry after its first attempt died: when the first is still moving bytes,
//! the retry waits for it (and then finds the chunk stored, or writes it); when the first
//! has moved nothing for the takeover time (a half-open connection), the retry tells it to
//! stop and takes its place, instead of waiting for the body timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::upload::lock;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The writers in flight for one upload, by chunk index.
#[derive(Default)]
pub struct Writers {
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next_id: AtomicU64,
}

/// One writer's presence.
pub struct Slot {
    id: u64,
    born: Instant,
    /// Milliseconds since `born` at the last byte moved.
    progress_ms: AtomicU64,
    /// Told to stop by a newer request for the same chunk.
    pub abort: Notify,
    /// Wakes requests waiting for this writer to leave.
    left: Notify,
}

impl Slot {
    /// Records that bytes moved.
    pub fn progressed(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.progress_ms.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.progress_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }
}

/// Held while writing a chunk; leaving wakes whoever waits for it.
pub struct WriterGuard<'a> {
    writers: &'a Writers,
    index: u64,
    /// This writer's slot (watch `abort`, call `progressed`).
    pub slot: Arc<Slot>,
}

impl Writers {
    /// Becomes the writer of chunk `index`: waits for a live writer to finish, and stops a
    /// writer that has moved no byte for `takeover_after`.
    pub async fn enter(&self, index: u64, takeover_after: Duration) -> WriterGuard<'_> {
        loop {
            let current = {
                let mut slots = lock(&self.slots);
                match slots.get(&index) {
                    Some(s) => s.clone(),
                    None => {
                        let slot = Arc::new(Slot {
                            id: self.next_id.fetch_add(1, Ordering::Relaxed),
                            born: Instant::now(),
                            progress_ms: AtomicU64::new(0),
                            abort: Notify::new(),
                            left: Notify::new(),
                        });
                        slots.insert(index, slot.clone());
                        return WriterGuard {
                            writers: self,
                            index,
                            slot,
                        };
                    }
                }
            };
            if current.idle() >= takeover_after {
                tracing::info!(index, "taking over a stalled chunk write");
                current.abort.notify_one();
            }
            // Bounded wait: re-check the stall clock at least every 250 ms.
            let _ = tokio::time::timeout(Duration::from_millis(250), current.left.notified()).await;
        }
    }
}

impl Writers {
    /// Like [`Writers::enter`], but answers `None` at once when a live writer is there
    /// (tus and the IETF draft answer such a request 423); a stalled one is still stopped.
    pub async fn try_enter(&self, index: u64, takeover_after: Duration) -> Option<WriterGuard<'_>> {
        loop {
            let current = lock(&self.slots).get(&index).cloned();
            match current {
                None => {
                    // Nobody there now; `enter` returns at once unless a racer got in first.
                    return Some(self.enter(index, takeover_after).await);
                }
                Some(c) if c.idle() >= takeover_after => {
                    tracing::info!(index, "taking over a stalled append");
                    c.abort.notify_one();
                    let _ =
                        tokio::time::timeout(Duration::from_millis(250), c.left.notified()).await;
                }
                Some(_) => return None,
            }
        }
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        let mut slots = lock(&self.writers.slots);
        if slots.get(&self.index).is_some_and(|s| s.id == self.slot.id) {
            slots.remove(&self.index);
        }
        drop(slots);
        self.slot.left.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_live_writer_is_waited_for_a_stalled_one_is_stopped() {
        let w = Writers::default();
        let first = w.enter(3, Duration::from_secs(3600)).await;
        // A different chunk does not wait.
        drop(w.enter(4, Duration::from_secs(3600)).await);
        // Same chunk: waits while the first lives, gets in once it leaves.
        let waiting = w.enter(3, Duration::from_secs(3600));
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut waiting)
                .await
                .is_err()
        );
        drop(first);
        drop(waiting.await);
        // A writer that moved nothing for the takeover time is told to stop.
        let stalled = w.enter(5, Duration::ZERO).await;
        let slot = stalled.slot.clone();
        let victim = async move {
            slot.abort.notified().await;
            drop(stalled);
        };
        let taker = async { drop(w.enter(5, Duration::ZERO).await) };
        tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(victim, taker)
        })
        .await
        .unwrap();
        // Without a stall, the non-waiting form answers "busy".
        let live = w.enter(6, Duration::from_secs(3600)).await;
        assert!(w.try_enter(6, Duration::from_secs(3600)).await.is_none());
        live.slot.progressed();
        drop(live);
        assert!(w.try_enter(6, Duration::from_secs(3600)).await.is_some());
    }
}
