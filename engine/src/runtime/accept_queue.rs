//! The queue of streams a server's event loops accepted for the program, and the async tasks
//! waiting on it.
//!
//! Owns: [`AcceptSender`] (what every worker holds: the sending end of the channel plus the
//! waiting tasks to wake) and [`AcceptWaiters`] (the tasks that wait in
//! [`super::Server::accept_async`]). Must not touch: the streams themselves
//! (`runtime::local`) or how a worker decides to accept one (`event_loop::local_streams`).
//!
//! A worker sends an accepted stream, then wakes the waiting tasks (one atomic load when none
//! waits). A task registers its waker, then looks at the channel again, so a stream sent
//! between its first look and its registration is not missed. The last sender to go (the
//! runtime stopped) wakes them too, so they see the end.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst, fence};
use std::sync::mpsc::{Receiver, SendError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker as TaskWaker;

use super::api::Accepted;

/// The tasks waiting for an accepted stream. One entry per waiting task (a task that polls
/// again replaces nothing and adds nothing), so it holds no more than the program's own
/// pending `accept_async` calls; it is emptied by every wake-up.
#[derive(Default)]
pub(super) struct AcceptWaiters {
    /// Some task is in `tasks`: the sender takes the mutex only then.
    any: AtomicBool,
    tasks: Mutex<Vec<TaskWaker>>,
}

impl fmt::Debug for AcceptWaiters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptWaiters")
            .field("any", &self.any.load(SeqCst))
            .finish_non_exhaustive()
    }
}

impl AcceptWaiters {
    /// Leaves `waker` to be woken by the next stream sent or by the end of the queue. The
    /// caller then looks at the channel again before it returns `Pending`.
    pub(super) fn register(&self, waker: &TaskWaker) {
        {
            let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
            if !tasks.iter().any(|w| w.will_wake(waker)) {
                tasks.push(waker.clone());
            }
            self.any.store(true, SeqCst);
        }
        // Pairs with the fence in `wake_all`: either the sender sees `any`, or this task's
        // next look at the channel sees what it sent.
        fence(SeqCst);
    }

    /// Wakes every waiting task (after a send, or at the end of the queue).
    fn wake_all(&self) {
        fence(SeqCst);
        if self.any.load(SeqCst) && self.any.swap(false, SeqCst) {
            let tasks =
                std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
            tasks.into_iter().for_each(TaskWaker::wake);
        }
    }

    /// How many tasks are registered (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Where a server's event loops put the streams they accepted for the program; every worker
/// holds a clone.
#[derive(Debug)]
pub(crate) struct AcceptSender {
    /// `None` only while being dropped.
    tx: Option<Sender<Accepted>>,
    waiters: Arc<AcceptWaiters>,
}

impl AcceptSender {
    /// Queues `accepted` for the program and wakes the tasks waiting for it; gives it back if
    /// the program no longer accepts. (The signature of `mpsc::Sender::send`, which this
    /// replaced at its call site; the stream is handed back, not boxed, on a path taken at most
    /// once per stream.)
    #[allow(clippy::result_large_err)]
    pub(crate) fn send(&self, accepted: Accepted) -> Result<(), SendError<Accepted>> {
        match &self.tx {
            Some(tx) => tx.send(accepted)?,
            None => return Err(SendError(accepted)),
        }
        self.waiters.wake_all();
        Ok(())
    }
}

impl Clone for AcceptSender {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            waiters: self.waiters.clone(),
        }
    }
}

impl Drop for AcceptSender {
    fn drop(&mut self) {
        // The channel ends with the last sender: close it first, then wake, so a woken task
        // sees the end.
        drop(self.tx.take());
        self.waiters.wake_all();
    }
}

/// A queue: the workers' sender, the program's receiver, and its waiting tasks.
pub(super) fn channel() -> (AcceptSender, Receiver<Accepted>, Arc<AcceptWaiters>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let waiters = Arc::new(AcceptWaiters::default());
    let sender = AcceptSender {
        tx: Some(tx),
        waiters: waiters.clone(),
    };
    (sender, rx, waiters)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    struct CountingWake(AtomicUsize);

    impl Wake for CountingWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    /// A task that registers again and again is one entry; many tasks are one entry each, and
    /// one wake-up empties the list and wakes each once.
    #[test]
    fn waiters_are_one_per_task_and_emptied_by_a_wake_up() {
        let waiters = AcceptWaiters::default();
        let counts: Vec<Arc<CountingWake>> = (0..3)
            .map(|_| Arc::new(CountingWake(AtomicUsize::new(0))))
            .collect();
        let wakers: Vec<TaskWaker> = counts.iter().map(|c| TaskWaker::from(c.clone())).collect();
        for _ in 0..100 {
            waiters.register(&wakers[0]);
        }
        assert_eq!(waiters.len(), 1);
        waiters.register(&wakers[1]);
        waiters.register(&wakers[2]);
        assert_eq!(waiters.len(), 3);
        waiters.wake_all();
        assert_eq!(waiters.len(), 0);
        assert!(counts.iter().all(|c| c.0.load(SeqCst) == 1));
        // Nobody waits: nothing to wake.
        waiters.wake_all();
        assert!(counts.iter().all(|c| c.0.load(SeqCst) == 1));
    }

    /// The last sender to go wakes the waiting tasks, after the channel has ended.
    #[test]
    fn the_last_sender_wakes_the_waiters_at_the_end() {
        let (tx, rx, waiters) = channel();
        let count = Arc::new(CountingWake(AtomicUsize::new(0)));
        waiters.register(&TaskWaker::from(count.clone()));
        let tx2 = tx.clone();
        drop(tx);
        assert_eq!(count.0.load(SeqCst), 1, "every sender's drop wakes");
        waiters.register(&TaskWaker::from(count.clone()));
        drop(tx2);
        assert_eq!(count.0.load(SeqCst), 2);
        assert!(rx.try_recv().is_err());
    }
}
