//! The daemon's log output and its filter, which a reload may change.
//!
//! Owns: setting up the process's subscriber (stderr, `RUST_LOG` syntax), the filter's source
//! (`RUST_LOG`, else the config's `log_level`, else `info`), and replacing the filter while
//! running (`tracing_subscriber`'s reload layer). Must not touch: what is logged.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The filter used when neither `RUST_LOG` nor `log_level` says otherwise.
pub const DEFAULT_FILTER: &str = "info";

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Checks a `log_level` value; the text back, trimmed, or why it is not a filter.
pub fn parse_filter(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty; use e.g. \"info\" or \"mtcpd=debug,info\"".into());
    }
    EnvFilter::builder()
        .parse(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("not a log filter ({e}); use e.g. \"info\" or \"mtcpd=debug,info\""))
}

/// True when `RUST_LOG` is set: it decides the filter, and `log_level` is not used.
pub fn env_decides() -> bool {
    std::env::var_os(EnvFilter::DEFAULT_ENV).is_some()
}

/// Logs to stderr, filtered by `RUST_LOG` (default [`DEFAULT_FILTER`] until
/// [`use_config_filter`] is called).
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
    }
}

/// Makes `log_level` (`None`: [`DEFAULT_FILTER`]) the filter, unless `RUST_LOG` decides. The
/// filter now in effect, or why it could not be changed.
pub fn use_config_filter(log_level: Option<&str>) -> Result<String, String> {
    if env_decides() {
        return Err("RUST_LOG is set and wins over log_level".into());
    }
    let text = log_level.unwrap_or(DEFAULT_FILTER);
    let filter = EnvFilter::builder()
        .parse(text)
        .map_err(|e| format!("not a log filter: {e}"))?;
    let handle = FILTER
        .get()
        .ok_or_else(|| "logging is not set up by this process".to_owned())?;
    handle
        .reload(filter)
        .map_err(|e| format!("cannot change the log filter: {e}"))?;
    Ok(text.to_owned())
}
