//! Lost wake-up hammers for [`super::AsyncMtcpStream`]: a thread standing in for the event loop
//! fills or drains a stream's rings as fast as it can while a task reads or writes in small
//! pieces on a minimal executor that fails the test when a `Pending` is not followed by a
//! wake-up within seconds (the other side never waits on the task, so a silent wait can only be
//! a lost wake-up). No tokio here: the engine's wakers are any `std::task::Waker`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::task::{Context, Poll, Wake};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::runtime::io::Mio;
use crate::runtime::local::{APP_SHUT, Hub, LoopEnds, PEER_FIN, STREAM_BUFFER, stream_pair};

/// How long a pending task may go without a wake-up before the test calls it lost.
const SILENCE: Duration = Duration::from_secs(5);

struct ThreadWake {
    thread: Thread,
    woken: AtomicBool,
}

impl Wake for ThreadWake {
    fn wake(self: Arc<Self>) {
        self.woken.store(true, SeqCst);
        self.thread.unpark();
    }
}

/// Runs `fut` to completion on this thread; panics on a `Pending` that no wake-up follows.
/// Returns the output and how many times the future was pending.
fn block_on_watched<F: Future>(fut: F) -> (F::Output, u64) {
    let wake = Arc::new(ThreadWake {
        thread: thread::current(),
        woken: AtomicBool::new(false),
    });
    let waker = std::task::Waker::from(wake.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    let mut pendings = 0;
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return (out, pendings);
        }
        pendings += 1;
        let since = Instant::now();
        while !wake.woken.swap(false, SeqCst) {
            assert!(
                since.elapsed() < SILENCE,
                "lost wake-up: pending for {SILENCE:?} with nobody to wake the task"
            );
            thread::park_timeout(Duration::from_millis(100));
        }
    }
}

/// A stream whose loop side the test drives by hand.
fn stream() -> (AsyncMtcpStream, LoopEnds, Arc<Hub>) {
    let (_driver, waker) = Mio::new().expect("an epoll instance");
    let inbox = Hub::create(Arc::new(waker), u64::MAX);
    let hub = inbox.hub.clone();
    let (app, ends) = stream_pair(&hub, None);
    (app.into_async(), ends, hub)
}

/// The loop pushes 50,000 chunks of 1–7 bytes, each only once the task took the one before
/// (so every push is the only wake-up the task gets), then the end of stream, while the task
/// reads 3 bytes at a time: every byte arrives, and the task was woken every time it waited.
#[test]
fn reader_is_never_left_pending() {
    const CHUNKS: u64 = 50_000;
    let (app, ends, _hub) = stream();
    let (mut read, _write) = app.into_split();
    let filler = thread::spawn(move || {
        let mut sent_sum = 0u64;
        for i in 0..CHUNKS {
            let len = 1 + (i % 7) as usize;
            let chunk: Vec<u8> = (0..len).map(|k| (i as usize + k) as u8).collect();
            sent_sum += chunk.iter().map(|&b| u64::from(b)).sum::<u64>();
            let chunk = Bytes::from(chunk);
            while ends.shared.rx_bytes.load(SeqCst) != 0 {
                std::hint::spin_loop();
            }
            ends.shared.rx_bytes.fetch_add(chunk.len(), SeqCst);
            assert!(ends.shared.to_app.push(chunk).is_ok(), "a free slot");
            ends.shared.wake_reader();
        }
        ends.shared.set(PEER_FIN);
        (sent_sum, ends)
    });
    let ((sum, bytes), pendings) = block_on_watched(async {
        let (mut sum, mut bytes) = (0u64, 0u64);
        let mut buf = [0u8; 3];
        loop {
            let n = poll_fn(|cx| read.poll_read(cx, &mut buf)).await.unwrap();
            if n == 0 {
                return (sum, bytes);
            }
            bytes += n as u64;
            sum += buf[..n].iter().map(|&b| u64::from(b)).sum::<u64>();
        }
    });
    let (sent_sum, _ends) = filler.join().unwrap();
    assert_eq!(bytes, (0..CHUNKS).map(|i| 1 + i % 7).sum::<u64>());
    assert_eq!(sum, sent_sum);
    println!("reader: {pendings} waits, each woken");
    assert!(pendings > 0, "the hammer never made the reader wait");
}

/// The task writes 50,000 pieces as large as the whole hand-over buffer (zero-copy slices), so
/// after each one it must wait until the loop took it: every wait ends with the one wake-up
/// the loop gives, and every byte arrives.
#[test]
fn writer_is_never_left_pending() {
    const WRITES: u64 = 50_000;
    let (app, ends, _hub) = stream();
    let (_read, mut write) = app.into_split();
    let drainer = thread::spawn(move || {
        let mut got = 0u64;
        loop {
            match ends.shared.to_loop.pop() {
                Some(chunk) => {
                    got += chunk.len() as u64;
                    ends.shared.tx_bytes.fetch_sub(chunk.len(), SeqCst);
                    ends.shared.wake_writer();
                }
                None if ends.shared.state() & APP_SHUT != 0 && ends.shared.to_loop.is_empty() => {
                    return (got, ends);
                }
                None => std::hint::spin_loop(),
            }
        }
    });
    let (written, pendings) = block_on_watched(async {
        let whole = Bytes::from(vec![7u8; STREAM_BUFFER]);
        let mut written = 0u64;
        for i in 0..WRITES {
            // Each piece fills the buffer (a little less every other time, to vary it).
            let piece = whole.slice((i % 2) as usize..);
            written += poll_fn(|cx| write.poll_write_bytes(cx, &piece))
                .await
                .unwrap() as u64;
        }
        write.shutdown_write().unwrap();
        written
    });
    let (got, _ends) = drainer.join().unwrap();
    assert_eq!(got, written);
    println!("writer: {pendings} waits, each woken");
    assert!(pendings > 0, "the hammer never made the writer wait");
}

/// A reset from the loop's side wakes a pending reader and a pending writer, with the error.
#[test]
fn a_reset_wakes_both_directions() {
    let (app, ends, _hub) = stream();
    let (mut read, mut write) = app.into_split();
    // Fill the send ring so the writer waits too.
    let big = Bytes::from(vec![0u8; STREAM_BUFFER_FOR_TEST]);
    let reset = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        ends.shared.set_peer_reset(7);
        ends
    });
    // Both wait at once (joined by hand), so the one reset must wake both.
    let (mut read_err, mut write_err) = (None, None);
    let (_, pendings) = block_on_watched(poll_fn(|cx| {
        if read_err.is_none() {
            if let Poll::Ready(r) = read.poll_read(cx, &mut [0u8; 8]) {
                read_err = Some(r.unwrap_err());
            }
        }
        while write_err.is_none() {
            match write.poll_write_bytes(cx, &big) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => write_err = Some(e),
                Poll::Pending => break,
            }
        }
        if read_err.is_some() && write_err.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }));
    assert!(pendings > 0);
    let errs = (read_err.unwrap(), write_err.unwrap());
    let _ends = reset.join().unwrap();
    for e in [errs.0, errs.1] {
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    }
}

/// More than the stream's hand-over buffer, so a writer must wait.
const STREAM_BUFFER_FOR_TEST: usize = 64 * 1024;

struct CountingWake(std::sync::atomic::AtomicUsize);

impl Wake for CountingWake {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// The order that makes a lost wake-up impossible, made deterministic: the loop's change lands
/// exactly while the task checks (inside `ready`). The task's waker must already be in place
/// then, so that change wakes it; and a waker registered twice by the same task is one waker.
#[test]
fn a_change_during_the_check_wakes_the_registered_task() {
    let (app, ends, _hub) = stream();
    let count = Arc::new(CountingWake(std::sync::atomic::AtomicUsize::new(0)));
    let waker = std::task::Waker::from(count.clone());
    for (who, wake) in [
        (READER, &(|| ends.shared.wake_reader()) as &dyn Fn()),
        (WRITER, &|| ends.shared.wake_writer()),
    ] {
        let before = count.0.load(SeqCst);
        let ready = ends.shared.register_task(who, &waker, || {
            wake();
            false
        });
        assert!(!ready);
        assert_eq!(
            count.0.load(SeqCst),
            before + 1,
            "the change must wake the task"
        );
        // Nothing registered any more: a second change wakes nobody.
        wake();
        assert_eq!(count.0.load(SeqCst), before + 1);
    }
    drop(app);
}
