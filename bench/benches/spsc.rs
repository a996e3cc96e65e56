//! Cross-worker hand-off: the lock-free SPSC ring (`rtrb`) and eventfd wake-up the runtime's
//! workers use to pass a tunnel to its session's worker, beside a `Mutex<VecDeque>` + `Condvar`
//! baseline doing the same job in the same run.
//!
//! - `push_pop/ring` vs `push_pop/mutex`: one message in and out on one thread (the queue's
//!   own cost, uncontended).
//! - `round_trip/ring_eventfd`: two threads, a message there and back over two rings; each side
//!   sleeps in `epoll_wait` (mio) and is woken through its eventfd (`mio::Waker`), as an idle
//!   worker is. `round_trip/mutex_eventfd` is the same with a locked queue instead of the ring.
//! - `round_trip/mutex_condvar`: a locked queue and a condition variable per direction, for
//!   reference: the cheapest wake-up, but one an event loop blocked in `epoll_wait` or
//!   `io_uring_enter` cannot use.
//!
//! Run: `cargo bench -p mtcpd-bench --bench spsc`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

/// About the size of the runtime's hand-off message (socket, buffer, handshake box, address).
type Msg = [u64; 12];

fn push_pop(c: &mut Criterion) {
    let (mut tx, mut rx) = rtrb::RingBuffer::<Msg>::new(256);
    c.bench_function("spsc/push_pop/ring", |b| {
        b.iter(|| {
            let _ = tx.push(black_box([7; 12]));
            black_box(rx.pop().ok())
        })
    });
    let q = Mutex::new(VecDeque::<Msg>::with_capacity(256));
    c.bench_function("spsc/push_pop/mutex", |b| {
        b.iter(|| {
            q.lock().expect("lock").push_back(black_box([7; 12]));
            black_box(q.lock().expect("lock").pop_front())
        })
    });
}

/// A poller that sleeps until its waker fires.
struct Sleeper {
    poll: mio::Poll,
    events: mio::Events,
}

impl Sleeper {
    fn new() -> (Self, Arc<mio::Waker>) {
        let poll = mio::Poll::new().expect("epoll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("eventfd"));
        let events = mio::Events::with_capacity(8);
        (Self { poll, events }, waker)
    }

    fn sleep(&mut self) {
        let _ = self
            .poll
            .poll(&mut self.events, Some(Duration::from_millis(100)));
    }
}

/// The sending end of a hand-off channel.
trait Tx: Send + 'static {
    fn put(&mut self, m: Msg);
}

/// The receiving end.
trait Rx: Send + 'static {
    fn take(&mut self) -> Option<Msg>;
}

impl Tx for rtrb::Producer<Msg> {
    fn put(&mut self, m: Msg) {
        while self.push(m).is_err() {}
    }
}

impl Rx for rtrb::Consumer<Msg> {
    fn take(&mut self) -> Option<Msg> {
        self.pop().ok()
    }
}

type Locked = Arc<Mutex<VecDeque<Msg>>>;

impl Tx for Locked {
    fn put(&mut self, m: Msg) {
        self.lock().expect("lock").push_back(m);
    }
}

impl Rx for Locked {
    fn take(&mut self) -> Option<Msg> {
        self.lock().expect("lock").pop_front()
    }
}

fn ring_pair() -> (impl Tx, impl Rx) {
    rtrb::RingBuffer::<Msg>::new(256)
}

fn mutex_pair() -> (impl Tx, impl Rx) {
    let q: Locked = Arc::new(Mutex::new(VecDeque::with_capacity(256)));
    (q.clone(), q)
}

fn round_trip_wake(c: &mut Criterion) {
    let (to_b, from_a) = ring_pair();
    let (to_a, from_b) = ring_pair();
    wake_round_trip(
        c,
        "spsc/round_trip/ring_eventfd",
        (to_b, from_a),
        (to_a, from_b),
    );
    let (to_b, from_a) = mutex_pair();
    let (to_a, from_b) = mutex_pair();
    wake_round_trip(
        c,
        "spsc/round_trip/mutex_eventfd",
        (to_b, from_a),
        (to_a, from_b),
    );
}

fn wake_round_trip(
    c: &mut Criterion,
    name: &str,
    (mut to_b, mut from_a): (impl Tx, impl Rx),
    (mut to_a, mut from_b): (impl Tx, impl Rx),
) {
    let (mut sleeper_a, wake_a) = Sleeper::new();
    let (mut sleeper_b, wake_b) = Sleeper::new();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_b = stop.clone();
    let wake_b_for_stop = wake_b.clone();
    let echo = thread::spawn(move || {
        while !stop_b.load(Ordering::Relaxed) {
            match from_a.take() {
                Some(m) => {
                    to_a.put(m);
                    let _ = wake_a.wake();
                }
                None => sleeper_b.sleep(),
            }
        }
    });
    c.bench_function(name, |b| {
        b.iter(|| {
            to_b.put([1; 12]);
            let _ = wake_b.wake();
            loop {
                if let Some(m) = from_b.take() {
                    break black_box(m);
                }
                sleeper_a.sleep();
            }
        })
    });
    stop.store(true, Ordering::Relaxed);
    let _ = wake_b_for_stop.wake();
    let _ = echo.join();
}

/// One direction of the condvar reference: a locked queue and a condition variable.
#[derive(Default)]
struct CondQueue {
    queue: Mutex<VecDeque<Msg>>,
    ready: Condvar,
}

impl CondQueue {
    fn send(&self, m: Msg) {
        self.queue.lock().expect("lock").push_back(m);
        self.ready.notify_one();
    }

    fn receive(&self, stop: &AtomicBool) -> Option<Msg> {
        let mut q = self.queue.lock().expect("lock");
        loop {
            if let Some(m) = q.pop_front() {
                return Some(m);
            }
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            q = self
                .ready
                .wait_timeout(q, Duration::from_millis(100))
                .expect("lock")
                .0;
        }
    }
}

fn round_trip_mutex(c: &mut Criterion) {
    let to_b = Arc::new(CondQueue::default());
    let to_a = Arc::new(CondQueue::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (b_in, b_out, stop_b) = (to_b.clone(), to_a.clone(), stop.clone());
    let echo = thread::spawn(move || {
        while let Some(m) = b_in.receive(&stop_b) {
            b_out.send(m);
        }
    });
    let never = AtomicBool::new(false);
    c.bench_function("spsc/round_trip/mutex_condvar", |b| {
        b.iter(|| {
            to_b.send([1; 12]);
            black_box(to_a.receive(&never))
        })
    });
    stop.store(true, Ordering::Relaxed);
    to_b.ready.notify_all();
    let _ = echo.join();
}

criterion_group!(benches, push_pop, round_trip_wake, round_trip_mutex);
criterion_main!(benches);
