//! Changing a running runtime without a restart: a client's forward and proxy listeners, and a
//! server's routing (whose answers the resolver threads cache).
//!
//! Owns: [`ReloadHandle`] (binds new listeners on the caller's thread, sends each worker its
//! share of a [`ListenerPlan`] over a bounded channel with a wake-up, and waits for the
//! workers' acknowledgements with a deadline), the messages it sends (`WorkerReload`) and
//! [`ListenerReport`]. Must not touch: how a worker applies them (`event_loop::forward_reload`)
//! or what changes a daemon's configuration allows (the daemon decides; this only carries it
//! out).
//!
//! A new listener is bound here, once per worker, before any worker hears of it: a port in use
//! refuses that listener alone, and every worker gets the same listeners in the same order, so
//! the per-forward metrics (summed by position over the workers) stay aligned. A removed
//! listener stops accepting; connections it accepted keep their streams until they end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use super::resolver::ResolverPool;
use super::{ClientForward, ClientProxy, RuntimeError, Waker, listen};

/// Reloads a worker may have waiting; one beyond is refused (the caller says the reload failed).
const RELOADS_PER_WORKER: usize = 4;

/// What to change in a client's listeners.
#[derive(Debug, Clone, Default)]
pub struct ListenerPlan {
    /// New forwards (their `listen` as configured; port 0 binds a free port).
    pub add_forwards: Vec<ClientForward>,
    /// Forwards whose target or name changed, each named by its bound `listen` address: new
    /// connections use the new values.
    pub update_forwards: Vec<ClientForward>,
    /// New proxy listeners.
    pub add_proxies: Vec<ClientProxy>,
    /// Proxy listeners whose settings (credentials) changed, named by their bound address.
    pub update_proxies: Vec<ClientProxy>,
    /// Listeners (forwards or proxies, by bound address) that stop accepting.
    pub remove: Vec<SocketAddr>,
}

impl ListenerPlan {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.add_forwards.is_empty()
            && self.update_forwards.is_empty()
            && self.add_proxies.is_empty()
            && self.update_proxies.is_empty()
            && self.remove.is_empty()
    }
}

/// What became of a [`ListenerPlan`].
#[derive(Debug, Default)]
pub struct ListenerReport {
    /// Listeners added: (configured address, bound address).
    pub added: Vec<(SocketAddr, SocketAddr)>,
    /// Listeners not added, and why (a port in use, most often).
    pub refused: Vec<(SocketAddr, RuntimeError)>,
    /// Workers that did not acknowledge within the deadline (0: every worker applied it).
    pub workers_missing: usize,
}

/// One change, as a worker applies it.
#[derive(Debug)]
pub(crate) enum WorkerChange {
    /// Start accepting for `forward` on `listener` (this worker's copy).
    AddForward {
        listener: std::net::TcpListener,
        forward: Arc<ClientForward>,
    },
    /// The forward listening on `forward.listen` takes these values for new connections.
    UpdateForward(Arc<ClientForward>),
    /// Start accepting proxy requests on `listener`.
    AddProxy {
        listener: std::net::TcpListener,
        proxy: ClientProxy,
    },
    /// The proxy listening on `proxy.listen` takes these settings for new connections.
    UpdateProxy(ClientProxy),
    /// Stop accepting on this address.
    Remove(SocketAddr),
}

/// One worker's share of a reload, and where it says it is done.
#[derive(Debug)]
pub(crate) struct WorkerReload {
    pub(crate) changes: Vec<WorkerChange>,
    pub(crate) done: SyncSender<()>,
}

/// A worker's end: the reloads waiting for it.
pub(crate) type ReloadInbox = Receiver<WorkerReload>;

/// Changes a running runtime; cheap to clone and usable from any thread (e.g. a signal
/// handler's).
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    workers: Arc<[(SyncSender<WorkerReload>, Arc<Waker>)]>,
    /// Server: the resolver threads, whose cached answers a routing change makes stale.
    resolver: Option<Arc<ResolverPool>>,
    stop: Arc<AtomicBool>,
}

impl ReloadHandle {
    /// A handle for workers woken by `wakers`, and each worker's inbox (same order).
    pub(crate) fn wire(
        wakers: &[Arc<Waker>],
        resolver: Option<Arc<ResolverPool>>,
        stop: Arc<AtomicBool>,
    ) -> (Self, Vec<ReloadInbox>) {
        let mut inboxes = Vec::with_capacity(wakers.len());
        let mut workers = Vec::with_capacity(wakers.len());
        for waker in wakers {
            let (tx, rx) = mpsc::sync_channel(RELOADS_PER_WORKER);
            workers.push((tx, waker.clone()));
            inboxes.push(rx);
        }
        let handle = Self {
            workers: workers.into(),
            resolver,
            stop,
        };
        (handle, inboxes)
    }

    /// Server: the routing changed (the [`super::TargetResolver`] answers differently now):
    /// answers cached before are forgotten, so every new stream is judged by the new routing.
    /// Streams already open keep running.
    pub fn routes_changed(&self) {
        if let Some(pool) = &self.resolver {
            pool.forget_answers();
        }
    }

    /// Client: applies `plan` on every worker and waits up to `timeout` for them. Listeners
    /// are bound first, each on its own: one that cannot be bound is refused alone.
    pub fn apply_listeners(&self, plan: &ListenerPlan, timeout: Duration) -> ListenerReport {
        let mut report = ListenerReport::default();
        if self.stop.load(Ordering::SeqCst) {
            return report;
        }
        let workers = self.workers.len();
        let mut shares: Vec<Vec<WorkerChange>> = (0..workers).map(|_| Vec::new()).collect();
        for listen in &plan.remove {
            for share in &mut shares {
                share.push(WorkerChange::Remove(*listen));
            }
        }
        for f in &plan.update_forwards {
            let forward = Arc::new(f.clone());
            for share in &mut shares {
                share.push(WorkerChange::UpdateForward(forward.clone()));
            }
        }
        for p in &plan.update_proxies {
            for share in &mut shares {
                share.push(WorkerChange::UpdateProxy(p.clone()));
            }
        }
        for f in &plan.add_forwards {
            match listen::listeners_per_worker(f.listen, workers, false) {
                Ok(copies) => {
                    let bound = copies[0].local_addr().unwrap_or(f.listen);
                    report.added.push((f.listen, bound));
                    let forward = Arc::new(ClientForward {
                        listen: bound,
                        ..f.clone()
                    });
                    for (share, listener) in shares.iter_mut().zip(copies) {
                        share.push(WorkerChange::AddForward {
                            listener,
                            forward: forward.clone(),
                        });
                    }
                }
                Err(e) => report.refused.push((f.listen, e)),
            }
        }
        for p in &plan.add_proxies {
            match listen::listeners_per_worker(p.listen, workers, false) {
                Ok(copies) => {
                    let bound = copies[0].local_addr().unwrap_or(p.listen);
                    report.added.push((p.listen, bound));
                    let proxy = ClientProxy {
                        listen: bound,
                        ..p.clone()
                    };
                    for (share, listener) in shares.iter_mut().zip(copies) {
                        share.push(WorkerChange::AddProxy {
                            listener,
                            proxy: proxy.clone(),
                        });
                    }
                }
                Err(e) => report.refused.push((p.listen, e)),
            }
        }
        if shares.iter().all(Vec::is_empty) {
            return report;
        }
        let (done, acks) = mpsc::sync_channel(workers.max(1));
        let mut asked = 0;
        for ((requests, waker), changes) in self.workers.iter().zip(shares) {
            let msg = WorkerReload {
                changes,
                done: done.clone(),
            };
            match requests.try_send(msg) {
                Ok(()) => {
                    asked += 1;
                    let _ = waker.wake();
                }
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
            }
        }
        drop(done);
        let deadline = Instant::now() + timeout;
        let mut answered = 0;
        while answered < asked {
            let left = deadline.saturating_duration_since(Instant::now());
            match acks.recv_timeout(left) {
                Ok(()) => answered += 1,
                Err(_) => break,
            }
        }
        report.workers_missing = workers - answered;
        report
    }
}
