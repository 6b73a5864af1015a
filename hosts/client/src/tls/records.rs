//! The TLS 1.3 record layer of a session after the handshake (RFC 8446 §5), both directions,
//! on both ends: a client session's (`Client` over TLS) and the node's
//! ([`super::accept_session`]).
//!
//! rustls runs the handshake and checks the certificate; the session then seals and opens its
//! records here, with the traffic secrets of that handshake and AWS-LC's AEAD code
//! (`aws-lc-rs`, whose AES-GCM has a VAES-AVX-512 path and seals from one buffer into
//! another). The wire is the same TLS 1.3 a rustls session sends. The reason is the copies:
//! rustls' buffered reader copies every received byte three times (from the socket buffer into
//! its record buffer, into a `Vec` per record, into the caller's slice), and its writer once.
//! Here the socket is read in large pieces into one buffer, each record is opened where it
//! lies, and its plaintext is copied once, into the caller's memory; a record whose plaintext
//! lies in one piece of what the caller writes is sealed from there straight into the send
//! buffer (`docs/BENCHMARKS.md`, TLS section).
//!
//! What a TLS 1.3 peer may send after the handshake is handled: application data, alerts
//! (`close_notify` ends the stream, any other alert fails it), NewSessionTicket to a client
//! (dropped: every session makes a fresh configuration, so a ticket could never be used) and
//! KeyUpdate (the receiving keys move on; a requested update is answered before the next
//! record sent; more than 32 in a row without data fail the stream, as in rustls). Sending
//! moves to new keys by KeyUpdate before the suite's confidentiality limit. A record that does
//! not open, is too long, or carries an unexpected type fails the stream with a
//! [`RecordError`]; no alert is sent back, the connection closes.

use std::fmt;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use aws_lc_rs::aead::{self, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use zeroize::Zeroizing;

/// A traffic secret, wiped when dropped.
pub(crate) type Secret = Zeroizing<Vec<u8>>;

/// Record header: content type, legacy version, length.
pub(crate) const HEADER: usize = 5;
/// The longest plaintext of one record.
const MAX_PLAINTEXT: usize = 1 << 14;
/// The longest protected record body (RFC 8446 §5.2: 2^14 + 256).
pub(crate) const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// AEAD tag length of every TLS 1.3 suite.
const TAG: usize = 16;
/// The longest post-handshake handshake message accepted (as rustls).
const MAX_HANDSHAKE_MESSAGE: usize = 0xffff;
/// KeyUpdates accepted in a row without application data between them (as rustls and
/// BoringSSL): more is a peer wasting our time.
const MAX_KEY_UPDATES_IN_A_ROW: u8 = 32;
/// Bytes read from the socket at once, at most (plus room for one whole record).
const READ_BUFFER: usize = 64 * 1024;
/// Sealed bytes held before they are written to the socket: 16 records a system call, still
/// in cache when written (64 KiB, rustls' default, cost the sender about 35 ms more CPU per
/// GiB in system calls; docs/BENCHMARKS.md).
const WRITE_BUFFER: usize = 256 * 1024;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const ALERT_CLOSE_NOTIFY: u8 = 0;

/// Why the TLS record stream failed after the handshake (inside the [`io::Error`] a read or
/// write returns: [`io::ErrorKind::InvalidData`], or [`io::ErrorKind::ConnectionAborted`] for
/// an alert).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// A record longer than TLS 1.3 allows (the length it declared).
    Oversized(usize),
    /// A record that does not open under the current key: altered, reordered or forged.
    Decrypt,
    /// A record of a content type TLS 1.3 does not allow here (the type).
    UnexpectedType(u8),
    /// The peer sent this fatal alert (its description code).
    Alert(u8),
    /// A post-handshake handshake message that is malformed or not allowed after the
    /// handshake (its type).
    Handshake(u8),
    /// The connection ended without the peer's `close_notify`: the data may be truncated.
    Truncated,
    /// The sequence numbers of a key ran out.
    SequenceExhausted,
    /// The keys could not be derived or set up (an unsupported cipher suite, or a secret
    /// the handshake did not give).
    Keys,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oversized(len) => write!(f, "TLS record of {len} bytes, above the 2^14 + 256 limit"),
            Self::Decrypt => f.write_str("TLS record failed to decrypt (altered or forged)"),
            Self::UnexpectedType(t) => write!(f, "unexpected TLS content type {t} after the handshake"),
            Self::Alert(d) => write!(f, "the peer sent TLS alert {d}"),
            Self::Handshake(t) => {
                write!(f, "unexpected or malformed TLS handshake message {t} after the handshake")
            }
            Self::Truncated => f.write_str("the peer closed the connection without TLS close_notify"),
            Self::SequenceExhausted => f.write_str("TLS record sequence numbers exhausted"),
            Self::Keys => f.write_str("TLS traffic keys could not be set up"),
        }
    }
}

impl std::error::Error for RecordError {}

impl From<RecordError> for io::Error {
    fn from(e: RecordError) -> Self {
        let kind = match e {
            RecordError::Alert(_) => io::ErrorKind::ConnectionAborted,
            RecordError::Truncated => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        Self::new(kind, e)
    }
}

/// The AEAD and hash of a TLS 1.3 cipher suite, and how many records one key may protect.
#[derive(Clone, Copy)]
pub(crate) struct Suite {
    aead: &'static aead::Algorithm,
    hkdf: hkdf::Algorithm,
    /// Records sealed under one key before it is replaced (the suite's confidentiality
    /// limit, as rustls states it).
    limit: u64,
}

impl fmt::Debug for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Suite").field("aead", self.aead).field("limit", &self.limit).finish()
    }
}

impl Suite {
    /// The suite rustls negotiated, if it is one of the three TLS 1.3 suites of the `ring`
    /// provider (the same three AEADs here, from AWS-LC).
    pub(crate) fn of(suite: rustls::SupportedCipherSuite) -> Option<Self> {
        use rustls::CipherSuite as C;
        let tls13 = suite.tls13()?;
        let (aead, hkdf) = match tls13.common.suite {
            C::TLS13_AES_128_GCM_SHA256 => (&aead::AES_128_GCM, hkdf::HKDF_SHA256),
            C::TLS13_AES_256_GCM_SHA384 => (&aead::AES_256_GCM, hkdf::HKDF_SHA384),
            C::TLS13_CHACHA20_POLY1305_SHA256 => (&aead::CHACHA20_POLY1305, hkdf::HKDF_SHA256),
            _ => return None,
        };
        Some(Self { aead, hkdf, limit: tls13.common.confidentiality_limit })
    }
}

/// An output length for HKDF.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context, into `out`.
fn expand_label(
    alg: hkdf::Algorithm,
    secret: &[u8],
    label: &[u8],
    out: &mut [u8],
) -> Result<(), RecordError> {
    const PREFIX: &[u8] = b"tls13 ";
    let length = u16::try_from(out.len()).map_err(|_| RecordError::Keys)?.to_be_bytes();
    let label_len = [u8::try_from(PREFIX.len() + label.len()).map_err(|_| RecordError::Keys)?];
    let info: [&[u8]; 5] = [&length, &label_len, PREFIX, label, &[0]];
    let prk = hkdf::Prk::new_less_safe(alg, secret);
    let okm = prk.expand(&info, Len(out.len())).map_err(|_| RecordError::Keys)?;
    okm.fill(out).map_err(|_| RecordError::Keys)
}

/// One direction's traffic secret, the key and IV derived from it, and the next record's
/// sequence number.
pub(crate) struct Keys {
    suite: Suite,
    secret: Secret,
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret or the key.
        f.debug_struct("Keys").field("suite", &self.suite).field("seq", &self.seq).finish()
    }
}

impl Keys {
    /// The keys of traffic secret `secret`, from record `seq` on.
    pub(crate) fn new(suite: Suite, secret: Secret, seq: u64) -> Result<Self, RecordError> {
        let mut key = Zeroizing::new(vec![0u8; suite.aead.key_len()]);
        expand_label(suite.hkdf, &secret, b"key", &mut key)?;
        let mut iv = [0u8; NONCE_LEN];
        expand_label(suite.hkdf, &secret, b"iv", &mut iv)?;
        let key = LessSafeKey::new(UnboundKey::new(suite.aead, &key).map_err(|_| RecordError::Keys)?);
        Ok(Self { suite, secret, key, iv, seq })
    }

    /// Whether the key and IV are `key` and `iv` (what rustls says they are: a check that the
    /// secret is the right one).
    pub(crate) fn matches(&self, key: &[u8], iv: &[u8]) -> bool {
        let mut mine = Zeroizing::new(vec![0u8; self.suite.aead.key_len()]);
        expand_label(self.suite.hkdf, &self.secret, b"key", &mut mine).is_ok()
            && *mine == key
            && self.iv == iv
    }

    /// Moves to the next traffic secret (KeyUpdate, RFC 8446 §7.2), from record 0.
    fn update(&mut self) -> Result<(), RecordError> {
        let mut next = Zeroizing::new(vec![0u8; hkdf::KeyType::len(&self.suite.hkdf)]);
        expand_label(self.suite.hkdf, &self.secret, b"traffic upd", &mut next)?;
        *self = Self::new(self.suite, next, 0)?;
        Ok(())
    }

    /// The nonce of the next record (the IV xor its sequence number), and counts it.
    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq = self.seq.checked_add(1).ok_or(RecordError::SequenceExhausted)?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// The receiving half of a TLS session after the handshake: reads records from the socket,
/// opens them, hands out their plaintext.
pub struct Reader {
    io: OwnedReadHalf,
    /// Bytes read: `buf[head..tail]` are not yet opened; `buf[plain]` (before `head`) is the
    /// plaintext of the last opened record not yet handed out.
    buf: Box<[u8]>,
    head: usize,
    tail: usize,
    plain: Range<usize>,
    /// Plaintext rustls had already opened during the handshake, handed out first.
    early: Vec<u8>,
    /// A record failed: every later read fails the same way.
    failed: Option<RecordError>,
    rx: Receiving,
}

/// The receiving keys and what the records other than application data change.
struct Receiving {
    keys: Keys,
    /// Post-handshake handshake bytes not yet a whole message.
    handshake: Vec<u8>,
    /// Set when the peer asked for a KeyUpdate back; the writer sends it.
    update_owed: Arc<AtomicBool>,
    /// KeyUpdates received since the last application data.
    key_updates: u8,
    /// NewSessionTicket may come (a client's reader).
    tickets: bool,
    /// The peer sent `close_notify`: end of stream.
    closed: bool,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("keys", &self.rx.keys)
            .field("closed", &self.rx.closed)
            .finish_non_exhaustive()
    }
}

/// The sending half of a TLS session after the handshake: seals what is written into records,
/// writes them to the socket.
pub struct Writer {
    io: OwnedWriteHalf,
    keys: Keys,
    /// Sealed records: `out[sent..filled]` is not yet written. Allocated once, zeroed; records
    /// are sealed into it where they will be sent.
    out: Box<[u8]>,
    filled: usize,
    sent: usize,
    update_owed: Arc<AtomicBool>,
    /// `close_notify` is sealed.
    closing: bool,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("keys", &self.keys)
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

/// The two halves over a TCP stream after the handshake: `rx` and `tx` are the keys of each
/// direction, `received` the bytes read past the handshake (whole records from the start),
/// `early` plaintext rustls already opened; `tickets`: whether NewSessionTicket may come (to a
/// client).
pub(crate) fn split(
    stream: tokio::net::TcpStream,
    rx: Keys,
    tx: Keys,
    received: &[u8],
    early: Vec<u8>,
    tickets: bool,
) -> io::Result<(Reader, Writer)> {
    let mut buf = vec![0u8; READ_BUFFER + HEADER + MAX_CIPHERTEXT].into_boxed_slice();
    let Some(dst) = buf.get_mut(..received.len()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more than a read buffer past the TLS handshake",
        ));
    };
    dst.copy_from_slice(received);
    let (rd, wr) = stream.into_split();
    let update_owed = Arc::new(AtomicBool::new(false));
    let reader = Reader {
        io: rd,
        buf,
        head: 0,
        tail: received.len(),
        plain: 0..0,
        early,
        failed: None,
        rx: Receiving {
            keys: rx,
            handshake: Vec::new(),
            update_owed: update_owed.clone(),
            key_updates: 0,
            tickets,
            closed: false,
        },
    };
    let writer = Writer {
        io: wr,
        keys: tx,
        out: vec![0u8; WRITE_BUFFER + HEADER + MAX_CIPHERTEXT].into_boxed_slice(),
        filled: 0,
        sent: 0,
        update_owed,
        closing: false,
    };
    Ok((reader, writer))
}

/// Opens records straight into the caller's memory when it asks for at least this much
/// ([`Reader::poll_direct`]); smaller reads are served from records opened in the buffer.
const DIRECT_READ: usize = 2 * (HEADER + MAX_CIPHERTEXT);

/// The body length a record header declares, checked.
fn body_len(header: &[u8]) -> Result<usize, RecordError> {
    let (kind, len) = (header[0], usize::from(u16::from_be_bytes([header[3], header[4]])));
    // After the handshake every record is protected: its outer type is application_data.
    if kind != CONTENT_APPLICATION_DATA {
        return Err(RecordError::UnexpectedType(kind));
    }
    if len > MAX_CIPHERTEXT {
        return Err(RecordError::Oversized(len));
    }
    if len <= TAG {
        return Err(RecordError::Decrypt);
    }
    Ok(len)
}

impl Receiving {
    /// Handles an opened record's inner plaintext (content, type, padding). Returns the length
    /// of the application data at its start (0 for other records).
    fn opened(&mut self, inner: &[u8]) -> Result<usize, RecordError> {
        // The content type is the last byte that is not padding.
        let Some(end) = inner.iter().rposition(|&b| b != 0) else {
            return Err(RecordError::UnexpectedType(0));
        };
        if end > MAX_PLAINTEXT {
            return Err(RecordError::Oversized(end));
        }
        match inner[end] {
            CONTENT_APPLICATION_DATA if self.handshake.is_empty() => {
                self.key_updates = 0;
                Ok(end)
            }
            CONTENT_HANDSHAKE if end > 0 => {
                self.handshake.extend_from_slice(&inner[..end]);
                self.handshake_messages()?;
                Ok(0)
            }
            CONTENT_ALERT if end == 2 => {
                let description = inner[1];
                if description != ALERT_CLOSE_NOTIFY {
                    return Err(RecordError::Alert(description));
                }
                self.closed = true;
                Ok(0)
            }
            other => Err(RecordError::UnexpectedType(other)),
        }
    }

    /// Handles the whole post-handshake handshake messages received.
    fn handshake_messages(&mut self) -> Result<(), RecordError> {
        while let [kind, a, b, c, ..] = self.handshake[..] {
            let len = usize::try_from(u32::from_be_bytes([0, a, b, c]))
                .map_err(|_| RecordError::Handshake(kind))?;
            if len > MAX_HANDSHAKE_MESSAGE {
                return Err(RecordError::Handshake(kind));
            }
            if self.handshake.len() < 4 + len {
                return Ok(());
            }
            match (kind, &self.handshake[4..]) {
                (HANDSHAKE_NEW_SESSION_TICKET, _) if self.tickets => {}
                // A KeyUpdate ends its record (RFC 8446 §5.1: no message spans a key change).
                (HANDSHAKE_KEY_UPDATE, [request @ (0 | 1)])
                    if self.key_updates < MAX_KEY_UPDATES_IN_A_ROW =>
                {
                    self.key_updates += 1;
                    if *request == 1 {
                        self.update_owed.store(true, Ordering::Release);
                    }
                    self.keys.update()?;
                }
                _ => return Err(RecordError::Handshake(kind)),
            }
            self.handshake.drain(..4 + len);
        }
        Ok(())
    }

    /// Opens the whole records of `buf[*raw..end]` in place, moving their application data down
    /// to `buf[*data..]`; advances both. Stops at a partial record or `close_notify`.
    fn open_in_place(
        &mut self,
        buf: &mut [u8],
        data: &mut usize,
        raw: &mut usize,
        end: usize,
    ) -> Result<(), RecordError> {
        while !self.closed && end - *raw >= HEADER {
            let mut header = [0u8; HEADER];
            header.copy_from_slice(&buf[*raw..*raw + HEADER]);
            let len = body_len(&header)?;
            if end - *raw < HEADER + len {
                break;
            }
            let nonce = self.keys.next_nonce()?;
            let body = *raw + HEADER - *data..;
            let inner = self
                .keys
                .key
                .open_within(nonce, Aad::from(header), &mut buf[*data..*raw + HEADER + len], body)
                .map_err(|_| RecordError::Decrypt)?;
            let inner_len = inner.len();
            *raw += HEADER + len;
            *data += self.opened(&buf[*data..*data + inner_len])?;
        }
        Ok(())
    }
}

impl Receiving {
    /// Opens the whole records of `src` from `*raw` into `dst` from `*data`: the AEAD reads each
    /// record where it lies and writes its inner plaintext (content, type, padding) straight
    /// into `dst`, where the next record's data then goes over the type and padding; advances
    /// both. Stops at a partial record, at `close_notify`, or where `dst` has no room for the
    /// next record's inner plaintext.
    fn open_into(
        &mut self,
        src: &[u8],
        raw: &mut usize,
        dst: &mut [u8],
        data: &mut usize,
    ) -> Result<(), RecordError> {
        while !self.closed && src.len() - *raw >= HEADER {
            let mut header = [0u8; HEADER];
            header.copy_from_slice(&src[*raw..*raw + HEADER]);
            let len = body_len(&header)?;
            if src.len() - *raw < HEADER + len {
                break;
            }
            // `body_len` checked that the body is longer than its tag.
            let inner_len = len - TAG;
            if dst.len() - *data < inner_len {
                break;
            }
            let nonce = self.keys.next_nonce()?;
            let (ciphertext, tag) = src[*raw + HEADER..*raw + HEADER + len].split_at(inner_len);
            let inner = &mut dst[*data..*data + inner_len];
            self.keys
                .key
                .open_separate_gather(nonce, Aad::from(header), ciphertext, tag, inner)
                .map_err(|_| RecordError::Decrypt)?;
            *raw += HEADER + len;
            *data += self.opened(inner)?;
        }
        Ok(())
    }
}

impl Reader {
    /// Opens the next record if it is whole in the buffer. `Ok(false)`: not whole yet.
    fn open_next(&mut self) -> Result<bool, RecordError> {
        let (mut data, mut raw) = (self.head, self.head);
        self.rx.open_in_place(&mut self.buf, &mut data, &mut raw, self.tail)?;
        if raw == self.head {
            return Ok(false);
        }
        self.plain = self.head..data;
        self.head = raw;
        Ok(true)
    }

    /// Moves the bytes not yet opened to the front of the buffer, once every plaintext is out.
    fn compact(&mut self) {
        if self.head > 0 && self.plain.is_empty() {
            self.buf.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
            self.plain = 0..0;
        }
    }

    /// Reads records into the buffer and opens them from there into `out` (nothing is buffered
    /// but a partial record): each byte of data is written to `out` once, by the AEAD. Returns
    /// once something was read, or at the end.
    fn poll_direct(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let dst = out.initialize_unfilled();
        let mut data = 0;
        let mut outcome = Poll::Ready(Ok(()));
        loop {
            let mut raw = self.head;
            let opened = self.rx.open_into(&self.buf[..self.tail], &mut raw, dst, &mut data);
            self.head = raw;
            if let Err(e) = opened {
                // The records opened before this one are data; the error comes with the next
                // read.
                self.failed = Some(e);
                if data == 0 {
                    outcome = Poll::Ready(Err(e.into()));
                }
                break;
            }
            // Room for one more whole record, or stop here.
            if self.rx.closed || dst.len() - data < MAX_CIPHERTEXT {
                break;
            }
            // Only a partial record is left: to the front, and read more behind it.
            self.buf.copy_within(self.head..self.tail, 0);
            (self.tail, self.head) = (self.tail - self.head, 0);
            let mut space = ReadBuf::new(&mut self.buf[self.tail..]);
            match Pin::new(&mut self.io).poll_read(cx, &mut space) {
                Poll::Pending => {
                    if data == 0 {
                        outcome = Poll::Pending;
                    }
                    break;
                }
                Poll::Ready(Err(e)) => {
                    outcome = Poll::Ready(Err(e));
                    break;
                }
                Poll::Ready(Ok(())) if space.filled().is_empty() => {
                    if data == 0 {
                        self.failed = Some(RecordError::Truncated);
                        outcome = Poll::Ready(Err(RecordError::Truncated.into()));
                    }
                    break;
                }
                Poll::Ready(Ok(())) => self.tail += space.filled().len(),
            }
        }
        out.advance(data);
        if data == 0 && !self.rx.closed && matches!(outcome, Poll::Ready(Ok(()))) {
            // Only records other than data until the room ran out: go on from the buffer.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        outcome
    }
}

impl AsyncRead for Reader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.failed {
            return Poll::Ready(Err(e.into()));
        }
        if !this.early.is_empty() {
            let n = this.early.len().min(out.remaining());
            out.put_slice(&this.early[..n]);
            this.early.drain(..n);
            return Poll::Ready(Ok(()));
        }
        let before = out.filled().len();
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(out.remaining());
                out.put_slice(&this.buf[this.plain.start..this.plain.start + n]);
                this.plain.start += n;
            }
            if out.remaining() == 0 || this.rx.closed {
                return Poll::Ready(Ok(()));
            }
            match this.open_next() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    this.failed = Some(e);
                    return Poll::Ready(Err(e.into()));
                }
            }
            if out.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            // Nothing buffered but a partial record.
            if out.remaining() >= DIRECT_READ {
                return this.poll_direct(cx, out);
            }
            this.compact();
            let mut space = ReadBuf::new(&mut this.buf[this.tail..]);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut space))?;
            let n = space.filled().len();
            if n == 0 {
                this.failed = Some(RecordError::Truncated);
                return Poll::Ready(Err(RecordError::Truncated.into()));
            }
            this.tail += n;
        }
    }
}

impl Writer {
    /// Seals one record of inner type `kind` holding `plaintext` (at most [`MAX_PLAINTEXT`]
    /// bytes, in one piece), from where it lies into the send buffer.
    fn seal(&mut self, kind: u8, plaintext: &[u8]) -> Result<(), RecordError> {
        let end = self.record(plaintext.len())?;
        self.protect(kind, Some(plaintext), end)
    }

    /// Seals one record of application data holding the next `len` bytes of `bufs` from
    /// `slice`, `offset` on (advanced past them), which span several pieces: copied into the
    /// send buffer first, then sealed there.
    fn seal_gathered(
        &mut self,
        bufs: &[io::IoSlice<'_>],
        slice: &mut usize,
        offset: &mut usize,
        len: usize,
    ) -> Result<(), RecordError> {
        let end = self.record(len)?;
        let mut at = self.filled + HEADER;
        let mut left = len;
        while left > 0 {
            let part = &bufs[*slice][*offset..];
            let n = part.len().min(left);
            self.out[at..at + n].copy_from_slice(&part[..n]);
            (at, left, *offset) = (at + n, left - n, *offset + n);
            if *offset == bufs[*slice].len() {
                (*slice, *offset) = (*slice + 1, 0);
            }
        }
        self.protect(CONTENT_APPLICATION_DATA, None, end)
    }

    /// Seals the record whose header [`record`](Self::record) wrote at `filled`, ending at
    /// `end`: its plaintext taken from `from`, or already in place when `None`, then the inner
    /// content type `kind` and the tag.
    fn protect(&mut self, kind: u8, from: Option<&[u8]>, end: usize) -> Result<(), RecordError> {
        let nonce = self.keys.next_nonce()?;
        let (head, rest) = self.out[self.filled..end].split_at_mut(HEADER);
        // The record holds the plaintext, its content type and the tag.
        let (body, extra_and_tag) = rest.split_at_mut(rest.len() - 1 - TAG);
        let aad = Aad::from(&*head);
        let key = &self.keys.key;
        match from {
            Some(plaintext) => {
                key.seal_out_of_place_scatter(nonce, aad, plaintext, body, &[kind], extra_and_tag)
            }
            None => key.seal_in_place_scatter(nonce, aad, body, &[kind], extra_and_tag),
        }
        .map_err(|_| RecordError::Keys)?;
        self.filled = end;
        Ok(())
    }

    /// Writes the header of a record of `len` bytes of plaintext at the end of the send buffer
    /// (at `filled`); returns where the record will end.
    fn record(&mut self, len: usize) -> Result<usize, RecordError> {
        let header = self.filled;
        // The plaintext, its inner content type and the tag: at most MAX_PLAINTEXT + 1 + TAG,
        // which fits in u16 and, after at most WRITE_BUFFER of records, in the buffer.
        let protected = len + 1 + TAG;
        let wire = u16::try_from(protected).map_err(|_| RecordError::Oversized(protected))?;
        let end = header + HEADER + protected;
        if len > MAX_PLAINTEXT || end > self.out.len() {
            return Err(RecordError::Oversized(protected));
        }
        let [hi, lo] = wire.to_be_bytes();
        self.out[header..header + HEADER].copy_from_slice(&[CONTENT_APPLICATION_DATA, 3, 3, hi, lo]);
        Ok(end)
    }

    /// Before a record of data: the KeyUpdate the peer asked for, or one of our own when the
    /// key is about to reach the suite's confidentiality limit (one record spare for the
    /// KeyUpdate itself).
    fn update_if_due(&mut self) -> Result<(), RecordError> {
        let due = self.keys.seq.saturating_add(2) >= self.keys.suite.limit;
        if self.update_owed.swap(false, Ordering::AcqRel) || due {
            self.seal(CONTENT_HANDSHAKE, &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0])?;
            self.keys.update()?;
        }
        Ok(())
    }

    /// Writes sealed records to the socket until none is left (or it would block).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.filled {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.sent..self.filled]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.filled = 0;
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Seals `bufs` (as many records as the write buffer takes) and starts sending them.
    fn poll_seal(&mut self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        // The batch before goes to the socket whole before the next is sealed: the buffer
        // never grows or moves what it holds.
        if self.sent < self.filled {
            ready!(self.poll_send(cx))?;
        }
        let (mut slice, mut offset, mut taken) = (0, 0, 0);
        while taken < total && self.filled < WRITE_BUFFER {
            self.update_if_due()?;
            let want = MAX_PLAINTEXT.min(total - taken);
            // Skip empty pieces, so that a record within one piece is sealed from there.
            while bufs[slice].len() == offset {
                (slice, offset) = (slice + 1, 0);
            }
            match bufs[slice].get(offset..offset + want) {
                Some(plaintext) => {
                    self.seal(CONTENT_APPLICATION_DATA, plaintext)?;
                    offset += want;
                }
                None => self.seal_gathered(bufs, &mut slice, &mut offset, want)?,
            }
            taken += want;
        }
        // Start on the socket now; what it does not take goes with the next write or flush.
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }
}

impl AsyncWrite for Writer {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_seal(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_seal(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            this.seal(CONTENT_ALERT, &[1, ALERT_CLOSE_NOTIFY])?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
