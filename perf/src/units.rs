//! Parsing of human-friendly quantities on the command line: durations (`50ms`, `10s`),
//! byte counts (`1G`, `64k`), rates (`1gbit`, `20mbit`, `10mbps`), probabilities (`1%`, `0.01`)
//! and queue limits (`100ms` or `256k`). This module owns every unit conversion of the tool.

use anyhow::{Context, Result, bail};
use std::time::Duration;

/// Split `s` into its leading number and its (lower-cased, trimmed) unit suffix.
fn split_num(s: &str) -> Result<(f64, String)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    if num.is_empty() {
        bail!("{s:?}: expected a number");
    }
    let v: f64 = num
        .parse()
        .with_context(|| format!("{s:?}: bad number {num:?}"))?;
    if !v.is_finite() || v < 0.0 {
        bail!("{s:?}: must be a finite non-negative number");
    }
    Ok((v, unit.trim().to_ascii_lowercase()))
}

/// Parse a duration: `ns`, `us`, `ms`, `s`, `m`, `h`; a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let (v, unit) = split_num(s)?;
    let secs = match unit.as_str() {
        "ns" => v / 1e9,
        "us" | "µs" => v / 1e6,
        "ms" => v / 1e3,
        "" | "s" | "sec" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        other => bail!("{s:?}: unknown duration unit {other:?} (use ns, us, ms, s, m, h)"),
    };
    if secs > 1e9 {
        bail!("{s:?}: duration too large");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parse a byte count: `k`, `m`, `g`, `t` are binary multiples (like iperf); optional `b`/`ib`.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let (v, unit) = split_num(s)?;
    let unit = unit.trim_end_matches("ib").trim_end_matches('b');
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => bail!("{s:?}: unknown size unit {other:?} (use k, m, g, t)"),
    };
    let b = v * mult;
    if b > u64::MAX as f64 / 2.0 {
        bail!("{s:?}: size too large");
    }
    Ok(b as u64)
}

/// Parse a rate in bits per second, tc style: `bit`, `kbit`, `mbit`, `gbit` (decimal, bits) and
/// `bps`, `kbps`, `mbps`, `gbps` (decimal, bytes). A bare number means bits per second.
pub fn parse_rate(s: &str) -> Result<u64> {
    let (v, unit) = split_num(s)?;
    let bits: f64 = match unit.as_str() {
        "" | "bit" => v,
        "k" | "kbit" => v * 1e3,
        "m" | "mbit" => v * 1e6,
        "g" | "gbit" => v * 1e9,
        "bps" => v * 8.0,
        "kbps" => v * 8e3,
        "mbps" => v * 8e6,
        "gbps" => v * 8e9,
        other => {
            bail!("{s:?}: unknown rate unit {other:?} (use bit, kbit, mbit, gbit, bps, kbps…)")
        }
    };
    if !(1.0..=1e13).contains(&bits) {
        bail!("{s:?}: rate out of range");
    }
    Ok(bits as u64)
}

/// Parse a probability: `1%` or `0.01`.
pub fn parse_prob(s: &str) -> Result<f64> {
    let t = s.trim();
    let p = if let Some(pct) = t.strip_suffix('%') {
        let (v, unit) = split_num(pct)?;
        if !unit.is_empty() {
            bail!("{s:?}: bad percentage");
        }
        v / 100.0
    } else {
        let (v, unit) = split_num(t)?;
        if !unit.is_empty() {
            bail!("{s:?}: bad probability (use 0.01 or 1%)");
        }
        v
    };
    if !(0.0..=1.0).contains(&p) {
        bail!("{s:?}: probability must be within 0..1 (0%..100%)");
    }
    Ok(p)
}

/// A queue limit, either in time at the link rate or in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueueLimit {
    Time(Duration),
    Bytes(u64),
}

/// Parse a queue limit: a duration (`100ms`) or a byte count (`256k`).
pub fn parse_queue(s: &str) -> Result<QueueLimit> {
    let t = s.trim().to_ascii_lowercase();
    if t.ends_with('s') && !t.ends_with("bs") {
        Ok(QueueLimit::Time(parse_duration(&t)?))
    } else {
        Ok(QueueLimit::Bytes(parse_bytes(&t)?))
    }
}

/// Format a bit rate for humans (`941.2 Mbit/s`).
pub fn fmt_rate(bps: f64) -> String {
    if bps >= 1e9 {
        format!("{:.3} Gbit/s", bps / 1e9)
    } else if bps >= 1e6 {
        format!("{:.2} Mbit/s", bps / 1e6)
    } else if bps >= 1e3 {
        format!("{:.2} Kbit/s", bps / 1e3)
    } else {
        format!("{bps:.0} bit/s")
    }
}

/// Format a byte count for humans (`112 MBytes`).
pub fn fmt_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GBytes", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MBytes", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KBytes", b / 1024.0)
    } else {
        format!("{b:.0} Bytes")
    }
}

/// serde helper: a duration as fractional seconds.
pub fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// serde helper: an optional duration as fractional seconds.
pub fn ser_opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert!(parse_duration("5parsecs").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn sizes_and_rates() {
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("64k").unwrap(), 65536);
        assert_eq!(parse_bytes("64KiB").unwrap(), 65536);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert_eq!(parse_rate("1gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate("20mbit").unwrap(), 20_000_000);
        assert_eq!(parse_rate("10mbps").unwrap(), 80_000_000);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn probs_and_queues() {
        assert!((parse_prob("1%").unwrap() - 0.01).abs() < 1e-12);
        assert!((parse_prob("0.25").unwrap() - 0.25).abs() < 1e-12);
        assert!(parse_prob("150%").is_err());
        assert_eq!(
            parse_queue("100ms").unwrap(),
            QueueLimit::Time(Duration::from_millis(100))
        );
        assert_eq!(parse_queue("256k").unwrap(), QueueLimit::Bytes(262144));
        assert_eq!(parse_queue("64kb").unwrap(), QueueLimit::Bytes(65536));
    }
}
