//! What the clients of each scenario do, and the faults they meet.

use std::sync::{Arc, OnceLock};

use futures_util::future::{join_all, BoxFuture};
use storage::{Append, Dialect, UploadsConfig};
use tokio::task::JoinHandle;

use crate::check;
use crate::conn;
use crate::world::{lock, sha, Crash, Fail, Plan, World};

/// The file of most scenarios: chunks of 4, 4 and 2 bytes.
pub const FILE: &[u8] = b"abcdefghij";
/// The file of the scenarios of many chunks: five chunks.
pub const LONG: &[u8] = b"abcdefghijklmnopqr";

pub fn config() -> UploadsConfig {
    UploadsConfig::default()
}

fn spawn<F>(f: F) -> JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(f)
}

async fn all<T>(tasks: Vec<JoinHandle<T>>) -> Vec<T> {
    join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("a client task panicked"))
        .collect()
}

/// Faults for a schedule of about `requests` store requests: none in half the seeds,
/// otherwise a refused request, a lost answer, or both.
fn faults(w: &World, requests: u64) -> Plan {
    let mut plan = Plan::default();
    let at = |w: &World| w.rng(|r| r.u64(1..=requests));
    match w.pick(6) {
        0 => {
            plan.fail.insert(at(w));
        }
        1 => {
            plan.lose.insert(at(w));
        }
        2 => {
            plan.fail.insert(at(w));
            plan.lose.insert(at(w));
        }
        _ => {}
    }
    plan
}

/// The client's label of a chunk answer.
fn chunk_said(r: &Result<bool, Fail>) -> String {
    match r {
        Ok(true) => "stored".into(),
        Ok(false) => "200, a retry".into(),
        Err(f) => f.label(),
    }
}

/// The client: sends every chunk of the file in parallel, each to a server picked by the
/// seed (each retried on 503 or no answer), then completes (again when the answer is lost).
async fn client(w: Arc<World>, think: u64) -> String {
    let sends: Vec<_> = (0..w.chunk_count())
        .map(|i| {
            let w = w.clone();
            spawn(async move {
                w.think(think).await;
                let server = w.pick(w.server_count());
                let digest = !w.chance(100);
                w.send(server, i, w.chunk(i), 4, digest).await
            })
        })
        .collect();
    let answers = all(sends).await;
    for a in &answers {
        w.outcome(format!("client chunk: {}", chunk_said(a)));
    }
    w.think(think).await;
    let server = w.pick(w.server_count());
    let done = w.complete_until_settled(server, 5).await;
    w.outcome(format!("client complete: {done}"));
    done
}

pub fn same_bytes(w: Arc<World>) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        w.set_plan(faults(&w, 60));
        let index = w.pick(w.chunk_count() as usize) as u64;
        let rival = {
            let w = w.clone();
            spawn(async move {
                w.think(300).await;
                let server = w.pick(w.server_count());
                let r = w.send(server, index, w.chunk(index), 4, true).await;
                w.outcome(format!("rival (same bytes): {}", chunk_said(&r)));
            })
        };
        client(w.clone(), 200).await;
        all(vec![rival]).await;
    })
}

/// Bytes other than the file's for chunk `index` of [`FILE`] (same length) whose declared
/// SHA-256 picks the same part number as the file's: the conflicting writer then
/// overwrites the part the first writer was acknowledged for.
fn colliding(index: u64) -> &'static [u8] {
    static FOUND: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let count = FILE.len().div_ceil(4) as u64;
        let slots = 10_000 / count;
        let pick = |b: &[u8]| u64::from_be_bytes(sha(b).0[..8].try_into().unwrap()) % slots;
        (0..count)
            .map(|i| {
                let chunk = &FILE[(i * 4) as usize..((i + 1) * 4).min(FILE.len() as u64) as usize];
                (0u32..)
                    .map(|n| {
                        let mut b = n.to_le_bytes()[..chunk.len()].to_vec();
                        b.iter_mut().for_each(|x| *x |= 0x80);
                        b
                    })
                    .find(|b| pick(b) == pick(chunk))
                    .unwrap()
            })
            .collect()
    });
    &found[index as usize]
}

pub fn different_bytes(w: Arc<World>) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        w.set_plan(faults(&w, 60));
        let index = w.pick(w.chunk_count() as usize) as u64;
        let collide = w.chance(300);
        let other: Vec<u8> = if collide {
            colliding(index).to_vec()
        } else {
            w.chunk(index)
                .iter()
                .map(|b| b.to_ascii_uppercase())
                .collect()
        };
        let rival = {
            let w = w.clone();
            spawn(async move {
                w.think(300).await;
                let server = w.pick(w.server_count());
                let r = w.send(server, index, &other, 4, true).await;
                let kind = if collide { "colliding" } else { "other" };
                w.outcome(format!("rival ({kind} bytes): {}", chunk_said(&r)));
            })
        };
        client(w.clone(), 200).await;
        all(vec![rival]).await;
    })
}

pub fn completers(w: Arc<World>) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        w.set_plan(faults(&w, 60));
        let mut others = Vec::new();
        for _ in 0..2 {
            let w = w.clone();
            others.push(spawn(async move {
                w.think(1_500).await;
                let server = w.pick(w.server_count());
                let r = w.complete(server).await;
                let said = match &r {
                    Ok(c) => conn::Brief::brief(c),
                    Err(f) => f.label(),
                };
                w.outcome(format!("other completer: {said}"));
            }));
        }
        let reader = {
            let w = w.clone();
            spawn(async move {
                for _ in 0..3 {
                    w.think(800).await;
                    let server = w.pick(w.server_count());
                    if let Some(s) = w.status(server).await {
                        w.outcome(format!("status read: {s}"));
                    }
                }
            })
        };
        client(w.clone(), 100).await;
        all(others).await;
        all(vec![reader]).await;
    })
}

pub fn takeover(w: Arc<World>) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        // Every chunk to servers 1 and 2; the completion to server 0, which dies during it.
        let sends: Vec<_> = (0..w.chunk_count())
            .map(|i| {
                let w = w.clone();
                spawn(async move {
                    w.think(100).await;
                    let server = 1 + w.pick(2);
                    w.send(server, i, w.chunk(i), 4, true).await
                })
            })
            .collect();
        all(sends).await;
        let nth = w.rng(|r| r.u64(1..=14));
        w.set_plan(Plan {
            crash: Some(Crash {
                server: 0,
                op: None,
                nth,
            }),
            ..faults(&w, 30)
        });
        let first = w.complete(0).await;
        let first = match &first {
            Ok(c) => conn::Brief::brief(c),
            Err(f) => f.label(),
        };
        w.outcome(format!("first complete: {first}"));
        // Time passes: the verification the dead server began is stale a minute later.
        let clock = {
            let w = w.clone();
            spawn(async move {
                w.think(6_000).await;
                if w.age_record(std::time::Duration::from_secs(120)) {
                    w.note(|| "the clock: a minute and more later".into());
                }
            })
        };
        w.think(3_000).await;
        let done = w.complete_until_settled(1 + w.pick(2), 6).await;
        w.outcome(format!("client complete: {done}"));
        all(vec![clock]).await;
    })
}

pub fn cancel(w: Arc<World>) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        w.set_plan(faults(&w, 60));
        let canceller = {
            let w = w.clone();
            spawn(async move {
                w.think(1_500).await;
                for _ in 0..3 {
                    let server = w.pick(w.server_count());
                    match w.cancel(server).await {
                        Err(f) if f.retryable() => {
                            w.outcome(format!("cancel: {}", f.label()));
                            w.think(1_000).await;
                        }
                        r => {
                            let said = r.map(|()| "ok".to_string()).unwrap_or_else(|f| f.label());
                            w.outcome(format!("cancel: {said}"));
                            break;
                        }
                    }
                }
            })
        };
        client(w.clone(), 300).await;
        all(vec![canceller]).await;
    })
}

/// Idle uploads expire after `ttl`: chunks sent one by one in a random order with long
/// pauses between them to servers 0 and 1 (a status read there now and then), while
/// server 2 sweeps.
pub fn expiry_with(w: Arc<World>) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        w.set_plan(faults(&w, 60));
        let sweeper = {
            let w = w.clone();
            spawn(async move {
                for _ in 0..2 {
                    w.think(9_000).await;
                    if let Some(n) = w.sweep(2).await {
                        w.outcome(format!("sweep expired {n}"));
                    }
                }
            })
        };
        let reader = {
            let w = w.clone();
            spawn(async move {
                for _ in 0..2 {
                    w.think(4_000).await;
                    w.status(w.pick(2)).await;
                }
            })
        };
        let mut order: Vec<u64> = (0..w.chunk_count()).collect();
        w.rng(|r| r.shuffle(&mut order));
        let mut gone = false;
        for i in order {
            w.think(5_000).await;
            let r = w.send(w.pick(2), i, w.chunk(i), 3, true).await;
            w.outcome(format!("client chunk: {}", chunk_said(&r)));
            if let Err(Fail::E(storage::Error::Gone(_))) = r {
                gone = true;
                break;
            }
        }
        if !gone {
            let done = w.complete_until_settled(w.pick(2), 4).await;
            w.outcome(format!("client complete: {done}"));
        }
        all(vec![sweeper, reader]).await;
    })
}

pub fn turns(w: Arc<World>) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        w.set_plan(faults(&w, 80));
        // One chunk, maybe, comes so late that the chunks after it cannot wait for it.
        let late = w
            .chance(400)
            .then(|| w.pick(w.chunk_count() as usize) as u64);
        let sends: Vec<_> = (0..w.chunk_count())
            .map(|i| {
                let w = w.clone();
                spawn(async move {
                    w.think(3_000).await;
                    if late == Some(i) {
                        tokio::time::sleep(std::time::Duration::from_secs(25)).await;
                    }
                    let server = (i as usize + w.pick(2)) % w.server_count();
                    w.send(server, i, w.chunk(i), 4, true).await
                })
            })
            .collect();
        for a in all(sends).await {
            w.outcome(format!("client chunk: {}", chunk_said(&a)));
        }
        let done = w.complete_until_settled(w.pick(w.server_count()), 5).await;
        w.outcome(format!("client complete: {done}"));
        let read_back: u64 = (0..w.server_count())
            .filter_map(|s| w.uploads(s))
            .map(|u| u.stats().bytes_read_back)
            .sum();
        let spilled = lock(&w.log).spilled;
        w.outcome(match (spilled, read_back) {
            (false, 0) => "hash: every chunk through a midstate, nothing read back",
            (true, 0) => "hash: spilled, read back by a server since restarted",
            (true, _) => "hash: spilled chunks read back at completion",
            (false, _) => "hash: read back without a spill",
        });
    })
}

pub fn crash(w: Arc<World>) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let server = w.pick(3);
        let nth = w.rng(|r| r.u64(1..=3));
        w.set_plan(Plan {
            crash: Some(Crash {
                server,
                op: Some(storage::backend::s3::store::op::UPLOAD_PART),
                nth,
            }),
            ..faults(&w, 60)
        });
        client(w.clone(), 300).await;
        if lock(&w.log).crashes > 0 {
            w.outcome("a server died between a part and its claim");
        }
    })
}

/// Two tus clients appending to one upload on two servers, each reading the offset
/// first, in pieces of 1 to 6 bytes; in some schedules the second appends another file's
/// bytes, a server dies during an append, or the lease's holder is slow enough for its
/// lease to expire (time passes for the lease).
pub fn appends(w: Arc<World>) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let mut plan = faults(&w, 80);
        if w.chance(300) {
            plan.crash = Some(Crash {
                server: w.pick(2),
                op: None,
                nth: w.rng(|r| r.u64(5..40)),
            });
        }
        w.set_plan(plan);
        let other = w.chance(300);
        let clock = {
            let w = w.clone();
            spawn(async move {
                if w.chance(500) {
                    w.think(20_000).await;
                    if w.age_lease(std::time::Duration::from_secs(60)) {
                        lock(&w.log).lease_aged = true;
                        w.note(|| "the clock: the append lease has expired".into());
                        w.outcome("the append lease expired under its holder");
                    }
                }
            })
        };
        let appenders: Vec<_> = (0..2)
            .map(|server| {
                let w = w.clone();
                let bytes: Vec<u8> = if server == 1 && other {
                    w.file.iter().map(|b| b.to_ascii_uppercase()).collect()
                } else {
                    w.file.clone()
                };
                spawn(async move { appender(&w, server, &bytes, 12).await })
            })
            .collect();
        all(appenders).await;
        all(vec![clock]).await;
        let at = w.status(0).await;
        w.outcome(format!("appends end: {}", at.unwrap_or_default()));
    })
}

/// A tus client: reads the offset, appends the next few bytes of `file` there.
async fn appender(w: &World, server: usize, file: &[u8], rounds: usize) {
    let id = w.id;
    for _ in 0..rounds {
        w.think(400).await;
        let offset = match w.ask(server, |u| async move { u.position(id).await }).await {
            Ok(p) => p.offset,
            Err(f) => {
                w.outcome(format!("position: {}", f.label()));
                continue;
            }
        };
        let len = file.len() as u64;
        if offset >= len {
            return;
        }
        let n = w.rng(|r| r.u64(1..=6)).min(len - offset);
        let sent = file[offset as usize..(offset + n) as usize].to_vec();
        let body = bytes::Bytes::from(sent.clone());
        let req = Append {
            offset,
            body_len: Some(n),
            has_body: true,
            ..Default::default()
        };
        w.note(|| format!("client: append {n} bytes at {offset} to s{server}"));
        let r = w
            .ask(server, |u| async move {
                let body = futures_util::stream::iter([Ok(body)]);
                u.append_stream(id, Dialect::Tus, req, body).await
            })
            .await;
        match r {
            Ok(a) => {
                w.note(|| format!("client: appended, now at {}", a.offset));
                let mut log = lock(&w.log);
                log.stream_acked = log.stream_acked.max(a.offset);
                drop(log);
                check::appended(w, offset, &sent[..(a.offset - offset) as usize]);
                w.outcome("append: stored");
                if a.done() {
                    w.outcome("append: completed the upload");
                }
            }
            Err(f) => {
                w.note(|| format!("client: append: {}", f.label()));
                w.outcome(format!("append: {}", f.label()));
            }
        }
    }
}
