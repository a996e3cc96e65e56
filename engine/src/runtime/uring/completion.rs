//! Completion dispatch: what each completion means for its socket, and the ready events the
//! loop sees.
//!
//! Owns: [`Core::complete`] (a finished receive becomes buffered data, end of stream or an
//! error; a finished send its byte count; a connect's poll both edges; the waker's read is
//! re-armed) and forgetting a closed socket's record when its last operation comes back. Every
//! completion for a registered socket becomes one ready event for its token, which is the edge
//! the shared loop waits for. Must not touch: submission (`ring`), what an accept completion
//! means (`accept`), how buffered data is read (`stream`).

use std::io;

use super::ring::{Chunk, Core, Op, OpKind, Rx, UNTRACKED};

impl Core {
    pub(super) fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        if user_data == UNTRACKED {
            return;
        }
        // A completion of an operation no longer in the table has nobody to tell.
        let Some(key) = self.op_key(user_data) else {
            return;
        };
        let more = io_uring::cqueue::more(flags);
        if let Some(Op {
            kind: OpKind::RecvMulti,
            ..
        }) = self.ops.get(key)
        {
            self.recv_multi_done(key, res, flags, more);
            return;
        }
        if more {
            // A multishot operation goes on: it keeps its place in the table.
            self.complete_more(key, res);
            return;
        }
        let Some(op) = self.ops.try_remove(key) else {
            return;
        };
        let err = || io::Error::from_raw_os_error(-res);
        let Some(id) = op.sock else {
            if let OpKind::Wake(buf) = op.kind {
                self.start(None, OpKind::Wake(buf));
            }
            return;
        };
        let retry = res == -libc::EINTR || res == -libc::EAGAIN;
        let s = &mut self.socks[id];
        s.inflight -= 1;
        let (readable, writable) = match op.kind {
            OpKind::Recv(mut buf) => {
                s.recv_op = None;
                if res > 0 {
                    // SAFETY: the kernel initialised the first `res` bytes (at most the capacity
                    // it was given).
                    unsafe { buf.set_len((res as usize).min(buf.capacity())) };
                    let end = buf.len();
                    s.rx.push_back(Chunk::Heap {
                        data: buf,
                        pos: 0,
                        end,
                    });
                } else if res == 0 {
                    s.rx_end = Some(Rx::Eof);
                } else if retry || s.closed {
                    s.spare = buf;
                } else {
                    s.rx_end = Some(Rx::Err(err()));
                }
                (true, false)
            }
            // Handled above, before the table entry is taken.
            OpKind::RecvMulti => (false, false),
            OpKind::Send { .. } => {
                s.send_op = None;
                s.sent = if res >= 0 {
                    Some(Ok(res as usize))
                } else if retry {
                    None
                } else {
                    Some(Err(err()))
                };
                (false, true)
            }
            OpKind::Accept => {
                self.accept_done(id, res, retry);
                (true, false)
            }
            OpKind::Poll => {
                s.poll_op = None;
                (true, true)
            }
            OpKind::Wake(_) => (false, false),
        };
        let s = &mut self.socks[id];
        if s.closed {
            if s.inflight == 0 {
                self.socks.remove(id);
            }
            return;
        }
        if let Some(t) = s.token {
            self.ready.push((t, readable, writable));
        }
    }
}
