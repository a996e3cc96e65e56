//! Contender "mtcpd": one application stream through an mtcpd client (namespace A) and server
//! (namespace B) with N tunnels, configured by a generated TOML file each, and the daemon logs
//! read back for the tunnels' congestion control and for warnings.
//!
//! Owns: starting and stopping an mtcpd pair. Must not touch: the measurement (`throughput`).

use super::environment::{Ctx, Env, PERF_PORT, wait_listening};
use super::plan::Spec;
use super::procs::Proc;
use super::results::RunResult;
use super::s;
use super::sampling::record_socks;
use super::throughput::bulk_run;
use crate::wan;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the server grants an adaptive ("auto") client: the client's own default maximum.
const AUTO_SERVER_CAP: u16 = mtcpd_engine::config::AUTO_POOL_MAX;

/// The pre-shared key of every benchmark pair (never used outside the lab).
const PSK: &str = "grid-benchmark-key-0123456789abcdef";

pub(super) struct Mtcpd {
    pub(super) server: Proc,
    pub(super) client: Proc,
    pub(super) client_log: PathBuf,
    pub(super) server_log: PathBuf,
    pub(super) tunnel_port: u16,
    pub(super) app_port: u16,
}

/// `n` tunnels, or with `n` = [`super::plan::AUTO`] the adaptive pool (the server then grants
/// up to its `AUTO_SERVER_CAP`).
pub(super) fn start_mtcpd(ctx: &Ctx, env: &Env, n: u32, cc: &str) -> Result<Mtcpd> {
    let (server_pool, client_pool) = if n == super::plan::AUTO {
        (AUTO_SERVER_CAP.to_string(), "\"auto\"".to_string())
    } else {
        (n.to_string(), n.to_string())
    };
    let bin = ctx.mtcpd.as_ref().context(ctx.mtcpd_missing.clone())?;
    let k = ctx.port();
    let (tport, aport) = (8000 + k, 7000 + k);
    let dir = &ctx.tmp;
    let (sc, cc_path) = (
        dir.join(format!("s{k}.toml")),
        dir.join(format!("c{k}.toml")),
    );
    std::fs::write(
        &sc,
        format!(
            "mode = \"server\"\npsk = \"{PSK}\"\ncongestion = \"{cc}\"\n{extra}[server]\nlisten_ip = \"{b}\"\nlisten_port = {tport}\nbackend_ip = \"{b}\"\nbackend_port = {PERF_PORT}\nconnection_pool_size = {server_pool}\n",
            b = env.addr_b,
            extra = ctx.mtcpd_set
        ),
    )?;
    std::fs::write(
        &cc_path,
        format!(
            "mode = \"client\"\npsk = \"{PSK}\"\ncongestion = \"{cc}\"\n{extra}[client]\nlocal_listen_ip = \"127.0.0.1\"\nlocal_listen_port = {aport}\nserver_ip = \"{b}\"\nserver_port = {tport}\nconnection_pool_size = {client_pool}\n",
            b = env.addr_b,
            extra = ctx.mtcpd_set
        ),
    )?;
    let (slog, clog) = (dir.join(format!("s{k}.log")), dir.join(format!("c{k}.log")));
    let b = bin.to_string_lossy().into_owned();
    let env_vars = [("RUST_LOG", "info")];
    let server = Proc::spawn(
        "mtcpd server",
        &env.ns_b,
        &[
            b.clone(),
            s("server"),
            s("-c"),
            sc.to_string_lossy().into_owned(),
        ],
        &env_vars,
        Some(&slog),
    )?;
    wait_listening(&env.ns_b, tport, Duration::from_secs(5))
        .with_context(|| format!("mtcpd server did not start: {}", log_tail(&slog)))?;
    let client = Proc::spawn(
        "mtcpd client",
        &env.ns_a,
        &[
            b,
            s("client"),
            s("-c"),
            cc_path.to_string_lossy().into_owned(),
        ],
        &env_vars,
        Some(&clog),
    )?;
    Ok(Mtcpd {
        server,
        client,
        client_log: clog,
        server_log: slog,
        tunnel_port: tport,
        app_port: aport,
    })
}

pub(super) fn strip_ansi(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            o.push(c);
        }
    }
    o
}

pub(super) fn log_tail(p: &Path) -> String {
    let t = strip_ansi(&std::fs::read_to_string(p).unwrap_or_default());
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Wait until the client logged `n` "tunnel established" lines; returns the congestion control
/// each reported (read back from the socket by mtcpd).
pub(super) fn wait_tunnels(m: &mut Mtcpd, n: u32, env: &Env) -> Result<BTreeMap<String, u32>> {
    let max = Duration::from_secs(10) + env.rtt * 20;
    let t = Instant::now();
    loop {
        let log = strip_ansi(&std::fs::read_to_string(&m.client_log).unwrap_or_default());
        let up: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("tunnel established"))
            .collect();
        if up.len() as u32 >= n {
            let mut cc = BTreeMap::new();
            for l in up {
                let c = l
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("congestion="))
                    .unwrap_or("?");
                *cc.entry(format!("tunnel:{c}")).or_insert(0) += 1;
            }
            return Ok(cc);
        }
        if !m.client.alive() || !m.server.alive() {
            bail!(
                "mtcpd exited early; client log: {}; server log: {}",
                log_tail(&m.client_log),
                log_tail(&m.server_log)
            );
        }
        if t.elapsed() > max || wan::stop_requested() {
            bail!(
                "only {} of {n} tunnels established after {max:?}; client log: {}",
                up.len(),
                log_tail(&m.client_log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(super) fn daemon_warnings(m: &Mtcpd) -> Vec<String> {
    let mut v = Vec::new();
    for (who, p) in [("client", &m.client_log), ("server", &m.server_log)] {
        let t = strip_ansi(&std::fs::read_to_string(p).unwrap_or_default());
        let mut n = 0;
        for l in t
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        {
            if n < 3 {
                v.push(format!("mtcpd {who}: {}", l.trim()));
            }
            n += 1;
        }
        if n > 3 {
            v.push(format!("mtcpd {who}: {} more warnings", n - 3));
        }
    }
    v
}

pub(super) fn run_mtcpd(ctx: &Ctx, env: &Env, spec: &Spec) -> RunResult {
    let cc = spec.cc.unwrap_or("bbr");
    let fail = |why: String| {
        let mut r = RunResult::skipped(&spec.id(), "mtcpd", spec.flows, spec.cc, &why);
        r.status = "failed".into();
        r
    };
    if ctx.mtcpd.is_none() {
        return RunResult::skipped(&spec.id(), "mtcpd", spec.flows, spec.cc, &ctx.mtcpd_missing);
    }
    let mut m = match start_mtcpd(ctx, env, spec.flows, cc) {
        Ok(m) => m,
        Err(e) => return fail(format!("{e:#}")),
    };
    let first = if spec.flows == super::plan::AUTO {
        u32::from(mtcpd_engine::config::AUTO_POOL_MIN)
    } else {
        spec.flows
    };
    let tunnels = match wait_tunnels(&mut m, first, env) {
        Ok(t) => t,
        Err(e) => return fail(format!("{e:#}")),
    };
    let target = format!("127.0.0.1:{}", m.app_port);
    let (mut r, sn) = bulk_run(ctx, env, spec, &[], &target, &[&m.client, &m.server]);
    let tp = m.tunnel_port;
    record_socks(
        &mut r,
        &sn,
        |x| x.peer_ip == env.addr_b && x.peer_port == tp,
        |x| x.local_port == tp && x.peer_ip == env.addr_a,
    );
    // The app-side socket is loopback; what matters is the tunnels.
    r.cc_seen.readback = tunnels;
    r.notes.extend(daemon_warnings(&m));
    if spec.flows == super::plan::AUTO {
        r.notes.extend(pool_changes(&m));
    }
    m.client.stop(Duration::from_millis(300));
    m.server.stop(Duration::from_millis(300));
    r
}

/// The adaptive pool's changes as the client logged them ("auto: 2 -> 4 (reason)"), so the
/// report says what auto chose.
fn pool_changes(m: &Mtcpd) -> Vec<String> {
    let log = strip_ansi(&std::fs::read_to_string(&m.client_log).unwrap_or_default());
    log.lines()
        .filter_map(|l| l.split_once("adaptive pool: ").map(|(_, rest)| rest))
        .map(|rest| format!("auto: {}", rest.split(" session=").next().unwrap_or(rest)))
        .collect()
}
