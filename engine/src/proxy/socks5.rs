//! SOCKS5 (RFC 1928) CONNECT, with optional username/password (RFC 1929), as a sans-IO state
//! machine.
//!
//! Owns: the method negotiation, the sub-negotiation, the request and the reply bytes. Must
//! not touch: I/O, or what the target means (the server decides).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Host, ProxyFailure, ProxyRequest, ReplyKind, Step, Verdict, target_text, valid_name};

const VERSION: u8 = 5;
const AUTH_VERSION: u8 = 1;
const METHOD_NONE: u8 = 0x00;
const METHOD_PASSWORD: u8 = 0x02;
const METHOD_UNACCEPTABLE: u8 = 0xFF;
const CMD_CONNECT: u8 = 0x01;
const ATYP_V4: u8 = 0x01;
const ATYP_NAME: u8 = 0x03;
const ATYP_V6: u8 = 0x04;

/// REP: succeeded.
pub const REP_SUCCEEDED: u8 = 0x00;
/// REP: general SOCKS server failure.
pub const REP_GENERAL_FAILURE: u8 = 0x01;
/// REP: connection not allowed by ruleset.
pub const REP_NOT_ALLOWED: u8 = 0x02;
/// REP: host unreachable.
pub const REP_HOST_UNREACHABLE: u8 = 0x04;
/// REP: connection refused.
pub const REP_CONNECTION_REFUSED: u8 = 0x05;
/// REP: TTL expired (used for a target that did not answer in time).
pub const REP_TTL_EXPIRED: u8 = 0x06;
/// REP: command not supported.
pub const REP_COMMAND_NOT_SUPPORTED: u8 = 0x07;
/// REP: address type not supported.
pub const REP_ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;

/// The username and password a SOCKS5 listener requires.
#[derive(Clone, PartialEq, Eq)]
pub struct Socks5Credentials {
    /// 1 to 255 bytes.
    pub username: String,
    /// 1 to 255 bytes.
    pub password: String,
}

impl std::fmt::Debug for Socks5Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socks5Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Auth,
    Request,
    Done,
}

/// One SOCKS5 handshake, from the greeting to the CONNECT request.
#[derive(Debug)]
pub struct Socks5Handshake {
    state: State,
    credentials: Option<Socks5Credentials>,
}

/// A reply with REP `rep` and an unspecified bound address (0.0.0.0:0): the client's
/// connection is relayed, so there is no local address worth telling.
pub fn reply(rep: u8) -> [u8; 10] {
    [VERSION, rep, 0, ATYP_V4, 0, 0, 0, 0, 0, 0]
}

/// The REP code for a verdict.
pub fn rep_for(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Connected => REP_SUCCEEDED,
        Verdict::NotAllowed => REP_NOT_ALLOWED,
        Verdict::ConnectionRefused => REP_CONNECTION_REFUSED,
        Verdict::Unreachable => REP_HOST_UNREACHABLE,
        Verdict::TimedOut => REP_TTL_EXPIRED,
        Verdict::Failed => REP_GENERAL_FAILURE,
    }
}

/// Equal contents, compared without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Socks5Handshake {
    /// A handshake that requires `credentials` when set (method 0x02), else none (0x00).
    pub fn new(credentials: Option<Socks5Credentials>) -> Self {
        Self {
            state: State::Greeting,
            credentials,
        }
    }

    /// Feeds `input`, removing what it consumed and appending replies to `out`.
    pub fn advance(
        &mut self,
        input: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<Step, ProxyFailure> {
        loop {
            let used = match self.state {
                State::Greeting => self.greeting(input, out)?,
                State::Auth => self.auth(input, out)?,
                State::Request => {
                    let Some((used, request)) = self.request(input)? else {
                        return Ok(Step::NeedMore);
                    };
                    input.drain(..used);
                    self.state = State::Done;
                    return Ok(Step::Request(request));
                }
                State::Done => return Err(ProxyFailure::new([], "SOCKS5 handshake already done")),
            };
            match used {
                Some(n) => {
                    input.drain(..n);
                }
                None => return Ok(Step::NeedMore),
            }
        }
    }

    /// VER, NMETHODS, METHODS: picks password or no authentication.
    fn greeting(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, ProxyFailure> {
        let [version, count, ..] = *input else {
            return match input.first() {
                Some(&v) if v != VERSION => Err(not_socks5(v)),
                _ => Ok(None),
            };
        };
        if version != VERSION {
            return Err(not_socks5(version));
        }
        let end = 2 + usize::from(count);
        let Some(methods) = input.get(2..end) else {
            return Ok(None);
        };
        let wanted = if self.credentials.is_some() {
            METHOD_PASSWORD
        } else {
            METHOD_NONE
        };
        if !methods.contains(&wanted) {
            return Err(ProxyFailure::new(
                [VERSION, METHOD_UNACCEPTABLE],
                if self.credentials.is_some() {
                    "SOCKS5 client does not offer username/password authentication"
                } else {
                    "SOCKS5 client does not offer \"no authentication\""
                },
            ));
        }
        out.extend_from_slice(&[VERSION, wanted]);
        self.state = if self.credentials.is_some() {
            State::Auth
        } else {
            State::Request
        };
        Ok(Some(end))
    }

    /// RFC 1929: VER 1, ULEN, UNAME, PLEN, PASSWD.
    fn auth(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, ProxyFailure> {
        let [version, user_len, ..] = *input else {
            return Ok(None);
        };
        if version != AUTH_VERSION {
            return Err(ProxyFailure::new(
                [AUTH_VERSION, 1],
                format!("SOCKS5 authentication version {version}, expected 1"),
            ));
        }
        let user_end = 2 + usize::from(user_len);
        let Some(&pass_len) = input.get(user_end) else {
            return Ok(None);
        };
        let pass_end = user_end + 1 + usize::from(pass_len);
        let Some(password) = input.get(user_end + 1..pass_end) else {
            return Ok(None);
        };
        let user = &input[2..user_end];
        let accepted = self.credentials.as_ref().is_some_and(|c| {
            // Both compared in full, so the time taken does not say which one was wrong.
            same_secret(user, c.username.as_bytes()) & same_secret(password, c.password.as_bytes())
        });
        if !accepted {
            return Err(ProxyFailure::new(
                [AUTH_VERSION, 1],
                "SOCKS5 username or password is wrong",
            ));
        }
        out.extend_from_slice(&[AUTH_VERSION, 0]);
        self.state = State::Request;
        Ok(Some(pass_end))
    }

    /// VER, CMD, RSV, ATYP, DST.ADDR, DST.PORT.
    fn request(&mut self, input: &[u8]) -> Result<Option<(usize, ProxyRequest)>, ProxyFailure> {
        let [version, command, _reserved, address_type, ..] = *input else {
            return Ok(None);
        };
        if version != VERSION {
            return Err(not_socks5(version));
        }
        if command != CMD_CONNECT {
            return Err(ProxyFailure::new(
                reply(REP_COMMAND_NOT_SUPPORTED),
                format!("SOCKS5 command {command:#04x} is not supported (only CONNECT)"),
            ));
        }
        let (host, port_at) = match address_type {
            ATYP_V4 => {
                let Some(bytes) = input.get(4..8) else {
                    return Ok(None);
                };
                let octets: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
                (Host::V4(Ipv4Addr::from(octets)), 8)
            }
            ATYP_V6 => {
                let Some(bytes) = input.get(4..20) else {
                    return Ok(None);
                };
                let mut octets = [0u8; 16];
                octets.copy_from_slice(bytes);
                (Host::V6(Ipv6Addr::from(octets)), 20)
            }
            ATYP_NAME => {
                let Some(&len) = input.get(4) else {
                    return Ok(None);
                };
                let end = 5 + usize::from(len);
                let Some(bytes) = input.get(5..end) else {
                    return Ok(None);
                };
                let name = std::str::from_utf8(bytes)
                    .ok()
                    .filter(|name| valid_name(name))
                    .ok_or_else(|| {
                        ProxyFailure::new(
                            reply(REP_GENERAL_FAILURE),
                            "SOCKS5 request names an invalid host",
                        )
                    })?;
                (Host::Name(name.to_ascii_lowercase()), end)
            }
            other => {
                return Err(ProxyFailure::new(
                    reply(REP_ADDRESS_TYPE_NOT_SUPPORTED),
                    format!("SOCKS5 address type {other:#04x} is not supported"),
                ));
            }
        };
        let Some(&[high, low]) = input.get(port_at..port_at + 2) else {
            return Ok(None);
        };
        let port = u16::from_be_bytes([high, low]);
        if port == 0 {
            return Err(ProxyFailure::new(
                reply(REP_GENERAL_FAILURE),
                "SOCKS5 request for port 0",
            ));
        }
        let request = ProxyRequest {
            target: target_text(&host, port),
            head: Vec::new(),
            reply: ReplyKind::Socks5,
        };
        Ok(Some((port_at + 2, request)))
    }
}

fn not_socks5(version: u8) -> ProxyFailure {
    ProxyFailure::new([], format!("not a SOCKS5 client (version byte {version})"))
}
