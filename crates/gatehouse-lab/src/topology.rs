//! The wiring: namespace names, and the `ip` commands that create the namespaces,
//! veth pairs, bridge, addresses and routes of the seed's Figure 1.
//!
//! Each veth pair is created inside one lab namespace with its peer placed straight
//! into another (`ip -n A link add eth0 type veth peer name eth0 netns B`), so not
//! even for a moment does anything exist in the host's namespace. Each namespace is
//! configured by one `ip -batch` run to keep a 64-server lab quick to build.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};

use crate::{CLIENT_ADDR, GATEWAY_LAN_ADDR, GATEWAY_WAN_ADDR, LAN_SUBNET, web_addr};

/// Where `ip netns` keeps its namespace handles.
pub(crate) const NETNS_DIR: &str = "/run/netns";

pub(crate) fn client_ns(lab: &str) -> String {
    format!("{lab}-client")
}
pub(crate) fn gateway_ns(lab: &str) -> String {
    format!("{lab}-gw")
}
pub(crate) fn switch_ns(lab: &str) -> String {
    format!("{lab}-lan")
}
pub(crate) fn web_ns(lab: &str, k: usize) -> String {
    format!("{lab}-web{k}")
}

/// Finds a program on PATH, then in the sbin directories a non-login root shell may
/// lack on its PATH (ip and nginx live there on Debian).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The `ip` binary (iproute2), resolved once.
pub(crate) fn ip_program() -> &'static Path {
    static IP: OnceLock<PathBuf> = OnceLock::new();
    IP.get_or_init(|| find_program("ip").unwrap_or_else(|| PathBuf::from("ip")))
}

fn require_ip() -> Result<()> {
    if find_program("ip").is_none() {
        bail!("`ip` (iproute2) is not installed: install it (apt-get install iproute2)");
    }
    Ok(())
}

/// `ip netns exec NS program`.
pub(crate) fn netns_command(ns: &str, program: &OsStr) -> Command {
    let mut cmd = Command::new(ip_program());
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

pub(crate) fn namespace_exists(ns: &str) -> bool {
    Path::new(NETNS_DIR).join(ns).exists()
}

/// Creates every namespace of the lab and wires them. Each namespace is pushed onto
/// `created` as soon as it exists, so a failure later leaves a complete list for
/// teardown.
pub(crate) fn create(lab: &str, backends: usize, created: &mut Vec<String>) -> Result<()> {
    require_ip()?;
    let client = client_ns(lab);
    let gw = gateway_ns(lab);
    let lan = switch_ns(lab);

    let mut all = vec![client.clone(), gw.clone(), lan.clone()];
    all.extend((1..=backends).map(|k| web_ns(lab, k)));
    {
        // The first `ip netns add` on a machine turns /run/netns into a mount point;
        // two racing first calls (parallel tests) would stack two mounts there.
        static NETNS_ADD: Mutex<()> = Mutex::new(());
        let _guard = NETNS_ADD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for ns in &all {
            add_namespace(ns)?;
            created.push(ns.clone());
        }
    }

    // A new namespace copies the host's IPv4 settings, forwarding included (a
    // Docker host has it on). The gateway must start as a plain host so tests can
    // prove that `gatehouse apply` is what turns forwarding on.
    run_checked(
        netns_command(&gw, OsStr::new("sh")).args(["-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"]),
        &format!("turning IPv4 forwarding off in {gw}"),
    )?;

    ip_batch(
        &client,
        &format!(
            "link add eth0 type veth peer name eth0 netns {gw}\n\
             addr add {CLIENT_ADDR}/24 dev eth0\n\
             link set lo up\n\
             link set eth0 up\n\
             route add {LAN_SUBNET} via {GATEWAY_WAN_ADDR}\n"
        ),
    )?;
    ip_batch(
        &gw,
        &format!(
            "link add eth1 type veth peer name gw netns {lan}\n\
             addr add {GATEWAY_WAN_ADDR}/24 dev eth0\n\
             addr add {GATEWAY_LAN_ADDR}/24 dev eth1\n\
             link set lo up\n\
             link set eth0 up\n\
             link set eth1 up\n"
        ),
    )?;
    for k in 1..=backends {
        ip_batch(
            &web_ns(lab, k),
            &format!(
                "link add eth0 type veth peer name web{k} netns {lan}\n\
                 addr add {}/24 dev eth0\n\
                 link set lo up\n\
                 link set eth0 up\n\
                 route add default via {GATEWAY_LAN_ADDR}\n",
                web_addr(k)
            ),
        )?;
    }
    // With STP off (the default) a bridge port forwards as soon as it is up.
    let mut switch = String::from(
        "link add br0 type bridge\nlink set lo up\nlink set br0 up\nlink set gw master br0\nlink set gw up\n",
    );
    for k in 1..=backends {
        switch.push_str(&format!("link set web{k} master br0\nlink set web{k} up\n"));
    }
    ip_batch(&lan, &switch)
}

fn add_namespace(ns: &str) -> Result<()> {
    if namespace_exists(ns) {
        bail!(
            "network namespace {ns} already exists: a lab with this name may be up \
             (`gatehouse lab down`), or remove it with `ip netns del {ns}` if it is left over"
        );
    }
    let mut cmd = Command::new(ip_program());
    cmd.args(["netns", "add", ns]);
    run_checked(&mut cmd, &format!("creating network namespace {ns}"))
}

/// Runs `ip -n NS -batch -` with `commands` on stdin.
fn ip_batch(ns: &str, commands: &str) -> Result<()> {
    let context = || format!("configuring namespace {ns} with `ip -n {ns} -batch -`:\n{commands}");
    let mut child = Command::new(ip_program())
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(context)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(commands.as_bytes()).with_context(context)?;
    }
    let out = child.wait_with_output().with_context(context)?;
    if !out.status.success() {
        return Err(anyhow::anyhow!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ))
        .with_context(context);
    }
    Ok(())
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub(crate) fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: could not run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what}: {} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        );
    }
    Ok(())
}

/// Pids of the processes inside `ns` (`ip netns pids`).
pub(crate) fn namespace_pids(ns: &str) -> Result<Vec<u32>> {
    let out = Command::new(ip_program())
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("listing processes in namespace {ns}"))?;
    if !out.status.success() {
        bail!(
            "listing processes in namespace {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect())
}

/// `ip netns del NS`; a namespace that is already gone is fine.
pub(crate) fn delete_namespace(ns: &str) -> Result<()> {
    if !namespace_exists(ns) {
        return Ok(());
    }
    let mut cmd = Command::new(ip_program());
    cmd.args(["netns", "del", ns]);
    run_checked(&mut cmd, &format!("deleting network namespace {ns}"))
}
