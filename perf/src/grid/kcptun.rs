//! Contender "kcptun": one application stream through kcptun (KCP over UDP), for comparison with
//! a tunnel that does not ride TCP at all.
//!
//! Owns: starting and stopping a kcptun pair. Must not touch: the measurement (`throughput`).

use super::environment::{Ctx, Env, PERF_PORT, wait_listening};
use super::mtcpd::log_tail;
use super::plan::Spec;
use super::procs::Proc;
use super::results::RunResult;
use super::s;
use super::throughput::bulk_run;
use std::time::Duration;

/// kcptun's settings on both ends (its fastest mode, no encryption or compression).
pub(super) const KCPTUN_ARGS: &str =
    "--mode fast3 --sndwnd 8192 --rcvwnd 8192 --crypt none --nocomp --quiet";

pub(super) fn run_kcptun(ctx: &Ctx, env: &Env, spec: &Spec) -> RunResult {
    let Some((kc, ks)) = &ctx.kcptun else {
        return RunResult::skipped(
            &spec.id(),
            "kcptun",
            1,
            None,
            "kcptun-client/kcptun-server not found (Debian package kcptun; `make perf-deps`)",
        );
    };
    let k = ctx.port();
    let (udp, app) = (4000 + k, 7000 + k);
    let kargs: Vec<String> = KCPTUN_ARGS.split_whitespace().map(str::to_owned).collect();
    let mut sa = vec![
        ks.to_string_lossy().into_owned(),
        s("-t"),
        format!("{}:{PERF_PORT}", env.addr_b),
        s("-l"),
        format!("{}:{udp}", env.addr_b),
    ];
    sa.extend(kargs.iter().cloned());
    let mut ca = vec![
        kc.to_string_lossy().into_owned(),
        s("-r"),
        format!("{}:{udp}", env.addr_b),
        s("-l"),
        format!("127.0.0.1:{app}"),
    ];
    ca.extend(kargs);
    let fail = |why: String| {
        let mut r = RunResult::skipped(&spec.id(), "kcptun", 1, None, &why);
        r.status = "failed".into();
        r
    };
    let slog = ctx.tmp.join(format!("kcps{k}.log"));
    let clog = ctx.tmp.join(format!("kcpc{k}.log"));
    let mut server = match Proc::spawn("kcptun-server", &env.ns_b, &sa, &[], Some(&slog)) {
        Ok(p) => p,
        Err(e) => return fail(format!("{e:#}")),
    };
    let mut client = match Proc::spawn("kcptun-client", &env.ns_a, &ca, &[], Some(&clog)) {
        Ok(p) => p,
        Err(e) => return fail(format!("{e:#}")),
    };
    if let Err(e) = wait_listening(&env.ns_a, app, Duration::from_secs(5)) {
        return fail(format!("{e:#}; kcptun-client log: {}", log_tail(&clog)));
    }
    let (mut r, sn) = bulk_run(
        ctx,
        env,
        spec,
        &[],
        &format!("127.0.0.1:{app}"),
        &[&client, &server],
    );
    // The read-back is of the loopback application sockets, not of anything on the path.
    r.cc_seen.readback.clear();
    let mid = sn.get(sn.len() / 2);
    r.cc_seen.udp_sockets = mid.map_or(0, |m| m.udp_kcptun);
    r.sockets_sampled = r.cc_seen.udp_sockets;
    r.tcp.receiver_daemon_rss_mib_max = sn.iter().filter_map(|x| x.rss_mib).reduce(f64::max);
    r.notes
        .push("rides UDP (KCP): TCP congestion control does not apply".into());
    if !server.alive() || !client.alive() {
        r.notes
            .push("a kcptun process exited during the run".into());
    }
    client.stop(Duration::from_millis(300));
    server.stop(Duration::from_millis(300));
    r
}
