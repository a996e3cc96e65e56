//! HTTP proxy requests as a sans-IO state machine: `CONNECT host:port` (a tunnel) and
//! absolute-form requests (`GET http://host[:port]/path`), rewritten to origin-form for the
//! origin, one request per connection (`Connection: close` is added).
//!
//! Owns: reading the request head, the target it names, the rewrite and the error responses.
//! Must not touch: I/O or the request body (it follows the head on the stream untouched).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{
    Host, MAX_HANDSHAKE_BYTES, ProxyFailure, ProxyRequest, ReplyKind, Step, Verdict, target_text,
    valid_name,
};

/// Headers meant for the proxy (or for one hop), not forwarded to the origin.
const HOP_HEADERS: [&str; 5] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "upgrade",
];

/// Most header lines in a request head.
const MAX_HEADERS: usize = 128;

/// One HTTP proxy request head.
#[derive(Debug, Default)]
pub struct HttpHandshake {
    /// How far the end-of-head search has looked (so a head arriving byte by byte is not
    /// rescanned from the start each time).
    scanned: usize,
    done: bool,
}

/// A complete error response with `code` and `text`, closing the connection.
pub fn status_reply(code: u16, text: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} {text}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}\n",
        text.len() + 1
    )
    .into_bytes()
}

/// The status for a verdict other than success.
pub fn status_for(verdict: Verdict) -> (u16, &'static str) {
    match verdict {
        Verdict::Connected => (200, "Connection established"),
        Verdict::NotAllowed => (403, "Forbidden"),
        Verdict::TimedOut => (504, "Gateway Timeout"),
        Verdict::ConnectionRefused | Verdict::Unreachable | Verdict::Failed => (502, "Bad Gateway"),
    }
}

fn bad_request(reason: impl Into<String>) -> ProxyFailure {
    ProxyFailure::new(status_reply(400, "Bad Request"), reason)
}

impl HttpHandshake {
    /// A handshake waiting for a request head.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `input`; once the head is complete it is removed from `input` and the request
    /// returned.
    pub fn advance(&mut self, input: &mut Vec<u8>) -> Result<Step, ProxyFailure> {
        if self.done {
            return Err(bad_request("HTTP proxy request already read"));
        }
        let from = self.scanned.saturating_sub(3);
        let Some(at) = input
            .get(from..)
            .and_then(|rest| rest.windows(4).position(|w| w == b"\r\n\r\n"))
        else {
            self.scanned = input.len();
            return Ok(Step::NeedMore);
        };
        let end = from + at + 4;
        if end > MAX_HANDSHAKE_BYTES {
            return Err(ProxyFailure::new(
                status_reply(431, "Request Header Fields Too Large"),
                "proxy request too large",
            ));
        }
        let request = parse_head(&input[..end])?;
        input.drain(..end);
        self.done = true;
        Ok(Step::Request(request))
    }
}

/// The request line and headers (`head` ends with the blank line).
fn parse_head(head: &[u8]) -> Result<ProxyRequest, ProxyFailure> {
    let text = std::str::from_utf8(head).map_err(|_| bad_request("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_request("malformed request line"));
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(bad_request(format!("unsupported HTTP version {version:?}")));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad_request("malformed method"));
    }
    let headers: Vec<&str> = lines.take_while(|line| !line.is_empty()).collect();
    if headers.len() > MAX_HEADERS {
        return Err(ProxyFailure::new(
            status_reply(431, "Request Header Fields Too Large"),
            "too many header lines",
        ));
    }
    let mut parsed = Vec::with_capacity(headers.len());
    for line in &headers {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad_request("malformed header line"));
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad_request("malformed header name"));
        }
        parsed.push((name, value.trim()));
    }
    if method == "CONNECT" {
        let (host, port) = authority(uri, None)?;
        return Ok(ProxyRequest {
            target: target_text(&host, port),
            head: Vec::new(),
            reply: ReplyKind::HttpConnect,
        });
    }
    let Some(rest) = uri.strip_prefix("http://") else {
        return Err(bad_request(if uri.starts_with("https://") {
            "https:// requests must use CONNECT"
        } else {
            "a proxy request needs an absolute http:// URI"
        }));
    };
    let (authority_text, path) = match rest.find(['/', '?']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    let (host, port) = authority(authority_text, Some(80))?;
    let mut out = format!("{method} {path} {version}\r\n");
    let mut has_host = false;
    for (name, value) in parsed {
        let lower = name.to_ascii_lowercase();
        if HOP_HEADERS.contains(&lower.as_str()) {
            continue;
        }
        has_host |= lower == "host";
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    if !has_host {
        out.push_str("Host: ");
        out.push_str(authority_text);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    Ok(ProxyRequest {
        target: target_text(&host, port),
        head: out.into_bytes(),
        reply: ReplyKind::HttpForward,
    })
}

/// `host:port`, `[v6]:port`, or without the port when `default_port` is set.
fn authority(text: &str, default_port: Option<u16>) -> Result<(Host, u16), ProxyFailure> {
    let bad = || bad_request(format!("{text:?} is not a host:port"));
    let (host_text, port_text) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        let ip: Ipv6Addr = inside.parse().map_err(|_| bad())?;
        return Ok((
            Host::V6(ip),
            port_number(port, default_port).ok_or_else(bad)?,
        ));
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = port_number(port_text, default_port).ok_or_else(bad)?;
    let host = match host_text.parse::<Ipv4Addr>() {
        Ok(ip) => Host::V4(ip),
        Err(_) if valid_name(host_text) => Host::Name(host_text.to_ascii_lowercase()),
        Err(_) => return Err(bad()),
    };
    Ok((host, port))
}

fn port_number(text: Option<&str>, default: Option<u16>) -> Option<u16> {
    match text {
        Some(text) => text.parse::<u16>().ok().filter(|p| *p != 0),
        None => default,
    }
}
