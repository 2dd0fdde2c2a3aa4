//! The repository on disk: creating its layout, listing, deleting, and storing an upload so that
//! a crash never leaves half an object under its real name.
//!
//! An upload goes to a temp file next to its final place (same directory, so the rename is
//! atomic), is synced, then renamed (objects: their name is their hash, so two racing uploads
//! of one name carry the same bytes) or hard-linked (config: `link` fails if the name exists,
//! so a config is never replaced), and the directory is synced. A temp file is removed on any
//! error, also when the request is dropped midway ([`TempFile`] removes it when dropped).

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, IoSlice, Write};
use std::path::{Path, PathBuf};

use hyper::body::Bytes;
use sha2::{Digest, Sha256};

use crate::path::{OBJECT_TYPES, is_object_id};

/// Where an object of a kind lives in a repository: data objects under two hex digits.
pub fn object_path(repo: &Path, kind: &str, id: &str) -> PathBuf {
    if kind == "data" {
        repo.join(kind).join(&id[..2]).join(id)
    } else {
        repo.join(kind).join(id)
    }
}

/// Creates a repository's directories (not its config); an existing one is fine.
pub fn create_repo(repo: &Path) -> io::Result<()> {
    std::fs::create_dir_all(repo)?;
    for kind in OBJECT_TYPES {
        mkdir(&repo.join(kind))?;
    }
    for n in 0..256 {
        mkdir(&repo.join("data").join(format!("{n:02x}")))?;
    }
    Ok(())
}

fn mkdir(path: &Path) -> io::Result<()> {
    match std::fs::create_dir(path) {
        Err(error) if error.kind() != io::ErrorKind::AlreadyExists => Err(error),
        _ => Ok(()),
    }
}

/// The objects of a kind: names and sizes. Temp files and anything else that is not an
/// object's name are left out.
pub fn list(repo: &Path, kind: &str) -> io::Result<Vec<(String, u64)>> {
    let dir = repo.join(kind);
    let mut objects = Vec::new();
    if kind == "data" {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                list_files(&entry.path(), &mut objects)?;
            }
        }
    } else {
        list_files(&dir, &mut objects)?;
    }
    Ok(objects)
}

fn list_files(dir: &Path, objects: &mut Vec<(String, u64)>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_object_id(name) {
            continue;
        }
        match entry.metadata() {
            Ok(meta) if meta.is_file() => objects.push((name.to_string(), meta.len())),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// A random number, for temp names and multipart boundaries (std's hasher keys are random).
pub fn random() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(std::process::id() as u64);
    hasher.finish()
}

/// A temp file that is removed when dropped, unless it became the real file.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    done: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The open temp file and the running hash of what was written to it
/// (none when uploads are not verified).
pub struct Writer {
    file: File,
    hasher: Option<Sha256>,
}

impl Writer {
    /// Hashes and writes the pieces of the body as they came off the
    /// connection: one vectored write, no copy into a buffer of our own.
    pub fn write(&mut self, chunks: &[Bytes]) -> io::Result<()> {
        if let Some(hasher) = &mut self.hasher {
            for chunk in chunks {
                hasher.update(chunk);
            }
        }
        let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match self.file.write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// `path::split` only makes object paths inside a repository; anything
/// else reaching the store is a bug, answered with an error, not a panic.
fn not_an_object(target: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is not an object path", target.display()),
    )
}

/// Opens a temp file beside `target`, creating the directory if missing (as rest-server does);
/// `hash`: keep the SHA-256 of what is written, for [`commit`] to check.
pub fn begin(target: &Path, hash: bool) -> io::Result<(TempFile, Writer)> {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(not_an_object(target));
    };
    let name = name.to_string_lossy();
    let path = dir.join(format!(".{name}.tmp-{:016x}", random()));
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
    };
    let file = match open() {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            open()?
        }
        other => other?,
    };
    Ok((
        TempFile { path, done: false },
        Writer {
            file,
            hasher: hash.then(Sha256::new),
        },
    ))
}

/// How finishing an upload went wrong.
#[derive(Debug)]
pub enum CommitError {
    /// The content's SHA-256 is not its name.
    HashMismatch,
    /// The name exists already.
    Exists,
    Io(io::Error),
}

impl From<io::Error> for CommitError {
    fn from(error: io::Error) -> CommitError {
        CommitError::Io(error)
    }
}

/// Verifies the hash (when `expect` is given), syncs, and moves the temp file to `target`:
/// renamed when `replace_same` (content-addressed), linked otherwise (never replaces).
pub fn commit(
    mut temp: TempFile,
    writer: Writer,
    target: &Path,
    expect: Option<&str>,
    replace_same: bool,
) -> Result<(), CommitError> {
    let Writer { file, hasher } = writer;
    if let (Some(expect), Some(hasher)) = (expect, hasher) {
        let digest = hasher.finalize();
        if hex(&digest) != expect {
            return Err(CommitError::HashMismatch);
        }
    }
    file.sync_all()?;
    drop(file);
    if replace_same {
        std::fs::rename(&temp.path, target)?;
        temp.done = true;
    } else {
        match std::fs::hard_link(&temp.path, target) {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Err(CommitError::Exists),
            other => other?,
        }
        // The temp name goes when `temp` drops; the data stays under the real name.
    }
    let dir = target.parent().ok_or_else(|| not_an_object(target))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 15) as usize] as char);
    }
    out
}

/// Whether an I/O error means the disk (or the filesystem's quota) is full.
pub fn is_disk_full(error: &io::Error) -> bool {
    // ENOSPC, EDQUOT on Linux.
    matches!(error.raw_os_error(), Some(28) | Some(122)) || error.kind() == io::ErrorKind::StorageFull
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_file_goes_on_drop_and_commit_refuses_bad_hash() {
        let dir = std::env::temp_dir().join(format!("gatehouse-backupd-store-{}", random()));
        create_repo(&dir).unwrap();
        assert!(dir.join("data/ff").is_dir());
        let id = hex(&Sha256::digest(b"hello"));
        let target = object_path(&dir, "keys", &id);
        let (temp, mut writer) = begin(&target, true).unwrap();
        writer
            .write(&[Bytes::from_static(b"hel"), Bytes::from_static(b"lx")])
            .unwrap();
        assert!(matches!(
            commit(temp, writer, &target, Some(&id), true),
            Err(CommitError::HashMismatch)
        ));
        assert!(
            std::fs::read_dir(dir.join("keys")).unwrap().next().is_none(),
            "temp file removed"
        );
        let (temp, mut writer) = begin(&target, true).unwrap();
        writer
            .write(&[Bytes::from_static(b"hel"), Bytes::from_static(b"lo")])
            .unwrap();
        commit(temp, writer, &target, Some(&id), true).unwrap();
        assert_eq!(list(&dir, "keys").unwrap(), vec![(id, 5)]);
        let config = dir.join("config");
        let (temp, writer) = begin(&config, false).unwrap();
        commit(temp, writer, &config, None, false).unwrap();
        let (temp, writer) = begin(&config, false).unwrap();
        assert!(matches!(
            commit(temp, writer, &config, None, false),
            Err(CommitError::Exists)
        ));
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            6,
            "5 dirs and config, no temp files"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_verification_the_name_is_not_checked() {
        let dir = std::env::temp_dir().join(format!("gatehouse-backupd-noverify-{}", random()));
        create_repo(&dir).unwrap();
        let id = hex(&Sha256::digest(b"hello"));
        let target = object_path(&dir, "data", &id);
        let (temp, mut writer) = begin(&target, false).unwrap();
        writer.write(&[Bytes::from_static(b"not hello")]).unwrap();
        commit(temp, writer, &target, Some(&id), true).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"not hello");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
