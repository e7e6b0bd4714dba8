//! Running a scenario over many seeds: one schedule per seed on a current-thread tokio
//! runtime with paused time, so that the seed alone decides every interleaving; the end of
//! each schedule; the outcome table; replaying one seed; and the search for a violation
//! in a deliberately broken variant.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use futures_util::future::BoxFuture;
use futures_util::TryStreamExt;
use storage::record::{StoredState, UploadMode};
use storage::UploadsConfig;

use crate::check;
use crate::world::{lock, Fail, Flaws, World};

/// Schedules per scenario when `MODEL_SCHEDULES` is not set.
pub const DEFAULT_SCHEDULES: u64 = 10_000;

/// A scenario: the upload, the servers, and what the clients do.
pub struct Scenario {
    pub name: &'static str,
    pub file: &'static [u8],
    pub chunk_size: u64,
    pub mode: UploadMode,
    pub servers: usize,
    pub config: fn() -> UploadsConfig,
    /// The upload looks a day old when the schedule starts (idle for any time to live).
    pub aged: bool,
    /// The clients, and the faults they meet.
    pub run: fn(Arc<World>) -> BoxFuture<'static, ()>,
    /// Outcomes that enough schedules must reach.
    pub must_reach: &'static [&'static str],
}

/// What one schedule came to.
pub struct Ran {
    pub outcomes: Vec<String>,
    pub violations: Vec<String>,
    pub gaps: Vec<String>,
    pub trace: Vec<String>,
    pub requests: u64,
}

/// Runs the schedule of `seed`.
pub fn schedule(s: &Scenario, seed: u64, flaws: Flaws, trace: bool) -> Ran {
    fastrand::seed(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let ran = rt.block_on(async {
        let w = World::new(seed, s.file, s.chunk_size, s.mode, (s.config)(), flaws).await;
        lock(&w.log).tracing |= trace;
        if s.aged {
            w.age_everything();
        }
        for server in 0..s.servers {
            w.start(server).await;
        }
        // Restarts crashed servers, after a while.
        let restarter = {
            let w = w.clone();
            tokio::spawn(async move {
                loop {
                    w.crashed.notified().await;
                    w.think(8_000).await;
                    w.restart_dead().await;
                }
            })
        };
        (s.run)(w.clone()).await;
        restarter.abort();
        finish(&w).await;
        let mut log = lock(&w.log);
        let ran = Ran {
            outcomes: std::mem::take(&mut log.outcomes).into_iter().collect(),
            violations: std::mem::take(&mut log.violations),
            gaps: std::mem::take(&mut log.gaps),
            trace: std::mem::take(&mut log.trace),
            requests: log.requests,
        };
        drop(log);
        w.shut_down();
        ran
    });
    drop(rt);
    ran
}

/// The end of a schedule: background work settles, dead servers come back, faults stop,
/// a verification left behind is taken over (time passes for it), a completed upload is
/// downloaded, a last status read; then the end checks.
async fn finish(w: &Arc<World>) {
    tokio::time::sleep(Duration::from_secs(120)).await;
    w.calm_down();
    w.restart_dead().await;
    // A lease whose release failed, or whose holder died, expires.
    w.age_lease(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(60)).await;
    let id = w.id;
    let live = 0;
    if w.state() == Some(StoredState::Completing) {
        // A verification that stopped (its server died, or a store failure ended it):
        // a minute later, a complete takes it over.
        w.age_record(Duration::from_secs(120));
        let _ = w.complete(live).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        if w.state() != Some(StoredState::Completing) {
            w.outcome("end: a stopped verification taken over");
        }
    }
    if w.state() == Some(StoredState::Uploading) {
        finish_upload(w).await;
    }
    if w.state() == Some(StoredState::Completed) {
        // An upload answered completed can be downloaded (publication is finished on the
        // way if its publisher stopped).
        let got = w
            .ask(live, |u| async move {
                let (record, _) = u.content(id).await?;
                let s = u.read_content(&record, 0, record.size).await?;
                s.try_collect::<Vec<_>>().await
            })
            .await;
        match got {
            Ok(pieces) if pieces.concat() == w.file => {}
            Ok(_) => w.violation("I2: the completed file downloads as other bytes"),
            Err(_) if lock(&w.log).replaced_part => {}
            Err(e) => w.violation(format!("I2: a completed upload does not download: {e:?}")),
        }
    }
    let ended = w
        .state()
        .is_none_or(|s| s.is_tombstone() || s == StoredState::Failed);
    if w.mode == UploadMode::Stream && !ended {
        let acked = lock(&w.log).stream_acked;
        let at = w
            .ask(live, |u| async move { u.position(id).await })
            .await
            .map(|p| p.offset);
        match at {
            Ok(offset) if offset < acked => w.violation(format!(
                "I1: {acked} bytes were acknowledged, the upload holds {offset}"
            )),
            Ok(_) => {}
            Err(e) => w.violation(format!("the upload's position cannot be read: {e:?}")),
        }
    }
    w.status(live).await;
    check::end(w);
}

/// An upload its clients left unfinished (they gave up after faults) can still be
/// finished: the missing bytes are sent once more and the upload completes (or fails, when
/// other bytes than the file's were stored for a chunk).
async fn finish_upload(w: &Arc<World>) {
    let id = w.id;
    let live = 0;
    // An acknowledged part replaced meanwhile is that known gap: its consequences below are
    // counted with it, whatever request of the schedule would have noticed it first.
    check::replaced_parts(w, &check::View::now(w));
    if w.mode == UploadMode::Stream {
        let offset = w
            .ask(live, |u| async move { u.position(id).await })
            .await
            .map(|p| p.offset);
        let Ok(offset) = offset else {
            w.violation(format!("an unfinished upload cannot be read: {offset:?}"));
            return;
        };
        if offset == w.file.len() as u64 {
            // Every byte is stored, the completion failed: the sweep completes it (as a
            // complete does).
            match w.complete(live).await {
                Ok(_) => w.outcome("end: an unfinished upload finished"),
                Err(Fail::E(storage::Error::Sha256Mismatch { .. })) => {}
                Err(f) => w.violation(format!("a stored upload cannot be completed: {f:?}")),
            }
            return;
        }
        let body = bytes::Bytes::copy_from_slice(&w.file[offset as usize..]);
        let req = storage::Append {
            offset,
            body_len: Some(body.len() as u64),
            has_body: true,
            ..Default::default()
        };
        let r = w
            .ask(live, |u| async move {
                let body = futures_util::stream::iter([Ok(body)]);
                u.append_stream(id, storage::Dialect::Tus, req, body).await
            })
            .await;
        match r {
            Ok(_) => w.outcome("end: an unfinished upload finished"),
            Err(Fail::E(storage::Error::Corrupt(why))) if why.contains("hash is behind") => {
                w.outcome(check::WEDGED);
                lock(&w.log).gaps.push(format!("{}: {why}", check::WEDGED));
            }
            // Another client's bytes were stored: the file is not the declared one.
            Err(Fail::E(storage::Error::Sha256Mismatch { .. })) => {}
            Err(f) => w.violation(format!(
                "an unfinished upload cannot be finished: append at {offset}: {f:?}"
            )),
        }
        return;
    }
    let missing = w
        .ask(live, |u| async move { u.status(id).await })
        .await
        .map(|s| common::ranges::iter_ranges(&s.missing).collect::<Vec<u64>>());
    let Ok(missing) = missing else {
        w.violation(format!("an unfinished upload cannot be read: {missing:?}"));
        return;
    };
    for i in missing {
        if let Err(f) = w.put(live, i, w.chunk(i), true).await {
            if !matches!(f, Fail::E(storage::Error::ChunkConflict { .. })) {
                w.violation(format!("an unfinished upload cannot take chunk {i}: {f:?}"));
            }
        }
    }
    match w.complete(live).await {
        Ok(_) => w.outcome("end: an unfinished upload finished"),
        Err(Fail::E(storage::Error::Sha256Mismatch { .. } | storage::Error::Corrupt(_))) => {}
        Err(f) => w.violation(format!("an unfinished upload cannot be completed: {f:?}")),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

/// Runs scenario `s` over `MODEL_SCHEDULES` seeds from `MODEL_FIRST_SEED` (or only
/// `MODEL_SEED`, traced), prints the outcome table, fails on the first violation with its
/// seed, and checks that the outcomes that make the scenario worth running were reached.
pub fn check(s: &Scenario) {
    if let Some(seed) = env_u64("MODEL_SEED") {
        return replay(s, seed);
    }
    let schedules = env_u64("MODEL_SCHEDULES").unwrap_or(DEFAULT_SCHEDULES);
    let first = env_u64("MODEL_FIRST_SEED").unwrap_or(0);
    let strict = std::env::var_os("MODEL_STRICT").is_some();
    let began = WallInstant::now();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut requests = 0;
    for seed in first..first + schedules {
        let ran = schedule(s, seed, Flaws::default(), false);
        requests += ran.requests;
        if let Some(v) = ran.violations.first() {
            panic!(
                "scenario {}: seed {seed} broke an invariant: {v}\n(all: {:?})\nreplay: \
                 MODEL_SEED={seed} cargo test -p storage --test model -- --exact {} --nocapture",
                s.name, ran.violations, s.name
            );
        }
        if strict {
            if let Some(g) = ran.gaps.first() {
                panic!(
                    "scenario {}: seed {seed} met a known gap (MODEL_STRICT): {g}\nreplay: \
                     MODEL_SEED={seed} cargo test -p storage --test model -- --exact {} \
                     --nocapture",
                    s.name, s.name
                );
            }
        }
        for o in ran.outcomes {
            *counts.entry(o).or_default() += 1;
        }
    }
    let took = began.elapsed();
    let mut table = format!(
        "model {}: {schedules} schedules (seeds {first}..{}), {requests} store requests, {:.1} s\n",
        s.name,
        first + schedules,
        took.as_secs_f64()
    );
    for (o, n) in &counts {
        table += &format!("  {n:>7}  {o}\n");
    }
    println!("{table}");
    if schedules >= DEFAULT_SCHEDULES {
        let missed: Vec<&&str> = s
            .must_reach
            .iter()
            .filter(|m| !counts.keys().any(|o| o == **m))
            .collect();
        assert!(
            missed.is_empty(),
            "scenario {} never reached {missed:?} in {schedules} schedules:\n{table}",
            s.name
        );
    }
}

/// Runs one seed with its trace printed.
fn replay(s: &Scenario, seed: u64) {
    let ran = schedule(s, seed, Flaws::default(), true);
    for line in &ran.trace {
        println!("{line}");
    }
    println!("outcomes: {:?}", ran.outcomes);
    println!("known gaps met: {:?}", ran.gaps);
    assert!(
        ran.violations.is_empty(),
        "seed {seed}: {:?}",
        ran.violations
    );
}

/// Runs the broken variant `flaws` of scenario `s` until a schedule breaks an invariant
/// that `expect` names (within `budget` seeds), then replays that seed and checks that it
/// breaks it the same way.
pub fn teeth(s: &Scenario, flaws: Flaws, expect: &[&str], budget: u64) {
    let first = env_u64("MODEL_FIRST_SEED").unwrap_or(0);
    for seed in first..first + budget {
        let ran = schedule(s, seed, flaws, false);
        let Some(v) = ran
            .violations
            .iter()
            .find(|v| expect.iter().any(|e| v.contains(e)))
        else {
            continue;
        };
        let again = schedule(s, seed, flaws, false);
        assert_eq!(
            again.violations, ran.violations,
            "seed {seed} does not replay the same way"
        );
        println!(
            "{} with {flaws:?}: seed {seed} (after {} schedules) breaks: {v}",
            s.name,
            seed - first + 1
        );
        return;
    }
    panic!(
        "{} with {flaws:?}: no violation of {expect:?} in {budget} schedules",
        s.name
    );
}

/// Runs `seeds` seeds twice each and checks that each schedule is the same both times.
pub fn deterministic(s: &Scenario, seeds: u64) {
    for seed in 0..seeds {
        let a = schedule(s, seed, Flaws::default(), true);
        let b = schedule(s, seed, Flaws::default(), true);
        // Listing index keys carry the creation time (newest first): the clock's, not the
        // schedule's.
        let strip = |t: &[String]| -> Vec<String> {
            t.iter()
                .map(|l| match l.find(" index/") {
                    Some(at) => format!(
                        "{} index/… {}",
                        &l[..at],
                        l.rsplit(' ').next().unwrap_or("")
                    ),
                    None => l.clone(),
                })
                .collect()
        };
        assert!(
            strip(&a.trace) == strip(&b.trace),
            "{}: seed {seed} ran differently twice:\n{}",
            s.name,
            first_difference(&strip(&a.trace), &strip(&b.trace))
        );
    }
}

fn first_difference(a: &[String], b: &[String]) -> String {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            return format!("line {i}:\n  {x}\n  {y}");
        }
    }
    format!("lengths {} and {}", a.len(), b.len())
}
