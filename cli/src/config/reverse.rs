//! Reverse tunnels in the config file: `[[server.reverse]]` (a public port the server carries
//! to the client that exposes its name) and `[[client.expose]]` (a service this client
//! connects those streams to).
//!
//! Owns: checking those tables (names, addresses, `when_absent`, repeats) and the rule that
//! both need a key. Must not touch: the other tables, or what the runtime does with them.

use std::collections::HashSet;
use std::net::SocketAddr;

use mtcpd_engine::runtime::{ReverseListener, WhenAbsent};
use mtcpd_engine::wire::{MAX_EXPOSE_BODY, encode_expose_names, valid_expose_name};

use super::error::ConfigFileError;
use super::raw::{RawClientExpose, RawServerReverse};
use super::resolved::{ClientExpose, Endpoint};
use super::targets::{parse_listen_address, parse_target};
use super::validate::Checker;

impl Checker {
    /// `[[server.reverse]]`, in file order; `tunnel_listen` is the server's own tunnel address,
    /// which no reverse listener may take.
    pub(super) fn reverse_listeners(
        &self,
        tables: &[RawServerReverse],
        tunnel_listen: SocketAddr,
    ) -> Result<Vec<ReverseListener>, ConfigFileError> {
        let mut out: Vec<ReverseListener> = Vec::with_capacity(tables.len());
        for (index, table) in tables.iter().enumerate() {
            let key = format!("server.reverse[{index}]");
            let name = self.service_name(&key, &table.name, out.iter().map(|r| &r.name))?;
            let listen = parse_listen_address(&table.listen)
                .map_err(|message| self.invalid(format!("{key}.listen"), message))?;
            if listen == tunnel_listen {
                return Err(self.invalid(
                    format!("{key}.listen"),
                    format!("{listen} is the server's own tunnel address"),
                ));
            }
            if let Some(other) = out.iter().position(|r| r.listen == listen) {
                return Err(self.invalid(
                    format!("{key}.listen"),
                    format!("{listen} is already used by server.reverse[{other}]"),
                ));
            }
            let when_absent = match table.when_absent.as_deref() {
                None => WhenAbsent::default(),
                Some(text) => WhenAbsent::parse(text).ok_or_else(|| {
                    self.invalid(
                        format!("{key}.when_absent"),
                        format!(
                            "\"{text}\" is not one of \"close\" (no listener while no client \
                             exposes the name) or \"reset\" (listen, and reset connections)"
                        ),
                    )
                })?,
            };
            out.push(ReverseListener {
                name,
                listen,
                when_absent,
            });
        }
        Ok(out)
    }

    /// `[[client.expose]]`, in file order.
    pub(super) fn exposed_services(
        &self,
        tables: &[RawClientExpose],
    ) -> Result<Vec<ClientExpose>, ConfigFileError> {
        let mut out: Vec<ClientExpose> = Vec::with_capacity(tables.len());
        for (index, table) in tables.iter().enumerate() {
            let key = format!("client.expose[{index}]");
            let name = self.service_name(&key, &table.name, out.iter().map(|e| &e.name))?;
            let target = parse_target(&table.target)
                .map_err(|message| self.invalid(format!("{key}.target"), message))?;
            out.push(ClientExpose { name, target });
        }
        let names: Vec<&str> = out.iter().map(|e| e.name.as_str()).collect();
        if encode_expose_names(&names).is_none() {
            return Err(self.invalid(
                "client.expose",
                format!(
                    "too many exposed services: their names, one byte more each, must fit in \
                     {MAX_EXPOSE_BODY} bytes"
                ),
            ));
        }
        Ok(out)
    }

    fn service_name<'a>(
        &self,
        key: &str,
        name: &str,
        earlier: impl Iterator<Item = &'a String>,
    ) -> Result<String, ConfigFileError> {
        if !valid_expose_name(name) {
            return Err(self.invalid(
                format!("{key}.name"),
                format!(
                    "\"{name}\" is not a service name: 1 to 63 ASCII letters, digits, '.', '_' \
                     or '-'"
                ),
            ));
        }
        let mut seen: HashSet<&str> = HashSet::new();
        seen.extend(earlier.map(String::as_str));
        if seen.contains(name) {
            return Err(self.invalid(
                format!("{key}.name"),
                format!("the name \"{name}\" is used twice"),
            ));
        }
        Ok(name.to_owned())
    }

    /// Reverse tunnels need a key on both ends: a server must not open a public port for, nor
    /// a client connect a local service for, a peer that proved nothing.
    pub(super) fn reverse_needs_key(
        &self,
        endpoint: &Endpoint,
        has_key: bool,
    ) -> Result<(), ConfigFileError> {
        if has_key {
            return Ok(());
        }
        let key = match endpoint {
            Endpoint::Server(server) if !server.reverse.is_empty() => "server.reverse",
            Endpoint::Client(client) if !client.exposed.is_empty() => "client.expose",
            _ => return Ok(()),
        };
        Err(self.invalid(
            key,
            "reverse tunnels need a key on both ends. Make one with `mtcpd genkey --out \
             mtcpd.psk`, and set psk_file = \"mtcpd.psk\" (or psk) on both ends",
        ))
    }
}
