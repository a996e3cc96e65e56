//! Contender "mptcp": kernel MPTCP with N subflows, the client and the server under `mptcpize
//! run`, with the path's MPTCP limits and `signal` endpoints set up once per path.
//!
//! Owns: the MPTCP set-up of a lab and which sockets are its subflows. Must not touch: the
//! measurement (`throughput`).

use super::environment::{Ctx, Env, wait_listening};
use super::plan::{N_PARALLEL, Spec};
use super::procs::{Proc, ns_output};
use super::results::RunResult;
use super::s;
use super::sampling::record_socks;
use super::throughput::bulk_run;
use crate::wan::netns;
use anyhow::{Context, Result, bail};
use std::time::Duration;

/// Port of the `mptcpize`d server in namespace B.
pub(super) const MPTCP_PORT: u16 = 5202;
/// MPTCP signal endpoints (extra server ports) start above this.
pub(super) const MPTCP_EXTRA_BASE: u16 = 5210;

/// MPTCP on this path: limits in both namespaces, N-1 signal endpoints on extra server ports,
/// and an `mptcpize`d server. Returns the server process.
pub(super) fn mptcp_setup(ctx: &Ctx, env: &Env, perf: &str) -> Result<Proc> {
    let mz = ctx
        .mptcpize
        .as_ref()
        .context("mptcpize not found (Debian package mptcpd; `make perf-deps`)")?;
    for ns in [&env.ns_a, &env.ns_b] {
        let on = ns_output(ns, &["cat", "/proc/sys/net/mptcp/enabled"]).unwrap_or_default();
        if on.trim() != "1" {
            bail!(
                "MPTCP is not enabled in {ns} (net.mptcp.enabled = {:?})",
                on.trim()
            );
        }
        netns::ip(&[
            "-n",
            ns,
            "mptcp",
            "limits",
            "set",
            "subflows",
            "8",
            "add_addr_accepted",
            "8",
        ])?;
    }
    for i in 1..N_PARALLEL {
        netns::ip(&[
            "-n",
            &env.ns_b,
            "mptcp",
            "endpoint",
            "add",
            &env.addr_b,
            "port",
            &(MPTCP_EXTRA_BASE + i as u16).to_string(),
            "signal",
        ])?;
    }
    let pr = Proc::spawn(
        "mptcp server",
        &env.ns_b,
        &[
            mz.to_string_lossy().into_owned(),
            s("run"),
            perf.into(),
            s("server"),
            s("-l"),
            format!("{}:{MPTCP_PORT}", env.addr_b),
            s("--max-time"),
            s("3h"),
        ],
        &[],
        None,
    )?;
    wait_listening(&env.ns_b, MPTCP_PORT, Duration::from_secs(5))?;
    Ok(pr)
}

pub(super) fn run_mptcp(ctx: &Ctx, env: &Env, spec: &Spec) -> RunResult {
    let Some(mz) = &ctx.mptcpize else {
        return RunResult::skipped(
            &spec.id(),
            "mptcp",
            spec.flows,
            spec.cc,
            "mptcpize not found",
        );
    };
    let target = format!("{}:{MPTCP_PORT}", env.addr_b);
    let prefix = [mz.to_string_lossy().into_owned(), s("run")];
    let (mut r, sn) = bulk_run(ctx, env, spec, &prefix, &target, &[]);
    let ports =
        |p: u16| p == MPTCP_PORT || (MPTCP_EXTRA_BASE + 1..MPTCP_EXTRA_BASE + 16).contains(&p);
    record_socks(
        &mut r,
        &sn,
        |x| x.peer_ip == env.addr_b && ports(x.peer_port),
        |x| ports(x.local_port) && x.peer_ip == env.addr_a,
    );
    let mid = sn.get(sn.len() / 2);
    let subflow_socks = mid.map_or(0, |m| {
        m.a.iter()
            .filter(|x| x.mptcp_subflow && x.peer_ip == env.addr_b && ports(x.peer_port))
            .count()
    });
    let conn = mid.and_then(|m| {
        m.mptcp_a
            .iter()
            .find(|x| x.peer_port == MPTCP_PORT && x.peer_ip == env.addr_b)
    });
    match conn {
        Some(c) => {
            r.mptcp_subflows = Some(c.subflows.unwrap_or(0) + 1);
            r.notes.push(format!(
                "ss -Mi: subflows:{} (+1 initial); {subflow_socks} TCP subflow sockets in the client namespace",
                c.subflows.unwrap_or(0)
            ));
        }
        None if r.status == "ok" => r
            .notes
            .push("no MPTCP connection in `ss -Mi` at mid-run: it fell back to plain TCP".into()),
        None => {}
    }
    r
}
