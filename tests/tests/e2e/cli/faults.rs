//! Uploads through a bad network: the fault-injecting proxy resets connections mid-body,
//! stalls them, answers 503 with `Retry-After`, and drops answers.

use std::sync::atomic::Ordering;

use tests::proxy::{Faults, Proxy};
use tests::Server;

use super::support::{assert_progress_monotonic, random_file, Cli};

/// A 64 MiB upload with 20% of its requests faulty completes with the right SHA-256, the
/// retries are reported as events, and the server's copy is byte-identical.
#[test]
fn upload_survives_twenty_percent_faulty_requests() {
    // The proxy holds a stalled request's server side open too; the server frees it (and
    // the chunk it was writing, which the retry needs) after its body timeout.
    let (server, _data) = Server::start(&["--body-timeout", "2s"]);
    let proxy = Proxy::start(&server.addr, Faults::all(0.2, 42));
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let size = 64 << 20;
    let (path, sha) = random_file(dir.path(), "big.bin", size, 4);
    let run = cli.run(&[
        "upload",
        path.to_str().unwrap(),
        "--server",
        &proxy.url(),
        "--chunk-size",
        "1MiB",
        "-j",
        "4",
        "--stall-timeout",
        "2s",
        "--retry-max-delay",
        "2s",
        "--json",
    ]);
    run.expect_code(0);
    let done = run.one("completed");
    assert_eq!(done["sha256"], sha.as_str(), "{}", run.dump());
    assert_eq!(done["size"], size as u64);
    assert_progress_monotonic(&run, size as u64);

    let stats = proxy.stats();
    let faults = stats.faults();
    let requests = stats.requests.load(Ordering::Relaxed);
    eprintln!(
        "faulty proxy: {requests} requests, {faults} faults (resets {}, stalls {}, 503s {}, dropped answers {}), {} retry events",
        stats.resets.load(Ordering::Relaxed),
        stats.stalls.load(Ordering::Relaxed),
        stats.unavailable.load(Ordering::Relaxed),
        stats.dropped.load(Ordering::Relaxed),
        run.events_of("retry").len()
    );
    assert!(faults >= 5, "only {faults} faults in {requests} requests");
    tests::tally(
        "network-faulty-requests",
        "fault",
        "network: a fifth of CLI requests reset, stalled, 503'd or their answer dropped",
        faults,
    );
    for (kind, n) in [
        ("reset", &stats.resets),
        ("stall", &stats.stalls),
        ("503", &stats.unavailable),
        ("dropped answer", &stats.dropped),
    ] {
        assert!(n.load(Ordering::Relaxed) > 0, "no {kind} was injected");
    }
    // Every fault the client saw is a retry event with its reason and delay.
    let retries = run.events_of("retry");
    assert!(!retries.is_empty(), "{}", run.dump());
    for r in &retries {
        assert!(r["attempt"].as_u64().unwrap() >= 1, "{r}");
        assert!(r["delay_ms"].is_u64(), "{r}");
        assert!(!r["reason"].as_str().unwrap().is_empty(), "{r}");
    }
    assert!(
        retries
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains("503")
                && r["delay_ms"].as_u64().unwrap() >= 1000),
        "a 503 retry must wait for its Retry-After: {retries:?}"
    );
    assert!(
        retries
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains("stalled")),
        "a stall must be detected: {retries:?}"
    );

    // The server's bytes, fetched directly.
    let id = done["id"].as_str().unwrap();
    let out = dir.path().join("back.bin");
    cli.run(&[
        "download",
        id,
        "-o",
        out.to_str().unwrap(),
        "--server",
        &server.url(),
    ])
    .expect_code(0);
    assert_eq!(tests::sha256_hex(&std::fs::read(&out).unwrap()), sha);
}

/// Network chaos over more than a thousand chunk sends: 64 MiB in 64 KiB chunks, 8 in
/// flight, through a proxy that gives 10% of the requests one of resets mid-body,
/// stalls (half-open connections), 503s, dropped answers, latency and a 5 KB/s trickle.
/// The upload completes with the right SHA-256, and the server agrees.
#[test]
fn upload_survives_network_chaos_over_a_thousand_chunk_sends() {
    let (server, _data) = Server::start(&["--body-timeout", "2s"]);
    let proxy = Proxy::start(&server.addr, Faults::chaos(0.1, 7));
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let size = 64 << 20;
    let (path, sha) = random_file(dir.path(), "chaos.bin", size, 5);
    let run = cli.run(&[
        "upload",
        path.to_str().unwrap(),
        "--server",
        &proxy.url(),
        "--chunk-size",
        "64KiB",
        "-j",
        "8",
        "--stall-timeout",
        "2s",
        "--retry-max-delay",
        "1s",
        "--retries",
        "20",
        "--json",
    ]);
    run.expect_code(0);
    let done = run.one("completed");
    assert_eq!(done["sha256"], sha.as_str(), "{}", run.dump());
    assert_progress_monotonic(&run, size as u64);

    let stats = proxy.stats();
    let requests = stats.requests.load(Ordering::Relaxed);
    eprintln!(
        "chaos: {requests} requests, {} faults (resets {}, stalls {}, 503s {}, dropped {}, delayed {}, trickled {})",
        stats.faults(),
        stats.resets.load(Ordering::Relaxed),
        stats.stalls.load(Ordering::Relaxed),
        stats.unavailable.load(Ordering::Relaxed),
        stats.dropped.load(Ordering::Relaxed),
        stats.delayed.load(Ordering::Relaxed),
        stats.trickled.load(Ordering::Relaxed),
    );
    assert!(requests >= 1024, "only {requests} requests");
    tests::tally(
        "network-chaos",
        "fault",
        &format!(
            "network chaos over {requests} chunk sends: resets, stalls, 503s, dropped \
             answers, latency, 5 KB/s trickle"
        ),
        stats.faults(),
    );
    for (kind, n) in [
        ("reset", &stats.resets),
        ("stall", &stats.stalls),
        ("503", &stats.unavailable),
        ("dropped answer", &stats.dropped),
        ("latency", &stats.delayed),
        ("trickle", &stats.trickled),
    ] {
        assert!(n.load(Ordering::Relaxed) > 0, "no {kind} was injected");
    }
    let id = done["id"].as_str().unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "30"])
        .arg(format!("{}/v1/uploads/{id}", server.url()))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["sha256"], sha.as_str());
    assert_eq!(status["state"], "completed");
}
