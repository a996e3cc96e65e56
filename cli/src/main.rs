//! `mtcpd`: the multi-TCP aggregation tunnel daemon's entry point.
//!
//! Owns: process set-up (logging, set up by `mtcpd::logging`; the exit status `exit_code` picks)
//! and dispatch of the parsed
//! command line. Must not touch: config rules (`mtcpd::config`), the CLI grammar
//! (`mtcpd::command_line`) or the runtime (reached only through `mtcpd::daemon::run_daemon`).

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use mtcpd::command_line::{Action, Cli};
use mtcpd::config::{self, ConfigOrigin, DaemonConfig, LoadRequest, Role, defaults};
use mtcpd::daemon::run_daemon;
use mtcpd::exit_code;

fn main() -> ExitCode {
    let cli = Cli::parse();
    mtcpd::logging::init();
    let action = match cli.action() {
        Ok(action) => action,
        Err(usage_error) => {
            let mut command = Cli::command();
            let error = command.error(clap::error::ErrorKind::ArgumentConflict, usage_error);
            let _ = error.print();
            return ExitCode::from(exit_code::USAGE);
        }
    };
    let outcome = match action {
        Action::Check(request) => check(&request),
        Action::Run(request) => run(&request),
        Action::Genkey(out) => genkey(out.as_deref()),
        Action::Fingerprint(request) => fingerprint(&request),
        Action::Stats(request) => mtcpd::stats::run(&request),
        Action::ConfigReference => {
            print!("{}", mtcpd::reference::EXAMPLE_CONFIG);
            Ok(())
        }
    };
    match outcome {
        Ok(()) => ExitCode::from(exit_code::SUCCESS),
        Err(error) => {
            eprintln!("mtcpd: error: {}", error_text(&error));
            ExitCode::from(exit_code::for_error(&error))
        }
    }
}

/// `error` and its causes, joined by ": ", each said once: a cause whose text the message
/// before it already includes (an error type that prints its source in its own message) is
/// skipped, so no cause is printed twice.
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// `mtcpd check`: validate, print the resolved config on stdout.
fn check(request: &LoadRequest) -> anyhow::Result<()> {
    let config = load_config(request)?;
    print!("{config}");
    eprintln!(
        "mtcpd: {}: valid {} configuration",
        config.origin, config.role
    );
    Ok(())
}

/// `mtcpd genkey [--out FILE]`: a new key on stdout (instructions on stderr), or in FILE.
fn genkey(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let key = mtcpd::genkey::new_key_text()?;
    match out {
        Some(path) => mtcpd::genkey::write_key_file(path, &key)?,
        None => println!("{key}"),
    }
    eprintln!("{}", mtcpd::genkey::instructions(out));
    Ok(())
}

/// `mtcpd fingerprint`: the server's TLS certificate fingerprint on stdout (generating the key
/// pair in the state directory on first use, as the server's first start would).
fn fingerprint(request: &LoadRequest) -> anyhow::Result<()> {
    let config = load_config(request)?;
    let tls = &config.runtime.tls;
    if tls.insecure_plaintext {
        anyhow::bail!(
            "{}: insecure_plaintext is set: this server has no TLS identity",
            config.origin
        );
    }
    let identity = tls
        .server_identity()
        .context("cannot load the server's TLS identity")?;
    println!("{}", identity.fingerprint());
    let from = match &identity.source {
        mtcpd_engine::tls::IdentitySource::Files => "the configured tls.cert_file".to_owned(),
        mtcpd_engine::tls::IdentitySource::StateDir { dir, .. } => dir.display().to_string(),
        mtcpd_engine::tls::IdentitySource::Ephemeral => {
            "a key pair for this process only (no writable state directory): it cannot be \
             pinned"
                .to_owned()
        }
    };
    eprintln!("mtcpd: certificate from {from}; pin it in clients with [tls] server_fingerprint");
    Ok(())
}

/// `mtcpd server|client` / `mtcpd --role …`: load, then hand over to the runtime.
fn run(request: &LoadRequest) -> anyhow::Result<()> {
    let config = load_config(request)?;
    if config.log_level.is_some() && !mtcpd::logging::env_decides() {
        let _ = mtcpd::logging::use_config_filter(config.log_level.as_deref());
    }
    run_daemon(config.role, &config, request)
}

fn load_config(request: &LoadRequest) -> anyhow::Result<DaemonConfig> {
    // The error itself names the file and the key.
    let config = config::load(request).context("configuration rejected")?;
    if config.origin == ConfigOrigin::BuiltInDefaults {
        announce_defaults(config.role);
    }
    warn_if_keyless(&config);
    Ok(config)
}

/// A keyless daemon runs (the config allowed it), but says so: loudly for a server that anyone
/// beyond this host can reach.
fn warn_if_keyless(config: &DaemonConfig) {
    if config.has_psk() {
        return;
    }
    match config.server() {
        Some(server) if !server.listen.ip().is_loopback() => tracing::warn!(
            "NO KEY: this server accepts tunnels on {} from anyone who can reach it, and \
             forwards their streams to {}. Make a key with `mtcpd genkey` and set psk or \
             psk_file on both ends",
            server.listen,
            server.default_backend
        ),
        Some(_) => tracing::warn!(
            "no psk or psk_file set: tunnels are not authenticated (make a key with `mtcpd genkey`)"
        ),
        None => tracing::warn!(
            "no psk or psk_file set: unless [tls] server_fingerprint or ca_file is set, this \
             client cannot tell its server from an impostor (a man in the middle reads \
             everything), and a server with a key will refuse it (make a key with `mtcpd genkey`)"
        ),
    }
}

fn announce_defaults(role: Role) {
    match role {
        Role::Server => tracing::info!(
            "no config file given (-c): using built-in defaults: listening for tunnels on {}, \
             forwarding streams to {}",
            defaults::SERVER_LISTEN,
            defaults::SERVER_BACKEND
        ),
        Role::Client => tracing::info!(
            "no config file given (-c): using built-in defaults: listening on {}, connecting \
             to server {} with {} tunnels",
            defaults::CLIENT_LISTEN,
            defaults::CLIENT_SERVER,
            mtcpd_engine::Config::default().pool_size
        ),
    }
}
