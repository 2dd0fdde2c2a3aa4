//! Users and passwords from an Apache htpasswd file: bcrypt (`$2y$`, `$2b$`, `$2a$`) and `{SHA}`
//! (base64 of SHA-1), the two formats `htpasswd -B` and `htpasswd -s` write.
//!
//! bcrypt is slow on purpose (tens of milliseconds), and restic opens many connections, each
//! sending the same credentials; a verified user and password is therefore remembered, keyed by
//! a SHA-256 of both (never the password itself). A reload builds a new [`Htpasswd`], so the
//! memory of verified passwords goes with the old file.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// At most this many verified credentials are remembered; beyond, the memory starts afresh.
const CACHE_LIMIT: usize = 4096;

#[derive(Debug)]
enum Hash {
    Bcrypt(String),
    Sha1([u8; 20]),
}

/// A loaded htpasswd file.
#[derive(Debug)]
pub struct Htpasswd {
    users: HashMap<String, Hash>,
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl Htpasswd {
    /// Reads and checks the whole file; an error names the file and the line of a bad entry.
    pub fn load(path: &Path) -> io::Result<Htpasswd> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| io::Error::new(error.kind(), format!("htpasswd {}: {error}", path.display())))?;
        Htpasswd::parse(&text).map_err(|(line, why)| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("htpasswd {}:{line}: {why}", path.display()),
            )
        })
    }

    /// Parses htpasswd text; an error is the line number (from 1) and why.
    pub fn parse(text: &str) -> Result<Htpasswd, (usize, String)> {
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| (index + 1, why.to_string());
            let (user, hash) = line.split_once(':').ok_or_else(|| bad("expected USER:HASH"))?;
            if user.is_empty() {
                return Err(bad("empty user name"));
            }
            let hash = if let Some(sha) = hash.strip_prefix("{SHA}") {
                let digest = STANDARD
                    .decode(sha)
                    .map_err(|_| bad("{SHA} hash is not base64"))?;
                Hash::Sha1(digest.try_into().map_err(|_| bad("{SHA} hash is not 20 bytes"))?)
            } else if ["$2y$", "$2b$", "$2a$"]
                .iter()
                .any(|prefix| hash.starts_with(prefix))
            {
                if hash.len() != 60 {
                    return Err(bad("bcrypt hash is not 60 characters"));
                }
                Hash::Bcrypt(hash.to_string())
            } else {
                return Err(bad(
                    "unsupported hash (use bcrypt: htpasswd -B, or {SHA}: htpasswd -s)",
                ));
            };
            if users.insert(user.to_string(), hash).is_some() {
                return Err(bad(&format!("user {user:?} appears twice")));
            }
        }
        Ok(Htpasswd {
            users,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// Whether the user exists and the password is theirs. May take bcrypt's time: call it
    /// off the async threads.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let key = cache_key(user, password);
        if crate::sync::lock(&self.verified).contains(&key) {
            return true;
        }
        let ok = match hash {
            Hash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            Hash::Sha1(expected) => {
                let digest: [u8; 20] = Sha1::digest(password.as_bytes()).into();
                digest.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            }
        };
        if ok {
            let mut verified = crate::sync::lock(&self.verified);
            if verified.len() >= CACHE_LIMIT {
                verified.clear();
            }
            verified.insert(key);
        }
        ok
    }

    /// Whether the password would be answered from memory (no bcrypt needed).
    pub fn is_cached(&self, user: &str, password: &str) -> bool {
        crate::sync::lock(&self.verified).contains(&cache_key(user, password))
    }
}

fn cache_key(user: &str, password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(user.as_bytes());
    hasher.update([0u8]);
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

/// The user and password of a `Basic` Authorization header.
pub fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, value) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(value.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha_and_bcrypt() {
        let bcrypt = bcrypt::hash("b-secret", 4).unwrap();
        // htpasswd -nbs alice secret
        let text = format!("# users\nalice:{{SHA}}5en6G6MezRroT3XKqkdPOmY/BfQ=\n\nbob:{bcrypt}\n");
        let file = Htpasswd::parse(&text).unwrap();
        assert!(file.verify("alice", "secret"));
        assert!(!file.verify("alice", "Secret"));
        assert!(!file.is_cached("bob", "b-secret"));
        assert!(file.verify("bob", "b-secret"));
        assert!(file.is_cached("bob", "b-secret"));
        assert!(file.verify("bob", "b-secret"));
        assert!(!file.verify("bob", "wrong"));
        assert!(!file.verify("carol", "secret"));
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            Htpasswd::parse("a:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\nnocolon")
                .unwrap_err()
                .0,
            2
        );
        assert_eq!(Htpasswd::parse("a:$apr1$xyz$abc").unwrap_err().0, 1);
        assert_eq!(
            Htpasswd::parse("\n\n:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=")
                .unwrap_err()
                .0,
            3
        );
    }

    #[test]
    fn basic_header() {
        assert_eq!(
            basic_credentials("Basic YWxpY2U6c2U6Y3JldA=="),
            Some(("alice".into(), "se:cret".into()))
        );
        assert_eq!(basic_credentials("Bearer x"), None);
    }
}
