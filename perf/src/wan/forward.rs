//! The forwarder: one thread per direction that reads packets from one namespace's TUN device,
//! runs them through that direction's [`Pipe`] and writes them to the other namespace's TUN
//! device when they are due. It sleeps in `ppoll` until the next packet arrives or the next
//! departure is due (with 1 µs timer slack), reads in batches, recycles packet buffers, and stops
//! within 50 ms of its stop flag being set.

use super::impair::{Pipe, Stats};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

const MAX_WAIT_NS: u64 = 50_000_000;
const BATCH: usize = 256;
const POOL: usize = 1024;

/// The counters a running forwarder publishes after every wake-up, so that a caller can take
/// the difference over one run while the lab stays up (the grid's per-contender queue drops).
#[derive(Debug, Default)]
pub struct Live {
    pub packets_out: AtomicU64,
    pub drop_loss: AtomicU64,
    pub drop_queue: AtomicU64,
    pub drop_flow: AtomicU64,
}

impl Live {
    fn publish(&self, s: &Stats) {
        self.packets_out.store(s.packets_out, Ordering::Relaxed);
        self.drop_loss.store(s.drop_loss, Ordering::Relaxed);
        self.drop_queue.store(s.drop_queue, Ordering::Relaxed);
        self.drop_flow.store(s.drop_flow, Ordering::Relaxed);
    }
}

fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

/// Start forwarding `src` → `dst` through `pipe`, publishing its counters to `live`.
#[allow(clippy::too_many_arguments)] // one call site per direction; a struct would only rename them
pub fn spawn(
    name: &str,
    src: Arc<OwnedFd>,
    dst: Arc<OwnedFd>,
    mut pipe: Pipe,
    mtu: usize,
    stop: Arc<AtomicBool>,
    base: Instant,
    live: Arc<Live>,
) -> std::io::Result<JoinHandle<Stats>> {
    std::thread::Builder::new()
        .name(format!("wan-{name}"))
        .spawn(move || {
            // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
            let (sfd, dfd) = (src.as_raw_fd(), dst.as_raw_fd());
            let mut scratch = vec![0u8; mtu + 256];
            let mut pool: Vec<Vec<u8>> = Vec::new();
            let mut write_errors = 0u64;
            let send = |p: &[u8], errs: &mut u64| {
                // SAFETY: dfd is a valid TUN fd kept alive by `dst`; p is a valid buffer.
                let n = unsafe { libc::write(dfd, p.as_ptr().cast(), p.len()) };
                if n < 0 {
                    *errs += 1;
                }
            };
            while !stop.load(Ordering::Relaxed) {
                live.publish(&pipe.stats);
                let now = now_ns(base);
                pipe.advance(now);
                while let Some(p) = pipe.pop_due(now) {
                    send(&p, &mut write_errors);
                    if pool.len() < POOL {
                        pool.push(p);
                    }
                }
                let wait = pipe
                    .next_event()
                    .map_or(MAX_WAIT_NS, |t| t.saturating_sub(now).min(MAX_WAIT_NS));
                let ts = libc::timespec {
                    tv_sec: (wait / 1_000_000_000) as libc::time_t,
                    tv_nsec: (wait % 1_000_000_000) as libc::c_long,
                };
                let mut pfd = libc::pollfd {
                    fd: sfd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, valid timespec, no signal mask change.
                let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
                if rc <= 0 || pfd.revents & libc::POLLIN == 0 {
                    continue;
                }
                for _ in 0..BATCH {
                    // SAFETY: sfd is a valid non-blocking TUN fd; scratch is writable for its length.
                    let n = unsafe { libc::read(sfd, scratch.as_mut_ptr().cast(), scratch.len()) };
                    if n <= 0 {
                        break;
                    }
                    let mut p = pool.pop().unwrap_or_default();
                    p.clear();
                    p.extend_from_slice(&scratch[..n as usize]);
                    let now = now_ns(base);
                    if let Some(dropped) = pipe.ingest(now, p)
                        && pool.len() < POOL
                    {
                        pool.push(dropped);
                    }
                    while let Some(p) = pipe.pop_due(now) {
                        send(&p, &mut write_errors);
                        if pool.len() < POOL {
                            pool.push(p);
                        }
                    }
                }
            }
            let mut s = pipe.stats.clone();
            s.drop_overflow += write_errors;
            s
        })
}
