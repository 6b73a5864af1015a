//! SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`: Llama 2, TinyLlama, Phi-3 and
//! others) as a [`tokenizers`] BPE model.
//!
//! A GGUF file holds such a vocabulary as pieces with scores and no merge list. llama.cpp
//! tokenizes it the SentencePiece-BPE way: the text, with a space in front and every space
//! written `▁`, starts as one symbol per character; the adjacent pair whose concatenation is a
//! piece with the highest score merges, again and again; a symbol left that is no piece becomes
//! its UTF-8 bytes as `<0xXX>` byte pieces. The same result comes from a BPE model whose merges
//! are every split `(a, b)` of every piece `a + b` into two pieces, ranked by the score of
//! `a + b`, with byte fallback: this is how the `tokenizers` library converts SentencePiece
//! models too. llama.cpp's own tokenizer test vectors check it (`tests/sentencepiece.rs`).

use tokenizers::Tokenizer;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence};

use super::{TokenizerError, tk_err};

/// The character SentencePiece writes for a space.
pub(super) const SPACE: char = '\u{2581}';

/// The BPE model, normalizer and decoder of a SentencePiece vocabulary: `tokens` with their
/// `scores` (same length, checked by the caller), `unk` the unknown piece if the file has one.
/// With `add_space_prefix` (llama.cpp's default) a space goes in front of the text, and is taken
/// off the front again when decoding.
pub(super) fn tokenizer(
    tokens: &[String],
    scores: &[f32],
    unk: Option<&str>,
    add_space_prefix: bool,
) -> Result<Tokenizer, TokenizerError> {
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges = merges(tokens, scores, &vocab);
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = unk {
        bpe = bpe.unk_token(unk.to_owned());
    }
    let mut tok = Tokenizer::new(bpe.build().map_err(tk_err)?);

    let space = SPACE.to_string();
    let replace = Replace::new(" ", space.as_str()).map_err(tk_err)?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        NormalizerSequence::new(vec![Prepend::new(space.clone()).into(), replace.into()]).into()
    } else {
        replace.into()
    };
    tok.with_normalizer(Some(normalizer)).map_err(tk_err)?;

    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(space.as_str(), " ").map_err(tk_err)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tok)
}

/// Longest piece (bytes) whose splits become merges. Real vocabularies' pieces are a few dozen
/// bytes at most (SentencePiece's default limit is 16 characters); the cap keeps a hostile file
/// with huge pieces from costing time quadratic in their length.
const MAX_MERGED_PIECE: usize = 256;

/// Every split of a piece into two pieces, the best-scored piece's splits first (ties: the
/// lower id first, then the split's ids), as `tokenizers` converts a SentencePiece model.
/// Pieces longer than [`MAX_MERGED_PIECE`] bytes are left out.
fn merges(tokens: &[String], scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    let mut found: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate().filter(|(_, p)| p.len() <= MAX_MERGED_PIECE) {
        for (cut, _) in piece.char_indices().skip(1) {
            let (a, b) = piece.split_at(cut);
            if let (Some(&ia), Some(&ib)) = (vocab.get(a), vocab.get(b)) {
                found.push((scores[id], id as u32, ia, ib));
            }
        }
    }
    found.sort_by(|x, y| y.0.total_cmp(&x.0).then((x.1, x.2, x.3).cmp(&(y.1, y.2, y.3))));
    found
        .into_iter()
        .map(|(_, _, ia, ib)| (tokens[ia as usize].clone(), tokens[ib as usize].clone()))
        .collect()
}

/// The byte a byte piece (`<0x0A>`) stands for.
pub(super) fn byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_pieces_parse_and_others_do_not() {
        assert_eq!(byte_piece("<0x0A>"), Some(0x0a));
        assert_eq!(byte_piece("<0xff>"), Some(0xff));
        for s in ["<0x0A", "0x0A>", "<0x0>", "<0x0AB>", "<0xZZ>", "▁the"] {
            assert_eq!(byte_piece(s), None, "{s}");
        }
    }

    #[test]
    fn merges_follow_the_merged_piece_score() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"].iter().map(|s| s.to_string()).collect();
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let m = merges(&tokens, &scores, &vocab);
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(m, vec![pair("b", "c"), pair("a", "b"), pair("a", "bc"), pair("ab", "c")]);
    }

    #[test]
    fn pieces_past_the_limit_give_no_merges() {
        let a = |n: usize| "a".repeat(n);
        // 257, 256 and 255 bytes: the 256-byte piece splits into "a" and the 255-byte one, both
        // ways round; the 257-byte piece, which would split into "a" and the 256-byte one, is
        // past the limit.
        let tokens = vec![a(1), a(MAX_MERGED_PIECE + 1), a(MAX_MERGED_PIECE), a(MAX_MERGED_PIECE - 1)];
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let m = merges(&tokens, &[0.0; 4], &vocab);
        assert_eq!(m, vec![(a(1), a(MAX_MERGED_PIECE - 1)), (a(MAX_MERGED_PIECE - 1), a(1))]);
    }
}
