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
use rustls::{ClientConnection, Connection, ConnectionTrafficSecrets};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

pub mod records;

pub use records::RecordError;

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

/// What a handshake needs besides the stream: the client configuration, the verifier that
/// sees the certificate (pinned or first-use trust), the node's address as the known-nodes
/// store names it, and the name the certificate must carry.
struct Setup {
    config: Arc<ClientConfig>,
    pin: Option<Arc<PinVerifier>>,
    node: String,
    name: ServerName<'static>,
}

impl Setup {
    /// The configuration for the node at `addr` (reached as `host` when the caller named it),
    /// trusting it as `options` say. With `secrets`, the traffic secrets go there and rustls
    /// lets them be extracted (the session's own record layer, [`connect_session`]).
    fn new(
        addr: SocketAddr,
        host: Option<&str>,
        options: &TlsOptions,
        secrets: Option<Arc<SecretLog>>,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let node = addr.to_string();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Handshake(e.to_string()))?;
        let (mut config, pin) = match &options.trust {
            TlsTrust::Ca(roots) => {
                (builder.with_root_certificates(roots.clone()).with_no_client_auth(), None)
            }
            TlsTrust::Pinned(fp) => {
                let v = Arc::new(PinVerifier { expected: Some(*fp), seen: Mutex::new(None), provider });
                (
                    builder.dangerous().with_custom_certificate_verifier(v.clone()).with_no_client_auth(),
                    Some(v),
                )
            }
            TlsTrust::FirstUse(store) => {
                let v = Arc::new(PinVerifier {
                    expected: store.lookup(&node)?,
                    seen: Mutex::new(None),
                    provider,
                });
                (
                    builder.dangerous().with_custom_certificate_verifier(v.clone()).with_no_client_auth(),
                    Some(v),
                )
            }
        };
        config.alpn_protocols = vec![TLS_ALPN.to_vec()];
        if let Some(secrets) = secrets {
            config.key_log = secrets;
            config.enable_secret_extraction = true;
        }
        // The name the certificate must carry (checked with a CA bundle only): the host the
        // caller named, else the address.
        let name = host
            .map(|h| {
                h.rsplit_once(':')
                    .map_or(h, |(name, _port)| name)
                    .trim_start_matches('[')
                    .trim_end_matches(']')
            })
            .and_then(|h| ServerName::try_from(h.to_owned()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        Ok(Self { config: Arc::new(config), pin, node, name })
    }

    /// The error for a failed handshake: a certificate other than the pinned or remembered
    /// one, else `reason`.
    fn failed(self, options: &TlsOptions, reason: String) -> TlsError {
        let seen = self.pin.as_ref().and_then(|v| *v.seen.lock().unwrap_or_else(PoisonError::into_inner));
        let expected = self.pin.as_ref().and_then(|v| v.expected);
        match (seen, expected, &options.trust) {
            (Some(presented), Some(known), TlsTrust::FirstUse(store)) if presented != known => {
                TlsError::FingerprintChanged {
                    node: self.node,
                    known,
                    presented,
                    store: store.path().to_owned(),
                }
            }
            (Some(presented), Some(expected), _) if presented != expected => {
                TlsError::FingerprintMismatch { expected, presented }
            }
            _ => TlsError::Handshake(reason),
        }
    }

    /// After the handshake: checks ALPN, remembers a first-use certificate, returns its
    /// fingerprint.
    fn accepted(&self, conn: &rustls::CommonState, options: &TlsOptions) -> Result<Fingerprint, TlsError> {
        if conn.alpn_protocol() != Some(TLS_ALPN) {
            return Err(TlsError::Alpn);
        }
        let presented = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| Fingerprint::of_der(c.as_ref()))
            .ok_or_else(|| TlsError::Handshake("the node sent no certificate".to_owned()))?;
        if let TlsTrust::FirstUse(store) = &options.trust
            && self.pin.as_ref().is_some_and(|v| v.expected.is_none())
        {
            store.remember(&self.node, presented)?;
            tracing::warn!(node = %self.node, fingerprint = %presented, store = %store.path().display(),
                "first TLS connection to this node: its certificate is now trusted");
        }
        Ok(presented)
    }
}

/// Runs the TLS handshake on `stream` to the node at `addr` (reached as `host` when the caller
/// named it) with tokio-rustls, and checks the certificate as `options` say. Returns the
/// stream and the certificate's fingerprint.
async fn connect(
    stream: TcpStream,
    addr: SocketAddr,
    host: Option<&str>,
    options: &TlsOptions,
) -> Result<(NodeStream, Fingerprint), TlsError> {
    let setup = Setup::new(addr, host, options, None)?;
    let stream = BufReader::with_capacity(TLS_READ_BUFFER, stream);
    let tls = match TlsConnector::from(setup.config.clone()).connect(setup.name.clone(), stream).await {
        Ok(tls) => tls,
        Err(e) => return Err(setup.failed(options, handshake_reason(&e))),
    };
    let presented = setup.accepted(tls.get_ref().1, options)?;
    Ok((tls, presented))
}

/// The traffic secrets of a handshake, as rustls reports them (`CLIENT_TRAFFIC_SECRET_0`,
/// `SERVER_TRAFFIC_SECRET_0`): the session's record layer derives its keys, and the keys of
/// every KeyUpdate, from them.
#[derive(Default)]
pub(crate) struct SecretLog {
    /// Client's, server's.
    secrets: Mutex<[Option<records::Secret>; 2]>,
}

impl fmt::Debug for SecretLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets.
        f.write_str("SecretLog")
    }
}

const CLIENT_TRAFFIC_SECRET: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_TRAFFIC_SECRET: &str = "SERVER_TRAFFIC_SECRET_0";

impl rustls::KeyLog for SecretLog {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let slot = match label {
            CLIENT_TRAFFIC_SECRET => 0,
            SERVER_TRAFFIC_SECRET => 1,
            _ => return,
        };
        self.secrets.lock().unwrap_or_else(PoisonError::into_inner)[slot] =
            Some(Zeroizing::new(secret.to_vec()));
    }

    fn will_log(&self, label: &str) -> bool {
        matches!(label, CLIENT_TRAFFIC_SECRET | SERVER_TRAFFIC_SECRET)
    }
}

impl SecretLog {
    /// Takes the client's and the server's traffic secrets.
    fn take(&self) -> Option<(records::Secret, records::Secret)> {
        let mut secrets = self.secrets.lock().unwrap_or_else(PoisonError::into_inner);
        let [client, server] = &mut *secrets;
        Some((client.take()?, server.take()?))
    }
}

/// How a handshake driven by [`drive`] failed.
enum DriveError {
    Io(io::Error),
    Tls(rustls::Error),
}

impl From<io::Error> for DriveError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<rustls::Error> for DriveError {
    fn from(e: rustls::Error) -> Self {
        Self::Tls(e)
    }
}

/// Drives `conn` through the handshake on `stream`. rustls gets the bytes read one record at
/// a time, never past the end of the record it is in, so when the handshake ends it holds no
/// byte of a later record: those stay in `received`, from a record's start, for the record
/// layer. A failed handshake sends rustls' alert for it, best effort.
async fn drive(
    stream: &mut TcpStream,
    conn: &mut Connection,
    received: &mut Vec<u8>,
) -> Result<(), DriveError> {
    let result = drive_inner(stream, conn, received).await;
    if let Err(DriveError::Tls(_)) = result {
        let mut alert = Vec::new();
        if conn.write_tls(&mut alert).is_ok() {
            let _ = stream.write_all(&alert).await;
        }
    }
    result
}

async fn drive_inner(
    stream: &mut TcpStream,
    conn: &mut Connection,
    received: &mut Vec<u8>,
) -> Result<(), DriveError> {
    let mut out = Vec::new();
    // Bytes of the current record not yet given to rustls.
    let mut record_left = 0usize;
    loop {
        while conn.wants_write() {
            out.clear();
            conn.write_tls(&mut out)?;
            stream.write_all(&out).await?;
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        if record_left == 0
            && let [_, _, _, hi, lo, ..] = received[..]
        {
            record_left = records::HEADER + usize::from(u16::from_be_bytes([hi, lo]));
        }
        let n = record_left.min(received.len());
        if n > 0 {
            let mut bytes = &received[..n];
            while !bytes.is_empty() {
                // rustls takes nothing more once it accepted a close_notify (only ever after the
                // handshake, which ends this loop first; kept so that no later rustls can spin it).
                if conn.read_tls(&mut bytes)? == 0 {
                    return Err(DriveError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection in the TLS handshake",
                    )));
                }
                conn.process_new_packets()?;
            }
            received.drain(..n);
            record_left -= n;
            continue;
        }
        let at = received.len();
        received.resize(at + records::HEADER + records::MAX_CIPHERTEXT, 0);
        let got = stream.read(&mut received[at..]).await;
        received.truncate(at + *got.as_ref().unwrap_or(&0));
        if got? == 0 {
            return Err(DriveError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof")));
        }
    }
}

/// After the handshake: the session's own record layer ([`records`]) over `stream`, with the
/// traffic secrets `secrets` caught, checked against the keys rustls ended the handshake with.
/// `received`: the bytes read past the handshake.
fn into_records(
    stream: TcpStream,
    mut conn: Connection,
    secrets: &SecretLog,
    received: &[u8],
) -> Result<(records::Reader, records::Writer), String> {
    let server = matches!(conn, Connection::Server(_));
    // Application data rustls already opened (none from a rustls peer, which sends nothing
    // before the client's Finished), handed out first.
    let mut early = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match io::Read::read(&mut conn.reader(), &mut chunk) {
            Ok(0) => break,
            Ok(n) => early.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    let suite =
        conn.negotiated_cipher_suite().and_then(records::Suite::of).ok_or("unsupported cipher suite")?;
    let extracted = conn.dangerous_extract_secrets().map_err(|e| e.to_string())?;
    let (client, server_secret) = secrets.take().ok_or("no traffic secrets")?;
    let (tx, rx) = if server { (server_secret, client) } else { (client, server_secret) };
    let tx = records::Keys::new(suite, tx, extracted.tx.0).map_err(|e| e.to_string())?;
    let rx = records::Keys::new(suite, rx, extracted.rx.0).map_err(|e| e.to_string())?;
    // The keys derived here must be the ones rustls ended the handshake with.
    let same = |keys: &records::Keys, secrets: &ConnectionTrafficSecrets| match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => keys.matches(key.as_ref(), iv.as_ref()),
        _ => false,
    };
    if !same(&tx, &extracted.tx.1) || !same(&rx, &extracted.rx.1) {
        return Err("traffic keys differ from the handshake's".to_owned());
    }
    records::split(stream, rx, tx, received, early, !server).map_err(|e| e.to_string())
}

/// Runs the TLS handshake for a session on `stream` to the node at `addr` (reached as `host`
/// when the caller named it), checks the certificate as `options` say, and sets up the
/// session's own record layer ([`records`]) with the handshake's traffic secrets. Returns the
/// read and write halves and the certificate's fingerprint.
pub(crate) async fn connect_session(
    mut stream: TcpStream,
    addr: SocketAddr,
    host: Option<&str>,
    options: &TlsOptions,
) -> Result<(records::Reader, records::Writer, Fingerprint), TlsError> {
    let secrets = Arc::new(SecretLog::default());
    let setup = Setup::new(addr, host, options, Some(secrets.clone()))?;
    let conn = ClientConnection::new(setup.config.clone(), setup.name.clone())
        .map_err(|e| TlsError::Handshake(e.to_string()))?;
    let mut conn = Connection::from(conn);
    let mut received = Vec::new();
    match drive(&mut stream, &mut conn, &mut received).await {
        Ok(()) => {}
        Err(DriveError::Io(e)) => return Err(setup.failed(options, e.to_string())),
        Err(DriveError::Tls(e)) => return Err(setup.failed(options, rustls_reason(&e))),
    }
    let presented = setup.accepted(&conn, options)?;
    let (rd, wr) = into_records(stream, conn, &secrets, &received)
        .map_err(|why| TlsError::Handshake(format!("TLS record layer: {why}")))?;
    Ok((rd, wr, presented))
}

/// The node's side: runs the TLS handshake on `stream` with `config` (TLS 1.3, the node's
/// certificate), then sets up the same record layer as a client session's ([`records`]).
/// Returns its read and write halves. No deadline: the caller bounds the wait.
pub async fn accept_session(
    mut stream: TcpStream,
    config: &rustls::ServerConfig,
) -> io::Result<(records::Reader, records::Writer)> {
    let secrets = Arc::new(SecretLog::default());
    let mut config = config.clone();
    config.key_log = secrets.clone();
    config.enable_secret_extraction = true;
    let conn = rustls::ServerConnection::new(Arc::new(config)).map_err(io::Error::other)?;
    let mut conn = Connection::from(conn);
    let mut received = Vec::new();
    match drive(&mut stream, &mut conn, &mut received).await {
        Ok(()) => {}
        Err(DriveError::Io(e)) => return Err(e),
        Err(DriveError::Tls(e)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    }
    into_records(stream, conn, &secrets, &received)
        .map_err(|why| io::Error::other(format!("TLS record layer: {why}")))
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
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(r) => rustls_reason(r),
        None => e.to_string(),
    }
}

/// rustls' handshake error, with a hint when the node is likely not serving TLS.
fn rustls_reason(e: &rustls::Error) -> String {
    if matches!(e, rustls::Error::InvalidMessage(_)) {
        format!("{e} (is the node serving TLS?)")
    } else {
        e.to_string()
    }
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
