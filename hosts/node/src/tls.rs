//! The node's TLS identity (feature `tls`): its certificate and key, loaded from PEM files or
//! made once (self-signed) and kept in the node's state directory, and the acceptor built from
//! them (docs/PROTOCOL.md §1.1: TLS 1.3 only, ALPN `rela/1`, no client certificates).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rela_client::tls::Fingerprint;
use rela_core::config::TLS_ALPN;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Certificate file name in the state directory's `tls/` folder.
pub const CERT_FILE: &str = "node-cert.pem";
/// Private key file name in the state directory's `tls/` folder.
pub const KEY_FILE: &str = "node-key.pem";

/// Why the TLS identity could not be loaded, made or used.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
    /// A PEM file holds no certificate, no private key, or something that does not parse.
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The self-signed certificate could not be made.
    Generate(String),
    /// rustls refused the certificate and key (for example a key that does not match).
    Config(String),
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Pem { path, reason } => write!(f, "{}: {reason}", path.display()),
            Self::Generate(why) => write!(f, "cannot make a self-signed certificate: {why}"),
            Self::Config(why) => write!(f, "TLS certificate and key refused: {why}"),
        }
    }
}

impl std::error::Error for TlsSetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// The node's certificate chain and private key.
#[derive(Clone)]
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("TlsIdentity").field("fingerprint", &self.fingerprint.to_string()).finish()
    }
}

impl TlsIdentity {
    /// Loads a certificate chain (PEM, end-entity first) and its private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1), as `serve --tls-cert --tls-key` does.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsSetupError> {
        let pem = |path: &Path, reason: String| TlsSetupError::Pem { path: path.to_owned(), reason };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem(cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem(cert, e.to_string()))?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
        Self::new(chain, key_der).map_err(|e| match e {
            TlsSetupError::Pem { reason, .. } => pem(cert, reason),
            other => other,
        })
    }

    /// A fresh self-signed certificate (ECDSA P-256), naming `localhost` and this host.
    pub fn self_signed() -> Result<Self, TlsSetupError> {
        let (cert_pem, key_pem) = generate()?;
        Self::from_pem(&cert_pem, &key_pem, Path::new("(generated)"))
    }

    /// The identity kept in `state_dir`: `tls/node-cert.pem` and `tls/node-key.pem`, made
    /// (self-signed) and written there on first use, reused afterwards so the fingerprint
    /// stays the same across restarts. The key file is readable by its owner only. Returns
    /// the identity and whether it was made now.
    pub fn load_or_generate(state_dir: &Path) -> Result<(Self, bool), TlsSetupError> {
        let dir = state_dir.join("tls");
        let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if cert.exists() || key.exists() {
            return Ok((Self::from_pem_files(&cert, &key)?, false));
        }
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |error| TlsSetupError::Io { path, error }
        };
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let (cert_pem, key_pem) = generate()?;
        write_private(&key, key_pem.as_bytes()).map_err(io_err(&key))?;
        std::fs::write(&cert, cert_pem.as_bytes()).map_err(io_err(&cert))?;
        Ok((Self::from_pem(&cert_pem, &key_pem, &cert)?, true))
    }

    fn from_pem(cert_pem: &str, key_pem: &str, path: &Path) -> Result<Self, TlsSetupError> {
        let pem = |reason: String| TlsSetupError::Pem { path: path.to_owned(), reason };
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| pem(e.to_string()))?;
        Self::new(chain, key)
    }

    fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self, TlsSetupError> {
        let first = chain.first().ok_or_else(|| TlsSetupError::Pem {
            path: PathBuf::new(),
            reason: "no certificate in the file".to_owned(),
        })?;
        let fingerprint = Fingerprint::of_der(first.as_ref());
        let identity = Self { chain, key: Arc::new(key), fingerprint };
        // Refuse a key that does not go with the certificate now, not at the first handshake.
        identity.server_config()?;
        Ok(identity)
    }

    /// The SHA-256 of the end-entity certificate (DER): what clients pin, what ANNOUNCE carries.
    pub const fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The end-entity certificate, DER-encoded.
    pub fn certificate_der(&self) -> &[u8] {
        self.chain.first().map_or(&[], |c| c.as_ref())
    }

    fn server_config(&self) -> Result<ServerConfig, TlsSetupError> {
        let mut config = ServerConfig::builder_with_provider(rela_client::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsSetupError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsSetupError::Config(e.to_string()))?;
        config.alpn_protocols = vec![TLS_ALPN.to_vec()];
        Ok(config)
    }

    /// The configuration every connection's handshake runs with.
    pub(crate) fn acceptor(&self) -> Result<Arc<ServerConfig>, TlsSetupError> {
        Ok(Arc::new(self.server_config()?))
    }
}

/// A self-signed certificate and its key, PEM-encoded.
fn generate() -> Result<(String, String), TlsSetupError> {
    let mut names = vec!["localhost".to_owned()];
    if let Some(host) = hostname().filter(|h| h != "localhost") {
        names.push(host);
    }
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| TlsSetupError::Generate(e.to_string()))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "vram-relay node");
    let key = rcgen::KeyPair::generate().map_err(|e| TlsSetupError::Generate(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| TlsSetupError::Generate(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// This host's name, if the OS tells it (best effort: only used as a certificate name).
fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then(|| name.to_owned())
}

/// Writes a file only its owner can read (on Unix; elsewhere with default permissions).
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_identity_is_kept_and_reused() {
        let dir = std::env::temp_dir().join(format!("rela-tls-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (first, made) = TlsIdentity::load_or_generate(&dir).expect("made");
        assert!(made);
        let (again, made) = TlsIdentity::load_or_generate(&dir).expect("loaded");
        assert!(!made);
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert_eq!(Fingerprint::of_der(again.certificate_der()), again.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode =
                std::fs::metadata(dir.join("tls").join(KEY_FILE)).expect("key file").permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key file is private");
        }
        // Another directory, another certificate.
        let other = TlsIdentity::self_signed().expect("made");
        assert_ne!(other.fingerprint(), first.fingerprint());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("rela-tls-mismatch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert_a, _) = generate().expect("a");
        let (_, key_b) = generate().expect("b");
        let (cert, key) = (dir.join("a.pem"), dir.join("b.key"));
        std::fs::write(&cert, cert_a).expect("write");
        std::fs::write(&key, key_b).expect("write");
        assert!(matches!(TlsIdentity::from_pem_files(&cert, &key), Err(TlsSetupError::Config(_))));
        std::fs::write(&key, "not a key").expect("write");
        assert!(matches!(TlsIdentity::from_pem_files(&cert, &key), Err(TlsSetupError::Pem { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
