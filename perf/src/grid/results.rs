//! The grid's machine-readable results (`grid.json`): written by `mtcp-perf grid` after every
//! run (so an interrupted grid keeps what it measured) and read back by `mtcp-perf report`.

use crate::wan::{DirStats, LiveCounters};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bumped when a field changes meaning.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GridResults {
    pub schema: u32,
    /// "full" or "quick".
    pub mode: String,
    pub started_utc: String,
    pub finished_utc: Option<String>,
    pub wall_seconds: f64,
    /// False while running, or when the grid was interrupted or a path failed to come up.
    pub complete: bool,
    pub command: String,
    pub machine: Machine,
    pub settings: Settings,
    pub paths: Vec<PathResult>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub loadavg_start: String,
    pub loadavg_end: Option<String>,
    /// net.ipv4.tcp_wmem / tcp_rmem as seen inside a lab namespace.
    pub tcp_wmem: Option<String>,
    pub tcp_rmem: Option<String>,
    pub git_commit: Option<String>,
    pub mtcpd: Option<String>,
    pub kcptun: Option<String>,
    pub mptcpize: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Length of each throughput run (the server sends for this long).
    pub seconds: f64,
    /// Extra time a run may take to drain its tail (not counted in the figures).
    pub drain_seconds: f64,
    /// Start of the "steady" window (seconds into each run).
    pub warmup_seconds: f64,
    /// Runs of each cell behind a target (other cells ran once); 1 in grids from before it.
    #[serde(default = "one")]
    pub repeats: u32,
    pub ttfb_samples: u64,
    pub seed: u64,
    pub direction: String,
    pub mtcpd_config: String,
    pub kcptun_args: String,
    pub mptcp_setup: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathResult {
    pub id: String,
    pub label: String,
    pub rtt_ms: u32,
    pub loss_pct: f64,
    pub rate_mbit: u32,
    pub flow_cap_mbit: Option<u32>,
    /// The emulator's own description of one direction (both directions are the same).
    pub impairment: String,
    pub lab: String,
    pub error: Option<String>,
    pub emulator: Vec<DirStats>,
    pub runs: Vec<RunResult>,
    pub ttfb: Vec<TtfbResult>,
}

/// Congestion control seen on the contender's sockets while it ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CcSeen {
    /// `ss -ti` in the client namespace (A): algorithm → sockets.
    pub client_ns: BTreeMap<String, u32>,
    /// `ss -ti` in the server namespace (B).
    pub server_ns: BTreeMap<String, u32>,
    /// What the tool itself read back with getsockopt(TCP_CONGESTION) (direct flows and
    /// MPTCP: `cc_client`/`cc_server` of the bulk report; mtcpd: its "tunnel established" log).
    pub readback: BTreeMap<String, u32>,
    /// UDP sockets seen (kcptun).
    pub udp_sockets: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// "direct-1", "direct-8", "mtcpd-4", "mptcp-8", "kcptun".
    pub id: String,
    /// "direct", "mtcpd", "mptcp", "kcptun".
    pub kind: String,
    /// Parallel flows, tunnels or subflows.
    pub flows: u32,
    /// Congestion control asked for (none for kcptun, which rides UDP).
    pub cc: Option<String>,
    /// "ok", "failed" or "skipped".
    pub status: String,
    pub reason: Option<String>,
    /// Receiver goodput over the first `seconds` of the run (Mbit/s).
    pub mbit_s: Option<f64>,
    /// Receiver goodput from `warmup_seconds` to `seconds`.
    pub steady_mbit_s: Option<f64>,
    /// The load tool's own figure (includes the drained tail, if any).
    pub tool_mbit_s: Option<f64>,
    pub bytes_in_window: Option<u64>,
    /// Per-second receiver goodput (Mbit/s).
    pub intervals_mbit: Vec<f64>,
    pub cc_seen: CcSeen,
    /// MPTCP: subflows of the connection (`ss -Mi` "subflows" + the initial one).
    pub mptcp_subflows: Option<u32>,
    /// Sockets of this contender found by the mid-run `ss` sample (both namespaces).
    pub sockets_sampled: u32,
    pub load_before: Option<f64>,
    /// CPU use while the load tool ran.
    #[serde(default)]
    pub cpu: CpuUse,
    /// What `ss -ti` showed of the contender's TCP sockets at mid-run.
    #[serde(default)]
    pub tcp: TcpSample,
    pub seconds_taken: f64,
    pub notes: Vec<String>,
    /// Which repeat of its cell this run was (0 = the first).
    #[serde(default)]
    pub repeat: u32,
    /// What the emulator counted on the data direction (B→A) during this run: packets out,
    /// random-loss drops, bottleneck-queue drops, flow-cap drops.
    #[serde(default)]
    pub bottleneck: Option<LiveCounters>,
    /// Filled by the report when it folds a cell's repeats into one: their number and spread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
}

/// The spread of a cell's repeats (the cell shows their median).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Spread {
    pub runs: u32,
    pub mbit_min: f64,
    pub mbit_max: f64,
    pub steady_min: Option<f64>,
    pub steady_max: Option<f64>,
    /// Median of the runs' bottleneck-queue drops.
    pub queue_drops_median: Option<u64>,
}

fn one() -> u32 {
    1
}

/// The contender's TCP sockets at mid-run (`ss -ti`). The sender is namespace B (downloads).
/// Limits are TCP_INFO's cumulative shares of the socket's busy time so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TcpSample {
    /// `ss` samples averaged (at 1/4, 1/2 and 3/4 of the run).
    pub samples: u32,
    pub sender_sockets: u32,
    /// Sender sockets whose last rate sample was application-limited (nothing to send),
    /// mean over the samples.
    pub sender_app_limited: f64,
    pub sender_rwnd_limited_pct_mean: Option<f64>,
    pub sender_sndbuf_limited_pct_mean: Option<f64>,
    /// Sum of the sender sockets' delivery-rate estimates.
    pub sender_delivery_mbit_sum: Option<f64>,
    /// Bytes in the sender sockets' kernel queues (unacknowledged + unsent).
    pub sender_send_q_bytes: u64,
    pub sender_retrans_total: u64,
    pub sender_cwnd_sum: u64,
    /// Bytes received by the client namespace's sockets and not yet read by their owner
    /// (the load tool, or the mtcpd client for tunnels).
    pub receiver_recv_q_bytes: u64,
    /// Largest resident memory of the receiving daemon (mtcpd or kcptun client) in the samples:
    /// what it buffers (reordering, unread credit) shows here.
    pub receiver_daemon_rss_mib_max: Option<f64>,
}

/// CPU use during a run, in percent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuUse {
    /// Of all the machine's cores (100 = every core busy), whoever used them.
    pub machine_busy_pct: Option<f64>,
    /// The grid process, i.e. the emulator's two forwarder threads (100 = one core).
    pub emulator_core_pct: Option<f64>,
    /// The contender's daemons (mtcpd client + server, kcptun client + server; 100 = one core).
    pub daemons_core_pct: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TtfbResult {
    /// "direct" or "mtcpd".
    pub via: String,
    pub status: String,
    pub reason: Option<String>,
    pub samples: u64,
    pub failures: u64,
    pub connect_p50_ms: Option<f64>,
    pub ttfb_min_ms: Option<f64>,
    pub ttfb_p50_ms: Option<f64>,
    pub ttfb_p90_ms: Option<f64>,
    pub ttfb_p99_ms: Option<f64>,
    pub ttfb_max_ms: Option<f64>,
    pub notes: Vec<String>,
}

impl RunResult {
    pub fn skipped(id: &str, kind: &str, flows: u32, cc: Option<&str>, why: &str) -> RunResult {
        RunResult {
            id: id.into(),
            kind: kind.into(),
            flows,
            cc: cc.map(str::to_owned),
            status: "skipped".into(),
            reason: Some(why.into()),
            mbit_s: None,
            steady_mbit_s: None,
            tool_mbit_s: None,
            bytes_in_window: None,
            intervals_mbit: Vec::new(),
            cc_seen: CcSeen::default(),
            mptcp_subflows: None,
            sockets_sampled: 0,
            load_before: None,
            cpu: CpuUse::default(),
            tcp: TcpSample::default(),
            seconds_taken: 0.0,
            notes: Vec::new(),
            repeat: 0,
            bottleneck: None,
            spread: None,
        }
    }
}

impl TtfbResult {
    pub fn skipped(via: &str, status: &str, why: &str) -> TtfbResult {
        TtfbResult {
            via: via.into(),
            status: status.into(),
            reason: Some(why.into()),
            samples: 0,
            failures: 0,
            connect_p50_ms: None,
            ttfb_min_ms: None,
            ttfb_p50_ms: None,
            ttfb_p90_ms: None,
            ttfb_p99_ms: None,
            ttfb_max_ms: None,
            notes: Vec::new(),
        }
    }
}
