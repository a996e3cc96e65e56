//! The adaptive pool's rule, driven by synthetic paths: a goodput model per pool size.

use super::*;

const RTT: Duration = Duration::from_millis(100);

/// What a synthetic path does at one tick: goodput (bytes/s, counted only while backlogged),
/// whether the session is backlogged, and the RTT.
struct Tick {
    rate: f64,
    backlogged: bool,
    srtt: Duration,
}

/// Drives a controller for `secs` seconds of ticks; `path(elapsed, pool size)` says what each
/// tick sees. Every decision is returned with the time it was taken.
fn drive_timed(
    c: &mut PoolController,
    secs: u64,
    mut path: impl FnMut(Duration, usize) -> Tick,
) -> Vec<(Duration, PoolChange)> {
    let start = Instant::now();
    let mut now = start;
    let mut delivered = 0.0;
    let mut changes = Vec::new();
    while now < start + Duration::from_secs(secs) {
        let elapsed = now.duration_since(start);
        let tick = path(elapsed, c.target());
        if tick.backlogged {
            delivered += tick.rate * TICK.as_secs_f64();
        }
        let sample = PoolSample {
            delivered: delivered as u64,
            backlogged: tick.backlogged,
            active: c.target(),
            srtt: tick.srtt,
            min_rtt: RTT,
        };
        if let Some(change) = c.tick(now, sample) {
            assert!(change.to >= 1 && change.to <= c.max(), "{change:?}");
            changes.push((elapsed, change));
        }
        now += TICK;
    }
    changes
}

/// [`drive_timed`] against a path whose goodput (bytes/s) and RTT at a pool of `n` tunnels are
/// `path(n)`, backlogged throughout or never; every change is returned.
fn drive(
    c: &mut PoolController,
    secs: u64,
    backlogged: bool,
    path: impl Fn(usize) -> (f64, Duration),
) -> Vec<PoolChange> {
    drive_timed(c, secs, |_, n| {
        let (rate, srtt) = path(n);
        Tick {
            rate,
            backlogged,
            srtt,
        }
    })
    .into_iter()
    .map(|(_, change)| change)
    .collect()
}

/// 20 Mbit/s per tunnel, no shared limit below `limit` tunnels.
fn per_flow_cap(limit: usize) -> impl Fn(usize) -> (f64, Duration) {
    move |n| (2.5e6 * n.min(limit) as f64, RTT)
}

#[test]
fn rising_goodput_grows_to_the_bound() {
    let mut c = PoolController::new(2, 32);
    let changes = drive(&mut c, 60, true, per_flow_cap(1000));
    let sizes: Vec<_> = changes.iter().map(|c| c.to).collect();
    assert_eq!(sizes, [8, 16, 32], "{changes:#?}");
    assert_eq!(c.target(), 32);
    assert!(c.is_settled());
    assert!(matches!(changes[0].reason, PoolReason::Backlogged { .. }));
    assert!(matches!(changes[1].reason, PoolReason::Backlogged { .. }));
    assert!(matches!(changes[2].reason, PoolReason::GoodputRose { .. }));
    assert!(
        changes[2]
            .to_string()
            .contains("growing from 16 to 32 tunnels")
    );
}

#[test]
fn flat_goodput_stops_growth_where_it_is() {
    // The per-flow cap binds up to 8 tunnels; 16 gives nothing more, and nothing less.
    let mut c = PoolController::new(2, 32);
    let changes = drive(&mut c, 60, true, per_flow_cap(8));
    let sizes: Vec<_> = changes.iter().map(|c| c.to).collect();
    assert_eq!(sizes, [8, 16, 16], "{changes:#?}");
    let last = changes.last().unwrap();
    assert!(last.settled);
    assert!(matches!(last.reason, PoolReason::GoodputFlat { .. }));
    assert!(
        last.to_string().contains("staying at 16 tunnels: goodput"),
        "{last}"
    );
    assert_eq!(c.target(), 16);
    assert!(c.is_settled());
}

#[test]
fn a_step_that_lowers_goodput_goes_back() {
    // 16 tunnels are 20 % slower than 8 (beyond MAX_LOSS).
    let mut c = PoolController::new(2, 32);
    let changes = drive(&mut c, 60, true, |n| {
        let (rate, rtt) = per_flow_cap(8)(n);
        (if n > 8 { rate * 0.8 } else { rate }, rtt)
    });
    let sizes: Vec<_> = changes.iter().map(|c| c.to).collect();
    assert_eq!(sizes, [8, 16, 8], "{changes:#?}");
    let last = changes.last().unwrap();
    assert!(last.settled);
    assert!(matches!(last.reason, PoolReason::GoodputFell { .. }));
    assert!(
        last.to_string().contains("shrinking from 16 to 8"),
        "{last}"
    );
    assert_eq!(c.target(), 8);
}

#[test]
fn a_busy_session_goes_straight_to_the_busy_start_then_probes_one_step() {
    // One flow already fills the link: each doubling gives 2 %.
    let mut c = PoolController::new(2, 32);
    let changes = drive(&mut c, 30, true, |n| {
        (100e6 * (1.0 + 0.02 * (n as f64).log2()), RTT)
    });
    let sizes: Vec<_> = changes.iter().map(|c| c.to).collect();
    assert_eq!(sizes, [BUSY_START, 16, 16], "{changes:#?}");
    assert_eq!(c.target(), 16);
    // The jump is not a measured step: its goodput is only what the log says (one window).
    assert!(
        changes[0]
            .to_string()
            .contains("growing from 2 to 8 tunnels: backlogged at"),
        "{}",
        changes[0]
    );
    // Bounds hold: a pool that may not reach BUSY_START goes to its largest.
    let mut c = PoolController::new(2, 6);
    let sizes: Vec<_> = drive(&mut c, 30, true, per_flow_cap(1000))
        .iter()
        .map(|c| c.to)
        .collect();
    assert_eq!(sizes, [6]);
}

#[test]
fn a_size_counts_at_the_mean_of_its_last_two_windows() {
    // Every size gets the same goodput on average, but one window in two is 15 % above it and
    // the next 15 % below (a lossy path's noise). Judged on one window, a step looks 30 %
    // better or worse by chance; on two, the sizes are alike.
    let mut c = PoolController::new(2, 32);
    let noise = |elapsed: Duration| {
        if elapsed.as_secs() % 2 == 0 {
            1.15
        } else {
            0.85
        }
    };
    let changes = drive_timed(&mut c, 30, |elapsed, _| Tick {
        rate: 10e6 * noise(elapsed),
        backlogged: true,
        srtt: RTT,
    });
    let (_, last) = changes.last().expect("a decision");
    let PoolReason::GoodputFlat { before, after } = last.reason else {
        panic!("{changes:#?}");
    };
    for judged in [before, after] {
        assert!((9_800_000..=10_200_000).contains(&judged), "{changes:#?}");
    }
}

#[test]
fn short_gaps_in_the_backlog_do_not_end_a_window() {
    // A download waiting for a resend: nothing arrives for 150 ms of every second (under
    // IDLE_GRACE_MIN); the session is still busy, and grows as a steady one does.
    let mut c = PoolController::new(2, 32);
    let changes = drive_timed(&mut c, 60, |elapsed, n| Tick {
        rate: 2.5e6 * n as f64,
        backlogged: elapsed.subsec_millis() >= 150,
        srtt: RTT,
    });
    let sizes: Vec<_> = changes.iter().map(|(_, c)| c.to).collect();
    assert_eq!(sizes, [BUSY_START, 16, 32], "{changes:#?}");
    // A gap longer than the grace does end it: never backlogged for long enough, no growth.
    assert!(PoolController::idle_grace(RTT) < Duration::from_millis(250));
}

#[test]
fn queueing_rtt_stops_growth_even_when_goodput_rises() {
    // Goodput rises 10 % per doubling but the RTT grows with the pool: a queue.
    let mut c = PoolController::new(2, 32);
    let changes = drive(&mut c, 30, true, |n| {
        (
            10e6 * (1.0 + 0.1 * (n as f64).log2()),
            RTT + Duration::from_millis(20 * n as u64),
        )
    });
    let last = changes.last().expect("a change");
    assert!(
        matches!(last.reason, PoolReason::Queueing { .. }),
        "{changes:#?}"
    );
    assert_eq!(c.target(), BUSY_START, "{changes:#?}");
    assert!(last.to_string().contains("RTT rose"), "{last}");
}

#[test]
fn a_session_that_is_not_backlogged_never_grows() {
    let mut c = PoolController::new(2, 32);
    let changes = drive(&mut c, 60, false, per_flow_cap(1000));
    assert!(changes.is_empty(), "{changes:#?}");
    assert_eq!(c.target(), 2);
}

#[test]
fn bounds_hold_min_equal_max_never_changes() {
    let mut c = PoolController::new(4, 4);
    assert!(drive(&mut c, 30, true, per_flow_cap(1000)).is_empty());
    assert_eq!(c.target(), 4);
    // max not a power of two times min: the last step stops at max.
    let mut c = PoolController::new(3, 10);
    let sizes: Vec<_> = drive(&mut c, 60, true, per_flow_cap(1000))
        .iter()
        .map(|c| c.to)
        .collect();
    assert_eq!(sizes, [8, 10]);
    // Nonsense bounds are made sane, not a panic.
    let c = PoolController::new(0, 0);
    assert_eq!((c.target(), c.max()), (1, 1));
}

#[test]
fn the_server_grant_caps_the_pool() {
    let mut c = PoolController::new(2, 32);
    drive(&mut c, 60, true, per_flow_cap(1000));
    assert_eq!(c.target(), 32);
    assert_eq!(c.cap(6), Some(6));
    assert_eq!(c.max(), 6);
    assert_eq!(c.cap(16), None, "a larger grant never raises the cap");
}

#[test]
fn an_idle_session_returns_to_its_smallest_pool_and_probes_again() {
    let mut c = PoolController::new(2, 32);
    drive(&mut c, 60, true, per_flow_cap(8));
    assert_eq!(c.target(), 16);
    // 20 windows of 1 s (10 x 100 ms) idle.
    let changes = drive(&mut c, 25, false, per_flow_cap(8));
    assert_eq!(changes.len(), 1, "{changes:#?}");
    assert_eq!((changes[0].from, changes[0].to), (16, 2));
    assert!(matches!(changes[0].reason, PoolReason::Idle { .. }));
    assert!(!c.is_settled());
    let sizes: Vec<_> = drive(&mut c, 60, true, per_flow_cap(4))
        .iter()
        .map(|c| c.to)
        .collect();
    assert_eq!(sizes, [8, 16, 16]);
}

#[test]
fn no_window_is_measured_until_the_whole_pool_is_up() {
    let mut c = PoolController::new(2, 32);
    let start = Instant::now();
    let mut delivered = 0;
    for i in 0..200u32 {
        delivered += 1_000_000;
        let sample = PoolSample {
            delivered,
            backlogged: true,
            active: 1,
            srtt: RTT,
            min_rtt: RTT,
        };
        assert_eq!(c.tick(start + TICK * i, sample), None);
    }
}

#[test]
fn the_window_follows_the_path_rtt_within_bounds() {
    assert_eq!(PoolController::window_for(Duration::ZERO), WINDOW_MIN);
    assert_eq!(
        PoolController::window_for(Duration::from_millis(100)),
        Duration::from_secs(1)
    );
    assert_eq!(
        PoolController::window_for(Duration::from_secs(2)),
        WINDOW_MAX
    );
}

#[test]
fn a_size_is_judged_once_its_slow_start_is_over() {
    // One clean 100 Mbit/s bottleneck that every pool size fills, but reached only after a
    // slow start of 2 s from the session's start. Judged on its first window (in slow start),
    // 2 tunnels would look slower than 4 measured later, and the pool would grow for nothing.
    let mut c = PoolController::new(2, 32);
    let changes = drive_timed(&mut c, 30, |elapsed, _| Tick {
        rate: 12.5e6 * (elapsed.as_secs_f64() / 2.0).min(1.0),
        backlogged: true,
        srtt: RTT,
    });
    let sizes: Vec<_> = changes.iter().map(|(_, c)| c.to).collect();
    assert_eq!(sizes, [8, 16, 16], "{changes:#?}");
    // The jump to BUSY_START came after one busy window (1 s); at 8 the step waited for the
    // goodput to stop rising (past 2 s), not one window after the jump.
    assert!(changes[0].0 <= Duration::from_millis(1050), "{changes:#?}");
    assert!(changes[1].0 >= Duration::from_secs(3), "{changes:#?}");
    assert!(matches!(
        changes[2].1.reason,
        PoolReason::GoodputFlat { .. }
    ));
}
