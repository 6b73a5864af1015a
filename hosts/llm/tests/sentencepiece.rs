//! SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`) against llama.cpp's own
//! tokenizer test vectors: the vocabulary-only GGUF files of Llama 2 (`llama-spm`) and Phi-3,
//! each with 46 texts (`.inp`) and the ids llama.cpp gives them (`.out`), fetched by
//! `hosts/models/fetch-model.sh models llama-vocab` from the llama-cpp-python source archive.

use std::path::PathBuf;

use rela_llm::generate::token_bytes;
use rela_llm::tokenizer::Pieces;
use rela_llm::{GgufFile, GgufTokenizer};

/// `RELA_LLAMA_VOCAB`, or `<repo>/models/llama-vocab`.
fn dir() -> PathBuf {
    std::env::var_os("RELA_LLAMA_VOCAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/llama-vocab"))
}

/// A text and the ids llama.cpp gives it.
type Case = (String, Vec<u32>);

/// The tokenizer and test cases of `ggml-vocab-{name}.gguf`; `None` (with the reason on stderr)
/// when the files are absent, unless `RELA_REQUIRE_GGUF=1`, which makes that a failure.
fn vectors(name: &str) -> Option<(GgufTokenizer, Vec<Case>)> {
    let base = dir().join(format!("ggml-vocab-{name}.gguf"));
    if !base.exists() {
        let why =
            format!("{} is absent (run hosts/models/fetch-model.sh models llama-vocab)", base.display());
        assert!(std::env::var("RELA_REQUIRE_GGUF").as_deref() != Ok("1"), "{why}");
        eprintln!("SKIPPED {name}: {why}; set RELA_REQUIRE_GGUF=1 to make this a failure");
        return None;
    }
    let file = GgufFile::open(&base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
    let tok = GgufTokenizer::from_gguf(&file.gguf).unwrap_or_else(|e| panic!("{name}: {e}"));
    let read = |ext: &str| {
        let p = base.with_extension(format!("gguf.{ext}"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let (inp, out) = (read("inp"), read("out"));
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let ids: Vec<Vec<u32>> =
        out.lines().map(|l| l.split_whitespace().map(|t| t.parse().expect("an id")).collect()).collect();
    // The input ends with a separator: one empty piece after the last text.
    assert_eq!(texts.len(), ids.len() + 1, "{name}: {} texts, {} id lines", texts.len(), ids.len());
    Some((tok, texts.into_iter().map(str::to_owned).zip(ids).collect()))
}

/// Every text gives llama.cpp's ids (its tests tokenize without BOS/EOS), and the ids decode
/// back to the text, as a stream of token bytes too.
fn matches_llama_cpp(name: &str) {
    let Some((tok, cases)) = vectors(name) else { return };
    assert_eq!(tok.pieces(), Pieces::SentencePiece);
    let mut wrong = Vec::new();
    for (text, want) in &cases {
        let mut got = tok.encode(text, false).expect("encode");
        if tok.add_bos() {
            assert_eq!(got.first().copied(), tok.bos(), "{name}: BOS first for {text:?}");
            got.remove(0);
        }
        if got != *want {
            wrong.push(format!("{text:?}: got {got:?}, llama.cpp {want:?}"));
            continue;
        }
        let decoded = tok.decode(&got, true).expect("decode");
        // Decoding takes the space prefix off again; a text that starts with a space keeps it.
        assert_eq!(decoded, *text, "{name}: decode of {got:?}");
        // Token by token (as a stream sends them): the bytes with the prefix's space in front.
        let bytes: Vec<u8> = got.iter().flat_map(|&id| token_bytes(&tok, id)).collect();
        let streamed = String::from_utf8(bytes).expect("whole characters once all tokens are in");
        let expect = if text.is_empty() { String::new() } else { format!(" {text}") };
        assert_eq!(streamed, expect, "{name}: token bytes of {got:?}");
    }
    assert!(
        wrong.is_empty(),
        "{name}: {} of {} texts differ:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[test]
fn llama_spm_vocabulary_matches_llama_cpp() {
    matches_llama_cpp("llama-spm");
}

#[test]
fn phi3_vocabulary_matches_llama_cpp() {
    matches_llama_cpp("phi-3");
}

#[test]
fn byte_pieces_are_their_bytes() {
    let Some((tok, _)) = vectors("llama-spm") else { return };
    // "\n" is no piece: after the space prefix it falls back to the byte piece <0x0A>.
    let ids = tok.encode("\n", false).expect("encode");
    let last = *ids.last().expect("ids");
    assert_eq!(tok.token(last).as_deref(), Some("<0x0A>"));
    assert_eq!(tok.byte_piece(last), Some(b'\n'));
    assert_eq!(token_bytes(&tok, last), b"\n");
    // An ordinary piece is no byte piece.
    let hello = tok.encode("Hello", false).expect("encode");
    assert_eq!(tok.byte_piece(*hello.last().expect("ids")), None);
}
