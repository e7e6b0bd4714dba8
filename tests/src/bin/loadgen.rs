//! A lean load client for `make bench`: sends one file to the native API in parallel
//! chunks with `Content-Digest`, having read the file and computed every digest before the
//! clock starts, so that the server is what is measured.
//!
//! Usage: `loadgen URL[,URL...] FILE [CHUNK_SIZE] [PARALLEL]`; prints one JSON line with
//! the seconds from create to completed, the seconds of the completion alone (from the
//! complete request to the completed state), and whether the server's SHA-256 matched.
//!
//! Several URLs (servers sharing one store) are used round-robin per chunk, as a client
//! behind a round-robin balancer would: the upload is created on the first, chunk `i` goes
//! to URL `i mod n`, and the completion to the one after the last chunk's, so that every
//! step can land on another instance than the one before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::api::{CreateUpload, UploadState, UploadStatus};
use common::Sha256Digest;
use sha2::{Digest, Sha256};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: loadgen URL[,URL...] FILE [CHUNK_SIZE] [PARALLEL]".into());
    }
    let urls: Arc<Vec<String>> = Arc::new(
        args[1]
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect(),
    );
    if urls.is_empty() {
        return Err("no server URL given".into());
    }
    let data = Bytes::from(std::fs::read(&args[2])?);
    let chunk_size = match args.get(3) {
        Some(s) => common::units::parse_size(s)?,
        None => 8 << 20,
    } as usize;
    let parallel: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(4);

    let whole = Sha256Digest(Sha256::digest(&data).into());
    let chunks: Vec<(Bytes, String)> = data
        .chunks(chunk_size)
        .enumerate()
        .map(|(i, c)| {
            let b = data.slice(i * chunk_size..i * chunk_size + c.len());
            let d = Sha256Digest(Sha256::digest(c).into()).to_header();
            (b, d)
        })
        .collect();
    let chunks = Arc::new(chunks);
    let client = reqwest::Client::new();

    let start = Instant::now();
    let status: UploadStatus = client
        .post(format!("{}/v1/uploads", urls[0]))
        .json(&CreateUpload {
            size: Some(data.len() as u64),
            chunk_size: Some(chunk_size as u64),
            sha256: Some(whole),
            ..Default::default()
        })
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = status.id;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (client, chunks, next, urls) =
            (client.clone(), chunks.clone(), next.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((body, digest)) = chunks.get(i) else {
                    return Ok::<_, reqwest::Error>(());
                };
                let url = &urls[i % urls.len()];
                client
                    .put(format!("{url}/v1/uploads/{id}/chunks/{i}"))
                    .header("content-digest", digest)
                    .body(body.clone())
                    .send()
                    .await?
                    .error_for_status()?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let url = &urls[chunks.len() % urls.len()];
    let completing = Instant::now();
    let mut resp = client
        .post(format!("{url}/v1/uploads/{id}/complete"))
        .send()
        .await?
        .error_for_status()?;
    let mut status: UploadStatus = resp.json().await?;
    while status.state == UploadState::Completing {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        resp = client
            .get(format!("{url}/v1/uploads/{id}"))
            .send()
            .await?
            .error_for_status()?;
        status = resp.json().await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let complete_secs = completing.elapsed().as_secs_f64();
    let ok = status.state == UploadState::Completed && status.sha256 == Some(whole);
    println!(
        "{{\"id\":\"{id}\",\"seconds\":{secs:.3},\"complete_seconds\":{complete_secs:.3},\"mb_s\":{:.1},\"sha_ok\":{ok}}}",
        data.len() as f64 / 1e6 / secs
    );
    if ok {
        Ok(())
    } else {
        Err("the server's SHA-256 did not match".into())
    }
}
