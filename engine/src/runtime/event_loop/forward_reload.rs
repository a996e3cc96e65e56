//! A worker's side of a reload: its copies of a client's forward and proxy listeners added,
//! changed or removed while it runs.
//!
//! Owns: applying a [`WorkerReload`] to this worker's listener entries and forward metrics, and
//! acknowledging it. Must not touch: connections already accepted (a removed listener's streams
//! run until they end; a changed forward's open streams keep the target they opened with), or
//! binding (done once for all workers by [`crate::runtime::reload::ReloadHandle`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::TryRecvError;

use super::{Entry, EventLoop};
use crate::runtime::io::Driver;
use crate::runtime::reload::{WorkerChange, WorkerReload};

/// Reloads applied per turn of the loop at most (the inbox is bounded anyway).
const RELOADS_PER_TURN: usize = 4;

/// The address a listener is bound to.
fn bound_addr(sock: &impl std::os::fd::AsFd) -> Option<SocketAddr> {
    socket2::SockRef::from(sock)
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
}

impl<D: Driver> EventLoop<D> {
    /// Applies the reloads waiting for this worker.
    pub(super) fn apply_reloads(&mut self) {
        for _ in 0..RELOADS_PER_TURN {
            let Some(inbox) = &self.reload else {
                return;
            };
            let reload = match inbox.try_recv() {
                Ok(reload) => reload,
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.reload = None;
                    return;
                }
            };
            self.apply_reload(reload);
        }
    }

    fn apply_reload(&mut self, reload: WorkerReload) {
        let WorkerReload { changes, done } = reload;
        for change in changes {
            match change {
                WorkerChange::Remove(listen) => self.remove_listener(listen),
                WorkerChange::UpdateForward(forward) => self.update_forward(forward),
                WorkerChange::UpdateProxy(proxy) => {
                    for (_, entry) in self.entries.iter_mut() {
                        if let Entry::ProxyListener { sock, kind } = entry
                            && bound_addr(sock) == Some(proxy.listen)
                        {
                            **kind = proxy.kind.clone();
                        }
                    }
                }
                WorkerChange::AddForward { listener, forward } => {
                    if self.draining_since.is_some() {
                        continue; // stopping: no new listeners (dropping closes this copy)
                    }
                    let listen = forward.listen;
                    let added = self.io.listener(listener).and_then(|sock| {
                        let metrics_forward =
                            self.metrics.add_forward(listen, forward.name.clone());
                        self.add(Entry::AppListener {
                            sock,
                            forward,
                            metrics_forward,
                        })
                    });
                    if let Err(e) = added {
                        tracing::warn!(%listen, "reload: cannot listen for applications: {e}");
                    }
                }
                WorkerChange::AddProxy { listener, proxy } => {
                    if self.draining_since.is_some() {
                        continue;
                    }
                    let listen = proxy.listen;
                    let added = self.io.listener(listener).and_then(|sock| {
                        self.add(Entry::ProxyListener {
                            sock,
                            kind: Box::new(proxy.kind),
                        })
                    });
                    if let Err(e) = added {
                        tracing::warn!(%listen, "reload: cannot listen for proxy requests: {e}");
                    }
                }
            }
        }
        // The asker may have given up waiting: nothing to do then.
        let _ = done.try_send(());
    }

    /// Stops accepting on `listen` (a forward's or a proxy's listener).
    fn remove_listener(&mut self, listen: SocketAddr) {
        let keys: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, entry)| match entry {
                Entry::AppListener { forward, .. } => forward.listen == listen,
                Entry::ProxyListener { sock, .. } => bound_addr(sock) == Some(listen),
                _ => false,
            })
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            self.remove(k);
        }
    }

    /// The forward on `forward.listen` takes its new target and name for new connections.
    fn update_forward(&mut self, new: Arc<crate::runtime::ClientForward>) {
        let mut renamed = Vec::new();
        for (_, entry) in self.entries.iter_mut() {
            if let Entry::AppListener {
                forward,
                metrics_forward,
                ..
            } = entry
                && forward.listen == new.listen
            {
                *forward = new.clone();
                renamed.push(*metrics_forward);
            }
        }
        for m in renamed {
            self.metrics.rename_forward(m, new.name.clone());
        }
    }
}
