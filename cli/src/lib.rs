//! The `mtcpd` crate: command line, configuration and the hand-off to the daemon runtime.
//!
//! Owns: the command-line grammar (`command_line`), loading and validating configuration
//! (`config`), making keys (`genkey`), the metrics endpoint (`metrics`), the `mtcpd stats`
//! live view (`stats`), the built-in config reference (`reference`), exit statuses
//! (`exit_code`), the log filter (`logging`), SIGHUP reloads (`reload`), giving the
//! allocator's free memory back after a load (`memory_trim`), and the single call site where a
//! validated configuration is handed to the runtime (`daemon::run_daemon`). Must not touch: the
//! data path, which lives in the
//! `mtcpd-engine` crate; nothing here opens tunnels or carries bytes.
//!
//! The library half exists so tests can reach the config loader and the CLI grammar; the
//! binary (`src/main.rs`) only sets up logging and dispatches.

pub mod command_line;
pub mod config;
pub mod daemon;
pub mod dynamic_route;
pub mod exit_code;
pub mod genkey;
pub mod logging;
pub mod memory_trim;
pub mod metrics;
pub mod reference;
pub mod reload;
pub mod startup_log;
pub mod stats;
