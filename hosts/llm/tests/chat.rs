//! Chat templates rendered by minijinja against jinja2 configured as transformers configures it
//! (tests/fixtures/make_chat_fixtures.py): whitespace control, Python string methods, loop
//! controls, namespaces and raise_exception.

use rela_llm::{ChatError, ChatTemplate, Message};

fn fixture() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/chat_templates.json")).expect("fixture JSON")
}

#[test]
fn templates_render_as_transformers_does() {
    let fx = fixture();
    let bos = fx["bos_token"].as_str().expect("bos");
    let eos = fx["eos_token"].as_str().expect("eos");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 12);
    for c in cases {
        let name = c["template"].as_str().expect("template");
        let tmpl = ChatTemplate::new(fx["templates"][name].as_str().expect("source"), bos, eos).expect(name);
        let conv = c["conversation"].as_str().expect("conversation");
        let messages: Vec<Message> =
            serde_json::from_value(fx["conversations"][conv].clone()).expect("messages");
        let generation_prompt = c["add_generation_prompt"].as_bool().expect("flag");
        let got = tmpl.render(&messages, generation_prompt);
        let what = format!("{name} on {conv} (add_generation_prompt {generation_prompt})");
        match (&got, c.get("text"), c.get("error")) {
            (Ok(text), Some(want), None) => assert_eq!(text, want.as_str().expect("text"), "{what}"),
            (Err(ChatError::Render(e)), None, Some(want)) => {
                assert!(e.contains(want.as_str().expect("error")), "{what}: error {e:?}")
            }
            _ => panic!("{what}: got {got:?}, want {c}"),
        }
    }
}

#[test]
fn broken_templates_are_typed_errors() {
    assert!(matches!(ChatTemplate::new("{% for m in messages %}", "", ""), Err(ChatError::Syntax(_))));
    let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").expect("compiles");
    match t.render(&[Message::new("system", "x")], false) {
        Err(ChatError::Render(e)) => assert!(e.contains("no system role"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn runaway_templates_are_stopped() {
    let m = [Message::new("user", "x")];
    let forever = ChatTemplate::new(
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        "",
        "",
    )
    .expect("compiles");
    assert!(matches!(forever.render(&m, false), Err(ChatError::Render(_))));
    // A loop of 1000 fits the default fuel but not 500 instructions.
    let mut loop_1000 =
        ChatTemplate::new("{% for i in range(1000) %}{{ i }}{% endfor %}", "", "").expect("compiles");
    assert!(loop_1000.render(&m, false).is_ok());
    loop_1000.set_fuel(500);
    assert!(matches!(loop_1000.render(&m, false), Err(ChatError::Render(_))));
    let long = ChatTemplate::new("{% for i in range(100) %}{{ 'x' * 100000 }}{% endfor %}", "", "")
        .expect("compiles");
    assert_eq!(long.render(&m, false), Err(ChatError::TooLong));
    // Just under the cap renders.
    let fits = ChatTemplate::new("{% for i in range(40) %}{{ 'x' * 100000 }}{% endfor %}", "", "")
        .expect("compiles");
    assert_eq!(fits.render(&m, false).map(|s| s.len()), Ok(4_000_000));
}

#[test]
fn filters_that_allocate_a_width_are_capped() {
    let m = [Message::new("user", "a\nb")];
    let render = |src: &str| ChatTemplate::new(src, "", "").expect("compiles").render(&m, false);
    // Within the cap both filters behave as the built-ins do.
    assert_eq!(render("{{ messages[0].content | indent(2) }}").as_deref(), Ok("a\n  b"));
    assert_eq!(render("{{ messages[0].content | indent(width=2, first=true) }}").as_deref(), Ok("  a\n  b"));
    assert_eq!(render("{{ {'k': 1} | tojson(indent=2) }}").as_deref(), Ok("{\n  \"k\": 1\n}"));
    assert_eq!(render("{{ {'k': 1} | tojson }}").as_deref(), Ok("{\"k\":1}"));
    // Past it, a typed error before anything is allocated (these asked for gigabytes).
    for src in [
        "{{ 'x' | indent(4000000000) }}",
        "{{ 'x' | indent(width=4000000000) }}",
        "{{ 'x' | tojson(4000000000) }}",
        "{{ 'x' | tojson(indent=4000000000) }}",
        "{{ 'x' | indent(65) }}",
    ] {
        assert!(matches!(render(src), Err(ChatError::Render(_))), "{src}");
    }
}
