//! One request, from credentials to response, in rest-server's order: authenticate (401), split
//! the path (404), check the user may use the repository (401), then the protocol proper.
//!
//! Plain hyper rather than axum's router: a repository is any number of path segments
//! before `config`/`data`/..., each segment must be percent-decoded on its own to refuse
//! traversal (`%2e%2e`, `%2f`), and the upload body is streamed to disk in large batches;
//! route patterns would add a layer that `path::split` has to undo.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::access_log::Entry;
use crate::body::{CHUNK, Piece, ResponseBody};
use crate::path::{self, Refused, Target};
use crate::range::{self, Plan};
use crate::server::{Live, Shared};
use crate::store::{self, CommitError};
use crate::usage::{Limits, Usage};

const V1: &str = "application/vnd.x.restic.rest.v1";
const V2: &str = "application/vnd.x.restic.rest.v2";
/// Bytes gathered from the connection before one write to disk.
const WRITE_BUFFER: usize = 4 * CHUNK;

type Reply = Response<ResponseBody>;

/// Answers one request and accounts for it (metrics, access log).
pub async fn handle(shared: Arc<Shared>, peer: SocketAddr, request: Request<Incoming>) -> Reply {
    let live = shared.live();
    let header = |name: header::HeaderName| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut entry = Entry {
        peer: peer.ip(),
        user: String::new(),
        time: SystemTime::now(),
        request_line: format!("{} {} {:?}", request.method(), request.uri(), request.version()),
        status: 0,
        referer: header(header::REFERER),
        user_agent: header(header::USER_AGENT),
    };
    let mut response = match authenticate(&live, &request).await {
        Ok(user) => {
            let response = serve(&shared, &live, &user, request).await;
            entry.user = user;
            response
        }
        Err(attempted) => {
            entry.user = attempted;
            let mut response = error(StatusCode::UNAUTHORIZED);
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"restic\""),
            );
            response
        }
    };
    let status = response.status().as_u16();
    shared.metrics.request(status);
    entry.status = status;
    if let Some(sink) = &live.options.access_log {
        response.body_mut().set_log(entry, sink.clone());
    }
    response
}

/// The user name, or (as the error) the name that was tried. Without htpasswd everyone is "".
async fn authenticate(live: &Live, request: &Request<Incoming>) -> Result<String, String> {
    let Some(htpasswd) = &live.htpasswd else {
        return Ok(String::new());
    };
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some((user, password)) = header.and_then(crate::htpasswd::basic_credentials) else {
        return Err(String::new());
    };
    let ok = if htpasswd.is_cached(&user, &password) {
        true
    } else {
        let htpasswd = htpasswd.clone();
        let (u, p) = (user.clone(), password);
        tokio::task::spawn_blocking(move || htpasswd.verify(&u, &p))
            .await
            .unwrap_or(false)
    };
    if ok { Ok(user) } else { Err(user) }
}

async fn serve(shared: &Shared, live: &Live, user: &str, request: Request<Incoming>) -> Reply {
    let parsed = match path::parse(request.uri().path()) {
        Ok(parsed) => parsed,
        Err(Refused::Invalid | Refused::Unknown) => return error(StatusCode::NOT_FOUND),
    };
    if live.htpasswd.is_some()
        && live.options.private_repos
        && parsed.repo.first().map(String::as_str) != Some(user)
    {
        return error(StatusCode::UNAUTHORIZED);
    }
    let repo = Repo {
        dir: parsed.repo_dir(&shared.dir),
        top: parsed.repo.first().cloned().unwrap_or_default(),
        user: user.to_string(),
        name: parsed.repo_name(),
        append_only: live
            .options
            .users
            .get(user)
            .and_then(|u| u.append_only)
            .unwrap_or(live.options.append_only),
        verify_uploads: live.options.verify_uploads,
    };
    let limits = Limits {
        quota: live.options.users.get(&repo.top).and_then(|u| u.quota),
        max_size: live.options.max_size,
    };
    let method = request.method().clone();
    let outcome = match (&parsed.target, &method) {
        (Target::Repo, &Method::POST) => create(&repo, &request).await,
        (Target::Repo, _) => Ok(not_allowed("POST")),
        (Target::Config, &Method::HEAD | &Method::GET) => get(shared, &repo, None, &request).await,
        (Target::Config, &Method::POST) => save(shared, &repo, None, limits, request).await,
        (Target::Config, &Method::DELETE) => delete(shared, &repo, None).await,
        (Target::List(kind), &Method::GET) => list(&repo, kind, &request).await,
        (Target::List(_), _) => Ok(not_allowed("GET")),
        (Target::Object(kind, id), &Method::HEAD | &Method::GET) => {
            get(shared, &repo, Some((kind, id)), &request).await
        }
        (Target::Object(kind, id), &Method::POST) => {
            save(shared, &repo, Some((kind, id.as_str())), limits, request).await
        }
        (Target::Object(kind, id), &Method::DELETE) => delete(shared, &repo, Some((kind, id))).await,
        _ => Ok(not_allowed("HEAD, GET, POST, DELETE")),
    };
    outcome.unwrap_or_else(|failure| {
        tracing::warn!(repo = %repo.name, error = %failure, "backup request failed");
        error(StatusCode::INTERNAL_SERVER_ERROR)
    })
}

/// The repository a request is about, and who asks.
struct Repo {
    dir: PathBuf,
    /// Its first segment: whose quota it counts against.
    top: String,
    user: String,
    name: String,
    append_only: bool,
    /// Check an object's SHA-256 against its name.
    verify_uploads: bool,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

async fn create(repo: &Repo, request: &Request<Incoming>) -> io::Result<Reply> {
    let create = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair == "create=true"));
    if !create {
        return Ok(error(StatusCode::BAD_REQUEST));
    }
    let dir = repo.dir.clone();
    blocking(move || store::create_repo(&dir)).await?;
    Ok(empty(StatusCode::OK))
}

async fn list(repo: &Repo, kind: &'static str, request: &Request<Incoming>) -> io::Result<Reply> {
    let dir = repo.dir.clone();
    let objects = match blocking(move || store::list(&dir, kind)).await {
        Ok(objects) => objects,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(error(StatusCode::NOT_FOUND)),
        Err(e) => return Err(e),
    };
    let v2 = request
        .headers()
        .get(header::ACCEPT)
        .is_some_and(|accept| accept == V2);
    let json = if v2 {
        let items: Vec<_> = objects
            .iter()
            .map(|(name, size)| serde_json::json!({"name": name, "size": size}))
            .collect();
        serde_json::to_vec(&items)
    } else {
        serde_json::to_vec(&objects.iter().map(|(name, _)| name).collect::<Vec<_>>())
    }
    .map_err(io::Error::other)?;
    let mut response = Response::new(ResponseBody::full(json));
    set(&mut response, header::CONTENT_TYPE, if v2 { V2 } else { V1 });
    set_length(&mut response);
    Ok(response)
}

/// HEAD and GET of config or an object. GET of an object honours Range as Go's ServeContent.
async fn get(
    shared: &Shared,
    repo: &Repo,
    object: Option<(&'static str, &String)>,
    request: &Request<Incoming>,
) -> io::Result<Reply> {
    let path = match object {
        Some((kind, id)) => store::object_path(&repo.dir, kind, id),
        None => repo.dir.join("config"),
    };
    let opened = blocking(move || {
        let file = std::fs::File::open(&path)?;
        let meta = file.metadata()?;
        if meta.is_file() {
            Ok((file, meta.len()))
        } else {
            Err(io::ErrorKind::NotFound.into())
        }
    })
    .await;
    let (file, size) = match opened {
        Ok(opened) => opened,
        Err(_) => return Ok(error(StatusCode::NOT_FOUND)),
    };
    if request.method() == Method::HEAD {
        let mut response = Response::new(ResponseBody::empty());
        set(&mut response, header::CONTENT_LENGTH, &size.to_string());
        return Ok(response);
    }
    // The whole file as it is: config always (rest-server ignores Range
    // there), an object when no range is asked for.
    let whole = |file| {
        Response::new(ResponseBody::file(
            file,
            vec![Piece::File {
                offset: 0,
                length: size,
            }],
            size,
        ))
    };
    let Some(_) = object else {
        let mut response = whole(file);
        set_length(&mut response);
        return Ok(response);
    };
    let counters = shared.metrics.repo(&repo.user, &repo.name);
    counters.objects_read.fetch_add(1, Relaxed);
    let range = request.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
    let mut response = match range::plan(range, size) {
        Plan::Whole => {
            let mut response = whole(file);
            set(&mut response, header::CONTENT_TYPE, "application/octet-stream");
            response
        }
        Plan::Unsatisfiable => {
            let mut response = error(StatusCode::RANGE_NOT_SATISFIABLE);
            set(&mut response, header::CONTENT_RANGE, &format!("bytes */{size}"));
            response
        }
        Plan::Ranges(ranges) if ranges.len() == 1 => {
            let r = ranges[0];
            let mut response = Response::new(ResponseBody::file(
                file,
                vec![Piece::File {
                    offset: r.start,
                    length: r.length,
                }],
                r.length,
            ));
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let content_range = format!("bytes {}-{}/{size}", r.start, r.start + r.length - 1);
            set(&mut response, header::CONTENT_RANGE, &content_range);
            set(&mut response, header::CONTENT_TYPE, "application/octet-stream");
            response
        }
        Plan::Ranges(ranges) => {
            let boundary = format!("{:016x}{:016x}", store::random(), store::random());
            let mut pieces = Vec::new();
            let mut length = 0;
            for (n, r) in ranges.iter().enumerate() {
                let head = format!(
                    "{}--{boundary}\r\nContent-Range: bytes {}-{}/{size}\r\nContent-Type: application/octet-stream\r\n\r\n",
                    if n == 0 { "" } else { "\r\n" },
                    r.start,
                    r.start + r.length - 1
                );
                length += head.len() as u64 + r.length;
                pieces.push(Piece::Bytes(Bytes::from(head)));
                pieces.push(Piece::File {
                    offset: r.start,
                    length: r.length,
                });
            }
            let tail = format!("\r\n--{boundary}--\r\n");
            length += tail.len() as u64;
            pieces.push(Piece::Bytes(Bytes::from(tail)));
            let mut response = Response::new(ResponseBody::file(file, pieces, length));
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            set(
                &mut response,
                header::CONTENT_TYPE,
                &format!("multipart/byteranges; boundary={boundary}"),
            );
            response
        }
    };
    set(&mut response, header::ACCEPT_RANGES, "bytes");
    set_length(&mut response);
    response.body_mut().set_read(counters);
    Ok(response)
}

/// POST of config or an object: refused if it exists (403), checked against the limits (507),
/// streamed to a temp file while hashing, verified (400), and moved in place.
async fn save(
    shared: &Shared,
    repo: &Repo,
    object: Option<(&'static str, &str)>,
    limits: Limits,
    request: Request<Incoming>,
) -> io::Result<Reply> {
    let target = match object {
        Some((kind, id)) => store::object_path(&repo.dir, kind, id),
        None => repo.dir.join("config"),
    };
    let check = target.clone();
    if blocking(move || Ok(check.symlink_metadata().is_ok())).await? {
        return Ok(error(StatusCode::FORBIDDEN));
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok());
    if let Some(declared) = declared {
        let Ok(declared) = declared.parse::<u64>() else {
            return Ok(error(StatusCode::LENGTH_REQUIRED));
        };
        if !shared.usage.fits(&repo.top, declared, limits) {
            return Ok(error(StatusCode::INSUFFICIENT_STORAGE));
        }
    }
    let begin_target = target.clone();
    // The config has no hash for a name; objects do.
    let verify = repo.verify_uploads && object.is_some();
    let (temp, writer) = match blocking(move || store::begin(&begin_target, verify)).await {
        Ok(opened) => opened,
        Err(e) if store::is_disk_full(&e) => return Ok(error(StatusCode::INSUFFICIENT_STORAGE)),
        Err(e) => return Err(e),
    };
    let mut charge = Charge {
        usage: shared.usage.clone(),
        top: repo.top.clone(),
        bytes: 0,
        kept: false,
    };
    let writer = match receive(request.into_body(), writer, &mut charge, limits).await {
        Ok(writer) => writer,
        Err(status) => return Ok(error(status)),
    };
    let expect = object.map(|(_, id)| id.to_string());
    let replace_same = object.is_some();
    let committed = tokio::task::spawn_blocking(move || {
        store::commit(temp, writer, &target, expect.as_deref(), replace_same)
    })
    .await
    .map_err(io::Error::other)?;
    match committed {
        Ok(()) => {}
        Err(CommitError::HashMismatch) => return Ok(error(StatusCode::BAD_REQUEST)),
        Err(CommitError::Exists) => return Ok(error(StatusCode::FORBIDDEN)),
        Err(CommitError::Io(e)) if store::is_disk_full(&e) => {
            return Ok(error(StatusCode::INSUFFICIENT_STORAGE));
        }
        Err(CommitError::Io(e)) => return Err(e),
    }
    charge.kept = true;
    if object.is_some() {
        let counters = shared.metrics.repo(&repo.user, &repo.name);
        counters.objects_written.fetch_add(1, Relaxed);
        counters.bytes_written.fetch_add(charge.bytes, Relaxed);
    }
    Ok(empty(StatusCode::OK))
}

/// Bytes charged to a quota for an upload; given back when dropped unless the upload was kept.
struct Charge {
    usage: Arc<Usage>,
    top: String,
    bytes: u64,
    kept: bool,
}

impl Drop for Charge {
    fn drop(&mut self) {
        if !self.kept {
            self.usage.release(&self.top, self.bytes);
        }
    }
}

/// Streams the request body into the writer: the connection is read while the previous
/// frames are hashed and written on the blocking pool (the frames themselves, in one vectored
/// write: hyper's frames are pieces of its read buffer, and copying them into a buffer of our
/// own cost a twentieth of the server's CPU in bench/backup.sh).
async fn receive(
    mut body: Incoming,
    writer: store::Writer,
    charge: &mut Charge,
    limits: Limits,
) -> Result<store::Writer, StatusCode> {
    type Pending = tokio::task::JoinHandle<io::Result<store::Writer>>;
    let mut idle = Some(writer);
    let mut pending: Option<Pending> = None;
    let mut frames: Vec<Bytes> = Vec::new();
    let mut buffered = 0;
    let write_failed = |error: io::Error| {
        if store::is_disk_full(&error) {
            StatusCode::INSUFFICIENT_STORAGE
        } else {
            tracing::warn!(%error, "writing an upload failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    async fn settle(
        idle: &mut Option<store::Writer>,
        pending: &mut Option<Pending>,
    ) -> Result<store::Writer, io::Error> {
        match pending.take() {
            Some(handle) => handle.await.map_err(io::Error::other)?,
            None => idle
                .take()
                .ok_or_else(|| io::Error::other("no writer: neither idle nor pending")),
        }
    }
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            // The client went away or sent a broken body.
            Some(Err(_)) => return Err(StatusCode::BAD_REQUEST),
        };
        let Ok(data) = frame.into_data() else { continue };
        if !charge.usage.charge(&charge.top, data.len() as u64, limits) {
            return Err(StatusCode::INSUFFICIENT_STORAGE);
        }
        charge.bytes += data.len() as u64;
        buffered += data.len();
        frames.push(data);
        if buffered >= WRITE_BUFFER {
            let mut writer = settle(&mut idle, &mut pending).await.map_err(write_failed)?;
            let batch = std::mem::take(&mut frames);
            buffered = 0;
            pending = Some(tokio::task::spawn_blocking(move || {
                writer.write(&batch).map(|()| writer)
            }));
        }
    }
    let mut writer = settle(&mut idle, &mut pending).await.map_err(write_failed)?;
    if !frames.is_empty() {
        writer = tokio::task::spawn_blocking(move || writer.write(&frames).map(|()| writer))
            .await
            .map_err(|e| write_failed(io::Error::other(e)))?
            .map_err(write_failed)?;
    }
    Ok(writer)
}

async fn delete(shared: &Shared, repo: &Repo, object: Option<(&'static str, &String)>) -> io::Result<Reply> {
    let refused = match object {
        Some((kind, _)) => repo.append_only && kind != "locks",
        None => repo.append_only,
    };
    if refused {
        return Ok(error(StatusCode::FORBIDDEN));
    }
    let path = match object {
        Some((kind, id)) => store::object_path(&repo.dir, kind, id),
        None => repo.dir.join("config"),
    };
    let removed = blocking(move || {
        let size = path.symlink_metadata()?.len();
        std::fs::remove_file(&path)?;
        Ok(size)
    })
    .await;
    let size = match removed {
        Ok(size) => size,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(error(StatusCode::NOT_FOUND)),
        Err(e) => return Err(e),
    };
    shared.usage.release(&repo.top, size);
    if object.is_some() {
        let counters = shared.metrics.repo(&repo.user, &repo.name);
        counters.objects_deleted.fetch_add(1, Relaxed);
        counters.bytes_deleted.fetch_add(size, Relaxed);
    }
    Ok(empty(StatusCode::OK))
}

fn set(response: &mut Reply, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn set_length(response: &mut Reply) {
    let length = response.body().len().to_string();
    set(response, header::CONTENT_LENGTH, &length);
}

fn empty(status: StatusCode) -> Reply {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = status;
    set_length(&mut response);
    response
}

/// An error as Go's http.Error writes it: the status text and a newline, as plain text.
pub fn error(status: StatusCode) -> Reply {
    let text = format!("{}\n", status.canonical_reason().unwrap_or(""));
    let mut response = Response::new(ResponseBody::full(text));
    *response.status_mut() = status;
    set(&mut response, header::CONTENT_TYPE, "text/plain; charset=utf-8");
    set(&mut response, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set_length(&mut response);
    response
}

fn not_allowed(allow: &str) -> Reply {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED);
    set(&mut response, header::ALLOW, allow);
    response
}
