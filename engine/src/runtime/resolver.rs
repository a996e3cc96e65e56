//! Target resolution off the worker threads: the server's [`TargetResolver`] (which may do
//! blocking DNS) runs on a small pool of resolver threads; answers come back to the asking
//! worker through its own reply queue and its waker. Also the process-wide budget of backend
//! connections.
//!
//! Owns: [`ResolverPool`] (the threads, a bounded job queue, and a cache of answers with a TTL
//! and a size cap), [`WorkerResolver`] (one worker's handle and reply queue) and
//! [`BackendBudget`]. Must not touch: sockets or sessions — the event loop connects the stream
//! once the answer arrives (`event_loop::app`).
//!
//! A worker asks [`WorkerResolver::lookup`] first: a cached answer is used at once, on the
//! worker. Otherwise the job goes to the queue ([`RESOLVER_QUEUE`] long; full means the stream is
//! refused at once rather than queued without bound) and the worker carries on; the answer is
//! cached and delivered with [`WorkerResolver::take_answers`] on the worker's next turn.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Route, TargetResolver, Waker};

/// Threads that run the resolver: a slow lookup holds one, the other keeps answering.
pub const RESOLVER_THREADS: usize = 2;
/// Lookups waiting for a resolver thread, all workers together; beyond it streams are refused.
/// Generous (a burst of opens to distinct targets is normal for an in-process server), and
/// bounded: a job is its target (at most 1 KiB) and a few words.
pub const RESOLVER_QUEUE: usize = 65_536;
/// How long an answer (including "refused" and "unresolvable") is reused.
pub const RESOLVER_CACHE_TTL: Duration = Duration::from_secs(30);
/// Most answers kept.
pub const RESOLVER_CACHE_ENTRIES: usize = 4096;

/// The process-wide count of backend connections (connecting or connected), capped
/// at `max_backend_connections`. Cheap to clone; every worker holds one.
#[derive(Debug, Clone)]
pub(crate) struct BackendBudget {
    used: Arc<AtomicUsize>,
    max: usize,
}

/// One place in the [`BackendBudget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct BackendPermit {
    used: Arc<AtomicUsize>,
}

impl BackendBudget {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A place for one more backend connection, if the budget has one.
    pub(crate) fn try_acquire(&self) -> Option<BackendPermit> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| BackendPermit {
                used: self.used.clone(),
            })
    }

    /// Places in use now.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for BackendPermit {
    fn drop(&mut self) {
        self.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers remembered for [`RESOLVER_CACHE_TTL`], at most [`RESOLVER_CACHE_ENTRIES`] of them.
#[derive(Debug, Default)]
struct Cache {
    answers: HashMap<Option<String>, (Route, Instant)>,
    /// Bumped when the routing changes: an answer computed under an older generation is not
    /// cached (a lookup in flight across a reload must not bring the old routing back).
    generation: u64,
}

impl Cache {
    fn get(&self, target: &Option<String>, now: Instant) -> Option<Route> {
        self.answers
            .get(target)
            .filter(|(_, expires)| *expires > now)
            .map(|(route, _)| *route)
    }

    /// Every answer goes; lookups already running are not cached.
    fn forget(&mut self) {
        self.answers.clear();
        self.generation += 1;
    }

    fn put(&mut self, target: Option<String>, route: Route, now: Instant) {
        if self.answers.len() >= RESOLVER_CACHE_ENTRIES && !self.answers.contains_key(&target) {
            self.answers.retain(|_, (_, expires)| *expires > now);
            if self.answers.len() >= RESOLVER_CACHE_ENTRIES {
                // Full of live answers: start over rather than grow (they are cheap to redo).
                self.answers.clear();
            }
        }
        self.answers
            .insert(target, (route, now + RESOLVER_CACHE_TTL));
    }
}

/// One lookup on its way to a resolver thread.
struct Job {
    target: Option<String>,
    token: u64,
    reply: Arc<Replies>,
}

/// A worker's answers, filled by the resolver threads.
#[derive(Debug)]
struct Replies {
    answers: Mutex<Vec<(u64, Route)>>,
    waker: Arc<Waker>,
}

/// The resolver threads and their shared queue and cache. The threads end once every
/// [`WorkerResolver`] is dropped (a thread inside a slow lookup finishes it first).
pub(crate) struct ResolverPool {
    jobs: SyncSender<Job>,
    cache: Arc<Mutex<Cache>>,
}

impl std::fmt::Debug for ResolverPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolverPool").finish_non_exhaustive()
    }
}

impl ResolverPool {
    /// Starts [`RESOLVER_THREADS`] threads running `resolve`.
    pub(crate) fn start(resolve: TargetResolver) -> std::io::Result<Arc<Self>> {
        let (jobs, queue) = sync_channel::<Job>(RESOLVER_QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        let cache = Arc::new(Mutex::new(Cache::default()));
        for i in 0..RESOLVER_THREADS {
            let (queue, cache, resolve) = (queue.clone(), cache.clone(), resolve.clone());
            std::thread::Builder::new()
                .name(format!("mtcpd-resolver-{i}"))
                .spawn(move || run_resolver(&queue, &cache, &resolve))?;
        }
        Ok(Arc::new(Self { jobs, cache }))
    }

    /// The routing changed: cached answers are forgotten.
    pub(crate) fn forget_answers(&self) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .forget();
    }

    /// A handle for one worker, whose answers wake `waker`.
    pub(crate) fn for_worker(self: &Arc<Self>, waker: Arc<Waker>) -> WorkerResolver {
        WorkerResolver {
            pool: self.clone(),
            replies: Arc::new(Replies {
                answers: Mutex::new(Vec::new()),
                waker,
            }),
        }
    }
}

fn run_resolver(queue: &Mutex<Receiver<Job>>, cache: &Mutex<Cache>, resolve: &TargetResolver) {
    loop {
        // One thread waits on the queue at a time; the other may be inside a lookup.
        let job = match queue.lock().unwrap_or_else(PoisonError::into_inner).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let generation = cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .generation;
        let route = resolve(job.target.as_deref());
        {
            let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.generation == generation {
                cache.put(job.target, route, Instant::now());
            }
        }
        job.reply
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((job.token, route));
        if let Err(e) = job.reply.waker.wake() {
            tracing::warn!("cannot wake a worker with a resolved target: {e}");
        }
    }
}

/// Why a lookup could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LookupRefused {
    /// [`RESOLVER_QUEUE`] lookups are already waiting.
    QueueFull,
    /// The resolver threads are gone.
    Stopped,
}

/// One worker's handle on the resolver pool.
pub(crate) struct WorkerResolver {
    pool: Arc<ResolverPool>,
    replies: Arc<Replies>,
}

impl std::fmt::Debug for WorkerResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerResolver").finish_non_exhaustive()
    }
}

impl WorkerResolver {
    /// A cached answer for `target`, if there is a fresh one.
    pub(crate) fn lookup(&self, target: &Option<String>) -> Option<Route> {
        self.pool
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(target, Instant::now())
    }

    /// Queues a lookup of `target`; its answer comes back from [`Self::take_answers`] with
    /// `token`.
    pub(crate) fn submit(&self, target: Option<String>, token: u64) -> Result<(), LookupRefused> {
        let job = Job {
            target,
            token,
            reply: self.replies.clone(),
        };
        self.pool.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => LookupRefused::QueueFull,
            TrySendError::Disconnected(_) => LookupRefused::Stopped,
        })
    }

    /// The answers that arrived since the last call: (token, route).
    pub(crate) fn take_answers(&self) -> Vec<(u64, Route)> {
        std::mem::take(
            &mut *self
                .replies
                .answers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_budget_gives_back_its_places() {
        let budget = BackendBudget::new(2);
        let a = budget.try_acquire().unwrap();
        let b = budget.try_acquire().unwrap();
        assert!(budget.try_acquire().is_none());
        drop(a);
        assert_eq!(budget.in_use(), 1);
        let _c = budget.try_acquire().unwrap();
        drop(b);
        assert_eq!(budget.in_use(), 1);
    }

    #[test]
    fn the_cache_expires_answers_and_stays_bounded() {
        let now = Instant::now();
        let mut cache = Cache::default();
        cache.put(Some("a:1".into()), Route::Refuse, now);
        assert_eq!(cache.get(&Some("a:1".into()), now), Some(Route::Refuse));
        assert_eq!(
            cache.get(&Some("a:1".into()), now + RESOLVER_CACHE_TTL),
            None
        );
        cache.forget();
        assert_eq!(cache.get(&Some("a:1".into()), now), None, "forgotten");
        for i in 0..RESOLVER_CACHE_ENTRIES * 2 {
            cache.put(Some(format!("h{i}:1")), Route::Accept, now);
            assert!(cache.answers.len() <= RESOLVER_CACHE_ENTRIES);
        }
    }
}
