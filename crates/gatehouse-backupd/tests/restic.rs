//! The backup server against the real restic client (Debian's restic 0.14) and
//! curl, over real sockets on 127.0.0.1: init, backup of a generated web root,
//! snapshots, restore (byte for byte), check --read-data, deduplication of a
//! second backup, append-only (globally and per user), authentication,
//! private repositories, quotas, hash checks on upload and path traversal.
//!
//! Each test starts its own server in-process (its own tokio runtime) on a
//! port the kernel picks, with its own temp dir; everything is stopped and
//! removed when the test ends, also when it fails.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use gatehouse_backupd::{BackupMetrics, BackupServer, Options, UserOptions};
use gatehouse_lab::loopback::TempDir;
use sha2::Digest as _;

/// The restic repository password (the encryption key's, not HTTP's).
const REPO_PASSWORD: &str = "correct horse battery staple";

// ---------------------------------------------------------------- the server

/// A backup server on 127.0.0.1 in its own runtime, its access log lines
/// collected; shut down when dropped.
struct Served {
    server: Option<BackupServer>,
    addr: SocketAddr,
    metrics: Arc<BackupMetrics>,
    log: Arc<Mutex<Vec<String>>>,
    rt: tokio::runtime::Runtime,
}

impl Served {
    fn start(mut options: Options) -> Served {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        options.access_log = Some(Arc::new(move |line: String| sink.lock().unwrap().push(line)));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building a tokio runtime");
        let metrics = BackupMetrics::new();
        let server = rt
            .block_on(BackupServer::start(options, metrics.clone()))
            .expect("starting the backup server");
        let addr = server.local_addr();
        Served {
            server: Some(server),
            addr,
            metrics,
            log,
            rt,
        }
    }

    /// restic's repository URL for `user`'s `path` (e.g. "alice/web").
    fn repo(&self, user: &str, password: &str, path: &str) -> String {
        format!("rest:http://{user}:{password}@{}/{path}/", self.addr)
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Bytes `user` wrote (object bodies accepted), over all repositories.
    fn written_by(&self, user: &str) -> u64 {
        self.metrics
            .snapshot()
            .iter()
            .filter(|s| s.user == user)
            .map(|s| s.bytes_written)
            .sum()
    }

    /// Requests answered with `code` so far.
    fn answered(&self, code: u16) -> u64 {
        self.metrics.requests().get(&code).copied().unwrap_or(0)
    }

    fn access_log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (up to 5 s) for an access log line that `matches`: the line may be
    /// written just after the response has gone out.
    fn wait_for_log(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(line) = self.access_log().into_iter().find(|l| matches(l)) {
                return line;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no access log line with {what} in:\n{}",
                self.access_log().join("\n")
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.rt.block_on(server.shutdown());
        }
    }
}

fn options(dir: &Path) -> Options {
    Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        dir: dir.to_path_buf(),
        htpasswd: None,
        private_repos: true,
        append_only: false,
        verify_uploads: true,
        users: HashMap::new(),
        max_size: None,
        access_log: None,
    }
}

/// Writes an htpasswd file: bcrypt (cost 4, for speed) for every user but
/// those whose name starts with "sha", who get `{SHA}base64(sha1)`.
fn htpasswd(path: &Path, users: &[(&str, &str)]) -> PathBuf {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut text = String::new();
    for (user, password) in users {
        let hash = if user.starts_with("sha") {
            let digest = sha1::Sha1::digest(password.as_bytes());
            format!(
                "{{SHA}}{}",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        } else {
            bcrypt::hash(password, 4).expect("bcrypt")
        };
        text.push_str(&format!("{user}:{hash}\n"));
    }
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// One test's world: its temp dir (repositories under `repos`), its server.
/// The server is declared first so it stops before the dir goes.
struct World {
    served: Served,
    tmp: TempDir,
}

impl World {
    /// A server over `TMP/repos` with the users alice, bob, admin (bcrypt) and
    /// shauser ({SHA}), all with the password "pw-" + name; `tune` adjusts the
    /// options.
    fn new(what: &str, tune: impl FnOnce(&mut Options)) -> World {
        let tmp = TempDir::new(what);
        let repos = tmp.path().join("repos");
        std::fs::create_dir_all(&repos).unwrap();
        let mut opts = options(&repos);
        opts.htpasswd = Some(htpasswd(
            &tmp.path().join("htpasswd"),
            &[
                ("alice", "pw-alice"),
                ("bob", "pw-bob"),
                ("admin", "pw-admin"),
                ("shauser", "pw-shauser"),
            ],
        ));
        tune(&mut opts);
        World {
            served: Served::start(opts),
            tmp,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn repos(&self) -> PathBuf {
        self.path("repos")
    }

    /// restic for `user` (password "pw-USER") on the repository `repo`
    /// ("alice/web"), with a cache dir of the user's in the temp dir.
    fn restic(&self, user: &str, repo: &str, args: &[&str]) -> Output {
        let url = self.served.repo(user, &format!("pw-{user}"), repo);
        restic(&url, &self.path(&format!("cache-{user}")), args)
    }

    fn restic_ok(&self, user: &str, repo: &str, args: &[&str]) -> Output {
        let out = self.restic(user, repo, args);
        assert!(
            out.status.success(),
            "restic {args:?} as {user} on {repo}: {}",
            show(&out)
        );
        out
    }

    /// A curl request; the HTTP status code.
    fn curl(&self, auth: Option<(&str, &str)>, method: &str, path: &str, body: Option<&Path>) -> u16 {
        let url = format!("{}{path}", self.served.base());
        curl_status(auth, method, &url, body, &self.path("curl-body"))
    }
}

fn restic(url: &str, cache: &Path, args: &[&str]) -> Output {
    Command::new("restic")
        .arg("-r")
        .arg(url)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env("RESTIC_PASSWORD", REPO_PASSWORD)
        .env_remove("RESTIC_REPOSITORY")
        .env_remove("RESTIC_PASSWORD_FILE")
        .env_remove("RESTIC_PASSWORD_COMMAND")
        .output()
        .expect("running restic (Debian package restic)")
}

fn curl_status(auth: Option<(&str, &str)>, method: &str, url: &str, body: Option<&Path>, out: &Path) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--noproxy", "*", "--max-time", "10", "--path-as-is"]);
    // -X HEAD would wait for a body that never comes.
    if method == "HEAD" {
        cmd.arg("-I");
    } else {
        cmd.args(["-X", method]);
    }
    cmd.arg("-o").arg(out).args(["-w", "%{http_code}"]);
    if let Some((user, password)) = auth {
        cmd.args(["-u", &format!("{user}:{password}")]);
    }
    if let Some(body) = body {
        cmd.args(["-H", "Content-Type: application/octet-stream", "--data-binary"]);
        cmd.arg(format!("@{}", body.display()));
    }
    let result = cmd.arg(url).output().expect("running curl");
    assert!(result.status.success(), "curl {method} {url}: {}", show(&result));
    String::from_utf8_lossy(&result.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {method} {url} printed no status: {}", show(&result)))
}

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---------------------------------------------------------------- the data

/// xorshift64*: the same bytes for the same seed, on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `len` bytes: random for binaries, or lines of words (compressible, as
    /// HTML, CSS and JS are) when `text`.
    fn bytes(&mut self, len: usize, text: bool) -> Vec<u8> {
        const WORDS: [&str; 16] = [
            "<div class=\"post\">",
            "</div>\n",
            "<p>",
            "</p>\n",
            "gatehouse",
            "backup",
            "restic",
            "lorem",
            "ipsum",
            "dolor",
            "sit",
            "amet",
            "function(){",
            "return",
            "color: #",
            "\n",
        ];
        let mut out = Vec::with_capacity(len + 32);
        while out.len() < len {
            let r = self.next();
            if text {
                out.extend_from_slice(WORDS[(r % 16) as usize].as_bytes());
                out.extend_from_slice(format!(" {} ", r >> 40).as_bytes());
            } else {
                out.extend_from_slice(&r.to_le_bytes());
            }
        }
        out.truncate(len);
        out
    }
}

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// A web root under `root`: `small` files of 0-64 KiB (half text, half
/// binary) in nested dirs, the given large ones (random bytes), an empty file,
/// an empty dir, and nginx's default html dir if it is installed. Returns its
/// size in bytes.
fn web_root(root: &Path, seed: u64, small: usize, large: &[usize]) -> u64 {
    let mut rng = Rng(seed | 1);
    let dirs = [
        "",
        "css",
        "js",
        "js/vendor",
        "img",
        "img/2024/11",
        "blog/2024/11/25",
        "blog/2023",
        "static/fonts",
        "downloads",
    ];
    let mut total = 0u64;
    for dir in dirs {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for i in 0..small {
        let dir = dirs[rng.below(dirs.len() as u64) as usize];
        let len = rng.below(64 * KIB as u64 + 1) as usize;
        let text = i % 2 == 0;
        let name = format!("page-{i}.{}", if text { "html" } else { "png" });
        std::fs::write(root.join(dir).join(name), rng.bytes(len, text)).unwrap();
        total += len as u64;
    }
    for (i, len) in large.iter().enumerate() {
        std::fs::write(
            root.join("downloads").join(format!("release-{i}.tar.gz")),
            rng.bytes(*len, false),
        )
        .unwrap();
        total += *len as u64;
    }
    std::fs::write(root.join("empty.txt"), b"").unwrap();
    std::fs::create_dir_all(root.join("uploads/empty")).unwrap();
    let nginx = Path::new("/usr/share/nginx/html");
    if nginx.is_dir() {
        total += copy_tree(nginx, &root.join("nginx-default"));
    }
    total
}

fn copy_tree(from: &Path, to: &Path) -> u64 {
    std::fs::create_dir_all(to).unwrap();
    let mut total = 0;
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            total += copy_tree(&entry.path(), &to.join(entry.file_name()));
        } else if kind.is_file() {
            total += std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    total
}

/// Every path under `root` (relative), dirs as `None`, files with their bytes'
/// SHA-256 and length.
fn tree(root: &Path) -> BTreeMap<PathBuf, Option<([u8; 32], u64)>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<([u8; 32], u64)>>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(
                    rel,
                    Some((sha2::Sha256::digest(&bytes).into(), bytes.len() as u64)),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The files of a repository (path relative to it -> size), locks left out:
/// a restic command takes and drops one even when it changes nothing else.
fn objects(repo: &Path) -> BTreeMap<PathBuf, u64> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, u64>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                if !rel.starts_with("locks") {
                    out.insert(rel, entry.metadata().unwrap().len());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(repo, repo, &mut out);
    out
}

fn bytes_of(objects: &BTreeMap<PathBuf, u64>) -> u64 {
    objects.values().sum()
}

/// Snapshots of `restic snapshots --json`: (id, paths).
fn snapshots(out: &Output) -> Vec<(String, Vec<String>)> {
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("restic snapshots --json: {e}: {}", show(out)));
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|s| {
            let id = s["id"].as_str().expect("an id").to_string();
            let paths = s["paths"]
                .as_array()
                .expect("paths")
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect();
            (id, paths)
        })
        .collect()
}

// ---------------------------------------------------------------- tests

#[test]
fn backup_snapshots_restore_check_and_a_second_backup_deduplicates() {
    let world = World::new("restic-roundtrip", |_| {});
    let web = world.path("www");
    let size = web_root(&web, 0x5eed_0001, 300, &[MIB, 3 * MIB, 8 * MIB + 12345, 20 * MIB]);
    let web_arg = web.to_str().unwrap();

    world.restic_ok("alice", "alice/web", &["init"]);
    let repo = world.repos().join("alice/web");
    assert!(
        repo.join("config").is_file(),
        "no config under {}",
        repo.display()
    );
    let empty = bytes_of(&objects(&repo));

    let written0 = world.served.written_by("alice");
    world.restic_ok("alice", "alice/web", &["backup", "--host", "web01", web_arg]);
    let written1 = world.served.written_by("alice");
    let first = objects(&repo);
    let first_bytes = bytes_of(&first) - empty;
    // Random data does not compress: the repository holds at least the files'
    // random half (the text compresses well under repository format 2).
    assert!(
        first_bytes > 30 * MIB as u64,
        "first backup stored only {first_bytes} bytes of {size}"
    );

    let list = snapshots(&world.restic_ok("alice", "alice/web", &["snapshots", "--json"]));
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].1, vec![web_arg.to_string()]);

    // Restore: restic recreates the absolute path under the target.
    let target = world.path("restore");
    world.restic_ok(
        "alice",
        "alice/web",
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    let restored = target.join(web.strip_prefix("/").unwrap());
    let (want, got) = (tree(&web), tree(&restored));
    assert_eq!(want.len(), got.len(), "different number of entries");
    assert!(want == got, "the restored tree differs");
    let diff = Command::new("diff")
        .arg("-r")
        .arg(&web)
        .arg(&restored)
        .output()
        .unwrap();
    assert!(diff.status.success(), "diff -r: {}", show(&diff));

    world.restic_ok("alice", "alice/web", &["check", "--read-data"]);

    // A few files change, one is added, one removed: the second backup adds
    // little to the repository.
    let mut rng = Rng(77);
    std::fs::write(web.join("css/page-new.css"), rng.bytes(20 * KIB, true)).unwrap();
    let mut changed = 0;
    for dir in ["", "css", "js"] {
        let file = std::fs::read_dir(web.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && p.metadata().unwrap().len() > 1024)
            .min()
            .expect("a file to change");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
        changed += 1;
    }
    assert_eq!(changed, 3);
    let big = web.join("downloads/release-3.tar.gz");
    let mut bytes = std::fs::read(&big).unwrap();
    bytes[10 * MIB..10 * MIB + 64].copy_from_slice(&[0x42; 64]);
    std::fs::write(&big, bytes).unwrap();
    let gone = std::fs::read_dir(web.join("img"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .unwrap();
    std::fs::remove_file(&gone).unwrap();

    world.restic_ok("alice", "alice/web", &["backup", "--host", "web01", web_arg]);
    let written2 = world.served.written_by("alice");
    let second = objects(&repo);
    let added = bytes_of(&second) - bytes_of(&first);
    // Nothing of the first backup was rewritten.
    for (path, len) in &first {
        assert_eq!(second.get(path), Some(len), "{} changed", path.display());
    }
    assert!(
        added * 10 < first_bytes,
        "the second backup added {added} bytes, not a small fraction of the first's {first_bytes}"
    );

    // The server's own count agrees: what it accepted for the second backup
    // (a lock, the changed chunks, an index, a snapshot) is a small fraction.
    let (w1, w2) = (written1 - written0, written2 - written1);
    assert!(
        w1 >= first_bytes,
        "the metrics say {w1} bytes written, the repository grew by {first_bytes}"
    );
    assert!(
        w2 >= added,
        "the metrics say {w2} bytes written, the repository grew by {added}"
    );
    assert!(w2 * 10 < w1, "second backup: {w2} bytes written, first: {w1}");

    let list = snapshots(&world.restic_ok("alice", "alice/web", &["snapshots", "--json"]));
    assert_eq!(list.len(), 2, "{list:?}");
    // The second snapshot restores the changed tree.
    let target2 = world.path("restore2");
    world.restic_ok(
        "alice",
        "alice/web",
        &["restore", &list[1].0, "--target", target2.to_str().unwrap()],
    );
    assert!(
        tree(&web) == tree(&target2.join(web.strip_prefix("/").unwrap())),
        "second restore differs"
    );
    world.restic_ok("alice", "alice/web", &["check", "--read-data"]);

    // Every request was logged.
    let log = world.served.access_log();
    assert!(log.len() > 20, "{} access log lines", log.len());
}

#[test]
fn append_only_keeps_every_object_and_a_per_user_override_can_prune() {
    let world = World::new("restic-append-only", |o| {
        o.append_only = true;
        o.private_repos = false;
        o.users.insert(
            "admin".into(),
            UserOptions {
                append_only: Some(false),
                quota: None,
            },
        );
    });
    let web = world.path("www");
    web_root(&web, 0x5eed_0002, 40, &[2 * MIB]);
    let web_arg = web.to_str().unwrap();
    world.restic_ok("alice", "alice/site", &["init"]);
    world.restic_ok("alice", "alice/site", &["backup", web_arg]);
    std::fs::write(web.join("index-2.html"), Rng(3).bytes(300 * KIB, false)).unwrap();
    world.restic_ok("alice", "alice/site", &["backup", web_arg]);
    let repo = world.repos().join("alice/site");
    let before = objects(&repo);
    assert_eq!(
        before.keys().filter(|p| p.starts_with("snapshots")).count(),
        2,
        "{before:?}"
    );

    // alice is append-only: the forget fails at its first delete (403).
    let out = world.restic("alice", "alice/site", &["forget", "--keep-last", "1", "--prune"]);
    assert!(
        !out.status.success(),
        "forget --prune succeeded in append-only mode: {}",
        show(&out)
    );
    assert!(stderr(&out).contains("403"), "{}", show(&out));
    assert_eq!(objects(&repo), before, "an append-only repository changed");
    world
        .served
        .wait_for_log("a 403 DELETE", |l| l.contains("DELETE") && l.contains(" 403 "));
    // Direct deletes are refused the same way, for every kind of object.
    for path in before.keys() {
        let url = format!("/alice/site/{}", object_url(path));
        assert_eq!(
            world.curl(Some(("alice", "pw-alice")), "DELETE", &url, None),
            403,
            "DELETE {url}"
        );
    }
    assert_eq!(objects(&repo), before, "an append-only repository changed");
    // ... but its own locks can go (restic could not work otherwise): the
    // forget above took one and dropped it.
    assert_eq!(
        std::fs::read_dir(repo.join("locks")).unwrap().count(),
        0,
        "a lock was left behind"
    );
    world.restic_ok("alice", "alice/site", &["check"]);

    // admin is not append-only (per-user override): the same prune works.
    world.restic_ok("admin", "alice/site", &["forget", "--keep-last", "1", "--prune"]);
    let after = objects(&repo);
    assert_eq!(
        after.keys().filter(|p| p.starts_with("snapshots")).count(),
        1,
        "{after:?}"
    );
    let list = snapshots(&world.restic_ok("admin", "alice/site", &["snapshots", "--json"]));
    assert_eq!(list.len(), 1);
    world.restic_ok("admin", "alice/site", &["check", "--read-data"]);
}

/// The URL path of a repository file: data/XX/ID on disk is data/ID in the protocol.
fn object_url(path: &Path) -> String {
    let parts: Vec<_> = path
        .components()
        .map(|c| c.as_os_str().to_str().unwrap())
        .collect();
    match parts.as_slice() {
        ["data", _, id] => format!("data/{id}"),
        parts => parts.join("/"),
    }
}

#[test]
fn wrong_or_missing_credentials_are_401() {
    let world = World::new("restic-auth", |_| {});
    world.restic_ok("alice", "alice/web", &["init"]);
    world.restic_ok("shauser", "shauser/web", &["init"]); // {SHA} entries work too
    let before = objects(&world.repos().join("alice/web"));

    let cache = world.path("cache-wrong");
    for (user, password) in [
        ("alice", "wrong"),
        ("alice", ""),
        ("mallory", "pw-alice"),
        ("shauser", "pw-alice"),
    ] {
        let url = world.served.repo(user, password, &format!("{user}/web"));
        let out = restic(&url, &cache, &["snapshots"]);
        assert!(
            !out.status.success(),
            "restic as {user}:{password} worked: {}",
            show(&out)
        );
        assert!(stderr(&out).contains("401"), "{}", show(&out));
        let out = restic(&url, &cache, &["init"]);
        assert!(
            !out.status.success(),
            "restic init as {user}:{password} worked: {}",
            show(&out)
        );
    }
    world.served.wait_for_log("a 401 for /alice/web/config", |l| {
        l.contains("/alice/web/config") && l.contains(" 401 ")
    });
    assert_eq!(world.curl(None, "GET", "/alice/web/config", None), 401);
    assert_eq!(
        world.curl(Some(("alice", "wrong")), "GET", "/alice/web/config", None),
        401
    );
    assert_eq!(
        world.curl(Some(("alice", "pw-alice")), "GET", "/alice/web/config", None),
        200
    );
    // Every restic run above was refused at least once, and the two curls.
    let refused = world.served.answered(401);
    assert!(
        refused >= 4 * 2 + 2,
        "{refused} requests answered 401: {:?}",
        world.served.metrics.requests()
    );
    assert_eq!(objects(&world.repos().join("alice/web")), before);
    assert!(!world.repos().join("mallory").exists());

    // The right user with the wrong repository password: the server lets it
    // in, restic cannot open a key.
    let url = world.served.repo("alice", "pw-alice", "alice/web");
    let out = Command::new("restic")
        .args(["-r", &url, "--no-cache", "snapshots"])
        .env("RESTIC_PASSWORD", "not the repository password")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("wrong password"), "{}", show(&out));
}

#[test]
fn a_private_repository_of_another_user_is_refused() {
    let world = World::new("restic-private", |_| {});
    let web = world.path("www");
    web_root(&web, 0x5eed_0003, 20, &[]);
    world.restic_ok("alice", "alice/web", &["init"]);
    world.restic_ok("alice", "alice/web", &["backup", web.to_str().unwrap()]);
    let repo = world.repos().join("alice/web");
    let before = objects(&repo);

    for args in [
        &["snapshots"][..],
        &["backup", web.to_str().unwrap()],
        &["forget", "--keep-last", "0"],
    ] {
        let out = world.restic("bob", "alice/web", args);
        assert!(
            !out.status.success(),
            "bob ran restic {args:?} on alice's repository: {}",
            show(&out)
        );
    }
    let out = world.restic("bob", "alice/other", &["init"]);
    assert!(
        !out.status.success(),
        "bob created a repository under alice: {}",
        show(&out)
    );
    assert!(!world.repos().join("alice/other").exists());
    // Also outside any user's dir, and at the root.
    let out = world.restic("bob", "shared", &["init"]);
    assert!(
        !out.status.success(),
        "bob created a repository outside /bob: {}",
        show(&out)
    );
    assert!(!world.repos().join("shared").exists());

    let bob = Some(("bob", "pw-bob"));
    let config_code = world.curl(bob, "GET", "/alice/web/config", None);
    // As rest-server: another user's repository is a 401, as a wrong password is.
    assert_eq!(config_code, 401, "GET alice's config as bob");
    for (method, path) in [
        ("GET", "/alice/web/keys/"),
        ("GET", "/alice/web/snapshots/"),
        ("HEAD", "/alice/web/config"),
        ("DELETE", "/alice/web/config"),
        ("POST", "/alice/web/?create=true"),
        ("POST", "/alice/new/?create=true"),
        ("GET", "/alice/"),
    ] {
        let code = world.curl(bob, method, path, None);
        assert_eq!(code, config_code, "{method} {path} as bob");
    }
    assert_eq!(objects(&repo), before, "bob changed alice's repository");
    assert!(!world.repos().join("alice/new").exists());
    // bob's own is fine.
    world.restic_ok("bob", "bob/web", &["init"]);
    world.restic_ok("alice", "alice/web", &["check"]);
}

const QUOTA: u64 = 4 * MIB as u64;

#[test]
fn over_quota_the_backup_fails_with_507_and_the_repository_still_checks() {
    let world = World::new("restic-quota", |o| {
        o.private_repos = false;
        o.users.insert(
            "alice".into(),
            UserOptions {
                append_only: None,
                quota: Some(QUOTA),
            },
        );
    });
    let small = world.path("small");
    web_root(&small, 0x5eed_0004, 20, &[]);
    world.restic_ok("alice", "alice/web", &["init"]);
    world.restic_ok("alice", "alice/web", &["backup", small.to_str().unwrap()]);
    let repo = world.repos().join("alice/web");
    let used = bytes_of(&objects(&repo));
    // Room for small writes, none for a pack of the big file (4 MiB or more).
    assert!(used < 2 * MIB as u64, "{used}");

    let big = world.path("big");
    web_root(&big, 0x5eed_0005, 10, &[12 * MIB]);
    let out = world.restic("alice", "alice/web", &["backup", big.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "a 12 MiB backup fit a 4 MiB quota: {}",
        show(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("507") || err.contains("Insufficient Storage"),
        "{}",
        show(&out)
    );
    world.served.wait_for_log("a 507", |l| l.contains(" 507 "));
    let total: u64 = std::fs::read_dir(world.repos().join("alice"))
        .unwrap()
        .map(|e| bytes_of(&objects(&e.unwrap().path())))
        .sum();
    assert!(
        total <= QUOTA,
        "alice's repositories hold {total} bytes, over her quota"
    );

    // What was stored before is intact: a user without a quota reads and
    // checks it (--no-lock: a lock is a write).
    world.restic_ok("admin", "alice/web", &["--no-lock", "check", "--read-data"]);
    let list = snapshots(&world.restic_ok("admin", "alice/web", &["--no-lock", "snapshots", "--json"]));
    assert_eq!(list.len(), 1, "{list:?}");
    // Small writes still fit.
    let tiny = world.path("tiny");
    std::fs::create_dir_all(&tiny).unwrap();
    std::fs::write(tiny.join("a.txt"), b"hello").unwrap();
    world.restic_ok("alice", "alice/web", &["backup", tiny.to_str().unwrap()]);
}

#[test]
fn an_upload_whose_hash_differs_from_its_name_is_400() {
    let world = World::new("restic-hash", |_| {});
    world.restic_ok("alice", "alice/web", &["init"]);
    let alice = Some(("alice", "pw-alice"));
    let body = world.path("blob");
    let bytes = Rng(11).bytes(100 * KIB, false);
    std::fs::write(&body, &bytes).unwrap();
    let good = hex(&sha2::Sha256::digest(&bytes));
    let mut other = bytes.clone();
    other[0] ^= 1;
    let bad = hex(&sha2::Sha256::digest(&other));

    for kind in ["data", "index", "snapshots"] {
        let code = world.curl(alice, "POST", &format!("/alice/web/{kind}/{bad}"), Some(&body));
        assert_eq!(code, 400, "POST {kind}/{bad} with another body");
        assert_eq!(
            world.curl(alice, "GET", &format!("/alice/web/{kind}/{bad}"), None),
            404
        );
    }
    // Nothing left behind (no temp file either) in the repository.
    let stray: Vec<_> = objects(&world.repos().join("alice/web"))
        .into_keys()
        .filter(|p| p.to_string_lossy().contains(&bad[..16]) || p.starts_with("data"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    // The right name is taken, once: the same name again is 403.
    assert_eq!(
        world.curl(alice, "POST", &format!("/alice/web/data/{good}"), Some(&body)),
        200
    );
    assert_eq!(
        world.curl(alice, "POST", &format!("/alice/web/data/{good}"), Some(&body)),
        403
    );
    assert_eq!(
        world.curl(alice, "GET", &format!("/alice/web/data/{good}"), None),
        200
    );
    assert_eq!(std::fs::read(world.path("curl-body")).unwrap(), bytes);
    world.served.wait_for_log("a 400", |l| l.contains(" 400 "));
}

#[test]
fn with_verify_uploads_off_a_wrong_name_is_stored_as_rest_server_no_verify_does() {
    let world = World::new("restic-noverify", |o| o.verify_uploads = false);
    world.restic_ok("alice", "alice/web", &["init"]);
    let alice = Some(("alice", "pw-alice"));
    let body = world.path("blob");
    std::fs::write(&body, b"these bytes are not what the name says").unwrap();
    let name = hex(&sha2::Sha256::digest(b"something else"));
    assert_eq!(
        world.curl(alice, "POST", &format!("/alice/web/data/{name}"), Some(&body)),
        200
    );
    assert_eq!(
        world.curl(alice, "GET", &format!("/alice/web/data/{name}"), None),
        200
    );
    assert_eq!(
        std::fs::read(world.path("curl-body")).unwrap(),
        b"these bytes are not what the name says"
    );
    // Still never overwritten.
    assert_eq!(
        world.curl(alice, "POST", &format!("/alice/web/data/{name}"), Some(&body)),
        403
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn traversal_attempts_are_refused_and_nothing_outside_dir_changes() {
    let world = World::new("restic-traversal", |_| {});
    world.restic_ok("alice", "alice/web", &["init"]);
    let canary = world.path("canary");
    std::fs::write(&canary, b"outside the repositories").unwrap();
    let alice = Some(("alice", "pw-alice"));
    let body = world.path("evil");
    std::fs::write(&body, b"evil").unwrap();
    let id = hex(&sha2::Sha256::digest(b"evil"));
    let before_outside = outside(&world);

    let paths = [
        "/../canary",
        "/alice/../canary",
        "/alice/../../canary",
        "/alice/web/../../../canary",
        "/alice/web/data/../../../../canary",
        "/%2e%2e/canary",
        "/alice/%2e%2e/%2e%2e/canary",
        "/alice/web/data/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fcanary",
        "/alice/web/data/..%2f..%2f..%2f..%2fcanary",
        "/alice%2f..%2f..%2fcanary",
        "/alice/web/keys/..%5c..%5c..%5c..%5ccanary",
        "/alice/web/data/%2e%2e",
        "/alice/web/config/../../../canary",
        "/alice/..%252f..%252fcanary",
        "/alice/web/data/%00canary",
        "/alice/web%00/config",
        "//canary",
        "/alice//../../canary",
    ];
    let mut codes = Vec::new();
    for path in paths {
        for method in ["GET", "HEAD", "DELETE"] {
            let code = world.curl(alice, method, path, None);
            assert!(
                (400..500).contains(&code),
                "{method} {path} answered {code}, not a refusal"
            );
            if method == "GET" {
                let got = std::fs::read(world.path("curl-body")).unwrap_or_default();
                assert!(
                    !got.windows(7).any(|w| w == b"outside"),
                    "GET {path} read the canary"
                );
            }
            codes.push(code);
        }
        let code = world.curl(alice, "POST", &format!("{path}-{id}"), Some(&body));
        assert!((400..500).contains(&code), "POST {path}-ID answered {code}");
        let code = world.curl(alice, "POST", path, Some(&body));
        assert!((400..500).contains(&code), "POST {path} answered {code}");
    }
    // Writes that would land outside: `..` as an object name.
    for path in [
        format!("/alice/web/data/..%2f..%2f..%2f{id}"),
        format!("/alice/web/../../{id}"),
        format!("/alice/web/%2e%2e/%2e%2e/{id}"),
        "/alice/web/../../../canary?create=true".to_string(),
        "/../../?create=true".to_string(),
    ] {
        let code = world.curl(alice, "POST", &path, Some(&body));
        assert!((400..500).contains(&code), "POST {path} answered {code}");
    }
    assert_eq!(std::fs::read(&canary).unwrap(), b"outside the repositories");
    // No file named after the id anywhere (the temp dir's parent included).
    assert!(!std::env::temp_dir().join(&id).exists());
    let named: Vec<_> = tree(world.tmp.path())
        .into_keys()
        .filter(|p| p.to_string_lossy().contains(&id))
        .collect();
    assert!(named.is_empty(), "{named:?}");
    assert_eq!(
        outside(&world),
        before_outside,
        "something outside the repositories dir changed"
    );
    // The repository is as init left it.
    world.restic_ok("alice", "alice/web", &["check"]);
}

/// Everything in the test's temp dir but the repositories, the curl output and
/// restic's caches: what a traversal could have written to or deleted.
fn outside(world: &World) -> BTreeMap<PathBuf, Option<([u8; 32], u64)>> {
    let mut all = tree(world.tmp.path());
    all.retain(|p, _| {
        !(p.starts_with("repos") || p.starts_with("curl-body") || p.to_string_lossy().starts_with("cache-"))
    });
    // Also the parent: the temp dir's siblings are not ours, but a file named
    // after the object id would show there.
    all
}
