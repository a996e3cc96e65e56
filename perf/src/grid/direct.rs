//! Contender "direct": N plain TCP flows from namespace A straight to the path's server, the
//! baseline every tunnel is compared with.
//!
//! Owns: which sockets are the direct flows. Must not touch: the measurement (`throughput`).

use super::environment::{Ctx, Env, PERF_PORT};
use super::plan::Spec;
use super::results::RunResult;
use super::sampling::record_socks;
use super::throughput::bulk_run;

pub(super) fn run_direct(ctx: &Ctx, env: &Env, spec: &Spec) -> RunResult {
    let target = format!("{}:{PERF_PORT}", env.addr_b);
    let (mut r, sn) = bulk_run(ctx, env, spec, &[], &target, &[]);
    record_socks(
        &mut r,
        &sn,
        |x| x.peer_ip == env.addr_b && x.peer_port == PERF_PORT,
        |x| x.local_port == PERF_PORT && x.local_ip == env.addr_b && x.peer_ip == env.addr_a,
    );
    r
}
