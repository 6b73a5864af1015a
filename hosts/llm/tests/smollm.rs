//! SmolLM2-135M-Instruct Q4_1 (hosts/models/fetch-model.sh models SmolLM2-135M-Instruct.Q4_1) against what the `gguf` Python package
//! reads from the same file (tests/fixtures/make_smollm_fixtures.py): metadata, the llama config,
//! every tensor's type and shape, dequantized rows, and the chat template rendered by jinja2 as
//! transformers renders it. Skipped loudly without the file unless RELA_REQUIRE_GGUF=1.

mod common;

use rela_llm::gguf::Value;
use rela_llm::quant;
use rela_llm::{ChatTemplate, GgmlType, GgufTokenizer, LlamaConfig, Message};

fn type_named(name: &str) -> GgmlType {
    (0..64)
        .filter_map(GgmlType::from_id)
        .find(|t| format!("{t:?}") == name)
        .unwrap_or_else(|| panic!("unknown type {name}"))
}

#[test]
fn metadata_and_config() {
    let Some(f) = common::model("metadata_and_config") else { return };
    let fx = common::fixture("smollm2_gguf.json");
    let g = &f.gguf;
    assert_eq!(f.bytes().len() as u64, fx["file_size"].as_u64().expect("size"));
    assert_eq!(u64::from(g.version), fx["gguf_version"].as_u64().expect("version"));
    let m = &fx["metadata"];
    for (key, want) in m.as_object().expect("metadata") {
        let got = g.get(key).unwrap_or_else(|| panic!("{key} missing"));
        match want {
            serde_json::Value::String(s) => assert_eq!(got.as_str(), Some(s.as_str()), "{key}"),
            serde_json::Value::Bool(b) => assert_eq!(got.as_bool(), Some(*b), "{key}"),
            serde_json::Value::Number(n) => assert_eq!(got.as_u64(), n.as_u64(), "{key}"),
            serde_json::Value::Object(o) => {
                let bits = o["f32_bits"].as_u64().expect("bits") as u32;
                assert_eq!(got, &Value::F32(f32::from_bits(bits)), "{key}");
            }
            other => panic!("{key}: unexpected fixture value {other}"),
        }
    }
    let n = |k: &str| m[k].as_u64().expect(k) as usize;
    let c = LlamaConfig::from_gguf(g).expect("config");
    assert_eq!(c.n_layers, n("llama.block_count"));
    assert_eq!(c.dim, n("llama.embedding_length"));
    assert_eq!(c.ffn_dim, n("llama.feed_forward_length"));
    assert_eq!(c.n_heads, n("llama.attention.head_count"));
    assert_eq!(c.n_kv_heads, n("llama.attention.head_count_kv"));
    assert_eq!(c.context_length, n("llama.context_length"));
    assert_eq!(c.rope_dim, n("llama.rope.dimension_count"));
    assert_eq!(c.vocab_size, n("llama.vocab_size"));
    assert_eq!(c.head_dim, c.dim / c.n_heads);
    assert_eq!(
        c.rope_freq_base.to_bits(),
        m["llama.rope.freq_base"]["f32_bits"].as_u64().expect("bits") as u32
    );
    assert_eq!(
        c.rms_norm_eps.to_bits(),
        m["llama.attention.layer_norm_rms_epsilon"]["f32_bits"].as_u64().expect("bits") as u32
    );
    // SmolLM2 ties its output projection to the token embedding.
    assert!(c.tied_embeddings);
    assert_eq!(c.tensor_shapes().len(), g.tensors.len());
}

#[test]
fn every_tensor_type_and_shape() {
    let Some(f) = common::model("every_tensor_type_and_shape") else { return };
    let fx = common::fixture("smollm2_gguf.json");
    let want = fx["tensors"].as_array().expect("tensors");
    let g = &f.gguf;
    assert_eq!(g.tensors.len(), want.len());
    for (t, w) in g.tensors.iter().zip(want) {
        assert_eq!(t.name, w["name"].as_str().expect("name"));
        assert_eq!(t.ty, type_named(w["type"].as_str().expect("type")), "{}", t.name);
        let dims: Vec<u64> =
            w["dims"].as_array().expect("dims").iter().map(|d| d.as_u64().expect("dim")).collect();
        assert_eq!(t.dims, dims, "{}", t.name);
        assert!(t.offset % g.alignment == 0 && t.offset + t.size <= f.bytes().len() as u64);
        assert!(f.tensor_data(t).is_some());
    }
    // Tensors are laid out back to back (with alignment padding) and end the file.
    let last = g.tensors.iter().map(|t| t.offset + t.size).max().expect("tensors");
    assert_eq!(last, f.bytes().len() as u64);
}

#[test]
fn dequantized_rows_match_gguf_python() {
    let Some(f) = common::model("dequantized_rows_match_gguf_python") else { return };
    let fx = common::fixture("smollm2_gguf.json");
    for r in fx["rows"].as_array().expect("rows") {
        let name = r["tensor"].as_str().expect("tensor");
        let row = r["row"].as_u64().expect("row") as usize;
        let t = f.gguf.tensor(name).expect("tensor");
        let cols = t.dims[0] as usize;
        let row_bytes = t.ty.bytes_for(cols as u64).expect("whole blocks") as usize;
        let data = f.tensor_data(t).expect("data");
        let bytes = &data[row * row_bytes..(row + 1) * row_bytes];
        let mut out = vec![0f32; cols];
        quant::dequantize(t.ty, bytes, &mut out).expect("dequantize");
        for (i, w) in r["first_f32_bits"].as_array().expect("values").iter().enumerate() {
            let want = f32::from_bits(w.as_u64().expect("bits") as u32);
            assert_eq!(out[i].to_bits(), want.to_bits(), "{name} row {row} [{i}]: {} vs {want}", out[i]);
        }
        let sum: f64 = out.iter().map(|&x| f64::from(x)).sum();
        let want = r["row_sum_f64"].as_f64().expect("sum");
        assert!((sum - want).abs() <= 1e-9 * want.abs().max(1.0), "{name} row {row}: sum {sum} vs {want}");
        // The fused dot with a one-hot vector picks the element; with ones, the row's sum.
        let ones = vec![1f32; cols];
        let dot = quant::dot(t.ty, bytes, &ones).expect("dot");
        assert!((f64::from(dot) - want).abs() <= 1e-4 * out.iter().map(|x| f64::from(x.abs())).sum::<f64>());
    }
}

#[test]
fn chat_template_matches_jinja2() {
    let Some(f) = common::model("chat_template_matches_jinja2") else { return };
    let fx = common::fixture("smollm2_gguf.json");
    let tmpl = ChatTemplate::from_gguf(&f.gguf).expect("template");
    for c in fx["chats"].as_array().expect("chats") {
        let messages: Vec<Message> = serde_json::from_value(c["messages"].clone()).expect("messages");
        let generation_prompt = c["add_generation_prompt"].as_bool().expect("flag");
        let got = tmpl.render(&messages, generation_prompt).expect("render");
        assert_eq!(
            got,
            c["text"].as_str().expect("text"),
            "{} (add_generation_prompt {generation_prompt})",
            c["name"]
        );
    }
}

#[test]
fn token_ids_match_llama_cpp() {
    let Some(f) = common::model("token_ids_match_llama_cpp") else { return };
    let tok = GgufTokenizer::from_gguf(&f.gguf).expect("tokenizer");
    assert_eq!(tok.pre_tokenizer(), "smollm");
    assert_eq!((tok.bos(), tok.eos(), tok.add_bos(), tok.vocab_size()), (Some(1), Some(2), false, 49152));
    let fx = common::fixture("smollm2_tokens.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20);
    for c in cases {
        let text = c["text"].as_str().expect("text");
        let special = c["parse_special"].as_bool().expect("flag");
        let want: Vec<u32> =
            c["ids"].as_array().expect("ids").iter().map(|i| i.as_u64().expect("id") as u32).collect();
        let got = tok.encode(text, special).expect("encode");
        assert_eq!(got, want, "{text:?} (parse_special {special})");
        // Decoding gives the text back (control tokens included when not skipped).
        assert_eq!(tok.decode(&got, false).expect("decode"), text, "{text:?}");
    }
}
