//! End-to-end tests of upload events against the real `upload-server`: webhooks (signed
//! deliveries to a real HTTP receiver written here, with retries through 500s and dropped
//! connections, per-upload order, delivery after a `kill -9`, dead letters and their
//! replay through the admin routes, a slow receiver that must not slow uploads, and one
//! deliverer per event with two servers on one S3 bucket) and the Server-Sent Events
//! stream of one upload (`GET /v1/uploads/{id}/events`: progress, reconnection with
//! `Last-Event-ID`, the end event, owner isolation).
//!
//! The receiver ([`receiver::Receiver`]) records every request with what it answered;
//! tests wait on what it recorded (bounded polling), never on sleeps. Event ids are
//! recomputed here from the upload id and the kind ([`support::event_id`]), so the tests
//! also pin the id scheme receivers deduplicate on.
//!
//! The S3 test is skipped (with a message) when the S3 test server is not installed,
//! unless `S3_REQUIRED=1`. Build the binaries first (`cargo build --workspace --bins`).

mod receiver;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tests::s3::S3Server;
use tests::{random_bytes, sha256_hex, Server};

use receiver::{summary, verify_signature, Arrival, Outcome, Policy, Receiver};
use support::{event_id, problem, start, wait_until, webhook_args, Api, Sse, KIB, SECRET};

const CREATED: &str = "upload.created";
const COMPLETED: &str = "upload.completed";
const FAILED: &str = "upload.failed";
const CANCELLED: &str = "upload.cancelled";
const EXPIRED: &str = "upload.expired";

/// `args` as owned strings, after the webhook flags for `url`.
fn args_with_webhook(url: &str, args: &[&str]) -> Vec<String> {
    let mut all = webhook_args(url);
    all.extend(args.iter().map(|s| s.to_string()));
    all
}

/// A tokens file in `dir` with one token per owner: `tok-<owner> <owner>`.
fn tokens_file(dir: &Path, owners: &[&str]) -> String {
    let path = dir.join("tokens");
    let lines: String = owners.iter().map(|o| format!("tok-{o} {o}\n")).collect();
    std::fs::write(&path, lines).expect("write tokens file");
    path.to_str().expect("UTF-8 path").to_string()
}

/// Event files still queued in a local server's outbox (`DATA/events/pending/`).
fn pending_files(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("events").join("pending"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// Checks what every delivery carries: a valid signature under [`SECRET`] made at most
/// a few seconds before it arrived (and a tampered body would not verify), a JSON body
/// whose `id` and `type` are the `x-upload-event-id` and `x-upload-event` headers.
fn check_delivery(a: &Arrival) {
    verify_signature(SECRET, &a.signature, &a.body, a.at_unix)
        .unwrap_or_else(|e| panic!("delivery #{} of {}: {e}", a.seq, a.event_id));
    let mut tampered = a.body.to_vec();
    tampered.push(b' ');
    assert!(
        verify_signature(SECRET, &a.signature, &tampered, a.at_unix).is_err(),
        "a signature that also verifies a changed body checks nothing"
    );
    assert!(
        verify_signature("another secret", &a.signature, &a.body, a.at_unix).is_err(),
        "the signature does not depend on the secret"
    );
    assert!(
        a.content_type.starts_with("application/json"),
        "{}",
        a.content_type
    );
    assert_eq!(a.json["id"], a.event_id.as_str(), "body id vs header");
    assert_eq!(a.json["type"], a.kind.as_str(), "body type vs header");
    assert!(
        a.json["created_at"].as_str().is_some_and(|t| t.len() >= 20),
        "{}",
        a.json
    );
}

/// A receiver that fails its first deliveries (500s and dropped connections, alternately)
/// still gets every event of uploads that completed, failed verification (422), were
/// cancelled and expired: each event id the server must emit arrives, signed with the
/// secret and a recent timestamp, with the body its kind implies; every failed delivery is
/// retried until accepted, an accepted event is not sent again; and per upload the first
/// arrival of each kind follows created < completed|failed < cancelled|expired, each only
/// after the previous kind was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_and_in_order_through_failures() {
    const FAILURES: usize = 6;
    let rx = Receiver::start(Policy::FailFirst(FAILURES)).await;
    let args = args_with_webhook(
        &rx.url,
        &[
            "--webhook-retry-base",
            "50ms",
            "--webhook-retry-max",
            "200ms",
            "--upload-ttl",
            "2s",
        ],
    );
    let (server, dir) = start(&args);
    let api = Api::new(&server);
    let cs = 64 * KIB;

    // Completed, then cancelled.
    let a_file = random_bytes(3 * cs - 100, 1);
    let a = api.upload(&a_file, cs, "a.bin").await;
    api.cancel(&a).await;
    // Failed verification (a wrong declared digest), then cancelled.
    let b_file = random_bytes(2 * cs, 2);
    let b = api.create(b_file.len(), cs, "b.bin").await;
    api.put_all(&b, &b_file, cs).await;
    let wrong = sha256_hex(b"not the file");
    problem(
        api.complete(&b, Some(&wrong)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    api.cancel(&b).await;
    // Cancelled while uploading.
    let c = api.create(2 * cs, cs, "c.bin").await;
    api.put_chunk(&c, 0, &random_bytes(cs, 3)).await;
    api.cancel(&c).await;
    // Completed and kept.
    let e_file = random_bytes(cs + 1, 4);
    let e = api.upload(&e_file, cs, "e.bin").await;
    // Left idle: expires after the 2 s TTL.
    let d = api.create(2 * cs, cs, "d.bin").await;

    let lives: Vec<(&str, &[u8], &str, Vec<&str>)> = vec![
        (&a, &a_file, "a.bin", vec![CREATED, COMPLETED, CANCELLED]),
        (&b, &b_file, "b.bin", vec![CREATED, FAILED, CANCELLED]),
        (&c, &[], "c.bin", vec![CREATED, CANCELLED]),
        (&e, &e_file, "e.bin", vec![CREATED, COMPLETED]),
        (&d, &[], "d.bin", vec![CREATED, EXPIRED]),
    ];
    let expected: BTreeMap<String, (&str, &str)> = lives
        .iter()
        .flat_map(|(id, _, _, kinds)| kinds.iter().map(|k| (event_id(id, k), (*id, *k))))
        .collect();
    assert_eq!(expected.len(), 12, "event ids are distinct");
    let ids: Vec<String> = expected.keys().cloned().collect();
    rx.wait_accepted(Duration::from_secs(30), &ids).await;
    // Quiet point: nothing left queued, so nothing more will be sent.
    wait_until(Duration::from_secs(10), "an empty outbox", || async {
        pending_files(dir.path()) == 0
    })
    .await;

    let arrivals = rx.arrivals();
    let got: BTreeSet<&str> = arrivals.iter().map(|a| a.event_id.as_str()).collect();
    let want: BTreeSet<&str> = expected.keys().map(String::as_str).collect();
    assert_eq!(got, want, "exactly the expected event ids arrive");
    // The failures happened, as scripted, and each was retried.
    let outcomes: Vec<Outcome> = arrivals.iter().take(FAILURES).map(|a| a.outcome).collect();
    let scripted: Vec<Outcome> = (0..FAILURES)
        .map(|i| [Outcome::Failed, Outcome::Dropped][i % 2])
        .collect();
    assert_eq!(outcomes, scripted, "{:#?}", summary(&arrivals));
    for (id, _) in expected.iter() {
        let accepted = arrivals
            .iter()
            .filter(|a| &a.event_id == id && a.outcome == Outcome::Accepted)
            .count();
        assert_eq!(accepted, 1, "{id}: accepted once, never resent after");
    }
    assert_eq!(arrivals.len(), 12 + FAILURES, "{:#?}", summary(&arrivals));

    for a in &arrivals {
        check_delivery(a);
        let (upload, kind) = expected[&a.event_id];
        assert_eq!(a.kind, kind, "{}", a.json);
        let (_, file, filename, _) = lives.iter().find(|l| l.0 == upload).unwrap();
        let u = &a.json["upload"];
        assert_eq!(u["id"], upload, "{}", a.json);
        assert_eq!(u["filename"], *filename, "{}", a.json);
        assert_eq!(u["owner"], Value::Null, "no authentication: {}", a.json);
        assert!(u["size"].as_u64().is_some_and(|s| s > 0), "{}", a.json);
        match kind {
            COMPLETED => {
                assert_eq!(u["sha256"], sha256_hex(file), "{}", a.json);
                assert_eq!(u["size"], file.len(), "{}", a.json);
                assert_eq!(
                    a.json["content_url"],
                    format!("/v1/uploads/{upload}/content")
                );
                assert!(a.json.get("reason").is_none(), "{}", a.json);
            }
            FAILED => {
                // The computed digest, and why it failed.
                assert_eq!(u["sha256"], sha256_hex(file), "{}", a.json);
                let reason = a.json["reason"].as_str().expect("a reason");
                assert!(
                    reason.contains(&wrong) && reason.contains("does not match"),
                    "{reason}"
                );
                assert!(a.json.get("content_url").is_none(), "{}", a.json);
            }
            _ => {
                assert!(a.json.get("reason").is_none(), "{}", a.json);
                assert!(a.json.get("content_url").is_none(), "{}", a.json);
            }
        }
    }

    // Order per upload: each kind's first arrival comes after the previous kind was
    // accepted (the server holds an upload's next event back until then).
    for (upload, _, _, kinds) in &lives {
        let first = |kind: &str| {
            let id = event_id(upload, kind);
            arrivals.iter().find(|a| a.event_id == id).unwrap().seq
        };
        let accepted = |kind: &str| {
            let id = event_id(upload, kind);
            arrivals
                .iter()
                .find(|a| a.event_id == id && a.outcome == Outcome::Accepted)
                .unwrap()
                .seq
        };
        for pair in kinds.windows(2) {
            assert!(
                first(pair[0]) < first(pair[1]) && accepted(pair[0]) < first(pair[1]),
                "{upload}: {} before {}; {:#?}",
                pair[0],
                pair[1],
                summary(&arrivals)
            );
        }
    }
}

/// `kill -9` right after a completion was answered 200, while the receiver was failing
/// every delivery (so `upload.completed`, queued behind the undelivered `upload.created`,
/// was never sent): after a restart on the same data directory both events are delivered,
/// in order, `upload.completed` only by the new process, with the verified digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_is_delivered_after_kill9_and_restart() {
    let rx = Receiver::start(Policy::Fail).await;
    let args = args_with_webhook(
        &rx.url,
        &[
            "--webhook-retry-base",
            "100ms",
            "--webhook-retry-max",
            "300ms",
            "--webhook-max-attempts",
            "1000",
        ],
    );
    let (mut server, _dir) = start(&args);
    let api = Api::new(&server);
    let cs = 64 * KIB;
    let file = random_bytes(3 * cs + 5, 21);
    let id = api.create(file.len(), cs, "crash.bin").await;
    let created = event_id(&id, CREATED);
    let completed = event_id(&id, COMPLETED);
    // The server is delivering, and the receiver refusing.
    rx.wait_for(Duration::from_secs(10), "a refused upload.created", |arr| {
        arr.iter().any(|a| a.event_id == created)
    })
    .await;
    api.put_all(&id, &file, cs).await;
    api.complete_ok(&id, &sha256_hex(&file)).await;
    server.kill9();

    let before = rx.arrivals();
    assert!(
        before.iter().all(|a| a.event_id == created),
        "upload.completed waits for upload.created: {:#?}",
        summary(&before)
    );
    rx.set_policy(Policy::Accept);
    tokio::task::block_in_place(|| server.restart());
    rx.wait_accepted(
        Duration::from_secs(20),
        &[created.clone(), completed.clone()],
    )
    .await;

    let arrivals = rx.arrivals();
    let sent: Vec<&Arrival> = arrivals
        .iter()
        .filter(|a| a.event_id == completed)
        .collect();
    assert!(
        sent.iter().all(|a| a.seq >= before.len()),
        "upload.completed arrived from the killed process: {:#?}",
        summary(&arrivals)
    );
    let accepted_created = arrivals
        .iter()
        .find(|a| a.event_id == created && a.outcome == Outcome::Accepted)
        .unwrap();
    assert!(accepted_created.seq < sent[0].seq, "created first");
    let c = sent
        .iter()
        .find(|a| a.outcome == Outcome::Accepted)
        .expect("accepted");
    check_delivery(c);
    assert_eq!(c.json["upload"]["id"], id.as_str());
    assert_eq!(c.json["upload"]["sha256"], sha256_hex(&file));
    assert_eq!(c.json["content_url"], format!("/v1/uploads/{id}/content"));
    let api = Api::new(&server);
    assert_eq!(api.status(&id).await["state"], "completed");
}

/// A receiver that always fails: with `--webhook-max-attempts 3` each event is tried
/// exactly 3 times and ends in `GET /v1/admin/events/dead` (attempts 3, the last error
/// naming the 500). Only an `--admin-owner` may list or replay (another owner: 403,
/// no token: 401); unknown or ill-formed ids are 404 problems; a replay (202) delivers the
/// event once the receiver accepts and takes it off the dead list, and replaying it again
/// is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_by_admins_only() {
    let rx = Receiver::start(Policy::Fail).await;
    let auth = tempfile::tempdir().unwrap();
    let tokens = tokens_file(auth.path(), &["admin", "bob"]);
    let args = args_with_webhook(
        &rx.url,
        &[
            "--webhook-max-attempts",
            "3",
            "--webhook-retry-base",
            "50ms",
            "--webhook-retry-max",
            "100ms",
            "--tokens-file",
            &tokens,
            "--admin-owner",
            "admin",
        ],
    );
    let (server, _dir) = start(&args);
    let admin = Api::as_token(&server, "tok-admin");
    let bob = Api::as_token(&server, "tok-bob");
    let anonymous = Api::new(&server);
    let cs = 64 * KIB;
    let file = random_bytes(cs + 10, 31);
    let id = bob.upload(&file, cs, "dead.bin").await;
    let created = event_id(&id, CREATED);
    let completed = event_id(&id, COMPLETED);

    wait_until(Duration::from_secs(15), "two dead letters", || async {
        admin.dead().await.len() == 2
    })
    .await;
    let dead = admin.dead().await;
    let dead_ids: Vec<&str> = dead
        .iter()
        .map(|d| d["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        dead_ids,
        [created.as_str(), completed.as_str()],
        "oldest first"
    );
    for d in &dead {
        assert_eq!(d["attempts"], 3, "{d}");
        let err = d["last_error"].as_str().expect("a last error");
        assert!(err.contains("500"), "{err}");
        assert!(d["first_attempt_at"].is_string(), "{d}");
        assert_eq!(d["event"]["upload"]["id"], id.as_str(), "{d}");
        assert_eq!(d["event"]["upload"]["owner"], "bob", "{d}");
    }
    let arrivals = rx.arrivals();
    for ev in [&created, &completed] {
        let tries: Vec<&Arrival> = arrivals.iter().filter(|a| &a.event_id == ev).collect();
        assert_eq!(tries.len(), 3, "{ev}: {:#?}", summary(&arrivals));
        assert!(tries.iter().all(|a| a.outcome == Outcome::Failed));
        tries.iter().for_each(|a| check_delivery(a));
    }
    assert_eq!(arrivals.len(), 6, "{:#?}", summary(&arrivals));

    // Admins only.
    problem(bob.dead_resp().await, StatusCode::FORBIDDEN).await;
    problem(bob.replay(&created).await, StatusCode::FORBIDDEN).await;
    problem(anonymous.dead_resp().await, StatusCode::UNAUTHORIZED).await;
    problem(anonymous.replay(&created).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        admin.dead().await.len(),
        2,
        "a refused replay changed nothing"
    );
    // Unknown and ill-formed ids.
    for bad in [
        event_id(&id, EXPIRED),
        "00000000-0000-8000-8000-000000000000".to_string(),
        "not-an-event-id".to_string(),
        created.to_uppercase(),
        format!("{created}x"),
        "..%2F..%2Fevents".to_string(),
    ] {
        problem(admin.replay(&bad).await, StatusCode::NOT_FOUND).await;
    }
    assert_eq!(rx.count(), 6, "nothing was sent meanwhile");

    // Replays, once the receiver accepts.
    rx.set_policy(Policy::Accept);
    for (i, ev) in [&created, &completed].into_iter().enumerate() {
        let resp = admin.replay(ev).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let entry: Value = resp.json().await.unwrap();
        assert_eq!(entry["event"]["id"], ev.as_str(), "{entry}");
        assert_eq!(entry["attempts"], 0, "a fresh delivery state: {entry}");
        let left: Vec<Value> = admin.dead().await;
        assert_eq!(left.len(), 1 - i, "off the dead list: {left:?}");
        assert!(left.iter().all(|d| d["event"]["id"] != ev.as_str()));
        rx.wait_accepted(Duration::from_secs(10), std::slice::from_ref(ev))
            .await;
        problem(admin.replay(ev).await, StatusCode::NOT_FOUND).await;
    }
    let accepted = rx.accepted();
    assert_eq!(accepted.len(), 2, "{:#?}", summary(&rx.arrivals()));
    accepted.iter().for_each(check_delivery);
    assert_eq!(accepted[1].json["upload"]["sha256"], sha256_hex(&file));
    assert!(admin.dead().await.is_empty());
}

/// A receiver that holds every request (for up to a minute) does not slow uploads: while
/// its first request (`upload.created` of the upload) is still held, that upload's chunks
/// are all stored and it completes; its `upload.completed` is only sent once the receiver
/// lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_never_slows_uploads() {
    let rx = Receiver::start(Policy::Hold).await;
    let args = args_with_webhook(&rx.url, &["--webhook-timeout", "120s"]);
    let (server, _dir) = start(&args);
    let api = Api::new(&server);
    let cs = 64 * KIB;
    let file = random_bytes(6 * cs - 7, 41);
    let id = api.create(file.len(), cs, "slow.bin").await;
    let created = event_id(&id, CREATED);
    rx.wait_for(Duration::from_secs(10), "a held upload.created", |arr| {
        arr.iter()
            .any(|a| a.event_id == created && a.outcome == Outcome::Held)
    })
    .await;

    api.put_all(&id, &file, cs).await;
    api.complete_ok(&id, &sha256_hex(&file)).await;
    let status = api.status(&id).await;
    assert_eq!(status["state"], "completed");
    assert_eq!(status["received_bytes"], file.len());

    // All of that happened while the first delivery was still held.
    let arrivals = rx.arrivals();
    assert_eq!(rx.holding(), 1, "{:#?}", summary(&arrivals));
    assert_eq!(arrivals.len(), 1, "{:#?}", summary(&arrivals));
    assert_eq!(arrivals[0].event_id, created);
    assert_eq!(arrivals[0].outcome, Outcome::Held);

    rx.release();
    let completed = event_id(&id, COMPLETED);
    rx.wait_accepted(Duration::from_secs(10), &[created, completed])
        .await;
    assert_eq!(rx.holding(), 0);
}

/// `GET /v1/uploads/{id}/events`: `progress` events (ids `<received bytes>-<state>`) whose
/// received bytes never decrease; after a disconnect, a reconnect with `Last-Event-ID`
/// does not repeat the last event seen but waits for the next change; the stream ends
/// with `completed`, after which a reconnect with its id is 204 and one without gets the
/// end once. Another owner (and an unknown upload) gets 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_follows_progress_and_resumes_without_repeats() {
    let auth = tempfile::tempdir().unwrap();
    let tokens = tokens_file(auth.path(), &["alice", "bob"]);
    let (server, _dir) = start(&["--tokens-file".to_string(), tokens]);
    let alice = Api::as_token(&server, "tok-alice");
    let bob = Api::as_token(&server, "tok-bob");
    let cs = 64 * KIB;
    let file = random_bytes(5 * cs, 51);
    let chunks: Vec<&[u8]> = file.chunks(cs).collect();
    let id = alice.create(file.len(), cs, "sse.bin").await;
    let wait = Duration::from_secs(10);

    problem(bob.events(&id, None).await, StatusCode::NOT_FOUND).await;
    problem(
        alice
            .events("00000000-0000-4000-8000-000000000000", None)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;

    // Every event seen, across connections.
    let mut seen = Vec::new();
    let mut sse = Sse::new(alice.events(&id, None).await);
    let first = sse.next(wait).await.expect("a first event");
    assert_eq!(
        (first.event.as_str(), first.id.as_str()),
        ("progress", "0-uploading")
    );
    assert_eq!(first.json()["received_bytes"], 0);
    seen.push(first);
    for (i, chunk) in chunks.iter().enumerate().take(2) {
        alice.put_chunk(&id, i, chunk).await;
        let want = (i + 1) * cs;
        loop {
            let e = sse.next(wait).await.expect("stream open");
            let got = e.json()["received_bytes"].as_u64().unwrap();
            seen.push(e);
            if got as usize >= want {
                break;
            }
        }
    }
    let last = seen.last().unwrap().clone();
    assert_eq!(last.id, format!("{}-uploading", 2 * cs));
    drop(sse);

    // Nothing changed since `last`: the reconnect must not send it again, but wait.
    let mut sse = Sse::new(alice.events(&id, Some(&last.id)).await);
    alice.put_chunk(&id, 2, chunks[2]).await;
    let resumed = sse.next(wait).await.expect("an event after reconnecting");
    assert_ne!(resumed.id, last.id, "the last event seen was repeated");
    assert_eq!(resumed.id, format!("{}-uploading", 3 * cs));
    seen.push(resumed);
    alice.put_chunk(&id, 3, chunks[3]).await;
    alice.put_chunk(&id, 4, chunks[4]).await;
    alice.complete_ok(&id, &sha256_hex(&file)).await;
    let end = loop {
        let e = sse
            .next(wait)
            .await
            .expect("the stream ends with an end event");
        seen.push(e.clone());
        if e.event != "progress" {
            break e;
        }
    };
    assert_eq!(sse.next(wait).await, None, "the stream ends after {end:?}");

    assert_eq!(end.event, "completed", "{end:?}");
    assert_eq!(end.id, format!("{}-completed", file.len()));
    let data = end.json();
    assert_eq!(data["state"], "completed");
    assert_eq!(data["sha256"], sha256_hex(&file));
    let mut previous = 0;
    for e in &seen {
        let d = e.json();
        let received = d["received_bytes"].as_u64().unwrap();
        assert!(received >= previous, "received bytes decreased: {seen:#?}");
        previous = received;
        assert_eq!(
            e.id,
            format!("{received}-{}", d["state"].as_str().unwrap()),
            "{e:?}"
        );
        assert_eq!(d["id"], id.as_str());
        if e.event == "progress" {
            assert!(
                ["uploading", "completing"].contains(&d["state"].as_str().unwrap()),
                "{e:?}"
            );
        }
    }
    let ids: BTreeSet<&str> = seen.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), seen.len(), "an event was sent twice: {seen:#?}");

    // After the end.
    let resp = alice.events(&id, Some(&end.id)).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let mut sse = Sse::new(alice.events(&id, None).await);
    assert_eq!(sse.next(wait).await.as_ref(), Some(&end));
    assert_eq!(sse.next(wait).await, None);
    problem(bob.events(&id, None).await, StatusCode::NOT_FOUND).await;
}

/// Empties and removes a test bucket when dropped.
struct Bucket(&'static S3Server, String);

impl Drop for Bucket {
    fn drop(&mut self) {
        self.0.drop_bucket(&self.1);
    }
}

/// Keys of `bucket` under `prefix` (ListObjectsV2, one page).
async fn s3_keys(s3: &S3Server, bucket: &str, prefix: &str) -> Vec<String> {
    let resp = s3
        .client()
        .get(s3.url(&format!("/{bucket}?list-type=2&prefix={prefix}")))
        .send()
        .await
        .expect("ListObjectsV2");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.text().await.expect("listing");
    assert!(!body.contains("<IsTruncated>true</IsTruncated>"), "{body}");
    body.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .map(str::to_string)
        .collect()
}

/// Two servers on one S3 bucket with the same webhook URL: uploads created, sent and
/// completed through either (and across both) produce each of their events exactly once
/// at the receiver: the outbox's claims make one server deliver each event. Checked once
/// the bucket holds no queued event and no claim, so no delivery can still be under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_bucket_deliver_each_event_once() {
    let Some(s3) = S3Server::shared_or_skip("events::two_servers_on_one_bucket") else {
        return;
    };
    let bucket = Bucket(s3, s3.new_bucket().await);
    let rx = Receiver::start(Policy::Accept).await;
    let mut args: Vec<String> = [
        "--storage",
        "s3",
        "--s3-bucket",
        &bucket.1,
        "--s3-endpoint",
        &s3.endpoint,
        "--s3-allow-http",
        "--s3-region",
        "us-east-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(webhook_args(&rx.url));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = tokio::task::block_in_place(|| {
        (
            Server::start_with_env(dir_a.path(), &args, &s3.aws_env()),
            Server::start_with_env(dir_b.path(), &args, &s3.aws_env()),
        )
    });
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));
    // One chunk each (the last chunk may be smaller than S3's 5 MiB part minimum).
    let cs = 5 * support::MIB;
    let mut uploads = Vec::new();
    for (n, (creator, sender)) in [
        (&api_a, &api_a),
        (&api_b, &api_b),
        (&api_a, &api_b),
        (&api_b, &api_a),
    ]
    .into_iter()
    .enumerate()
    {
        let file = random_bytes(10 * KIB + n, 60 + n as u64);
        let id = creator.create(file.len(), cs, &format!("s3-{n}.bin")).await;
        sender.put_chunk(&id, 0, &file).await;
        sender.complete_ok(&id, &sha256_hex(&file)).await;
        uploads.push(id);
    }
    let ids: Vec<String> = uploads
        .iter()
        .flat_map(|u| [event_id(u, CREATED), event_id(u, COMPLETED)])
        .collect();
    rx.wait_accepted(Duration::from_secs(30), &ids).await;
    wait_until(
        Duration::from_secs(30),
        "no queued event and no claim in the bucket",
        || async {
            s3_keys(s3, &bucket.1, "events/pending/").await.is_empty()
                && s3_keys(s3, &bucket.1, "events/claims/").await.is_empty()
        },
    )
    .await;

    let arrivals = rx.arrivals();
    for id in &ids {
        let n = arrivals.iter().filter(|a| &a.event_id == id).count();
        assert_eq!(n, 1, "{id} received {n} times: {:#?}", summary(&arrivals));
    }
    assert_eq!(arrivals.len(), ids.len(), "{:#?}", summary(&arrivals));
    arrivals.iter().for_each(check_delivery);
    assert_eq!(
        s3_keys(s3, &bucket.1, "events/done/").await.len(),
        ids.len(),
        "each event is marked delivered"
    );
    drop((a, b));
}

/// While one server on a shared bucket delivers an event to a slow receiver, the other
/// server, which finds the event's claim taken, only looks again at its next poll: the
/// two together make a few S3 requests a second (each server lists the queue and reads
/// the event about once a second), not hundreds (a loop that retried the taken claim at
/// once, as the server did before). Measured over a 2 s window while the receiver holds
/// the delivery: the window is what is measured, nothing waits on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_claim_is_not_retried_in_a_busy_loop() {
    let Some(s3) = S3Server::shared_or_skip("events::a_taken_claim_is_not_retried") else {
        return;
    };
    let bucket = Bucket(s3, s3.new_bucket().await);
    let rx = Receiver::start(Policy::Hold).await;
    // Each server reaches S3 through a counting proxy.
    let proxies = [
        tests::proxy::Proxy::start(&s3.endpoint, tests::proxy::Faults::none()),
        tests::proxy::Proxy::start(&s3.endpoint, tests::proxy::Faults::none()),
    ];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let servers: Vec<Server> = proxies
        .iter()
        .zip(&dirs)
        .map(|(proxy, dir)| {
            let endpoint = proxy.url();
            let mut args: Vec<String> = [
                "--storage",
                "s3",
                "--s3-bucket",
                &bucket.1,
                "--s3-endpoint",
                &endpoint,
                "--s3-allow-http",
                "--s3-region",
                "us-east-1",
                "--webhook-timeout",
                "60s",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(webhook_args(&rx.url));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            tokio::task::block_in_place(|| Server::start_with_env(dir.path(), &args, &s3.aws_env()))
        })
        .collect();
    let requests = || -> u64 {
        proxies
            .iter()
            .map(|p| {
                p.stats()
                    .requests
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    };
    let api = Api::new(&servers[0]);
    let id = api.create(10 * KIB, 5 * support::MIB, "claim.bin").await;
    let created = event_id(&id, CREATED);
    rx.wait_for(Duration::from_secs(10), "a held upload.created", |arr| {
        arr.iter().any(|a| a.event_id == created)
    })
    .await;
    let before = requests();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let made = requests() - before;
    assert_eq!(
        rx.count(),
        1,
        "one deliverer: {:#?}",
        summary(&rx.arrivals())
    );
    assert_eq!(rx.holding(), 1);
    assert!(
        made < 100,
        "{made} S3 requests in 2 s while another server delivered"
    );
    rx.release();
    rx.wait_accepted(Duration::from_secs(10), &[created]).await;
    drop(servers);
}
