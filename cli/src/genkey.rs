//! `mtcpd genkey`: a fresh pre-shared key.
//!
//! Owns: drawing 32 bytes from the operating system's random source and writing them as text
//! both ends can use (`psk = "…"` or a `psk_file`). Must not touch: configuration rules (the key's
//! accepted length is the engine's `range::PSK_LEN`) or the runtime.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use rand::TryRngCore;
use rand::rngs::OsRng;

/// Random bytes in a generated key (its text is twice as long: hex).
pub const KEY_BYTES: usize = 32;

/// A new key as text: [`KEY_BYTES`] bytes from the OS random source, in lowercase hex (64
/// characters, 256 bits of entropy; the text itself is what both ends use as the key).
pub fn new_key_text() -> anyhow::Result<String> {
    let mut bytes = [0u8; KEY_BYTES];
    OsRng
        .try_fill_bytes(&mut bytes)
        .context("the operating system's random source failed")?;
    let mut text = String::with_capacity(2 * KEY_BYTES);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    Ok(text)
}

/// Writes `key` and a newline to a new file at `path`, readable by its owner only (0600). An
/// existing file is never overwritten: it may be the key both ends use now.
pub fn write_key_file(path: &Path, key: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| {
        format!(
            "cannot create key file {} (it must not exist yet)",
            path.display()
        )
    })?;
    writeln!(file, "{key}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write key file {}", path.display()))
}

/// What to do with a key: said on stderr, so that stdout carries only the key.
pub fn instructions(written_to: Option<&Path>) -> String {
    match written_to {
        Some(path) => format!(
            "mtcpd: wrote a new {}-bit key to {} (mode 0600). Copy this file to the other end \
             too (keep it private), and set psk_file = \"{}\" in the config of both the server \
             and the client.",
            KEY_BYTES * 8,
            path.display(),
            path.display()
        ),
        None => format!(
            "mtcpd: above is a new {}-bit key. Set psk = \"<that key>\" in the config of both \
             the server and the client (or save it in a file readable only by mtcpd and set \
             psk_file; `mtcpd genkey --out FILE` does that).",
            KEY_BYTES * 8
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_64_hex_characters_and_differ() {
        let a = new_key_text().unwrap();
        let b = new_key_text().unwrap();
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
        mtcpd_engine::config::check_psk(a.as_bytes()).unwrap();
    }
}
