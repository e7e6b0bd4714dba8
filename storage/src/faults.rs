//! Injected storage faults, for the tests of failures no real disk produces on demand
//! (an `fsync` that returns `EIO`). Off unless the server is started with the hidden
//! `--faults` flag; then a named point fails once, at its n-th call.
//!
//! Spec: comma-separated `point@n`, e.g. `data-fsync@2` (the second fdatasync of chunk
//! data fails with EIO, once). Points: `data-fsync` (chunk data before its receipt) and
//! `journal-fsync` (the receipt itself).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// One armed fault: the `at`-th call of `point` fails.
struct Armed {
    point: String,
    at: u64,
    calls: AtomicU64,
}

static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();

/// Arms the faults of `spec` for this process (once; later calls are ignored). An error
/// names a malformed entry.
pub fn install(spec: &str) -> Result<(), String> {
    let mut armed = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (point, at) = entry
            .split_once('@')
            .ok_or_else(|| format!("fault {entry:?}: expected point@n"))?;
        if !matches!(point, "data-fsync" | "journal-fsync") {
            return Err(format!("fault {entry:?}: unknown point {point:?}"));
        }
        let at = at
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("fault {entry:?}: n must be a positive integer"))?;
        armed.push(Armed {
            point: point.to_string(),
            at,
            calls: AtomicU64::new(0),
        });
    }
    tracing::warn!(spec, "storage faults armed (testing only)");
    let _ = ARMED.set(armed);
    Ok(())
}

/// Called at fault point `point`: `Err(EIO)` when an armed fault is due.
pub fn check(point: &str) -> std::io::Result<()> {
    let Some(armed) = ARMED.get() else {
        return Ok(());
    };
    for a in armed.iter().filter(|a| a.point == point) {
        if a.calls.fetch_add(1, Ordering::SeqCst) + 1 == a.at {
            tracing::warn!(point, call = a.at, "injected fault: EIO");
            return Err(std::io::Error::from_raw_os_error(5));
        }
    }
    Ok(())
}
