//! The repositories under a directory, for `gatehouse status` and the like.

use std::io;
use std::path::Path;
use std::time::SystemTime;

/// A repository: its path relative to the directory, bytes stored, and when a file in it last
/// changed.
#[derive(Clone, Debug)]
pub struct RepoInfo {
    pub repo: String,
    pub bytes: u64,
    pub last_write: Option<SystemTime>,
}

/// Every repository (a directory with a `config` file) under `dir`, sorted by path. The
/// repository at `dir` itself, if any, is named "".
pub fn repositories(dir: &Path) -> io::Result<Vec<RepoInfo>> {
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, name)) = stack.pop() {
        if path.join("config").is_file() {
            let (bytes, last_write) = measure(&path)?;
            found.push(RepoInfo {
                repo: name,
                bytes,
                last_write,
            });
            continue;
        }
        let entries = match std::fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound && !name.is_empty() => continue,
            Err(error) => return Err(error),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                let child = entry.file_name().to_string_lossy().into_owned();
                let child_name = if name.is_empty() {
                    child
                } else {
                    format!("{name}/{child}")
                };
                stack.push((entry.path(), child_name));
            }
        }
    }
    found.sort_by(|a, b| a.repo.cmp(&b.repo));
    Ok(found)
}

fn measure(repo: &Path) -> io::Result<(u64, Option<SystemTime>)> {
    let mut bytes = 0;
    let mut last: Option<SystemTime> = None;
    crate::usage::walk_files(repo, |meta| {
        bytes += meta.len();
        if let Ok(modified) = meta.modified() {
            last = Some(last.map_or(modified, |last| last.max(modified)));
        }
    })?;
    Ok((bytes, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_repositories() {
        let dir = std::env::temp_dir().join(format!("gatehouse-backupd-repos-{}", crate::store::random()));
        crate::store::create_repo(&dir.join("alice/laptop")).unwrap();
        std::fs::write(dir.join("alice/laptop/config"), b"12345").unwrap();
        std::fs::write(dir.join("alice/laptop/keys/k"), b"123").unwrap();
        crate::store::create_repo(&dir.join("bob")).unwrap();
        std::fs::write(dir.join("bob/config"), b"1").unwrap();
        crate::store::create_repo(&dir.join("carol/empty")).unwrap();
        let repos = repositories(&dir).unwrap();
        let names: Vec<_> = repos.iter().map(|r| (r.repo.as_str(), r.bytes)).collect();
        assert_eq!(names, vec![("alice/laptop", 8), ("bob", 1)]);
        assert!(repos[0].last_write.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
