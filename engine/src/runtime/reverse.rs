//! Reverse tunnels, the runtime's configuration and shared table: a server listens on public
//! ports its own configuration names ([`ReverseListener`]) and carries each connection as a
//! stream it opens towards the client session that exposes that name; a client connects such
//! streams to the targets it exposes ([`ExposedService`]).
//!
//! Owns: the configuration types, [`WhenAbsent`], and the `ReverseTable` every server worker
//! shares: which session (on which worker) owns each configured name now, the rule when two
//! sessions expose the same name (the newest wins), and a generation counter that tells the
//! worker holding the listeners to look again. Must not touch: sockets or sessions (the event
//! loop's `reverse` module does that with what this table says).
//!
//! Security: only names in the server's own configuration are ever listened on; a client's
//! EXPOSE can only pick among them, never add an address. The table is bounded by that
//! configuration (one owner per configured name), whatever the clients send.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::handshake::SessionId;

/// What a server does with a reverse listener while no client exposes its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenAbsent {
    /// Close the listener (connections are refused by the kernel) until a client exposes the
    /// name again. The default: nothing listens on a port nobody serves.
    #[default]
    Close,
    /// Keep listening and reset each connection at once (the port stays bound, so no other
    /// program can take it meanwhile).
    Reset,
}

impl WhenAbsent {
    /// The name in a config file.
    pub fn name(self) -> &'static str {
        match self {
            WhenAbsent::Close => "close",
            WhenAbsent::Reset => "reset",
        }
    }

    /// Parses a config value (`close` or `reset`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "close" => Some(WhenAbsent::Close),
            "reset" => Some(WhenAbsent::Reset),
            _ => None,
        }
    }
}

/// Server: a public port carried to the client that exposes `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseListener {
    /// The service's name (what the client exposes, and the OPEN target of its streams).
    pub name: String,
    /// Where the server listens for the service's users.
    pub listen: SocketAddr,
    /// While no client exposes the name.
    pub when_absent: WhenAbsent,
}

/// Client: a service this client connects the server's streams for `name` to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposedService {
    /// The name the server's configuration knows it by.
    pub name: String,
    /// Where this client connects each of those streams.
    pub target: SocketAddr,
}

/// The session that owns a name now, and the worker it lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owner {
    pub(super) worker: usize,
    pub(super) session: SessionId,
}

/// What one EXPOSE changed.
#[derive(Debug, Default)]
pub(super) struct Claims {
    /// Names this session owns now that it did not, with the session it took each from.
    pub(super) taken: Vec<(String, SocketAddr, Option<Owner>)>,
    /// Names this session owned and no longer exposes.
    pub(super) released: Vec<String>,
    /// Names no reverse listener of this server has.
    pub(super) unknown: Vec<String>,
}

#[derive(Debug)]
struct Slot {
    spec: ReverseListener,
    owner: Option<Owner>,
}

/// Which session owns each configured name, shared by a server's workers.
#[derive(Debug)]
pub(super) struct ReverseTable {
    slots: Mutex<Vec<Slot>>,
    /// Bumped at every change of owner: the listening worker compares it with what it saw.
    generation: AtomicU64,
}

impl ReverseTable {
    pub(super) fn new(listeners: &[ReverseListener]) -> Self {
        Self {
            slots: Mutex::new(
                listeners
                    .iter()
                    .map(|spec| Slot {
                        spec: spec.clone(),
                        owner: None,
                    })
                    .collect(),
            ),
            generation: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        // A worker that panicked holding it left consistent data (every change is one store).
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configured listeners, in order (the index is the listener's id).
    pub(super) fn specs(&self) -> Vec<ReverseListener> {
        self.lock().iter().map(|s| s.spec.clone()).collect()
    }

    /// Changes of owner so far.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Who owns listener `index` now.
    pub(super) fn owner(&self, index: usize) -> Option<Owner> {
        self.lock().get(index).and_then(|s| s.owner)
    }

    /// Whether listener `index` should be open now: while owned, or always with
    /// [`WhenAbsent::Reset`].
    pub(super) fn should_listen(&self, index: usize) -> bool {
        self.lock()
            .get(index)
            .is_some_and(|s| s.owner.is_some() || s.spec.when_absent == WhenAbsent::Reset)
    }

    /// Session `owner` now exposes exactly `names`: it takes each configured one (from whoever
    /// had it: the newest session wins) and lets go of the ones it no longer names.
    pub(super) fn claim(&self, owner: Owner, names: &[String]) -> Claims {
        let mut claims = Claims::default();
        let mut slots = self.lock();
        for name in names {
            match slots.iter_mut().find(|s| s.spec.name == *name) {
                Some(slot) if slot.owner == Some(owner) => {}
                Some(slot) => {
                    let before = slot.owner.replace(owner);
                    claims.taken.push((name.clone(), slot.spec.listen, before));
                }
                None => claims.unknown.push(name.clone()),
            }
        }
        for slot in slots.iter_mut() {
            if slot.owner == Some(owner) && !names.contains(&slot.spec.name) {
                slot.owner = None;
                claims.released.push(slot.spec.name.clone());
            }
        }
        drop(slots);
        if !claims.taken.is_empty() || !claims.released.is_empty() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        claims
    }

    /// Session `owner` ended: the names it owned have no owner now (a newer session that took
    /// one keeps it). Returns them.
    pub(super) fn release(&self, owner: Owner) -> Vec<String> {
        self.claim(owner, &[]).released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ReverseTable {
        let l = |name: &str, port, when_absent| ReverseListener {
            name: name.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            when_absent,
        };
        ReverseTable::new(&[
            l("web", 6000, WhenAbsent::Close),
            l("ssh", 6001, WhenAbsent::Reset),
        ])
    }

    fn owner(worker: usize, id: u8) -> Owner {
        Owner {
            worker,
            session: [id; 16],
        }
    }

    #[test]
    fn the_newest_session_wins_and_an_old_one_ending_changes_nothing() {
        let t = table();
        assert!(!t.should_listen(0));
        assert!(t.should_listen(1), "reset mode listens with no owner");
        let c = t.claim(owner(0, 1), &["web".into(), "db".into()]);
        assert_eq!(c.taken.len(), 1);
        assert_eq!(c.unknown, ["db"], "a name the server does not configure");
        assert_eq!(t.owner(0), Some(owner(0, 1)));
        assert!(t.should_listen(0));
        let g = t.generation();
        // The same set again (a resend) changes nothing.
        assert!(t.claim(owner(0, 1), &["web".into()]).taken.is_empty());
        assert_eq!(t.generation(), g);
        // A newer session on another worker takes the name.
        let c = t.claim(owner(1, 2), &["web".into()]);
        assert_eq!(c.taken[0].2, Some(owner(0, 1)));
        assert!(t.generation() > g);
        // The old session ending releases nothing it no longer owns.
        assert!(t.release(owner(0, 1)).is_empty());
        assert_eq!(t.owner(0), Some(owner(1, 2)));
        assert_eq!(t.release(owner(1, 2)), ["web"]);
        assert_eq!(t.owner(0), None);
        assert!(!t.should_listen(0));
    }

    #[test]
    fn withdrawing_a_name_releases_it() {
        let t = table();
        t.claim(owner(0, 1), &["web".into(), "ssh".into()]);
        let c = t.claim(owner(0, 1), &["ssh".into()]);
        assert_eq!(c.released, ["web"]);
        assert_eq!(t.owner(0), None);
        assert_eq!(t.owner(1), Some(owner(0, 1)));
    }

    #[test]
    fn when_absent_names_parse() {
        for w in [WhenAbsent::Close, WhenAbsent::Reset] {
            assert_eq!(WhenAbsent::parse(w.name()), Some(w));
        }
        assert_eq!(WhenAbsent::parse("refuse"), None);
        assert_eq!(WhenAbsent::default(), WhenAbsent::Close);
    }
}
