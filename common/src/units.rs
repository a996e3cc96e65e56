//! Human quantities, parsed and printed the same way by the daemon's config file and by
//! mtcp-perf's command line: sizes, durations, bit rates, probabilities and queue limits.
//!
//! Owns: every unit conversion of mtcpd and mtcp-perf, and their error messages. Must not touch:
//! which values are allowed for a given key or flag (the callers validate ranges).
//!
//! # Sizes ([`parse_bytes`], [`ByteSize`])
//!
//! A number (`65536`, `1.5`), optional spaces, then an optional unit, matched case-insensitively:
//!
//! | unit | meaning |
//! |---|---|
//! | none, `B` | bytes |
//! | `KiB`, `MiB`, `GiB`, `TiB`, and the bare `k`, `M`, `G`, `T` | powers of 1024 |
//! | `kB`, `MB`, `GB`, `TB` | powers of 1000 |
//!
//! So `"64k"` and `"64KiB"` are 65536 bytes and `"64kB"` is 64000, in the config file and on
//! mtcp-perf's command line alike. A fraction must come out as a whole number of bytes
//! (`"1.5KiB"` is 1536; `"1.1KiB"` is refused). [`ByteSize`] prints the largest binary unit that
//! divides it exactly (`16MiB`).
//!
//! # Durations ([`parse_duration`], [`HumanDuration`])
//!
//! A number with a unit: `ns`, `us`/`µs`, `ms`, `s`/`sec`, `m`/`min`, `h`, `d` (`"250ms"`,
//! `"1.5s"`), or several terms in humantime syntax (`"1h 30m"`). A bare number is refused,
//! because its unit would be a guess, except where [`parse_duration_or_seconds`] is used
//! (mtcp-perf's flags, iperf style: `-t 10` is ten seconds). [`HumanDuration`] prints in
//! humantime syntax (`1m 30s`).
//!
//! # Rates, probabilities, queue limits (mtcp-perf's emulator)
//!
//! Rates are in bits per second and always decimal, as in `tc`: `bit`, `kbit`/`k`, `mbit`/`m`,
//! `gbit`/`g`, or bytes per second `bps`, `kbps`, `mbps`, `gbps`. Probabilities are `0.01` or
//! `1%`. A queue limit is a duration (`100ms`) or a size (`256KiB`).

use std::fmt;
use std::time::Duration;

/// Why a quantity could not be parsed; the message names the text and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

/// One kibibyte (1024 bytes).
pub const KIB: u64 = 1 << 10;
/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;
/// One tebibyte.
pub const TIB: u64 = 1 << 40;

/// Fraction digits a size may have (keeps the exact arithmetic within u128).
const MAX_FRACTION_DIGITS: u32 = 18;

/// Splits `text` into its leading number (digits and dots) and the trimmed rest.
fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    (number, unit.trim())
}

/// A finite non-negative decimal number, or `None`.
fn decimal(number: &str) -> Option<f64> {
    if number.is_empty() || number.matches('.').count() > 1 {
        return None;
    }
    number
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

fn size_unit(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        "t" | "tib" => TIB,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    })
}

/// Parses a size in bytes; see the module docs for the units.
pub fn parse_bytes(text: &str) -> Result<u64, UnitError> {
    let trimmed = text.trim();
    let (number, unit) = split_number(trimmed);
    let not_a_size = || {
        UnitError(format!(
            "`{text}` is not a size: expected a number of bytes, optionally followed by a unit \
             (B, KiB, MiB, GiB, TiB, kB, MB, GB, TB), e.g. \"64KiB\""
        ))
    };
    let too_large = || UnitError(format!("`{text}` is too large to be a size"));
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') {
        return Err(not_a_size());
    }
    let multiplier = size_unit(unit).ok_or_else(|| {
        UnitError(format!(
            "`{text}` has an unknown size unit `{unit}`: use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB"
        ))
    })?;
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = u128::from(whole) * u128::from(multiplier);
    if !fraction.is_empty() {
        if fraction.len() as u32 > MAX_FRACTION_DIGITS {
            return Err(not_a_size());
        }
        let scale = 10u128.pow(fraction.len() as u32);
        let numerator =
            fraction.parse::<u128>().map_err(|_| not_a_size())? * u128::from(multiplier);
        if numerator % scale != 0 {
            return Err(UnitError(format!(
                "`{text}` is not a whole number of bytes"
            )));
        }
        bytes += numerator / scale;
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

fn duration_unit_seconds(unit: &str) -> Option<f64> {
    Some(match unit {
        "ns" | "nsec" => 1e-9,
        "us" | "µs" | "usec" => 1e-6,
        "ms" | "msec" => 1e-3,
        "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" | "hr" | "hrs" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        _ => return None,
    })
}

/// Longest duration accepted (about 31 years): beyond it a value is a typo, not a timeout.
const MAX_DURATION_SECONDS: f64 = 1e9;

fn bounded_duration(text: &str, seconds: f64) -> Result<Duration, UnitError> {
    if seconds > MAX_DURATION_SECONDS {
        return Err(UnitError(format!("`{text}` is too long a duration")));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a duration with a unit; see the module docs. A bare number is refused.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let trimmed = text.trim();
    let (number, unit) = split_number(trimmed);
    if let Some(value) = decimal(number) {
        if unit.is_empty() {
            return Err(UnitError(format!(
                "`{text}` is not a duration: a bare number needs a unit; write e.g. \"10s\" or \"250ms\""
            )));
        }
        if let Some(scale) = duration_unit_seconds(unit) {
            return bounded_duration(text, value * scale);
        }
    }
    // Several terms ("1h 30m") and humantime's longer unit names.
    let duration = humantime::parse_duration(trimmed).map_err(|error| {
        UnitError(format!(
            "`{text}` is not a duration ({error}); write e.g. \"10s\" or \"250ms\""
        ))
    })?;
    bounded_duration(text, duration.as_secs_f64())
}

/// Parses a duration, reading a bare number as seconds (command-line flags, iperf style).
pub fn parse_duration_or_seconds(text: &str) -> Result<Duration, UnitError> {
    let (number, unit) = split_number(text.trim());
    match decimal(number) {
        Some(seconds) if unit.is_empty() => bounded_duration(text, seconds),
        _ => parse_duration(text),
    }
}

/// Parses a rate in bits per second (always decimal, `tc` style); see the module docs.
pub fn parse_rate(text: &str) -> Result<u64, UnitError> {
    let (number, unit) = split_number(text.trim());
    let value = decimal(number)
        .ok_or_else(|| UnitError(format!("`{text}` is not a rate: expected a number")))?;
    let bits = match unit.to_ascii_lowercase().as_str() {
        "" | "bit" => value,
        "k" | "kbit" => value * 1e3,
        "m" | "mbit" => value * 1e6,
        "g" | "gbit" => value * 1e9,
        "bps" => value * 8.0,
        "kbps" => value * 8e3,
        "mbps" => value * 8e6,
        "gbps" => value * 8e9,
        other => {
            return Err(UnitError(format!(
                "`{text}` has an unknown rate unit `{other}` (use bit, kbit, mbit, gbit, bps, kbps, mbps, gbps)"
            )));
        }
    };
    if !(1.0..=1e13).contains(&bits) {
        return Err(UnitError(format!(
            "`{text}`: rate out of range (1 bit/s to 10 Tbit/s)"
        )));
    }
    Ok(bits as u64)
}

/// Parses a probability: `1%` or `0.01`.
pub fn parse_probability(text: &str) -> Result<f64, UnitError> {
    let trimmed = text.trim();
    let (digits, percent) = match trimmed.strip_suffix('%') {
        Some(digits) => (digits.trim(), true),
        None => (trimmed, false),
    };
    let value = decimal(digits)
        .ok_or_else(|| UnitError(format!("`{text}` is not a probability (write 0.01 or 1%)")))?;
    let probability = if percent { value / 100.0 } else { value };
    if !(0.0..=1.0).contains(&probability) {
        return Err(UnitError(format!(
            "`{text}`: a probability must be within 0..1 (0%..100%)"
        )));
    }
    Ok(probability)
}

/// A queue limit, either in time at the link rate or in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueueLimit {
    /// As much as the link sends in this time.
    Time(Duration),
    /// This many bytes.
    Bytes(u64),
}

/// Parses a queue limit: a duration (`100ms`) or a size (`256KiB`).
pub fn parse_queue(text: &str) -> Result<QueueLimit, UnitError> {
    let lower = text.trim().to_ascii_lowercase();
    // Every duration unit but the bare `m`/`h`/`d` ends in `s`; no size unit does.
    if lower.ends_with('s') {
        Ok(QueueLimit::Time(parse_duration(&lower)?))
    } else {
        Ok(QueueLimit::Bytes(parse_bytes(&lower)?))
    }
}

/// Formats a bit rate for people (`941.20 Mbit/s`, decimal prefixes as for every rate).
pub fn format_rate(bits_per_second: f64) -> String {
    let bps = bits_per_second;
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

/// Formats a byte count for people in binary units (`112.0 MiB`).
pub fn format_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes >= GIB {
        format!("{:.2} GiB", b / GIB as f64)
    } else if bytes >= MIB {
        format!("{:.1} MiB", b / MIB as f64)
    } else if bytes >= KIB {
        format!("{:.1} KiB", b / KIB as f64)
    } else {
        format!("{bytes} B")
    }
}

/// A number of bytes, written as an integer or a string such as `"16MiB"` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// One kibibyte (1024 bytes).
    pub const KIB: u64 = KIB;
    /// One mebibyte.
    pub const MIB: u64 = MIB;
    /// One gibibyte.
    pub const GIB: u64 = GIB;

    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `"64KiB"`, `"16 MiB"`, `"1GB"`, `"512"`; see the module docs for the units.
    pub fn parse(text: &str) -> Result<Self, UnitError> {
        parse_bytes(text).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    /// Prints the largest binary unit that divides the value exactly, e.g. `16MiB`, `1500B`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        for (unit, size) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
            if bytes >= size && bytes % size == 0 {
                return write!(formatter, "{}{unit}", bytes / size);
            }
        }
        write!(formatter, "{bytes}B")
    }
}

/// A duration written with a unit, such as `"10s"` or `"250ms"` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// A duration of whole seconds (for defaults).
    pub const fn from_secs(seconds: u64) -> Self {
        HumanDuration(Duration::from_secs(seconds))
    }

    /// A duration of whole milliseconds (for defaults).
    pub const fn from_millis(milliseconds: u64) -> Self {
        HumanDuration(Duration::from_millis(milliseconds))
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// Parses `"10s"`, `"250ms"`, `"1h 30m"`; a bare number is refused.
    pub fn parse(text: &str) -> Result<Self, UnitError> {
        parse_duration(text).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", humantime::format_duration(self.0))
    }
}

#[cfg(feature = "serde")]
mod serde_support {
    use super::{ByteSize, HumanDuration};
    use serde::de::{self, Deserialize, Deserializer, Visitor};
    use std::fmt;
    use std::time::Duration;

    impl<'de> Deserialize<'de> for ByteSize {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct ByteSizeVisitor;

            impl Visitor<'_> for ByteSizeVisitor {
                type Value = ByteSize;

                fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                    formatter
                        .write_str("a size: an integer number of bytes or a string like \"16MiB\"")
                }

                fn visit_u64<E: de::Error>(self, value: u64) -> Result<ByteSize, E> {
                    Ok(ByteSize(value))
                }

                fn visit_i64<E: de::Error>(self, value: i64) -> Result<ByteSize, E> {
                    u64::try_from(value)
                        .map(ByteSize)
                        .map_err(|_| E::custom(format!("size must not be negative, got {value}")))
                }

                fn visit_str<E: de::Error>(self, value: &str) -> Result<ByteSize, E> {
                    ByteSize::parse(value).map_err(E::custom)
                }
            }

            deserializer.deserialize_any(ByteSizeVisitor)
        }
    }

    impl<'de> Deserialize<'de> for HumanDuration {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct DurationVisitor;

            impl Visitor<'_> for DurationVisitor {
                type Value = HumanDuration;

                fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                    formatter.write_str("a duration string like \"10s\" or \"250ms\"")
                }

                fn visit_str<E: de::Error>(self, value: &str) -> Result<HumanDuration, E> {
                    HumanDuration::parse(value).map_err(E::custom)
                }
            }

            deserializer.deserialize_str(DurationVisitor)
        }
    }

    /// serde `serialize_with`: a duration as fractional seconds.
    pub fn serialize_seconds<S: serde::Serializer>(
        duration: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(duration.as_secs_f64())
    }

    /// serde `serialize_with`: an optional duration as fractional seconds.
    pub fn serialize_optional_seconds<S: serde::Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => serializer.serialize_some(&duration.as_secs_f64()),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(feature = "serde")]
pub use serde_support::{serialize_optional_seconds, serialize_seconds};

#[cfg(test)]
mod tests;
