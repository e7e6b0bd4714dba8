//! The service's metrics, recorded through the `metrics` facade: the domain says what
//! happened and knows nothing of how it is exported. With no recorder installed (unit
//! tests, other embedders) every call is a no-op; `upload-server` installs a Prometheus
//! recorder and serves the series at `GET /metrics`.
//!
//! Every series has its name as a constant and one function that records it, so callers
//! (the service, the breaker, the HTTP layer, the webhook outbox) cannot misspell a name or
//! a label. [`describe`] registers the help texts and makes the counters visible at 0.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::error::Error;

/// Counter: uploads created (any protocol).
pub const CREATED: &str = "upload_created_total";
/// Counter: uploads verified and published.
pub const COMPLETED: &str = "upload_completed_total";
/// Counter: uploads whose verification failed (SHA-256 mismatch, unjoinable bytes).
pub const FAILED: &str = "upload_failed_total";
/// Counter: unfinished uploads expired by the sweeper.
pub const EXPIRED: &str = "upload_expired_total";
/// Counter: uploads cancelled by their owner (including tus parts once concatenated).
pub const CANCELLED: &str = "upload_cancelled_total";
/// Gauge: uploads that are uploading or completing.
pub const ACTIVE: &str = "upload_active";
/// Counter: bytes of upload content durably stored (chunks and in-order appends).
pub const RECEIVED_BYTES: &str = "upload_received_bytes_total";
/// Counter: bytes added to whole-file hashes, by `source` (`in_flight`, `read_back`).
pub const HASHED_BYTES: &str = "upload_hashed_bytes_total";
/// Histogram: time of one pass reading stored bytes back and hashing them. Its `_sum`
/// against [`HASHED_BYTES`]`{source="read_back"}` gives the verification throughput.
pub const READ_BACK_SECONDS: &str = "upload_hash_read_back_duration_seconds";
/// Counter: bytes read back from storage at completion to finish whole-file hashes.
pub const READ_BACK_AT_COMPLETION_BYTES: &str = "upload_read_back_at_completion_bytes_total";
/// Histogram: time to verify and publish an upload at completion.
pub const VERIFICATION_SECONDS: &str = "upload_verification_duration_seconds";
/// Counter: failed storage operations, by `kind` (`io`, `full`, `corrupt`, `unavailable`).
pub const STORAGE_ERRORS: &str = "upload_storage_errors_total";
/// Gauge: 1 while the circuit breaker in front of the storage refuses requests, else 0.
pub const CIRCUIT_OPEN: &str = "upload_storage_circuit_open";
/// Counter: requests made to an S3-compatible store, by `op` (`upload_part`, `put`, ...).
pub const STORE_REQUESTS: &str = "upload_store_requests_total";
/// Gauge: requests to an S3-compatible store under way, by `op`.
pub const STORE_REQUESTS_IN_FLIGHT: &str = "upload_store_requests_in_flight";
/// Counter: bytes of chunks written to the store a second time, readable until
/// completion, because the whole-file hash could not reach them as they passed.
pub const SPILLED_BYTES: &str = "upload_spilled_bytes_total";
/// Counter: webhook delivery attempts, by `outcome` (`delivered`, `retry`, `dead`).
pub const WEBHOOK_DELIVERIES: &str = "upload_webhook_deliveries_total";
/// Gauge: events in the webhook dead-letter set.
pub const WEBHOOK_DEAD_LETTERS: &str = "upload_webhook_dead_letters";

/// Registers the help text of every series and shows the unlabelled counters at 0, so a
/// scrape right after start lists them. Call once, after installing a recorder.
pub fn describe() {
    for (name, help) in [
        (CREATED, "Uploads created."),
        (COMPLETED, "Uploads verified and published."),
        (FAILED, "Uploads whose verification failed."),
        (EXPIRED, "Unfinished uploads expired after their idle time."),
        (CANCELLED, "Uploads cancelled."),
        (
            RECEIVED_BYTES,
            "Bytes of upload content durably stored (chunks and appends).",
        ),
        (
            READ_BACK_AT_COMPLETION_BYTES,
            "Bytes read back from storage at completion to finish whole-file hashes.",
        ),
        (
            SPILLED_BYTES,
            "Bytes of chunks also written readable to an S3 store, because the whole-file hash could not reach them as they passed.",
        ),
    ] {
        describe_counter!(name, help);
        counter!(name).absolute(0);
    }
    describe_counter!(
        HASHED_BYTES,
        "Bytes added to whole-file SHA-256 hashes, by source (in_flight, read_back)."
    );
    describe_counter!(
        STORAGE_ERRORS,
        "Failed storage operations, by kind (io, full, corrupt, unavailable)."
    );
    describe_counter!(
        STORE_REQUESTS,
        "Requests made to the S3-compatible store, by operation."
    );
    describe_gauge!(
        STORE_REQUESTS_IN_FLIGHT,
        "Requests to the S3-compatible store under way, by operation."
    );
    describe_counter!(
        WEBHOOK_DELIVERIES,
        "Webhook delivery attempts, by outcome (delivered, retry, dead)."
    );
    describe_gauge!(ACTIVE, "Uploads uploading or completing.");
    describe_gauge!(
        CIRCUIT_OPEN,
        "1 while the storage circuit breaker refuses requests."
    );
    describe_gauge!(
        WEBHOOK_DEAD_LETTERS,
        "Events in the webhook dead-letter set."
    );
    describe_histogram!(
        READ_BACK_SECONDS,
        "Time of one pass reading stored bytes back and hashing them."
    );
    describe_histogram!(
        VERIFICATION_SECONDS,
        "Time to verify and publish an upload at completion."
    );
    gauge!(CIRCUIT_OPEN).set(0.0);
}

/// An upload was created; it is active until it ends.
pub fn created() {
    counter!(CREATED).increment(1);
    gauge!(ACTIVE).increment(1.0);
}

/// An upload was verified and published.
pub fn completed() {
    counter!(COMPLETED).increment(1);
    gauge!(ACTIVE).decrement(1.0);
}

/// An upload's verification failed.
pub fn failed() {
    counter!(FAILED).increment(1);
    gauge!(ACTIVE).decrement(1.0);
}

/// An unfinished upload expired.
pub fn expired() {
    counter!(EXPIRED).increment(1);
    gauge!(ACTIVE).decrement(1.0);
}

/// An upload was cancelled; `was_active` when it had not completed or failed yet.
pub fn cancelled(was_active: bool) {
    counter!(CANCELLED).increment(1);
    if was_active {
        gauge!(ACTIVE).decrement(1.0);
    }
}

/// Sets the active uploads found in storage at start.
pub fn set_active(n: u64) {
    gauge!(ACTIVE).set(n as f64);
}

/// `bytes` of upload content were stored durably.
pub fn received(bytes: u64) {
    counter!(RECEIVED_BYTES).increment(bytes);
}

/// `bytes` were hashed into a whole-file hash as they arrived.
pub fn hashed_in_flight(bytes: u64) {
    counter!(HASHED_BYTES, "source" => "in_flight").increment(bytes);
}

/// `bytes` were read back from storage and hashed, taking `took`.
pub fn hashed_read_back(bytes: u64, took: Duration) {
    counter!(HASHED_BYTES, "source" => "read_back").increment(bytes);
    histogram!(READ_BACK_SECONDS).record(took.as_secs_f64());
}

/// A completion verified an upload in `took`, reading `read_back` bytes from storage.
pub fn verified(took: Duration, read_back: u64) {
    histogram!(VERIFICATION_SECONDS).record(took.as_secs_f64());
    counter!(READ_BACK_AT_COMPLETION_BYTES).increment(read_back);
}

/// Counts a failure of the storage itself (not an answer such as "not found"); other
/// errors are ignored.
pub fn storage_error(e: &Error) {
    let kind = match e {
        Error::Io(_) => "io",
        Error::StorageFull => "full",
        Error::Corrupt(_) => "corrupt",
        Error::Unavailable { .. } => "unavailable",
        _ => return,
    };
    counter!(STORAGE_ERRORS, "kind" => kind).increment(1);
}

/// One request to an S3-compatible store, of operation `op`, under way until the guard
/// drops.
pub fn store_request(op: &'static str) -> InFlight {
    counter!(STORE_REQUESTS, "op" => op).increment(1);
    gauge!(STORE_REQUESTS_IN_FLIGHT, "op" => op).increment(1.0);
    InFlight(op)
}

/// See [`store_request`].
pub struct InFlight(&'static str);

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!(STORE_REQUESTS_IN_FLIGHT, "op" => self.0).decrement(1.0);
    }
}

/// `bytes` of a chunk were spilled (see [`SPILLED_BYTES`]).
pub fn spilled(bytes: u64) {
    counter!(SPILLED_BYTES).increment(bytes);
}

/// The circuit breaker opened (`true`) or closed.
pub fn circuit_open(open: bool) {
    gauge!(CIRCUIT_OPEN).set(if open { 1.0 } else { 0.0 });
}

/// One webhook delivery attempt ended with `outcome`: `"delivered"` (2xx), `"retry"` (a
/// failure that will be retried) or `"dead"` (given up: moved to the dead-letter set).
pub fn webhook_delivery(outcome: &'static str) {
    counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
}

/// The webhook dead-letter set now holds `n` events.
pub fn webhook_dead_letters(n: u64) {
    gauge!(WEBHOOK_DEAD_LETTERS).set(n as f64);
}
