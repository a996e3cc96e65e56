//! Finding where a dotted key is written in a config file, so an error can name its line.
//!
//! Owns: the mapping from a dotted key (`limits.stream_window`, `client.forward[1].target`,
//! `server`) to the line and column where the file writes it. Must not touch: parsing values
//! or deciding validity. This reads only the shapes our files use (tables, arrays of tables,
//! `key = value` lines, dotted keys); a key it cannot find simply has no position.

use super::error::TextPosition;

/// Where `dotted_key` is written in `text`: its `key = ` line, or the header of the table it
/// names. `None` when the file does not write it (e.g. a default that failed a cross-key rule).
pub fn locate(text: &str, dotted_key: &str) -> Option<TextPosition> {
    let mut table = String::new();
    let mut array_counts: Vec<(String, usize)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let column = line.len() - trimmed.len() + 1;
        let position = TextPosition {
            line: index + 1,
            column,
        };
        if let Some(header) = trimmed.strip_prefix("[[") {
            let name = header.split("]]").next().unwrap_or("").trim().to_owned();
            let count = match array_counts.iter_mut().find(|(seen, _)| *seen == name) {
                Some((_, count)) => {
                    *count += 1;
                    *count - 1
                }
                None => {
                    array_counts.push((name.clone(), 1));
                    0
                }
            };
            if dotted_key == name && count == 0 {
                return Some(position);
            }
            table = format!("{name}[{count}]");
        } else if let Some(header) = trimmed.strip_prefix('[') {
            table = header.split(']').next().unwrap_or("").trim().to_owned();
        } else if let Some((key, _)) = trimmed.split_once('=')
            && !trimmed.starts_with('#')
        {
            let key: String = key.split('.').map(str::trim).collect::<Vec<_>>().join(".");
            let full = if table.is_empty() {
                key
            } else {
                format!("{table}.{key}")
            };
            if full == dotted_key {
                return Some(position);
            }
            continue;
        } else {
            continue;
        }
        if table == dotted_key {
            return Some(position);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "mode = \"client\"\n\
                        [client]\n\
                        server_port = 8000\n\
                        [[client.forward]]\n\
                        listen = \"127.0.0.1:1\"\n\
                        [[client.forward]]\n\
                        \x20 target = \"a:1\"\n\
                        [limits]\n\
                        # stream_window = 1\n\
                        stream_window = \"1GiB\"\n";

    fn line_of(key: &str) -> Option<(usize, usize)> {
        locate(TEXT, key).map(|position| (position.line, position.column))
    }

    #[test]
    fn keys_tables_and_array_entries_are_found() {
        assert_eq!(line_of("mode"), Some((1, 1)));
        assert_eq!(line_of("client"), Some((2, 1)));
        assert_eq!(line_of("client.server_port"), Some((3, 1)));
        assert_eq!(line_of("client.forward"), Some((4, 1)));
        assert_eq!(line_of("client.forward[1].target"), Some((7, 3)));
        assert_eq!(line_of("limits.stream_window"), Some((10, 1)));
        assert_eq!(line_of("limits.session_window"), None);
    }
}
