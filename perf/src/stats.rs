//! Latency recording and summaries: a thin wrapper over `hdrhistogram` (nanosecond values,
//! 3 significant digits) and the serialisable percentile summary every latency mode reports.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// A latency histogram in nanoseconds, up to 100 s.
pub struct Lat {
    h: Histogram<u64>,
}

impl Default for Lat {
    fn default() -> Self {
        Self::new()
    }
}

impl Lat {
    pub fn new() -> Self {
        // Bounds are constants known to be valid.
        let h =
            Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("valid histogram bounds");
        Lat { h }
    }

    pub fn record(&mut self, d: Duration) {
        let ns = (d.as_nanos() as u64).clamp(1_000, 100_000_000_000);
        // Values are clamped into range, so this cannot fail.
        let _ = self.h.record(ns);
    }

    pub fn merge(&mut self, other: &Lat) {
        let _ = self.h.add(&other.h);
    }

    pub fn count(&self) -> u64 {
        self.h.len()
    }

    pub fn summary(&self) -> LatSummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        if self.h.is_empty() {
            return LatSummary::default();
        }
        LatSummary {
            count: self.h.len(),
            min_us: us(self.h.min()),
            mean_us: self.h.mean() / 1000.0,
            p50_us: us(self.h.value_at_quantile(0.50)),
            p90_us: us(self.h.value_at_quantile(0.90)),
            p99_us: us(self.h.value_at_quantile(0.99)),
            p999_us: us(self.h.value_at_quantile(0.999)),
            max_us: us(self.h.max()),
        }
    }
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatSummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl LatSummary {
    /// One human-readable line.
    pub fn line(&self) -> String {
        format!(
            "n={} min={} p50={} p90={} p99={} p99.9={} max={} mean={}",
            self.count,
            fmt_us(self.min_us),
            fmt_us(self.p50_us),
            fmt_us(self.p90_us),
            fmt_us(self.p99_us),
            fmt_us(self.p999_us),
            fmt_us(self.max_us),
            fmt_us(self.mean_us)
        )
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{us:.1}us")
    }
}
