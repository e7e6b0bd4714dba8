//! `status`, `list` and `cancel`: looking at and dropping uploads.

use std::path::Path;

use common::api::{UploadState, UploadStatus};
use common::units::format_size;
use common::UploadId;

use crate::args::Cli;
use crate::client::{state_name, Client};
use crate::error::{Error, Result};
use crate::journal::{Journal, Store};

/// An upload named on the command line: by id, or by a file this machine is uploading.
pub struct Target {
    /// Server holding it.
    pub client: Client,
    /// Its id.
    pub id: UploadId,
    /// The journal, when this machine knows it.
    pub journal: Option<Journal>,
}

/// Resolves `ID|FILE`: an id is looked up on `server`; a file through its journal (which
/// names the server it was uploaded to).
pub fn resolve(
    target: &str,
    server: &str,
    token: Option<&str>,
    store: &Store,
    completed_too: bool,
) -> Result<Target> {
    if let Ok(id) = target.parse::<UploadId>() {
        let journal = store.find_by_id(&id)?;
        return Ok(Target {
            client: Client::new(server, token)?,
            id,
            journal,
        });
    }
    let path = Path::new(target);
    let canon = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    let journal = match store.find_by_path(server, &canon)? {
        Some(j) => j,
        None => match store.find_by_path_any_server(&canon)? {
            Some(j) => j,
            None => {
                // A file uploaded completely from here: the newest such upload.
                let done = if completed_too {
                    store.find_done(server, &canon).or_else(|| {
                        store
                            .list_done()
                            .into_iter()
                            .rfind(|d| d.file.path == canon)
                    })
                } else {
                    None
                };
                let done = done.ok_or_else(|| {
                    Error::Invalid(format!(
                        "{target}: no {}upload of this file is known on this machine (pass an upload id instead)",
                        if completed_too { "" } else { "unfinished " }
                    ))
                })?;
                return Ok(Target {
                    client: Client::new(&done.server, token)?,
                    id: done.id,
                    journal: None,
                });
            }
        },
    };
    Ok(Target {
        client: Client::new(&journal.server, token)?,
        id: journal.id,
        journal: Some(journal),
    })
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Renders a status document for people.
pub fn describe_status(st: &UploadStatus, server: &str) -> String {
    let missing = common::ranges::count(&st.missing);
    let state = serde_json::to_value(st.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut out = format!(
        "id        {}\nstate     {state}\nprogress  {} of {} ({:.0}%), {missing} of {} chunks missing\nchunk     {}\n",
        st.id,
        format_size(st.received_bytes),
        format_size(st.size),
        percent(st.received_bytes, st.size),
        st.chunk_count,
        format_size(st.chunk_size),
    );
    if let Some(name) = &st.filename {
        out.push_str(&format!("filename  {name}\n"));
    }
    if let Some(rel) = st.metadata.get(common::relpath::RELATIVE_PATH_KEY) {
        out.push_str(&format!("path      {rel}\n"));
    }
    if let Some(sha) = &st.sha256 {
        out.push_str(&format!("sha256    {sha}\n"));
    }
    // RFC 3339, as on the wire.
    if let Some(exp) = serde_json::to_value(st).ok().and_then(|v| {
        v.get("expires_at")
            .and_then(|e| e.as_str().map(str::to_string))
    }) {
        out.push_str(&format!("expires   {exp}\n"));
    }
    out.push_str(&format!("url       {server}/v1/uploads/{}/content", st.id));
    out
}

/// `uploader status`.
pub async fn status(
    target: &str,
    server: &str,
    token: Option<&str>,
    store: &Store,
    json: bool,
) -> Result<()> {
    let t = resolve(target, server, token, store, true)?;
    let st = t.client.status(&t.id).await?;
    if json {
        let v = serde_json::to_string(&st).map_err(|e| Error::Invalid(e.to_string()))?;
        println!("{v}");
    } else {
        println!("{}", describe_status(&st, t.client.base()));
        if let Some(j) = &t.journal {
            println!("file      {}", j.file.path.display());
        }
    }
    Ok(())
}

/// `uploader list`: the journals, with the progress they recorded; with `all`, also the
/// files this machine uploaded completely.
pub fn list(store: &Store, json: bool, all: bool) -> Result<()> {
    let journals = store.list()?;
    let done = if all { store.list_done() } else { Vec::new() };
    if json {
        for j in &journals {
            let v = serde_json::json!({
                "id": j.id, "server": j.server, "file": j.file.path, "size": j.file.size,
                "acked_bytes": j.acked_bytes, "chunk_size": j.chunk_size,
                "relative_path": j.relative_path, "state": "uploading",
            });
            println!("{v}");
        }
        for d in &done {
            let v = serde_json::json!({
                "id": d.id, "server": d.server, "file": d.file.path, "size": d.file.size,
                "acked_bytes": d.file.size, "sha256": d.sha256,
                "relative_path": d.relative_path, "state": "completed",
            });
            println!("{v}");
        }
        return Ok(());
    }
    if journals.is_empty() && done.is_empty() {
        println!(
            "no unfinished uploads{}",
            if all { " and no completed ones" } else { "" }
        );
        return Ok(());
    }
    println!("{:<36}  {:>5}  {:>21}  FILE", "ID", "DONE", "BYTES");
    let rows = journals
        .iter()
        .map(|j| {
            (
                j.id,
                j.acked_bytes,
                j.file.size,
                &j.file.path,
                &j.relative_path,
                &j.server,
            )
        })
        .chain(done.iter().map(|d| {
            (
                d.id,
                d.file.size,
                d.file.size,
                &d.file.path,
                &d.relative_path,
                &d.server,
            )
        }));
    for (id, acked, size, path, rel, server) in rows {
        let name = match rel {
            Some(r) => format!("{} as {r}", path.display()),
            None => path.display().to_string(),
        };
        println!(
            "{:<36}  {:>4.0}%  {:>21}  {name} ({server})",
            id,
            percent(acked, size),
            format!("{}/{}", format_size(acked), format_size(size)),
        );
    }
    Ok(())
}

/// Uploads asked of the server a page at a time.
const REMOTE_PAGE: u64 = 1000;

/// Reads a state given on the command line (clap has checked the spelling).
pub fn parse_state(s: &str) -> Result<UploadState> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| Error::Usage(format!("{s:?} is not an upload state")))
}

/// `uploader list --remote`: the caller's uploads on the server, newest first, read a page
/// at a time and printed as they come (a table, or one status document a line with
/// `--json`), up to `limit`.
pub async fn list_remote(cli: &Cli, state: Option<UploadState>, limit: Option<u64>) -> Result<()> {
    let client = Client::new(&cli.server, cli.token.as_deref())?;
    let mut cursor: Option<String> = None;
    let mut shown = 0u64;
    let table = !cli.json && !cli.quiet;
    loop {
        let want = limit.map_or(REMOTE_PAGE, |l| (l - shown).min(REMOTE_PAGE));
        let page = client.list(state, want as usize, cursor.as_deref()).await?;
        for st in &page.uploads {
            if table && shown == 0 {
                println!(
                    "{:<36}  {:<10}  {:>10}  {:>5}  {:<20}  NAME",
                    "ID", "STATE", "SIZE", "DONE", "CREATED"
                );
            }
            if cli.json {
                let v = serde_json::to_string(st).map_err(|e| Error::Invalid(e.to_string()))?;
                println!("{v}");
            } else if cli.quiet {
                println!("{}", st.id);
            } else {
                println!("{}", remote_row(st));
            }
            shown += 1;
        }
        cursor = page.next;
        if cursor.is_none() || limit.is_some_and(|l| shown >= l) {
            break;
        }
    }
    if table && shown == 0 {
        println!(
            "no uploads on {}{}",
            client.base(),
            state.map_or(String::new(), |s| format!(" in state {}", state_name(s)))
        );
    }
    Ok(())
}

/// One upload as a row of the remote listing: its name is the relative path it was sent
/// with, else its file name.
fn remote_row(st: &UploadStatus) -> String {
    let name = st
        .metadata
        .get(common::relpath::RELATIVE_PATH_KEY)
        .or(st.filename.as_ref())
        .map_or("-", String::as_str);
    let created = st
        .created_at
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    format!(
        "{:<36}  {:<10}  {:>10}  {:>4.0}%  {:<20}  {name}",
        st.id,
        state_name(st.state),
        format_size(st.size),
        percent(st.received_bytes, st.size),
        created,
    )
}

/// `uploader cancel`: DELETE on the server, then forget it locally. An upload the server
/// no longer has is still forgotten locally; that is not an error when it was known here.
pub async fn cancel(
    target: &str,
    server: &str,
    token: Option<&str>,
    store: &Store,
    quiet: bool,
) -> Result<()> {
    let t = resolve(target, server, token, store, false)?;
    match t.client.cancel(&t.id).await {
        Ok(()) => {}
        Err(Error::Api {
            status: 404 | 410, ..
        }) if t.journal.is_some() => {
            if !quiet {
                eprintln!("uploader: upload {} was already gone from the server", t.id);
            }
        }
        Err(e) => return Err(e),
    }
    store.remove(&t.id)?;
    if !quiet {
        println!("cancelled {}", t.id);
    }
    Ok(())
}
