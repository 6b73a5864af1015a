//! The worked hex examples in docs/PROTOCOL.md, checked against the code so the spec cannot
//! drift. Run with `RELA_PRINT_EXAMPLES=1` to print the blocks as the code encodes them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use rela_core::auth::AuthKey;
use rela_core::backend::{BackendKind, KernelId};
use rela_core::crc32::SoftCrc32;
use rela_core::discovery::{Announce, Discover};
use rela_core::wire::generate::{FinishReason, Generate, Generated, Prompt, Sampling, TokenMsg};
use rela_core::wire::model_list::{ModelKind, ModelList, ModelListed};
use rela_core::wire::msg::*;
use rela_core::wire::{ErrorCode, Flags, Frame, Kind, encode_frame};

fn frame<'a, M: Message<'a>>(seq: u16, msg: &M) -> Vec<u8> {
    let mut payload = vec![0u8; msg.buffer_len()];
    msg.emit(&mut payload).unwrap();
    let mut buf = vec![0u8; payload.len() + 16];
    encode_frame::<SoftCrc32>(&mut buf, M::KIND, M::flags(), seq, &payload).unwrap().to_vec()
}

fn empty(kind: Kind, flags: rela_core::wire::Flags, seq: u16) -> Vec<u8> {
    let mut buf = [0u8; 16];
    encode_frame::<SoftCrc32>(&mut buf, kind, flags, seq, &[]).unwrap().to_vec()
}

const TOKEN: &[u8] = b"example-token";

fn nonce() -> [u8; 32] {
    core::array::from_fn(|i| i as u8)
}

/// The TLS fingerprint of the ANNOUNCE example: bytes `00 01 … 1f`.
fn tls_fingerprint() -> [u8; 32] {
    core::array::from_fn(|i| i as u8)
}

fn examples() -> Vec<(&'static str, Vec<u8>)> {
    let key = AuthKey::new(TOKEN);
    let mut dgram = [0u8; 256];
    let discover = {
        let n = Discover { nonce: [0x11; 16] }.emit::<SoftCrc32>(&mut dgram).unwrap();
        dgram[..n].to_vec()
    };
    let announce = {
        let a = Announce::new(
            [0x11; 16],
            [0x22; 16],
            8765,
            BackendKind::HOST,
            true,
            1 << 30,
            1 << 29,
            "host memory",
        );
        let n = a.emit::<SoftCrc32>(Some(&key), &mut dgram).unwrap();
        dgram[..n].to_vec()
    };
    let announce_tls = {
        let a = Announce::new(
            [0x11; 16],
            [0x22; 16],
            8765,
            BackendKind::HOST,
            true,
            1 << 30,
            1 << 29,
            "host memory",
        )
        .with_tls_fingerprint(tls_fingerprint());
        let n = a.emit::<SoftCrc32>(Some(&key), &mut dgram).unwrap();
        dgram[..n].to_vec()
    };
    vec![
        ("hello", frame(1, &Hello { min_version: 1, max_version: 1, caps: Caps::DISPATCH })),
        (
            "welcome",
            frame(
                1,
                &Welcome {
                    version: 1,
                    flags: WELCOME_AUTH_REQUIRED,
                    caps: Caps::DISPATCH,
                    max_payload: 16 << 20,
                    max_buffers: 64,
                    quota: 256 << 20,
                    handshake_timeout_ms: 10_000,
                    idle_timeout_ms: 300_000,
                    nonce: nonce(),
                },
            ),
        ),
        ("auth", frame(2, &Auth { mac: key.auth_tag(&nonce()) })),
        ("auth-ok", empty(Kind::AUTH, rela_core::wire::Flags::RESPONSE, 2)),
        ("ping", frame(3, &Ping { data: &[] })),
        ("alloc", frame(4, &Alloc { size: 4096 })),
        ("allocated", frame(4, &Allocated { handle: 0x9E37_79B9, size: 4096 })),
        ("write", frame(5, &Write { handle: 0x9E37_79B9, offset: 16, data: b"RELA!" })),
        ("read", frame(6, &Read { handle: 0x9E37_79B9, offset: 16, len: 5 })),
        (
            "dispatch",
            frame(
                7,
                &Dispatch {
                    kernel: KernelId::ADD,
                    reserved: 0,
                    a: 1,
                    b: 2,
                    out: 3,
                    m: 0,
                    k: 0,
                    n: 1024,
                    alpha: 0.0,
                },
            ),
        ),
        (
            "error",
            frame(
                8,
                &ErrorMsg {
                    code: ErrorCode::NO_SUCH_BUFFER,
                    request_kind: Kind::FREE,
                    reason: "no such buffer",
                },
            ),
        ),
        ("model-load", frame(9, &ModelLoad { name: "all-MiniLM-L6-v2" })),
        ("model-loaded", frame(9, &ModelLoaded { model: 1, dim: 384, bytes: 90_866_688 })),
        ("infer", {
            let texts = ["hi", "RELA"];
            let mut payload = vec![0u8; Infer::encoded_len(&texts)];
            Infer::emit_texts(1, &texts, &mut payload).unwrap();
            let mut buf = vec![0u8; payload.len() + 16];
            encode_frame::<SoftCrc32>(&mut buf, Kind::INFER, rela_core::wire::Flags::NONE, 10, &payload)
                .unwrap()
                .to_vec()
        }),
        ("embeddings", {
            let data: Vec<u8> = [0.6f32, 0.8, 1.0, 0.0].iter().flat_map(|f| f.to_le_bytes()).collect();
            frame(10, &Embeddings { count: 2, dim: 2, data: &data })
        }),
        ("model-upload", frame(11, &ModelUpload { size: 90_868_184, base: "all-MiniLM-L6-v2" })),
        ("model-chunk", frame(12, &ModelChunk { offset: 8_388_608, data: b"RELA" })),
        ("model-commit", empty(Kind::MODEL_COMMIT, rela_core::wire::Flags::NONE, 13)),
        ("progress", frame(13, &Progress { done: 16_777_216, total: 90_866_688 })),
        ("discover", discover),
        ("announce", announce),
        ("announce-tls", announce_tls),
        (
            "write-compressed",
            raw(Kind::WRITE, Flags::COMPRESSED, 14, &[&WRITE_AT_0[..], &ZEROS_64[..]].concat()),
        ),
        (
            "read-compressed",
            raw(Kind::READ, Flags::COMPRESSED, 15, &[&WRITE_AT_0[..], &64u32.to_le_bytes()[..]].concat()),
        ),
        ("read-compressed-answer", raw(Kind::READ, Flags::RESPONSE.union(Flags::COMPRESSED), 15, &ZEROS_64)),
        ("generate", {
            let sampling = Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };
            let mut payload = vec![0u8; 64];
            let n =
                Generate::emit_parts(2, 16, &sampling, Prompt::Text("Hi"), &["\n"], &mut payload).unwrap();
            raw(Kind::GENERATE, Flags::NONE, 16, &payload[..n])
        }),
        ("generate-chat", {
            let sampling = Sampling { temperature: 0.7, top_k: 40, top_p: 0.9, seed: 42 };
            let mut payload = vec![0u8; 64];
            let messages = [("user", "Hi")];
            let n = Generate::emit_parts(2, 16, &sampling, Prompt::Messages(&messages), &[], &mut payload)
                .unwrap();
            raw(Kind::GENERATE, Flags::NONE, 17, &payload[..n])
        }),
        ("token-prompt", {
            let mut buf = vec![0u8; 64];
            let n = TokenMsg::emit_frame::<SoftCrc32>(16, true, &[12_345], "", &mut buf).unwrap();
            buf[..n].to_vec()
        }),
        ("token", {
            let mut buf = vec![0u8; 64];
            let n = TokenMsg::emit_frame::<SoftCrc32>(16, false, &[28_120], " there", &mut buf).unwrap();
            buf[..n].to_vec()
        }),
        (
            "generated",
            frame(
                16,
                &Generated {
                    finish_reason: FinishReason::STOP,
                    prompt_tokens: 1,
                    generated_tokens: 3,
                    prompt_us: 5_000,
                    generate_us: 40_000,
                },
            ),
        ),
        ("cancel", empty(Kind::CANCEL, Flags::NONE, 18)),
        ("model-list", frame(19, &ModelList { index: 0 })),
        (
            "model-listed",
            frame(19, &ModelListed { count: 2, kind: ModelKind::EMBEDDING, name: "all-MiniLM-L6-v2" }),
        ),
    ]
}

/// Handle `0x9e3779b9`, offset 0: the plain prefix of the compressed examples.
const WRITE_AT_0: [u8; 12] = [0xb9, 0x79, 0x37, 0x9e, 0, 0, 0, 0, 0, 0, 0, 0];

/// 64 zero bytes compressed: `raw_len` 64, then an LZ4 block of one literal zero, a match of
/// 58 bytes at distance 1 (token `0x1f`, offset `01 00`, length 15 + 39 + 4), and the five
/// literal zeros a block ends with (token `0x50`).
const ZEROS_64: [u8; 15] = [0x40, 0, 0, 0, 0x1f, 0x00, 0x01, 0x00, 39, 0x50, 0, 0, 0, 0, 0];

fn raw(kind: Kind, flags: Flags, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; payload.len() + 16];
    encode_frame::<SoftCrc32>(&mut buf, kind, flags, seq, payload).unwrap().to_vec()
}

#[cfg(feature = "lz4")]
#[test]
fn compressed_example_inflates_to_64_zeros() {
    use rela_core::wire::compress::Compressed;
    let payload = [&WRITE_AT_0[..], &ZEROS_64[..]].concat();
    let c = Compressed::parse(Kind::WRITE, false, &payload, 1 << 24).unwrap();
    let mut out = [0xffu8; 76];
    assert_eq!(c.inflate(&mut out), Ok(76));
    assert_eq!(out[..12], WRITE_AT_0);
    assert!(out[12..].iter().all(|&b| b == 0));
    let c = Compressed::parse(Kind::READ, true, &ZEROS_64, 1 << 24).unwrap();
    assert_eq!(c.inflate(&mut out), Ok(64));
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The bytes of the block following `<!-- example: NAME -->`.
fn doc_block(doc: &str, name: &str) -> Option<Vec<u8>> {
    let marker = format!("<!-- example: {name} -->");
    let start = doc.find(&marker)? + marker.len();
    let rest = &doc[start..];
    let open = rest.find("```")?;
    let body_start = open + rest[open..].find('\n')? + 1;
    let body_end = body_start + rest[body_start..].find("```")?;
    let mut out = Vec::new();
    for line in rest[body_start..body_end].lines() {
        let line = line.split('#').next().unwrap_or("");
        for tok in line.split_whitespace() {
            out.push(u8::from_str_radix(tok, 16).ok()?);
        }
    }
    Some(out)
}

#[test]
fn protocol_md_examples_match_the_code() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md"))
        .expect("docs/PROTOCOL.md exists");
    let print = std::env::var_os("RELA_PRINT_EXAMPLES").is_some();
    let mut failures = Vec::new();
    for (name, bytes) in examples() {
        // Every example is itself a valid frame.
        assert!(Frame::parse::<SoftCrc32>(&bytes, 1 << 24).is_ok(), "{name} is a valid frame");
        if print {
            println!("<!-- example: {name} -->\n```text\n{}\n```\n", hex(&bytes));
        }
        match doc_block(&doc, name) {
            Some(doc_bytes) if doc_bytes == bytes => {}
            Some(_) => {
                failures.push(format!("{name}: docs/PROTOCOL.md differs from the code:\n{}", hex(&bytes)))
            }
            None => failures.push(format!("{name}: no `<!-- example: {name} -->` block in docs/PROTOCOL.md")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn auth_example_tag_is_hmac_of_context_and_nonce() {
    // Independent check of the documented AUTH construction with the RFC 2104 definition.
    use hmac_check::hmac_sha256;
    let mut msg = b"RELA-AUTH-v1".to_vec();
    msg.extend_from_slice(&nonce());
    assert_eq!(hmac_sha256(TOKEN, &msg), AuthKey::new(TOKEN).auth_tag(&nonce()));
}

mod hmac_check {
    //! HMAC written out from RFC 2104 over the `sha2` crate, to cross-check `AuthKey`.
    use sha2::{Digest, Sha256};

    pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::new().chain_update(&ipad).chain_update(msg).finalize();
        Sha256::new().chain_update(&opad).chain_update(inner).finalize().into()
    }
}
