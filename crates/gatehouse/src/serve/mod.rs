//! `gatehouse serve`: the long-running supervisor.
//!
//! It starts what the file configures (health checks for every service, the
//! kernel map followers for nat services, a proxy per http/tcp service, the
//! admin listener), then waits for signals: SIGHUP (or `POST /reload`)
//! re-reads the file and swaps the new farm in without dropping connections;
//! SIGTERM or SIGINT stops accepting, drains and exits 0.
//!
//! A reload is all or nothing: the file is validated, new listeners are bound
//! and the kernel table is applied before anything running is touched, and
//! any failure leaves the running farm exactly as it was.

mod admin;
mod backups;
mod kernel;
mod log_api;
mod logs;
mod page;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use gatehouse_backupd::BackupMetrics;
use gatehouse_config::{Farm, LoadError, Mode, Service};
use gatehouse_health::{Metrics, Pool};
use gatehouse_logd::ingest::IngestStats;
use gatehouse_netfilter::plan::InRotation;
use gatehouse_netfilter::{Host, StateDir, apply};
use gatehouse_proxy::{Redirect, Server};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::kernel_cmd::ConfigArg;
use crate::{Failure, GlobalOpts};

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
}

/// What the admin listener sees of the running farm.
pub struct View {
    pub config: PathBuf,
    pub started: SystemTime,
    pub reloads: u64,
    pub services: Vec<ServiceView>,
    /// The log server's directory, when there is one: queries read it.
    pub logs: Option<std::path::PathBuf>,
    /// Per-sender counters of the log server (kept across reloads).
    pub log_stats: Arc<IngestStats>,
    /// The backup server's directory, when there is one.
    pub backups: Option<std::path::PathBuf>,
    /// Its counters (kept across reloads): the status page re-measures
    /// the repositories when they move.
    pub backup_metrics: Arc<BackupMetrics>,
}

pub struct ServiceView {
    pub service: Service,
    /// One per group of backends: the service's own, then each route's.
    pub pools: Vec<Arc<Pool>>,
    /// The proxy, for proxied services. Weak, so a removed server can be
    /// taken back for its shutdown while the view still lists it.
    pub server: Option<Weak<Server>>,
}

pub type SharedView = Arc<RwLock<View>>;

/// Why a reload was refused: the file is invalid (bad input), or applying it
/// failed (a port in use, nft refusing): the text says which and what to do.
pub enum Refusal {
    Invalid(String),
    Failed(String),
}

/// A reload asked for over HTTP, answered with what happened.
pub type ReloadRequest = oneshot::Sender<Result<String, Refusal>>;

pub fn run(global: &GlobalOpts, args: &ServeArgs) -> Result<ExitCode, Failure> {
    init_logging();
    if let Some(ns) = &global.netns {
        enter_netns(ns).map_err(Failure::Failed)?;
    }
    let path = gatehouse_config::resolve_path(args.config.path());
    let farm = Farm::load(&path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gatehouse")
        .build()
        .context("starting the async runtime")?;
    let kernel = Kernel {
        host: Host::local(),
        state: match &global.state_dir {
            Some(dir) => StateDir::new(dir),
            None => StateDir::default_for(global.netns.as_deref()),
        },
    };
    runtime.block_on(async move {
        let mut supervisor = Supervisor::start(path, farm, kernel).await?;
        supervisor.run().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Serve a farm without a [gateway] in the caller's runtime (the demo's):
/// `ready` runs once everything listens; returns after SIGINT or SIGTERM,
/// when everything has stopped.
pub async fn run_farm(path: PathBuf, farm: Farm, ready: impl FnOnce()) -> Result<(), Failure> {
    let kernel = Kernel {
        host: Host::local(),
        state: StateDir::default_for(None),
    };
    let mut supervisor = Supervisor::start(path, farm, kernel).await?;
    ready();
    supervisor.run().await;
    Ok(())
}

/// Logs go to stderr, where systemd's journal (or a terminal) picks them up;
/// `GATEHOUSE_LOG` takes tracing's filter syntax (default "info").
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(terminal)
        .with_target(false);
    // The journal stamps each line itself; a terminal reader wants the time.
    if terminal {
        builder.init();
    } else {
        builder.without_time().init();
    }
}

/// Join the named network namespace (as `ip netns exec` does) before any
/// thread starts, so every thread and child process lives in it.
pub fn enter_netns(name: &str) -> anyhow::Result<()> {
    use std::os::fd::AsFd;
    let path = Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path)
        .with_context(|| format!("opening network namespace {name} ({})", path.display()))?;
    rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
        .with_context(|| format!("entering network namespace {name}"))?;
    Ok(())
}

/// Where the kernel data plane is installed.
struct Kernel {
    host: Host,
    state: StateDir,
}

/// One service as it runs.
struct Running {
    service: Service,
    /// One per group of backends (`Service::targets`).
    pools: Vec<Arc<Pool>>,
    checks: Vec<JoinHandle<()>>,
    kernel: Option<JoinHandle<()>>,
    server: Option<Arc<Server>>,
}

impl Running {
    fn stop_tasks(&self) {
        for checks in &self.checks {
            checks.abort();
        }
        if let Some(k) = &self.kernel {
            k.abort();
        }
    }
}

struct Supervisor {
    path: PathBuf,
    farm: Farm,
    kernel: Kernel,
    metrics: Arc<Metrics>,
    services: Vec<Running>,
    view: SharedView,
    admin: Option<(SocketAddr, JoinHandle<()>)>,
    reloads: mpsc::Receiver<ReloadRequest>,
    reload_sender: mpsc::Sender<ReloadRequest>,
    /// Proxies of removed services, finishing their connections.
    draining: Vec<JoinHandle<()>>,
    logs: Option<logs::Running>,
    log_stats: Arc<IngestStats>,
    backups: Option<backups::Running>,
    backup_metrics: Arc<BackupMetrics>,
}

impl Supervisor {
    async fn start(path: PathBuf, farm: Farm, kernel: Kernel) -> Result<Supervisor, Failure> {
        let metrics = Arc::new(Metrics::new());
        let log_stats = IngestStats::new();
        metrics.register_collector(log_stats.collector());
        let backup_metrics = BackupMetrics::new();
        metrics.register_collector(backup_metrics.collector());
        let (reload_sender, reloads) = mpsc::channel(4);
        let view = Arc::new(RwLock::new(View {
            config: path.clone(),
            started: SystemTime::now(),
            reloads: 0,
            services: Vec::new(),
            logs: None,
            log_stats: log_stats.clone(),
            backups: None,
            backup_metrics: backup_metrics.clone(),
        }));
        let mut supervisor = Supervisor {
            path,
            farm: farm.clone(),
            kernel,
            metrics,
            services: Vec::new(),
            view,
            admin: None,
            reloads,
            reload_sender,
            draining: Vec::new(),
            logs: None,
            log_stats,
            backups: None,
            backup_metrics,
        };
        match supervisor.install(farm).await {
            Ok(()) => {}
            Err(InstallError::Invalid(d)) => return Err(d.into()),
            Err(InstallError::Failed(e)) => return Err(Failure::Failed(e)),
        }
        let proxied = supervisor.services.iter().filter(|s| s.server.is_some()).count();
        let nat = supervisor.services.len() - proxied;
        tracing::info!(
            config = %supervisor.path.display(),
            "serving: {proxied} proxied service{} and {nat} nat service{}{}{}",
            if proxied == 1 { "" } else { "s" },
            if nat == 1 { "" } else { "s" },
            match (supervisor.logs.is_some(), supervisor.backups.is_some()) {
                (true, true) => ", the log server, the backup server",
                (true, false) => ", the log server",
                (false, true) => ", the backup server",
                (false, false) => "",
            },
            supervisor
                .admin
                .as_ref()
                .map(|(addr, _)| format!(", admin on http://{addr}/"))
                .unwrap_or_default()
        );
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        Ok(supervisor)
    }

    /// Wait for signals and reload requests until told to stop.
    async fn run(&mut self) {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let _ = self.reload().await;
                }
                Some(reply) = self.reloads.recv() => {
                    let outcome = self.reload().await;
                    let _ = reply.send(outcome);
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
            self.draining.retain(|task| !task.is_finished());
        }
        self.stop().await;
    }

    async fn reload(&mut self) -> Result<String, Refusal> {
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Reloading,
            sd_notify::NotifyState::monotonic_usec_now().unwrap_or(sd_notify::NotifyState::Ready),
        ]);
        tracing::info!(config = %self.path.display(), "reloading");
        let outcome = match Farm::load(&self.path) {
            Err(LoadError::Invalid(d)) => Err(Refusal::Invalid(d.render(false))),
            Err(e) => Err(Refusal::Failed(format!("error: {e}"))),
            Ok(farm) => match self.install(farm).await {
                Ok(()) => Ok(format!(
                    "{}: reloaded\n{}",
                    self.path.display(),
                    self.farm.summary()
                )),
                Err(InstallError::Invalid(d)) => Err(Refusal::Invalid(d.render(false))),
                Err(InstallError::Failed(e)) => Err(Refusal::Failed(format!("error: {e:#}"))),
            },
        };
        match &outcome {
            Ok(_) => {
                self.view.write().unwrap_or_else(|e| e.into_inner()).reloads += 1;
                tracing::info!("reloaded");
            }
            Err(Refusal::Invalid(text) | Refusal::Failed(text)) => tracing::error!(
                "reload refused, still serving the previous config:\n{}",
                text.trim_end()
            ),
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        outcome
    }

    /// Bring the running farm to `farm`. Everything that can fail (binding
    /// listeners, applying the kernel table) happens before anything running
    /// changes; on failure what was started is stopped again.
    async fn install(&mut self, farm: Farm) -> Result<(), InstallError> {
        if self.farm.gateway.is_some() && farm.gateway.is_none() {
            return Err(InstallError::Failed(anyhow::anyhow!(
                "the file no longer has a [gateway] section; serve will not take the firewall down on reload \
                 (stop serve and run `gatehouse down` to remove it, or put the section back)"
            )));
        }
        let previous: HashMap<&str, &Running> = self
            .services
            .iter()
            .map(|r| (r.service.name.value.as_str(), r))
            .collect();

        // 1. Listeners: services whose listen address is new get a new server;
        //    kept servers whose redirect_http moves get its new listener.
        let mut fresh: HashMap<String, (Arc<Server>, Vec<Arc<Pool>>)> = HashMap::new();
        let mut redirects: HashMap<String, Redirect> = HashMap::new();
        for service in farm.proxy_services() {
            let kept = self
                .services
                .iter()
                .filter_map(|r| {
                    r.server
                        .as_ref()
                        .filter(|_| r.service.bind_addr() == service.bind_addr())
                })
                .next();
            let started = match kept {
                Some(server) if server.needs_redirect(service) => match Redirect::bind(service) {
                    Ok(Some(bound)) => {
                        redirects.insert(service.name.value.clone(), bound);
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                },
                Some(_) => Ok(()),
                None => {
                    let old_pools = previous
                        .get(service.name.value.as_str())
                        .map_or(&[][..], |r| &r.pools[..]);
                    let pools = Pool::for_service(service, &self.metrics, old_pools);
                    Server::start(service, pools.clone(), &self.metrics)
                        .await
                        .map(|server| {
                            fresh.insert(service.name.value.clone(), (Arc::new(server), pools));
                        })
                }
            };
            if let Err(e) = started {
                stop_all(&mut fresh).await;
                return Err(InstallError::Failed(
                    anyhow::Error::new(e).context(format!("service {}", service.name.value)),
                ));
            }
        }
        // 2. Admin listener, when it moves.
        let admin_addr = farm.admin.as_ref().map(|a| a.listen.value);
        let mut new_admin = None;
        if admin_addr != self.admin.as_ref().map(|(addr, _)| *addr)
            && let Some(addr) = admin_addr
        {
            match admin::start(
                addr,
                self.view.clone(),
                self.metrics.clone(),
                self.reload_sender.clone(),
            )
            .await
            {
                Ok(task) => new_admin = Some((addr, task)),
                Err(e) => {
                    stop_all(&mut fresh).await;
                    return Err(InstallError::Failed(e));
                }
            }
        }
        // 3. The log server: started, or given its new listeners and limits
        //    (undone below if the kernel table is refused).
        let mut log_started = None;
        let mut log_reconfigured = false;
        let log_failure = match (&mut self.logs, &farm.log_server) {
            (None, Some(config)) => logs::start(config, &self.log_stats)
                .await
                .map(|running| log_started = Some(running))
                .err(),
            (Some(running), Some(config)) if !running.same_dir(config) => Some(anyhow::anyhow!(
                "log_server dir changed from {} to {}: the store moves only at a restart of serve \
                 (move the files, then restart), so the reload is refused",
                running.config.dir.value.display(),
                config.dir.value.display()
            )),
            (Some(running), Some(config)) => running
                .reconfigure(config)
                .await
                .map(|()| log_reconfigured = true)
                .err(),
            (_, None) => None,
        };
        if let Some(e) = log_failure {
            self.abandon(&mut fresh, new_admin, (None, false), (None, false))
                .await;
            return Err(InstallError::Failed(e));
        }
        // 4. The backup server: a new one when it is new or moves (bound
        //    before the old one stops), else new users and limits in place.
        let mut backup_started = None;
        let mut backup_reconfigured = false;
        let backup_failure = match (&mut self.backups, &farm.backup_server) {
            (Some(running), Some(config)) if running.same_place(config) => running
                .reconfigure(config)
                .map(|()| backup_reconfigured = true)
                .err(),
            (Some(running), Some(config)) if running.same_listen(config) => Some(anyhow::anyhow!(
                "backup_server dir changed from {} to {} on the same listener: the repositories move \
                 only at a restart of serve (move them, then restart), so the reload is refused",
                running.config.dir.value.display(),
                config.dir.value.display()
            )),
            (_, Some(config)) => backups::start(config, &self.backup_metrics)
                .await
                .map(|running| backup_started = Some(running))
                .err(),
            (_, None) => None,
        };
        if let Some(e) = backup_failure {
            let log = (log_started, log_reconfigured);
            self.abandon(&mut fresh, new_admin, log, (None, false)).await;
            return Err(InstallError::Failed(e.context("backup_server")));
        }
        // 5. The kernel table, in one transaction (a no-op when unchanged).
        if farm.gateway.is_some() {
            // Maps as health left them: an unchanged file then changes nothing.
            let rotation: InRotation = farm
                .nat_services()
                .map(|s| {
                    let old = previous.get(s.name.value.as_str()).and_then(|r| r.pools.first());
                    let up = s
                        .backends
                        .iter()
                        .map(|b| {
                            old.and_then(|p| p.backends().iter().find(|o| o.addr == b.addr.value))
                                .is_none_or(|o| o.is_up())
                        })
                        .collect();
                    (s.name.value.clone(), up)
                })
                .collect();
            let (host, state, target) = (self.kernel.host.clone(), self.kernel.state.clone(), farm.clone());
            let applied = tokio::task::spawn_blocking(move || {
                apply::apply_in_rotation(&target, &host, &state, None, &rotation)
            })
            .await
            .map_err(|e| InstallError::Failed(anyhow::anyhow!("apply task failed: {e}")));
            let failure = match applied {
                Ok(Ok(applied)) => {
                    tracing::info!(
                        "table inet gatehouse {}",
                        if applied.changed { "installed" } else { "unchanged" }
                    );
                    None
                }
                Ok(Err(apply::Error::Invalid(d))) => Some(InstallError::Invalid(d)),
                Ok(Err(apply::Error::Failed(e))) => Some(InstallError::Failed(e)),
                Err(e) => Some(e),
            };
            if let Some(failure) = failure {
                let log = (log_started, log_reconfigured);
                let backup = (backup_started, backup_reconfigured);
                self.abandon(&mut fresh, new_admin, log, backup).await;
                return Err(failure);
            }
        }

        // Nothing can fail from here on: swap the new farm in.
        if let Some(started) = backup_started {
            if let Some(moved) = self.backups.replace(started) {
                tracing::info!(
                    "backup server moved to {}; stopping the old listener",
                    farm.backup_server
                        .as_ref()
                        .map_or(String::new(), |b| b.listen.value.to_string())
                );
                moved.stop().await;
            }
        } else if farm.backup_server.is_none()
            && let Some(removed) = self.backups.take()
        {
            tracing::info!("backup server removed from the file; stopping it");
            removed.stop().await;
        }
        if let Some(started) = log_started {
            self.logs = Some(started);
        } else if farm.log_server.is_none()
            && let Some(removed) = self.logs.take()
        {
            tracing::info!("log server removed from the file; stopping it");
            removed.stop().await;
        }
        if let Some(admin) = new_admin {
            if let Some((_, old)) = self.admin.replace(admin) {
                old.abort();
            }
        } else if admin_addr.is_none()
            && let Some((_, old)) = self.admin.take()
        {
            old.abort();
        }
        let mut old: Vec<Running> = std::mem::take(&mut self.services);
        let mut running = Vec::new();
        for service in &farm.services {
            let position = old
                .iter()
                .position(|r| r.service.name.value == service.name.value);
            let mut previous = position.map(|i| old.remove(i));
            if let Some(p) = &previous {
                p.stop_tasks();
            }
            let (server, pools) = if let Some((server, pools)) = fresh.remove(&service.name.value) {
                (Some(server), pools)
            } else {
                let old_pools = previous.as_ref().map_or(&[][..], |p| &p.pools[..]);
                let pools = Pool::for_service(service, &self.metrics, old_pools);
                // A proxy whose listen address is already served (perhaps
                // under another name): that server takes the new settings,
                // and its connections stay open.
                let holder = if service.mode == Mode::Nat {
                    None
                } else {
                    let mut holder = previous
                        .as_mut()
                        .filter(|p| p.service.bind_addr() == service.bind_addr())
                        .and_then(|p| p.server.take());
                    if holder.is_none()
                        && let Some(i) = old
                            .iter()
                            .position(|r| r.server.is_some() && r.service.bind_addr() == service.bind_addr())
                    {
                        holder = old[i].server.take();
                    }
                    holder
                };
                if let Some(server) = &holder {
                    let redirect = redirects.remove(&service.name.value);
                    server.update(service, pools.clone(), &self.metrics, redirect);
                }
                (holder, pools)
            };
            // The service moved to another address: its old listener drains.
            if let Some(moved) = previous.and_then(|p| p.server) {
                self.draining
                    .push(tokio::spawn(shut_down(moved, self.farm.drain)));
            }
            let checks = pools
                .iter()
                .map(|p| tokio::spawn(p.clone().run_checks()))
                .collect();
            let kernel = match (service.mode, pools.first()) {
                (Mode::Nat, Some(pool)) => Some(tokio::spawn(kernel::follow(
                    self.kernel.host.clone(),
                    service.clone(),
                    pool.clone(),
                ))),
                _ => None,
            };
            running.push(Running {
                service: service.clone(),
                pools,
                checks,
                kernel,
                server,
            });
        }
        // Services that are gone: stop checks, drain their proxies.
        for gone in old {
            gone.stop_tasks();
            if let Some(server) = gone.server {
                let drain = self.farm.drain;
                tracing::info!(service = %gone.service.name.value, "service removed; draining its connections");
                self.draining.push(tokio::spawn(shut_down(server, drain)));
            }
        }
        self.services = running;
        self.farm = farm;
        self.publish();
        Ok(())
    }

    /// Undo what a failed install started or changed before it failed: new
    /// proxies and admin listener, a started log or backup server (each
    /// `(started, reconfigured)`), or one given the new file's settings.
    async fn abandon(
        &mut self,
        fresh: &mut HashMap<String, (Arc<Server>, Vec<Arc<Pool>>)>,
        admin: Option<(SocketAddr, JoinHandle<()>)>,
        log: (Option<logs::Running>, bool),
        backup: (Option<backups::Running>, bool),
    ) {
        stop_all(fresh).await;
        if let Some((_, task)) = admin {
            task.abort();
        }
        if let Some(started) = log.0 {
            started.stop().await;
        }
        if let Some(started) = backup.0 {
            started.stop().await;
        }
        if log.1
            && let (Some(running), Some(config)) = (&mut self.logs, &self.farm.log_server)
            && let Err(e) = running.reconfigure(config).await
        {
            tracing::error!("log server: cannot take its previous config back: {e:#}");
        }
        if backup.1
            && let (Some(running), Some(config)) = (&mut self.backups, &self.farm.backup_server)
            && let Err(e) = running.reconfigure(config)
        {
            tracing::error!("backup server: cannot take its previous config back: {e:#}");
        }
    }

    fn publish(&self) {
        let services = self
            .services
            .iter()
            .map(|r| ServiceView {
                service: r.service.clone(),
                pools: r.pools.clone(),
                server: r.server.as_ref().map(Arc::downgrade),
            })
            .collect();
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        view.services = services;
        view.logs = self.logs.as_ref().map(|l| l.config.dir.value.clone());
        view.backups = self.backups.as_ref().map(|b| b.config.dir.value.clone());
    }

    /// SIGTERM: stop accepting everywhere, let requests in flight finish
    /// (bounded by `serve.drain`), and leave the kernel table in place: the
    /// firewall stays up while gatehouse is stopped.
    async fn stop(&mut self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let drain = self.farm.drain;
        tracing::info!(
            "stopping: draining connections for up to {}",
            humantime::format_duration(drain)
        );
        let mut waits = Vec::new();
        for running in std::mem::take(&mut self.services) {
            running.stop_tasks();
            if let Some(server) = running.server {
                waits.push(tokio::spawn(shut_down(server, drain)));
            }
        }
        for wait in waits.into_iter().chain(self.draining.drain(..)) {
            let _ = wait.await;
        }
        if let Some(backups) = self.backups.take() {
            backups.stop().await;
        }
        if let Some(logs) = self.logs.take() {
            logs.stop().await;
        }
        if let Some((_, admin)) = self.admin.take() {
            admin.abort();
        }
        tracing::info!("stopped");
    }
}

async fn stop_all(fresh: &mut HashMap<String, (Arc<Server>, Vec<Arc<Pool>>)>) {
    for (_, (server, _)) in fresh.drain() {
        shut_down(server, Duration::ZERO).await;
    }
}

async fn shut_down(server: Arc<Server>, drain: Duration) {
    let addr = server.local_addr();
    match Arc::try_unwrap(server) {
        Ok(server) => {
            let cut = server.shutdown(drain).await;
            if cut > 0 {
                tracing::warn!(%addr, "drain time over: cut {cut} connections");
            }
        }
        Err(_) => {
            tracing::warn!(%addr, "server still shared at shutdown; its connections end with the process")
        }
    }
}

enum InstallError {
    Invalid(gatehouse_config::Diagnostics),
    Failed(anyhow::Error),
}
