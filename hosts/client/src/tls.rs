//! TLS for sessions (feature `tls`): how a client decides to trust a node's certificate, and
//! the handshake.
//!
//! The profile is docs/PROTOCOL.md §1.1: TLS 1.3 only, ALPN `rela/1`, server certificate only
//! (the node authenticates the client with AUTH inside TLS). A node is trusted one of three
//! ways ([`TlsTrust`]):
//!
//! - [`TlsTrust::Pinned`]: its certificate's SHA-256 ([`Fingerprint`]) is the one given, say
//!   from `vram-relay serve`'s log or from a signed ANNOUNCE.
//! - [`TlsTrust::Ca`]: its certificate chains to a CA of a bundle and names the host.
//! - [`TlsTrust::FirstUse`]: the first certificate seen for an address is remembered in a
//!   [`KnownNodes`] file and must not change afterwards (as SSH does with host keys).
//!
//! A certificate that does not match gives [`TlsError::FingerprintMismatch`] or
//! [`TlsError::FingerprintChanged`], naming both fingerprints.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use rela_core::config::{TLS_ALPN, TLS_FINGERPRINT_LEN};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A TLS certificate fingerprint: the SHA-256 of the certificate's DER encoding.
///
/// Displays as 64 lowercase hex digits; parses from that, with or without colons between the
/// bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; TLS_FINGERPRINT_LEN]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, TlsError> {
        let digits: Vec<u8> = s.trim().bytes().filter(|&b| b != b':').collect();
        if digits.len() != 2 * TLS_FINGERPRINT_LEN {
            return Err(TlsError::BadFingerprint);
        }
        let mut out = [0u8; TLS_FINGERPRINT_LEN];
        for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let hex = std::str::from_utf8(pair).map_err(|_| TlsError::BadFingerprint)?;
            *o = u8::from_str_radix(hex, 16).map_err(|_| TlsError::BadFingerprint)?;
        }
        Ok(Self(out))
    }
}

/// Why a TLS session could not be set up.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// The node's certificate is not the pinned one.
    FingerprintMismatch {
        /// The pinned fingerprint.
        expected: Fingerprint,
        /// The certificate the node presented.
        presented: Fingerprint,
    },
    /// Trust on first use: the node at this address presented another certificate than the
    /// one remembered. Either the node made a new certificate (then remove its line from the
    /// store) or someone is in the middle.
    FingerprintChanged {
        /// The address, as remembered in the store.
        node: String,
        /// The fingerprint remembered.
        known: Fingerprint,
        /// The certificate the node presented.
        presented: Fingerprint,
        /// The known-nodes file.
        store: PathBuf,
    },
    /// The handshake failed otherwise: a certificate the CA bundle does not vouch for, a node
    /// not serving TLS, a protocol error (the reason).
    Handshake(String),
    /// The node did not agree to ALPN `rela/1`.
    Alpn,
    /// The CA bundle could not be read or holds no certificate.
    CaBundle(String),
    /// The known-nodes file could not be read or written.
    Store(String),
    /// A fingerprint is not 64 hex digits (colons allowed between bytes).
    BadFingerprint,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FingerprintMismatch { expected, presented } => {
                write!(f, "the node's certificate fingerprint {presented} is not the pinned {expected}")
            }
            Self::FingerprintChanged { node, known, presented, store } => write!(
                f,
                "the certificate of {node} CHANGED: it was {known}, it is now {presented}. Someone may \
                 be in the middle; if the node made a new certificate, remove its line from {}",
                store.display()
            ),
            Self::Handshake(why) => write!(f, "TLS handshake failed: {why}"),
            Self::Alpn => write!(f, "the node did not agree to ALPN {}", String::from_utf8_lossy(TLS_ALPN)),
            Self::CaBundle(why) => write!(f, "CA bundle: {why}"),
            Self::Store(why) => write!(f, "known-nodes store: {why}"),
            Self::BadFingerprint => f.write_str("a fingerprint is 64 hex digits (SHA-256), colons allowed"),
        }
    }
}

impl std::error::Error for TlsError {}

/// How the client decides to trust a node's certificate.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TlsTrust {
    /// Only the certificate with this fingerprint.
    Pinned(Fingerprint),
    /// Certificates that chain to one of these CAs and name the host connected to.
    Ca(Arc<RootCertStore>),
    /// Trust on first use: remembered per address in this store.
    FirstUse(KnownNodes),
}

impl TlsTrust {
    /// [`TlsTrust::Ca`] from a PEM file of CA certificates.
    pub fn ca_file(path: &Path) -> Result<Self, TlsError> {
        let why = |e: &dyn fmt::Display| TlsError::CaBundle(format!("{}: {e}", path.display()));
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| why(&e))? {
            roots.add(cert.map_err(|e| why(&e))?).map_err(|e| why(&e))?;
        }
        if roots.is_empty() {
            return Err(why(&"no certificate in the file"));
        }
        Ok(Self::Ca(Arc::new(roots)))
    }
}

/// Options for a session over TLS ([`crate::ClientOptions::tls`]).
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// How the node's certificate is trusted.
    pub trust: TlsTrust,
}

impl TlsOptions {
    /// Trust only the certificate with `fingerprint`.
    pub const fn pinned(fingerprint: Fingerprint) -> Self {
        Self { trust: TlsTrust::Pinned(fingerprint) }
    }

    /// Trust on first use, remembered in `store`.
    pub const fn first_use(store: KnownNodes) -> Self {
        Self { trust: TlsTrust::FirstUse(store) }
    }
}

/// The directory of this user's vram-relay state: `$XDG_STATE_HOME/vram-relay`, else
/// `$HOME/.local/state/vram-relay`, else `.vram-relay` in the working directory.
pub fn default_state_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(state) = env("XDG_STATE_HOME") {
        return state.join("vram-relay");
    }
    match env("HOME") {
        Some(home) => home.join(".local/state/vram-relay"),
        None => PathBuf::from(".vram-relay"),
    }
}

/// The trust-on-first-use store: one line per node, `ADDRESS FINGERPRINT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownNodes {
    path: PathBuf,
}

impl KnownNodes {
    /// The store in file `path` (created on first use).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// `known_nodes` in [`default_state_dir`].
    pub fn default_location() -> Self {
        Self::new(default_state_dir().join("known_nodes"))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fingerprint remembered for `node`, if any.
    pub fn lookup(&self, node: &str) -> Result<Option<Fingerprint>, TlsError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(TlsError::Store(format!("{}: {e}", self.path.display()))),
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let mut fields = line.split_whitespace();
            if fields.next() == Some(node) {
                let fp = fields.next().ok_or(TlsError::BadFingerprint)?;
                return fp.parse().map(Some);
            }
        }
        Ok(None)
    }

    /// Remembers `fingerprint` for `node` (appends a line; the directory is created if need be).
    pub fn remember(&self, node: &str, fingerprint: Fingerprint) -> Result<(), TlsError> {
        use std::io::Write as _;
        let fail = |e: io::Error| TlsError::Store(format!("{}: {e}", self.path.display()));
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(fail)?;
        writeln!(f, "{node} {fingerprint}").map_err(fail)
    }
}

/// Checks the end-entity certificate against a pinned fingerprint (or none: trust on first
/// use, decided after the handshake), and the handshake signatures with the provider's
/// algorithms. Remembers the fingerprint it saw, for the error.
#[derive(Debug)]
struct PinVerifier {
    expected: Option<Fingerprint>,
    seen: Mutex<Option<Fingerprint>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = Fingerprint::of_der(end_entity.as_ref());
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(fp);
        match self.expected {
            Some(expected) if expected != fp => {
                Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The crypto provider both ends use: rustls' `ring` (no cmake or assembler toolchain needed to
/// build, unlike aws-lc-rs), with AES-128-GCM first among its TLS 1.3 suites (then AES-256-GCM
/// and ChaCha20-Poly1305): as strong as this use needs, and the fastest with AES instructions.
/// A client's order decides the suite.
#[allow(
    deprecated,
    reason = "rustls marks the ring provider deprecated for its lack of post-quantum key exchange; \
              docs/SECURITY.md states that limit"
)]
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let first = rustls::CipherSuite::TLS13_AES_128_GCM_SHA256;
    provider.cipher_suites.sort_by_key(|s| s.suite() != first);
    Arc::new(provider)
}

/// Bytes read from the socket at once under TLS. rustls asks for at most 4 KiB per read; a
/// buffer below it turns that into one system call per 64 KiB (`docs/BENCHMARKS.md`).
pub const TLS_READ_BUFFER: usize = 64 * 1024;

/// Runs the TLS handshake on `stream` to the node at `addr` (reached as `host` when the caller
/// named it), and checks the certificate as `options` say. Returns the stream and the
/// certificate's fingerprint.
pub(crate) async fn connect(
    stream: TcpStream,
    addr: SocketAddr,
    host: Option<&str>,
    options: &TlsOptions,
) -> Result<(NodeStream, Fingerprint), TlsError> {
    let provider = provider();
    let node = addr.to_string();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Handshake(e.to_string()))?;
    let (mut config, pin) = match &options.trust {
        TlsTrust::Ca(roots) => (builder.with_root_certificates(roots.clone()).with_no_client_auth(), None),
        TlsTrust::Pinned(fp) => {
            let v = Arc::new(PinVerifier { expected: Some(*fp), seen: Mutex::new(None), provider });
            (builder.dangerous().with_custom_certificate_verifier(v.clone()).with_no_client_auth(), Some(v))
        }
        TlsTrust::FirstUse(store) => {
            let v =
                Arc::new(PinVerifier { expected: store.lookup(&node)?, seen: Mutex::new(None), provider });
            (builder.dangerous().with_custom_certificate_verifier(v.clone()).with_no_client_auth(), Some(v))
        }
    };
    config.alpn_protocols = vec![TLS_ALPN.to_vec()];
    // The name the certificate must carry (checked with a CA bundle only): the host the caller
    // named, else the address.
    let name = host
        .map(|h| {
            h.rsplit_once(':').map_or(h, |(name, _port)| name).trim_start_matches('[').trim_end_matches(']')
        })
        .and_then(|h| ServerName::try_from(h.to_owned()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
    let stream = BufReader::with_capacity(TLS_READ_BUFFER, stream);
    let tls = match TlsConnector::from(Arc::new(config)).connect(name, stream).await {
        Ok(tls) => tls,
        Err(e) => {
            let seen = pin.as_ref().and_then(|v| *v.seen.lock().unwrap_or_else(PoisonError::into_inner));
            let expected = pin.as_ref().and_then(|v| v.expected);
            return Err(match (seen, expected, &options.trust) {
                (Some(presented), Some(known), TlsTrust::FirstUse(store)) if presented != known => {
                    TlsError::FingerprintChanged { node, known, presented, store: store.path().to_owned() }
                }
                (Some(presented), Some(expected), _) if presented != expected => {
                    TlsError::FingerprintMismatch { expected, presented }
                }
                _ => TlsError::Handshake(handshake_reason(&e)),
            });
        }
    };
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(TLS_ALPN) {
        return Err(TlsError::Alpn);
    }
    let presented = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| Fingerprint::of_der(c.as_ref()))
        .ok_or_else(|| TlsError::Handshake("the node sent no certificate".to_owned()))?;
    if let TlsTrust::FirstUse(store) = &options.trust
        && pin.as_ref().is_some_and(|v| v.expected.is_none())
    {
        store.remember(&node, presented)?;
        tracing::warn!(%node, fingerprint = %presented, store = %store.path().display(),
            "first TLS connection to this node: its certificate is now trusted");
    }
    Ok((tls, presented))
}

/// A TLS stream to a node with no RELA session on it yet: what [`open`] returns.
pub type NodeStream = TlsStream<BufReader<TcpStream>>;

/// Connects to the node at `addr` over TCP (no-delay) and runs the TLS handshake, trusting its
/// certificate as `options` say, exactly as a [`crate::Client`] over TLS does, but starts no
/// session: for tools that speak the protocol themselves, frame by frame (the wire
/// conformance suite). `host` is the name the caller gave, if any (a CA-signed certificate
/// must carry it). Returns the stream and the node's certificate fingerprint. No deadline:
/// the caller bounds the wait.
pub async fn open(
    addr: SocketAddr,
    host: Option<&str>,
    options: &TlsOptions,
) -> Result<(NodeStream, Fingerprint), crate::ClientError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(connect(stream, addr, host, options).await?)
}

/// The handshake error, with a hint when the node is likely not serving TLS.
fn handshake_reason(e: &io::Error) -> String {
    let plain = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidMessage(_)));
    if plain { format!("{e} (is the node serving TLS?)") } else { e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let fp = Fingerprint(core::array::from_fn(|i| i as u8 * 7));
        let hex = fp.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex.parse::<Fingerprint>().ok(), Some(fp));
        let colons: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(colons.join(":").parse::<Fingerprint>().ok(), Some(fp));
        assert!(matches!(hex[..62].parse::<Fingerprint>(), Err(TlsError::BadFingerprint)));
        assert!(matches!(format!("{}zz", &hex[..62]).parse::<Fingerprint>(), Err(TlsError::BadFingerprint)));
        // SHA-256 of the empty string.
        assert_eq!(
            Fingerprint::of_der(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn known_nodes_remember_and_look_up() {
        let dir = std::env::temp_dir().join(format!("rela-known-{}", std::process::id()));
        let store = KnownNodes::new(dir.join("sub/known_nodes"));
        assert_eq!(store.lookup("10.0.0.1:8765").ok(), Some(None));
        let a = Fingerprint([1; 32]);
        let b = Fingerprint([2; 32]);
        store.remember("10.0.0.1:8765", a).expect("remembered");
        store.remember("10.0.0.2:8765", b).expect("remembered");
        assert_eq!(store.lookup("10.0.0.1:8765").ok(), Some(Some(a)));
        assert_eq!(store.lookup("10.0.0.2:8765").ok(), Some(Some(b)));
        assert_eq!(store.lookup("10.0.0.3:8765").ok(), Some(None));
        let _ = std::fs::remove_dir_all(dir);
    }
}
