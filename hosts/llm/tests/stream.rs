//! The step-wise generation ([`TokenStream`]) on SmolLM2-135M-Instruct Q4_1 against the
//! transformers fixture and against [`generate_ids`]; stop strings. Skipped loudly without the
//! file unless RELA_REQUIRE_GGUF=1.

mod common;

use rela_llm::{Finish, LoadedLlm, SamplingParams, Step, StreamError, TokenStream, generate_ids};
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// Runs a stream to its end: (prompt steps, ids, text, finish).
fn run(stream: &mut TokenStream<'_>) -> (usize, Vec<u32>, String, Option<Finish>) {
    let (mut prefills, mut out, mut text, mut finish) = (0, Vec::new(), String::new(), None);
    loop {
        match stream.step().expect("step") {
            Step::Prefill { .. } => prefills += 1,
            Step::Token { id, text: t, finish: f } => {
                out.push(id);
                text.push_str(&t);
                finish = f;
            }
            Step::Done => return (prefills, out, text, finish),
        }
    }
}

#[test]
fn greedy_steps_equal_generate_ids_and_the_fixture() {
    let Some(f) = common::model("greedy_steps_equal_generate_ids_and_the_fixture") else { return };
    let llm = LoadedLlm::from_file(f.clone()).expect("load");
    let model = llm.model().expect("model");
    let fx = common::fixture("generation_fixture.json");
    for case in fx["cases"].as_array().expect("cases").iter().take(3) {
        let input = ids(&case["input_ids"]);
        let want = ids(&case["generated_ids"]);
        let reference =
            generate_ids(&model, llm.tokenizer(), &input, want.len(), SamplingParams::GREEDY, |_, _| {})
                .expect("generate");
        let mut s = TokenStream::new(
            &model,
            llm.tokenizer(),
            input.clone(),
            want.len(),
            input.len() + want.len(),
            SamplingParams::GREEDY,
            Vec::new(),
        )
        .expect("stream");
        let (prefills, got, text, finish) = run(&mut s);
        assert_eq!(prefills, input.len().div_ceil(rela_llm::stream::PREFILL_CHUNK));
        assert_eq!(got, reference.generated_ids, "{}", case["name"]);
        assert_eq!(text, reference.text, "{}", case["name"]);
        let expected =
            if reference.finish_reason == rela_llm::FinishReason::Eos { Finish::Eos } else { Finish::Length };
        assert_eq!(finish, Some(expected));
    }
}

#[test]
fn a_stop_string_ends_the_text_before_it() {
    let Some(f) = common::model("a_stop_string_ends_the_text_before_it") else { return };
    let llm = LoadedLlm::from_file(f.clone()).expect("load");
    let model = llm.model().expect("model");
    let fx = common::fixture("generation_fixture.json");
    let case = &fx["cases"][0];
    let input = ids(&case["input_ids"]);
    let full = case["generated_text"].as_str().expect("text");
    // A stop string inside the fixture's text: the text must end right before it.
    let stop = "answer";
    let at = full.find(stop).expect("the fixture's text holds the stop string");
    let mut s = TokenStream::new(
        &model,
        llm.tokenizer(),
        input.clone(),
        48,
        input.len() + 48,
        SamplingParams::GREEDY,
        vec![stop.to_owned()],
    )
    .expect("stream");
    let (_, _, text, finish) = run(&mut s);
    assert_eq!(finish, Some(Finish::Stop));
    assert_eq!(text, &full[..at]);
}

#[test]
fn prompts_become_ids_and_bad_ones_are_refused() {
    let Some(f) = common::model("prompts_become_ids_and_bad_ones_are_refused") else { return };
    let llm = LoadedLlm::from_file(f.clone()).expect("load");
    let fx = common::fixture("generation_fixture.json");
    for case in fx["cases"].as_array().expect("cases") {
        if case["kind"] == "raw" {
            let text = case["text"].as_str().expect("text");
            assert_eq!(llm.text_ids(text).expect("ids"), ids(&case["input_ids"]));
        }
    }
    assert!(llm.text_ids("").is_err());
    assert!(llm.chat_ids(&[]).is_err());
    assert!(llm.check_ids(vec![llm.config().vocab_size as u32]).is_err());
    let model = llm.model().expect("model");
    let tok = llm.tokenizer();
    let g = SamplingParams::GREEDY;
    assert_eq!(TokenStream::new(&model, tok, vec![], 4, 8, g, vec![]).err(), Some(StreamError::EmptyPrompt));
    assert_eq!(TokenStream::new(&model, tok, vec![1], 0, 8, g, vec![]).err(), Some(StreamError::NoTokens));
    assert_eq!(
        TokenStream::new(&model, tok, vec![1; 8], 4, 8, g, vec![]).err(),
        Some(StreamError::PromptTooLong)
    );
}
