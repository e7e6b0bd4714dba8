//! The waits of a send loop (read a chunk, take a slot, send it), each as a `select!`
//! branch that only waits when there is something to wait for, and never ends otherwise.

use std::future::{pending, Future};
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The outcome of the read in progress, if there is one.
pub async fn read_done<F: Future + Unpin>(reading: Option<&mut F>) -> F::Output {
    match reading {
        Some(r) => r.await,
        None => pending().await,
    }
}

/// The next send to end, if any is in flight.
pub async fn send_done<F: Future>(sends: &mut FuturesUnordered<F>) -> Option<F::Output> {
    if sends.is_empty() {
        pending().await
    } else {
        sends.next().await
    }
}

/// A free slot of `pool`, wanted only when a chunk is `ready` to go.
pub async fn slot<T>(ready: &Option<T>, pool: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    if ready.is_some() {
        pool.clone().acquire_owned().await.ok()
    } else {
        pending().await
    }
}
