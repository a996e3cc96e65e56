//! `mtcpd`: the multi-TCP aggregation tunnel daemon.
//!
//! Placeholder until the daemon lands (issue 3): it parses the role and says what it would run.

use anyhow::Result;
use clap::Parser;

/// Command line of the mtcpd daemon.
#[derive(Debug, Parser)]
#[command(
    name = "mtcpd",
    version,
    about = "Multi-TCP aggregation tunnel (client and server daemon)"
)]
struct Cli {
    /// Which end of the tunnel this process is.
    #[arg(long, value_parser = ["server", "client"])]
    role: Option<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    println!(
        "mtcpd {} (protocol version {}): the daemon is not built yet; role = {:?}",
        env!("CARGO_PKG_VERSION"),
        mtcpd_engine::wire::PROTOCOL_VERSION,
        cli.role
    );
    Ok(())
}
