//! The worker's provided-buffer ring: receive buffers the kernel picks from only when data
//! arrives, so an idle socket holds none.
//!
//! Owns: [`BufRing`] (the ring's shared memory registered with `IORING_REGISTER_PBUF_RING`, one
//! buffer per id, and giving each back to the kernel once its bytes are consumed), the ring's
//! size ([`RING_BUFFERS`], [`RING_BUFFER_MAX`]: the one place they are set) and the count of
//! times the ring ran dry. Must not touch: which socket a buffer's bytes belong to (`stream`,
//! `completion`), submission (`ring`).
//!
//! The ring is the kernel's shared array of `(address, length, id)` entries: the kernel takes
//! from its head when a receive completes and reports the id in the completion
//! (`IORING_CQE_F_BUFFER`); this side appends at the tail when the buffer is free again. Where
//! the kernel has it (6.12), the ring consumes buffers incrementally: successive receives fill
//! one buffer until it is full, so a 64 B message takes 64 B of a buffer, not a buffer; a buffer
//! then holds several sockets' chunks and goes back once the last is read. Every
//! buffer is either in the ring or held by exactly one queued chunk of one socket; the end of
//! each loop turn copies what a socket left unread out of its ring buffers (see
//! `Core::spill`), so the ring is full again whenever the loop waits and a slow reader never
//! keeps buffers from the others.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// Buffers in each worker's ring (a power of two, at most 8,192). With [`RING_BUFFER_MAX`] this
/// bounds what a worker's receive buffers can take: 128 × 16 KiB = 2 MiB, however many sockets
/// it holds (each socket used to keep a `read_chunk` buffer of its own in flight). The kernel
/// fills buffers one after the other (incremental consumption), so the whole ring becomes
/// resident once traffic has cycled through it: this is a fixed cost per worker. 2 MiB is far
/// more than a turn of the loop receives in the 8,000-connection ping-pong (8,000 × 64 B); when
/// a burst does run the ring dry, the sockets it missed are armed again once the turn has given
/// the buffers back.
pub(super) const RING_BUFFERS: u16 = 128;

/// Whether a worker's driver registers the ring ([`RING_BUFFERS`]) or keeps one receive buffer
/// per socket (as on a kernel that refuses the ring). On: the daemons' 2,000-stream echo test
/// (`two_thousand_concurrent_streams_echo_random_data_uring`) once saw backend connections reset
/// in about half of its runs with it, which was the test's backend, not the ring: its listen
/// queue of 128 overflowed, the kernel answered with SYN cookies, and a first flight sent in
/// two segments failed the cookie check (see `mtcpd_testkit::backends`).
pub(super) const RING_BY_DEFAULT: bool = true;

/// Without incremental consumption (Linux before 6.12) every receive takes a whole buffer, small
/// or not, so the ring gets this many times [`RING_BUFFERS`] (only the pages the kernel writes
/// become resident: the first of each buffer for small messages).
pub(super) const WHOLE_FACTOR: u16 = 4;

/// Largest buffer in the ring; a smaller `read_chunk` makes them smaller. Small enough that the
/// whole ring stays a few MiB (its pages become resident as the kernel writes them, and the
/// ring cycles through all of them), large enough that a bulk receive takes few completions.
pub(super) const RING_BUFFER_MAX: usize = 16 * 1024;

/// The buffer group id the ring is registered under (one ring per io_uring instance).
pub(super) const GROUP: u16 = 0;

/// A registered provided-buffer ring.
pub(super) struct BufRing {
    entries: NonNull<BufRingEntry>,
    layout: Layout,
    count: u16,
    /// Next tail to publish (the kernel's head runs behind it).
    tail: u16,
    /// The buffers, by id; their heap memory never moves while registered.
    bufs: Vec<Vec<u8>>,
    size: usize,
    /// Buffers the kernel has handed out and this side has not given back.
    out: usize,
    /// Registered with `IOU_PBUF_RING_INC` (Linux 6.12): the kernel fills a buffer across
    /// several receives, so small messages share one instead of taking one each.
    inc: bool,
    /// Per buffer: where the kernel writes next (with `inc`), the queued chunks still in it,
    /// and whether the kernel is done with it (the ring's head has moved past it).
    fill: Vec<usize>,
    refs: Vec<u32>,
    done: Vec<bool>,
    /// Times a receive found the ring empty (`ENOBUFS`), for the rate-limited log.
    pub(super) dry: u64,
}

impl BufRing {
    /// Sets up `count` buffers of `size` bytes and registers them with `ring`; an error when the
    /// kernel refuses (before 5.19), and the driver then gives each socket its own buffer.
    pub(super) fn new(ring: &IoUring, count: u16, size: usize) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32768 / WHOLE_FACTOR || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a buffer ring needs a power-of-two count up to 8192 and a non-zero size",
            ));
        }
        // Room for the entries of either kind of ring (16 B each).
        let most = usize::from(count * WHOLE_FACTOR);
        let bytes = most * std::mem::size_of::<BufRingEntry>();
        // The kernel wants the entries page aligned.
        let layout = Layout::from_size_align(bytes.max(4096), 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a non-zero size; the result is checked.
        let ptr = unsafe { alloc_zeroed(layout) };
        let Some(entries) = NonNull::new(ptr.cast::<BufRingEntry>()) else {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "buffer ring"));
        };
        let mut this = Self {
            entries,
            layout,
            count,
            tail: 0,
            bufs: Vec::new(),
            size,
            out: 0,
            inc: true,
            fill: Vec::new(),
            refs: Vec::new(),
            done: Vec::new(),
            dry: 0,
        };
        // SAFETY: the entries stay allocated (and the buffers they name alive) until `self` is
        // dropped, which unregisters first; see `Drop`.
        let register = |count: u16, flags: u16| unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                count,
                GROUP,
                flags,
            )
        };
        if let Err(e) = register(count, io_uring::types::IOU_PBUF_RING_INC as u16) {
            // Each receive then takes a whole buffer: more of them.
            tracing::debug!(
                "io_uring: no incremental buffer consumption ({e}): a buffer per receive"
            );
            this.inc = false;
            this.count = count * WHOLE_FACTOR;
            register(this.count, 0)?;
        }
        let n = usize::from(this.count);
        this.bufs = (0..n).map(|_| Vec::with_capacity(size)).collect();
        this.fill = vec![0; n];
        this.refs = vec![0; n];
        this.done = vec![false; n];
        for bid in 0..this.count {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    /// Buffers in the ring.
    pub(super) fn count(&self) -> u16 {
        self.count
    }

    /// Each buffer's capacity.
    pub(super) fn size(&self) -> usize {
        self.size
    }

    /// Buffers in the ring now (the kernel may take them at any moment).
    pub(super) fn free(&self) -> usize {
        usize::from(self.count) - self.out
    }

    /// A receive completed into buffer `bid` with `len` bytes (`more`: the kernel goes on
    /// filling it, `IORING_CQE_F_BUF_MORE`). Gives where the bytes are in the buffer, counted as
    /// one queued chunk until [`Self::release`]; `None` for a buffer id out of range.
    pub(super) fn received(&mut self, bid: u16, len: usize, more: bool) -> Option<(usize, usize)> {
        let b = usize::from(bid);
        if b >= self.bufs.len() || self.done[b] {
            return None;
        }
        let start = if self.inc { self.fill[b] } else { 0 };
        let end = (start + len).min(self.size);
        if self.inc {
            self.fill[b] = end;
        }
        if len > 0 {
            self.refs[b] += 1;
        }
        // A receive of nothing moves no head (the kernel commits zero bytes), so only a
        // receive with bytes says the kernel is done with an incremental buffer.
        if !self.inc || (len > 0 && !more) {
            self.done[b] = true;
            self.out += 1;
        }
        self.recycle(bid);
        Some((start, end))
    }

    /// A chunk in buffer `bid` was consumed; the buffer goes back to the ring once the kernel
    /// is done with it and nothing queued is left in it.
    pub(super) fn release(&mut self, bid: u16) {
        let b = usize::from(bid);
        if b < self.refs.len() {
            self.refs[b] = self.refs[b].saturating_sub(1);
            self.recycle(bid);
        }
    }

    /// Whether the one chunk left in buffer `bid` owns it whole (it can change hands).
    pub(super) fn sole(&self, bid: u16) -> bool {
        let b = usize::from(bid);
        b < self.bufs.len() && self.done[b] && self.refs[b] == 1
    }

    fn recycle(&mut self, bid: u16) {
        let b = usize::from(bid);
        if self.done[b] && self.refs[b] == 0 {
            self.done[b] = false;
            self.fill[b] = 0;
            self.push(bid);
            self.publish();
            self.out = self.out.saturating_sub(1);
        }
    }

    /// The first `len` bytes of buffer `bid` (written by the kernel's receives).
    pub(super) fn data(&self, bid: u16, len: usize) -> &[u8] {
        let buf = &self.bufs[usize::from(bid)];
        let len = len.min(buf.capacity());
        // SAFETY: the kernel wrote the first `len` bytes (the completions' results, within the
        // buffer's capacity) and does not write them again until the buffer is back in the ring.
        unsafe { std::slice::from_raw_parts(buf.as_ptr(), len) }
    }

    /// Hands buffer `bid` over whole (its first `len` bytes; see [`Self::sole`]) and puts a
    /// fresh one in its place.
    pub(super) fn hand_over(&mut self, bid: u16, len: usize) -> Vec<u8> {
        let mut buf = std::mem::replace(
            &mut self.bufs[usize::from(bid)],
            Vec::with_capacity(self.size),
        );
        // SAFETY: as in `data`: the kernel initialised these bytes.
        unsafe { buf.set_len(len.min(buf.capacity())) };
        self.release(bid);
        buf
    }

    fn push(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        // SAFETY: `index` < count, inside the allocation; the kernel only reads entries between
        // its head and the published tail, and this one is past the tail until `publish`.
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        let buf = &mut self.bufs[usize::from(bid)];
        entry.set_addr(buf.as_mut_ptr() as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry of our allocation; the kernel reads it
        // concurrently, hence the atomic store (release: the entries are written before it).
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()).cast_mut();
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }

    /// Unregisters from `ring` (called before the ring goes; the memory is freed on drop).
    pub(super) fn unregister(&self, ring: &IoUring) {
        if let Err(e) = ring.submitter().unregister_buf_ring(GROUP) {
            tracing::debug!("io_uring: unregistering the buffer ring failed: {e}");
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout. The owner drops (or forgets) us only once
        // the kernel can no longer use the ring: unregistered, or the ring itself gone.
        unsafe { dealloc(self.entries.as_ptr().cast(), self.layout) };
    }
}
