// ---------------------------------------------------------------------------------------
// Store requests per chunk, counted by the store itself (Ceph's request log).
// ---------------------------------------------------------------------------------------

use super::*;
use futures_util::StreamExt;
use std::time::SystemTime;
use tests::s3::Requests;

/// Chunks of the measured uploads: 16 × 5 MiB (80 MiB).
const CHUNKS: usize = 16;

/// Store requests a chunk may cost in all, its UploadPart included: its part and its claim
/// while it is sent, and one read of its claim by a completion on a server that did not
/// see it (another server, or after a restart), or while a chunk that came ahead waits
/// for the whole-file hash to reach it.
const PER_CHUNK: u64 = 3;

/// What a chunk sent in order costs when the same server completes the upload: its part
/// and its claim, nothing read back (the completing server saw every claim).
const IN_ORDER_PER_CHUNK: u64 = 2;

/// Store requests one upload may cost besides its chunks, whatever its size: at creation
/// its multipart upload and its record (2); while its chunks are sent, its record read
/// again now and then by each server (at most once every 2 s: 3 here); at completion, the
/// upload loaded twice, before and after the chunks acknowledged here settle (its record,
/// its chunks listed, the furthest midstate: 6), "completing" and "completed" written (2),
/// the check that the file is not joined yet and the join (2), its claims listed and
/// deleted (2). ListParts comes on top: one page per 1,000 chunks.
const PER_UPLOAD: u64 = 17;

/// The budget of an upload of `chunks` chunks at `per_chunk` requests each.
fn budget(per_chunk: u64, chunks: u64) -> u64 {
    per_chunk * chunks + PER_UPLOAD + chunks.div_ceil(1000)
}

/// Store requests a server counted (`upload_store_requests_total`, every operation).
async fn counted(server: &Server) -> f64 {
    metrics_text(server)
        .await
        .lines()
        .filter(|l| l.starts_with("upload_store_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends the chunks of `file` to upload `id` in `order`, four in flight, each to
/// `apis[index % apis.len()]`, with `Content-Digest`.
async fn send_four_in_flight(apis: &[Api], id: UploadId, file: &Bytes, order: &[usize]) {
    let chunks = chunks_of(file);
    futures_util::stream::iter(order.iter().map(|&i| (i, chunks[i].clone())))
        .map(|(i, c)| {
            let api = apis[i % apis.len()].clone();
            async move { api.put_ok(id, i as u64, c).await }
        })
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
}

/// The chunk indexes `0..n` with each run of four reversed (3, 2, 1, 0, 7, 6, …): with
/// four in flight, chunks reach the server out of order, within `--hash-ahead-memory`.
fn reversed_fours(n: usize) -> Vec<usize> {
    (0..n)
        .collect::<Vec<_>>()
        .chunks(4)
        .flat_map(|run| run.iter().rev().copied().collect::<Vec<_>>())
        .collect()
}

/// One upload of `order.len()` chunks, created through the first of `servers`, sent in
/// `order` four in flight across them, completed through the last: the store's requests
/// for it, from its creation to its completion, and the bytes read back at completion.
async fn measured_upload(
    s3: &S3Server,
    servers: &[&Server],
    order: &[usize],
    seed: u64,
) -> (Requests, u64) {
    measured_upload_completed_by(s3, servers, servers.len(), order, seed).await
}

/// [`measured_upload`] with its chunks sent to the first `senders` of `servers` only.
async fn measured_upload_completed_by(
    s3: &S3Server,
    servers: &[&Server],
    senders: usize,
    order: &[usize],
    seed: u64,
) -> (Requests, u64) {
    let apis: Vec<Api> = servers.iter().map(|s| Api::new(s)).collect();
    let file = Bytes::from(random_bytes(order.len() * CS, seed));
    // Each server looks for leftover multipart uploads once it has started: not counted.
    for s in servers {
        let sweep = r#"upload_store_requests_total{op="list_multipart_uploads"}"#;
        wait_until(Duration::from_secs(10), "the first sweep", || async {
            metric(s, sweep).await >= 1.0
        })
        .await;
    }
    let mut before = 0.0;
    for s in servers {
        before += counted(s).await;
    }
    // The store logs a request's start on a clock of a few milliseconds' steps.
    let since = SystemTime::now() - Duration::from_millis(20);
    let id = apis[0]
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await
        .id;
    send_four_in_flight(&apis[..senders], id, &file, order).await;
    let last = servers[servers.len() - 1];
    let done = apis[apis.len() - 1].complete_ok(id, &file).await;
    assert_eq!(done.sha256, Some(digest(&file)));
    let requests = s3.requests(s3.bucket(), since);
    let mut after = 0.0;
    for s in servers {
        after += counted(s).await;
    }
    eprintln!(
        "the servers counted {} store requests (upload_store_requests_total)",
        after - before
    );
    let lines = completed_lines(&synced_logs(last).await, id);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let read_back = log_field(&lines[0], "read_back_at_completion");
    apis[0].assert_content(id, &file).await;
    (requests, read_back)
}

/// What every measured upload shows, on any number of servers: one UploadPart per chunk,
/// one claim per chunk (PutObject: the claims, the record's three versions, the listing
/// entry), the parts
/// joined once with nothing copied.
fn assert_common(r: &Requests, n: u64, what: &str) {
    assert_eq!(r.count("UploadPart"), n, "{what}: {r:?}");
    assert!(r.count("PutObject") <= n + 4, "{what}: {r:?}");
    assert_eq!(r.count("CreateMultipartUpload"), 1, "{what}: {r:?}");
    assert_eq!(r.count("CompleteMultipartUpload"), 1, "{what}: {r:?}");
    assert_eq!(r.count("ListParts"), n.div_ceil(1000), "{what}: {r:?}");
    assert_eq!(
        r.count("CopyObject") + r.count("UploadPartCopy"),
        0,
        "{what}: {r:?}"
    );
    assert_eq!(r.copied_bytes, 0, "{what}: {r:?}");
}

/// 16 chunks sent in order, four in flight, with `Content-Digest`, to one server: the
/// store sees at most 2 requests per chunk in all, its UploadPart included, plus a fixed
/// number for the upload ([`budget`]: 2 × 16 + 17 + 1 = 50), and nothing is read back at
/// completion (the whole-file hash followed the chunks as they passed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_order_chunks_cost_at_most_two_store_requests_each() {
    let Some(s3) = s3_or_skip("in_order_chunks_cost_at_most_two_store_requests_each").await else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let in_order: Vec<usize> = (0..CHUNKS).collect();
    let (r, read_back) = measured_upload(&s3, &[&server], &in_order, 130).await;
    let n = CHUNKS as u64;
    eprintln!(
        "store requests, {n} chunks in order, 4 in flight, one server: {} in all, {:.2} a \
         chunk (budget {}): {:?}",
        r.total,
        r.total as f64 / n as f64,
        budget(IN_ORDER_PER_CHUNK, n),
        r.by_operation
    );
    assert_common(&r, n, "one server");
    assert!(
        r.total <= budget(IN_ORDER_PER_CHUNK, n),
        "{} store requests for {n} chunks, over the budget of {}: {:?}",
        r.total,
        budget(IN_ORDER_PER_CHUNK, n),
        r.by_operation
    );
    assert_eq!(read_back, 0, "bytes read back at completion");
}

/// Servers that do not tell each other of their claims (`--peer-url off`).
const NO_NOTES: &[&str] = &["--peer-url", "off"];

/// The same upload completed through a server that saw none of its chunks and heard of
/// none (as after a restart, or with `--peer-url off`): that one reads every claim back,
/// a third request per chunk, and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completion_elsewhere_reads_each_claim_once() {
    let Some(s3) = s3_or_skip("a_completion_elsewhere_reads_each_claim_once").await else {
        return;
    };
    let (sender, _ds) = upload_server(&s3, NO_NOTES);
    let (completer, _dc) = upload_server(&s3, NO_NOTES);
    let in_order: Vec<usize> = (0..CHUNKS).collect();
    let (r, read_back) =
        measured_upload_completed_by(&s3, &[&sender, &completer], 1, &in_order, 134).await;
    let n = CHUNKS as u64;
    eprintln!(
        "store requests, {n} chunks to one server, completed through another: {} in all, \
         {:.2} a chunk: {:?}",
        r.total,
        r.total as f64 / n as f64,
        r.by_operation
    );
    assert_common(&r, n, "completed elsewhere");
    let budget = budget(PER_CHUNK, n);
    assert!(
        r.total <= budget,
        "{} store requests for {n} chunks, over the budget of {budget}: {:?}",
        r.total,
        r.by_operation
    );
    assert_eq!(read_back, 0, "bytes read back at completion");
}

/// What each server beyond the first may cost an upload: its own read of the record, and
/// the read of a claim written before it heard of the others.
const PER_OTHER_SERVER: u64 = 2;

/// The same upload with its chunks round-robin over three servers that tell each other
/// of the claims they write (the default): each chunk continues the whole-file hash from
/// the midstate in the claim of the chunk before it, written by another server and heard
/// of, not read from the store. So a chunk costs what it costs on one server, its part
/// and its claim, and the upload a read of its record per other server; nothing is read
/// back or spilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_round_robin_over_three_servers_cost_two_store_requests_each() {
    let Some(s3) =
        s3_or_skip("chunks_round_robin_over_three_servers_cost_two_store_requests_each").await
    else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let (c, _dc) = upload_server(&s3, &[]);
    let in_order: Vec<usize> = (0..CHUNKS).collect();
    let (r, read_back) = measured_upload(&s3, &[&a, &b, &c], &in_order, 135).await;
    let n = CHUNKS as u64;
    let budget = budget(IN_ORDER_PER_CHUNK, n) + 2 * PER_OTHER_SERVER;
    eprintln!(
        "store requests, {n} chunks in order, 4 in flight, round-robin over three servers \
         telling each other: {} in all, {:.2} a chunk (budget {budget}): {:?}",
        r.total,
        r.total as f64 / n as f64,
        r.by_operation
    );
    assert_common(&r, n, "three servers");
    assert!(
        r.total <= budget,
        "{} store requests for {n} chunks round-robin, over the budget of {budget}: {:?}",
        r.total,
        r.by_operation
    );
    assert_eq!(read_back, 0, "bytes read back at completion");
}

/// The same upload round-robin over three servers that tell each other nothing
/// (`--peer-url off`): each chunk waits for the whole-file hash midstate that another
/// server stored with the chunk before it (in its claim), so the hash still follows the
/// chunks and nothing is read back or spilled; those reads of claims cost requests beyond
/// the two a chunk costs on one server. What the design guarantees is asserted (one part
/// and one claim per chunk, one join, no copy, no read-back); the figure is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_round_robin_without_notes_pass_the_hash_through_their_claims() {
    let Some(s3) =
        s3_or_skip("chunks_round_robin_without_notes_pass_the_hash_through_their_claims").await
    else {
        return;
    };
    let (a, _da) = upload_server(&s3, NO_NOTES);
    let (b, _db) = upload_server(&s3, NO_NOTES);
    let (c, _dc) = upload_server(&s3, NO_NOTES);
    let in_order: Vec<usize> = (0..CHUNKS).collect();
    let (r, read_back) = measured_upload(&s3, &[&a, &b, &c], &in_order, 131).await;
    let n = CHUNKS as u64;
    eprintln!(
        "store requests, {n} chunks in order, 4 in flight, round-robin over three servers \
         telling each other nothing: {} in all, {:.2} a chunk: {:?}",
        r.total,
        r.total as f64 / n as f64,
        r.by_operation
    );
    assert_common(&r, n, "three servers");
    assert_eq!(read_back, 0, "bytes read back at completion");
}

/// What a chunk costs the store, counted by the store: two uploads on one server, of 4
/// and of [`CHUNKS`] chunks, each sent out of order ([`reversed_fours`]: every chunk
/// arrives once, four in flight, within `--hash-ahead-memory`) and completed. What an
/// upload costs whatever its size cancels out in the difference of their request counts
/// in RGW's log; what is left, divided by the difference in chunks, is what one chunk
/// costs, its UploadPart included: at most 3. Nothing is spilled or read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_order_chunks_cost_at_most_three_store_requests_each() {
    let Some(s3) = s3_or_skip("out_of_order_chunks_cost_at_most_three_store_requests_each").await
    else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let (small, large) = (4, CHUNKS);
    let (few, read_back) = measured_upload(&s3, &[&server], &reversed_fours(small), 132).await;
    assert_eq!(
        read_back, 0,
        "bytes read back at completion ({small} chunks)"
    );
    assert_common(&few, small as u64, "4 chunks out of order");
    let (many, read_back) = measured_upload(&s3, &[&server], &reversed_fours(large), 133).await;
    assert_eq!(
        read_back, 0,
        "bytes read back at completion ({large} chunks)"
    );
    assert_common(&many, large as u64, "16 chunks out of order");
    let per_chunk = (many.total as f64 - few.total as f64) / (large - small) as f64;
    eprintln!(
        "store requests per chunk, out of order, one server: {per_chunk:.2} (RGW's log: \
         {} requests for {small} chunks, {} for {large}; {:?})",
        few.total, many.total, many.by_operation
    );
    assert!(
        per_chunk <= PER_CHUNK as f64,
        "{per_chunk:.2} store requests per chunk: {few:?} for {small} chunks, {many:?} for \
         {large}"
    );
    assert!(
        many.total <= budget(PER_CHUNK, large as u64),
        "{} store requests for {large} chunks, over the budget of {}: {:?}",
        many.total,
        budget(PER_CHUNK, large as u64),
        many.by_operation
    );
}
