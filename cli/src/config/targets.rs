//! Addresses as written in a config file: client listen addresses and forward targets.
//!
//! Owns: the accepted shapes of `listen` (`ip:port`) and `target` (`ip:port`, `[v6]:port`,
//! `host:port`) and their error messages. Must not touch: anything else in the file, or name
//! resolution (the server resolves host names when a stream opens).

use std::net::SocketAddr;
use std::str::FromStr;

use super::resolved::TargetAddr;

/// A client listen address: `ip:port` with a non-zero port.
pub(super) fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    let address = SocketAddr::from_str(text.trim()).map_err(|_| {
        format!(
            "\"{text}\" is not an ip:port address (write e.g. \"127.0.0.1:7001\" or \
             \"[::1]:7001\")"
        )
    })?;
    if address.port() == 0 {
        return Err(format!("\"{text}\": port must be between 1 and 65535"));
    }
    Ok(address)
}

/// A target: `ip:port`, `[ipv6]:port` or `dns-name:port`, with a non-zero port.
pub fn parse_target(text: &str) -> Result<TargetAddr, String> {
    let text = text.trim();
    let shape_hint = || {
        format!(
            "\"{text}\" is not a target address (write \"host:port\", e.g. \"10.0.0.5:3306\", \
             \"[::1]:80\" or \"db.internal:5432\")"
        )
    };
    if let Ok(address) = SocketAddr::from_str(text) {
        if address.port() == 0 {
            return Err(format!("\"{text}\": port must be between 1 and 65535"));
        }
        return Ok(TargetAddr::Socket(address));
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(shape_hint)?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("\"{text}\": port must be between 1 and 65535"))?;
    if !is_dns_name(host) {
        return Err(shape_hint());
    }
    Ok(TargetAddr::Host {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_accept_ips_and_host_names() {
        assert_eq!(
            parse_target("10.0.0.5:3306"),
            Ok(TargetAddr::Socket("10.0.0.5:3306".parse().unwrap()))
        );
        assert_eq!(
            parse_target("[::1]:80"),
            Ok(TargetAddr::Socket("[::1]:80".parse().unwrap()))
        );
        assert_eq!(
            parse_target("DB.internal:5432"),
            Ok(TargetAddr::Host {
                host: "db.internal".into(),
                port: 5432
            })
        );
    }

    #[test]
    fn targets_refuse_bad_shapes() {
        for bad in [
            "", "db", ":80", "db:0", "db:70000", "-db:1", "a..b:1", "::1:80", "db:x", "a b:1",
        ] {
            assert!(parse_target(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn listen_addresses_must_be_ip_and_port() {
        assert!(parse_listen_address("127.0.0.1:7001").is_ok());
        assert!(parse_listen_address("localhost:7001").is_err());
        assert!(parse_listen_address("127.0.0.1:0").is_err());
    }
}
