//! The adaptive pool's decision (`connection_pool_size = "auto"`): how many tunnels a client
//! session should keep open, from what its sending direction measures.
//!
//! Sans-IO and deterministic: [`PoolController::tick`] is fed the time and a [`PoolSample`]
//! (bytes delivered so far, whether the session is backlogged, the tunnels' RTTs) and returns a
//! [`PoolChange`] (grow, shrink or settle where it is, with its reason) or nothing.
//!
//! The rule: start at `min` (what an idle session holds). Once busy for a whole measuring
//! window, go straight to [`BUSY_START`]. While the session stays backlogged (the application
//! has more to send than the tunnels take; the session also counts a download that delivers at
//! every tick; a gap shorter than [`PoolController::idle_grace`], such as a download waiting for a
//! resend, does not count as idle), measure its goodput over windows until it stops rising (a
//! size is measured once its tunnels have left slow start: see [`MAX_WINDOWS`]; its goodput
//! is then the mean of its last two windows), then double the pool and measure again. Keep
//! growing while each step raised goodput by more than [`MIN_GAIN`] and the RTT did not rise
//! with it (a rising RTT is a queue building at a shared bottleneck: more tunnels only fill
//! it). A step that raised the RTT, or lowered goodput by more than [`MAX_LOSS`], goes back to
//! the size before it; a step within that band (flat: the two sizes are alike, within what
//! one measurement can tell apart) stays. Either way the pool settles there. A session idle
//! for [`IDLE_RESET_WINDOWS`] windows goes back to `min` (its extras are retired) and probes
//! again at its next busy period.
//!
//! Owns: the rule and its constants. Must not touch: tunnels, sockets or frames (the session
//! applies the change: `session::pool_auto`).

use std::fmt;
use std::time::{Duration, Instant};

/// Smallest goodput rise per step that justifies the step (a doubling of the pool).
pub const MIN_GAIN: f64 = 0.05;
/// A session busy for a whole window at fewer tunnels than this goes straight to this many
/// (within `min..=max`) before it compares sizes: `min` is what an idle session holds. On the
/// emulator's grid (docs/BENCHMARKS.md, bbr) 8 tunnels were within 10 % of the best fixed
/// pool on 8 of 10 paths (not at 250 ms / 1 %, nor under a per-flow cap), while 2 and 4 lost
/// up to half of it under random loss, and the steps between small pools there (5-10 % each)
/// are smaller than one measurement's noise.
pub const BUSY_START: usize = 8;
/// A step that lowered goodput by more than this fraction goes back. Less is within what one
/// measurement tells apart (at 1 % random loss the goodput of one second varies by ±30 %
/// on the emulator) and the larger pool stays: more windows are the safer side under random
/// loss, and the coupled cap (`session::coupled`) keeps them from filling a shared queue.
pub const MAX_LOSS: f64 = 0.10;
/// A step whose smoothed RTT rose by more than this fraction is queueing, not more capacity.
pub const RTT_RISE: f64 = 0.25;
/// Shortest measuring window (loopback and LAN paths).
pub const WINDOW_MIN: Duration = Duration::from_millis(500);
/// Longest measuring window.
pub const WINDOW_MAX: Duration = Duration::from_secs(5);
/// A measuring window lasts this many path RTTs (within [`WINDOW_MIN`]..=[`WINDOW_MAX`]): long
/// enough for the new tunnels to leave slow start.
pub const WINDOW_RTTS: u32 = 10;
/// Most windows one pool size is measured over. A size's goodput counts once a window did not
/// beat the one before it by [`MIN_GAIN`]: the first windows after a change (or at the
/// session's start) hold the new tunnels' slow starts, about a second on a 100 ms path at
/// 1 Gbit/s, and a smaller size measured in its slow start looks slower than it is (the next
/// step then "helps", measured 2 → 16 tunnels behind one clean 100 Mbit/s bottleneck in the
/// simulator, 0.11× of a fixed pool). A size whose goodput keeps rising counts after this many.
pub const MAX_WINDOWS: u32 = 4;
/// A gap in the session's backlog shorter than this many smoothed RTTs (and than
/// [`IDLE_GRACE_MIN`]) does not end a measuring window: see [`PoolController::idle_grace`].
pub const IDLE_GRACE_RTTS: u32 = 2;
/// The shortest gap that ends a measuring window.
pub const IDLE_GRACE_MIN: Duration = Duration::from_millis(200);
/// A session not backlogged for this many windows goes back to its smallest pool.
pub const IDLE_RESET_WINDOWS: u32 = 20;
/// How often the session feeds the controller.
pub const TICK: Duration = Duration::from_millis(50);

/// What the session measured at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSample {
    /// Bytes the peer acknowledged so far, over every tunnel (monotonic).
    pub delivered: u64,
    /// The application had data waiting that the tunnels did not take yet.
    pub backlogged: bool,
    /// Tunnels carrying frames now.
    pub active: usize,
    /// Mean smoothed RTT of the active tunnels (zero: not measured).
    pub srtt: Duration,
    /// Smallest path RTT of the active tunnels (zero: not measured).
    pub min_rtt: Duration,
}

/// Why the pool changed size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolReason {
    /// A backlogged session: go to [`BUSY_START`], or (from there) try a larger pool.
    Backlogged {
        /// Goodput at the current size, bytes/s.
        goodput: u64,
    },
    /// The last step raised goodput enough: try a larger pool.
    GoodputRose {
        /// Goodput before the step, bytes/s.
        before: u64,
        /// Goodput after it, bytes/s.
        after: u64,
    },
    /// The last step changed goodput by less than [`MIN_GAIN`] up or [`MAX_LOSS`] down: the
    /// two sizes are alike, so the pool stays at the larger.
    GoodputFlat {
        /// Goodput before the step, bytes/s.
        before: u64,
        /// Goodput after it, bytes/s.
        after: u64,
    },
    /// The last step lowered goodput by more than [`MAX_LOSS`]: back to the size before it.
    GoodputFell {
        /// Goodput before the step, bytes/s.
        before: u64,
        /// Goodput after it, bytes/s.
        after: u64,
    },
    /// The last step raised the RTT (a queue is building): back to the size before it.
    Queueing {
        /// Smoothed RTT before the step.
        before: Duration,
        /// Smoothed RTT after it.
        after: Duration,
    },
    /// No data waiting for a long time: back to the smallest pool.
    Idle {
        /// How long.
        for_: Duration,
    },
}

/// A decision: the pool goes from `from` to `to` tunnels because of `reason` (`from == to`:
/// it settles where it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolChange {
    /// Size before.
    pub from: usize,
    /// Size after.
    pub to: usize,
    /// Why.
    pub reason: PoolReason,
    /// True when the controller stops probing at `to` (until the session is idle a while).
    pub settled: bool,
}

fn mbit(bytes_per_sec: u64) -> f64 {
    bytes_per_sec as f64 * 8.0 / 1e6
}

impl fmt::Display for PoolChange {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to.cmp(&self.from) {
            std::cmp::Ordering::Greater => write!(out, "adaptive pool: growing from ")?,
            std::cmp::Ordering::Less => write!(out, "adaptive pool: shrinking from ")?,
            std::cmp::Ordering::Equal => write!(out, "adaptive pool: staying at ")?,
        }
        if self.to != self.from {
            write!(out, "{} to ", self.from)?;
        }
        write!(out, "{} tunnels: ", self.to)?;
        match self.reason {
            PoolReason::Backlogged { goodput } => write!(
                out,
                "backlogged at {:.1} Mbit/s, trying more tunnels",
                mbit(goodput)
            ),
            PoolReason::GoodputRose { before, after } => write!(
                out,
                "goodput rose {:.1} -> {:.1} Mbit/s with the last step",
                mbit(before),
                mbit(after)
            ),
            PoolReason::GoodputFlat { before, after } => write!(
                out,
                "goodput {:.1} -> {:.1} Mbit/s did not rise {:.0} % with the last step \
                 (nor fall {:.0} %)",
                mbit(before),
                mbit(after),
                MIN_GAIN * 100.0,
                MAX_LOSS * 100.0
            ),
            PoolReason::GoodputFell { before, after } => write!(
                out,
                "goodput {:.1} -> {:.1} Mbit/s fell more than {:.0} % with the last step",
                mbit(before),
                mbit(after),
                MAX_LOSS * 100.0
            ),
            PoolReason::Queueing { before, after } => write!(
                out,
                "RTT rose {before:.1?} -> {after:.1?} with the last step (a queue is building, \
                 more tunnels would only fill it)"
            ),
            PoolReason::Idle { for_ } => write!(out, "no data waiting for {for_:.0?}"),
        }?;
        if self.settled {
            write!(out, "; settled")?;
        }
        Ok(())
    }
}

/// One measured pool size.
#[derive(Debug, Clone, Copy)]
struct Step {
    size: usize,
    goodput: u64,
    srtt: Duration,
}

/// The window being measured.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    delivered: u64,
}

/// The adaptive pool's state: see the module docs.
#[derive(Debug, Clone)]
pub struct PoolController {
    min: usize,
    max: usize,
    target: usize,
    /// The last size measured, while probing.
    prev: Option<Step>,
    settled: bool,
    window: Option<Window>,
    /// Goodput of the last window at the current size and how many windows it was measured
    /// over, while it was still rising.
    rising: Option<(u64, u32)>,
    idle_since: Option<Instant>,
}

impl PoolController {
    /// A controller between `min` and `max` tunnels (`1 <= min <= max`), starting at `min`.
    pub fn new(min: usize, max: usize) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        Self {
            min,
            max,
            target: min,
            prev: None,
            settled: false,
            window: None,
            rising: None,
            idle_since: None,
        }
    }

    /// The pool size wanted now.
    pub fn target(&self) -> usize {
        self.target
    }

    /// The largest pool (lowered when the server grants fewer).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether probing has stopped.
    pub fn is_settled(&self) -> bool {
        self.settled
    }

    /// The server granted only `granted` tunnels: never ask for more. Returns the new target
    /// when it had to come down.
    pub fn cap(&mut self, granted: usize) -> Option<usize> {
        let granted = granted.max(1);
        if granted >= self.max {
            return None;
        }
        self.max = granted;
        self.min = self.min.min(granted);
        if self.target > granted {
            self.rising = None;
            self.target = granted;
            return Some(granted);
        }
        None
    }

    /// How long a measuring window lasts for a path of `rtt`.
    pub fn window_for(rtt: Duration) -> Duration {
        (rtt * WINDOW_RTTS).clamp(WINDOW_MIN, WINDOW_MAX)
    }

    /// How long a busy session may see nothing to send or receive and still count as busy: a
    /// download waiting for a lost segment's resend (an RTT or more) is not application-limited.
    pub fn idle_grace(srtt: Duration) -> Duration {
        (srtt * IDLE_GRACE_RTTS).max(IDLE_GRACE_MIN)
    }

    /// Feeds one sample taken at `now`; returns the change to apply, if any.
    pub fn tick(&mut self, now: Instant, s: PoolSample) -> Option<PoolChange> {
        let window_len = Self::window_for(s.min_rtt);
        let idle = if s.backlogged {
            self.idle_since = None;
            Duration::ZERO
        } else {
            now.saturating_duration_since(*self.idle_since.get_or_insert(now))
        };
        // A short gap inside a busy spell (a window is running) does not end it.
        if !s.backlogged && (self.window.is_none() || idle > Self::idle_grace(s.srtt)) {
            // An application-limited window says nothing about the path.
            self.window = None;
            self.rising = None;
            if idle >= window_len * IDLE_RESET_WINDOWS && (self.target > self.min || self.settled) {
                let from = self.target;
                self.target = self.min;
                self.prev = None;
                self.settled = false;
                if from != self.min {
                    return Some(PoolChange {
                        from,
                        to: self.min,
                        reason: PoolReason::Idle { for_: idle },
                        settled: false,
                    });
                }
            }
            return None;
        }
        if self.settled {
            return None;
        }
        // Measure only a pool that is all up (new tunnels connect first).
        if s.active < self.target {
            self.window = None;
            self.rising = None;
            return None;
        }
        let Some(w) = self.window else {
            self.window = Some(Window {
                start: now,
                delivered: s.delivered,
            });
            return None;
        };
        let elapsed = now.saturating_duration_since(w.start);
        if elapsed < window_len {
            return None;
        }
        let goodput =
            (s.delivered.saturating_sub(w.delivered) as f64 / elapsed.as_secs_f64()) as u64;
        // The next window (if this size is measured again) starts where this one ended.
        self.window = Some(Window {
            start: now,
            delivered: s.delivered,
        });
        // Busy for a whole window at an idle-sized pool: straight to BUSY_START, unmeasured
        // (the sizes below it are not compared). A whole window, not less: a short burst (a
        // web page) should not dial for nothing, and the session's delivery rate, which the
        // coupled cap needs before more tunnels join (`session::coupled`), is measured by then.
        let busy_start = BUSY_START.clamp(self.min, self.max);
        if self.prev.is_none() && self.target < busy_start {
            self.rising = None;
            self.window = None;
            let from = self.target;
            self.target = busy_start;
            return Some(PoolChange {
                from,
                to: busy_start,
                reason: PoolReason::Backlogged { goodput },
                settled: false,
            });
        }
        // Still rising (slow start): measure this size again before judging it. Once it
        // stopped, the size counts at the mean of its last two windows (half the variance of
        // one); one still rising after MAX_WINDOWS counts at its last.
        let goodput = match self.rising {
            None => {
                self.rising = Some((goodput, 1));
                return None;
            }
            Some((last, n)) if goodput as f64 > last as f64 * (1.0 + MIN_GAIN) => {
                if n + 1 < MAX_WINDOWS {
                    self.rising = Some((goodput, n + 1));
                    return None;
                }
                goodput
            }
            Some((last, _)) => (last + goodput) / 2,
        };
        self.rising = None;
        self.window = None;
        let here = Step {
            size: self.target,
            goodput,
            srtt: s.srtt,
        };
        let from = self.target;
        let Some(prev) = self.prev else {
            self.prev = Some(here);
            return self.grow(PoolReason::Backlogged { goodput });
        };
        let rose = goodput as f64 > prev.goodput as f64 * (1.0 + MIN_GAIN);
        let queueing = !prev.srtt.is_zero()
            && !s.srtt.is_zero()
            && s.srtt.as_secs_f64() > prev.srtt.as_secs_f64() * (1.0 + RTT_RISE);
        if rose && !queueing {
            self.prev = Some(here);
            return self.grow(PoolReason::GoodputRose {
                before: prev.goodput,
                after: goodput,
            });
        }
        // The last step did not pay: settle, back at the size before it if it did harm.
        self.settled = true;
        self.prev = None;
        let fell = (goodput as f64) < prev.goodput as f64 * (1.0 - MAX_LOSS);
        let (to, reason) = if queueing {
            let reason = PoolReason::Queueing {
                before: prev.srtt,
                after: s.srtt,
            };
            (prev.size, reason)
        } else if fell {
            let reason = PoolReason::GoodputFell {
                before: prev.goodput,
                after: goodput,
            };
            (prev.size, reason)
        } else {
            let reason = PoolReason::GoodputFlat {
                before: prev.goodput,
                after: goodput,
            };
            (from, reason)
        };
        self.target = to;
        Some(PoolChange {
            from,
            to,
            reason,
            settled: true,
        })
    }

    /// Doubles the pool (up to `max`); at `max` already, settles there without a change.
    fn grow(&mut self, reason: PoolReason) -> Option<PoolChange> {
        let from = self.target;
        if from >= self.max {
            self.settled = true;
            self.prev = None;
            return None;
        }
        let to = (from * 2).min(self.max);
        self.target = to;
        Some(PoolChange {
            from,
            to,
            reason,
            settled: false,
        })
    }
}

#[cfg(test)]
mod tests;
