//! Writes the committed seed corpora, `fuzz/corpus/<target>/seed-*`, with the core's own
//! encoders so the seeds stay valid as the protocol evolves.
//!
//! ```text
//! cargo +nightly run --manifest-path fuzz/Cargo.toml --example gen_seeds
//! ```
//!
//! Existing `seed-*` files of each target are replaced; other corpus files are left alone.

use std::fs;
use std::path::{Path, PathBuf};

use rela_core::auth::AuthKey;
use rela_core::backend::{BackendKind, KernelId};
use rela_core::config::{HEADER_LEN, MAX_PAYLOAD};
use rela_core::crc32::SoftCrc32;
use rela_core::discovery::{Announce, Discover};
use rela_core::wire::generate::{FinishReason, Generate, Generated, Prompt, Sampling, TokenMsg};
use rela_core::wire::msg::{self, Caps, DeviceInfoMsg, ErrorMsg, Message, Request};
use rela_core::wire::{ErrorCode, Flags, Kind, encode_frame};
use rela_fuzz::harness::host::{MAX_STAGED, UPLOAD_MAGIC};
use rela_fuzz::script::{ChunkAt, HandleRef, ModelRef, Op, Req, ScriptWriter, Setup, Texts};
use rela_fuzz::{AUTH_TOKEN, DISCOVERY_TOKEN};

struct Corpus {
    dir: PathBuf,
}

impl Corpus {
    fn new(root: &Path, target: &str) -> Self {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        for e in fs::read_dir(&dir).expect("read corpus dir") {
            let p = e.expect("dir entry").path();
            if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seed-")) {
                fs::remove_file(p).expect("remove old seed");
            }
        }
        Self { dir }
    }

    fn put(&self, name: &str, bytes: &[u8]) {
        fs::write(self.dir.join(format!("seed-{name}")), bytes).expect("write seed");
    }
}

fn emit<'a, M: Message<'a>>(m: &M) -> Vec<u8> {
    let mut buf = vec![0u8; m.buffer_len()];
    let n = m.emit(&mut buf).expect("seed message encodes");
    buf.truncate(n);
    buf
}

fn frame(kind: Kind, flags: Flags, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + payload.len()];
    encode_frame::<SoftCrc32>(&mut buf, kind, flags, seq, payload).expect("seed frame encodes").to_vec()
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A GENERATE payload with sampling settings that exercise every field.
fn generate(prompt: Prompt<'_>, stops: &[&str]) -> Vec<u8> {
    let sampling = Sampling { temperature: 0.7, top_k: 40, top_p: 0.9, seed: 42 };
    let mut p = vec![0u8; 512];
    let n = Generate::emit_parts(1, 32, &sampling, prompt, stops, &mut p).expect("fits");
    p.truncate(n);
    p
}

/// One valid payload of every request kind, plus an unknown kind.
fn requests() -> Vec<(&'static str, Kind, Vec<u8>)> {
    let dispatch = |kernel, b, m, k, n, alpha: f32| msg::Dispatch {
        kernel,
        reserved: 0,
        a: 0x1111,
        b,
        out: 0x3333,
        m,
        k,
        n,
        alpha,
    };
    let write = msg::Write { handle: 0x9E37_79B9, offset: 4, data: b"payload bytes" };
    vec![
        ("hello", Kind::HELLO, emit(&msg::Hello { min_version: 1, max_version: 1, caps: Caps::DISPATCH })),
        ("auth", Kind::AUTH, emit(&msg::Auth { mac: AuthKey::new(AUTH_TOKEN).auth_tag(&[7; 32]) })),
        ("ping", Kind::PING, emit(&msg::Ping { data: b"are you there?" })),
        ("device_info", Kind::DEVICE_INFO, Vec::new()),
        ("stats", Kind::STATS, Vec::new()),
        ("bye", Kind::BYE, Vec::new()),
        ("alloc", Kind::ALLOC, emit(&msg::Alloc { size: 4096 })),
        ("free", Kind::FREE, emit(&msg::Free { handle: 0x9E37_79B9 })),
        ("write", Kind::WRITE, emit(&write)),
        ("read", Kind::READ, emit(&msg::Read { handle: 0x9E37_79B9, offset: 0, len: 64 })),
        (
            "copy",
            Kind::COPY,
            emit(&msg::Copy { src: 0x1111, src_offset: 0, dst: 0x2222, dst_offset: 8, len: 32 }),
        ),
        ("fill", Kind::FILL, emit(&msg::Fill { handle: 0x1111, offset: 2, len: 10, value: 0xAB })),
        ("dispatch-add", Kind::DISPATCH, emit(&dispatch(KernelId::ADD, 0x2222, 0, 0, 16, 0.0))),
        ("dispatch-mul", Kind::DISPATCH, emit(&dispatch(KernelId::MUL, 0x2222, 0, 0, 16, 0.0))),
        ("dispatch-scale", Kind::DISPATCH, emit(&dispatch(KernelId::SCALE, 0, 0, 0, 16, 2.5))),
        ("dispatch-matmul", Kind::DISPATCH, emit(&dispatch(KernelId::MATMUL, 0x2222, 2, 3, 4, 0.0))),
        ("model_load", Kind::MODEL_LOAD, emit(&msg::ModelLoad { name: "all-MiniLM-L6-v2" })),
        ("model_unload", Kind::MODEL_UNLOAD, emit(&msg::ModelUnload { model: 1 })),
        ("infer", Kind::INFER, {
            let texts = ["hello", "wörld"];
            let mut p = vec![0u8; msg::Infer::encoded_len(&texts)];
            let n = msg::Infer::emit_texts(1, &texts, &mut p).expect("fits");
            p.truncate(n);
            p
        }),
        (
            "model_upload",
            Kind::MODEL_UPLOAD,
            emit(&msg::ModelUpload { size: 4096, base: "all-MiniLM-L6-v2" }),
        ),
        (
            "model_chunk",
            Kind::MODEL_CHUNK,
            emit(&msg::ModelChunk { offset: 0, data: b"\x08\0\0\0\0\0\0\0{}      " }),
        ),
        ("model_commit", Kind::MODEL_COMMIT, Vec::new()),
        ("generate-text", Kind::GENERATE, generate(Prompt::Text("The capital of France is"), &["\n\n"])),
        (
            "generate-chat",
            Kind::GENERATE,
            generate(Prompt::Messages(&[("system", "Be brief."), ("user", "Hi ✓")]), &[]),
        ),
        ("generate-tokens", Kind::GENERATE, generate(Prompt::Tokens(&[1, 9690, 198]), &["a", "bc"])),
        ("cancel", Kind::CANCEL, Vec::new()),
        ("unknown", Kind(0x55), b"??".to_vec()),
    ]
}

/// A TOKEN payload.
fn token(prompt: bool, ids: &[u32], text: &str) -> Vec<u8> {
    let mut p = vec![0u8; TokenMsg::encoded_len(ids.len(), text.len())];
    let n = TokenMsg::emit_parts(prompt, ids, text, &mut p).expect("fits");
    p.truncate(n);
    p
}

/// One valid payload of every response, with its kind and flags.
fn responses() -> Vec<(&'static str, Kind, Flags, Vec<u8>)> {
    let r = Flags::RESPONSE;
    let welcome = msg::Welcome {
        version: 1,
        flags: msg::WELCOME_AUTH_REQUIRED,
        caps: Caps::DISPATCH,
        max_payload: MAX_PAYLOAD,
        max_buffers: 64,
        quota: 256 << 20,
        handshake_timeout_ms: 10_000,
        idle_timeout_ms: 300_000,
        nonce: [0x42; 32],
    };
    let info = DeviceInfoMsg {
        backend: BackendKind::HOST,
        total: 1 << 20,
        free: 1 << 19,
        max_alloc: 1 << 20,
        name: "host memory",
        vendor: "vram-relay",
        shared_models: Some(0),
    };
    let stats = msg::Stats {
        buffers: 2,
        max_buffers: 64,
        used: 8192,
        quota: 1 << 20,
        frames_in: 9,
        bytes_in: 300,
        bytes_out: 4000,
        shared_models: Some(0),
    };
    let error =
        ErrorMsg { code: ErrorCode::NO_SUCH_BUFFER, request_kind: Kind::READ, reason: "no such buffer" };
    let mut v = vec![
        ("welcome", Kind::HELLO, r, emit(&welcome)),
        ("pong", Kind::PING, r, b"are you there?".to_vec()),
        ("device_info", Kind::DEVICE_INFO, r, emit(&info)),
        ("stats", Kind::STATS, r, emit(&stats)),
        ("allocated", Kind::ALLOC, r, emit(&msg::Allocated { handle: 0x9E37_79B9, size: 4096 })),
        ("data", Kind::READ, r, b"bytes read back".to_vec()),
        ("error", Kind::ERROR, ErrorMsg::flags(), emit(&error)),
        (
            "model_loaded",
            Kind::MODEL_LOAD,
            r,
            emit(&msg::ModelLoaded { model: 1, dim: 384, bytes: 90_261_504 }),
        ),
        ("embeddings", Kind::INFER, r, {
            let data = f32s(&[0.6, 0.8, 1.0, 0.0]);
            emit(&msg::Embeddings { count: 2, dim: 2, data: &data })
        }),
        (
            "model_committed",
            Kind::MODEL_COMMIT,
            r,
            emit(&msg::ModelLoaded { model: 2, dim: 384, bytes: 90_261_504 }),
        ),
        ("progress", Kind::PROGRESS, r, emit(&msg::Progress { done: 16 << 20, total: 90_261_504 })),
        ("token", Kind::TOKEN, r, token(false, &[28_120, 30], " there.")),
        ("token-prompt", Kind::TOKEN, r, token(true, &[1, 9690, 198], "")),
        ("generated", Kind::GENERATE, r, {
            let g = Generated {
                finish_reason: FinishReason::STOP,
                prompt_tokens: 5,
                generated_tokens: 9,
                prompt_us: 12_000,
                generate_us: 90_000,
            };
            emit(&g)
        }),
        ("unknown", Kind(0x66), r, b"opaque".to_vec()),
    ];
    for (name, kind) in [
        ("ack-auth", Kind::AUTH),
        ("ack-free", Kind::FREE),
        ("ack-write", Kind::WRITE),
        ("ack-copy", Kind::COPY),
        ("ack-fill", Kind::FILL),
        ("ack-dispatch", Kind::DISPATCH),
        ("ack-model_unload", Kind::MODEL_UNLOAD),
        ("ack-model_upload", Kind::MODEL_UPLOAD),
        ("ack-model_chunk", Kind::MODEL_CHUNK),
        ("ack-cancel", Kind::CANCEL),
        ("ack-bye", Kind::BYE),
    ] {
        v.push((name, kind, r, Vec::new()));
    }
    v
}

fn setup(auth: bool, seed: [u8; 4]) -> Setup {
    Setup {
        auth,
        models: false,
        quota: 48 * 1024,
        max_buffers: 8,
        max_payload: 8192,
        handshake_ms: 5_000,
        idle_ms: 60_000,
        nonce_seed: seed,
    }
}

/// A session of a node that serves models.
fn with_models(seed: [u8; 4]) -> Setup {
    Setup { models: true, ..setup(false, seed) }
}

fn req(who: u8, seq: u16, req: Req<'_>) -> Op<'_> {
    Op::Request { who, seq, req }
}

const HELLO: Req<'static> = Req::Hello { min: 1, max: 1, caps: 1 };
const OWN0: HandleRef = HandleRef::Own(0);
const OWN1: HandleRef = HandleRef::Own(1);
const OWN2: HandleRef = HandleRef::Own(2);

/// HELLO asking for DISPATCH and MODELS, and with PROGRESS as well.
const HELLO_MODELS: Req<'static> = Req::Hello { min: 1, max: 1, caps: 0b0011 };
const HELLO_PROGRESS: Req<'static> = Req::Hello { min: 1, max: 1, caps: 0b1011 };
// Indexes into `rela_fuzz::script::MODEL_NAMES`.
const TINY: u8 = 0;
const WIDE: u8 = 1;
const ROGUE: u8 = 2;
const UNKNOWN: u8 = 3;
const INVALID: u8 = 4;
const M0: ModelRef = ModelRef::Own(0);
const M1: ModelRef = ModelRef::Own(1);

fn load(who: u8, seq: u16, name: u8) -> Op<'static> {
    req(who, seq, Req::ModelLoad { name })
}

fn upload(who: u8, seq: u16, size: u64, base: u8) -> Op<'static> {
    req(who, seq, Req::ModelUpload { size, base })
}

fn chunk(who: u8, seq: u16, at: ChunkAt, data: &[u8]) -> Op<'_> {
    req(who, seq, Req::ModelChunk { at, data })
}

fn commit(who: u8, seq: u16) -> Op<'static> {
    req(who, seq, Req::ModelCommit)
}

fn infer(who: u8, seq: u16, m: ModelRef, texts: &[u8]) -> Op<'_> {
    req(who, seq, Req::Infer { m, texts: Texts::new(texts) })
}

/// A raw frame of `kind` from session `who`.
fn raw(who: u8, kind: Kind, seq: u16, payload: &[u8]) -> Op<'_> {
    Op::Raw { who, kind: kind.0, flags: 0, seq, payload }
}

fn script(arena: u64, setups: [Setup; 2], ops: &[Op<'_>]) -> Vec<u8> {
    let mut w = ScriptWriter::new(arena, setups);
    for op in ops {
        w.op(*op);
    }
    w.finish()
}

/// Scripts for the model paths: MODEL_LOAD, MODEL_UNLOAD, INFER, uploads, PROGRESS targets.
fn model_sessions() -> Vec<(&'static str, Vec<u8>)> {
    let three = Texts::encode(&[&b"hello"[..], b"", "w\u{f6}rld".as_bytes()]);
    let one = Texts::encode(&[&b"x"[..]]);
    let nine = Texts::encode(&[&b"t"[..]; 9]);
    let not_utf8 = Texts::encode(&[&b"ok"[..], b"\xFF\xFE"]);
    let none = Texts::encode(&[]);
    let weights: Vec<u8> = UPLOAD_MAGIC.iter().copied().chain(*b"-weights").collect();
    let (head, tail) = weights.split_at(5);
    let mut out = Vec::new();

    // Load, infer and unload on a client that asked for PROGRESS (session 0) and one that did
    // not (session 1); unknown and invalid names; the retired id afterwards.
    out.push((
        "models-load-infer-unload",
        script(
            64 * 1024,
            [with_models([1, 0, 0, 1]), with_models([2, 0, 0, 2])],
            &[
                req(0, 1, HELLO_PROGRESS),
                req(1, 1, HELLO_MODELS),
                load(0, 2, TINY),
                load(0, 3, WIDE),
                load(1, 2, TINY),
                infer(0, 4, M0, &three),
                infer(0, 5, M1, &one),
                infer(0, 6, M0, &none),
                infer(0, 7, M0, &nine),
                infer(0, 8, M0, &not_utf8),
                infer(1, 3, M0, &three),
                load(0, 9, UNKNOWN),
                load(0, 10, INVALID),
                req(0, 11, Req::Stats),
                req(0, 12, Req::ModelUnload(M0)),
                infer(0, 13, ModelRef::Retired(0), &one),
                req(0, 14, Req::ModelUnload(ModelRef::Retired(0))),
                req(0, 15, Req::ModelUnload(ModelRef::Raw(0xDEAD_BEEF))),
                req(0, 16, Req::DeviceInfo),
                req(1, 4, Req::Bye),
            ],
        ),
    ));

    // A complete upload in two chunks, committed and used; PROGRESS asked for.
    out.push((
        "models-upload-commit",
        script(
            64 * 1024,
            [with_models([3, 0, 0, 3]), with_models([4, 0, 0, 4])],
            &[
                req(0, 1, HELLO_PROGRESS),
                upload(0, 2, weights.len() as u64, WIDE),
                req(0, 3, Req::Stats),
                chunk(0, 4, ChunkAt::Next, head),
                chunk(0, 5, ChunkAt::Next, tail),
                commit(0, 6),
                infer(0, 7, M0, &three),
                req(0, 8, Req::Stats),
                commit(0, 9),
            ],
        ),
    ));

    // Uploads the node refuses: weights without the magic (the staging is gone afterwards),
    // an unknown base, a zero size, more than the host stages, more than the quota, and a
    // second upload replacing the first.
    out.push((
        "models-upload-rejected",
        script(
            64 * 1024,
            [with_models([5, 0, 0, 5]), with_models([6, 0, 0, 6])],
            &[
                req(0, 1, HELLO_MODELS),
                upload(0, 2, 8, TINY),
                chunk(0, 3, ChunkAt::Next, b"JUNKJUNK"),
                commit(0, 4),
                chunk(0, 5, ChunkAt::Next, b"x"),
                commit(0, 6),
                upload(0, 7, 8, UNKNOWN),
                upload(0, 8, 8, INVALID),
                upload(0, 9, 0, TINY),
                upload(0, 10, MAX_STAGED + 1, TINY),
                upload(0, 11, 48 * 1024 + 1, TINY),
                upload(0, 12, 900, TINY),
                upload(0, 13, 40, WIDE),
                req(0, 14, Req::Stats),
                upload(0, 15, 8, UNKNOWN),
                req(0, 16, Req::Stats),
            ],
        ),
    ));

    // Chunk order: a gap, a resend, a raw offset, a commit before the end (the upload stays),
    // a chunk past the size, then the rest and a commit.
    let twelve = *b"RELW-12bytes";
    out.push((
        "models-chunk-order",
        script(
            64 * 1024,
            [with_models([7, 0, 0, 7]), with_models([8, 0, 0, 8])],
            &[
                req(0, 1, HELLO_MODELS),
                chunk(0, 2, ChunkAt::Next, b"RELW"),
                upload(0, 3, 12, TINY),
                chunk(0, 4, ChunkAt::Ahead(0), b"x"),
                chunk(0, 5, ChunkAt::Next, &twelve[..4]),
                chunk(0, 6, ChunkAt::Behind(3), &twelve[..4]),
                chunk(0, 7, ChunkAt::Raw(u64::MAX), b"y"),
                commit(0, 8),
                chunk(0, 9, ChunkAt::Next, b"123456789"),
                chunk(0, 10, ChunkAt::Next, b""),
                chunk(0, 11, ChunkAt::Next, &twelve[4..]),
                chunk(0, 12, ChunkAt::Next, b"z"),
                commit(0, 13),
                commit(0, 14),
                infer(0, 15, M0, &one),
            ],
        ),
    ));

    // Model ids of one session used in the other, before and after their owner closes.
    out.push((
        "models-cross-session",
        script(
            64 * 1024,
            [with_models([9, 0, 0, 9]), with_models([9, 0, 0, 9])],
            &[
                req(0, 1, HELLO_MODELS),
                req(1, 1, HELLO_MODELS),
                load(0, 2, TINY),
                load(0, 3, WIDE),
                infer(1, 2, ModelRef::Other(0), &one),
                infer(1, 3, ModelRef::Other(1), &one),
                req(1, 4, Req::ModelUnload(ModelRef::Other(0))),
                req(1, 5, Req::ModelUnload(ModelRef::Raw(1))),
                load(1, 6, TINY),
                infer(0, 4, ModelRef::Other(0), &one),
                infer(0, 5, M0, &one),
                req(0, 6, Req::ModelUnload(M0)),
                infer(1, 7, ModelRef::Other(0), &one),
                req(0, 7, Req::Bye),
                infer(1, 8, M0, &one),
                Op::Reopen { who: 0, setup: with_models([9, 0, 0, 9]) },
                req(0, 1, HELLO_MODELS),
                infer(0, 2, ModelRef::Other(0), &one),
                load(0, 3, TINY),
                infer(1, 9, ModelRef::Other(0), &one),
            ],
        ),
    ));

    // Sessions that close holding models and a staged upload: BYE, abort, close_with, and
    // an idle timeout.
    let mut idle = with_models([11, 0, 0, 11]);
    idle.idle_ms = 1000;
    out.push((
        "models-close-with-staged-upload",
        script(
            64 * 1024,
            [with_models([10, 0, 0, 10]), idle],
            &[
                req(0, 1, HELLO_MODELS),
                req(1, 1, HELLO_PROGRESS),
                load(0, 2, WIDE),
                upload(0, 3, 12, TINY),
                chunk(0, 4, ChunkAt::Next, &twelve[..6]),
                infer(0, 5, M0, &three),
                load(1, 2, TINY),
                upload(1, 3, 100, WIDE),
                req(0, 6, Req::Bye),
                Op::Advance { who: 2, ms: 1000 },
                Op::Reopen { who: 0, setup: with_models([10, 0, 0, 10]) },
                Op::Reopen { who: 1, setup: with_models([11, 0, 0, 11]) },
                req(0, 1, HELLO_MODELS),
                req(1, 1, HELLO_MODELS),
                upload(0, 2, 4, TINY),
                load(0, 3, TINY),
                upload(1, 2, 4, WIDE),
                Op::Abort { who: 0 },
                Op::CloseWith { who: 1, code: ErrorCode::SHUTTING_DOWN.0 },
            ],
        ),
    ));

    // Limits. Session 0: the quota, against an honest model, a rogue host that ignores its
    // budget (the session must refuse and undo) and miscounts INFER's output, a commit and an
    // ALLOC. Session 1: a small
    // payload cap for INFER, the model table (loads, uploads and a commit refused while it is
    // full; the commit keeps its upload), then the arena running out between the two buffers of
    // a model (the host must free the first). Then a node
    // without models.
    let mut small = with_models([12, 0, 0, 12]);
    small.quota = 100;
    let mut narrow = with_models([14, 0, 0, 14]);
    narrow.max_payload = 256;
    let mut no_models = setup(false, [13, 0, 0, 13]);
    no_models.quota = 4096;
    out.push((
        "models-limits",
        script(
            4096,
            [small, narrow],
            &[
                req(0, 1, HELLO_PROGRESS),
                load(0, 2, WIDE),
                load(0, 3, TINY),
                load(0, 4, ROGUE),
                req(0, 5, Req::ModelUnload(M0)),
                load(0, 6, ROGUE),
                infer(0, 7, M0, &one),
                upload(0, 7, 8, TINY),
                chunk(0, 8, ChunkAt::Next, b"RELW1234"),
                commit(0, 9),
                req(0, 10, Req::Alloc(36)),
                req(0, 11, Req::Alloc(1)),
                upload(0, 12, 1, TINY),
                req(1, 1, HELLO_MODELS),
                load(1, 2, WIDE),
                infer(1, 3, M0, &one),
                infer(1, 4, M0, &three),
                load(1, 5, TINY),
                load(1, 6, TINY),
                load(1, 7, TINY),
                load(1, 8, TINY),
                upload(1, 9, 4, TINY),
                req(1, 10, Req::ModelUnload(M0)),
                upload(1, 11, 4, TINY),
                chunk(1, 12, ChunkAt::Next, b"RELW"),
                load(1, 13, TINY),
                commit(1, 14),
                req(1, 15, Req::ModelUnload(M1)),
                commit(1, 16),
                req(1, 17, Req::ModelUnload(M0)),
                req(1, 18, Req::Alloc(256)),
                req(1, 19, Req::Alloc(256)),
                req(1, 20, Req::Alloc(256)),
                req(1, 21, Req::Alloc(256)),
                req(1, 22, Req::Alloc(256)),
                req(1, 23, Req::Alloc(256)),
                req(1, 24, Req::Alloc(256)),
                req(1, 25, Req::Alloc(256)),
                req(1, 26, Req::Free(OWN1)),
                req(1, 27, Req::Free(OWN1)),
                load(1, 28, WIDE),
                req(1, 29, Req::Stats),
                req(0, 13, Req::Bye),
                Op::Reopen { who: 0, setup: no_models },
                req(0, 1, HELLO_PROGRESS),
                load(0, 2, TINY),
                req(0, 3, Req::ModelUnload(M0)),
                infer(0, 4, M0, &one),
                upload(0, 5, 4, TINY),
                chunk(0, 6, ChunkAt::Next, b"RELW"),
                commit(0, 7),
            ],
        ),
    ));

    // Model requests before the handshake, during AUTH, and as raw frames with bad payloads.
    let mut auth = with_models([15, 0, 0, 15]);
    auth.auth = true;
    let bad_name = [7u8, b'.', b'.', b'/', b'e', b't', b'c', b'!'];
    let short_infer = [1u8, 0, 0, 0, 2, 0, 1, 0, b'a'];
    out.push((
        "models-handshake-and-raw",
        script(
            64 * 1024,
            [auth, with_models([16, 0, 0, 16])],
            &[
                load(0, 1, TINY),
                req(0, 2, HELLO_PROGRESS),
                upload(0, 3, 4, TINY),
                commit(0, 4),
                req(0, 5, Req::AuthGood),
                load(0, 6, TINY),
                req(1, 1, HELLO_MODELS),
                Op::Raw { who: 1, kind: Kind::MODEL_LOAD.0, flags: 0, seq: 2, payload: &bad_name },
                Op::Raw { who: 1, kind: Kind::INFER.0, flags: 0, seq: 3, payload: &short_infer },
                Op::Raw { who: 1, kind: Kind::MODEL_COMMIT.0, flags: 0, seq: 4, payload: b"x" },
                Op::Raw {
                    who: 1,
                    kind: Kind::MODEL_LOAD.0,
                    flags: Flags::RESPONSE.0,
                    seq: 5,
                    payload: b"\x04tiny",
                },
                Op::Raw { who: 1, kind: Kind::MODEL_LOAD.0, flags: 0, seq: 6, payload: b"\x04tiny" },
                Op::Raw { who: 1, kind: Kind::MODEL_CHUNK.0, flags: 0, seq: 7, payload: b"\0\0\0" },
            ],
        ),
    ));

    // GENERATE and CANCEL: to a loaded model (the harness's host generates nothing, so
    // UNSUPPORTED), to an unknown one, with max_tokens 0, NaN temperature, an unknown prompt
    // kind and invalid UTF-8; CANCEL with nothing running; before the handshake.
    let sampling = Sampling { temperature: 0.7, top_k: 40, top_p: 0.9, seed: 42 };
    let gen_payload = |model: u32, max: u32, s: &Sampling| {
        let mut p = vec![0u8; 128];
        let n = Generate::emit_parts(model, max, s, Prompt::Text("hi"), &["\n"], &mut p).expect("fits");
        p.truncate(n);
        p
    };
    let good = gen_payload(1, 8, &sampling);
    let unknown = gen_payload(77, 8, &sampling);
    let zero = gen_payload(1, 0, &sampling);
    let nan = gen_payload(1, 8, &Sampling { temperature: f32::NAN, ..sampling });
    let mut odd_kind = good.clone();
    odd_kind[28] = 9;
    let mut bad_utf8 = good.clone();
    bad_utf8[34] = 0xFF;
    out.push((
        "models-generate-cancel",
        script(
            64 * 1024,
            [with_models([5, 0, 0, 5]), with_models([6, 0, 0, 6])],
            &[
                raw(1, Kind::GENERATE, 1, &good),
                raw(1, Kind::CANCEL, 2, b""),
                req(0, 1, HELLO_MODELS),
                load(0, 2, TINY),
                raw(0, Kind::GENERATE, 3, &good),
                raw(0, Kind::GENERATE, 4, &unknown),
                raw(0, Kind::GENERATE, 5, &zero),
                raw(0, Kind::GENERATE, 6, &nan),
                raw(0, Kind::GENERATE, 7, &odd_kind),
                raw(0, Kind::GENERATE, 8, &bad_utf8),
                raw(0, Kind::CANCEL, 9, b""),
                raw(0, Kind::CANCEL, 10, b"x"),
                raw(0, Kind::TOKEN, 11, b"\0\0\0\0\0\0"),
            ],
        ),
    ));
    out
}

fn sessions() -> Vec<(&'static str, Vec<u8>)> {
    let ones = f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let mut out = Vec::new();

    // Every request kind on one session, with the other one idle.
    let mut w = ScriptWriter::new(64 * 1024, [setup(false, [1, 2, 3, 4]), setup(false, [9, 9, 9, 9])]);
    for op in [
        req(0, 1, HELLO),
        req(0, 2, Req::Ping(b"ping")),
        req(0, 3, Req::DeviceInfo),
        req(0, 4, Req::Alloc(24)),
        req(0, 5, Req::Alloc(24)),
        req(0, 6, Req::Alloc(24)),
        req(0, 7, Req::Write { h: OWN0, offset: 0, data: &ones }),
        req(0, 8, Req::Write { h: OWN1, offset: 0, data: &ones }),
        req(
            0,
            9,
            Req::Dispatch {
                kernel: 1,
                reserved: 0,
                a: OWN0,
                b: OWN1,
                out: OWN2,
                m: 0,
                k: 0,
                n: 6,
                alpha_bits: 0,
            },
        ),
        req(
            0,
            10,
            Req::Dispatch {
                kernel: 3,
                reserved: 0,
                a: OWN0,
                b: HandleRef::Raw(0),
                out: OWN2,
                m: 0,
                k: 0,
                n: 6,
                alpha_bits: 2.0f32.to_bits(),
            },
        ),
        req(
            0,
            11,
            Req::Dispatch {
                kernel: 4,
                reserved: 0,
                a: OWN0,
                b: OWN1,
                out: OWN2,
                m: 2,
                k: 3,
                n: 2,
                alpha_bits: 0,
            },
        ),
        req(0, 12, Req::Read { h: OWN2, offset: 0, len: 24 }),
        req(0, 13, Req::Copy { src: OWN0, src_offset: 0, dst: OWN1, dst_offset: 8, len: 16 }),
        req(0, 14, Req::Fill { h: OWN0, offset: 4, len: 8, value: 0x5A }),
        req(0, 15, Req::Read { h: OWN1, offset: 0, len: 24 }),
        req(0, 16, Req::Read { h: OWN0, offset: 0, len: 24 }),
        req(0, 17, Req::Stats),
        req(0, 18, Req::Free(OWN1)),
        req(0, 19, Req::Read { h: HandleRef::Retired(0), offset: 0, len: 1 }),
        req(0, 20, Req::Bye),
    ] {
        w.op(op);
    }
    out.push(("all-requests", w.finish()));

    // Two authenticated sessions, with distinct and with colliding handle sequences (same
    // nonce seed): each must only ever see its own buffers.
    let isolation = [
        req(0, 1, HELLO),
        req(0, 2, Req::AuthGood),
        req(1, 1, HELLO),
        req(1, 2, Req::AuthGood),
        req(0, 3, Req::Alloc(300)),
        req(1, 3, Req::Alloc(300)),
        req(0, 4, Req::Fill { h: OWN0, offset: 0, len: 300, value: 0xEE }),
        req(1, 4, Req::Read { h: OWN0, offset: 0, len: 300 }),
        req(1, 5, Req::Write { h: HandleRef::Other(0), offset: 0, data: b"steal" }),
        req(1, 6, Req::Read { h: HandleRef::Other(0), offset: 0, len: 16 }),
        req(0, 5, Req::Free(OWN0)),
        req(1, 7, Req::Alloc(300)),
        req(1, 8, Req::Read { h: OWN1, offset: 0, len: 300 }),
        req(1, 9, Req::Copy { src: OWN0, src_offset: 0, dst: HandleRef::Other(0), dst_offset: 0, len: 1 }),
        Op::Abort { who: 0 },
        req(1, 10, Req::Stats),
    ];
    for (name, seed1) in
        [("two-sessions-isolation", [6, 5, 5, 5]), ("two-sessions-same-handles", [5, 5, 5, 5])]
    {
        let mut w = ScriptWriter::new(64 * 1024, [setup(true, [5, 5, 5, 5]), setup(true, seed1)]);
        for op in isolation {
            w.op(op);
        }
        out.push((name, w.finish()));
    }

    // Handshake failures: bad AUTH, requests before the handshake, reopen, version mismatch.
    let mut w = ScriptWriter::new(4096, [setup(true, [1, 0, 0, 0]), setup(false, [2, 0, 0, 0])]);
    for op in [
        req(0, 1, Req::Alloc(16)),
        req(0, 2, HELLO),
        req(0, 3, Req::Stats),
        req(0, 4, Req::AuthBad(0)),
        req(0, 5, HELLO),
        Op::Reopen { who: 0, setup: setup(true, [3, 0, 0, 0]) },
        req(0, 1, HELLO),
        req(0, 2, HELLO),
        req(0, 3, Req::AuthGood),
        req(0, 4, Req::AuthGood),
        req(1, 1, Req::Hello { min: 2, max: 9, caps: 0 }),
        Op::Reopen { who: 1, setup: setup(false, [4, 0, 0, 0]) },
        req(1, 1, HELLO),
        Op::CloseWith { who: 1, code: ErrorCode::SHUTTING_DOWN.0 },
    ] {
        w.op(op);
    }
    out.push(("handshake-failures", w.finish()));

    // Timers: a handshake timeout, then an idle timeout after some traffic.
    let mut w = ScriptWriter::new(4096, [setup(false, [1, 1, 0, 0]), setup(false, [2, 2, 0, 0])]);
    for op in [
        req(1, 1, HELLO),
        req(1, 2, Req::Alloc(100)),
        Op::Advance { who: 2, ms: 4_999 },
        Op::Deadline { who: 0 },
        req(1, 3, Req::Ping(b"still here")),
        Op::Advance { who: 1, ms: 59_999 },
        Op::Advance { who: 1, ms: 1 },
        Op::Reopen { who: 0, setup: setup(false, [1, 1, 0, 0]) },
        req(0, 1, HELLO),
    ] {
        w.op(op);
    }
    out.push(("timeouts", w.finish()));

    // Raw frames and framing errors: flags the node must refuse, unknown and reserved kinds,
    // a payload above the cap, and reported framing errors.
    let mut w = ScriptWriter::new(4096, [setup(false, [7, 0, 0, 0]), setup(false, [8, 0, 0, 0])]);
    let alloc = emit(&msg::Alloc { size: 64 });
    let big = vec![0u8; 9000];
    for op in [
        req(0, 1, HELLO),
        Op::Raw { who: 0, kind: Kind::ALLOC.0, flags: 0, seq: 2, payload: &alloc },
        Op::Raw { who: 0, kind: Kind::ALLOC.0, flags: Flags::COMPRESSED.0, seq: 3, payload: &alloc },
        Op::Raw { who: 0, kind: Kind::ALLOC.0, flags: Flags::RESPONSE.0, seq: 4, payload: &alloc },
        Op::Raw { who: 0, kind: Kind::ALLOC.0, flags: 0, seq: 5, payload: &alloc[..7] },
        Op::Raw { who: 0, kind: Kind::INFER.0, flags: 0, seq: 6, payload: b"" },
        Op::Raw { who: 0, kind: 0x77, flags: 0, seq: 7, payload: b"x" },
        Op::Raw { who: 0, kind: Kind::ERROR.0, flags: 0x03, seq: 8, payload: b"" },
        Op::Raw { who: 0, kind: Kind::PING.0, flags: 0, seq: 9, payload: &big },
        req(1, 1, HELLO),
        Op::FrameError { who: 1, variant: 7 },
    ] {
        w.op(op);
    }
    out.push(("raw-frames", w.finish()));

    // Limits: quota, buffer table, arena exhaustion, bounds.
    let mut small = setup(false, [6, 0, 0, 0]);
    small.max_buffers = 2;
    small.quota = 3000;
    let mut w = ScriptWriter::new(2048, [small, setup(false, [6, 1, 0, 0])]);
    for op in [
        req(0, 1, HELLO),
        req(1, 1, HELLO),
        req(0, 2, Req::Alloc(1000)),
        req(0, 3, Req::Alloc(1000)),
        req(0, 4, Req::Alloc(1)),
        req(1, 2, Req::Alloc(1500)),
        req(0, 5, Req::Alloc(0)),
        req(0, 6, Req::Write { h: OWN0, offset: 999, data: b"xy" }),
        req(0, 7, Req::Read { h: OWN0, offset: u64::MAX, len: 2 }),
        req(0, 8, Req::Fill { h: OWN0, offset: 1, len: u64::MAX, value: 1 }),
        req(0, 9, Req::Copy { src: OWN0, src_offset: 0, dst: OWN0, dst_offset: 10, len: 20 }),
        req(0, 10, Req::Read { h: OWN0, offset: 0, len: 9000 }),
        req(
            0,
            11,
            Req::Dispatch {
                kernel: 4,
                reserved: 0,
                a: OWN0,
                b: OWN1,
                out: OWN0,
                m: 2,
                k: 2,
                n: 2,
                alpha_bits: 0,
            },
        ),
        req(
            0,
            12,
            Req::Dispatch {
                kernel: 9,
                reserved: 1,
                a: OWN0,
                b: OWN1,
                out: OWN0,
                m: 0,
                k: 0,
                n: 0,
                alpha_bits: 0,
            },
        ),
        req(1, 3, Req::DeviceInfo),
    ] {
        w.op(op);
    }
    out.push(("limits", w.finish()));
    out
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");

    let c = Corpus::new(&root, "request");
    for (name, kind, payload) in requests() {
        let mut seed = vec![kind.0];
        seed.extend(&payload);
        assert!(Request::parse(kind, &payload).is_ok(), "request seed {name} does not parse");
        c.put(name, &seed);
    }

    let c = Corpus::new(&root, "response");
    for (name, kind, flags, payload) in responses() {
        let mut seed = vec![kind.0, flags.0];
        seed.extend(&payload);
        c.put(name, &seed);
    }

    let frames = Corpus::new(&root, "frame");
    let headers = Corpus::new(&root, "header");
    for (name, kind, payload) in requests() {
        let f = frame(kind, Flags::NONE, 7, &payload);
        frames.put(&format!("req-{name}"), &f);
        let mut h = MAX_PAYLOAD.to_le_bytes().to_vec();
        h.extend(&f[..HEADER_LEN]);
        headers.put(&format!("req-{name}"), &h);
    }
    for (name, kind, flags, payload) in responses() {
        frames.put(&format!("resp-{name}"), &frame(kind, flags, 7, &payload));
    }
    let err = frame(Kind::ERROR, ErrorMsg::flags(), 0, &[]);
    let mut h = 64u32.to_le_bytes().to_vec();
    h.extend(&err[..HEADER_LEN]);
    headers.put("error-small-cap", &h);

    let c = Corpus::new(&root, "discovery");
    let mut buf = [0u8; 256];
    let nonce = *b"discover-nonce-1";
    let n = Discover { nonce }.emit::<SoftCrc32>(&mut buf).expect("discover encodes");
    c.put("discover", &buf[..n]);
    let ann = Announce::new(
        nonce,
        *b"node-0123456789a",
        8765,
        BackendKind::CUDA,
        true,
        24 << 30,
        20 << 30,
        "NVIDIA H100",
    );
    let n = ann.emit::<SoftCrc32>(None, &mut buf).expect("announce encodes");
    c.put("announce-unsigned", &buf[..n]);
    let n = ann.emit::<SoftCrc32>(Some(&AuthKey::new(DISCOVERY_TOKEN)), &mut buf).expect("announce encodes");
    c.put("announce-signed", &buf[..n]);
    let n =
        ann.emit::<SoftCrc32>(Some(&AuthKey::new(b"some other token")), &mut buf).expect("announce encodes");
    c.put("announce-signed-other-key", &buf[..n]);
    // With the TLS fingerprint extension, then with an unknown extension before it.
    let tls = ann.with_tls_fingerprint(*b"sha-256 of the node certificate!");
    let n = tls.emit::<SoftCrc32>(Some(&AuthKey::new(DISCOVERY_TOKEN)), &mut buf).expect("announce encodes");
    c.put("announce-signed-tls", &buf[..n]);
    let n = tls.emit::<SoftCrc32>(None, &mut buf).expect("announce encodes");
    let mut payload = buf[HEADER_LEN..n].to_vec();
    let device_end = 52 + 1 + tls.device.len();
    payload.splice(device_end..device_end, [0x7e, 2, 0xca, 0xfe]);
    c.put("announce-unsigned-unknown-ext", &frame(Kind::ANNOUNCE, Flags::RESPONSE, 0, &payload));

    // lz4: selector, cap / 16, payload (see fuzz_targets/lz4.rs).
    let c = Corpus::new(&root, "lz4");
    let text = b"the quick brown fox jumps over the lazy dog; ".repeat(40);
    for (name, sel, prefix) in
        [("write", 0u8, &[7u8; 12][..]), ("chunk", 1, &[0u8; 8][..]), ("read", 2, &[][..])]
    {
        for (what, data) in [("zeros", vec![0u8; 3000]), ("text", text.clone())] {
            let mut seed = vec![sel];
            seed.extend_from_slice(&u16::MAX.to_le_bytes());
            seed.extend_from_slice(prefix);
            seed.extend_from_slice(&(data.len() as u32).to_le_bytes());
            seed.extend_from_slice(&lz4_flex::block::compress(&data));
            c.put(&format!("{name}-{what}"), &seed);
        }
    }

    let c = Corpus::new(&root, "session");
    for (name, script) in sessions().into_iter().chain(model_sessions()) {
        c.put(name, &script);
    }
    println!("seeds written under {}", root.display());
}
