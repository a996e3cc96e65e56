//! The defaults and ranges the documents state are the code's: docs/PROTOCOL.md §10's two tables
//! and config/mtcpd.example.toml's values and `Range:` comments are compared with the engine's
//! `Config` and `RuntimeOptions` settings, so neither document can drift from the code.

use std::collections::HashMap;
use std::path::Path;

use mtcpd::config::{ByteSize, FILE_KEYS, HumanDuration, Role, RuntimeOptions, file_key};
use mtcpd_engine::config::range::PSK_LEN;
use mtcpd_engine::settings::{Setting, SettingValue};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every engine setting at its default: the protocol's, then the runtime's.
fn default_settings() -> Vec<Setting> {
    let defaults = RuntimeOptions::default();
    let mut settings = defaults.engine.settings();
    settings.extend(defaults.settings());
    settings
}

/// The rows of §10's tables: field → (default cell, range cell).
fn protocol_md_rows() -> HashMap<String, (String, String)> {
    let text = read("docs/PROTOCOL.md");
    let section = text
        .split("\n## 10. ")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/PROTOCOL.md has a section 10");
    let mut rows = HashMap::new();
    for line in section.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "", field, default, range, last, "".
        assert!(cells.len() >= 5, "short row in §10: {line}");
        let field = cells[1].trim_matches('`').to_owned();
        let previous = rows.insert(field.clone(), (cells[2].to_owned(), cells[3].to_owned()));
        assert!(previous.is_none(), "§10 lists {field} twice");
    }
    rows
}

#[test]
fn protocol_md_states_the_code_defaults_and_ranges() {
    let mut rows = protocol_md_rows();
    for setting in default_settings() {
        let (default, range) = rows
            .remove(setting.key)
            .unwrap_or_else(|| panic!("docs/PROTOCOL.md §10 has no row for `{}`", setting.key));
        assert_eq!(
            default,
            setting.value.to_string(),
            "docs/PROTOCOL.md §10: default of `{}`",
            setting.key
        );
        if let Some(bounds) = &setting.bounds {
            let bounds_text = bounds.to_string();
            // The bounds, alone or followed by a cross-field rule (", ≥ stream_window").
            let rest = range.strip_prefix(&bounds_text);
            assert!(
                rest.is_some_and(|rest| rest.is_empty() || rest.starts_with([',', ' '])),
                "docs/PROTOCOL.md §10: range of `{}` is {range:?}, the code's is {bounds}",
                setting.key
            );
        }
    }
    assert!(
        rows.is_empty(),
        "docs/PROTOCOL.md §10 lists fields the code does not have: {:?}",
        rows.keys()
    );
}

/// A `key = value` line, commented out or not: (key, value text).
fn assignment(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_start_matches('#').trim();
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    let is_key = !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    is_key.then(|| (key, value.trim()))
}

/// For every key the example writes (as `[table.]key`): whether it is commented out, its value
/// text, and the `Range: A to B` its comment block states, if any.
struct ExampleKey {
    commented: bool,
    value: String,
    range: Option<(String, String)>,
}

fn example_keys() -> HashMap<String, ExampleKey> {
    let text = read("config/mtcpd.example.toml");
    let mut keys = HashMap::new();
    let mut table = String::new();
    let mut block: Vec<&str> = Vec::new();
    let mut after_assignment = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            table = trimmed.trim_matches(['[', ']']).to_owned();
            block.clear();
            continue;
        }
        if trimmed.is_empty() || trimmed == "#" {
            block.clear();
            after_assignment = false;
            continue;
        }
        match assignment(trimmed) {
            Some((key, value)) => {
                let range = block.iter().find_map(|comment| {
                    let rest = comment.split("Range: ").nth(1)?;
                    let (low, high) = rest.split_once(" to ")?;
                    let high = high.split_whitespace().next()?;
                    Some((
                        low.to_owned(),
                        high.trim_end_matches(['.', ',', ';']).to_owned(),
                    ))
                });
                let dotted = if table.is_empty() {
                    key.to_owned()
                } else {
                    format!("{table}.{key}")
                };
                keys.entry(dotted).or_insert(ExampleKey {
                    commented: trimmed.starts_with('#'),
                    value: value.split(" #").next().unwrap_or(value).trim().to_owned(),
                    range,
                });
                after_assignment = true;
            }
            None => {
                if after_assignment {
                    block.clear();
                    after_assignment = false;
                }
                block.push(trimmed);
            }
        }
    }
    keys
}

/// `text` (as written in the example) read in the unit of `like`.
fn parse_like(like: &SettingValue, text: &str) -> SettingValue {
    let text = text.trim_matches('"');
    match like {
        SettingValue::Count(_) => SettingValue::Count(text.parse().expect(text)),
        SettingValue::Bytes(_) => SettingValue::Bytes(ByteSize::parse(text).expect(text).bytes()),
        SettingValue::Duration(_) => {
            SettingValue::Duration(HumanDuration::parse(text).expect(text).get())
        }
        SettingValue::Flag(_) => SettingValue::Flag(text.parse().expect(text)),
        _ => SettingValue::Name(text.to_owned()),
    }
}

#[test]
fn example_file_states_the_code_defaults_and_ranges() {
    let keys = example_keys();
    for role in [Role::Server, Role::Client] {
        let defaults = RuntimeOptions::for_role(role);
        let mut settings = defaults.engine.settings();
        settings.extend(defaults.settings());
        for setting in &settings {
            let Some(file_key) = file_key(setting.key, role) else {
                continue;
            };
            let written = keys
                .get(&file_key)
                .unwrap_or_else(|| panic!("the example does not show `{file_key}`"));
            if !written.commented {
                assert_eq!(
                    parse_like(&setting.value, &written.value),
                    setting.value,
                    "the example's `{file_key}` is not the engine's default"
                );
            }
            if let Some(bounds) = &setting.bounds {
                let (low, high) = written
                    .range
                    .as_ref()
                    .unwrap_or_else(|| panic!("the example states no `Range:` for `{file_key}`"));
                assert_eq!(
                    (parse_like(&bounds.min, low), parse_like(&bounds.max, high)),
                    (bounds.min.clone(), bounds.max.clone()),
                    "the example's range of `{file_key}`"
                );
            }
        }
    }
    // Bounded settings that are unset by default (socket buffers) still state their range.
    let buffer = keys.get("socket_send_buffer").expect("socket_send_buffer");
    assert!(buffer.commented && buffer.range.is_some());
    let (low, high) = keys["psk"].range.clone().expect("the psk's range");
    assert_eq!(
        (low.parse::<usize>().ok(), high.parse::<usize>().ok()),
        (Some(*PSK_LEN.start()), Some(*PSK_LEN.end())),
        "the example's psk length"
    );
}

#[test]
fn every_file_key_is_in_the_example() {
    let keys = example_keys();
    for (_, file_key) in FILE_KEYS {
        let Some(file_key) = file_key else { continue };
        for role in [Role::Server, Role::Client] {
            let key = file_key.replace("{role}", role.as_str());
            assert!(keys.contains_key(&key), "the example lacks `{key}`");
        }
    }
}
