//! The process's exit status: which failure gets which number.
//!
//! Owns: the exit-status constants and [`for_error`], which classifies an error that ended a
//! command. Must not touch: producing or printing errors (the commands and `main` do), or the
//! signal handling of a running daemon (`daemon`).
//!
//! The numbers are part of the interface: systemd units stop restarting on [`CONFIG`]
//! (`RestartPreventExitStatus=78`), and scripts test them. They are listed in `--help` and
//! docs/OPERATIONS.md; cli/tests/install.rs runs the binary to check each one.

use mtcpd_engine::runtime::RuntimeError;
use mtcpd_engine::tls::TlsError;

use crate::config::ConfigFileError;

/// The command did what it was asked; a daemon stopped by SIGINT/SIGTERM after its drain
/// (also when `drain_timeout` ran out and streams were cut: that is logged, not an error).
pub const SUCCESS: u8 = 0;
/// A runtime failure: a listen port in use, an unreachable metrics endpoint, a file that
/// cannot be written. Trying again later may work.
pub const FAILURE: u8 = 1;
/// The command line is wrong (clap uses 2 for its own errors as well).
pub const USAGE: u8 = 2;
/// The configuration is wrong (sysexits.h `EX_CONFIG`): the file cannot be read or parsed,
/// a value is invalid, `MTCPD_IO` names no driver, a TLS file cannot be used. Starting again
/// with the same configuration fails the same way.
pub const CONFIG: u8 = 78;
/// A second SIGINT/SIGTERM interrupted the drain (128 + SIGINT, as a shell reports ^C).
pub const INTERRUPTED: u8 = 130;

/// The exit status for `error`: [`CONFIG`] when anything in its chain is a configuration
/// problem, else [`FAILURE`].
pub fn for_error(error: &anyhow::Error) -> u8 {
    if error.chain().any(is_config_error) {
        CONFIG
    } else {
        FAILURE
    }
}

fn is_config_error(cause: &(dyn std::error::Error + 'static)) -> bool {
    if cause.is::<ConfigFileError>() {
        return true;
    }
    if let Some(TlsError::File { .. }) = cause.downcast_ref::<TlsError>() {
        // A certificate or key file the configuration names (or the state directory).
        return true;
    }
    matches!(
        cause.downcast_ref::<RuntimeError>(),
        Some(
            RuntimeError::BadIoEnv(_)
                | RuntimeError::DriverUnavailable(..)
                | RuntimeError::Config(_)
                | RuntimeError::Workers
                | RuntimeError::Reverse(_)
        )
    )
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn config_errors_are_78_wherever_they_are_in_the_chain() {
        let file = ConfigFileError::Unreadable {
            path: "x.toml".into(),
            io_error: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let error = Err::<(), _>(file)
            .context("configuration rejected")
            .unwrap_err();
        assert_eq!(for_error(&error), CONFIG);
        let bad_env = anyhow::Error::new(RuntimeError::BadIoEnv("epoll".into()))
            .context("cannot start the server");
        assert_eq!(for_error(&bad_env), CONFIG);
    }

    #[test]
    fn runtime_errors_are_1() {
        let in_use = anyhow::Error::new(RuntimeError::AddressInUse {
            addr: "127.0.0.1:8000".parse().unwrap(),
        })
        .context("cannot start the server");
        assert_eq!(for_error(&in_use), FAILURE);
        assert_eq!(for_error(&anyhow::anyhow!("anything else")), FAILURE);
    }
}
