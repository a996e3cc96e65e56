//! A typed, printable view of configuration values and their valid ranges.
//!
//! Owns: [`Setting`] (one named value with its static bounds), [`SettingValue`] (the value in its
//! unit, printed the way docs/PROTOCOL.md §10 prints it) and the one range check every setting
//! goes through. Must not touch: which settings exist, their defaults or their ranges (those are
//! [`crate::config`] and [`crate::runtime::RuntimeOptions`], next to the fields they describe) or
//! file formats (the daemon maps its own keys onto these names).

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::config::ConfigError;

/// One setting's value, typed by its unit so it prints as people write it.
#[derive(Debug, Clone, PartialEq)]
pub enum SettingValue {
    /// A plain number (counts, sizes of pools).
    Count(u64),
    /// A number of bytes, printed in the largest binary unit that divides it ("64 MiB").
    Bytes(u64),
    /// A time span, printed in the largest unit that divides it ("100 ms", "10 s", "5 min").
    Duration(Duration),
    /// A rate in bytes per second.
    BytesPerSecond(f64),
    /// On or off.
    Flag(bool),
    /// A named choice ("earliest-delivery", "bbr", "auto").
    Name(String),
    /// A secret: only its length is ever shown ("empty" when it has none).
    Secret {
        /// Length in bytes.
        len: usize,
    },
    /// Not set, so something else decides (the text says what, e.g. "kernel default").
    Unset(&'static str),
}

impl SettingValue {
    /// Orders two values of the same unit; `None` for different units or unordered kinds.
    fn compare(&self, other: &Self) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Self::Count(a), Self::Count(b)) | (Self::Bytes(a), Self::Bytes(b)) => Some(a.cmp(b)),
            (Self::Duration(a), Self::Duration(b)) => Some(a.cmp(b)),
            (Self::BytesPerSecond(a), Self::BytesPerSecond(b)) => a.partial_cmp(b),
            _ => None,
        }
    }
}

/// `n` in the largest of `units` (factor, suffix) that divides it exactly.
fn in_largest_unit(n: u128, units: &[(u128, &str)], out: &mut fmt::Formatter<'_>) -> fmt::Result {
    for (factor, suffix) in units {
        if n >= *factor && n % factor == 0 {
            return write!(out, "{} {suffix}", n / factor);
        }
    }
    let (_, smallest) = units.last().copied().unwrap_or((1, ""));
    write!(out, "{n} {smallest}")
}

const BYTE_UNITS: &[(u128, &str)] = &[
    (1 << 30, "GiB"),
    (1 << 20, "MiB"),
    (1 << 10, "KiB"),
    (1, "B"),
];

const NANOS_PER_MILLI: u128 = 1_000_000;
const DURATION_UNITS: &[(u128, &str)] = &[
    (86_400_000 * NANOS_PER_MILLI, "d"),
    (3_600_000 * NANOS_PER_MILLI, "h"),
    (60_000 * NANOS_PER_MILLI, "min"),
    (1_000 * NANOS_PER_MILLI, "s"),
    (NANOS_PER_MILLI, "ms"),
    (1_000, "µs"),
    (1, "ns"),
];

impl fmt::Display for SettingValue {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => write!(out, "{n}"),
            Self::Bytes(n) => in_largest_unit(u128::from(*n), BYTE_UNITS, out),
            Self::Duration(d) if d.is_zero() => out.write_str("0 s"),
            Self::Duration(d) => in_largest_unit(d.as_nanos(), DURATION_UNITS, out),
            Self::BytesPerSecond(rate) => write!(out, "{rate} B/s"),
            Self::Flag(on) => write!(out, "{on}"),
            Self::Name(name) => out.write_str(name),
            Self::Secret { len: 0 } => out.write_str("empty"),
            Self::Secret { len } => write!(out, "<{len} bytes, redacted>"),
            Self::Unset(what_decides) => out.write_str(what_decides),
        }
    }
}

/// The static bounds of a setting, both inclusive. Rules that relate two settings (a window
/// at least another, a timer shorter than another) are checked by `validate`, not here.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    /// Smallest accepted value.
    pub min: SettingValue,
    /// Largest accepted value.
    pub max: SettingValue,
}

impl fmt::Display for Bounds {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(out, "{}..={}", self.min, self.max)
    }
}

/// One named configuration value, with the bounds it must respect.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The field's name in [`crate::Config`] or [`crate::runtime::RuntimeOptions`].
    pub key: &'static str,
    /// Its value.
    pub value: SettingValue,
    /// Its static bounds, when it has any.
    pub bounds: Option<Bounds>,
}

impl Setting {
    /// A count within `range`.
    pub fn count<T: Copy + Into<u64>>(
        key: &'static str,
        value: T,
        range: RangeInclusive<T>,
    ) -> Self {
        Self::ranged(key, value, range, |n| SettingValue::Count(n.into()))
    }

    /// A byte size within `range`.
    pub fn bytes<T: Copy + TryInto<u64>>(
        key: &'static str,
        value: T,
        range: RangeInclusive<T>,
    ) -> Self {
        Self::ranged(key, value, range, |n| {
            SettingValue::Bytes(n.try_into().unwrap_or(u64::MAX))
        })
    }

    /// A duration within `range`.
    pub fn duration(key: &'static str, value: Duration, range: RangeInclusive<Duration>) -> Self {
        Self::ranged(key, value, range, SettingValue::Duration)
    }

    /// A value with no static bounds.
    pub fn unbounded(key: &'static str, value: SettingValue) -> Self {
        Self {
            key,
            value,
            bounds: None,
        }
    }

    fn ranged<T: Copy>(
        key: &'static str,
        value: T,
        range: RangeInclusive<T>,
        typed: impl Fn(T) -> SettingValue,
    ) -> Self {
        Self {
            key,
            value: typed(value),
            bounds: Some(Bounds {
                min: typed(*range.start()),
                max: typed(*range.end()),
            }),
        }
    }

    /// Checks the value against its bounds.
    pub fn check(&self) -> Result<(), ConfigError> {
        let Some(bounds) = &self.bounds else {
            return Ok(());
        };
        let below = self.value.compare(&bounds.min) == Some(std::cmp::Ordering::Less);
        let above = self.value.compare(&bounds.max) == Some(std::cmp::Ordering::Greater);
        if below || above {
            return Err(ConfigError {
                key: self.key,
                problem: format!(
                    "must be between {} and {}, got {}",
                    bounds.min, bounds.max, self.value
                ),
            });
        }
        Ok(())
    }
}

/// Checks `value` against `range` for a setting named `key`, before it is narrowed to its
/// field's type (a file's `70000` for a `u16` field is out of range, not a wrapped number).
pub fn check_in<T: Copy>(
    key: &'static str,
    value: i128,
    range: &RangeInclusive<T>,
    typed: impl Fn(i128) -> SettingValue,
) -> Result<(), ConfigError>
where
    i128: TryFrom<T>,
{
    // Every integer type this is used with fits in an i128.
    let wide = |bound: T| i128::try_from(bound).unwrap_or(i128::MAX);
    let (min, max) = (wide(*range.start()), wide(*range.end()));
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        // A negative number has no unit to print it in.
        let got = if value < 0 {
            value.to_string()
        } else {
            typed(value).to_string()
        };
        Err(ConfigError {
            key,
            problem: format!(
                "must be between {} and {}, got {got}",
                typed(min),
                typed(max)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_in_their_largest_exact_unit() {
        let shown = |v: SettingValue| v.to_string();
        assert_eq!(shown(SettingValue::Bytes(64 << 20)), "64 MiB");
        assert_eq!(shown(SettingValue::Bytes(1536)), "1536 B");
        assert_eq!(
            shown(SettingValue::Duration(Duration::from_millis(100))),
            "100 ms"
        );
        assert_eq!(
            shown(SettingValue::Duration(Duration::from_secs(90))),
            "90 s"
        );
        assert_eq!(
            shown(SettingValue::Duration(Duration::from_secs(300))),
            "5 min"
        );
        assert_eq!(
            shown(SettingValue::Duration(Duration::from_secs(86_400))),
            "1 d"
        );
        assert_eq!(shown(SettingValue::Duration(Duration::ZERO)), "0 s");
        assert_eq!(shown(SettingValue::Secret { len: 0 }), "empty");
        assert_eq!(shown(SettingValue::BytesPerSecond(125e6)), "125000000 B/s");
    }

    #[test]
    fn a_value_outside_its_bounds_is_refused_with_the_range() {
        let ok = Setting::count("pool_size", 8u16, 1..=256);
        ok.check().unwrap();
        let error = Setting::bytes("window", 1u64 << 40, 4096..=1 << 32)
            .check()
            .unwrap_err();
        assert_eq!(error.key, "window");
        assert_eq!(
            error.problem,
            "must be between 4 KiB and 4 GiB, got 1024 GiB"
        );
        let error = check_in("pool_size", 70_000, &(1u16..=256), |n| {
            SettingValue::Count(n as u64)
        })
        .unwrap_err();
        assert_eq!(error.problem, "must be between 1 and 256, got 70000");
    }
}
