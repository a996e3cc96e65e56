//! The one error type of configuration loading.
//!
//! Owns: `ConfigFileError`, `ConfigOrigin`, and turning TOML/serde errors into errors that name
//! the file, the dotted key (`client.server_port`, `client.forward[1].target`), the line when it
//! is known, and what is wrong. Named apart from the engine's `ConfigError` (one value out of
//! range, by engine field name), which `validate` turns into a `ConfigFileError` naming the key
//! as written in the file. Must not touch: deciding what is valid (the engine decides ranges,
//! `validate.rs` the file's own rules).

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Where a configuration came from: a file, or the built-in defaults (no `-c`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// Loaded from this file.
    File(PathBuf),
    /// No file was given: built-in defaults for the role.
    BuiltInDefaults,
}

impl fmt::Display for ConfigOrigin {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigOrigin::File(path) => write!(formatter, "{}", path.display()),
            ConfigOrigin::BuiltInDefaults => formatter.write_str("<built-in defaults>"),
        }
    }
}

/// A 1-based line and column in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextPosition {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl TextPosition {
    /// The line and column of byte `offset` in `text`.
    pub fn of_offset(text: &str, offset: usize) -> Self {
        let before = text.get(..offset.min(text.len())).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        let column = before[line_start..].chars().count() + 1;
        TextPosition { line, column }
    }
}

/// Formats `":LINE:COLUMN"` or nothing.
struct PositionSuffix(Option<TextPosition>);

impl fmt::Display for PositionSuffix {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(position) => write!(formatter, ":{}:{}", position.line, position.column),
            None => Ok(()),
        }
    }
}

/// Why a configuration file could not be loaded. A `ConfigFileError` never comes with a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The config file itself could not be read.
    #[error("cannot read config file {}: {io_error}", path.display())]
    Unreadable {
        /// The file named with `-c`.
        path: PathBuf,
        /// Why reading failed (already part of the message, so not chained as a source).
        io_error: io::Error,
    },
    /// The file is not valid TOML.
    #[error("{origin}{}: TOML syntax error: {message}", PositionSuffix(*position))]
    Syntax {
        /// The file.
        origin: ConfigOrigin,
        /// Where the parser stopped, if it knows.
        position: Option<TextPosition>,
        /// The parser's message.
        message: String,
    },
    /// A key has a wrong type, an unknown name, or a value that fails validation.
    #[error("{origin}{}: key `{key}`: {message}", PositionSuffix(*position))]
    Invalid {
        /// The file (or the built-in defaults).
        origin: ConfigOrigin,
        /// Dotted path of the offending key, e.g. `client.forward[1].target`.
        key: String,
        /// Where the key is in the file, when the parser reported it.
        position: Option<TextPosition>,
        /// What is wrong, and what would be right.
        message: String,
    },
}

impl ConfigFileError {
    /// The dotted key this error is about, if it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigFileError::Invalid { key, .. } => Some(key),
            ConfigFileError::Unreadable { .. } | ConfigFileError::Syntax { .. } => None,
        }
    }

    /// Converts a typed-deserialization error into an `Invalid` error naming the key.
    pub(crate) fn from_deserialize(
        origin: &ConfigOrigin,
        text: &str,
        error: serde_path_to_error::Error<toml::de::Error>,
    ) -> Self {
        let path = error.path().to_string();
        let toml_error = error.inner();
        // Ranged numbers are read as i64 (see raw.rs); say "integer" rather than the Rust type.
        let message = toml_error
            .message()
            .trim()
            .replace("expected i64", "expected an integer");
        let position = toml_error
            .span()
            .map(|span| TextPosition::of_offset(text, span.start));
        let key = key_from_path_and_message(&path, &message);
        ConfigFileError::Invalid {
            origin: origin.clone(),
            key,
            position,
            message,
        }
    }
}

/// serde reports a missing field (and, depending on the deserializer, an unknown one) at the
/// path of the table holding it; the field name is only in the message (``unknown field `x`,
/// expected ...``). Join the two unless the path already ends with the field.
fn key_from_path_and_message(path: &str, message: &str) -> String {
    let table_path = if path == "." { "" } else { path };
    let field = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field);
    match (table_path, field) {
        (path, Some(field)) if path == field || path.ends_with(&format!(".{field}")) => {
            path.to_owned()
        }
        ("", Some(field)) => field.to_owned(),
        (table, Some(field)) => format!("{table}.{field}"),
        ("", None) => "<top level>".to_owned(),
        (table, None) => table.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_appended_to_the_table_path() {
        assert_eq!(
            key_from_path_and_message("client", "unknown field `sever_ip`, expected one of `a`"),
            "client.sever_ip"
        );
        assert_eq!(
            key_from_path_and_message(".", "unknown field `moed`, expected `mode`"),
            "moed"
        );
        assert_eq!(
            key_from_path_and_message("client.forward[1]", "missing field `listen`"),
            "client.forward[1].listen"
        );
        assert_eq!(
            key_from_path_and_message("limits.max_tunels", "unknown field `max_tunels`"),
            "limits.max_tunels"
        );
        assert_eq!(
            key_from_path_and_message("server.listen_port", "invalid type"),
            "server.listen_port"
        );
    }

    #[test]
    fn positions_are_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(
            TextPosition::of_offset(text, 0),
            TextPosition { line: 1, column: 1 }
        );
        assert_eq!(
            TextPosition::of_offset(text, 7),
            TextPosition { line: 2, column: 2 }
        );
    }
}
