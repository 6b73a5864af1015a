//! Writes the `gguf` target's seeds, `fuzz/corpus/gguf/seed-*`, with rela-llm's own GGUF writer:
//! a tiny llama with a byte-level BPE tokenizer and a chat template, a file with every metadata
//! value type, and one tensor of each supported type.
//!
//! ```text
//! cargo +nightly run --manifest-path fuzz/Cargo.toml --example gguf_seeds
//! ```

use std::fs;
use std::path::Path;

use rela_llm::gguf::{Array, GgmlType, GgufBuilder, Value};

fn s(x: &str) -> Value {
    Value::String(x.into())
}

fn strings(xs: &[&str]) -> Value {
    Value::Array(Array::String(xs.iter().map(|x| (*x).to_owned()).collect()))
}

/// Deterministic filler bytes (f16 scales stay finite: the pattern never sets exponent bits 0x7c).
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed) & 0x3b).collect()
}

fn tiny_llama() -> Vec<u8> {
    let tokens = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "H",
        "e",
        "l",
        "o",
        "Ġ",
        "w",
        "r",
        "d",
        "1",
        "2",
        "3",
        "Ċ",
        "ll",
        "He",
        "Hell",
        "Hello",
        "Ġw",
        "or",
        "Ġwor",
        "ld",
        "Ġworld",
    ];
    let mut types = vec![1i32; tokens.len()];
    types[..3].fill(3);
    let mut b = GgufBuilder::new()
        .kv("general.architecture", s("llama"))
        .kv("llama.block_count", Value::U32(1))
        .kv("llama.embedding_length", Value::U32(32))
        .kv("llama.feed_forward_length", Value::U32(64))
        .kv("llama.attention.head_count", Value::U32(2))
        .kv("llama.attention.head_count_kv", Value::U32(1))
        .kv("llama.context_length", Value::U32(64))
        .kv("llama.rope.freq_base", Value::F32(10000.0))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("tokenizer.ggml.model", s("gpt2"))
        .kv("tokenizer.ggml.pre", s("smollm"))
        .kv("tokenizer.ggml.tokens", strings(&tokens))
        .kv("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
        .kv("tokenizer.ggml.merges", strings(&["l l", "H e", "He ll", "Hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]))
        .kv("tokenizer.ggml.bos_token_id", Value::U32(1))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(2))
        .kv("tokenizer.ggml.add_bos_token", Value::Bool(false))
        .kv(
            "tokenizer.chat_template",
            s("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
        )
        .tensor("token_embd.weight", &[32, 24], GgmlType::Q8_0, bytes(34 * 24, 1))
        .tensor("output_norm.weight", &[32], GgmlType::F32, bytes(128, 2));
    for (name, cols, rows, ty) in [
        ("attn_q", 32, 32, GgmlType::Q4_0),
        ("attn_k", 32, 16, GgmlType::Q4_1),
        ("attn_v", 32, 16, GgmlType::Q8_0),
        ("attn_output", 32, 32, GgmlType::F16),
        ("ffn_gate", 32, 64, GgmlType::Q4_1),
        ("ffn_up", 32, 64, GgmlType::BF16),
        ("ffn_down", 64, 32, GgmlType::Q4_0),
    ] {
        let n = ty.bytes_for(cols * rows).expect("whole blocks") as usize;
        b = b.tensor(&format!("blk.0.{name}.weight"), &[cols, rows], ty, bytes(n, cols as u8));
    }
    b.tensor("blk.0.attn_norm.weight", &[32], GgmlType::F32, bytes(128, 3))
        .tensor("blk.0.ffn_norm.weight", &[32], GgmlType::F32, bytes(128, 4))
        .build()
}

fn all_values() -> Vec<u8> {
    GgufBuilder::new()
        .kv("general.alignment", Value::U32(64))
        .kv("u8", Value::U8(1))
        .kv("i8", Value::I8(-1))
        .kv("u16", Value::U16(2))
        .kv("i16", Value::I16(-2))
        .kv("u32", Value::U32(3))
        .kv("i32", Value::I32(-3))
        .kv("u64", Value::U64(4))
        .kv("i64", Value::I64(-4))
        .kv("f32", Value::F32(0.5))
        .kv("f64", Value::F64(0.25))
        .kv("bool", Value::Bool(true))
        .kv("string", s("ü"))
        .kv("a.u8", Value::Array(Array::U8(vec![1, 2])))
        .kv("a.i16", Value::Array(Array::I16(vec![-1])))
        .kv("a.u64", Value::Array(Array::U64(vec![7])))
        .kv("a.f64", Value::Array(Array::F64(vec![1.0])))
        .kv("a.bool", Value::Array(Array::Bool(vec![true])))
        .kv("a.string", strings(&["x", ""]))
        .tensor("f32", &[2], GgmlType::F32, bytes(8, 5))
        .build()
}

fn k_quants() -> Vec<u8> {
    GgufBuilder::new()
        .tensor("q4k", &[256, 2], GgmlType::Q4_K, bytes(288, 6))
        .tensor("q6k", &[256], GgmlType::Q6_K, bytes(210, 7))
        .tensor("q5k", &[256], GgmlType::Q5_K, bytes(176, 8))
        .build()
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/gguf");
    fs::create_dir_all(&dir).expect("create corpus dir");
    for e in fs::read_dir(&dir).expect("read corpus dir") {
        let p = e.expect("dir entry").path();
        if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seed-")) {
            fs::remove_file(p).expect("remove old seed");
        }
    }
    for (name, data) in [("tiny-llama", tiny_llama()), ("all-values", all_values()), ("k-quants", k_quants())]
    {
        let p = dir.join(format!("seed-{name}"));
        fs::write(&p, &data).expect("write seed");
        println!("{} ({} bytes)", p.display(), data.len());
    }
}
