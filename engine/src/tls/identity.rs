//! The server's TLS identity: a certificate chain and its private key.
//!
//! Owns: reading them from PEM files, generating a self-signed key pair on first start and
//! keeping it in a state directory (reused after, the key readable by its owner only), choosing
//! that directory, and the certificate fingerprint clients pin. Must not touch: TLS connections
//! (see [`super::options`], which builds the server configuration from an identity).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::TlsError;

/// File name of the generated certificate in the state directory.
pub const CERT_FILE_NAME: &str = "cert.pem";
/// File name of the generated private key in the state directory.
pub const KEY_FILE_NAME: &str = "key.pem";
/// The name the generated certificate is issued to (clients that pin do not check names).
const GENERATED_NAME: &str = "mtcpd";

/// A certificate chain (leaf first) and its private key.
#[derive(Debug)]
pub struct ServerIdentity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Where it came from.
    pub source: IdentitySource,
}

/// Where a server identity came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// The configured certificate and key files.
    Files,
    /// Generated once and kept in this state directory (newly generated when `created`).
    StateDir {
        /// The directory holding `cert.pem` and `key.pem`.
        dir: PathBuf,
        /// True when this start generated it.
        created: bool,
    },
    /// Generated for this process only: no state directory could be written, so its
    /// fingerprint changes at every start and cannot be pinned.
    Ephemeral,
}

impl ServerIdentity {
    /// Reads a PEM certificate chain and a PEM private key.
    pub fn from_files(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let file_error = |path: &Path, problem: String| TlsError::File {
            path: path.to_owned(),
            problem,
        };
        let chain = CertificateDer::pem_file_iter(cert_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| file_error(cert_file, format!("cannot read a PEM certificate: {e}")))?;
        if chain.is_empty() {
            return Err(file_error(cert_file, "holds no PEM certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| file_error(key_file, format!("cannot read a PEM private key: {e}")))?;
        Ok(Self {
            chain,
            key,
            source: IdentitySource::Files,
        })
    }

    /// A new self-signed ECDSA P-256 key pair, kept nowhere.
    pub fn generate() -> Result<Self, TlsError> {
        let (cert_pem, key_pem) = generate_pem()?;
        let mut identity = Self::from_pem(&cert_pem, &key_pem, Path::new("<generated>"))?;
        identity.source = IdentitySource::Ephemeral;
        Ok(identity)
    }

    /// The key pair kept in `dir`, generated there when it has none yet. Several processes
    /// starting at once agree on one pair: each file appears complete or not at all.
    pub fn in_state_dir(dir: &Path) -> Result<Self, TlsError> {
        let dir_error = |problem: String| TlsError::File {
            path: dir.to_owned(),
            problem,
        };
        fs::create_dir_all(dir)
            .map_err(|e| dir_error(format!("cannot create the state directory: {e}")))?;
        let (cert_path, key_path) = (dir.join(CERT_FILE_NAME), dir.join(KEY_FILE_NAME));
        let mut created = false;
        if !key_path.exists() {
            let (cert_pem, key_pem) = generate_pem()?;
            created = publish(&key_path, key_pem.as_bytes(), 0o600)
                .map_err(|e| dir_error(format!("cannot write {KEY_FILE_NAME}: {e}")))?;
            if created {
                publish(&cert_path, cert_pem.as_bytes(), 0o644)
                    .map_err(|e| dir_error(format!("cannot write {CERT_FILE_NAME}: {e}")))?;
            }
        }
        // Another process may have published the key and be about to publish the certificate.
        for _ in 0..50 {
            if cert_path.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut identity = Self::from_files(&cert_path, &key_path)?;
        identity.source = IdentitySource::StateDir {
            dir: dir.to_owned(),
            created,
        };
        Ok(identity)
    }

    fn from_pem(cert_pem: &str, key_pem: &str, origin: &Path) -> Result<Self, TlsError> {
        let bad = |problem: String| TlsError::File {
            path: origin.to_owned(),
            problem,
        };
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(format!("generated certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| bad(format!("generated key: {e}")))?;
        Ok(Self {
            chain: vec![cert],
            key,
            source: IdentitySource::Ephemeral,
        })
    }

    /// The leaf certificate's fingerprint, as clients pin it: `sha256:<64 hex digits>`.
    pub fn fingerprint(&self) -> String {
        self.chain
            .first()
            .map(|leaf| fingerprint_of(leaf))
            .unwrap_or_default()
    }
}

/// The fingerprint of a DER certificate: `sha256:` and the SHA-256 of its bytes in lowercase hex.
pub fn fingerprint_of(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A self-signed certificate and key in PEM.
fn generate_pem() -> Result<(String, String), TlsError> {
    let generated =
        rcgen::generate_simple_self_signed(vec![GENERATED_NAME.to_owned()]).map_err(|e| {
            TlsError::File {
                path: PathBuf::from("<generated>"),
                problem: format!("cannot generate a key pair: {e}"),
            }
        })?;
    Ok((generated.cert.pem(), generated.key_pair.serialize_pem()))
}

/// Writes `bytes` to a private temporary file and links it to `path` unless `path` exists:
/// readers never see a half-written file. False when another process published first.
fn publish(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<bool> {
    let tmp = path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// The state directory used when none is configured: `$STATE_DIRECTORY` (systemd), else
/// `/var/lib/mtcpd` when it can be written, else `$XDG_STATE_HOME/mtcpd` or
/// `~/.local/state/mtcpd`. `None` when none of them can be written.
pub fn default_state_dir() -> Option<PathBuf> {
    let systemd = std::env::var_os("STATE_DIRECTORY")
        .and_then(|dirs| std::env::split_paths(&dirs).next())
        .filter(|dir| !dir.as_os_str().is_empty());
    let user = std::env::var_os("XDG_STATE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/state")))
        .map(|dir| dir.join("mtcpd"));
    systemd
        .into_iter()
        .chain(Some(PathBuf::from("/var/lib/mtcpd")))
        .chain(user)
        .find(|dir| writable_dir(dir))
}

/// True when `dir` exists (or can be created) and a file can be created in it.
fn writable_dir(dir: &Path) -> bool {
    if fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let ok = fs::File::create(&probe).is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mtcpd-identity-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_state_dir_identity_is_created_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("state");
        let first = ServerIdentity::in_state_dir(&dir).unwrap();
        assert!(matches!(
            first.source,
            IdentitySource::StateDir { created: true, .. }
        ));
        let mode = fs::metadata(dir.join(KEY_FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key is readable by its owner only");
        let again = ServerIdentity::in_state_dir(&dir).unwrap();
        assert!(matches!(
            again.source,
            IdentitySource::StateDir { created: false, .. }
        ));
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert!(first.fingerprint().starts_with("sha256:"));
        assert_eq!(first.fingerprint().len(), "sha256:".len() + 64);
        let other = ServerIdentity::generate().unwrap();
        assert_ne!(other.fingerprint(), first.fingerprint());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreadable_files_name_the_file() {
        let dir = temp_dir("files");
        fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        fs::write(&cert, "not a certificate").unwrap();
        let err = ServerIdentity::from_files(&cert, &dir.join("missing.pem")).unwrap_err();
        assert!(err.to_string().contains("cert.pem"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
