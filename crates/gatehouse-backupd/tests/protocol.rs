//! The backup server over real sockets, spoken to with curl (and a raw socket where curl is too
//! polite): every status code of restic's REST protocol as rest-server answers it, plus what
//! gatehouse adds (append-only and quotas per user, reload, access log, metrics).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_backupd::{BackupMetrics, BackupServer, Options, UserOptions, repositories};
use gatehouse_lab::loopback::TempDir;
use sha2::{Digest, Sha256};

const V2: &str = "application/vnd.x.restic.rest.v2";

fn id_of(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A server under test, its directories, and what it logged.
struct Harness {
    server: Option<BackupServer>,
    metrics: Arc<BackupMetrics>,
    /// The temp dir: `srv/` is the server's dir, anything else is outside it.
    root: TempDir,
    options: Options,
    log: Arc<Mutex<Vec<String>>>,
    scheme: &'static str,
}

fn options(root: &TempDir) -> Options {
    Options {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        tls: None,
        dir: root.path().join("srv"),
        htpasswd: None,
        private_repos: false,
        append_only: false,
        verify_uploads: true,
        users: HashMap::new(),
        max_size: None,
        access_log: None,
    }
}

impl Harness {
    async fn start(what: &str, configure: impl FnOnce(&mut Options, &Path)) -> Harness {
        let root = TempDir::new(what);
        let mut options = options(&root);
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        options.access_log = Some(Arc::new(move |line: String| sink.lock().unwrap().push(line)));
        configure(&mut options, root.path());
        let metrics = BackupMetrics::new();
        let server = BackupServer::start(options.clone(), metrics.clone())
            .await
            .unwrap();
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        Harness {
            server: Some(server),
            metrics,
            root,
            options,
            log,
            scheme,
        }
    }

    fn dir(&self) -> PathBuf {
        self.options.dir.clone()
    }

    fn url(&self, path: &str) -> String {
        let port = self.server.as_ref().unwrap().local_addr().port();
        if self.scheme == "https" {
            format!("https://localhost:{port}{path}")
        } else {
            format!("http://127.0.0.1:{port}{path}")
        }
    }

    /// Runs curl with `args` against `path`; the status, headers (lowercased names) and body.
    fn curl(&self, args: &[&str], path: &str) -> Reply {
        let port = self.server.as_ref().unwrap().local_addr().port();
        let resolve = format!("localhost:{port}:127.0.0.1");
        let mut command = Command::new("curl");
        command.args([
            "-s",
            "-i",
            "--path-as-is",
            "--max-time",
            "20",
            "--resolve",
            &resolve,
        ]);
        command.args(args).arg(self.url(path));
        let output = command.output().expect("running curl");
        Reply::parse(&output.stdout)
    }

    fn get(&self, path: &str) -> Reply {
        self.curl(&[], path)
    }

    fn post(&self, path: &str, body: &[u8]) -> Reply {
        self.post_with(&[], path, body)
    }

    fn post_with(&self, args: &[&str], path: &str, body: &[u8]) -> Reply {
        let file = self.root.path().join(format!("upload-{}", id_of(body)));
        std::fs::write(&file, body).unwrap();
        let data = format!("@{}", file.display());
        let mut all = vec![
            "-X",
            "POST",
            "--data-binary",
            &data,
            "-H",
            "Content-Type: application/octet-stream",
        ];
        all.extend_from_slice(args);
        let reply = self.curl(&all, path);
        std::fs::remove_file(&file).unwrap();
        reply
    }

    fn method(&self, method: &str, path: &str) -> Reply {
        if method == "HEAD" {
            self.curl(&["-I"], path)
        } else {
            self.curl(&["-X", method], path)
        }
    }

    fn create(&self, repo: &str, auth: &[&str]) {
        let mut args = vec!["-X", "POST"];
        args.extend_from_slice(auth);
        assert_eq!(self.curl(&args, &format!("/{repo}/?create=true")).status, 200);
    }

    async fn stop(mut self) {
        tokio::time::timeout(Duration::from_secs(15), self.server.take().unwrap().shutdown())
            .await
            .unwrap();
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no response from the server: {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        Reply {
            status,
            headers,
            body: raw[end + 4..].to_vec(),
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Every file under a directory, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_and_config() {
    let h = Harness::start("create", |_, _| {}).await;
    // Without create=true: 400, as rest-server; other methods on the repo: 405.
    assert_eq!(h.method("POST", "/r/").status, 400);
    let reply = h.method("GET", "/r/");
    assert_eq!((reply.status, reply.header("allow")), (405, "POST"));
    h.create("r", &[]);
    h.create("r", &[]);
    h.create("a/b/nested", &[]);
    let dir = h.dir();
    for sub in [
        "data",
        "keys",
        "locks",
        "snapshots",
        "index",
        "data/00",
        "data/ff",
    ] {
        assert!(dir.join("r").join(sub).is_dir(), "{sub}");
    }
    assert!(!dir.join("r/config").exists());
    assert!(dir.join("a/b/nested/data/7f").is_dir());

    assert_eq!(h.method("HEAD", "/r/config").status, 404);
    assert_eq!(h.get("/r/config").status, 404);
    assert_eq!(h.post("/r/config", b"the config").status, 200);
    assert_eq!(
        h.post("/r/config", b"another").status,
        403,
        "a config is never replaced"
    );
    let reply = h.get("/r/config");
    assert_eq!((reply.status, reply.text().as_str()), (200, "the config"));
    let reply = h.method("HEAD", "/r/config");
    assert_eq!((reply.status, reply.header("content-length")), (200, "10"));
    assert_eq!(h.post("/a/b/nested/config", b"nested").status, 200);
    assert_eq!(h.get("/a/b/nested/config").text(), "nested");
    let reply = h.method("PUT", "/r/config");
    assert_eq!(
        (reply.status, reply.header("allow")),
        (405, "HEAD, GET, POST, DELETE")
    );
    assert_eq!(h.get("/r").status, 404);
    assert_eq!(h.get("/r/config/").status, 404);
    assert_eq!(h.method("DELETE", "/r/config").status, 200);
    assert_eq!(h.method("DELETE", "/r/config").status, 404);
    assert_eq!(h.get("/r/config").status, 404);

    let reply = h.get("/nowhere/config");
    assert_eq!(reply.status, 404);
    assert_eq!(reply.text(), "Not Found\n");
    assert_eq!(reply.header("content-type"), "text/plain; charset=utf-8");

    let repos = repositories(&dir).unwrap();
    assert_eq!(
        repos.iter().map(|r| r.repo.as_str()).collect::<Vec<_>>(),
        vec!["a/b/nested"]
    );
    assert_eq!(repos[0].bytes, 6);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_lists_and_ranges() {
    let h = Harness::start("objects", |_, _| {}).await;
    h.create("r", &[]);
    let data = b"0123456789".repeat(1000);
    let id = id_of(&data);
    let path = format!("/r/data/{id}");
    assert_eq!(h.method("HEAD", &path).status, 404);
    assert_eq!(h.post(&path, &data).status, 200);
    assert!(h.dir().join(format!("r/data/{}/{id}", &id[..2])).is_file());
    assert_eq!(h.post(&path, &data).status, 403, "objects are never overwritten");

    // A body whose hash is not its name: 400, and nothing stays (for every type).
    let other = id_of(b"other");
    for kind in ["data", "keys", "locks", "snapshots", "index"] {
        assert_eq!(
            h.post(&format!("/r/{kind}/{other}"), b"not other").status,
            400,
            "{kind}"
        );
    }
    assert_eq!(h.post(&format!("/r/keys/{}", id_of(b"key")), b"key").status, 200);
    let in_repo = files(&h.dir().join("r"));
    assert_eq!(
        in_repo,
        vec![
            format!("data/{}/{id}", &id[..2]),
            format!("keys/{}", id_of(b"key"))
        ]
    );

    // Ids that are not lowercase hex of 64: 404 as rest-server (its path pattern does not match).
    assert_eq!(h.post("/r/data/abc", b"x").status, 404);
    assert_eq!(h.get(&format!("/r/data/{}", id.to_uppercase())).status, 404);
    assert_eq!(h.get("/r/data/x/").status, 404);
    // A path without a part of a repository names a repository: 405 for GET, as rest-server.
    assert_eq!(h.get("/r/other/").status, 405);

    let reply = h.get("/r/data/");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "application/vnd.x.restic.rest.v1");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap(),
        serde_json::json!([id])
    );
    let reply = h.curl(&["-H", &format!("Accept: {V2}")], "/r/data/");
    assert_eq!(reply.header("content-type"), V2);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap(),
        serde_json::json!([{"name": id, "size": 10000}])
    );
    assert_eq!(h.get("/r/locks/").text(), "[]");
    assert_eq!(h.method("POST", "/r/locks/").status, 405);
    assert_eq!(h.get("/missing/locks/").status, 404);

    let reply = h.method("HEAD", &path);
    assert_eq!((reply.status, reply.header("content-length")), (200, "10000"));
    let reply = h.get(&path);
    assert_eq!((reply.status, reply.header("accept-ranges")), (200, "bytes"));
    assert_eq!(reply.body, data);

    let reply = h.curl(&["-H", "Range: bytes=10-14"], &path);
    assert_eq!(reply.status, 206);
    assert_eq!(reply.header("content-range"), "bytes 10-14/10000");
    assert_eq!(reply.body, b"01234");
    let reply = h.curl(&["-H", "Range: bytes=-3"], &path);
    assert_eq!(
        (reply.status, reply.header("content-range")),
        (206, "bytes 9997-9999/10000")
    );
    assert_eq!(reply.body, b"789");
    let reply = h.curl(&["-H", "Range: bytes=9990-"], &path);
    assert_eq!(reply.body, b"0123456789");
    let reply = h.curl(&["-H", "Range: bytes=0-1,5-6"], &path);
    assert_eq!(reply.status, 206);
    assert!(
        reply
            .header("content-type")
            .starts_with("multipart/byteranges; boundary=")
    );
    let text = reply.text();
    assert!(
        text.contains(
            "Content-Range: bytes 0-1/10000\r\nContent-Type: application/octet-stream\r\n\r\n01\r\n--"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "Content-Range: bytes 5-6/10000\r\nContent-Type: application/octet-stream\r\n\r\n56\r\n--"
        ),
        "{text}"
    );
    assert_eq!(reply.header("content-length"), reply.body.len().to_string());
    for bad in ["bytes=10000-", "bytes=5-2", "pages=1-2"] {
        let reply = h.curl(&["-H", &format!("Range: {bad}")], &path);
        assert_eq!(
            (reply.status, reply.header("content-range")),
            (416, "bytes */10000"),
            "{bad}"
        );
    }

    assert_eq!(h.method("DELETE", &path).status, 200);
    assert_eq!(h.method("DELETE", &path).status, 404);
    assert_eq!(h.get(&path).status, 404);
    assert_eq!(h.method("PATCH", &path).status, 405);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn append_only_and_per_user_override() {
    let h = Harness::start("append", |o, root| {
        let file = root.join("htpasswd");
        std::fs::write(
            &file,
            "alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\nbob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n",
        )
        .unwrap();
        o.htpasswd = Some(file);
        o.append_only = true;
        o.users.insert(
            "bob".into(),
            UserOptions {
                append_only: Some(false),
                quota: None,
            },
        );
    })
    .await;
    let alice = ["-u", "alice:secret"];
    let bob = ["-u", "bob:secret"];
    h.create("shared", &alice);
    assert_eq!(h.post_with(&alice, "/shared/config", b"cfg").status, 200);
    let data = id_of(b"data");
    let lock = id_of(b"lock");
    assert_eq!(
        h.post_with(&alice, &format!("/shared/data/{data}"), b"data")
            .status,
        200
    );
    assert_eq!(
        h.post_with(&alice, &format!("/shared/locks/{lock}"), b"lock")
            .status,
        200
    );
    assert_eq!(
        h.curl(
            &["-X", "DELETE", "-u", "alice:secret"],
            &format!("/shared/data/{data}")
        )
        .status,
        403
    );
    assert_eq!(
        h.curl(&["-X", "DELETE", "-u", "alice:secret"], "/shared/config")
            .status,
        403
    );
    assert_eq!(
        h.curl(
            &["-X", "DELETE", "-u", "alice:secret"],
            &format!("/shared/locks/{lock}")
        )
        .status,
        200
    );
    assert!(
        h.dir()
            .join(format!("shared/data/{}/{data}", &data[..2]))
            .is_file()
    );
    // bob is not append-only.
    assert_eq!(
        h.curl(
            &["-X", "DELETE", "-u", "bob:secret"],
            &format!("/shared/data/{data}")
        )
        .status,
        200
    );
    assert_eq!(
        h.curl(&["-X", "DELETE", bob[0], bob[1]], "/shared/config").status,
        200
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_and_max_size_answer_507() {
    let h = Harness::start("quota", |o, root| {
        let file = root.join("htpasswd");
        std::fs::write(
            &file,
            "alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\nbob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n",
        )
        .unwrap();
        o.htpasswd = Some(file);
        o.private_repos = true;
        o.users.insert(
            "alice".into(),
            UserOptions {
                append_only: None,
                quota: Some(100_000),
            },
        );
        o.max_size = Some(300_000);
    })
    .await;
    let alice = ["-u", "alice:secret"];
    h.create("alice/repo", &alice);
    let first = vec![1u8; 60_000];
    let second = vec![2u8; 60_000];
    let small = vec![3u8; 30_000];
    let upload = |body: &[u8], chunked: bool| {
        let mut args = alice.to_vec();
        if chunked {
            args.extend(["-H", "Transfer-Encoding: chunked"]);
        }
        h.post_with(&args, &format!("/alice/repo/data/{}", id_of(body)), body)
            .status
    };
    assert_eq!(upload(&first, false), 200);
    // Declared too big: refused before a byte is written.
    assert_eq!(upload(&second, false), 507);
    // Not declared (chunked): refused while writing, the partial temp file removed.
    assert_eq!(upload(&second, true), 507);
    let in_repo = files(&h.dir().join("alice/repo"));
    assert_eq!(
        in_repo,
        vec![format!("data/{}/{}", &id_of(&first)[..2], id_of(&first))]
    );
    // Still usable: what fits goes in, and deleting makes room.
    assert_eq!(upload(&small, true), 200);
    let path = format!("/alice/repo/data/{}", id_of(&first));
    assert_eq!(h.curl(&["-X", "DELETE", alice[0], alice[1]], &path).status, 200);
    assert_eq!(upload(&second, false), 200);

    // max_size counts everyone: bob has no quota, but the directory is capped at 300 000.
    let bob = ["-u", "bob:secret"];
    h.create("bob/repo", &bob);
    let big = vec![4u8; 150_000];
    let post = |body: &[u8]| {
        h.post_with(&bob, &format!("/bob/repo/data/{}", id_of(body)), body)
            .status
    };
    assert_eq!(post(&big), 200);
    assert_eq!(post(&vec![5u8; 150_000]), 507);
    assert_eq!(post(&vec![6u8; 50_000]), 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authentication_and_private_repos() {
    let bcrypt_hash = bcrypt::hash("b-pass", 5).unwrap();
    let h = Harness::start("auth", |o, root| {
        let file = root.join("htpasswd");
        std::fs::write(
            &file,
            format!("alice:{{SHA}}5en6G6MezRroT3XKqkdPOmY/BfQ=\nbob:{bcrypt_hash}\n"),
        )
        .unwrap();
        o.htpasswd = Some(file);
        o.private_repos = true;
    })
    .await;
    h.create("alice/r", &["-u", "alice:secret"]);
    h.create("bob/r", &["-u", "bob:b-pass"]);
    for creds in [
        None,
        Some("alice:wrong"),
        Some("carol:secret"),
        Some("bob:secret"),
    ] {
        let mut args = vec!["-X", "POST"];
        if let Some(creds) = creds {
            args.extend(["-u", creds]);
        }
        let reply = h.curl(&args, "/alice/r/?create=true");
        assert_eq!(reply.status, 401, "{creds:?}");
        assert_eq!(reply.header("www-authenticate"), "Basic realm=\"restic\"");
    }
    // bcrypt twice: the second answer comes from the cache, both succeed.
    for _ in 0..2 {
        assert_eq!(h.curl(&["-u", "bob:b-pass"], "/bob/r/keys/").status, 200);
    }
    // Someone else's repository, and the root: 401, as rest-server answers.
    assert_eq!(h.curl(&["-u", "bob:b-pass"], "/alice/r/keys/").status, 401);
    assert_eq!(h.curl(&["-u", "alice:secret"], "/bob/r/keys/").status, 401);
    assert_eq!(h.curl(&["-u", "alice:secret"], "/config").status, 401);
    assert_eq!(h.curl(&["-u", "alice:secret"], "/alice/r/keys/").status, 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traversal_never_leaves_the_directory() {
    let h = Harness::start("traversal", |_, _| {}).await;
    let outside = h.root.path().to_path_buf();
    std::fs::write(outside.join("config"), b"canary").unwrap();
    std::fs::create_dir_all(outside.join("keys")).unwrap();
    let key = id_of(b"k");
    std::fs::write(outside.join("keys").join(&key), b"k").unwrap();
    h.create("r", &[]);
    let before = files(&outside);
    let attempts = [
        "/../config",
        "/r/../../config",
        "/%2e%2e/config",
        "/%2E%2E/config",
        "/.%2e/config",
        "/r/..%2f..%2fconfig",
        "/..%2fconfig",
        "/..%5cconfig",
        "/..\\config",
        "/r%00/config",
        "//config",
        "/./config",
    ];
    for attempt in attempts {
        let reply = h.get(attempt);
        assert_eq!(reply.status, 404, "GET {attempt}");
        assert!(!reply.text().contains("canary"));
        assert_eq!(h.post(attempt, b"overwritten").status, 404, "POST {attempt}");
        assert_eq!(h.method("DELETE", attempt).status, 404, "DELETE {attempt}");
        let repo = attempt.trim_end_matches("config");
        assert_ne!(
            h.method("POST", &format!("{repo}?create=true")).status,
            200,
            "create {repo}"
        );
    }
    for attempt in ["/%2e%2e/keys/", "/../keys/"] {
        assert_eq!(h.get(attempt).status, 404);
        assert_eq!(h.method("DELETE", &format!("{attempt}{key}")).status, 404);
    }
    assert_eq!(std::fs::read(outside.join("config")).unwrap(), b"canary");
    assert_eq!(files(&outside), before);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconfigure_rereads_htpasswd() {
    let mut h = Harness::start("reload", |o, root| {
        let file = root.join("htpasswd");
        std::fs::write(&file, "alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n").unwrap();
        o.htpasswd = Some(file);
    })
    .await;
    h.create("r", &["-u", "alice:secret"]);
    assert_eq!(h.curl(&["-u", "carol:secret"], "/r/keys/").status, 401);
    let file = h.options.htpasswd.clone().unwrap();
    std::fs::write(&file, "carol:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n").unwrap();
    let server = h.server.as_ref().unwrap();
    server.reconfigure(h.options.clone()).unwrap();
    assert_eq!(h.curl(&["-u", "carol:secret"], "/r/keys/").status, 200);
    assert_eq!(h.curl(&["-u", "alice:secret"], "/r/keys/").status, 401);

    // A bad file: an error naming the file and line, and nothing changes.
    std::fs::write(&file, "carol:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n\nbroken line\n").unwrap();
    let error = server.reconfigure(h.options.clone()).unwrap_err().to_string();
    assert!(error.contains(&format!("{}:3", file.display())), "{error}");
    assert_eq!(h.curl(&["-u", "carol:secret"], "/r/keys/").status, 200);
    let mut moved = h.options.clone();
    moved.dir = h.root.path().join("elsewhere");
    assert!(server.reconfigure(moved).is_err());
    let mut moved = h.options.clone();
    moved.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
    assert!(server.reconfigure(moved).is_err());

    // Everything else swaps live: append-only now.
    std::fs::write(&file, "carol:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n").unwrap();
    h.options.append_only = true;
    h.server.as_ref().unwrap().reconfigure(h.options.clone()).unwrap();
    let key = id_of(b"key");
    assert_eq!(
        h.post_with(&["-u", "carol:secret"], &format!("/r/keys/{key}"), b"key")
            .status,
        200
    );
    assert_eq!(
        h.curl(&["-X", "DELETE", "-u", "carol:secret"], &format!("/r/keys/{key}"))
            .status,
        403
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_with_a_generated_certificate() {
    let h = Harness::start("https", |o, root| {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert, private) = (root.join("cert.pem"), root.join("key.pem"));
        std::fs::write(&cert, key.cert.pem()).unwrap();
        std::fs::write(&private, key.signing_key.serialize_pem()).unwrap();
        let certificate = Arc::new(gatehouse_tls::load(&cert, &private).unwrap());
        o.tls = Some(gatehouse_tls::server_config(&[certificate], &[b"http/1.1"]).unwrap());
    })
    .await;
    let ca = h.root.path().join("cert.pem").display().to_string();
    let tls = ["--cacert", ca.as_str()];
    let mut create = vec!["-X", "POST"];
    create.extend(tls);
    assert_eq!(h.curl(&create, "/r/?create=true").status, 200);
    let config = vec![7u8; 300_000];
    assert_eq!(h.post_with(&tls, "/r/config", &config).status, 200);
    let reply = h.curl(&tls, "/r/config");
    assert_eq!((reply.status, reply.body == config), (200, true));
    // Plain HTTP to the TLS port gets nowhere.
    let port = h.server.as_ref().unwrap().local_addr().port();
    let plain = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/r/config"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "000");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_log_and_metrics() {
    let h = Harness::start("log", |o, root| {
        let file = root.join("htpasswd");
        std::fs::write(&file, "alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n").unwrap();
        o.htpasswd = Some(file);
    })
    .await;
    let alice = ["-u", "alice:secret", "-A", "restic/0.17.3 linux/amd64 go1.23"];
    h.create("alice/repo", &alice);
    let data = vec![9u8; 4096];
    let id = id_of(&data);
    let path = format!("/alice/repo/data/{id}");
    assert_eq!(h.post_with(&alice, &path, &data).status, 200);
    assert_eq!(h.curl(&alice, &path).body.len(), 4096);
    assert_eq!(
        h.curl(&["-H", "Range: bytes=0-99", alice[0], alice[1]], &path)
            .status,
        206
    );
    assert_eq!(h.curl(&["-X", "DELETE", alice[0], alice[1]], &path).status, 200);
    assert_eq!(h.curl(&["-u", "alice:nope"], &path).status, 401);

    // The log line is written when the response body is done; give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = h.log.lock().unwrap().clone();
    assert_eq!(log.len(), 6, "{log:#?}");
    let post = &log[1];
    assert!(post.starts_with("127.0.0.1 - alice ["), "{post}");
    assert!(post.contains(" +0000] \""), "{post}");
    assert!(
        post.ends_with(&format!(
            "\"POST {path} HTTP/1.1\" 200 - \"-\" \"restic/0.17.3 linux/amd64 go1.23\""
        )),
        "{post}"
    );
    assert!(
        log[2].contains(&format!("\"GET {path} HTTP/1.1\" 200 4096 ")),
        "{}",
        log[2]
    );
    assert!(log[3].contains("\" 206 100 "), "{}", log[3]);
    assert!(log[5].contains(" 401 13 "), "{}", log[5]);

    let stats = h.metrics.snapshot();
    assert_eq!(stats.len(), 1);
    let s = &stats[0];
    assert_eq!((s.user.as_str(), s.repo.as_str()), ("alice", "alice/repo"));
    assert_eq!((s.objects_written, s.bytes_written), (1, 4096));
    assert_eq!((s.objects_read, s.bytes_read), (2, 4196));
    assert_eq!((s.objects_deleted, s.bytes_deleted), (1, 4096));

    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(h.metrics.collector());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "gatehouse_backup_bytes_written_total{user=\"alice\",repo=\"alice/repo\"} 4096",
        "gatehouse_backup_objects_read_total{user=\"alice\",repo=\"alice/repo\"} 2",
        "gatehouse_backup_bytes_deleted_total{user=\"alice\",repo=\"alice/repo\"} 4096",
        "gatehouse_backup_requests_total{code=\"401\"} 1",
        "gatehouse_backup_requests_total{code=\"200\"} 4",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_leaving_mid_upload_leaves_no_file() {
    let h = Harness::start("disconnect", |_, _| {}).await;
    h.create("r", &[]);
    let addr = h.server.as_ref().unwrap().local_addr();
    let id = id_of(b"never finished");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /r/data/{id} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n"
    )
    .unwrap();
    stream.write_all(&vec![0u8; 2_000_000]).unwrap();
    // Wait until the temp file exists, then hang up.
    let data_dir = h.dir().join(format!("r/data/{}", &id[..2]));
    let appeared = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::fs::read_dir(&data_dir).unwrap().next().is_some()
    });
    assert!(appeared, "the upload should have started a temp file");
    drop(stream);
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::fs::read_dir(&data_dir).unwrap().next().is_none()
    });
    assert!(gone, "the temp file should be removed: {:?}", files(&data_dir));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_errors_are_precise() {
    let first = Harness::start("errors", |_, _| {}).await;
    let root = TempDir::new("errors2");
    let mut options = options(&root);
    options.listen = first.server.as_ref().unwrap().local_addr();
    let error = BackupServer::start(options.clone(), BackupMetrics::new())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        format!("backup_server {}: Address already in use", options.listen)
    );

    let file = root.path().join("htpasswd");
    std::fs::write(&file, "# users\nalice:plaintext\n").unwrap();
    options.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    options.htpasswd = Some(file.clone());
    let error = BackupServer::start(options, BackupMetrics::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains(&format!("{}:2", file.display())), "{error}");
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_lets_a_slow_request_finish() {
    let h = Harness::start("shutdown", |_, _| {}).await;
    h.create("r", &[]);
    let addr = h.server.as_ref().unwrap().local_addr();
    let body = b"slow body".to_vec();
    let id = id_of(&body);
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /r/keys/{id} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\nslow",
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let dir = h.dir();
    let mut h = h;
    let server = h.server.take().unwrap();
    let stopping = tokio::spawn(server.shutdown());
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(b" body").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .unwrap()
        .unwrap();
    assert!(dir.join(format!("r/keys/{id}")).is_file());
    // And nothing listens any more.
    assert!(std::net::TcpStream::connect(addr).is_err());
}
