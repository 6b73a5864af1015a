//! GGUF files (rela-llm): the parser on arbitrary bytes, then everything a node does with a file
//! that parses: the llama config, dequantization and dot products of every supported tensor, the
//! tokenizer (small vocabularies) and the chat template. Nothing may panic; whatever parses keeps
//! every tensor inside the file, aligned, with the size its type and shape imply.
//!
//! Building a tokenizer costs about fifteen parses under the sanitizers and rendering a template
//! about three, so one input in sixteen (by length) builds the tokenizer and one in four renders
//! the template; the parser sees every input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rela_llm::gguf::{Array, Gguf, Value};
use rela_llm::{ChatTemplate, GgufTokenizer, LlamaConfig, Message, quant};

/// Tensors up to this many bytes are dequantized (keeps each run fast).
const MAX_TENSOR: u64 = 1 << 16;
/// Vocabularies up to this many tokens are built into a tokenizer.
const MAX_VOCAB: usize = 512;
/// Template instructions per rendering.
const FUZZ_FUEL: u64 = 20_000;

fuzz_target!(|data: &[u8]| {
    let g = match Gguf::parse(data) {
        Ok(g) => g,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert!(matches!(g.version, 2 | 3));
    assert!(g.alignment.is_power_of_two());
    assert!(g.data_offset <= data.len() as u64 || g.tensors.is_empty());
    for t in &g.tensors {
        assert!(t.offset >= g.data_offset && (t.offset - g.data_offset) % g.alignment == 0);
        assert!(t.offset + t.size <= data.len() as u64, "{} past the end", t.name);
        assert_eq!(t.ty.bytes_for(t.n_elements()), Some(t.size));
        assert!(!t.dims.is_empty() && t.dims.len() <= 4);
        if !t.ty.is_supported() || t.size > MAX_TENSOR {
            continue;
        }
        let bytes = &data[t.offset as usize..(t.offset + t.size) as usize];
        let mut out = vec![0f32; t.n_elements() as usize];
        quant::dequantize(t.ty, bytes, &mut out).expect("a parsed tensor dequantizes");
        let cols = t.dims[0] as usize;
        let row = t.ty.bytes_for(cols as u64).expect("rows are whole blocks") as usize;
        let x: Vec<f32> = (0..cols).map(|i| (i % 7) as f32 - 3.0).collect();
        quant::dot(t.ty, &bytes[..row], &x).expect("a parsed row's dot product");
    }
    if let Err(e) = LlamaConfig::from_gguf(&g) {
        let _ = e.to_string();
    }
    let small_vocab = data.len() % 16 == 0
        && matches!(
            g.get("tokenizer.ggml.tokens"),
            Some(Value::Array(Array::String(t))) if t.len() <= MAX_VOCAB
        );
    if small_vocab {
        match GgufTokenizer::from_gguf(&g) {
            Ok(tok) => {
                for special in [false, true] {
                    if let Ok(ids) = tok.encode("Hello 123 wörld <|im_start|>\n\t x", special) {
                        assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
                        let _ = tok.decode(&ids, special);
                    }
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    if data.len() % 4 != 0 {
        return;
    }
    if let Ok(mut t) = ChatTemplate::from_gguf(&g) {
        // A node's limit takes about a second under the sanitizers; this one, milliseconds.
        t.set_fuel(FUZZ_FUEL);
        let m = [Message::new("system", "s"), Message::new("user", "Hi 🙂")];
        let _ = t.render(&m, true);
    }
});
