//! `mtcpd config-reference`: the commented example configuration, built into the binary.
//!
//! Owns: embedding config/mtcpd.example.toml, so an installed binary carries the reference
//! its `--help` points to (no source tree needed). Must not touch: what the file says (it is
//! kept in step with the engine's defaults by cli/tests/documented_defaults.rs) or how it is
//! loaded (`config`).

/// config/mtcpd.example.toml as it was when this binary was built: every key, its default and
/// its range, commented. `mtcpd check --role server|client` accepts it as it is.
pub const EXAMPLE_CONFIG: &str = include_str!("../../config/mtcpd.example.toml");
