//! A running `mtcpd` daemon as the daemon's integration tests use it: its config written into
//! the test's temp dir, its stderr (the log) captured to a file there, stopped when dropped.
//!
//! The kit cannot name the binary (`env!("CARGO_BIN_EXE_mtcpd")` exists only in the binary
//! crate's own tests), so the caller passes its path in:
//!
//! ```ignore
//! let server = Daemon::launch(env!("CARGO_BIN_EXE_mtcpd"), &dir, "server", "server", &config)
//!     .io(io)
//!     .spawn();
//! ```
//!
//! By default `RUST_LOG` is removed from the child's environment, so it logs at its own
//! default level (info) whatever the developer's shell has set; [`Launch::log_filter`] sets one.
//!
//! Must not touch: the engine, and processes this test did not start.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::Driver;
use crate::process::ChildGuard;

/// A daemon about to be started; see [`Daemon::launch`].
#[derive(Debug)]
pub struct Launch {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    role: String,
    args: Vec<OsString>,
    env: Vec<(String, Option<String>)>,
    grace: Option<Duration>,
}

impl Launch {
    /// Adds `--io DRIVER`.
    pub fn io(self, io: Driver) -> Self {
        self.args(["--io", io.name()])
    }

    /// Adds command-line arguments after `ROLE -c CONFIG`.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets `RUST_LOG` (instead of removing it).
    pub fn log_filter(self, filter: &str) -> Self {
        self.env("RUST_LOG", filter)
    }

    /// Sets an environment variable in the child.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), Some(value.to_owned())));
        self
    }

    /// Removes an environment variable from the child.
    pub fn env_remove(mut self, key: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), None));
        self
    }

    /// The SIGTERM-to-SIGKILL grace of the guard (see [`ChildGuard::with_grace`]).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// Starts the daemon; panics if it cannot be spawned.
    pub fn spawn(self) -> Daemon {
        let mut command = Command::new(&self.bin);
        command
            .args([self.role.as_str(), "-c"])
            .arg(&self.config)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).expect("log file"));
        for (key, value) in &self.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let mut process = ChildGuard::spawn(&mut command).expect("spawn mtcpd");
        if let Some(grace) = self.grace {
            process = process.with_grace(grace);
        }
        Daemon {
            process,
            config: self.config,
            log: self.log,
        }
    }
}

/// A running daemon, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Daemon {
    /// The guarded child process.
    pub process: ChildGuard,
    config: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// A daemon `bin ROLE -c DIR/NAME.toml` whose config is `config` and whose stderr goes to
    /// `DIR/NAME.log`; add options to the [`Launch`], then [`Launch::spawn`] it.
    pub fn launch(
        bin: impl AsRef<Path>,
        dir: impl AsRef<Path>,
        name: &str,
        role: &str,
        config: &str,
    ) -> Launch {
        let dir = dir.as_ref();
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("write config");
        Launch {
            bin: bin.as_ref().to_owned(),
            config: path,
            log: dir.join(format!("{name}.log")),
            role: role.to_owned(),
            args: Vec::new(),
            env: vec![("RUST_LOG".to_owned(), None)],
            grace: None,
        }
    }

    /// The common case: `bin ROLE -c CONFIG --io IO` at the default log level.
    pub fn start(
        bin: impl AsRef<Path>,
        dir: impl AsRef<Path>,
        name: &str,
        role: &str,
        config: &str,
        io: Driver,
    ) -> Daemon {
        Daemon::launch(bin, dir, name, role, config).io(io).spawn()
    }

    /// The config file the daemon was started with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The log file (the daemon's stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far (empty if it cannot be read).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while the child has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.process.id()
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: libc::c_int) {
        self.process.signal(signal);
    }

    /// The exit status, if the daemon exits within `limit`.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.process.wait_timeout(limit)
    }

    /// SIGTERM, and the exit status within `limit`.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.process.terminate(limit)
    }

    /// Waits up to `limit` for the log to hold `needle` at least `count` times; whether it did.
    pub fn wait_for_log_count(&self, needle: &str, count: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.log().matches(needle).count() >= count {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `limit` for the log to hold `needle`; whether it did.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        self.wait_for_log_count(needle, 1, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tempdir::TempDir;

    /// A stand-in daemon: `sh SCRIPT -c CONFIG ARGS...` reports its arguments and `RUST_LOG`
    /// on stderr, then waits to be stopped.
    fn fake(dir: &TempDir) -> String {
        let script = dir.file(
            "fake.sh",
            "echo \"args: $*\" >&2\necho \"RUST_LOG=${RUST_LOG-unset}\" >&2\nexec sleep 30\n",
        );
        script.display().to_string()
    }

    #[test]
    fn a_started_daemon_gets_its_config_args_and_no_rust_log_and_stops_on_sigterm() {
        let dir = TempDir::new("daemon");
        let mut daemon = Daemon::start("/bin/sh", &dir, "d", &fake(&dir), "x = 1\n", Driver::Mio);
        assert_eq!(
            std::fs::read_to_string(daemon.config_path()).unwrap(),
            "x = 1\n"
        );
        let args = format!("args: -c {} --io mio", daemon.config_path().display());
        assert!(
            daemon.wait_for_log(&args, Duration::from_secs(10)),
            "{}",
            daemon.log()
        );
        assert!(
            daemon.wait_for_log("RUST_LOG=unset", Duration::from_secs(10)),
            "{}",
            daemon.log()
        );
        assert!(!daemon.wait_for_log_count("args:", 2, Duration::from_millis(50)));
        assert!(daemon.pid().is_some());
        let status = daemon.terminate(Duration::from_secs(5)).expect("exits");
        assert!(!status.success());
    }

    #[test]
    fn a_launch_passes_extra_args_and_the_log_filter() {
        let dir = TempDir::new("daemon");
        let daemon = Daemon::launch("/bin/sh", &dir, "d", &fake(&dir), "")
            .args(["--cores", "2"])
            .log_filter("warn")
            .spawn();
        assert!(
            daemon.wait_for_log("--cores 2", Duration::from_secs(10)),
            "{}",
            daemon.log()
        );
        assert!(
            daemon.wait_for_log("RUST_LOG=warn", Duration::from_secs(10)),
            "{}",
            daemon.log()
        );
    }
}
