//! `[backup_server]`: every key read into the model, the htpasswd file checked
//! for its shape, and each mistake refused at its position.

mod common;

use std::path::PathBuf;

use common::{at, error, farm};
use gatehouse_lab::loopback::TempDir;

fn with_htpasswd(dir: &TempDir, text: &str) -> String {
    let path = dir.path().join("htpasswd");
    std::fs::write(&path, text).expect("htpasswd");
    path.display().to_string()
}

const BCRYPT: &str = "alice:$2y$05$ZT3tEKRjDZNdWj6bqhqq0.0ZeGgZPdm2KdDTz7C4/3UGPEs6tcGCi\n";

#[test]
fn every_key_is_read() {
    let dir = TempDir::new("backup-keys");
    let htpasswd = with_htpasswd(
        &dir,
        &format!("# users\n{BCRYPT}admin:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"),
    );
    let text = format!(
        r#"
[backup_server]
listen = "0.0.0.0:8000"
dir = "/var/lib/gatehouse/backups"
htpasswd = "{htpasswd}"
private_repos = true
append_only = true
verify_uploads = false
max_size = "1TiB"
access_log = "stdout"

[backup_server.users.admin]
append_only = false
quota = "200GiB"

[backup_server.users.alice]
quota = "10GiB"
"#
    );
    let backup = farm(&text).backup_server.expect("backup_server");
    assert_eq!(backup.listen.to_string(), "0.0.0.0:8000");
    assert_eq!(backup.dir.value, PathBuf::from("/var/lib/gatehouse/backups"));
    assert_eq!(
        backup.htpasswd.as_ref().map(|h| h.value.display().to_string()),
        Some(htpasswd)
    );
    assert!(backup.private_repos && backup.append_only && !backup.verify_uploads);
    assert_eq!(backup.max_size, Some(1 << 40));
    assert!(backup.access_log.is_some());
    let users: Vec<(&str, Option<bool>, Option<u64>)> = backup
        .users
        .iter()
        .map(|u| (u.name.as_str(), u.append_only, u.quota))
        .collect();
    assert_eq!(
        users,
        [
            ("admin", Some(false), Some(200 << 30)),
            ("alice", None, Some(10 << 30))
        ]
    );
}

#[test]
fn defaults_need_no_users() {
    let backup = common::farm_at(
        "/etc/gatehouse/gatehouse.toml",
        "[backup_server]\nlisten = \"127.0.0.1:8000\"\ndir = \"backups\"\n",
    )
    .backup_server
    .expect("backup_server");
    assert_eq!(backup.dir.value, PathBuf::from("/etc/gatehouse/backups"));
    assert!(backup.htpasswd.is_none() && backup.tls.is_none() && backup.users.is_empty());
    assert!(!backup.private_repos && !backup.append_only);
    assert!(backup.verify_uploads, "uploads are checked unless told otherwise");
    assert_eq!(backup.max_size, None);
}

#[test]
fn mistakes_are_refused_where_they_are() {
    let dir = TempDir::new("backup-mistakes");
    let htpasswd = with_htpasswd(&dir, &format!("{BCRYPT}bob:$apr1$xyz$abc\n"));
    let quoted = format!("\"{htpasswd}");
    let cases: Vec<(String, String, &str)> = vec![
        (
            "[backup_server]\nlisten = \"8000\"\ndir = \"/b\"\n".into(),
            "backup_server listen \"8000\" is not an ADDR:PORT".into(),
            "\"8000\"",
        ),
        (
            "[backup_server]\nlisten = \"127.0.0.1:8000\"\ndir = \"/b\"\nprivate_repos = true\n".into(),
            "private_repos needs htpasswd".into(),
            "true",
        ),
        (
            format!("[backup_server]\nlisten = \"127.0.0.1:8000\"\ndir = \"/b\"\nhtpasswd = \"{htpasswd}\"\n"),
            format!("{htpasswd}:2: not a user with a bcrypt or {{SHA}} hash"),
            &quoted,
        ),
        (
            "[backup_server]\nlisten = \"127.0.0.1:8000\"\ndir = \"/b\"\nhtpasswd = \"/nonexistent/htpasswd\"\n".into(),
            "cannot read htpasswd /nonexistent/htpasswd".into(),
            "\"/nonexistent",
        ),
        (
            "[backup_server]\nlisten = \"127.0.0.1:8000\"\ndir = \"/b\"\n[backup_server.users.x]\nquota = \"1GiB\"\n".into(),
            "backup_server users need htpasswd".into(),
            "users.x]",
        ),
        (
            "[backup_server]\nlisten = \"127.0.0.1:8000\"\ndir = \"/b\"\nquota = \"1GiB\"\n".into(),
            "unknown field `quota`".into(),
            "quota",
        ),
        (
            "[admin]\nlisten = \"127.0.0.1:8000\"\n[backup_server]\nlisten = \"0.0.0.0:8000\"\ndir = \"/b\"\n".into(),
            "backup_server listens on port 8000, as admin does".into(),
            "\"0.0.0.0:8000\"",
        ),
    ];
    for (text, message, needle) in &cases {
        let (got, position) = error(text);
        assert!(
            got.contains(message.as_str()),
            "for:\n{text}\ngot: {got}\nwanted: {message}"
        );
        assert_eq!(position, at(text, needle), "position of {message}");
    }
    let good = with_htpasswd(&dir, BCRYPT);
    let user = format!(
        "[backup_server]\nlisten = \"127.0.0.1:8000\"\ndir = \"/b\"\nhtpasswd = \"{good}\"\n[backup_server.users.\"a/b\"]\nquota = \"1GiB\"\n"
    );
    let (message, position) = error(&user);
    assert_eq!(message, "\"a/b\" is not a user name");
    assert_eq!(position, at(&user, "\"a/b\""));
}

#[test]
fn the_example_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/backup-server.toml");
    let text = std::fs::read_to_string(&path).expect("examples/backup-server.toml");
    // The example names /etc/gatehouse/htpasswd; check it against one of ours.
    let dir = TempDir::new("backup-example");
    let htpasswd = with_htpasswd(&dir, BCRYPT);
    let text = text.replace("/etc/gatehouse/htpasswd", &htpasswd);
    let backup = farm(&text).backup_server.expect("backup_server");
    assert!(backup.private_repos && backup.append_only);
    assert_eq!(backup.users.len(), 1);
}
