//! Requests that cost the client bytes and the server megabytes: the memory of open
//! uploads must not follow their declared size, before or after a restart.

use futures_util::StreamExt;
use reqwest::StatusCode;
use tests::Server;

use super::*;

/// Resident and peak memory of a process, in bytes, from `/proc/PID/status`.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

const LIMIT: u64 = 128 << 20;

fn check(pid: u32, when: &str) {
    let (rss, peak) = memory(pid);
    eprintln!("{when}: RSS {} MiB, peak {} MiB", rss >> 20, peak >> 20);
    assert!(
        peak < LIMIT,
        "{when}: the server's peak RSS is {} MiB, above {} MiB",
        peak >> 20,
        LIMIT >> 20
    );
}

/// The review's reproduction: 1,000 POSTs of ~70 bytes, each declaring 100,000 chunks of
/// 64 KiB. The server stays under 128 MiB resident while they are made and read, and
/// again after a restart (which used to load every open upload's chunk table at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_huge_declared_uploads_cost_little_memory() {
    let (mut server, _data) = Server::start(&["--rate-limit", "0"]);
    let api = Api::new(&server);
    let body = json!({"size": 6_553_600_000u64, "chunk_size": 65536});
    let mut ids = Vec::new();
    for round in 0..10 {
        let created: Vec<String> = futures_util::stream::iter(0..100)
            .map(|_| async {
                let r = api.try_create(body.clone()).await;
                assert_eq!(r.status(), StatusCode::CREATED);
                let st: UploadStatus = r.json().await.unwrap();
                assert_eq!(st.chunk_count, 100_000);
                st.id.to_string()
            })
            .buffer_unordered(8)
            .collect()
            .await;
        ids.extend(created);
        check(
            server.pid(),
            &format!("after {} creates", (round + 1) * 100),
        );
    }
    read_all(&api, &ids).await;
    check(server.pid(), "after reading every upload");

    server.restart();
    let api = Api::new(&server);
    check(server.pid(), "after the restart");
    read_all(&api, &ids).await;
    check(server.pid(), "after the restart and reading every upload");
}

/// Reads the status of every upload, 8 at a time.
async fn read_all(api: &Api, ids: &[String]) {
    let reads = ids
        .iter()
        .map(|id| api.req(Method::GET, &format!("/v1/uploads/{id}")).send());
    let statuses: Vec<_> = futures_util::stream::iter(reads)
        .buffer_unordered(8)
        .collect()
        .await;
    for r in statuses {
        assert_eq!(r.unwrap().status(), StatusCode::OK);
    }
}
