//! TLS settings, their defaults and validation, and the per-runtime setup that makes each
//! connection's record layer.
//!
//! Owns: [`TlsOptions`] (one source of truth for the TLS defaults: TLS on, identity generated
//! into the default state directory, any certificate accepted behind the PSK proof), their
//! [`crate::settings::Setting`]s, and [`TlsSetup`] (rustls configurations built once per
//! runtime: TLS 1.3 only, ALPN `mtcpd`, no session tickets, AES-GCM first). Must not touch:
//! sockets, or what travels inside TLS.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::{cipher_suite, default_provider};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::identity::{IdentitySource, ServerIdentity, default_state_dir};
use super::verify::PinnedOrAny;
use super::{ALPN, TlsError, TunnelTls};
use crate::config::ConfigError;
use crate::settings::{Setting, SettingValue};

/// The server name a client asks for when it verifies no name (pinned or any certificate); not
/// sent (no SNI).
const UNNAMED_SERVER: &str = "mtcpd";

/// How tunnels are protected. The default is TLS 1.3 with a server identity generated on first
/// start, which clients accept behind the PSK proof (or pin).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// No TLS: tunnels carry the mtcpd handshake and frames in the clear. Both ends must agree.
    /// For benchmarks only; a warning is logged at every start.
    pub insecure_plaintext: bool,
    /// Server: the certificate chain (PEM), with `key_file`. Unset: the generated identity.
    pub cert_file: Option<PathBuf>,
    /// Server: the private key (PEM) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Server: where the generated identity is kept. Unset: `$STATE_DIRECTORY`,
    /// `/var/lib/mtcpd`, `$XDG_STATE_HOME/mtcpd` or `~/.local/state/mtcpd`, the first writable.
    pub state_dir: Option<PathBuf>,
    /// Client: CA certificates (PEM) the server's certificate must chain to, with
    /// `server_name`.
    pub ca_file: Option<PathBuf>,
    /// Client: the name the server's certificate must carry (with `ca_file`).
    pub server_name: Option<String>,
    /// Client: the server certificate's fingerprint (`sha256:<hex>`), as the server logs it.
    pub server_fingerprint: Option<String>,
}

fn bad(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        problem: problem.into(),
    }
}

impl TlsOptions {
    /// The TLS settings with their values (none has a numeric range).
    pub fn settings(&self) -> Vec<Setting> {
        // Destructured so that a new field cannot be forgotten here.
        let TlsOptions {
            insecure_plaintext,
            cert_file,
            key_file,
            state_dir,
            ca_file,
            server_name,
            server_fingerprint,
        } = self;
        let path = |p: &Option<PathBuf>, unset| match p {
            Some(p) => SettingValue::Name(p.display().to_string()),
            None => SettingValue::Unset(unset),
        };
        let text = |t: &Option<String>, unset| match t {
            Some(t) => SettingValue::Name(t.clone()),
            None => SettingValue::Unset(unset),
        };
        vec![
            Setting::unbounded(
                "insecure_plaintext",
                SettingValue::Flag(*insecure_plaintext),
            ),
            Setting::unbounded("tls.cert_file", path(cert_file, "generated")),
            Setting::unbounded("tls.key_file", path(key_file, "generated")),
            Setting::unbounded("tls.state_dir", path(state_dir, "first writable default")),
            Setting::unbounded("tls.ca_file", path(ca_file, "none")),
            Setting::unbounded("tls.server_name", text(server_name, "none")),
            Setting::unbounded(
                "tls.server_fingerprint",
                text(server_fingerprint, "any certificate"),
            ),
        ]
    }

    /// Checks that the settings fit together; the runtime never starts on options that fail.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            let key = if self.cert_file.is_some() {
                "tls.key_file"
            } else {
                "tls.cert_file"
            };
            return Err(bad(
                key,
                "cert_file and key_file go together: set both or neither",
            ));
        }
        if self.ca_file.is_some() != self.server_name.is_some() {
            let key = if self.ca_file.is_some() {
                "tls.server_name"
            } else {
                "tls.ca_file"
            };
            return Err(bad(
                key,
                "ca_file and server_name go together: the certificate is verified by the CA \
                 for that name",
            ));
        }
        if self.ca_file.is_some() && self.server_fingerprint.is_some() {
            return Err(bad(
                "tls.server_fingerprint",
                "choose one way to verify the server: ca_file + server_name, or \
                 server_fingerprint",
            ));
        }
        if let Some(name) = &self.server_name
            && ServerName::try_from(name.as_str()).is_err()
        {
            return Err(bad(
                "tls.server_name",
                format!("\"{name}\" is not a DNS name or IP address"),
            ));
        }
        if let Some(pin) = &self.server_fingerprint {
            let hex = pin.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(
                    "tls.server_fingerprint",
                    format!(
                        "\"{pin}\" is not a fingerprint: expected \"sha256:\" and 64 hex digits, \
                         as the server logs it at start (or `mtcpd fingerprint` prints it)"
                    ),
                ));
            }
        }
        if self.insecure_plaintext {
            let set = [
                ("tls.cert_file", self.cert_file.is_some()),
                ("tls.state_dir", self.state_dir.is_some()),
                ("tls.ca_file", self.ca_file.is_some()),
                ("tls.server_fingerprint", self.server_fingerprint.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, is_set)| *is_set) {
                return Err(bad(
                    key,
                    "insecure_plaintext turns TLS off, so this TLS setting would be ignored: \
                     remove one or the other",
                ));
            }
        }
        Ok(())
    }

    /// The server's identity: the configured files, else the pair in the state directory
    /// (generated on first start), else — when no directory can be written — one for this
    /// process only (logged: its fingerprint cannot be pinned).
    pub fn server_identity(&self) -> Result<ServerIdentity, TlsError> {
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            return ServerIdentity::from_files(cert, key);
        }
        if let Some(dir) = &self.state_dir {
            return ServerIdentity::in_state_dir(dir);
        }
        match default_state_dir() {
            Some(dir) => ServerIdentity::in_state_dir(&dir),
            None => {
                tracing::warn!(
                    "no state directory can be written ($STATE_DIRECTORY, /var/lib/mtcpd, \
                     $XDG_STATE_HOME/mtcpd, ~/.local/state/mtcpd): using a TLS key pair for \
                     this process only; its fingerprint changes at every start, so clients \
                     cannot pin it (set tls.state_dir)"
                );
                ServerIdentity::generate()
            }
        }
    }

    /// The server's setup: loads (or generates) the identity and logs its fingerprint.
    pub fn server_setup(&self) -> Result<TlsSetup, TlsError> {
        if self.insecure_plaintext {
            warn_plaintext();
            return Ok(TlsSetup::Plaintext);
        }
        let identity = self.server_identity()?;
        let fingerprint = identity.fingerprint();
        match &identity.source {
            IdentitySource::Files => {
                tracing::info!(%fingerprint, "TLS identity from the certificate and key files")
            }
            IdentitySource::StateDir { dir, created } => tracing::info!(
                %fingerprint,
                dir = %dir.display(),
                generated = created,
                "TLS identity (clients may pin this fingerprint with tls.server_fingerprint)"
            ),
            IdentitySource::Ephemeral => {
                tracing::info!(%fingerprint, "TLS identity for this process only")
            }
        }
        TlsSetup::server(identity)
    }

    /// The client's setup: how it verifies the server.
    pub fn client_setup(&self) -> Result<TlsSetup, TlsError> {
        if self.insecure_plaintext {
            warn_plaintext();
            return Ok(TlsSetup::Plaintext);
        }
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let (mut config, name) = match (&self.ca_file, &self.server_name) {
            (Some(ca_file), Some(name)) => {
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca_file)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| TlsError::File {
                        path: ca_file.clone(),
                        problem: format!("cannot read PEM CA certificates: {e}"),
                    })?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(TlsError::File {
                        path: ca_file.clone(),
                        problem: "holds no usable CA certificate".into(),
                    });
                }
                let name = ServerName::try_from(name.clone()).map_err(|e| {
                    TlsError::Protocol(rustls::Error::General(format!("server_name: {e}")))
                })?;
                let config = builder.with_root_certificates(roots).with_no_client_auth();
                (config, name)
            }
            _ => {
                let verifier = PinnedOrAny::new(self.server_fingerprint.clone(), &provider);
                let mut config = builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth();
                config.enable_sni = false;
                let name = ServerName::try_from(UNNAMED_SERVER).map_err(|e| {
                    TlsError::Protocol(rustls::Error::General(format!("server name: {e}")))
                })?;
                (config, name)
            }
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        // After the handshake the tunnel runs its own record layer on rustls's keys.
        config.enable_secret_extraction = true;
        Ok(TlsSetup::Client {
            config: Arc::new(config),
            name,
        })
    }
}

fn warn_plaintext() {
    tracing::warn!(
        "insecure_plaintext: tunnels are NOT encrypted or authenticated after the handshake; \
         anyone on the path can read, alter and inject data (for benchmarks only)"
    );
}

/// The crypto provider: ring, TLS 1.3 suites with AES-128-GCM first (the fastest with AES
/// instructions), then AES-256-GCM and ChaCha20-Poly1305.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// What one runtime (or simulator) end uses to make each tunnel connection's record layer:
/// built once, cheap to clone.
#[derive(Debug, Clone)]
pub enum TlsSetup {
    /// `insecure_plaintext`.
    Plaintext,
    /// The server's configuration (identity, TLS 1.3, ALPN, no tickets).
    Server {
        /// The rustls configuration.
        config: Arc<ServerConfig>,
        /// The identity's fingerprint, for logs.
        fingerprint: String,
    },
    /// The client's configuration (how it verifies the server) and the name it asks for.
    Client {
        /// The rustls configuration.
        config: Arc<ClientConfig>,
        /// The server name verified (with a CA) or a placeholder (pinned or any).
        name: ServerName<'static>,
    },
}

impl TlsSetup {
    /// A server setup for `identity`.
    pub fn server(identity: ServerIdentity) -> Result<Self, TlsError> {
        let fingerprint = identity.fingerprint();
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(identity.chain, identity.key)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        // No tickets: the server writes nothing after its handshake flight, so a connection
        // can be handed to another worker once that flight is written.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        // After the handshake the tunnel runs its own record layer on rustls's keys.
        config.enable_secret_extraction = true;
        Ok(Self::Server {
            config: Arc::new(config),
            fingerprint,
        })
    }

    /// A client that accepts any server certificate (the PSK proof authenticates the server).
    pub fn client_accepting_any() -> Result<Self, TlsError> {
        TlsOptions::default().client_setup()
    }

    /// True for `insecure_plaintext`.
    pub fn is_plaintext(&self) -> bool {
        matches!(self, Self::Plaintext)
    }

    /// The record layer of a new tunnel connection.
    pub fn connection(&self) -> Result<TunnelTls, TlsError> {
        Ok(match self {
            Self::Plaintext => TunnelTls::plaintext(),
            Self::Server { config, .. } => {
                TunnelTls::server(rustls::ServerConnection::new(config.clone())?)
            }
            Self::Client { config, name } => {
                TunnelTls::client(rustls::ClientConnection::new(config.clone(), name.clone())?)
            }
        })
    }
}
