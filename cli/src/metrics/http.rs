//! The metrics endpoint: a minimal HTTP/1.1 responder on its own thread that answers
//! `GET /metrics` with the exposition, and nothing else.
//!
//! Owns: the listening socket, the bounds that keep it from becoming an attack surface (at most
//! [`MAX_CONNECTIONS`] handled at once, beyond that `503` and close; a request head of at most
//! [`MAX_REQUEST`] bytes, else `431`; read and write timeouts; one request per connection) and
//! the status codes (`405` for another method, `404` for another path, `400` for what is not
//! HTTP). Must not touch: the figures (asked of the engine's `StatsProbe` per scrape) or their
//! text (`render`).
//!
//! No async runtime: one accepting thread, and one short-lived thread per connection being
//! answered (at most [`MAX_CONNECTIONS`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mtcpd_engine::runtime::stats::{STATS_TIMEOUT, StatsProbe};

use super::render::{ExpositionContext, render};

/// Connections answered at once; more are told `503` and closed.
pub const MAX_CONNECTIONS: usize = 4;
/// Longest request head (request line and headers) read; a longer one gets `431`.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request, or to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// After an answer, what is still read from a client that sent more than its request head
/// (so that closing does not reset the connection before the answer is read): at most this
/// much, for at most [`LINGER`].
const LINGER_BYTES: usize = 64 * 1024;
const LINGER: Duration = Duration::from_millis(200);

/// Serves the metrics of `probe` on `listener` until the process exits.
pub fn serve(
    listener: TcpListener,
    probe: StatsProbe,
    context: ExpositionContext,
) -> io::Result<SocketAddr> {
    let local = listener.local_addr()?;
    let shared = Arc::new((probe, context));
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("mtcpd-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let conn = match conn {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::debug!("metrics endpoint: accept failed: {e}");
                        // Out of descriptors and the like: do not spin.
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                };
                accept(conn, &shared, &busy);
            }
        })?;
    Ok(local)
}

/// Hands `conn` to a thread of its own, or answers `503` when enough are busy.
fn accept(
    mut conn: TcpStream,
    shared: &Arc<(StatsProbe, ExpositionContext)>,
    busy: &Arc<AtomicUsize>,
) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        busy.fetch_sub(1, Ordering::SeqCst);
        let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
        let _ = respond(&mut conn, 503, "Service Unavailable", "too many scrapes\n");
        // The accepting thread lingers briefly here; it is the one place a flood waits.
        close_after_answer(&mut conn, Duration::from_millis(20));
        return;
    }
    let shared = shared.clone();
    let guard = BusyGuard(busy.clone());
    let spawned = std::thread::Builder::new()
        .name("mtcpd-scrape".into())
        .spawn(move || {
            let _guard = guard;
            if handle(&mut conn, &shared.0, &shared.1).is_ok() {
                close_after_answer(&mut conn, LINGER);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("metrics endpoint: cannot start a thread: {e}");
    }
}

/// Half-closes after an answer and reads what the client still sends (a bounded amount, for at
/// most `linger`), so the close does not reset the connection under an answer not yet read.
fn close_after_answer(conn: &mut TcpStream, linger: Duration) {
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let _ = conn.set_read_timeout(Some(linger));
    let deadline = std::time::Instant::now() + linger;
    let mut drained = 0;
    let mut buf = [0u8; 4096];
    while drained < LINGER_BYTES && std::time::Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Gives the connection's place back however its thread ends.
struct BusyGuard(Arc<AtomicUsize>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics` (a query string is ignored).
    Metrics,
    /// Another method.
    MethodNotAllowed,
    /// Another path.
    NotFound,
    /// Not an HTTP/1.x request line.
    Bad,
}

/// Reads a request head, at most [`MAX_REQUEST`] bytes; `None` when it is longer.
fn read_head(conn: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() >= MAX_REQUEST {
            return Ok(None);
        }
        let room = (MAX_REQUEST - head.len()).min(buf.len());
        let n = conn.read(&mut buf[..room])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
}

/// Classifies a request head by its request line.
pub fn classify(head: &[u8]) -> Request {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Request::Bad;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Request::Bad;
    }
    if method != "GET" {
        return Request::MethodNotAllowed;
    }
    let path = target.split('?').next().unwrap_or(target);
    if path == "/metrics" {
        Request::Metrics
    } else {
        Request::NotFound
    }
}

fn handle(conn: &mut TcpStream, probe: &StatsProbe, context: &ExpositionContext) -> io::Result<()> {
    let Some(head) = read_head(conn)? else {
        return respond(
            conn,
            431,
            "Request Header Fields Too Large",
            "request too large\n",
        );
    };
    match classify(&head) {
        Request::Metrics => {
            let stats = probe.snapshot(STATS_TIMEOUT);
            let body = render(&stats, context);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes())?;
            conn.write_all(body.as_bytes())?;
            conn.flush()
        }
        Request::MethodNotAllowed => respond(conn, 405, "Method Not Allowed", "only GET\n"),
        Request::NotFound => respond(conn, 404, "Not Found", "only /metrics\n"),
        Request::Bad => respond(conn, 400, "Bad Request", "not an HTTP/1.1 request\n"),
    }
}

fn respond(conn: &mut TcpStream, code: u16, reason: &str, body: &str) -> io::Result<()> {
    let text = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(text.as_bytes())?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(classify(b"GET /metrics HTTP/1.1\r\n\r\n"), Request::Metrics);
        assert_eq!(
            classify(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            classify(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Request::MethodNotAllowed
        );
        assert_eq!(classify(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            classify(b"GET /metrics/../x HTTP/1.1\r\n\r\n"),
            Request::NotFound
        );
        assert_eq!(classify(b"\xff\xfe\r\n\r\n"), Request::Bad);
        assert_eq!(classify(b"GET /metrics\r\n\r\n"), Request::Bad);
        assert_eq!(classify(b"GET metrics HTTP/1.1\r\n\r\n"), Request::Bad);
        assert_eq!(classify(b""), Request::Bad);
    }

    #[test]
    fn a_request_head_is_read_up_to_the_limit() {
        let short = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert!(read_head(&mut short.as_slice()).unwrap().is_some());
        let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 3 * MAX_REQUEST));
        assert!(read_head(&mut long.as_slice()).unwrap().is_none());
        assert!(read_head(&mut &b"GET /met"[..]).is_err());
    }
}
