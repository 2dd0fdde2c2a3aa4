//! Bytes on disk, kept in memory: the whole directory (for `max_size`) and each top-level
//! directory (for a user's quota: with per-user repositories, `/USER/...` is USER's). Counted
//! by walking the directory at start, then moved by every write and delete.
//!
//! An upload charges its bytes as it writes them, so two uploads at once cannot both squeeze
//! under a limit; a failed upload gives its bytes back.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Usage {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: u64,
    top: HashMap<String, u64>,
}

/// The limits a write is held to: the top-level directory's quota and the whole directory's.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    pub quota: Option<u64>,
    pub max_size: Option<u64>,
}

impl Usage {
    /// Counts what is under `dir` now.
    pub fn scan(dir: &Path) -> io::Result<Usage> {
        let mut counts = Counts::default();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            let bytes = if meta.is_dir() {
                tree_size(&entry.path())?
            } else {
                meta.len()
            };
            counts.total += bytes;
            // Files right under dir belong to the repository at the root, which has no user.
            let key = if meta.is_dir() { name } else { String::new() };
            *counts.top.entry(key).or_default() += bytes;
        }
        Ok(Usage {
            inner: Mutex::new(counts),
        })
    }

    /// Bytes under one top-level directory.
    #[cfg(test)]
    pub fn of(&self, top: &str) -> u64 {
        crate::sync::lock(&self.inner).top.get(top).copied().unwrap_or(0)
    }

    /// Whether `bytes` more would still fit, without charging them.
    pub fn fits(&self, top: &str, bytes: u64, limits: Limits) -> bool {
        let counts = crate::sync::lock(&self.inner);
        counts.fits(top, bytes, limits)
    }

    /// Charges `bytes` to `top` if they fit; false (and nothing charged) if not.
    pub fn charge(&self, top: &str, bytes: u64, limits: Limits) -> bool {
        let mut counts = crate::sync::lock(&self.inner);
        if !counts.fits(top, bytes, limits) {
            return false;
        }
        counts.total += bytes;
        *counts.top.entry(top.to_string()).or_default() += bytes;
        true
    }

    /// Gives bytes back (a delete, or an upload that failed).
    pub fn release(&self, top: &str, bytes: u64) {
        let mut counts = crate::sync::lock(&self.inner);
        counts.total = counts.total.saturating_sub(bytes);
        if let Some(used) = counts.top.get_mut(top) {
            *used = used.saturating_sub(bytes);
        }
    }
}

impl Counts {
    fn fits(&self, top: &str, bytes: u64, limits: Limits) -> bool {
        let used = self.top.get(top).copied().unwrap_or(0);
        let under_quota = limits
            .quota
            .is_none_or(|quota| used.saturating_add(bytes) <= quota);
        let under_max = limits
            .max_size
            .is_none_or(|max| self.total.saturating_add(bytes) <= max);
        under_quota && under_max
    }
}

/// Bytes of the files under a directory (symbolic links are not followed).
pub fn tree_size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    walk_files(dir, |meta| total += meta.len())?;
    Ok(total)
}

/// Calls `each` with the metadata of every regular file under `dir`
/// (symbolic links are not followed; what vanishes meanwhile is skipped).
pub fn walk_files(dir: &Path, mut each: impl FnMut(&std::fs::Metadata)) -> io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Gone meanwhile (a temp file's directory, a repository being removed).
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for entry in entries {
            let entry = entry?;
            let meta = match entry.path().symlink_metadata() {
                Ok(meta) => meta,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                each(&meta);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_within_limits() {
        let usage = Usage::default();
        let limits = Limits {
            quota: Some(10),
            max_size: Some(15),
        };
        assert!(usage.charge("alice", 10, limits));
        assert!(!usage.charge("alice", 1, limits));
        assert!(usage.charge("bob", 5, limits));
        assert!(!usage.charge("bob", 1, limits), "max_size");
        usage.release("alice", 4);
        assert_eq!(usage.of("alice"), 6);
        assert!(usage.fits("bob", 4, limits));
    }
}
