//! Set-up and tear-down of the lab: the two network namespaces, a TUN device in each (opened
//! after `setns` from a short-lived thread, so the process itself never leaves the root
//! namespace), their addresses, and the [`Lab`] guard whose `Drop` undoes everything it created:
//! processes left in the namespaces are killed and the namespaces deleted, on success, error,
//! panic or signal alike.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Device name used inside both namespaces (they are separate, so the name can repeat).
pub const TUN_NAME: &str = "mtpwan0";

/// Largest TCP send and receive buffer autotuning may reach inside a lab namespace
/// (net.ipv4.tcp_wmem / tcp_rmem, the third field): 64 MiB, as a host tuned for long fat paths
/// has. The kernel's default (4 MiB send, 6 MiB receive) caps one flow near 300 Mbit/s at
/// 100 ms, which would make every single-flow contender look worse than the path allows.
pub const TCP_BUF_MAX: usize = 64 << 20;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Namespace names for a lab called `name`.
pub fn ns_names(name: &str) -> (String, String) {
    (format!("{name}-a"), format!("{name}-b"))
}

/// Check a lab name: it becomes part of namespace names (files under /run/netns).
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 32
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("--name {name:?}: use 1-32 characters from [A-Za-z0-9_-]");
    }
    Ok(())
}

/// Run `ip` with arguments; error with its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Kill every process inside `ns` (TERM, then KILL after a grace period).
pub fn kill_ns_pids(ns: &str) {
    let pids = |ns: &str| -> Vec<i32> {
        ip(&["netns", "pids", ns])
            .map(|o| o.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    };
    let me = std::process::id() as i32;
    let mut left = pids(ns);
    left.retain(|&p| p != me);
    if left.is_empty() {
        return;
    }
    for &p in &left {
        // SAFETY: plain kill(2) on a pid we just listed.
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
        left = pids(ns);
        left.retain(|&p| p != me);
        if left.is_empty() {
            return;
        }
    }
    for &p in &left {
        // SAFETY: as above.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(100));
}

/// Remove a namespace (and its processes) if it exists.
pub fn delete_ns(ns: &str) -> Result<()> {
    if !ns_exists(ns) {
        return Ok(());
    }
    kill_ns_pids(ns);
    let mut last = None;
    for _ in 0..20 {
        match ip(&["netns", "del", ns]) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        if !ns_exists(ns) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("could not delete {ns}")))
}

/// Remove the leftovers of a lab called `name`.
pub fn down(name: &str) -> Result<Vec<String>> {
    let (a, b) = ns_names(name);
    let mut removed = Vec::new();
    for ns in [a, b] {
        if ns_exists(&ns) {
            delete_ns(&ns)?;
            removed.push(ns);
        }
    }
    Ok(removed)
}

/// Why the lab cannot be built here, if it cannot (for tests that skip).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) not found".into());
    }
    None
}

/// Open a TUN device named [`TUN_NAME`] inside namespace `ns`.
fn open_tun_in(ns: &str, multi_queue: bool) -> Result<OwnedFd> {
    let path = Path::new("/run/netns").join(ns);
    std::thread::spawn(move || -> Result<OwnedFd> {
        let nsf = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: valid fd of a namespace file; affects only this short-lived thread.
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: open(2) with a NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if fd < 0 {
            bail!("open /dev/net/tun: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // struct ifreq: 16-byte name, then a union whose first member is the short flags.
        let mut ifr = [0u8; 40];
        ifr[..TUN_NAME.len()].copy_from_slice(TUN_NAME.as_bytes());
        let mut flags = (libc::IFF_TUN | libc::IFF_NO_PI) as u16;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE as u16;
        }
        ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads/writes a struct ifreq, which `ifr` is large enough to hold.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, ifr.as_mut_ptr()) } != 0 {
            bail!("ioctl TUNSETIFF: {}", std::io::Error::last_os_error());
        }
        Ok(fd)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("TUN set-up thread panicked"))?
}

/// Packets the TUN device in `ns` dropped on its transmit ring (the forwarder fell behind):
/// loss the impairment model did not choose, reported so that runs can be checked for it.
pub fn tun_tx_dropped(ns: &str) -> Option<u64> {
    let out = ip(&["-n", ns, "-s", "-o", "link", "show", "dev", TUN_NAME]).ok()?;
    let mut segs = out.split('\\').map(str::trim);
    segs.find(|s| s.starts_with("TX:"))?;
    let nums: Vec<u64> = segs
        .next()?
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    nums.get(3).copied()
}

/// Raises the TCP autotuning limits of namespace `ns` to [`TCP_BUF_MAX`] (they are
/// per-namespace since Linux 4.15; min and default stay the kernel's).
fn tune_tcp_buffers(ns: &str) -> Result<()> {
    for (key, min_default) in [("tcp_rmem", "4096 131072"), ("tcp_wmem", "4096 16384")] {
        let value = format!("{min_default} {TCP_BUF_MAX}");
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-q", "-w"])
            .arg(format!("net.ipv4.{key}={value}"))
            .output()
            .with_context(|| format!("running sysctl in {ns}"))?;
        if !out.status.success() {
            bail!(
                "sysctl net.ipv4.{key} in {ns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Addresses of a lab.
#[derive(Debug, Clone)]
pub struct Addrs {
    pub ns_a: String,
    pub ns_b: String,
    pub addr_a: String,
    pub addr_b: String,
    pub subnet: [u8; 3],
}

/// A built lab; dropping it tears everything down.
pub struct Lab {
    pub addrs: Addrs,
    pub tun_a: Option<OwnedFd>,
    pub tun_b: Option<OwnedFd>,
    created: Vec<String>,
}

impl Lab {
    /// Create both namespaces, TUN devices and addresses.
    pub fn up(name: &str, k: u8, mtu: u32) -> Result<Lab> {
        check_name(name)?;
        if let Some(why) = unavailable() {
            bail!("cannot build the WAN lab: {why}");
        }
        let (ns_a, ns_b) = ns_names(name);
        let subnet = [10, 200, k];
        let addrs = Addrs {
            addr_a: format!("10.200.{k}.1"),
            addr_b: format!("10.200.{k}.2"),
            ns_a,
            ns_b,
            subnet,
        };
        let mut lab = Lab {
            addrs: addrs.clone(),
            tun_a: None,
            tun_b: None,
            created: Vec::new(),
        };
        for ns in [&addrs.ns_a, &addrs.ns_b] {
            if ns_exists(ns) {
                bail!(
                    "namespace {ns} already exists (remove it with `mtcp-perf wan down --name {name}`)"
                );
            }
            ip(&["netns", "add", ns])?;
            lab.created.push(ns.clone());
        }
        lab.tun_a = Some(open_tun_in(&addrs.ns_a, false).context("TUN in namespace A")?);
        lab.tun_b = Some(open_tun_in(&addrs.ns_b, false).context("TUN in namespace B")?);
        // The TUN ring (txqueuelen packets) absorbs the forwarder's scheduling hiccups; drops
        // there would be loss the model does not control, so give it ~16 MiB.
        let qlen = (16 * 1024 * 1024 / mtu).max(1000).to_string();
        let mtu = mtu.to_string();
        for (ns, addr) in [(&addrs.ns_a, &addrs.addr_a), (&addrs.ns_b, &addrs.addr_b)] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", TUN_NAME, "mtu", &mtu])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                TUN_NAME,
            ])?;
            ip(&["-n", ns, "link", "set", TUN_NAME, "up"])?;
            ip(&["-n", ns, "link", "set", TUN_NAME, "txqueuelen", &qlen])?;
            tune_tcp_buffers(ns)?;
        }
        Ok(lab)
    }

    /// Tear down now (also done by Drop); reports the first error.
    pub fn teardown(&mut self) -> Result<()> {
        self.tun_a = None;
        self.tun_b = None;
        let mut first = None;
        for ns in std::mem::take(&mut self.created) {
            if let Err(e) = delete_ns(&ns)
                && first.is_none()
            {
                first = Some(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("mtcp-perf wan: tear-down: {e:#}");
        }
    }
}
