//! Repeated failures of one kind said once, then counted: the first occurrence for a key (a
//! refused target, a forward whose target the server refuses) is reported at once, the repeats
//! are counted and summarised once per interval, so a client retrying in a loop cannot flood
//! the log. A bounded table: past [`MAX_KEYS`] distinct keys, new keys share one overflow entry.
//!
//! Owns: the counts and report times per key. Must not touch: what is logged (the caller words
//! the lines) or the failures themselves.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most distinct keys tracked; more are counted together under [`OVERFLOW_KEY`].
pub(crate) const MAX_KEYS: usize = 256;
/// The key that counts every key beyond [`MAX_KEYS`].
pub(crate) const OVERFLOW_KEY: &str = "(other)";

#[derive(Debug)]
struct Repeats {
    since_report: u64,
    next_report: Instant,
}

/// Per-key counts of a repeated failure, reported at most once per `interval` each.
#[derive(Debug)]
pub(crate) struct RepeatLog {
    interval: Duration,
    keys: HashMap<String, Repeats>,
}

impl RepeatLog {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            keys: HashMap::new(),
        }
    }

    /// One more occurrence for `key` at `now`. True when it is news (the first for this key,
    /// or the first since its last summary came due): say it now; false: counted for the
    /// next summary.
    pub(crate) fn note(&mut self, key: &str, now: Instant) -> bool {
        let key = if self.keys.contains_key(key) || self.keys.len() < MAX_KEYS {
            key
        } else {
            OVERFLOW_KEY
        };
        match self.keys.get_mut(key) {
            Some(r) => {
                r.since_report += 1;
                false
            }
            None => {
                self.keys.insert(
                    key.to_owned(),
                    Repeats {
                        since_report: 0,
                        next_report: now + self.interval,
                    },
                );
                true
            }
        }
    }

    /// The keys whose summary is due at `now`, with the repeats counted since their last
    /// report. A key with no repeats in its interval is forgotten (its next occurrence is news
    /// again).
    pub(crate) fn due(&mut self, now: Instant) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let interval = self.interval;
        self.keys.retain(|key, r| {
            if now < r.next_report {
                return true;
            }
            if r.since_report == 0 {
                return false;
            }
            out.push((key.clone(), r.since_report));
            r.since_report = 0;
            r.next_report = now + interval;
            true
        });
        out
    }

    /// The reporting interval.
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_is_news_repeats_are_summarised_once_per_interval() {
        let t0 = Instant::now();
        let mut log = RepeatLog::new(Duration::from_secs(60));
        assert!(log.note("a:1", t0));
        for _ in 0..5 {
            assert!(!log.note("a:1", t0));
        }
        assert!(log.due(t0 + Duration::from_secs(59)).is_empty());
        assert_eq!(
            log.due(t0 + Duration::from_secs(60)),
            vec![("a:1".to_owned(), 5)]
        );
        // Quiet for a whole interval: forgotten, so the next one is news again.
        assert!(log.due(t0 + Duration::from_secs(121)).is_empty());
        assert!(log.note("a:1", t0 + Duration::from_secs(122)));
    }

    #[test]
    fn the_table_is_bounded_and_overflow_is_counted_together() {
        let t0 = Instant::now();
        let mut log = RepeatLog::new(Duration::from_secs(1));
        for i in 0..MAX_KEYS {
            assert!(log.note(&format!("k{i}"), t0));
        }
        // Past the bound: the first extra key is news under the overflow key, the rest count.
        assert!(log.note("extra-1", t0));
        assert!(!log.note("extra-2", t0));
        assert!(!log.note("extra-3", t0));
        assert_eq!(log.keys.len(), MAX_KEYS + 1);
        let due = log.due(t0 + Duration::from_secs(1));
        assert_eq!(due, vec![(OVERFLOW_KEY.to_owned(), 2)]);
    }
}
