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
//! (`IORING_CQE_F_BUFFER`); this side appends at the tail when the buffer is free again. Every
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

/// Buffers in each worker's ring (a power of two, at most 32,768). With [`RING_BUFFER_MAX`] this
/// bounds what a worker's receive buffers can take: 512 × 16 KiB = 8 MiB, however many sockets
/// it holds (each socket used to keep a `read_chunk` buffer of its own in flight). 512 receives
/// completing in one turn of the loop is more than the 1,000-connection ping-pong produces; when
/// a burst does run the ring dry, the sockets it missed are armed again once the turn has given
/// the buffers back.
pub(super) const RING_BUFFERS: u16 = 512;

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
    /// Times a receive found the ring empty (`ENOBUFS`), for the rate-limited log.
    pub(super) dry: u64,
}

impl BufRing {
    /// Sets up `count` buffers of `size` bytes and registers them with `ring`; an error when the
    /// kernel refuses (before 5.19), and the driver then gives each socket its own buffer.
    pub(super) fn new(ring: &IoUring, count: u16, size: usize) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32768 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a buffer ring needs a power-of-two count up to 32768 and a non-zero size",
            ));
        }
        let bytes = usize::from(count) * std::mem::size_of::<BufRingEntry>();
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
            bufs: (0..count).map(|_| Vec::with_capacity(size)).collect(),
            size,
            out: 0,
            dry: 0,
        };
        // SAFETY: the entries stay allocated (and the buffers they name alive) until `self` is
        // dropped, which unregisters first; see `Drop`.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                this.entries.as_ptr() as u64,
                count,
                GROUP,
                0,
            )?;
        }
        for bid in 0..count {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    /// Each buffer's capacity.
    pub(super) fn size(&self) -> usize {
        self.size
    }

    /// Buffers in the ring now (the kernel may take them at any moment).
    pub(super) fn free(&self) -> usize {
        usize::from(self.count) - self.out
    }

    /// A completion named buffer `bid`: it is out of the ring until [`Self::give_back`].
    pub(super) fn taken(&mut self, bid: u16) -> bool {
        if usize::from(bid) >= self.bufs.len() || self.out >= usize::from(self.count) {
            return false;
        }
        self.out += 1;
        true
    }

    /// The first `len` bytes of buffer `bid` (written by the kernel's receive).
    pub(super) fn data(&self, bid: u16, len: usize) -> &[u8] {
        let buf = &self.bufs[usize::from(bid)];
        let len = len.min(buf.capacity());
        // SAFETY: the kernel wrote the first `len` bytes (the completion's result, at most the
        // buffer's capacity) and the buffer is out of the ring, so nothing writes it now.
        unsafe { std::slice::from_raw_parts(buf.as_ptr(), len) }
    }

    /// Puts buffer `bid` back in the ring.
    pub(super) fn give_back(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
        self.out = self.out.saturating_sub(1);
    }

    /// Hands buffer `bid` over whole (its first `len` bytes) and puts a fresh one in its place.
    pub(super) fn hand_over(&mut self, bid: u16, len: usize) -> Vec<u8> {
        let mut buf = std::mem::replace(
            &mut self.bufs[usize::from(bid)],
            Vec::with_capacity(self.size),
        );
        // SAFETY: as in `data`: the kernel initialised these bytes.
        unsafe { buf.set_len(len.min(buf.capacity())) };
        self.give_back(bid);
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
