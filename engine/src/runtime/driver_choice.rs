//! Which I/O driver a runtime runs.
//!
//! Owns: resolving the caller's [`IoChoice`] to a driver: `MTCPD_IO` when the caller left the
//! choice at [`IoChoice::Auto`], then the io_uring probe, which runs once per process (the
//! kernel's answer does not change, and each probe sets up rings). Must not touch: the drivers
//! themselves (`io`, `uring`) or how a runtime starts them.
//!
//! Precedence: an explicit [`IoChoice::Mio`] or [`IoChoice::Uring`] (the daemon's `--io`, or
//! its config's `io`) wins; with `Auto`, `MTCPD_IO=mio|uring|auto` decides; unset (or empty)
//! or `auto` takes io_uring when the probe works and mio otherwise. Any other `MTCPD_IO` value
//! is an error, not a silent fallback.

use std::ffi::OsStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{IoChoice, RuntimeError};

/// The environment variable consulted when the caller asked for [`IoChoice::Auto`].
pub(super) const IO_ENV: &str = "MTCPD_IO";

/// The drivers this crate can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DriverKind {
    Mio,
    #[cfg(target_os = "linux")]
    Uring,
}

impl DriverKind {
    /// The name `--io` and `MTCPD_IO` use for it.
    pub(super) fn name(self) -> &'static str {
        match self {
            DriverKind::Mio => "mio",
            #[cfg(target_os = "linux")]
            DriverKind::Uring => "uring",
        }
    }
}

/// Picks the driver for `choice`, reading `MTCPD_IO` from the environment when it is `Auto`.
pub(super) fn choose_driver(choice: IoChoice) -> Result<DriverKind, RuntimeError> {
    let env = std::env::var_os(IO_ENV);
    let requested = requested(choice, env.as_deref())?;
    let from_env = choice == IoChoice::Auto && requested != IoChoice::Auto;
    if from_env {
        tracing::info!(?requested, "{IO_ENV} picked the I/O driver");
    }
    match requested {
        IoChoice::Mio => Ok(DriverKind::Mio),
        IoChoice::Auto => match uring_probe() {
            #[cfg(target_os = "linux")]
            Ok(()) => Ok(DriverKind::Uring),
            #[cfg(not(target_os = "linux"))]
            Ok(()) => Ok(DriverKind::Mio),
            Err(why) => {
                tracing::info!("auto: io_uring unavailable ({why}); using mio");
                Ok(DriverKind::Mio)
            }
        },
        IoChoice::Uring => match uring_probe() {
            #[cfg(target_os = "linux")]
            Ok(()) => Ok(DriverKind::Uring),
            #[cfg(not(target_os = "linux"))]
            Ok(()) => unreachable!("the probe fails off Linux"),
            Err(why) => Err(RuntimeError::DriverUnavailable(
                IoChoice::Uring,
                if from_env {
                    format!("{why} ({IO_ENV}=uring); set {IO_ENV}=mio or auto")
                } else {
                    format!("{why}; use --io mio or auto")
                },
            )),
        },
    }
}

/// `choice`, or, when it is `Auto`, the driver `env` (the value of `MTCPD_IO`) names.
fn requested(choice: IoChoice, env: Option<&OsStr>) -> Result<IoChoice, RuntimeError> {
    if choice != IoChoice::Auto {
        return Ok(choice);
    }
    let Some(value) = env else {
        return Ok(IoChoice::Auto);
    };
    match value.to_str() {
        Some("") => Ok(IoChoice::Auto),
        // The same names as `--io` and the config's `io` (IoChoice's FromStr).
        Some(name) => name
            .parse()
            .map_err(|_| RuntimeError::BadIoEnv(name.to_owned())),
        None => Err(RuntimeError::BadIoEnv(value.to_string_lossy().into_owned())),
    }
}

/// How many times this process probed the kernel (once at most; tests check it).
static PROBES_RUN: AtomicUsize = AtomicUsize::new(0);

/// Whether the kernel gives this process the io_uring driver's ring, asked once per process.
fn uring_probe() -> Result<(), String> {
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    ANSWER
        .get_or_init(|| {
            PROBES_RUN.fetch_add(1, Ordering::SeqCst);
            probe_kernel()
        })
        .clone()
}

#[cfg(target_os = "linux")]
fn probe_kernel() -> Result<(), String> {
    super::uring::probe().map_err(|e| format!("the kernel refused an io_uring instance: {e}"))
}

#[cfg(not(target_os = "linux"))]
fn probe_kernel() -> Result<(), String> {
    Err("io_uring exists only on Linux".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(value: &str) -> Option<&OsStr> {
        Some(OsStr::new(value))
    }

    #[test]
    fn an_explicit_choice_wins_over_the_environment() {
        for explicit in [IoChoice::Mio, IoChoice::Uring] {
            for value in [None, env("mio"), env("uring"), env("auto"), env("bogus")] {
                assert_eq!(requested(explicit, value).unwrap(), explicit, "{value:?}");
            }
        }
    }

    #[test]
    fn auto_follows_the_environment() {
        assert_eq!(requested(IoChoice::Auto, None).unwrap(), IoChoice::Auto);
        assert_eq!(requested(IoChoice::Auto, env("")).unwrap(), IoChoice::Auto);
        assert_eq!(
            requested(IoChoice::Auto, env("auto")).unwrap(),
            IoChoice::Auto
        );
        assert_eq!(
            requested(IoChoice::Auto, env("mio")).unwrap(),
            IoChoice::Mio
        );
        assert_eq!(
            requested(IoChoice::Auto, env("uring")).unwrap(),
            IoChoice::Uring
        );
    }

    #[test]
    fn a_bad_environment_value_is_a_clear_error() {
        for value in ["epoll", "MIO", " mio", "uring,mio"] {
            let err = requested(IoChoice::Auto, env(value)).unwrap_err();
            assert!(
                matches!(&err, RuntimeError::BadIoEnv(v) if v == value),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains("MTCPD_IO") && text.contains("mio, uring or auto"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_kernel_is_probed_once_per_process() {
        let first = uring_probe();
        for _ in 0..3 {
            assert_eq!(uring_probe(), first);
        }
        assert!(choose_driver(IoChoice::Uring).is_ok() == first.is_ok());
        assert_eq!(PROBES_RUN.load(Ordering::SeqCst), 1);
    }
}
