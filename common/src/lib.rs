//! Helpers shared by the engine (`mtcpd-engine`), the daemon (`mtcpd`) and the load tool
//! (`mtcp-perf`), which does not depend on the engine.
//!
//! Owns: [`sockopt`], the Linux TCP socket options both the tunnels and the load tool set and
//! read (TCP_CONGESTION, TCP_NOTSENT_LOWAT, TCP_INFO); and [`units`], the one parser and printer
//! of human quantities (sizes, durations, rates, probabilities) used by the config file and the
//! load tool's command line; and [`pattern`], the deterministic byte pattern the tests send and
//! `mtcp-perf bulk --verify` checks. Must not touch: any protocol state, event loop, or policy (which
//! option a tunnel gets is the engine's `runtime::sockopt`).

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod pattern;
pub mod sockopt;
pub mod units;
