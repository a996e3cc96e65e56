//! The `mtcpd` command-line grammar (clap derive) and its translation into a `LoadRequest`.
//!
//! Owns: commands, flags, env vars and `--help` text. Must not touch: configuration rules
//! (the `config` module decides what is valid) or the runtime.
//!
//! Accepted forms:
//! - `mtcpd --role server|client [-c FILE] [--cores N] [--io auto|uring|mio]`
//! - `mtcpd server -c FILE` / `mtcpd client -c FILE` (the seed's form)
//! - `mtcpd check -c FILE [--role server|client]`
//! - `mtcpd genkey [--out FILE]`
//! - `mtcpd fingerprint [-c FILE]` (the server's TLS certificate fingerprint, for pinning)
//! - `mtcpd stats [--metrics ADDR] [--once] [--json]` (a live view of a running daemon, read
//!   from its metrics endpoint)
//! - `mtcpd config-reference` (the commented example config, built in)

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use crate::config::{CommandLineOverrides, IoChoice, LoadRequest, Role};

/// `--cores` bounds: the engine's range of `RuntimeOptions::workers`.
const WORKERS_MIN: i64 = *mtcpd_engine::runtime::options::range::WORKERS.start() as i64;
const WORKERS_MAX: i64 = *mtcpd_engine::runtime::options::range::WORKERS.end() as i64;

/// Parses an engine name (`Role`, `IoChoice`) from one of `names`, listing them in `--help`.
fn engine_name<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    PossibleValuesParser::new(names).try_map(|name: String| name.parse::<T>())
}

const LONG_ABOUT: &str = "\
mtcpd carries many application TCP connections over a pool of N pre-opened TCP \
connections (tunnels) between a client and a server daemon. Each application connection \
becomes a stream whose bytes are split across the tunnels and put back in order at the \
far end, so one connection gets about N congestion windows, and new connections need no \
handshake across the WAN (0-RTT).

Roles:
  client  runs near the applications: listens on local addresses (forwards), opens the
          tunnel pool to the server and carries each accepted connection as a stream.
  server  runs near the services: accepts tunnels and connects each stream to its target
          (an allowed [[server.forward]] target, else the default backend).";

const AFTER_HELP: &str = "\
Defaults when no config file is given:
  server  listens for tunnels on 127.0.0.1:8000, forwards streams to 127.0.0.1:9000
  client  listens for applications on 127.0.0.1:7000, connects to the server at
          127.0.0.1:8000 with a pool of 8 tunnels
  Pool sizes need not match: the client proposes, the server grants at most its own
  connection_pool_size (and limits.max_tunnels).

Configuration:
  TOML. `mtcpd config-reference` prints every key with its meaning, default and range (the
  commented example config, built into this binary; `mtcpd config-reference > mtcpd.toml` is
  a starting point). The seed's config.server.toml / config.client.toml load unchanged.
  `mtcpd check -c FILE` validates a file and prints the resolved configuration. Errors name
  the file, the key (e.g. client.server_port) and what is wrong.

Keys:
  Both ends prove the same pre-shared key (psk or psk_file, 32 bytes at least). Make one with
  `mtcpd genkey` (or `mtcpd genkey --out FILE` for psk_file). A server with [[server.forward]]
  targets refuses to start without a key; a keyless server with only its default backend or a
  keyless client runs, with a warning.

Environment:
  RUST_LOG      log filter (default: info), e.g. RUST_LOG=debug or RUST_LOG=mtcpd=debug
                (the seed's RUST_LOG=mtcp=debug works too: targets match by prefix)
  MTCPD_IO      I/O driver (mio, uring or auto) when neither --io nor the config's io picks
                one: --io wins over the config's io, which wins over MTCPD_IO; unset or auto
                takes io_uring if the kernel allows it, else mio. Read by the engine; any
                other value stops the daemon with an error
  MTCPD_CONFIG  config file, same as -c

Exit status:
  0    success; a daemon stopped by SIGINT/SIGTERM after its drain (also when drain_timeout
       ran out and streams were cut: logged as a warning)
  1    runtime failure (e.g. a listen port already in use, a key file that exists)
  2    usage error (the command line)
  78   configuration error (EX_CONFIG): the file cannot be read or parsed, a value is invalid,
       MTCPD_IO names no driver, a TLS file cannot be used; starting again will not help
  130  a second SIGINT/SIGTERM cut the drain short

Examples:
  mtcpd server -c config/config.server.toml
  mtcpd client -c config/config.client.toml
  mtcpd --role server --cores 8
  mtcpd config-reference > my.toml; mtcpd check -c my.toml --role client
  mtcpd genkey --out mtcpd.psk     (then psk_file = \"mtcpd.psk\" on both ends)
  mtcpd fingerprint -c config/config.server.toml
  mtcpd client -c client.toml --metrics 127.0.0.1:9100   (Prometheus metrics at /metrics)
  mtcpd stats --metrics 127.0.0.1:9100                   (a live view of that daemon)";

/// Command line of the mtcpd daemon.
#[derive(Debug, Parser)]
#[command(
    name = "mtcpd",
    version,
    about = "Multi-TCP aggregation tunnel: client and server daemon",
    long_about = LONG_ABOUT,
    after_long_help = AFTER_HELP,
    after_help = "Defaults, config reference and environment variables: see `mtcpd --help`."
)]
pub struct Cli {
    /// What to do; without a command, run the daemon given by --role (or the config's mode).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options shared by every command.
    #[command(flatten)]
    pub options: SharedOptions,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server daemon (same as --role server).
    Server,
    /// Run the client daemon (same as --role client).
    Client,
    /// Validate a config file, print the resolved configuration, exit 0 if valid, 78 if not.
    Check,
    /// Make a new pre-shared key: 32 random bytes from the OS, printed as 64 hex characters
    /// (use them as `psk = "…"` on both ends), or written to FILE (mode 0600) for `psk_file`.
    Genkey {
        /// Write the key to this new file (readable by its owner only) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the server's TLS certificate fingerprint (for clients' tls.server_fingerprint);
    /// generates the server's key pair in its state directory if it has none yet.
    Fingerprint,
    /// A live view of a running daemon (like top), read from its metrics endpoint every
    /// second: per tunnel RTT, cwnd, throughput each way and resends; per session and per
    /// forward totals. The daemon must run with `metrics_listen` or `--metrics`.
    Stats {
        /// Print one table and exit (throughput is measured over one interval first).
        #[arg(long)]
        once: bool,
        /// Print JSON instead of a table (with --once: one document; else one per line).
        #[arg(long)]
        json: bool,
        /// Time between two readings.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = mtcpd_common::units::parse_duration)]
        interval: std::time::Duration,
    },
    /// Print the commented example configuration: every key with its meaning, default and
    /// range (built into this binary). `mtcpd check --role server|client` accepts it as is.
    ConfigReference,
}

/// Options accepted before or after the subcommand.
#[derive(Debug, Args)]
pub struct SharedOptions {
    /// Which end of the tunnel this process is (same as the `server`/`client` commands).
    /// Without it, the role comes from the file's `mode`, or from its only [server]/[client]
    /// table. With `check`, validates the file for this role.
    #[arg(long, global = true, value_parser = engine_name::<Role>(Role::NAMES))]
    pub role: Option<Role>,

    /// TOML config file. Without it, built-in defaults are used (see below).
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        env = "MTCPD_CONFIG",
        global = true
    )]
    pub config: Option<PathBuf>,

    /// Worker threads, one pinned per core [default: server all available cores, client 1;
    /// overrides `cores`]. A client runs one session with its own tunnel pool per worker.
    #[arg(long, value_name = "N", global = true, value_parser = clap::value_parser!(u16).range(WORKERS_MIN..=WORKERS_MAX))]
    pub cores: Option<u16>,

    /// I/O driver: auto probes the kernel for io_uring (once) and falls back to mio
    /// [default: auto, where MTCPD_IO may pick one; overrides `io`].
    #[arg(long, global = true, value_parser = engine_name::<IoChoice>(IoChoice::NAMES))]
    pub io: Option<IoChoice>,

    /// Daemon: serve Prometheus metrics at http://ADDR/metrics (overrides `metrics_listen`;
    /// off by default). `mtcpd stats`: the endpoint to read [default: 127.0.0.1:9100].
    #[arg(long, value_name = "ADDR", global = true)]
    pub metrics: Option<std::net::SocketAddr>,
}

/// What `main` should do, after reconciling the subcommand with `--role`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run the daemon (role may still come from the config file).
    Run(LoadRequest),
    /// Validate and print.
    Check(LoadRequest),
    /// Make a key (to stdout, or to this file).
    Genkey(Option<PathBuf>),
    /// Print the server's certificate fingerprint.
    Fingerprint(LoadRequest),
    /// Show a running daemon's figures.
    Stats(StatsRequest),
    /// Print the example configuration.
    ConfigReference,
}

/// `mtcpd stats`: where to read and how to show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsRequest {
    /// The daemon's metrics endpoint.
    pub metrics: std::net::SocketAddr,
    /// One table (or document), then exit.
    pub once: bool,
    /// JSON instead of a table.
    pub json: bool,
    /// Time between two readings.
    pub interval: std::time::Duration,
}

/// Where `mtcpd stats` looks without `--metrics` (the address OPERATIONS.md suggests).
pub const DEFAULT_METRICS: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9100);

/// A command line that parses but does not make sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsageError {
    /// `mtcpd server --role client`.
    #[error("`mtcpd {command}` conflicts with --role {role}")]
    RoleConflict {
        /// The subcommand's role.
        command: Role,
        /// The flag's role.
        role: Role,
    },
    /// `mtcpd` with no role, no command and no config.
    #[error(
        "say which end to run: `mtcpd server`, `mtcpd client`, `mtcpd --role server|client`, \
         or give a config file with -c (see `mtcpd --help`)"
    )]
    NothingToRun,
}

impl Cli {
    /// Reconciles the subcommand with `--role` and builds the load request.
    pub fn action(&self) -> Result<Action, UsageError> {
        let command_role = match &self.command {
            Some(Command::Server) => Some(Role::Server),
            Some(Command::Client) => Some(Role::Client),
            Some(Command::Genkey { out }) => return Ok(Action::Genkey(out.clone())),
            Some(Command::Stats {
                once,
                json,
                interval,
            }) => {
                return Ok(Action::Stats(StatsRequest {
                    metrics: self.options.metrics.unwrap_or(DEFAULT_METRICS),
                    once: *once,
                    json: *json,
                    interval: *interval,
                }));
            }
            Some(Command::ConfigReference) => return Ok(Action::ConfigReference),
            Some(Command::Fingerprint) => Some(Role::Server),
            Some(Command::Check) | None => None,
        };
        let role = match (command_role, self.options.role) {
            (Some(command), Some(role)) if command != role => {
                return Err(UsageError::RoleConflict { command, role });
            }
            (Some(role), _) | (None, Some(role)) => Some(role),
            (None, None) => None,
        };
        let request = LoadRequest {
            file: self.options.config.clone(),
            overrides: CommandLineOverrides {
                role,
                cores: self.options.cores.map(usize::from),
                io: self.options.io,
                metrics_listen: self.options.metrics,
            },
        };
        match self.command {
            Some(Command::Check) => Ok(Action::Check(request)),
            Some(Command::Fingerprint) => Ok(Action::Fingerprint(request)),
            _ if role.is_none() && request.file.is_none() => Err(UsageError::NothingToRun),
            _ => Ok(Action::Run(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action_of(arguments: &[&str]) -> Result<Action, UsageError> {
        let cli = Cli::try_parse_from(arguments).expect("arguments should parse");
        cli.action()
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn seed_form_sets_role_and_file() {
        let Action::Run(request) = action_of(&["mtcpd", "server", "-c", "s.toml"]).unwrap() else {
            panic!("expected run");
        };
        assert_eq!(request.overrides.role, Some(Role::Server));
        assert_eq!(request.file, Some(PathBuf::from("s.toml")));
    }

    #[test]
    fn role_flag_form_takes_cores_and_io() {
        let Action::Run(request) =
            action_of(&["mtcpd", "--role", "client", "--cores", "4", "--io", "mio"]).unwrap()
        else {
            panic!("expected run");
        };
        assert_eq!(request.overrides.role, Some(Role::Client));
        assert_eq!(request.overrides.cores, Some(4));
        assert_eq!(request.overrides.io, Some(IoChoice::Mio));
        assert_eq!(request.file, None);
    }

    #[test]
    fn options_may_follow_or_precede_the_command() {
        let before = action_of(&["mtcpd", "-c", "f.toml", "check"]).unwrap();
        let after = action_of(&["mtcpd", "check", "-c", "f.toml"]).unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn conflicting_roles_are_a_usage_error() {
        assert_eq!(
            action_of(&["mtcpd", "server", "--role", "client"]),
            Err(UsageError::RoleConflict {
                command: Role::Server,
                role: Role::Client
            })
        );
    }

    #[test]
    fn genkey_takes_an_optional_output_file() {
        assert_eq!(action_of(&["mtcpd", "genkey"]), Ok(Action::Genkey(None)));
        assert_eq!(
            action_of(&["mtcpd", "genkey", "--out", "k.psk"]),
            Ok(Action::Genkey(Some(PathBuf::from("k.psk"))))
        );
    }

    #[test]
    fn metrics_flag_serves_for_a_daemon_and_names_the_endpoint_for_stats() {
        let Action::Run(request) =
            action_of(&["mtcpd", "server", "--metrics", "127.0.0.1:9100"]).unwrap()
        else {
            panic!("expected run");
        };
        assert_eq!(
            request.overrides.metrics_listen,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        let Action::Stats(stats) = action_of(&["mtcpd", "stats", "--once", "--json"]).unwrap()
        else {
            panic!("expected stats");
        };
        assert_eq!(stats.metrics, DEFAULT_METRICS);
        assert!(stats.once && stats.json);
        assert!(Cli::try_parse_from(["mtcpd", "stats", "--metrics", "nonsense"]).is_err());
    }

    #[test]
    fn nothing_to_run_is_a_usage_error() {
        assert_eq!(action_of(&["mtcpd"]), Err(UsageError::NothingToRun));
    }

    #[test]
    fn zero_cores_is_refused_by_the_parser() {
        assert!(Cli::try_parse_from(["mtcpd", "--role", "server", "--cores", "0"]).is_err());
    }
}
