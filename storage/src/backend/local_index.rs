//! The listing index on local disk (see [`crate::index`] for the keys): each key is an
//! empty file at that path under `{root}/index/`, so that an owner's entries of one day
//! share a directory and a page reads a day or two of names, never every upload. Keys'
//! components have fixed widths, so a walk through sorted directories yields keys in
//! ascending byte order, as a listing of the same keys on S3 does.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The file of `key` under `root`, refusing anything that is not a key this crate makes.
fn path_of(root: &Path, key: &str) -> Result<PathBuf> {
    let ok = !key.is_empty()
        && key.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if !ok {
        return Err(Error::Corrupt(format!("{key:?} is not an index key")));
    }
    Ok(root.join(key))
}

/// Writes the entry `key` (not made durable: see [`crate::index`]).
pub fn put(root: &Path, key: &str) -> Result<()> {
    let path = path_of(root, key)?;
    let make = || -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map(drop)
    };
    match make() {
        // A removal emptied and dropped the day's directory meanwhile: make it again.
        Err(e) if e.kind() == ErrorKind::NotFound => make()?,
        other => other?,
    }
    Ok(())
}

/// Up to `limit` keys under `prefix`, ascending, each greater than `after`.
pub fn list(root: &Path, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
    let mut out = Vec::new();
    walk(&path_of(root, prefix)?, prefix, after, limit, &mut out)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    rel: &str,
    after: Option<&str>,
    limit: usize,
    out: &mut Vec<String>,
) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut names: Vec<(String, bool)> = entries
        .flatten()
        .filter_map(|e| {
            let is_dir = e.file_type().ok()?.is_dir();
            Some((e.file_name().into_string().ok()?, is_dir))
        })
        .collect();
    names.sort();
    for (name, is_dir) in names {
        if out.len() >= limit {
            break;
        }
        let key = format!("{rel}/{name}");
        if is_dir {
            // Every key under it sorts before `after`: skip it whole.
            let under = format!("{key}/");
            if after.is_some_and(|a| under.as_str() < a && !a.starts_with(&under)) {
                continue;
            }
            walk(&dir.join(&name), &key, after, limit, out)?;
        } else if after.is_none_or(|a| key.as_str() > a) {
            out.push(key);
        }
    }
    Ok(())
}

/// Removes the entry `key`, and its directory once empty.
pub fn delete(root: &Path, key: &str) -> Result<()> {
    let path = path_of(root, key)?;
    match fs::remove_file(&path) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    if let Some(parent) = path.parent().filter(|p| *p != root) {
        // Fails while other entries are there, which is the point.
        let _ = fs::remove_dir(parent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_in_byte_order_from_a_cursor_and_refuses_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let keys = [
            "o1/00001/00000000000000000005.a",
            "o1/00001/00000000000000000007.b",
            "o1/00002/00000000000000000001.c",
            "o1/00009/00000000000000000000.d",
            "o2/00001/00000000000000000001.e",
        ];
        for k in keys.iter().rev() {
            put(root, k).unwrap();
        }
        put(root, keys[0]).unwrap();
        assert_eq!(list(root, "o1", None, 10).unwrap(), keys[..4].to_vec());
        assert_eq!(list(root, "o1", None, 2).unwrap(), keys[..2].to_vec());
        assert_eq!(
            list(root, "o1", Some(keys[1]), 10).unwrap(),
            keys[2..4].to_vec()
        );
        assert_eq!(
            list(root, "o1", Some(keys[3]), 10).unwrap(),
            Vec::<String>::new()
        );
        assert!(list(root, "o3", None, 10).unwrap().is_empty());
        delete(root, keys[2]).unwrap();
        delete(root, keys[2]).unwrap();
        assert!(!root.join("o1/00002").exists(), "an emptied day goes");
        assert_eq!(list(root, "o1", Some(keys[1]), 10).unwrap(), vec![keys[3]]);
        for bad in ["../x", "/x", "a//b", "a/./b", "a b", ""] {
            assert!(put(root, bad).is_err(), "{bad:?}");
        }
    }
}
