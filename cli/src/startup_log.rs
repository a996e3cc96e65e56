//! The start-up configuration as a few grep-able log lines: one INFO line per table of the
//! resolved configuration (`key=value` pairs), instead of one event of 35 lines.
//!
//! Owns: turning the resolved configuration's text (what `mtcpd check` prints) into those
//! lines. Must not touch: what the configuration says or how it is printed (`config::display`).

use std::fmt::Write as _;

/// The resolved configuration `text` (as `mtcpd check` prints it) as one line per table:
/// `(table, "key=value key=value ...")`. Comments of the form `# key: note` become
/// `key=(note)`; the built-in engine values (`# name = value` after the marker) form a table of
/// their own, `built-in`.
pub fn table_lines(text: &str) -> Vec<(String, String)> {
    let mut tables: Vec<(String, String)> = Vec::new();
    let mut current = String::from("top");
    let mut fields = String::new();
    let mut flush = |table: &str, fields: &mut String| {
        if !fields.is_empty() {
            tables.push((table.to_owned(), std::mem::take(fields)));
        }
    };
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("# resolved from") {
            continue;
        }
        if line.starts_with('[') {
            flush(&current, &mut fields);
            current = line.trim_matches(['[', ']']).to_owned();
            continue;
        }
        if line.starts_with("# Engine values") {
            flush(&current, &mut fields);
            current = String::from("built-in");
            continue;
        }
        let pair = match line.strip_prefix('#').map(str::trim) {
            Some(comment) => match (comment.split_once(" = "), comment.split_once(": ")) {
                (Some((k, v)), _) if is_key(k) => Some((k.to_owned(), v.replace(' ', ""))),
                (_, Some((k, note))) if is_key(k) => Some((k.to_owned(), format!("({note})"))),
                _ => None,
            },
            None => line
                .split_once(" = ")
                .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned())),
        };
        if let Some((k, v)) = pair {
            if !fields.is_empty() {
                fields.push(' ');
            }
            let _ = write!(fields, "{k}={v}");
        }
    }
    flush(&current, &mut fields);
    tables
}

fn is_key(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Logs the resolved configuration `text` at INFO, one line per table: the first (the
/// top-level keys) says "configuration loaded" with `intro` (role, origin); the engine's
/// built-in values, which no key sets, are at debug.
pub fn log_configuration(intro: &str, text: &str) {
    for (i, (table, fields)) in table_lines(text).into_iter().enumerate() {
        if i == 0 {
            tracing::info!("configuration loaded ({intro}): {fields}");
        } else if table == "built-in" {
            tracing::debug!("configuration [{table}]: {fields}");
        } else {
            tracing::info!("configuration [{table}]: {fields}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_table_is_one_line_of_key_value_pairs() {
        let text = "# resolved from x.toml\nmode = \"client\"\n# psk: none (not authenticated)\n\
                    cores = 1\n\n[client]\nserver = \"127.0.0.1:8000\"\n\n[[client.forward]]\n\
                    listen = \"127.0.0.1:7000\"\n# target: the server's default backend\n\n\
                    # Engine values no config key sets (built in):\n# max_frame_body = 256 KiB\n";
        let lines = table_lines(text);
        assert_eq!(
            lines,
            vec![
                (
                    "top".to_owned(),
                    "mode=client psk=(none (not authenticated)) cores=1".to_owned()
                ),
                ("client".to_owned(), "server=127.0.0.1:8000".to_owned()),
                (
                    "client.forward".to_owned(),
                    "listen=127.0.0.1:7000 target=(the server's default backend)".to_owned()
                ),
                ("built-in".to_owned(), "max_frame_body=256KiB".to_owned()),
            ]
        );
    }
}
