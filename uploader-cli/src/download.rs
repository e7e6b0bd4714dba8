//! `uploader download`: fetches a completed upload into `FILE.part`, resuming a partial
//! download with `Range`, checks the SHA-256 against the server's, then renames it to
//! `FILE`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use common::api::UploadState;
use common::units::format_size;
use common::Sha256Digest;

use crate::args::DownloadArgs;
use crate::client::{describe, Client};
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;

/// What a finished download reports.
#[derive(Debug)]
pub struct Downloaded {
    /// Output file.
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// Verified SHA-256.
    pub sha256: Sha256Digest,
    /// Bytes that were already in the `.part` file.
    pub resumed_bytes: u64,
}

/// A safe local file name from the upload's name: its last component only.
fn safe_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next()?.trim();
    (!base.is_empty() && base != "." && base != "..").then(|| base.to_string())
}

fn part_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// Hashes the bytes already in `part` (they were verified by nothing yet, but the whole
/// file is checked at the end).
fn hash_existing(part: &Path) -> std::io::Result<(Sha256, u64)> {
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut f = match std::fs::File::open(part) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((h, 0)),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok((h, n));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

/// Runs `uploader download`.
pub async fn download(
    args: &DownloadArgs,
    server: &str,
    token: Option<&str>,
    cancel: &CancellationToken,
) -> Result<Downloaded> {
    let client = Client::new(server, token)?;
    let id = args.id;
    let st = client.status(&id).await?;
    if st.state != UploadState::Completed {
        return Err(Error::Invalid(format!(
            "upload {id} is not completed yet ({} of {} received)",
            format_size(st.received_bytes),
            format_size(st.size)
        )));
    }
    let expected = st.sha256.ok_or_else(|| Error::Protocol {
        context: format!("status of {id}"),
        reason: "a completed upload without sha256".into(),
    })?;
    let out = match &args.output {
        Some(o) => o.clone(),
        None => {
            let name = st
                .filename
                .as_deref()
                .and_then(safe_name)
                .unwrap_or_else(|| id.to_string());
            let p = PathBuf::from(name);
            if p.exists() {
                return Err(Error::Invalid(format!(
                    "{} already exists; choose another name with -o",
                    p.display()
                )));
            }
            p
        }
    };
    let part = part_path(&out);
    let (mut hasher, mut have) = {
        let part2 = part.clone();
        tokio::task::spawn_blocking(move || hash_existing(&part2))
            .await
            .map_err(|e| Error::io(&out, std::io::Error::other(e)))?
            .map_err(|e| Error::io(&part, e))?
    };
    if have > st.size {
        hasher = Sha256::new();
        have = 0;
    }
    let resumed_bytes = have;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&part)
        .map_err(|e| Error::io(&part, e))?;
    file.set_len(have).map_err(|e| Error::io(&part, e))?;
    let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(have))
        .map_err(|e| Error::io(&part, e))?;

    let policy = RetryPolicy {
        retries: args.retries,
        ..RetryPolicy::default()
    };
    let mut rng = fastrand::Rng::new();
    let mut failures = 0u32;
    let resume_hint = format!(
        "uploader download {id} -o {} --server {}",
        crate::upload::shell_quote(&out.to_string_lossy()),
        crate::upload::shell_quote(client.base())
    );
    while have < st.size {
        let attempt = async {
            let resp = client.content(&id, have).await?;
            if resp.status() != reqwest::StatusCode::PARTIAL_CONTENT && have > 0 {
                // The server sent the whole file: start over.
                file.flush().map_err(|e| Error::io(&part, e))?;
                file.get_mut().set_len(0).map_err(|e| Error::io(&part, e))?;
                file.seek(std::io::SeekFrom::Start(0))
                    .map_err(|e| Error::io(&part, e))?;
                hasher = Sha256::new();
                have = 0;
            }
            let mut body = resp.bytes_stream();
            while let Some(piece) = body.next().await {
                let piece = piece.map_err(|e| Error::Transport {
                    context: format!("download {id}"),
                    reason: describe(&e),
                    retryable: true,
                })?;
                let room = st.size.saturating_sub(have) as usize;
                let piece = &piece[..piece.len().min(room)];
                file.write_all(piece).map_err(|e| Error::io(&part, e))?;
                hasher.update(piece);
                have += piece.len() as u64;
            }
            Ok::<(), Error>(())
        };
        let r = tokio::select! {
            r = attempt => r,
            () = cancel.cancelled() => {
                let _ = file.flush();
                return Err(Error::Interrupted { resume: resume_hint });
            }
        };
        match r {
            Ok(()) if have < st.size => {
                failures += 1;
                if failures > policy.retries {
                    return Err(Error::Transport {
                        context: format!("download {id}"),
                        reason: "the transfer kept ending early".into(),
                        retryable: false,
                    });
                }
            }
            Ok(()) => {}
            Err(e) if e.is_retryable() && failures < policy.retries => {
                failures += 1;
                let _ = file.flush();
                tokio::time::sleep(policy.delay(failures, e.retry_after(), &mut rng)).await;
            }
            Err(e) => {
                let _ = file.flush();
                return Err(e);
            }
        }
        if failures > 0 && have < st.size {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let file = file
        .into_inner()
        .map_err(|e| Error::io(&part, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(&part, e))?;
    drop(file);
    let got = Sha256Digest(hasher.finalize().into());
    if got != expected {
        let _ = std::fs::remove_file(&part);
        return Err(Error::Mismatch {
            file: out,
            local: got,
            server: Some(expected),
        });
    }
    std::fs::rename(&part, &out).map_err(|e| Error::io(&out, e))?;
    Ok(Downloaded {
        path: out,
        size: st.size,
        sha256: got,
        resumed_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_reduced_to_a_safe_base_name() {
        assert_eq!(safe_name("a.bin").as_deref(), Some("a.bin"));
        assert_eq!(safe_name("../../etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(safe_name("dir\\x.txt").as_deref(), Some("x.txt"));
        assert_eq!(safe_name(".."), None);
        assert_eq!(safe_name("a/"), None);
        assert_eq!(
            part_path(Path::new("/t/out.bin")),
            PathBuf::from("/t/out.bin.part")
        );
    }
}
