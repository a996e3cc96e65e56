//! Printing a resolved config for `mtcpd check` and the start-up log.
//!
//! Owns: the text form of a `DaemonConfig`: the file-level parts, then every value the engine
//! will run with (every `Config` and `RuntimeOptions` setting, after defaults), each under the
//! file key that sets it, and the ones no file key sets as comments. Must not touch: validity
//! or defaults. The pre-shared key is never shown, only its length.

use std::fmt;

use mtcpd_engine::settings::{Setting, SettingValue};

use super::engine_values::file_key;
use super::resolved::{DaemonConfig, Endpoint};
use mtcpd_common::units::{ByteSize, HumanDuration};

/// A setting's value as a TOML value that reads back to the same thing.
fn toml_value(value: &SettingValue) -> String {
    match value {
        SettingValue::Count(n) => n.to_string(),
        SettingValue::Bytes(n) => format!("\"{}\"", ByteSize(*n)),
        SettingValue::Duration(d) => format!("\"{}\"", HumanDuration(*d)),
        SettingValue::Flag(on) => on.to_string(),
        other => format!("\"{other}\""),
    }
}

/// One engine setting under its file key (`key` is the part after the table).
fn write_setting(out: &mut fmt::Formatter<'_>, key: &str, setting: &Setting) -> fmt::Result {
    match &setting.value {
        SettingValue::Unset(what_decides) => writeln!(out, "# {key}: {what_decides}"),
        SettingValue::Secret { len: 0 } => {
            writeln!(out, "# {key}: none (tunnels are not authenticated)")
        }
        value => writeln!(out, "{key} = {}", toml_value(value)),
    }
}

/// Prints a config as commented TOML-like text. The PSK is never shown.
impl fmt::Display for DaemonConfig {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = self.role;
        let mut settings = self.runtime.engine.settings();
        settings.extend(self.runtime.settings());
        // (table, key in the table, setting); table "" is the top level.
        let mut placed: Vec<(String, String, &Setting)> = Vec::new();
        let mut built_in: Vec<&Setting> = Vec::new();
        for setting in &settings {
            match file_key(setting.key, role) {
                Some(key) => match key.split_once('.') {
                    Some((table, key)) => placed.push((table.into(), key.into(), setting)),
                    None => placed.push((String::new(), key, setting)),
                },
                None => built_in.push(setting),
            }
        }
        let table = |name: &'static str| placed.iter().filter(move |(table, ..)| table == name);

        writeln!(out, "# resolved from {}", self.origin)?;
        writeln!(out, "mode = \"{role}\"")?;
        for (_, key, setting) in table("") {
            write_setting(out, key, setting)?;
        }
        match self.metrics_listen {
            Some(addr) => writeln!(out, "metrics_listen = \"{addr}\"")?,
            None => writeln!(out, "# metrics_listen: off")?,
        }
        match &self.log_level {
            Some(filter) => writeln!(out, "log_level = \"{filter}\"")?,
            None => writeln!(out, "# log_level: RUST_LOG, else info")?,
        }
        writeln!(out, "\n[{role}]")?;
        match &self.endpoint {
            Endpoint::Server(server) => {
                writeln!(out, "listen = \"{}\"", server.listen)?;
                writeln!(out, "default_backend = \"{}\"", server.default_backend)?;
                writeln!(out, "allow = {}", server.allow)?;
                writeln!(
                    out,
                    "unlisted_to_default_backend = {}",
                    server.unlisted_to_default_backend
                )?;
            }
            Endpoint::Client(client) => match client.servers.as_slice() {
                [one] => writeln!(out, "server = \"{one}\"")?,
                many => {
                    let quoted: Vec<String> = many.iter().map(|s| format!("\"{s}\"")).collect();
                    writeln!(out, "servers = [{}]", quoted.join(", "))?
                }
            },
        }
        for (_, key, setting) in table(role.as_str()) {
            write_setting(out, key, setting)?;
        }
        match &self.endpoint {
            Endpoint::Server(server) => {
                for allowed in &server.allowed_targets {
                    writeln!(out, "\n[[server.forward]]")?;
                    if let Some(name) = &allowed.name {
                        writeln!(out, "name = \"{name}\"")?;
                    }
                    writeln!(out, "target = \"{}\"", allowed.target)?;
                }
                for reverse in &server.reverse {
                    writeln!(out, "\n[[server.reverse]]")?;
                    writeln!(out, "name = \"{}\"", reverse.name)?;
                    writeln!(out, "listen = \"{}\"", reverse.listen)?;
                    writeln!(out, "when_absent = \"{}\"", reverse.when_absent.name())?;
                }
            }
            Endpoint::Client(client) => {
                for proxy in &client.proxies {
                    match &proxy.kind {
                        mtcpd_engine::runtime::ProxyKind::Socks5 { credentials } => {
                            writeln!(out, "\n[[client.socks5]]")?;
                            writeln!(out, "listen = \"{}\"", proxy.listen)?;
                            if let Some(c) = credentials {
                                writeln!(out, "username = \"{}\"", c.username)?;
                                writeln!(out, "# password: set")?;
                            }
                        }
                        mtcpd_engine::runtime::ProxyKind::Http => {
                            writeln!(out, "\n[[client.http_proxy]]")?;
                            writeln!(out, "listen = \"{}\"", proxy.listen)?;
                        }
                    }
                }
                for labelled in &client.forwards {
                    writeln!(out, "\n[[client.forward]]")?;
                    if let Some(name) = &labelled.name {
                        writeln!(out, "name = \"{name}\"")?;
                    }
                    writeln!(out, "listen = \"{}\"", labelled.forward.listen)?;
                    match &labelled.forward.target {
                        Some(target) => writeln!(out, "target = \"{target}\"")?,
                        None => writeln!(out, "# target: the server's default backend")?,
                    }
                }
                for exposed in &client.exposed {
                    writeln!(out, "\n[[client.expose]]")?;
                    writeln!(out, "name = \"{}\"", exposed.name)?;
                    writeln!(out, "target = \"{}\"", exposed.target)?;
                }
            }
        }
        writeln!(out, "\n[limits]")?;
        for (_, key, setting) in table("limits") {
            write_setting(out, key, setting)?;
        }
        writeln!(out, "\n[tls]")?;
        if self.runtime.tls.insecure_plaintext {
            writeln!(out, "# off: insecure_plaintext")?;
        } else if role == mtcpd_engine::Role::Server {
            writeln!(out, "# fingerprint: `mtcpd fingerprint -c FILE` prints it")?;
        }
        for (_, key, setting) in table("tls") {
            write_setting(out, key, setting)?;
        }
        writeln!(out, "\n# Engine values no config key sets (built in):")?;
        for setting in built_in {
            writeln!(out, "# {} = {}", setting.key, setting.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_toml_that_reads_back() {
        let bytes = toml_value(&SettingValue::Bytes(128 * 1024));
        assert_eq!(bytes, "\"128KiB\"");
        let duration = toml_value(&SettingValue::Duration(std::time::Duration::from_millis(
            250,
        )));
        assert_eq!(duration, "\"250ms\"");
        assert_eq!(toml_value(&SettingValue::Name("bbr".into())), "\"bbr\"");
        assert_eq!(toml_value(&SettingValue::Count(8)), "8");
    }
}
