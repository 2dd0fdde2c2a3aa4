//! `[backup_server]`: where restic clients back up to, who may, and how much.
//!
//! The htpasswd file is read here too, for its shape only (`user:hash` lines
//! with a hash the server can check), so `gatehouse check` names a broken
//! line before a backup fails on it; the server reads it again at start and
//! on every reload.

use std::net::SocketAddr;

use toml::Spanned;

use crate::diagnostic::Diagnostic;
use crate::model::{Admin, BackupServer, BackupUser, Located, LogServer, Mode, Service};
use crate::raw;
use crate::validate::Validator;

impl Validator {
    pub(crate) fn backup_server(&mut self, raw: Spanned<raw::BackupServer>) -> Option<BackupServer> {
        let raw = raw.into_inner();
        let listen = match raw.listen.get_ref().parse::<SocketAddr>() {
            Ok(addr) if addr.port() != 0 => Some(Located::new(addr, raw.listen.span())),
            _ => {
                self.error(
                    Diagnostic::new(format!(
                        "backup_server listen \"{}\" is not an ADDR:PORT",
                        raw.listen.get_ref()
                    ))
                    .at(raw.listen.span())
                    .help("write an address and a port, e.g. \"0.0.0.0:8000\" (rest-server's port)"),
                );
                None
            }
        };
        let tls = raw.tls.and_then(|pair| {
            let pair = pair.into_inner();
            self.certificate(pair.cert, pair.key)
        });
        let dir = if raw.dir.get_ref().trim().is_empty() {
            self.error(
                Diagnostic::new("backup_server dir is empty")
                    .at(raw.dir.span())
                    .help("give the directory repositories are kept in, e.g. \"/var/lib/gatehouse/backups\""),
            );
            None
        } else {
            Some(Located::new(self.path(raw.dir.get_ref()), raw.dir.span()))
        };
        let htpasswd = raw.htpasswd.and_then(|h| self.htpasswd(h));
        let private_repos = raw.private_repos.as_ref().is_some_and(|p| *p.get_ref());
        if let Some(private) = &raw.private_repos
            && *private.get_ref()
            && htpasswd.is_none()
        {
            self.error(
                Diagnostic::new("private_repos needs htpasswd")
                    .at(private.span())
                    .help("without users there is no owner to keep a repository private for: add htpasswd = \"/etc/gatehouse/htpasswd\""),
            );
        }
        let append_only = raw.append_only.is_some_and(|a| a.into_inner());
        let verify_uploads = raw.verify_uploads.is_none_or(|v| v.into_inner());
        let max_size = raw.max_size.and_then(|s| self.size(s, "max_size"));
        let access_log = raw.access_log.and_then(|a| self.access_log(a));
        let mut users = Vec::new();
        if let Some(table) = raw.users {
            if htpasswd.is_none() {
                self.error(
                    Diagnostic::new("backup_server users need htpasswd")
                        .at(table.span())
                        .help("per-user settings apply to users who log in: add htpasswd = \"/etc/gatehouse/htpasswd\""),
                );
            }
            for (name, user) in table.into_inner() {
                if name.get_ref().is_empty() || name.get_ref().contains(['/', ':']) {
                    self.error(
                        Diagnostic::new(format!("\"{}\" is not a user name", name.get_ref()))
                            .at(name.span())
                            .help("a user is named as in the htpasswd file: no '/' or ':'"),
                    );
                    continue;
                }
                let user = user.into_inner();
                let quota = user.quota.and_then(|q| self.size(q, "quota"));
                users.push(BackupUser {
                    name: Located::new(name.get_ref().clone(), name.span()),
                    append_only: user.append_only.map(|a| a.into_inner()),
                    quota,
                });
            }
        }
        Some(BackupServer {
            listen: listen?,
            tls,
            dir: dir?,
            htpasswd,
            private_repos,
            append_only,
            verify_uploads,
            max_size,
            access_log,
            users,
        })
    }

    /// The file exists and each line is `user:hash` with a bcrypt or {SHA}
    /// hash (what rest-server and the server here can check).
    fn htpasswd(&mut self, raw: Spanned<String>) -> Option<Located<std::path::PathBuf>> {
        let path = self.path(raw.get_ref());
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                self.error(
                    Diagnostic::new(format!("cannot read htpasswd {}: {e}", path.display()))
                        .at(raw.span())
                        .help("create it with `htpasswd -B -c FILE USER` (apache2-utils), or fix the path"),
                );
                return None;
            }
        };
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let supported = line.split_once(':').is_some_and(|(user, hash)| {
                !user.is_empty()
                    && (hash.starts_with("$2y$")
                        || hash.starts_with("$2b$")
                        || hash.starts_with("$2a$")
                        || hash.starts_with("{SHA}"))
            });
            if !supported {
                self.error(
                    Diagnostic::new(format!(
                        "{}:{}: not a user with a bcrypt or {{SHA}} hash",
                        path.display(),
                        number + 1
                    ))
                    .at(raw.span())
                    .help("write USER:HASH lines with `htpasswd -B FILE USER` (bcrypt); MD5 ($apr1$) and crypt hashes are not accepted"),
                );
                return None;
            }
        }
        Some(Located::new(path, raw.span()))
    }

    /// The backup port against every other TCP listener of the file.
    pub(crate) fn backup_port_free(
        &mut self,
        backup: &BackupServer,
        services: &[Service],
        admin: Option<&Admin>,
        log: Option<&LogServer>,
    ) {
        let port = backup.listen.port();
        let mut others: Vec<(String, std::ops::Range<usize>)> = services
            .iter()
            .filter(|s| s.mode != Mode::Nat && s.bind_addr().port() == port)
            .map(|s| (format!("service \"{}\"", s.name.value), s.listen.span.clone()))
            .collect();
        if let Some(admin) = admin.filter(|a| a.listen.port() == port) {
            others.push(("admin".into(), admin.listen.span.clone()));
        }
        if let Some(log) = log {
            for listen in log.tcp.iter().chain(log.tls.as_ref().map(|t| &t.listen)) {
                if listen.port() == port {
                    others.push(("log_server".into(), listen.span.clone()));
                }
            }
        }
        for (other, span) in others {
            self.error(
                Diagnostic::new(format!("backup_server listens on port {port}, as {other} does"))
                    .at(backup.listen.span.clone())
                    .related(span, format!("{other} listens here"))
                    .help("give the backup server its own port, e.g. 8000 (rest-server's)"),
            );
        }
    }
}
