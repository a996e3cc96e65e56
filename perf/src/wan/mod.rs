//! `mtcp-perf wan`: a user-space WAN emulator. Two network namespaces (`NAME-a`, the client
//! side, and `NAME-b`, the server side) each get a TUN device and an address in a private
//! 10.200.K.0/24; a forwarder thread per direction carries packets between the TUN devices
//! through that direction's impairments (see [`impair`]). Only IPv4 packets addressed inside the
//! lab's /24 are forwarded, so traffic never leaves the namespaces.
//!
//! This module owns the command line (`up`, `run`, `down`), signal handling (SIGINT, SIGTERM,
//! SIGHUP end the lab cleanly) and the order of set-up and tear-down. Submodules: [`netns`]
//! (namespaces, TUN, the tear-down guard), [`impair`] (the pure impairment model) and
//! [`forward`] (the forwarding threads).

pub mod forward;
pub mod impair;
pub mod netns;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use impair::{Impair, Stats};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct WanArgs {
    #[command(subcommand)]
    cmd: WanCmd,
}

#[derive(Subcommand)]
enum WanCmd {
    /// Bring the lab up and run in the foreground until SIGINT/SIGTERM (or --max-time).
    Up {
        #[command(flatten)]
        lab: LabArgs,
        /// Tear down by itself after this long.
        #[arg(long, value_parser = mtcpd_common::units::parse_duration_or_seconds)]
        max_time: Option<Duration>,
        /// Test hook: panic once the lab is up (tear-down must still happen).
        #[arg(long, hide = true)]
        test_panic: bool,
    },
    /// Bring the lab up, run a command, tear down; exits with the command's status.
    /// The command sees MTCP_WAN_NS_A, MTCP_WAN_NS_B, MTCP_WAN_ADDR_A, MTCP_WAN_ADDR_B.
    Run {
        #[command(flatten)]
        lab: LabArgs,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Remove the leftovers of a lab (namespaces and processes in them).
    Down {
        #[arg(long, default_value = "mtpwan")]
        name: String,
    },
}

/// Lab set-up and impairments. Impairment flags apply to both directions; `--a2b`/`--b2a`
/// override them per direction with `key=value,…` (same keys as the flags).
#[derive(Args, Clone)]
struct LabArgs {
    /// Lab name: namespaces are NAME-a (client side) and NAME-b (server side).
    #[arg(long, default_value = "mtpwan")]
    name: String,
    /// Use 10.200.K.0/24 (default: derived from the name).
    #[arg(long)]
    subnet: Option<u8>,
    /// TUN MTU (a larger MTU means fewer packets per byte: faster, less realistic).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(576..=65000))]
    mtu: u32,
    /// Seed of every random choice (loss, jitter); each direction derives its own stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// One-way delay, e.g. 50ms.
    #[arg(long)]
    delay: Option<String>,
    /// Jitter: uniform ±this around the delay, never reordering.
    #[arg(long)]
    jitter: Option<String>,
    /// Bernoulli loss, e.g. 1% or 0.01.
    #[arg(long)]
    loss: Option<String>,
    /// Gilbert–Elliott loss p:r[:h[:k]] (p good→bad, r bad→good, h loss when bad, k when good).
    #[arg(long)]
    ge: Option<String>,
    /// Bottleneck rate, e.g. 100mbit.
    #[arg(long)]
    rate: Option<String>,
    /// Bottleneck drop-tail queue: time at the rate (100ms) or bytes (256k = 256 KiB; kB is
    /// 1000 bytes). Default 100ms.
    #[arg(long)]
    queue: Option<String>,
    /// Per-flow (5-tuple) rate cap, e.g. 20mbit.
    #[arg(long)]
    flow_cap: Option<String>,
    /// Per-flow cap behaviour: police (drop) or shape (delay).
    #[arg(long)]
    flow_mode: Option<String>,
    /// Policer bucket depth in bytes (default 50 ms at the cap, at least 16k).
    #[arg(long)]
    flow_burst: Option<String>,
    /// Shaper backlog limit per flow (default 100ms).
    #[arg(long)]
    flow_queue: Option<String>,
    /// Overrides for the A→B direction (client to server): key=value,…
    #[arg(long)]
    a2b: Option<String>,
    /// Overrides for the B→A direction (server to client): key=value,…
    #[arg(long)]
    b2a: Option<String>,
}

impl LabArgs {
    fn impairments(&self) -> Result<(Impair, Impair)> {
        let mut both = Impair::default();
        let flags = [
            ("delay", &self.delay),
            ("jitter", &self.jitter),
            ("loss", &self.loss),
            ("ge", &self.ge),
            ("rate", &self.rate),
            ("queue", &self.queue),
            ("flow-cap", &self.flow_cap),
            ("flow-mode", &self.flow_mode),
            ("flow-burst", &self.flow_burst),
            ("flow-queue", &self.flow_queue),
        ];
        for (k, v) in flags {
            if let Some(v) = v {
                both.set(k, v).with_context(|| format!("--{k}"))?;
            }
        }
        let (mut a2b, mut b2a) = (both.clone(), both);
        if let Some(s) = &self.a2b {
            a2b.apply_spec(s).context("--a2b")?;
        }
        if let Some(s) = &self.b2a {
            b2a.apply_spec(s).context("--b2a")?;
        }
        Ok((a2b, b2a))
    }

    fn subnet(&self) -> u8 {
        self.subnet.unwrap_or_else(|| subnet_for(&self.name))
    }
}

/// The default third octet of a lab's 10.200.K.0/24, derived from its name.
fn subnet_for(name: &str) -> u8 {
    let h = name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    (h % 250) as u8 + 1
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether SIGINT, SIGTERM or SIGHUP arrived since [`install_signals`].
pub(crate) fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

pub(crate) fn install_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// The running forwarders; dropping stops and joins them (before the lab's fds close).
struct Forwarders {
    stop: Arc<AtomicBool>,
    /// Live counters of a2b and b2a, in that order.
    live: [Arc<forward::Live>; 2],
    threads: Vec<(String, JoinHandle<Stats>)>,
    stats: Vec<(String, Stats)>,
}

impl Forwarders {
    fn start(lab: &netns::Lab, a: &LabArgs) -> Result<Forwarders> {
        let (a2b, b2a) = a.impairments()?;
        Forwarders::start_with(lab, a2b, b2a, a.seed, a.mtu, true)
    }

    fn start_with(
        lab: &netns::Lab,
        a2b: Impair,
        b2a: Impair,
        seed: u64,
        mtu: u32,
        verbose: bool,
    ) -> Result<Forwarders> {
        let ta = Arc::new(lab.tun_a.as_ref().context("TUN A")?.try_clone()?);
        let tb = Arc::new(lab.tun_b.as_ref().context("TUN B")?.try_clone()?);
        let stop = Arc::new(AtomicBool::new(false));
        let base = Instant::now();
        let net = Some(lab.addrs.subnet);
        let mtu = mtu as usize;
        let live = [Arc::default(), Arc::default()];
        let mut f = Forwarders {
            stop: stop.clone(),
            live: live.clone(),
            threads: Vec::new(),
            stats: Vec::new(),
        };
        if verbose {
            eprintln!("a2b: {}", a2b.describe());
            eprintln!("b2a: {}", b2a.describe());
        }
        let p1 = impair::Pipe::new(a2b, seed, net);
        let p2 = impair::Pipe::new(b2a, seed ^ 0x5bd1_e995_0000_0001, net);
        f.threads.push((
            "a2b".into(),
            forward::spawn(
                "a2b",
                ta.clone(),
                tb.clone(),
                p1,
                mtu,
                stop.clone(),
                base,
                live[0].clone(),
            )?,
        ));
        f.threads.push((
            "b2a".into(),
            forward::spawn("b2a", tb, ta, p2, mtu, stop, base, live[1].clone())?,
        ));
        Ok(f)
    }

    fn any_finished(&self) -> bool {
        self.threads.iter().any(|(_, t)| t.is_finished())
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (n, t) in self.threads.drain(..) {
            match t.join() {
                Ok(s) => self.stats.push((n, s)),
                Err(_) => eprintln!("mtcp-perf wan: forwarder {n} panicked"),
            }
        }
    }
}

impl Drop for Forwarders {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The ready line: on stdout for `up` (it is its output), on stderr for `run` (whose stdout
/// belongs to the command).
fn print_ready(lab: &netns::Lab, a: &LabArgs, to_stdout: bool) {
    let ad = &lab.addrs;
    let line = format!(
        "ready: ns_a={} addr_a={} ns_b={} addr_b={} mtu={}",
        ad.ns_a, ad.addr_a, ad.ns_b, ad.addr_b, a.mtu
    );
    if to_stdout {
        println!("{line}");
        let _ = std::io::stdout().flush();
    } else {
        eprintln!("{line}");
    }
}

fn print_stats(f: &Forwarders, lab: &netns::Lab) {
    for (dir, ns) in [("a2b", &lab.addrs.ns_a), ("b2a", &lab.addrs.ns_b)] {
        if let Some(n) = netns::tun_tx_dropped(ns) {
            eprintln!("{dir}: TUN ring drops (forwarder fell behind, not modelled): {n}");
        }
    }
    for (n, s) in &f.stats {
        eprintln!(
            "{n}: in {} pkts/{} B, out {} pkts/{} B, dropped: loss {} queue {} flow {} filtered {} overflow {}",
            s.packets_in,
            s.bytes_in,
            s.packets_out,
            s.bytes_out,
            s.drop_loss,
            s.drop_queue,
            s.drop_flow,
            s.drop_filtered,
            s.drop_overflow
        );
    }
}

pub fn main(w: WanArgs) -> Result<i32> {
    match w.cmd {
        WanCmd::Down { name } => {
            netns::check_name(&name)?;
            let removed = netns::down(&name)?;
            if removed.is_empty() {
                println!("nothing to remove for {name}");
            } else {
                println!("removed {}", removed.join(", "));
            }
            Ok(0)
        }
        WanCmd::Up {
            lab,
            max_time,
            test_panic,
        } => {
            lab.impairments()?; // validate before touching the system
            install_signals();
            let l = netns::Lab::up(&lab.name, lab.subnet(), lab.mtu)?;
            let mut f = Forwarders::start(&l, &lab)?;
            print_ready(&l, &lab, true);
            if test_panic {
                panic!("--test-panic: panicking with the lab up");
            }
            let t0 = Instant::now();
            while !STOP.load(Ordering::SeqCst)
                && !f.any_finished()
                && max_time.is_none_or(|m| t0.elapsed() < m)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let died = f.any_finished();
            f.stop();
            print_stats(&f, &l);
            drop(f);
            drop(l);
            eprintln!("mtcp-perf wan: torn down");
            if died {
                bail!("a forwarder thread stopped unexpectedly");
            }
            Ok(0)
        }
        WanCmd::Run { lab, cmd } => {
            lab.impairments()?;
            install_signals();
            let l = netns::Lab::up(&lab.name, lab.subnet(), lab.mtu)?;
            let mut f = Forwarders::start(&l, &lab)?;
            print_ready(&l, &lab, false);
            let ad = &l.addrs;
            let (prog, args) = cmd.split_first().context("no command given")?;
            let mut child = Command::new(prog)
                .args(args)
                .env("MTCP_WAN_NS_A", &ad.ns_a)
                .env("MTCP_WAN_NS_B", &ad.ns_b)
                .env("MTCP_WAN_ADDR_A", &ad.addr_a)
                .env("MTCP_WAN_ADDR_B", &ad.addr_b)
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting {prog}"))?;
            let pgid = child.id() as i32;
            let code = loop {
                if let Some(st) = child.try_wait().context("waiting for the command")? {
                    break st.code().unwrap_or(128);
                }
                if STOP.load(Ordering::SeqCst) || f.any_finished() {
                    eprintln!("mtcp-perf wan: stopping the command");
                    // SAFETY: signalling the process group we created.
                    unsafe { libc::kill(-pgid, libc::SIGTERM) };
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_secs(2) {
                        if child.try_wait().ok().flatten().is_some() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    // SAFETY: as above.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                    let _ = child.wait();
                    break 130;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            // Whatever the command left in its process group goes too.
            // SAFETY: as above; ESRCH when the group is already empty is fine.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            f.stop();
            print_stats(&f, &l);
            drop(f);
            drop(l);
            eprintln!("mtcp-perf wan: torn down");
            Ok(code)
        }
    }
}

/// What the forwarders counted on one direction of a lab, for machine-readable reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct DirStats {
    pub direction: String,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub drop_loss: u64,
    pub drop_queue: u64,
    pub drop_flow: u64,
    pub drop_overflow: u64,
    /// Packets the sending TUN device dropped on its ring (forwarder fell behind; not modelled).
    pub tun_ring_drops: Option<u64>,
}

/// One direction's counters at one moment, or their difference over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LiveCounters {
    pub packets_out: u64,
    pub drop_loss: u64,
    pub drop_queue: u64,
    pub drop_flow: u64,
}

impl LiveCounters {
    /// What was counted between `earlier` and `self`.
    pub(crate) fn since(self, earlier: LiveCounters) -> LiveCounters {
        LiveCounters {
            packets_out: self.packets_out.saturating_sub(earlier.packets_out),
            drop_loss: self.drop_loss.saturating_sub(earlier.drop_loss),
            drop_queue: self.drop_queue.saturating_sub(earlier.drop_queue),
            drop_flow: self.drop_flow.saturating_sub(earlier.drop_flow),
        }
    }
}

/// A lab brought up in-process (for the benchmark grid): namespaces, TUN devices and the two
/// forwarders. Dropping it stops the forwarders, kills every process left in the namespaces
/// and deletes them, like `wan run` does.
pub(crate) struct RunningLab {
    fwd: Option<Forwarders>,
    lab: Option<netns::Lab>,
    pub addrs: netns::Addrs,
    pub description: String,
}

impl RunningLab {
    /// `impair`: key/value settings applied to both directions (keys as for `--a2b`).
    pub(crate) fn up(name: &str, mtu: u32, seed: u64, impair: &[(&str, &str)]) -> Result<Self> {
        let mut both = Impair::default();
        for (k, v) in impair {
            both.set(k, v)
                .with_context(|| format!("impairment {k}={v}"))?;
        }
        let description = both.describe();
        let lab = netns::Lab::up(name, subnet_for(name), mtu)?;
        let fwd = Forwarders::start_with(&lab, both.clone(), both, seed, mtu, false)?;
        Ok(RunningLab {
            addrs: lab.addrs.clone(),
            fwd: Some(fwd),
            lab: Some(lab),
            description,
        })
    }

    /// The counters of direction B→A (server to client: the data of a download) so far.
    pub(crate) fn b2a_counters(&self) -> LiveCounters {
        let Some(f) = &self.fwd else {
            return LiveCounters::default();
        };
        let l = &f.live[1];
        LiveCounters {
            packets_out: l.packets_out.load(Ordering::Relaxed),
            drop_loss: l.drop_loss.load(Ordering::Relaxed),
            drop_queue: l.drop_queue.load(Ordering::Relaxed),
            drop_flow: l.drop_flow.load(Ordering::Relaxed),
        }
    }

    /// Whether a forwarder thread has stopped by itself (the lab is no longer valid).
    pub(crate) fn failed(&self) -> bool {
        self.fwd.as_ref().is_some_and(|f| f.any_finished())
    }

    /// Stop the forwarders, collect their counters and tear everything down.
    pub(crate) fn finish(mut self) -> Vec<DirStats> {
        let mut out = Vec::new();
        if let Some(mut f) = self.fwd.take() {
            f.stop();
            for (n, s) in &f.stats {
                let ns = if n == "a2b" {
                    &self.addrs.ns_a
                } else {
                    &self.addrs.ns_b
                };
                out.push(DirStats {
                    direction: n.clone(),
                    packets_in: s.packets_in,
                    packets_out: s.packets_out,
                    bytes_out: s.bytes_out,
                    drop_loss: s.drop_loss,
                    drop_queue: s.drop_queue,
                    drop_flow: s.drop_flow,
                    drop_overflow: s.drop_overflow,
                    tun_ring_drops: netns::tun_tx_dropped(ns),
                });
            }
        }
        self.lab.take();
        out
    }
}

impl Drop for RunningLab {
    fn drop(&mut self) {
        // Forwarders first (they use the TUN fds), then the namespaces.
        self.fwd.take();
        self.lab.take();
    }
}
