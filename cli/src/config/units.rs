//! Human-friendly value types used in the configuration file: byte sizes and durations.
//!
//! Owns: parsing and printing of `ByteSize` ("16MiB", 65536) and `HumanDuration` ("10s",
//! "250ms"). Must not touch: which values are allowed for a given key (that is
//! `validate.rs`), or anything outside the config module.
//!
//! Sizes are either a TOML integer (a number of bytes) or a string: a non-negative integer,
//! optional spaces, then an optional unit. Binary units `KiB`, `MiB`, `GiB` (also `K`, `M`,
//! `G`) are powers of 1024; decimal units `kB`, `MB`, `GB` are powers of 1000; `B` or no unit
//! means bytes. Units are matched case-insensitively.
//!
//! Durations are strings in humantime syntax: "250ms", "10s", "2m", "1h 30m". A bare number
//! is refused, because its unit would be a guess.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A number of bytes, written in the config as an integer or a string such as `"16MiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// One kibibyte (1024 bytes).
    pub const KIB: u64 = 1024;
    /// One mebibyte.
    pub const MIB: u64 = 1024 * 1024;
    /// One gibibyte.
    pub const GIB: u64 = 1024 * 1024 * 1024;

    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `"64KiB"`, `"16 MiB"`, `"1GB"`, `"512"`; see the module docs for the units.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits_end);
        if number.is_empty() {
            return Err(format!(
                "`{text}` is not a size: expected a number of bytes, optionally followed by a unit (B, KiB, MiB, GiB, kB, MB, GB), e.g. \"64KiB\""
            ));
        }
        let value: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` is too large to be a size"))?;
        let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => Self::KIB,
            "m" | "mib" => Self::MIB,
            "g" | "gib" => Self::GIB,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            other => {
                return Err(format!(
                    "`{text}` has an unknown size unit `{other}`: use B, KiB, MiB, GiB, kB, MB or GB"
                ));
            }
        };
        value
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large to be a size"))
    }
}

impl fmt::Display for ByteSize {
    /// Prints the largest binary unit that divides the value exactly, e.g. `16MiB`, `1500B`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        for (unit, size) in [("GiB", Self::GIB), ("MiB", Self::MIB), ("KiB", Self::KIB)] {
            if bytes >= size && bytes % size == 0 {
                return write!(formatter, "{}{unit}", bytes / size);
            }
        }
        write!(formatter, "{bytes}B")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ByteSizeVisitor;

        impl Visitor<'_> for ByteSizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a size: an integer number of bytes or a string like \"16MiB\"")
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

/// A duration, written in the config as a humantime string such as `"10s"` or `"250ms"`.
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
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", humantime::format_duration(self.0))
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
                humantime::parse_duration(value)
                    .map(HumanDuration)
                    .map_err(|error| {
                        E::custom(format!(
                            "`{value}` is not a duration ({error}); write e.g. \"10s\" or \"250ms\""
                        ))
                    })
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(ByteSize::parse("65536"), Ok(ByteSize(65536)));
        assert_eq!(ByteSize::parse("64KiB"), Ok(ByteSize(64 * 1024)));
        assert_eq!(ByteSize::parse("16 MiB"), Ok(ByteSize(16 * 1024 * 1024)));
        assert_eq!(ByteSize::parse("1gib"), Ok(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("2MB"), Ok(ByteSize(2_000_000)));
        assert_eq!(ByteSize::parse("512B"), Ok(ByteSize(512)));
        assert_eq!(ByteSize::parse("4k"), Ok(ByteSize(4096)));
    }

    #[test]
    fn bad_sizes_are_refused_with_a_reason() {
        assert!(ByteSize::parse("MiB").unwrap_err().contains("not a size"));
        assert!(
            ByteSize::parse("3 parsecs")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert!(
            ByteSize::parse("99999999999999999999")
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            ByteSize::parse("17179869184GiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(16 * ByteSize::MIB).to_string(), "16MiB");
        assert_eq!(ByteSize(1500).to_string(), "1500B");
        assert_eq!(ByteSize(64 * 1024).to_string(), "64KiB");
        assert_eq!(ByteSize(0).to_string(), "0B");
    }

    #[test]
    fn durations_round_trip_through_text() {
        let parsed: HumanDuration = HumanDuration(humantime::parse_duration("250ms").unwrap());
        assert_eq!(parsed, HumanDuration::from_millis(250));
        assert_eq!(HumanDuration::from_secs(90).to_string(), "1m 30s");
    }
}
