//! The adaptive pool's decision (`connection_pool_size = "auto"`): how many tunnels a client
//! session should keep open, from what its sending direction measures.
//!
//! Sans-IO and deterministic: [`PoolController::tick`] is fed the time and a [`PoolSample`]
//! (bytes delivered so far, whether the session is backlogged, the tunnels' RTTs) and returns a
//! [`PoolChange`] (grow or shrink, with its reason) or nothing.
//!
//! The rule: start at `min`. While the session stays backlogged (the application has more to
//! send than the tunnels take; the session also counts a download that delivers at every
//! tick), measure its goodput over windows until it stops rising (a size is measured once its
//! tunnels have left slow start: see [`MAX_WINDOWS`]), then double the pool and measure again. Keep growing while each step raised goodput by more than [`MIN_GAIN`] and the
//! RTT did not rise with it (a rising RTT is a queue building at a shared bottleneck: more
//! tunnels only fill it); otherwise go back to the last size that helped and settle there. A
//! session idle for [`IDLE_RESET_WINDOWS`] windows goes back to `min` (its extras are retired) and
//! probes again at its next busy period.
//!
//! Owns: the rule and its constants. Must not touch: tunnels, sockets or frames (the session
//! applies the change: `session::pool_auto`).

use std::fmt;
use std::time::{Duration, Instant};

/// Smallest goodput rise per step that justifies the step (a doubling of the pool).
pub const MIN_GAIN: f64 = 0.05;
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
    /// First measure of a backlogged session: try a larger pool.
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
    /// The last step did not raise goodput by [`MIN_GAIN`]: back to the size before it.
    GoodputFlat {
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

/// A decision: the pool goes from `from` to `to` tunnels because of `reason`.
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
        let verb = if self.to > self.from {
            "growing"
        } else {
            "shrinking"
        };
        write!(
            out,
            "adaptive pool: {verb} from {} to {} tunnels: ",
            self.from, self.to
        )?;
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
                "goodput {:.1} -> {:.1} Mbit/s did not rise {:.0} % with the last step",
                mbit(before),
                mbit(after),
                MIN_GAIN * 100.0
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

    /// Feeds one sample taken at `now`; returns the change to apply, if any.
    pub fn tick(&mut self, now: Instant, s: PoolSample) -> Option<PoolChange> {
        let window_len = Self::window_for(s.min_rtt);
        if !s.backlogged {
            // An application-limited window says nothing about the path.
            self.window = None;
            self.rising = None;
            let since = *self.idle_since.get_or_insert(now);
            let idle = now.saturating_duration_since(since);
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
        self.idle_since = None;
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
        // Still rising (slow start): measure this size again before judging it.
        match self.rising {
            None => {
                self.rising = Some((goodput, 1));
                return None;
            }
            Some((last, n))
                if n + 1 < MAX_WINDOWS && goodput as f64 > last as f64 * (1.0 + MIN_GAIN) =>
            {
                self.rising = Some((goodput, n + 1));
                return None;
            }
            Some(_) => {
                self.rising = None;
                self.window = None;
            }
        }
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
        // The last step did not pay: back to the size before it, and stay.
        self.settled = true;
        self.prev = None;
        self.target = prev.size;
        let reason = if queueing {
            PoolReason::Queueing {
                before: prev.srtt,
                after: s.srtt,
            }
        } else {
            PoolReason::GoodputFlat {
                before: prev.goodput,
                after: goodput,
            }
        };
        (from != prev.size).then_some(PoolChange {
            from,
            to: prev.size,
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
