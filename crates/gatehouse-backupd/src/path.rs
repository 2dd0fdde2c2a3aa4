//! Turning a request path into a repository and what inside it is asked for.
//!
//! The rule is rest-server's: the repository is every segment before the first one that names a
//! part of a repository (`config`, `data`, `index`, `keys`, `locks`, `snapshots`). Each segment is
//! percent-decoded on its own and refused when it could leave the directory or name something
//! odd (`..`, `.`, empty, a slash or backslash, NUL), so no request ever reaches outside `dir`.

use std::path::{Path, PathBuf};

/// The kinds of objects a repository stores, each in a directory of its own.
pub const OBJECT_TYPES: [&str; 5] = ["data", "index", "keys", "locks", "snapshots"];

/// What a request path asks for, after the repository part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `/repo/`: the repository itself (only POST ?create=true means something).
    Repo,
    /// `/repo/config`.
    Config,
    /// `/repo/TYPE/`: a listing.
    List(&'static str),
    /// `/repo/TYPE/ID`.
    Object(&'static str, String),
}

/// A request path, split and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The repository's segments (empty: the repository at the root of dir).
    pub repo: Vec<String>,
    pub target: Target,
}

impl Parsed {
    /// The repository as a label and a relative path: segments joined by '/'.
    pub fn repo_name(&self) -> String {
        self.repo.join("/")
    }

    /// The repository's directory under `dir`.
    pub fn repo_dir(&self, dir: &Path) -> PathBuf {
        let mut path = dir.to_path_buf();
        path.extend(&self.repo);
        path
    }
}

/// Why a path was refused. rest-server answers 404 for both, and so do we.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// A segment that is unsafe or malformed.
    Invalid,
    /// Well-formed, but nothing the protocol knows.
    Unknown,
}

/// Splits and checks a raw (still percent-encoded) request path.
pub fn parse(raw: &str) -> Result<Parsed, Refused> {
    let rest = raw.strip_prefix('/').ok_or(Refused::Invalid)?;
    if rest.is_empty() {
        return Ok(Parsed {
            repo: Vec::new(),
            target: Target::Repo,
        });
    }
    let (rest, trailing_slash) = match rest.strip_suffix('/') {
        Some(rest) => (rest, true),
        None => (rest, false),
    };
    let segments: Vec<String> = rest.split('/').map(decode_segment).collect::<Result<_, _>>()?;
    let mut segments = segments;
    let split = segments
        .iter()
        .position(|s| s == "config" || OBJECT_TYPES.contains(&s.as_str()));
    let (repo, remainder) = match split {
        Some(at) => {
            let remainder = segments.split_off(at);
            (segments, remainder)
        }
        None => (segments, Vec::new()),
    };
    let target = match (remainder.as_slice(), trailing_slash) {
        ([], true) => Target::Repo,
        ([name], false) if name == "config" => Target::Config,
        ([kind], true) => Target::List(object_type(kind).ok_or(Refused::Unknown)?),
        ([kind, id], false) => {
            let kind = object_type(kind).ok_or(Refused::Unknown)?;
            if !is_object_id(id) {
                return Err(Refused::Unknown);
            }
            Target::Object(kind, id.clone())
        }
        _ => return Err(Refused::Unknown),
    };
    Ok(Parsed { repo, target })
}

fn object_type(name: &str) -> Option<&'static str> {
    OBJECT_TYPES.iter().copied().find(|kind| *kind == name)
}

/// An object's name: its SHA-256 in lowercase hex.
pub fn is_object_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Percent-decodes one segment and refuses anything that is not a plain directory name.
fn decode_segment(raw: &str) -> Result<String, Refused> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(Refused::Invalid)?;
            let hex = std::str::from_utf8(hex).map_err(|_| Refused::Invalid)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| Refused::Invalid)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let segment = String::from_utf8(out).map_err(|_| Refused::Invalid)?;
    let unsafe_name =
        segment.is_empty() || segment == "." || segment == ".." || segment.contains(['/', '\\', '\0']);
    if unsafe_name {
        Err(Refused::Invalid)
    } else {
        Ok(segment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn repo(segments: &[&str], target: Target) -> Result<Parsed, Refused> {
        Ok(Parsed {
            repo: segments.iter().map(|s| s.to_string()).collect(),
            target,
        })
    }

    #[test]
    fn splits_like_rest_server() {
        assert_eq!(parse("/"), repo(&[], Target::Repo));
        assert_eq!(parse("/r/"), repo(&["r"], Target::Repo));
        assert_eq!(parse("/a/b/r/"), repo(&["a", "b", "r"], Target::Repo));
        assert_eq!(parse("/r/config"), repo(&["r"], Target::Config));
        assert_eq!(parse("/config"), repo(&[], Target::Config));
        assert_eq!(parse("/a/b/keys/"), repo(&["a", "b"], Target::List("keys")));
        assert_eq!(
            parse(&format!("/r/data/{ID}")),
            repo(&["r"], Target::Object("data", ID.into()))
        );
        assert_eq!(parse("/r/my%20repo/"), repo(&["r", "my repo"], Target::Repo));
    }

    #[test]
    fn refuses_unknown_and_unsafe() {
        assert_eq!(parse("/r"), Err(Refused::Unknown));
        assert_eq!(parse("/r/config/"), Err(Refused::Unknown));
        assert_eq!(parse("/r/data"), Err(Refused::Unknown));
        assert_eq!(parse("/r/data/abc"), Err(Refused::Unknown));
        assert_eq!(
            parse(&format!("/r/data/{}", ID.to_uppercase())),
            Err(Refused::Unknown)
        );
        assert_eq!(parse(&format!("/r/data/{ID}/x")), Err(Refused::Unknown));
        for bad in [
            "/../r/",
            "/r/../config",
            "/%2e%2e/r/",
            "/%2E%2E/config",
            "/.%2e/config",
            "/a//r/",
            "/a%2fb/",
            "/a%5cb/",
            "/a\\b/",
            "/a%00/",
            "/./config",
            "r/",
            "/%zz/",
            "/%c3/",
        ] {
            assert_eq!(parse(bad), Err(Refused::Invalid), "{bad}");
        }
    }
}
