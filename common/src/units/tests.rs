//! Tests of the units module: the cases the config file and mtcp-perf each tested before they
//! shared one parser, and that both now read the same strings the same way.

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
    assert_eq!(parse_bytes("1G"), Ok(1 << 30));
    assert_eq!(parse_bytes("64k"), Ok(65536));
    assert_eq!(parse_bytes("100"), Ok(100));
    assert_eq!(parse_bytes("1.5KiB"), Ok(1536));
    assert_eq!(parse_bytes("2T"), Ok(2 << 40));
}

#[test]
fn bad_sizes_are_refused_with_a_reason() {
    let message = |text: &str| ByteSize::parse(text).unwrap_err().to_string();
    assert!(message("MiB").contains("not a size"));
    assert!(message("-1").contains("not a size"));
    assert!(message("1.2.3k").contains("not a size"));
    assert!(message("3 parsecs").contains("unknown size unit"));
    assert!(message("99999999999999999999").contains("too large"));
    assert!(message("17179869184GiB").contains("too large"));
    assert!(message("1.1KiB").contains("whole number of bytes"));
}

#[test]
fn sizes_print_in_the_largest_exact_unit() {
    assert_eq!(ByteSize(16 * ByteSize::MIB).to_string(), "16MiB");
    assert_eq!(ByteSize(1500).to_string(), "1500B");
    assert_eq!(ByteSize(64 * 1024).to_string(), "64KiB");
    assert_eq!(ByteSize(0).to_string(), "0B");
    assert_eq!(format_bytes(3 * MIB / 2), "1.5 MiB");
    assert_eq!(format_bytes(512), "512 B");
}

#[test]
fn durations_parse_with_units() {
    assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("3h"), Ok(Duration::from_secs(3 * 3600)));
    assert_eq!(parse_duration_or_seconds("10"), Ok(Duration::from_secs(10)));
    assert_eq!(
        parse_duration_or_seconds("0.25"),
        Ok(Duration::from_millis(250))
    );
    assert_eq!(parse_duration_or_seconds("1s"), Ok(Duration::from_secs(1)));
}

#[test]
fn bad_durations_are_refused_with_a_reason() {
    let message = |text: &str| parse_duration(text).unwrap_err().to_string();
    assert!(message("10").contains("bare number needs a unit"));
    assert!(message("5parsecs").contains("not a duration"));
    assert!(message("ms").contains("not a duration"));
    assert!(message("-1s").contains("not a duration"));
    assert!(message("99999999999s").contains("too long"));
    assert!(parse_duration_or_seconds("-1").is_err());
}

#[test]
fn durations_round_trip_through_text() {
    assert_eq!(
        HumanDuration::parse("250ms"),
        Ok(HumanDuration::from_millis(250))
    );
    assert_eq!(HumanDuration::from_secs(90).to_string(), "1m 30s");
    for seconds in [1, 90, 3600, 5400, 90_000] {
        let printed = HumanDuration::from_secs(seconds).to_string();
        assert_eq!(
            HumanDuration::parse(&printed),
            Ok(HumanDuration::from_secs(seconds)),
            "{printed}"
        );
    }
}

#[test]
fn rates_are_decimal_bits_per_second() {
    assert_eq!(parse_rate("1gbit"), Ok(1_000_000_000));
    assert_eq!(parse_rate("20mbit"), Ok(20_000_000));
    assert_eq!(parse_rate("10mbps"), Ok(80_000_000));
    assert_eq!(parse_rate("1.5M"), Ok(1_500_000));
    assert!(parse_rate("fast").is_err());
    assert!(parse_rate("0").is_err());
    assert_eq!(format_rate(941.2e6), "941.20 Mbit/s");
}

#[test]
fn probabilities_and_queues() {
    assert!((parse_probability("1%").unwrap() - 0.01).abs() < 1e-12);
    assert!((parse_probability("0.25").unwrap() - 0.25).abs() < 1e-12);
    assert!(parse_probability("150%").is_err());
    assert!(parse_probability("1x").is_err());
    assert_eq!(
        parse_queue("100ms"),
        Ok(QueueLimit::Time(Duration::from_millis(100)))
    );
    assert_eq!(parse_queue("256k"), Ok(QueueLimit::Bytes(262_144)));
    assert_eq!(parse_queue("256KiB"), Ok(QueueLimit::Bytes(262_144)));
    // kB is decimal here too, as in the config file.
    assert_eq!(parse_queue("64kb"), Ok(QueueLimit::Bytes(64_000)));
}

/// The config file reads sizes and durations through serde (a TOML or JSON string), mtcp-perf
/// through the parse functions on its flags: every string means the same to both.
#[cfg(feature = "serde")]
#[test]
fn config_and_command_line_read_the_same_strings_the_same_way() {
    let from_config = |text: &str| serde_json::from_value::<ByteSize>(text.into()).map(|b| b.0);
    for text in [
        "65536", "64k", "64K", "64KiB", "64kB", "64KB", "16MB", "16MiB", "16M", "1G", "1GB",
        "1GiB", "2 MiB", "512B", "1.5KiB",
    ] {
        let cli = parse_bytes(text).unwrap();
        assert_eq!(from_config(text).unwrap(), cli, "{text}");
    }
    assert_eq!(from_config("1MB").unwrap(), 1_000_000);
    assert_eq!(from_config("1M").unwrap(), 1 << 20);
    for text in ["3 parsecs", "MiB", "1.1KiB"] {
        assert!(
            from_config(text).is_err() && parse_bytes(text).is_err(),
            "{text}"
        );
    }
    let from_config =
        |text: &str| serde_json::from_value::<HumanDuration>(text.into()).map(|d| d.0);
    for text in ["250ms", "10s", "1.5s", "2m", "1h 30m", "3h", "250us"] {
        assert_eq!(
            from_config(text).unwrap(),
            parse_duration_or_seconds(text).unwrap(),
            "{text}"
        );
    }
    // The one difference is deliberate: a flag may omit the unit (seconds), the file may not.
    assert!(from_config("10").is_err());
    assert_eq!(parse_duration_or_seconds("10"), Ok(Duration::from_secs(10)));
    assert_eq!(
        serde_json::from_str::<ByteSize>("4096").unwrap(),
        ByteSize(4096)
    );
    assert!(serde_json::from_str::<ByteSize>("-1").is_err());
}
