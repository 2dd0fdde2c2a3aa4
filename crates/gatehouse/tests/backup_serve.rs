//! The backup server as a user runs it: `gatehouse serve` with a
//! `[backup_server]` section, and Debian's restic against it on 127.0.0.1.
//! The server is killed with SIGKILL in the middle of a backup and started
//! again on the same port; restic retries (or is run again), and the
//! repository then checks (`restic check --read-data`) and restores byte for
//! byte: nothing half-written is ever visible under an object's name.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gatehouse_lab::loopback::{TempDir, free_port};
use support::{Process, show};

const REPO_PASSWORD: &str = "correct horse battery staple";
/// alice's HTTP password, and its htpasswd line: `{SHA}` + base64(SHA-1("secret")).
const PASSWORD: &str = "secret";
const HTPASSWD: &str = "alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n";

fn restic(url: &str, cache: &Path) -> Command {
    let mut cmd = Command::new("restic");
    cmd.arg("-r").arg(url).arg("--cache-dir").arg(cache);
    cmd.env("RESTIC_PASSWORD", REPO_PASSWORD)
        .env_remove("RESTIC_REPOSITORY")
        .env_remove("RESTIC_PASSWORD_FILE")
        .env_remove("RESTIC_PASSWORD_COMMAND");
    cmd
}

fn restic_ok(url: &str, cache: &Path, args: &[&str]) -> Output {
    let out = restic(url, cache)
        .args(args)
        .output()
        .expect("running restic (Debian package restic)");
    assert!(out.status.success(), "restic {args:?}: {}", show(&out));
    out
}

/// A child killed (SIGKILL, by pid) and reaped when dropped, also when the test fails.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// xorshift64*: the same bytes for the same seed.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Data files (packs) in the repository: how far a backup has got.
fn packs(repo: &Path) -> usize {
    let Ok(dirs) = std::fs::read_dir(repo.join("data")) else {
        return 0;
    };
    dirs.filter_map(|d| std::fs::read_dir(d.ok()?.path()).ok())
        .map(|files| files.count())
        .sum()
}

fn serve(config: &Path, log: PathBuf) -> Process {
    let mut server = Process::spawn(&["serve".as_ref(), "-c".as_ref(), config.as_os_str()], log);
    server.wait_for_log("serving", Duration::from_secs(10));
    server
}

#[test]
fn kill_9_during_a_backup_then_restart_and_the_repository_checks() {
    let tmp = TempDir::new("backup-serve-kill");
    let dir = tmp.path().join("repos");
    std::fs::create_dir_all(&dir).unwrap();
    let htpasswd = tmp.path().join("htpasswd");
    std::fs::write(&htpasswd, HTPASSWD).unwrap();
    let port = free_port().unwrap();
    let config = tmp.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[backup_server]\nlisten = \"127.0.0.1:{port}\"\ndir = \"{}\"\nhtpasswd = \"{}\"\n\
             private_repos = true\nappend_only = false\n",
            dir.display(),
            htpasswd.display()
        ),
    )
    .unwrap();

    // 160 MiB in 8 files of random bytes, and a few small ones: a backup of
    // some seconds on loopback, 40 packs or so.
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("small")).unwrap();
    for i in 0..8u64 {
        std::fs::write(
            data.join(format!("big-{i}.bin")),
            random_bytes(1000 + i, 20 << 20),
        )
        .unwrap();
    }
    for i in 0..50u64 {
        std::fs::write(
            data.join(format!("small/{i}.html")),
            random_bytes(i + 1, (i as usize) * 997),
        )
        .unwrap();
    }

    let mut server = serve(&config, tmp.path().join("serve-1.log"));
    let url = format!("rest:http://alice:{PASSWORD}@127.0.0.1:{port}/alice/files/");
    let cache = tmp.path().join("cache");
    let repo = dir.join("alice/files");
    restic_ok(&url, &cache, &["init"]);
    assert!(repo.join("config").is_file());

    let backup_log = tmp.path().join("backup-1.log");
    let mut backup = Guard(
        restic(&url, &cache)
            .args(["backup", "--host", "kill-test"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&backup_log).unwrap())
            .stderr(std::fs::File::create(tmp.path().join("backup-1.err")).unwrap())
            .spawn()
            .expect("starting restic backup"),
    );
    // Kill once a few packs are in, well before the end.
    let deadline = Instant::now() + Duration::from_secs(60);
    while packs(&repo) < 5 {
        assert!(
            backup.0.try_wait().unwrap().is_none(),
            "the backup ended before the kill"
        );
        assert!(Instant::now() < deadline, "no 5 packs in 60 s: {}", server.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    let at_kill = packs(&repo);
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(5));
    assert!(
        backup.0.try_wait().unwrap().is_none(),
        "the backup was over ({at_kill} packs) when the server was killed"
    );

    // Back on the same port; restic is still running and retries.
    let _server = serve(&config, tmp.path().join("serve-2.log"));
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = backup.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "restic backup still running after 180 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(tmp.path().join("backup-1.err")).unwrap_or_default();
    if !status.success() {
        // restic gave up on some file (it exits 3 when it could not read all,
        // 1 on a fatal error): a second run finishes the job, reusing what the
        // first stored.
        eprintln!("the interrupted backup ended with {status}; running it again:\n{err}");
        restic_ok(
            &url,
            &cache,
            &["backup", "--host", "kill-test", data.to_str().unwrap()],
        );
    }

    // No partial object under its final name: every pack is read and verified.
    let out = restic_ok(&url, &cache, &["check", "--read-data"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no errors were found"), "{}", show(&out));
    let out = restic_ok(&url, &cache, &["snapshots", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!list.as_array().unwrap().is_empty(), "{}", show(&out));

    let target = tmp.path().join("restore");
    restic_ok(
        &url,
        &cache,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    let diff = Command::new("diff")
        .arg("-r")
        .arg(&data)
        .arg(target.join(data.strip_prefix("/").unwrap()))
        .output()
        .expect("running diff");
    assert!(
        diff.status.success(),
        "the restored tree differs: {}",
        show(&diff)
    );
}
