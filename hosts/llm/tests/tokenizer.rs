//! The GGUF tokenizer on small synthetic vocabularies: pre-tokenizer names mapped to their splits
//! (digits alone for smollm, digit runs for gpt2), control tokens only with parse_special, BOS and
//! EOS as the file asks, and the typed refusals.

use rela_llm::gguf::{Array, Gguf, GgufBuilder, Value};
use rela_llm::{GgufTokenizer, TokenizerError};

const TOKENS: &[&str] = &[
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
    "ll",
    "He",
    "Hell",
    "Hello",
    "Ġw",
    "or",
    "Ġwor",
    "ld",
    "Ġworld",
    "12",
    "Ġ1",
    "<tool>",
];
const MERGES: &[&str] =
    &["l l", "H e", "He ll", "Hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "1 2", "Ġ 1"];

fn strings(xs: &[&str]) -> Value {
    Value::Array(Array::String(xs.iter().map(|x| (*x).to_owned()).collect()))
}

fn file(model: &str, pre: Option<&str>, extra: &[(&str, Value)]) -> Gguf {
    let mut types = vec![1i32; TOKENS.len()];
    types[..3].fill(3);
    *types.last_mut().expect("tokens") = 4;
    let mut b = GgufBuilder::new()
        .kv("tokenizer.ggml.model", Value::String(model.into()))
        .kv("tokenizer.ggml.tokens", strings(TOKENS))
        .kv("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
        .kv("tokenizer.ggml.merges", strings(MERGES))
        .kv("tokenizer.ggml.bos_token_id", Value::U32(1))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(2));
    if let Some(pre) = pre {
        b = b.kv("tokenizer.ggml.pre", Value::String(pre.into()));
    }
    for (k, v) in extra {
        b = b.kv(k, v.clone());
    }
    Gguf::parse(&b.build()).expect("parse")
}

fn id(t: &str) -> u32 {
    TOKENS.iter().position(|x| *x == t).expect("token") as u32
}

#[test]
fn smollm_splits_every_digit_and_gpt2_keeps_runs() {
    let smollm = GgufTokenizer::from_gguf(&file("gpt2", Some("smollm"), &[])).expect("smollm");
    let gpt2 = GgufTokenizer::from_gguf(&file("gpt2", Some("gpt2"), &[])).expect("gpt2");
    assert_eq!(smollm.encode("Hello world", false), Ok(vec![id("Hello"), id("Ġworld")]));
    assert_eq!(gpt2.encode("Hello world", false), Ok(vec![id("Hello"), id("Ġworld")]));
    assert_eq!(smollm.encode("123", false), Ok(vec![id("1"), id("2"), id("3")]));
    assert_eq!(gpt2.encode("123", false), Ok(vec![id("12"), id("3")]));
    // smollm: the space before a digit is a piece of its own; gpt2 merges " 12" by rank ("1 2"
    // before "Ġ 1"), and " 1" when no "12" merge can come first.
    assert_eq!(smollm.encode("Hello 12", false), Ok(vec![id("Hello"), id("Ġ"), id("1"), id("2")]));
    assert_eq!(gpt2.encode("Hello 12", false), Ok(vec![id("Hello"), id("Ġ"), id("12")]));
    assert_eq!(gpt2.encode("Hello 13", false), Ok(vec![id("Hello"), id("Ġ1"), id("3")]));
    assert_eq!(smollm.encode("Hello 13", false), Ok(vec![id("Hello"), id("Ġ"), id("1"), id("3")]));
    assert_eq!(smollm.decode(&[id("Hello"), id("Ġworld"), id("1")], false), Ok("Hello world1".into()));
    assert_eq!(smollm.pre_tokenizer(), "smollm");
    assert_eq!((smollm.bos(), smollm.eos(), smollm.vocab_size()), (Some(1), Some(2), TOKENS.len()));
}

#[test]
fn control_tokens_only_with_parse_special() {
    let tok = GgufTokenizer::from_gguf(&file("gpt2", Some("smollm"), &[])).expect("tokenizer");
    assert_eq!(tok.encode("<|im_start|>Hello<|im_end|>", true), Ok(vec![1, id("Hello"), 2]));
    let plain = tok.encode("<|im_start|>Hello", false).expect("encode");
    assert!(!plain.contains(&1), "{plain:?}");
    // User-defined tokens are matched either way.
    assert_eq!(tok.encode("<tool>", false), Ok(vec![id("<tool>")]));
    assert_eq!(tok.decode(&[1, id("Hello"), 2], true), Ok("Hello".into()));
    assert_eq!(tok.decode(&[1, id("Hello")], false), Ok("<|im_start|>Hello".into()));
    assert!(tok.decode(&[TOKENS.len() as u32], false).is_err());
}

#[test]
fn bos_and_eos_as_the_file_asks() {
    let plain = GgufTokenizer::from_gguf(&file("gpt2", Some("smollm"), &[])).expect("tokenizer");
    assert!(!plain.add_bos() && !plain.add_eos());
    let both = GgufTokenizer::from_gguf(&file(
        "gpt2",
        Some("smollm"),
        &[
            ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
            ("tokenizer.ggml.add_eos_token", Value::Bool(true)),
        ],
    ))
    .expect("tokenizer");
    assert_eq!(both.encode("Hello", false), Ok(vec![1, id("Hello"), 2]));
    assert_eq!(both.encode("", false), Ok(vec![1, 2]));
    // llama-bpe adds BOS unless the file says otherwise.
    let llama3 = GgufTokenizer::from_gguf(&file("gpt2", Some("llama-bpe"), &[])).expect("tokenizer");
    assert_eq!(llama3.encode("Hello world", false), Ok(vec![1, id("Hello"), id("Ġworld")]));
}

#[test]
fn unsupported_tokenizers_are_refused_by_name() {
    for model in ["bert", "t5", "rwkv"] {
        assert_eq!(
            GgufTokenizer::from_gguf(&file(model, Some("default"), &[])).map(|_| ()),
            Err(TokenizerError::UnsupportedModel(model.into()))
        );
    }
    // SentencePiece needs the pieces' scores, as the right type and one per token.
    assert_eq!(
        GgufTokenizer::from_gguf(&file("llama", None, &[])).map(|_| ()),
        Err(TokenizerError::MissingKey("tokenizer.ggml.scores"))
    );
    for scores in [Value::Array(Array::F32(vec![0.0; 3])), Value::Array(Array::I32(vec![0; TOKENS.len()]))] {
        assert_eq!(
            GgufTokenizer::from_gguf(&file("llama", None, &[("tokenizer.ggml.scores", scores)])).map(|_| ()),
            Err(TokenizerError::BadValue("tokenizer.ggml.scores"))
        );
    }
    for pre in ["qwen2", "deepseek-llm"] {
        assert_eq!(
            GgufTokenizer::from_gguf(&file("gpt2", Some(pre), &[])).map(|_| ()),
            Err(TokenizerError::UnsupportedPreTokenizer(pre.into()))
        );
    }
    // No pre-tokenizer: llama.cpp's "default" split, which this crate does not build.
    assert_eq!(
        GgufTokenizer::from_gguf(&file("gpt2", None, &[])).map(|_| ()),
        Err(TokenizerError::UnsupportedPreTokenizer("default".into()))
    );
    let bad_merge = file("gpt2", Some("gpt2"), &[]);
    let mut g = bad_merge.clone();
    g.metadata.insert("tokenizer.ggml.merges".into(), strings(&["ab"]));
    assert_eq!(GgufTokenizer::from_gguf(&g).map(|_| ()), Err(TokenizerError::BadMerge("ab".into())));
    let mut g = bad_merge.clone();
    g.metadata.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(TOKENS.len() as u32));
    assert_eq!(
        GgufTokenizer::from_gguf(&g).map(|_| ()),
        Err(TokenizerError::BadValue("tokenizer.ggml.bos_token_id"))
    );
    let mut g = bad_merge;
    g.metadata.insert("tokenizer.ggml.token_type".into(), Value::Array(Array::I32(vec![1])));
    assert_eq!(
        GgufTokenizer::from_gguf(&g).map(|_| ()),
        Err(TokenizerError::BadValue("tokenizer.ggml.token_type"))
    );
}

#[test]
fn the_fuzz_seed_is_a_whole_model() {
    // fuzz/corpus/gguf/seed-tiny-llama (fuzz/examples/gguf_seeds.rs): it must get past the
    // parser, the config and the tokenizer, so the fuzzer starts from the deep paths.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/gguf/seed-tiny-llama");
    let bytes = std::fs::read(path).expect("seed");
    let g = Gguf::parse(&bytes).expect("parse");
    rela_llm::LlamaConfig::from_gguf(&g).expect("config");
    let tok = GgufTokenizer::from_gguf(&g).expect("tokenizer");
    let hello = tok.token_id("Hello").expect("Hello");
    let world = tok.token_id("Ġworld").expect("Ġworld");
    assert_eq!(tok.encode("Hello world", false), Ok(vec![hello, world]));
    let chat = rela_llm::ChatTemplate::from_gguf(&g).expect("template");
    let text = chat.render(&[rela_llm::Message::new("user", " Hello ")], true).expect("render");
    assert_eq!(text, "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");
}
