//! The hand-off from the command line to the daemon runtime.
//!
//! Owns: `run_daemon`, the one function the `server`/`client` commands call with a
//! validated `DaemonConfig`. Must not touch: config parsing (done before this is called)
//! or logging set-up. When the engine's runtime lands, wire it in here and nowhere else.

use anyhow::bail;

use crate::config::{DaemonConfig, Role};

/// Runs the daemon for `role` with `config` until it is told to stop.
///
/// The runtime does not exist yet: this logs the resolved configuration and fails with
/// "daemon runtime not yet available", so `mtcpd server`/`mtcpd client` exit non-zero.
pub fn run_daemon(role: Role, config: &DaemonConfig) -> anyhow::Result<()> {
    tracing::info!(
        %role,
        origin = %config.origin,
        protocol_version = mtcpd_engine::wire::PROTOCOL_VERSION,
        "configuration loaded:\n{config}"
    );
    bail!(
        "daemon runtime not yet available: the {role} configuration is valid, but this build \
         of mtcpd cannot run the {role} yet (use `mtcpd check` to validate configs)"
    )
}
