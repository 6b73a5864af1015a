//! The session-script byte format, decoder and encoder.
//!
//! A hand-rolled format rather than `arbitrary`, so seed scripts can be written exactly (see
//! `examples/gen_seeds.rs`) and stay valid as the harness grows. Decoding never fails: a
//! script ends where its bytes run out, and every byte value means something.
//!
//! ```text
//! script := arena:num setup setup op*
//! setup  := flags:u8 quota:num max_buffers:u8 max_payload:num handshake_ms:num idle_ms:num
//!           nonce_seed:[u8; 4]        flags bit 0: AUTH required, bit 1: the node serves models
//! op     := code:u8 (code % 8 picks)
//!           0 REQUEST     who:u8 seq:u16 req
//!           1 RAW         who:u8 kind:u8 flags:u8 seq:u16 len:num payload:[u8; len]
//!           2 FRAME_ERROR who:u8 variant:u8
//!           3 ADVANCE     who:u8 ms:num               who % 3 == 2: both sessions
//!           4 DEADLINE    who:u8                      jump to the session's poll_timeout
//!           5 ABORT       who:u8
//!           6 CLOSE_WITH  who:u8 code:u16
//!           7 REOPEN      who:u8 setup                replaces a closed session
//! req    := tag:u8 (tag % 20 picks)
//!           0 HELLO min:u16 max:u16 caps:u32   1 AUTH (correct tag)   2 AUTH bad:u8
//!           3 PING len:u8 data                 4 DEVICE_INFO  5 STATS  6 BYE
//!           7 ALLOC size:num                   8 FREE h
//!           9 WRITE h offset:num len:num data  10 READ h offset:num len:num
//!           11 COPY src:h src_off:num dst:h dst_off:num len:num
//!           12 FILL h offset:num len:num value:u8
//!           13 DISPATCH kernel:u16 reserved:u16 a:h b:h out:h m:num k:num n:num alpha:u32
//!           14 MODEL_LOAD name:u8              15 MODEL_UNLOAD m
//!           16 INFER m count:u8 (len:u8 data)*count         texts need not be UTF-8
//!           17 MODEL_UPLOAD size:num base:u8
//!           18 MODEL_CHUNK at len:num data     19 MODEL_COMMIT
//! h      := sel:u8 (sel % 4)  0 own idx:u8 | 1 other session's idx:u8 | 2 retired idx:u8
//!                             | 3 raw:u32
//! m      := sel:u8 (sel % 4)  0 own idx:u8 | 1 other session's idx:u8 | 2 unloaded idx:u8
//!                             | 3 raw:u32                               (model ids, like h)
//! at     := sel:u8 (sel % 4)  0 next (the bytes received so far) | 1 ahead d:num
//!                             | 2 behind d:num | 3 raw offset:num
//! name   := n % 5 indexes MODEL_NAMES: tiny, wide, rogue, unknown, invalid
//! num    := b:u8  b < 0xFD: b | 0xFD u16 | 0xFE u32 | 0xFF u64      (integers little-endian)
//! ```
//!
//! Byte strings (`data`, `payload`) shorter than their length take what is left.

/// Model names a MODEL_LOAD or MODEL_UPLOAD can pick (`name % 5`): two models the harness's
/// model host serves, one it serves while ignoring its budget, a well-formed name it does not
/// know, and a name the wire format rejects.
pub const MODEL_NAMES: [&str; 5] = ["tiny", "wide", "rogue", "unknown-model", ".hidden"];

/// A session's configuration, as a script gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// Whether AUTH is required (with [`crate::AUTH_TOKEN`]).
    pub auth: bool,
    /// Whether the node serves models (MODEL_* and INFER go to the harness's model host).
    pub models: bool,
    /// Session quota in bytes.
    pub quota: u64,
    /// Most buffers.
    pub max_buffers: u8,
    /// Largest payload; the harness clamps it to its output buffer.
    pub max_payload: u64,
    /// Handshake timeout in milliseconds.
    pub handshake_ms: u64,
    /// Idle timeout in milliseconds (0 disables it).
    pub idle_ms: u64,
    /// First four nonce bytes (they seed the handle sequence); the rest is derived.
    pub nonce_seed: [u8; 4],
}

/// Which handle a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleRef {
    /// The `n`-th (mod count) live handle of the requesting session.
    Own(u8),
    /// The `n`-th live handle of the *other* session: must never resolve here.
    Other(u8),
    /// The `n`-th handle this session has freed or lost: must never resolve again.
    Retired(u8),
    /// Any value.
    Raw(u32),
}

/// Which model id a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelRef {
    /// The `n`-th (mod count) loaded model of the requesting session.
    Own(u8),
    /// The `n`-th loaded model of the *other* session: must never resolve here.
    Other(u8),
    /// The `n`-th model this session has unloaded or lost: must never resolve again.
    Retired(u8),
    /// Any value.
    Raw(u32),
}

/// Where a MODEL_CHUNK says its data goes, relative to the bytes the upload has received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkAt {
    /// Exactly the bytes received so far (the only offset the node accepts).
    Next,
    /// `1 + d` bytes past it (a gap).
    Ahead(u64),
    /// `1 + d` bytes before it (a resend), wrapping below zero.
    Behind(u64),
    /// Any offset.
    Raw(u64),
}

/// The texts of an INFER: `count` entries of `len:u8 data`, as the script holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Texts<'a> {
    count: u8,
    raw: &'a [u8],
}

impl<'a> Texts<'a> {
    /// Texts in their script encoding (`len:u8 data` each, at most 255 texts of 255 bytes).
    pub fn encode(texts: &[&[u8]]) -> Vec<u8> {
        let mut raw = Vec::new();
        for t in texts.iter().take(255) {
            let t = &t[..t.len().min(255)];
            raw.push(t.len() as u8);
            raw.extend_from_slice(t);
        }
        raw
    }

    /// Texts over `raw`, an output of [`Texts::encode`].
    pub fn new(raw: &'a [u8]) -> Self {
        let count = Self { count: u8::MAX, raw }.iter().count() as u8;
        Self { count, raw }
    }

    /// The texts, in order (the last may be shorter than its length byte says).
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut c = Cursor { buf: self.raw };
        (0..self.count).map_while(move |_| {
            let n = c.u8()?;
            Some(c.take_up_to(u64::from(n)))
        })
    }
}

/// A structurally valid request, built from script fields (model names and texts may still be
/// ones the wire format rejects).
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub enum Req<'a> {
    Hello {
        min: u16,
        max: u16,
        caps: u32,
    },
    /// AUTH with the correct tag for this session's nonce.
    AuthGood,
    /// AUTH with a tag of 32 copies of a byte.
    AuthBad(u8),
    Ping(&'a [u8]),
    DeviceInfo,
    Stats,
    Bye,
    Alloc(u64),
    Free(HandleRef),
    Write {
        h: HandleRef,
        offset: u64,
        data: &'a [u8],
    },
    Read {
        h: HandleRef,
        offset: u64,
        len: u64,
    },
    Copy {
        src: HandleRef,
        src_offset: u64,
        dst: HandleRef,
        dst_offset: u64,
        len: u64,
    },
    Fill {
        h: HandleRef,
        offset: u64,
        len: u64,
        value: u8,
    },
    Dispatch {
        kernel: u16,
        reserved: u16,
        a: HandleRef,
        b: HandleRef,
        out: HandleRef,
        m: u64,
        k: u64,
        n: u64,
        alpha_bits: u32,
    },
    /// MODEL_LOAD of `MODEL_NAMES[name % 5]`.
    ModelLoad {
        name: u8,
    },
    ModelUnload(ModelRef),
    Infer {
        m: ModelRef,
        texts: Texts<'a>,
    },
    /// MODEL_UPLOAD of `size` bytes like `MODEL_NAMES[base % 5]`.
    ModelUpload {
        size: u64,
        base: u8,
    },
    ModelChunk {
        at: ChunkAt,
        data: &'a [u8],
    },
    ModelCommit,
}

/// One script step. `who` picks a session (`who & 1`), except for [`Op::Advance`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub enum Op<'a> {
    Request {
        who: u8,
        seq: u16,
        req: Req<'a>,
    },
    Raw {
        who: u8,
        kind: u8,
        flags: u8,
        seq: u16,
        payload: &'a [u8],
    },
    FrameError {
        who: u8,
        variant: u8,
    },
    /// Advance the clock by `ms` milliseconds and fire timers of session `who % 3` (2: both).
    Advance {
        who: u8,
        ms: u64,
    },
    /// Jump the clock to the session's `poll_timeout` (if later) and fire both sessions' timers.
    Deadline {
        who: u8,
    },
    Abort {
        who: u8,
    },
    CloseWith {
        who: u8,
        code: u16,
    },
    Reopen {
        who: u8,
        setup: Setup,
    },
}

/// A decoded script header plus an iterator over its operations.
#[derive(Debug, Clone)]
pub struct Script<'a> {
    /// Backend arena size in bytes (the harness clamps it).
    pub arena: u64,
    /// The two sessions' configurations.
    pub setups: [Setup; 2],
    ops: Cursor<'a>,
}

impl<'a> Script<'a> {
    /// Decodes a script header. `None` if the input is too short to hold one.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let mut c = Cursor { buf: data };
        let arena = c.num()?;
        let setups = [c.setup()?, c.setup()?];
        Some(Self { arena, setups, ops: c })
    }
}

impl<'a> Iterator for Script<'a> {
    type Item = Op<'a>;

    fn next(&mut self) -> Option<Op<'a>> {
        self.ops.op()
    }
}

#[derive(Debug, Clone)]
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (h, t) = self.buf.split_at(n);
        self.buf = t;
        Some(h)
    }

    fn take_up_to(&mut self, n: u64) -> &'a [u8] {
        let n = usize::try_from(n).unwrap_or(usize::MAX).min(self.buf.len());
        let (h, t) = self.buf.split_at(n);
        self.buf = t;
        h
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }

    fn num(&mut self) -> Option<u64> {
        match self.u8()? {
            0xFD => self.u16().map(u64::from),
            0xFE => self.u32().map(u64::from),
            0xFF => self.u64(),
            b => Some(u64::from(b)),
        }
    }

    fn setup(&mut self) -> Option<Setup> {
        let flags = self.u8()?;
        Some(Setup {
            auth: flags & 1 != 0,
            models: flags & 2 != 0,
            quota: self.num()?,
            max_buffers: self.u8()?,
            max_payload: self.num()?,
            handshake_ms: self.num()?,
            idle_ms: self.num()?,
            nonce_seed: [self.u8()?, self.u8()?, self.u8()?, self.u8()?],
        })
    }

    fn handle(&mut self) -> Option<HandleRef> {
        Some(match self.u8()? % 4 {
            0 => HandleRef::Own(self.u8()?),
            1 => HandleRef::Other(self.u8()?),
            2 => HandleRef::Retired(self.u8()?),
            _ => HandleRef::Raw(self.u32()?),
        })
    }

    fn model(&mut self) -> Option<ModelRef> {
        Some(match self.u8()? % 4 {
            0 => ModelRef::Own(self.u8()?),
            1 => ModelRef::Other(self.u8()?),
            2 => ModelRef::Retired(self.u8()?),
            _ => ModelRef::Raw(self.u32()?),
        })
    }

    fn chunk_at(&mut self) -> Option<ChunkAt> {
        Some(match self.u8()? % 4 {
            0 => ChunkAt::Next,
            1 => ChunkAt::Ahead(self.num()?),
            2 => ChunkAt::Behind(self.num()?),
            _ => ChunkAt::Raw(self.num()?),
        })
    }

    fn texts(&mut self) -> Option<Texts<'a>> {
        let count = self.u8()?;
        let start = self.buf;
        for _ in 0..count {
            let n = self.u8()?;
            self.take_up_to(u64::from(n));
        }
        let raw = &start[..start.len() - self.buf.len()];
        Some(Texts { count, raw })
    }

    fn req(&mut self) -> Option<Req<'a>> {
        Some(match self.u8()? % 20 {
            0 => Req::Hello { min: self.u16()?, max: self.u16()?, caps: self.u32()? },
            1 => Req::AuthGood,
            2 => Req::AuthBad(self.u8()?),
            3 => {
                let n = self.u8()?;
                Req::Ping(self.take_up_to(u64::from(n)))
            }
            4 => Req::DeviceInfo,
            5 => Req::Stats,
            6 => Req::Bye,
            7 => Req::Alloc(self.num()?),
            8 => Req::Free(self.handle()?),
            9 => {
                let (h, offset, len) = (self.handle()?, self.num()?, self.num()?);
                Req::Write { h, offset, data: self.take_up_to(len) }
            }
            10 => Req::Read { h: self.handle()?, offset: self.num()?, len: self.num()? },
            11 => Req::Copy {
                src: self.handle()?,
                src_offset: self.num()?,
                dst: self.handle()?,
                dst_offset: self.num()?,
                len: self.num()?,
            },
            12 => Req::Fill { h: self.handle()?, offset: self.num()?, len: self.num()?, value: self.u8()? },
            13 => Req::Dispatch {
                kernel: self.u16()?,
                reserved: self.u16()?,
                a: self.handle()?,
                b: self.handle()?,
                out: self.handle()?,
                m: self.num()?,
                k: self.num()?,
                n: self.num()?,
                alpha_bits: self.u32()?,
            },
            14 => Req::ModelLoad { name: self.u8()? },
            15 => Req::ModelUnload(self.model()?),
            16 => Req::Infer { m: self.model()?, texts: self.texts()? },
            17 => Req::ModelUpload { size: self.num()?, base: self.u8()? },
            18 => {
                let (at, len) = (self.chunk_at()?, self.num()?);
                Req::ModelChunk { at, data: self.take_up_to(len) }
            }
            _ => Req::ModelCommit,
        })
    }

    fn op(&mut self) -> Option<Op<'a>> {
        Some(match self.u8()? % 8 {
            0 => Op::Request { who: self.u8()?, seq: self.u16()?, req: self.req()? },
            1 => {
                let (who, kind, flags, seq, len) =
                    (self.u8()?, self.u8()?, self.u8()?, self.u16()?, self.num()?);
                Op::Raw { who, kind, flags, seq, payload: self.take_up_to(len) }
            }
            2 => Op::FrameError { who: self.u8()?, variant: self.u8()? },
            3 => Op::Advance { who: self.u8()?, ms: self.num()? },
            4 => Op::Deadline { who: self.u8()? },
            5 => Op::Abort { who: self.u8()? },
            6 => Op::CloseWith { who: self.u8()?, code: self.u16()? },
            _ => Op::Reopen { who: self.u8()?, setup: self.setup()? },
        })
    }
}

/// Encodes scripts in the format above (the inverse of [`Script::parse`] and its iterator).
#[derive(Debug, Clone, Default)]
pub struct ScriptWriter {
    buf: Vec<u8>,
}

impl ScriptWriter {
    /// Starts a script with an arena size and two session setups.
    pub fn new(arena: u64, setups: [Setup; 2]) -> Self {
        let mut w = Self { buf: Vec::new() };
        w.num(arena);
        for s in setups {
            w.setup(s);
        }
        w
    }

    /// Appends an operation.
    pub fn op(&mut self, op: Op<'_>) -> &mut Self {
        match op {
            Op::Request { who, seq, req } => {
                self.buf.extend([0, who]);
                self.buf.extend(seq.to_le_bytes());
                self.req(req);
            }
            Op::Raw { who, kind, flags, seq, payload } => {
                self.buf.extend([1, who, kind, flags]);
                self.buf.extend(seq.to_le_bytes());
                self.num(payload.len() as u64);
                self.buf.extend(payload);
            }
            Op::FrameError { who, variant } => self.buf.extend([2, who, variant]),
            Op::Advance { who, ms } => {
                self.buf.extend([3, who]);
                self.num(ms);
            }
            Op::Deadline { who } => self.buf.extend([4, who]),
            Op::Abort { who } => self.buf.extend([5, who]),
            Op::CloseWith { who, code } => {
                self.buf.extend([6, who]);
                self.buf.extend(code.to_le_bytes());
            }
            Op::Reopen { who, setup } => {
                self.buf.extend([7, who]);
                self.setup(setup);
            }
        }
        self
    }

    /// The encoded script.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    fn num(&mut self, v: u64) {
        if v < 0xFD {
            self.buf.push(v as u8);
        } else if let Ok(v) = u16::try_from(v) {
            self.buf.push(0xFD);
            self.buf.extend(v.to_le_bytes());
        } else if let Ok(v) = u32::try_from(v) {
            self.buf.push(0xFE);
            self.buf.extend(v.to_le_bytes());
        } else {
            self.buf.push(0xFF);
            self.buf.extend(v.to_le_bytes());
        }
    }

    fn setup(&mut self, s: Setup) {
        self.buf.push(u8::from(s.auth) | u8::from(s.models) << 1);
        self.num(s.quota);
        self.buf.push(s.max_buffers);
        self.num(s.max_payload);
        self.num(s.handshake_ms);
        self.num(s.idle_ms);
        self.buf.extend(s.nonce_seed);
    }

    fn handle(&mut self, h: HandleRef) {
        match h {
            HandleRef::Own(i) => self.buf.extend([0, i]),
            HandleRef::Other(i) => self.buf.extend([1, i]),
            HandleRef::Retired(i) => self.buf.extend([2, i]),
            HandleRef::Raw(v) => {
                self.buf.push(3);
                self.buf.extend(v.to_le_bytes());
            }
        }
    }

    fn model(&mut self, m: ModelRef) {
        match m {
            ModelRef::Own(i) => self.buf.extend([0, i]),
            ModelRef::Other(i) => self.buf.extend([1, i]),
            ModelRef::Retired(i) => self.buf.extend([2, i]),
            ModelRef::Raw(v) => {
                self.buf.push(3);
                self.buf.extend(v.to_le_bytes());
            }
        }
    }

    fn req(&mut self, r: Req<'_>) {
        match r {
            Req::Hello { min, max, caps } => {
                self.buf.push(0);
                self.buf.extend(min.to_le_bytes());
                self.buf.extend(max.to_le_bytes());
                self.buf.extend(caps.to_le_bytes());
            }
            Req::AuthGood => self.buf.push(1),
            Req::AuthBad(b) => self.buf.extend([2, b]),
            Req::Ping(d) => {
                let d = &d[..d.len().min(255)];
                self.buf.extend([3, d.len() as u8]);
                self.buf.extend(d);
            }
            Req::DeviceInfo => self.buf.push(4),
            Req::Stats => self.buf.push(5),
            Req::Bye => self.buf.push(6),
            Req::Alloc(size) => {
                self.buf.push(7);
                self.num(size);
            }
            Req::Free(h) => {
                self.buf.push(8);
                self.handle(h);
            }
            Req::Write { h, offset, data } => {
                self.buf.push(9);
                self.handle(h);
                self.num(offset);
                self.num(data.len() as u64);
                self.buf.extend(data);
            }
            Req::Read { h, offset, len } => {
                self.buf.push(10);
                self.handle(h);
                self.num(offset);
                self.num(len);
            }
            Req::Copy { src, src_offset, dst, dst_offset, len } => {
                self.buf.push(11);
                self.handle(src);
                self.num(src_offset);
                self.handle(dst);
                self.num(dst_offset);
                self.num(len);
            }
            Req::Fill { h, offset, len, value } => {
                self.buf.push(12);
                self.handle(h);
                self.num(offset);
                self.num(len);
                self.buf.push(value);
            }
            Req::Dispatch { kernel, reserved, a, b, out, m, k, n, alpha_bits } => {
                self.buf.push(13);
                self.buf.extend(kernel.to_le_bytes());
                self.buf.extend(reserved.to_le_bytes());
                self.handle(a);
                self.handle(b);
                self.handle(out);
                self.num(m);
                self.num(k);
                self.num(n);
                self.buf.extend(alpha_bits.to_le_bytes());
            }
            Req::ModelLoad { name } => self.buf.extend([14, name]),
            Req::ModelUnload(m) => {
                self.buf.push(15);
                self.model(m);
            }
            Req::Infer { m, texts } => {
                self.buf.push(16);
                self.model(m);
                self.buf.push(texts.count);
                self.buf.extend(texts.raw);
            }
            Req::ModelUpload { size, base } => {
                self.buf.push(17);
                self.num(size);
                self.buf.push(base);
            }
            Req::ModelChunk { at, data } => {
                self.buf.push(18);
                match at {
                    ChunkAt::Next => self.buf.push(0),
                    ChunkAt::Ahead(d) => {
                        self.buf.push(1);
                        self.num(d);
                    }
                    ChunkAt::Behind(d) => {
                        self.buf.push(2);
                        self.num(d);
                    }
                    ChunkAt::Raw(v) => {
                        self.buf.push(3);
                        self.num(v);
                    }
                }
                self.num(data.len() as u64);
                self.buf.extend(data);
            }
            Req::ModelCommit => self.buf.push(19),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_and_parser_agree() {
        let s = Setup {
            auth: true,
            models: true,
            quota: 70_000,
            max_buffers: 4,
            max_payload: 1 << 40,
            handshake_ms: 253,
            idle_ms: 0,
            nonce_seed: [1, 2, 3, 4],
        };
        let texts = Texts::encode(&[b"a", b"", "h\u{e9}llo".as_bytes()]);
        let ops = [
            Op::Request { who: 1, seq: 9, req: Req::Hello { min: 1, max: 1, caps: 1 } },
            Op::Request {
                who: 0,
                seq: 2,
                req: Req::Write { h: HandleRef::Raw(7), offset: 300, data: b"abc" },
            },
            Op::Request {
                who: 0,
                seq: 3,
                req: Req::Dispatch {
                    kernel: 4,
                    reserved: 0,
                    a: HandleRef::Own(0),
                    b: HandleRef::Other(1),
                    out: HandleRef::Retired(2),
                    m: 2,
                    k: u64::MAX,
                    n: 70_000,
                    alpha_bits: 5,
                },
            },
            Op::Raw { who: 0, kind: 0x12, flags: 4, seq: 1, payload: b"xyz" },
            Op::Request { who: 1, seq: 4, req: Req::ModelLoad { name: 7 } },
            Op::Request { who: 1, seq: 5, req: Req::ModelUnload(ModelRef::Raw(0xDEAD_BEEF)) },
            Op::Request {
                who: 0,
                seq: 6,
                req: Req::Infer { m: ModelRef::Other(3), texts: Texts::new(&texts) },
            },
            Op::Request { who: 0, seq: 7, req: Req::ModelUpload { size: 1 << 33, base: 1 } },
            Op::Request { who: 0, seq: 8, req: Req::ModelChunk { at: ChunkAt::Behind(300), data: b"RELW" } },
            Op::Request { who: 0, seq: 9, req: Req::ModelChunk { at: ChunkAt::Next, data: b"" } },
            Op::Request { who: 0, seq: 10, req: Req::ModelCommit },
            Op::Advance { who: 2, ms: 10_000 },
            Op::Reopen { who: 1, setup: s },
        ];
        let mut w = ScriptWriter::new(65536, [s, s]);
        for op in ops {
            w.op(op);
        }
        let bytes = w.finish();
        let script = Script::parse(&bytes).expect("header");
        assert_eq!((script.arena, script.setups), (65536, [s, s]));
        assert_eq!(script.collect::<Vec<_>>(), ops);
    }

    #[test]
    fn old_tags_and_setup_flags_decode_as_before() {
        // A pre-model setup byte (AUTH only) and a tag-7 ALLOC.
        let bytes = [0x40, 1, 10, 2, 20, 5, 0, 1, 2, 3, 4, 0, 10, 2, 20, 5, 0, 1, 2, 3, 4, 0, 1, 3, 0, 7, 9];
        let script = Script::parse(&bytes).expect("header");
        assert!(script.setups[0].auth && !script.setups[0].models && !script.setups[1].auth);
        let ops: Vec<_> = script.collect();
        assert_eq!(ops, [Op::Request { who: 1, seq: 3, req: Req::Alloc(9) }]);
    }

    #[test]
    fn texts_round_trip_and_truncate() {
        let raw = Texts::encode(&[b"xy", b"", b"z"]);
        let t = Texts::new(&raw);
        assert_eq!(t.iter().collect::<Vec<_>>(), [&b"xy"[..], b"", b"z"]);
        // A script that ends inside the last text keeps what is there.
        let mut c = Cursor { buf: &[3, 2, b'x', b'y', 0, 5, b'z'] };
        let t = c.texts().expect("three length bytes are present");
        assert_eq!(t.iter().collect::<Vec<_>>(), [&b"xy"[..], b"", b"z"]);
    }
}
