// ---------------------------------------------------------------------------------------
// A hung store: it accepts connections and answers nothing (its process stopped with
// SIGSTOP, or a network black hole).
// ---------------------------------------------------------------------------------------

use super::*;
use tests::proxy::{Faults, Proxy};

/// The bound: with the store hung, a new request is answered 503 within this,
/// and once the store is back service resumes within this.
const WITHIN: Duration = Duration::from_secs(5);

/// The server flags of these tests. Every store request but a part's keeps its default
/// deadline (`--s3-request-timeout 3s`); a part is cut once the store has taken no byte of
/// it, or not answered once it has them all, for `--s3-stall-timeout` (10 s by default),
/// which is over [`WITHIN`]: lowered here.
const FLAGS: [&str; 2] = ["--s3-stall-timeout", "4s"];

/// How the test makes the store hang, and lets it go.
enum Hang<'a> {
    /// SIGSTOP / SIGCONT of the test's own gateway.
    Stopped(&'a S3Server),
    /// A proxy in front of the store turned into a black hole, and back.
    BlackHole(&'a Proxy),
}

impl Hang<'_> {
    fn start(&self) {
        match self {
            Hang::Stopped(s3) => s3.hang(),
            Hang::BlackHole(proxy) => proxy.black_hole(true),
        }
    }

    fn end(&self) {
        match self {
            Hang::Stopped(s3) => s3.resume(),
            Hang::BlackHole(proxy) => proxy.black_hole(false),
        }
    }
}

/// The backend operations, each as a client's request.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// `POST /v1/uploads` (CreateMultipartUpload, the record).
    Create,
    /// `PUT` of a chunk (its part, its claim), right after the upload was read, so that
    /// the server goes straight to the part.
    Chunk,
    /// A tus `PATCH` (the append lease, a piece).
    Append,
    /// `POST …/complete` (the claims, ListParts, the join).
    Complete,
    /// `GET …/content` of a completed upload.
    Download,
}

/// What the operations work on, made before the store hangs.
struct Uploads {
    /// Two chunks, the first acknowledged; [`Op::Chunk`] sends the second.
    chunk: (UploadId, Bytes),
    /// 2,000,000 bytes, the first half appended; [`Op::Append`] sends the rest.
    append: (String, Bytes),
    /// Every chunk acknowledged; [`Op::Complete`] completes it.
    complete: (UploadId, Bytes),
    /// Completed; [`Op::Download`] reads it.
    download: (UploadId, Bytes),
}

impl Uploads {
    async fn make(server: &Server) -> Uploads {
        let api = Api::new(server);
        let mut made = Vec::new();
        for (n, chunks) in [(0u64, 1usize), (1, 2), (2, 2)] {
            let file = Bytes::from(random_bytes(CS + 1000, 150 + n));
            let id = api
                .create(json!({"size": file.len(), "chunk_size": CS}))
                .await
                .id;
            put_in_order(
                &api,
                id,
                &chunks_of(&file),
                &(0..chunks).collect::<Vec<_>>(),
            )
            .await;
            made.push((id, file));
        }
        let download = made.pop().unwrap();
        api.complete_ok(download.0, &download.1).await;
        let complete = made.pop().unwrap();
        let chunk = made.pop().unwrap();
        let file = Bytes::from(random_bytes(2_000_000, 153));
        let path = tus_create(server, file.len()).await;
        assert_eq!(
            tus_send(server, &path, &file, 0, 1_000_000).await,
            1_000_000
        );
        Uploads {
            chunk,
            append: (path, file),
            complete,
            download,
        }
    }

    /// Sends `op`: its status, `Retry-After` and body.
    async fn send(&self, server: &Server, op: Op) -> (StatusCode, Option<String>, Bytes) {
        let api = Api::new(server);
        let resp = match op {
            Op::Create => {
                api.http
                    .post(api.url("/v1/uploads"))
                    .json(&json!({"size": 1000}))
                    .send()
                    .await
            }
            Op::Chunk => {
                let (id, file) = &self.chunk;
                Ok(api.put(*id, 1, chunks_of(file)[1].clone()).await)
            }
            Op::Append => {
                let (path, file) = &self.append;
                tus_patch(server, path, 1_000_000)
                    .body(file.slice(1_000_000..))
                    .send()
                    .await
            }
            Op::Complete => {
                api.http
                    .post(api.url(&format!("/v1/uploads/{}/complete", self.complete.0)))
                    .send()
                    .await
            }
            Op::Download => {
                api.http
                    .get(api.url(&format!("/v1/uploads/{}/content", self.download.0)))
                    .send()
                    .await
            }
        };
        let resp = resp.unwrap_or_else(|e| panic!("{op:?}: {e}"));
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or("").to_string());
        (
            resp.status(),
            retry_after,
            resp.bytes().await.unwrap_or_default(),
        )
    }

    /// Every upload is whole after the store came back: the acknowledged bytes are all
    /// there, and each completes (or is completed) with the right SHA-256.
    async fn check(&self, server: &Server) {
        let api = Api::new(server);
        for (id, file) in [&self.chunk, &self.complete, &self.download] {
            api.complete_ok(*id, file).await;
            api.assert_content(*id, file).await;
        }
        let (path, file) = &self.append;
        assert_eq!(tus_offset(server, path).await, file.len() as u64);
        assert_completed(server, tus_id(path), file).await;
    }
}

/// Readiness: its status, and how long it took.
async fn readyz(server: &Server) -> (StatusCode, Duration) {
    let t = Instant::now();
    let resp = client()
        .get(format!("{}/readyz", server.url()))
        .send()
        .await
        .expect("GET /readyz");
    (resp.status(), t.elapsed())
}

/// For each operation in turn: the store hangs; the operation and `/readyz` (at once)
/// are answered 503, the operation with `Retry-After` and a problem document, both within
/// [`WITHIN`]; the store comes back, and the same operation, repeated until it succeeds,
/// does so within [`WITHIN`] (the acknowledged chunk and appended bytes of the first
/// attempts were never taken, so the repeat is new). Then every upload is whole. Returns
/// the timings.
async fn each_operation_while_hung(server: &Server, hang: Hang<'_>) -> Vec<String> {
    let uploads = Uploads::make(server).await;
    let api = Api::new(server);
    let mut timings = Vec::new();
    for op in [
        Op::Create,
        Op::Chunk,
        Op::Append,
        Op::Complete,
        Op::Download,
    ] {
        if let Op::Chunk = op {
            // The chunk's upload was just read: its write goes straight to the part.
            api.status(uploads.chunk.0).await;
        }
        hang.start();
        let t = Instant::now();
        let ((code, retry_after, body), (ready, ready_took)) =
            tokio::join!(uploads.send(server, op), readyz(server));
        let took = t.elapsed();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{op:?}: {text}");
        assert!(
            retry_after
                .as_deref()
                .and_then(|r| r.parse::<u64>().ok())
                .is_some_and(|s| (1..=60).contains(&s)),
            "{op:?}: Retry-After {retry_after:?}"
        );
        let p: Problem = serde_json::from_slice(&body).expect("problem document");
        assert_eq!(p.status, 503, "{op:?}: {text}");
        assert!(took <= WITHIN, "{op:?}: answered after {took:?}");
        assert_eq!(
            ready,
            StatusCode::SERVICE_UNAVAILABLE,
            "/readyz during {op:?}"
        );
        assert!(
            ready_took <= WITHIN,
            "/readyz answered after {ready_took:?}"
        );

        hang.end();
        let back = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let (code, _, body) = uploads.send(server, op).await;
            if code.is_success() {
                if let Op::Download = op {
                    assert!(body == uploads.download.1, "downloaded bytes differ");
                }
                break;
            }
            assert_eq!(
                code,
                StatusCode::SERVICE_UNAVAILABLE,
                "{op:?} after the store came back: {}",
                String::from_utf8_lossy(&body)
            );
            assert!(
                back.elapsed() <= WITHIN,
                "{op:?}: still refused {:?} after the store came back",
                back.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let resumed = back.elapsed();
        timings.push(format!(
            "{op:?}: 503 in {took:.1?} (/readyz 503 in {ready_took:.1?}), served again \
             {resumed:.1?} after the store came back ({tries} tries)"
        ));
    }
    uploads.check(server).await;
    timings
}

/// The store's process stopped (SIGSTOP of the test's own gateway, which keeps its port
/// and its connections open but answers nothing), once per backend operation; see
/// [`each_operation_while_hung`].
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_store_is_503_within_seconds_for_every_operation() {
    let Some(s3) =
        s3_with_gateway_or_skip("a_stopped_store_is_503_within_seconds_for_every_operation").await
    else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &FLAGS);
    let timings = each_operation_while_hung(&server, Hang::Stopped(&s3)).await;
    eprintln!("store stopped (SIGSTOP):\n  {}", timings.join("\n  "));
}

/// A network black hole between the server and the store (a proxy that keeps accepting
/// connections and reading requests, and answers nothing), once per backend operation;
/// see [`each_operation_while_hung`].
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_black_holed_store_is_503_within_seconds_for_every_operation() {
    let Some(s3) =
        s3_or_skip("a_black_holed_store_is_503_within_seconds_for_every_operation").await
    else {
        return;
    };
    let proxy = Proxy::start(s3.endpoint.trim_start_matches("http://"), Faults::none());
    let (server, _dir) = upload_server_via(&s3, &proxy.url(), &FLAGS);
    let timings = each_operation_while_hung(&server, Hang::BlackHole(&proxy)).await;
    eprintln!("store black-holed:\n  {}", timings.join("\n  "));
    assert!(
        proxy
            .stats()
            .held
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 5,
        "requests were held"
    );
}
