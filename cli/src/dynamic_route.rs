//! Server: where a dynamic target goes (one a client names that is not a configured
//! `[[server.forward]]`), under the `[server] allow` list.
//!
//! Owns: parsing the requested target, resolving a name (this runs on the engine's resolver
//! threads, never on a worker), checking every resolved address, and the RESET code of a
//! refusal (not allowed: 5, unreachable: 7; PROTOCOL.md §4.6). Must not touch: the rules
//! themselves (`config::AllowList`) or configured forwards (`daemon.rs`).

use std::net::{SocketAddr, ToSocketAddrs};

use mtcpd_engine::runtime::{Route, reset_code};

use crate::config::{AllowList, TargetAddr, parse_target};

/// The route of `requested` under `allow`.
pub fn route(allow: &AllowList, requested: &str) -> Route {
    route_with(allow, requested, |host, port| {
        (host, port).to_socket_addrs().map(Iterator::collect)
    })
}

/// [`route`] with the resolver given (tests resolve names to chosen addresses).
pub fn route_with(
    allow: &AllowList,
    requested: &str,
    resolve: impl Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>,
) -> Route {
    let refuse = |why: &str| {
        tracing::info!(target = requested, "dynamic target not allowed: {why}");
        Route::Reset(reset_code::NOT_ALLOWED)
    };
    let Ok(target) = parse_target(requested) else {
        return refuse("not a host:port");
    };
    match target {
        TargetAddr::Socket(address) => {
            if allow.allows_address(None, address.ip(), address.port()) {
                Route::Connect(address)
            } else {
                refuse("no rule allows this address and port")
            }
        }
        TargetAddr::Host { host, port } => {
            if !allow.may_allow_name(&host, port) {
                return refuse("no rule allows this name and port");
            }
            let addresses = match resolve(&host, port) {
                Ok(addresses) if !addresses.is_empty() => addresses,
                Ok(_) | Err(_) => {
                    tracing::info!(target = requested, "dynamic target does not resolve");
                    return Route::Reset(reset_code::UNREACHABLE);
                }
            };
            // Every address is checked; the first allowed one is used.
            match addresses
                .iter()
                .find(|a| allow.allows_address(Some(&host), a.ip(), port))
            {
                Some(address) => Route::Connect(SocketAddr::new(address.ip(), port)),
                None => {
                    let all: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
                    refuse(&format!(
                        "it resolves to {}, which no rule allows",
                        all.join(", ")
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(rules: &[&str]) -> AllowList {
        AllowList::parse(&rules.iter().map(|r| r.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn resolver(
        answers: &'static [&'static str],
    ) -> impl Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> {
        move |_, port| {
            Ok(answers
                .iter()
                .map(|a| SocketAddr::new(a.parse().unwrap(), port))
                .collect())
        }
    }

    #[test]
    fn a_name_cannot_smuggle_in_a_private_address() {
        let list = allow(&["*.example.com:1-65535"]);
        assert_eq!(
            route_with(&list, "a.example.com:80", resolver(&["127.0.0.1"])),
            Route::Reset(reset_code::NOT_ALLOWED)
        );
        // A public address among the answers is the one used.
        assert_eq!(
            route_with(
                &list,
                "a.example.com:80",
                resolver(&["10.0.0.1", "93.184.216.34"])
            ),
            Route::Connect("93.184.216.34:80".parse().unwrap())
        );
        // An address rule lets the name reach that private address.
        let list = allow(&["*.example.com:1-65535", "127.0.0.1:80"]);
        assert_eq!(
            route_with(&list, "a.example.com:80", resolver(&["127.0.0.1"])),
            Route::Connect("127.0.0.1:80".parse().unwrap())
        );
    }

    #[test]
    fn addresses_names_and_failures_get_their_routes() {
        let list = allow(&["127.0.0.0/8:8000-8100"]);
        assert_eq!(
            route_with(&list, "127.0.0.1:8080", resolver(&[])),
            Route::Connect("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            route_with(&list, "127.0.0.1:22", resolver(&[])),
            Route::Reset(reset_code::NOT_ALLOWED)
        );
        assert_eq!(
            route_with(&list, "localhost:8080", resolver(&["::1", "127.0.0.1"])),
            Route::Connect("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            route_with(&list, "nowhere.invalid:8080", resolver(&[])),
            Route::Reset(reset_code::UNREACHABLE)
        );
        assert_eq!(
            route_with(&list, "not a target", resolver(&[])),
            Route::Reset(reset_code::NOT_ALLOWED)
        );
    }
}
