//! GENERATE, TOKEN, Generated and CANCEL codecs: round trips through `Request::parse` and
//! `Response::parse`, and every malformed shape refused with a typed error.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use rela_core::wire::generate::{
    FinishReason, Generate, Generated, MAX_STOP_LEN, Prompt, PromptKind, Sampling, TokenMsg,
};
use rela_core::wire::msg::{Message, Request, Response};
use rela_core::wire::{DecodeError, Flags, Kind};

fn encode(prompt: Prompt<'_>, stops: &[&str]) -> Vec<u8> {
    let sampling = Sampling { temperature: 0.5, top_k: 7, top_p: 0.25, seed: 99 };
    let mut buf = vec![0u8; 4096];
    let n = Generate::emit_parts(3, 12, &sampling, prompt, stops, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn parse(payload: &[u8]) -> Result<Generate<'_>, DecodeError> {
    match Request::parse(Kind::GENERATE, payload)? {
        Request::Generate(g) => Ok(g),
        other => panic!("not a GENERATE: {other:?}"),
    }
}

#[test]
fn each_prompt_kind_round_trips() {
    let text = encode(Prompt::Text("héllo"), &["\n", "END"]);
    let g = parse(&text).unwrap();
    assert_eq!((g.model, g.max_tokens, g.sampling.top_k, g.sampling.seed), (3, 12, 7, 99));
    assert_eq!(g.prompt_kind, PromptKind::TEXT);
    assert_eq!(g.text(), Some("héllo"));
    assert_eq!(g.stops().collect::<Vec<_>>(), ["\n", "END"]);
    let mut again = vec![0u8; g.buffer_len()];
    assert_eq!(g.emit(&mut again).unwrap(), text.len());
    assert_eq!(again, text);

    let msgs = [("system", "be brief"), ("user", "hi ✓")];
    let m = encode(Prompt::Messages(&msgs), &[]);
    let g = parse(&m).unwrap();
    assert_eq!(g.prompt_kind, PromptKind::MESSAGES);
    assert_eq!(g.messages().collect::<Vec<_>>(), msgs);
    assert_eq!(g.text(), None);

    let t = encode(Prompt::Tokens(&[1, 70_000, u32::MAX]), &[]);
    let g = parse(&t).unwrap();
    assert_eq!(g.token_ids().collect::<Vec<_>>(), [1, 70_000, u32::MAX]);
    assert_eq!(g.messages().count(), 0);
}

#[test]
fn malformed_generates_are_refused() {
    let good = encode(Prompt::Text("hi"), &["x"]);
    // Every strict prefix is short.
    for n in 0..good.len() {
        assert!(parse(&good[..n]).is_err(), "prefix {n}");
    }
    // Trailing bytes.
    assert_eq!(parse(&[&good[..], &[0]].concat()).err(), Some(DecodeError::TrailingBytes));
    // Invalid UTF-8 in the text prompt.
    let mut bad = encode(Prompt::Text("hi"), &[]);
    let at = bad.len() - 1;
    bad[at] = 0xff;
    assert_eq!(parse(&bad).err(), Some(DecodeError::InvalidUtf8));
    // Five stop strings.
    let mut five = encode(Prompt::Text("hi"), &["a", "b", "c", "d"]);
    five[29] = 5;
    five.extend_from_slice(&[1, b'e']);
    assert!(parse(&five).is_err());
    // A stop string longer than the limit, and an empty one.
    let mut long = encode(Prompt::Text("hi"), &[]);
    long[29] = 1;
    long.push(MAX_STOP_LEN as u8 + 1);
    long.extend(std::iter::repeat_n(b'a', MAX_STOP_LEN + 1));
    assert!(parse(&long).is_err());
    let mut empty = encode(Prompt::Text("hi"), &[]);
    empty[29] = 1;
    empty.push(0);
    assert!(parse(&empty).is_err());
    // A TOKENS prompt whose length is not a multiple of 4.
    let mut odd = encode(Prompt::Tokens(&[1]), &[]);
    odd[30] = 3;
    odd.pop();
    assert!(parse(&odd).is_err());
    // A MESSAGES prompt whose count runs past its bytes, and an empty role.
    let mut short = encode(Prompt::Messages(&[("user", "hi")]), &[]);
    short[34] = 2;
    assert!(parse(&short).is_err());
    let mut role = encode(Prompt::Messages(&[("u", "hi")]), &[]);
    role[36] = 0;
    role.remove(37);
    role[30] -= 1;
    assert!(parse(&role).is_err());
    // The encoder refuses what the decoder would.
    let mut buf = [0u8; 256];
    let s = Sampling::GREEDY;
    assert!(Generate::emit_parts(1, 1, &s, Prompt::Text("x"), &[""], &mut buf).is_err());
    assert!(Generate::emit_parts(1, 1, &s, Prompt::Text("x"), &["a"; 5], &mut buf).is_err());
}

#[test]
fn unknown_prompt_kinds_are_kept() {
    let mut p = encode(Prompt::Text("hi"), &[]);
    p[28] = 9;
    let g = parse(&p).unwrap();
    assert_eq!(g.prompt_kind, PromptKind(9));
    assert_eq!(g.prompt_bytes(), b"hi");
}

#[test]
fn token_and_generated_round_trip_and_refuse_bad_bytes() {
    let mut buf = [0u8; 64];
    let n = TokenMsg::emit_parts(false, &[5, 6], "é", &mut buf).unwrap();
    match Response::parse(Kind::TOKEN, Flags::RESPONSE, &buf[..n]).unwrap() {
        Response::Token(t) => {
            assert_eq!(t.ids().collect::<Vec<_>>(), [5, 6]);
            assert_eq!(t.text, "é");
            assert!(!t.is_prompt());
            assert_eq!(t.buffer_len(), n);
        }
        other => panic!("{other:?}"),
    }
    // Unknown flag bits, a non-zero reserved byte, split UTF-8, trailing bytes.
    for (at, v) in [(0usize, 2u8), (1, 1)] {
        let mut b = buf[..n].to_vec();
        b[at] = v;
        assert!(TokenMsg::parse(&b).is_err());
    }
    let mut cut = buf[..n].to_vec();
    let last = cut.len() - 1;
    cut[last - 2] = 1;
    cut.pop();
    assert!(TokenMsg::parse(&cut).is_err());
    assert!(TokenMsg::parse(&[&buf[..n], &[0][..]].concat()).is_err());

    let g = Generated {
        finish_reason: FinishReason::CANCELLED,
        prompt_tokens: 10,
        generated_tokens: 2,
        prompt_us: 7,
        generate_us: 8,
    };
    let mut b = [0u8; Generated::LEN];
    assert_eq!(g.emit(&mut b).unwrap(), Generated::LEN);
    assert_eq!(Response::parse(Kind::GENERATE, Flags::RESPONSE, &b).unwrap(), Response::Generated(g));
    b[2] = 1;
    assert!(Generated::parse(&b).is_err());
    assert_eq!(FinishReason(9).name(), None);
    assert_eq!(FinishReason::STOP.name(), Some("stop"));
}

#[test]
fn cancel_is_empty_and_token_is_not_a_request() {
    assert_eq!(Request::parse(Kind::CANCEL, &[]).unwrap(), Request::Cancel);
    assert!(Request::parse(Kind::CANCEL, &[0]).is_err());
    assert_eq!(Response::parse(Kind::CANCEL, Flags::RESPONSE, &[]).unwrap(), Response::Ack(Kind::CANCEL));
    assert_eq!(Request::parse(Kind::TOKEN, &[1, 2]).unwrap(), Request::Unknown(Kind::TOKEN));
}
