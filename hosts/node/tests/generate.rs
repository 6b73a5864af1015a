//! GENERATE through a live node with SmolLM2-135M-Instruct Q4_1 (`hosts/models/fetch-model.sh`),
//! served from `--models DIR` as a `.gguf` file: greedy ids against the transformers fixture,
//! CANCEL mid-stream, another session served while one generates, the shared model released
//! with its last session, and hostile GENERATEs answered with typed errors. On Vulkan and wgpu
//! (lavapipe in CI), where the forward pass runs on the backend, a subset of the greedy check;
//! and the device path's batching of several sessions' decode steps, on the host backend's
//! reference kernels presented as a device.
//!
//! Without the file each test prints a SKIPPED line, unless `RELA_REQUIRE_GGUF=1`, when it fails.

mod common;

use std::path::{Path, PathBuf};

use common::{MODEL, config, models_dir, read_raw_frame, start, within};
use rela_client::{Client, ClientError, GenerateEvent, GenerateRequest};
use rela_core::wire::generate::{FinishReason, Generate, Prompt, Sampling};
use rela_core::wire::msg::{Caps, Hello, Message, ModelLoad, ModelLoaded};
use rela_core::wire::{ErrorCode, Flags, Kind, encode_frame};
use rela_node::NodeConfig;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A fixture step whose top-1/top-2 margin is below this is a near tie; ids are compared only
/// before the first one.
const NEAR_TIE: f64 = 0.05;

fn node_config(dir: PathBuf) -> NodeConfig {
    NodeConfig { models: Some(dir), ..config() }
}

fn fixture() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../llm/tests/fixtures/generation_fixture.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("fixture")).expect("fixture JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn request(model: u32, prompt: Prompt<'_>, max_tokens: u32) -> GenerateRequest<'_> {
    GenerateRequest { model, prompt, max_tokens, sampling: Sampling::GREEDY, stops: &[] }
}

/// The fixture's greedy ids up to its first near tie.
fn before_near_tie(case: &Value) -> usize {
    let margins = case["margins"].as_array().expect("margins");
    margins.iter().position(|m| m.as_f64().expect("margin") < NEAR_TIE).unwrap_or(margins.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_generation_through_the_node_matches_transformers() {
    let Some(dir) = models_dir("greedy_generation_through_the_node_matches_transformers") else { return };
    let node = start(node_config(dir), 64 << 20).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let m = within(c.model_load(MODEL)).await.expect("load");
    assert_eq!((m.dim, m.bytes), (0, 0), "a shared language model: no embeddings, nothing charged");
    let fx = fixture();
    for case in fx["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let input = ids(&case["input_ids"]);
        let want = ids(&case["generated_ids"]);
        // The prompt as the fixture gives it: text for raw prompts, messages for chats, so the
        // node's tokenizer and chat template are checked too.
        let messages: Vec<(String, String)> = case["messages"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| {
                        (
                            m["role"].as_str().expect("role").into(),
                            m["content"].as_str().expect("content").into(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let refs: Vec<(&str, &str)> = messages.iter().map(|(r, c)| (r.as_str(), c.as_str())).collect();
        let prompt = match case["kind"].as_str() {
            Some("chat") => Prompt::Messages(&refs),
            _ => Prompt::Text(case["text"].as_str().expect("text")),
        };
        let mut streamed = String::new();
        let out =
            within(c.generate_text(&request(m.id, prompt, want.len() as u32), |t| streamed.push_str(t)))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.input_ids, input, "{name}: input ids");
        let n = before_near_tie(case);
        assert_eq!(out.generated_ids[..n.min(out.generated_ids.len())], want[..n], "{name}: greedy ids");
        assert_eq!(streamed, out.text);
        assert_eq!(out.summary.prompt_tokens as usize, input.len());
        assert_eq!(out.summary.generated_tokens as usize, out.generated_ids.len());
        if n == want.len() {
            // No near tie: the whole sequence, its text and why it ended.
            assert_eq!(out.generated_ids, want, "{name}");
            assert_eq!(out.text, case["generated_text"].as_str().expect("text"), "{name}");
            assert_eq!(out.finish_reason(), case["finish_reason"].as_str().expect("reason"), "{name}");
        }
        // Token ids as the prompt give the same ids.
        if name == "raw_capital" {
            let again = within(c.generate_text(&request(m.id, Prompt::Tokens(&input), 8), |_| {}))
                .await
                .expect("ids");
            assert_eq!(again.generated_ids, want[..8]);
        }
    }
    within(c.close()).await.expect("close");
}

/// Several sessions generating at once share decode steps (the model's batcher runs the next
/// token of every waiting stream in one pass): each still gets exactly its own greedy ids, as
/// it does alone, with streams of different lengths joining and leaving between steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_generations_are_batched_and_each_matches_transformers() {
    let Some(dir) = models_dir("concurrent_generations_are_batched_and_each_matches_transformers") else {
        return;
    };
    let node = start(node_config(dir), 64 << 20).await;
    let fx = fixture();
    let cases: Vec<Value> = ["raw_capital", "raw_code", "raw_unicode", "chat_capital", "chat_multi_turn"]
        .iter()
        .map(|n| fx["cases"].as_array().expect("cases").iter().find(|c| c["name"] == *n).expect(n).clone())
        .collect();
    let mut tasks = Vec::new();
    for case in cases {
        let addr = node.local_addr();
        tasks.push(tokio::spawn(async move {
            let name = case["name"].as_str().expect("name").to_owned();
            let mut c = within(Client::connect(addr, None)).await.expect("connect");
            let m = within(c.model_load(MODEL)).await.expect("load");
            let input = ids(&case["input_ids"]);
            let n = before_near_tie(&case);
            let want = ids(&case["generated_ids"])[..n].to_vec();
            // Token ids as the prompt, so every stream is the fixture's own.
            let out = within(c.generate_text(&request(m.id, Prompt::Tokens(&input), n as u32), |_| {}))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(out.generated_ids[..n.min(out.generated_ids.len())], want[..], "{name}: greedy ids");
            within(c.close()).await.expect("close");
        }));
    }
    for t in tasks {
        t.await.expect("a generation task");
    }
}

/// `NodeConfig::activations` (`serve --activations q8`) reaches the model's forward pass: the
/// node's greedy ids are those of the same model in process with 8-bit activations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_eight_bit_activations_generates_as_the_model_does_in_process() {
    let Some(dir) = models_dir("a_node_with_eight_bit_activations_generates_as_the_model_does_in_process")
    else {
        return;
    };
    if !rela_llm::Activations::Q8.runs_here() {
        eprintln!("*** SKIPPED: no AVX-512 on this CPU, so 8-bit activations run as f32 ***");
        return;
    }
    let file = rela_llm::GgufFile::open(dir.join(format!("{MODEL}.gguf"))).expect("open");
    let model = rela_llm::Model::new(&file).expect("model").with_activations(rela_llm::Activations::Q8);
    let tok = rela_llm::GgufTokenizer::from_gguf(&file.gguf).expect("tokenizer");
    let config = NodeConfig { activations: rela_llm::Activations::Q8, ..node_config(dir.clone()) };
    let node = start(config, 64 << 20).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let m = within(c.model_load(MODEL)).await.expect("load");
    let f32_model = rela_llm::Model::new(&file).expect("model");
    let greedy = |model: &rela_llm::Model<'_>, input: &[u32]| {
        rela_llm::generate_ids(model, &tok, input, 16, rela_llm::SamplingParams::GREEDY, |_, _| {})
            .expect("in process")
            .generated_ids
    };
    let fx = fixture();
    let mut differ = 0;
    // Prompts on which 8-bit activations leave f32's greedy path within 16 tokens (and one on
    // which they do not).
    for name in ["raw_story", "raw_numbers", "chat_system", "raw_capital"] {
        let case = fx["cases"].as_array().expect("cases").iter().find(|c| c["name"] == name).expect(name);
        let input = ids(&case["input_ids"]);
        let want = greedy(&model, &input);
        differ += usize::from(want != greedy(&f32_model, &input));
        let out = within(c.generate_text(&request(m.id, Prompt::Tokens(&input), 16), |_| {}))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.generated_ids, want, "{name}: greedy ids");
    }
    assert!(differ > 0, "no prompt tells 8-bit activations from f32 here: the check above proves nothing");
    within(c.close()).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_generation_and_the_session_goes_on() {
    let Some(dir) = models_dir("cancel_stops_a_generation_and_the_session_goes_on") else { return };
    let node = start(node_config(dir), 64 << 20).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let m = within(c.model_load(MODEL)).await.expect("load");
    let fx = fixture();
    // A short prompt whose greedy continuation runs past 48 tokens without EOS.
    let case =
        fx["cases"].as_array().expect("cases").iter().find(|c| c["name"] == "raw_story").expect("case");
    let input = ids(&case["input_ids"]);
    let mut stream = within(c.generate(&request(m.id, Prompt::Tokens(&input), 500))).await.expect("generate");
    let mut tokens = 0;
    let summary = loop {
        match within(stream.next()).await.expect("event").expect("not ended") {
            GenerateEvent::Prompt(_) => {}
            GenerateEvent::Token { .. } => {
                tokens += 1;
                if tokens == 2 {
                    within(stream.cancel()).await.expect("cancel");
                }
            }
            GenerateEvent::Finished(g) => break g,
        }
    };
    assert_eq!(summary.finish_reason, FinishReason::CANCELLED);
    assert!(summary.generated_tokens < 48, "stopped early: {}", summary.generated_tokens);
    assert_eq!(summary.generated_tokens as usize, tokens);
    // The CANCEL's acknowledgement, then nothing.
    assert_eq!(within(stream.next()).await.expect("ack"), None);
    drop(stream);
    // The session goes on: a ping, and a whole generation.
    within(c.ping()).await.expect("ping");
    let out =
        within(c.generate_text(&request(m.id, Prompt::Tokens(&input), 3), |_| {})).await.expect("again");
    let n = before_near_tie(case).min(3);
    assert_eq!(out.generated_ids[..n], ids(&case["generated_ids"])[..n]);
    // A CANCEL with nothing running is just acknowledged.
    let mut stream = within(c.generate(&request(m.id, Prompt::Tokens(&input), 1))).await.expect("generate");
    while let Some(e) = within(stream.next()).await.expect("event") {
        if let GenerateEvent::Finished(g) = e {
            assert_eq!(g.finish_reason, FinishReason::LENGTH);
            within(stream.cancel()).await.expect("cancel after the end does nothing");
        }
    }
    drop(stream);
    within(c.close()).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_session_is_served_while_one_generates() {
    let Some(dir) = models_dir("another_session_is_served_while_one_generates") else { return };
    let node = start(node_config(dir), 64 << 20).await;
    let mut a = within(Client::connect(node.local_addr(), None)).await.expect("connect a");
    let mut b = within(Client::connect(node.local_addr(), None)).await.expect("connect b");
    let m = within(a.model_load(MODEL)).await.expect("load");
    let mut stream =
        within(a.generate(&request(m.id, Prompt::Text("Write a long story about a river."), 64)))
            .await
            .expect("generate");
    // Wait for the first token: the generation is under way.
    loop {
        if let GenerateEvent::Token { .. } = within(stream.next()).await.expect("event").expect("event") {
            break;
        }
    }
    // Session b's small requests are answered while a's generation runs.
    for i in 0..5u8 {
        within(b.ping()).await.expect("ping");
        let h = within(b.alloc(64)).await.expect("alloc");
        within(b.write(h, 0, &[i; 64])).await.expect("write");
        assert_eq!(within(b.read(h, 0, 64)).await.expect("read"), vec![i; 64]);
        within(b.free(h)).await.expect("free");
    }
    let out = within(stream.collect(|_| {})).await.expect("the generation ends normally");
    assert!(matches!(out.summary.finish_reason, FinishReason::LENGTH | FinishReason::EOS));
    within(a.close()).await.expect("close a");
    within(b.close()).await.expect("close b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_model_goes_with_its_last_session() {
    let Some(dir) = models_dir("the_shared_model_goes_with_its_last_session") else { return };
    let node = start(node_config(dir), 64 << 20).await;
    let mut watcher = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let mut a = within(Client::connect(node.local_addr(), None)).await.expect("connect a");
    let mut b = within(Client::connect(node.local_addr(), None)).await.expect("connect b");
    let ma = within(a.model_load(MODEL)).await.expect("load a");
    let mb = within(b.model_load(MODEL)).await.expect("load b");
    let held = within(watcher.device_info()).await.expect("info").shared_models;
    let file =
        std::fs::metadata(models_dir("").expect("dir").join(format!("{MODEL}.gguf"))).expect("file").len();
    assert_eq!(held, file, "one copy of the file, reported as shared model memory");
    // A session that closes in the middle of a generation: the node stops it.
    let mut stream =
        within(a.generate(&request(ma.id, Prompt::Text("Once upon a time"), 200))).await.expect("gen");
    while !matches!(within(stream.next()).await.expect("event"), Some(GenerateEvent::Token { .. })) {}
    drop(stream);
    drop(a);
    // b still generates with the shared copy.
    let out = within(b.generate_text(&request(mb.id, Prompt::Text("Hello"), 2), |_| {})).await.expect("b");
    assert_eq!(out.generated_ids.len(), 2);
    assert_eq!(within(watcher.device_info()).await.expect("info").shared_models, held);
    within(b.close()).await.expect("close b");
    // The last session gone, the model is dropped.
    let mut released = false;
    for _ in 0..200 {
        if within(watcher.device_info()).await.expect("info").shared_models == 0 {
            released = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(released, "the GGUF model is dropped with its last session");
}

fn server_code(e: &ClientError) -> ErrorCode {
    e.code().unwrap_or_else(|| panic!("expected a node ERROR, got {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_generates_get_typed_errors() {
    let Some(dir) = models_dir("hostile_generates_get_typed_errors") else { return };
    let mut cfg = node_config(dir.clone());
    cfg.max_generate_tokens = 64;
    cfg.max_context = 32;
    // Room for the embedding model too (all-MiniLM-L6-v2, 87 MiB), when present.
    let node = start(cfg, 256 << 20).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let m = within(c.model_load(MODEL)).await.expect("load");
    let g = Sampling::GREEDY;
    let cases: Vec<(GenerateRequest<'_>, ErrorCode)> = vec![
        (request(m.id + 1, Prompt::Text("hi"), 4), ErrorCode::NO_SUCH_MODEL),
        (request(m.id, Prompt::Text(""), 4), ErrorCode::INVALID_INPUT),
        (request(m.id, Prompt::Messages(&[]), 4), ErrorCode::INVALID_INPUT),
        (request(m.id, Prompt::Tokens(&[]), 4), ErrorCode::INVALID_INPUT),
        (request(m.id, Prompt::Tokens(&[1, 4_000_000]), 4), ErrorCode::INVALID_INPUT),
        (request(m.id, Prompt::Text("hi"), 0), ErrorCode::INVALID_ARGUMENT),
        (request(m.id, Prompt::Text("hi"), 65), ErrorCode::LIMIT_EXCEEDED),
        (request(m.id, Prompt::Tokens(&[1; 32]), 4), ErrorCode::LIMIT_EXCEEDED),
        (
            GenerateRequest {
                sampling: Sampling { temperature: f32::NAN, ..g },
                ..request(m.id, Prompt::Text("hi"), 4)
            },
            ErrorCode::INVALID_ARGUMENT,
        ),
        (
            GenerateRequest {
                sampling: Sampling { top_p: 0.0, ..g },
                ..request(m.id, Prompt::Text("hi"), 4)
            },
            ErrorCode::INVALID_ARGUMENT,
        ),
    ];
    for (req, code) in &cases {
        let err = within(c.generate_text(req, |_| {})).await.expect_err("refused");
        assert_eq!(server_code(&err), *code, "{req:?}: {err}");
    }
    // Stop strings the client will not encode.
    let long = "x".repeat(65);
    let bad_stops: [&[&str]; 3] = [&[""], &[long.as_str()], &["a", "b", "c", "d", "e"]];
    for stops in bad_stops {
        let req = GenerateRequest { stops, ..request(m.id, Prompt::Text("hi"), 4) };
        assert!(matches!(within(c.generate(&req)).await.map(|_| ()), Err(ClientError::InvalidArgument(_))));
    }
    // An embedding model does not generate, when the directory has one.
    if dir.join("all-MiniLM-L6-v2").join("model.safetensors").is_file() {
        let e = within(c.model_load("all-MiniLM-L6-v2")).await.expect("embedding model");
        let err = within(c.generate_text(&request(e.id, Prompt::Text("hi"), 4), |_| {}))
            .await
            .expect_err("refused");
        assert_eq!(server_code(&err), ErrorCode::UNSUPPORTED);
    }
    // The session is still usable after every refusal.
    let out = within(c.generate_text(&request(m.id, Prompt::Text("Hi"), 2), |_| {})).await.expect("generate");
    assert_eq!(out.generated_ids.len(), 2);
    within(c.close()).await.expect("close");

    // Bytes no client would send, on a raw connection: invalid UTF-8, a 65-byte stop string.
    let mut s = within(TcpStream::connect(node.local_addr())).await.expect("raw connect");
    let mut seq = 0u16;
    let mut send = async |s: &mut TcpStream, kind: Kind, payload: &[u8]| {
        seq += 1;
        let mut buf = vec![0u8; 16 + payload.len()];
        let f =
            encode_frame::<rela_client::FastCrc32>(&mut buf, kind, Flags::NONE, seq, payload).expect("frame");
        within(s.write_all(f)).await.expect("send");
        read_raw_frame(s).await.expect("answer")
    };
    let hello = Hello { min_version: 1, max_version: 1, caps: Caps::MODELS };
    let mut p = vec![0u8; hello.buffer_len()];
    hello.emit(&mut p).expect("hello");
    let (h, _) = send(&mut s, Kind::HELLO, &p).await;
    assert_eq!(h.kind, Kind::HELLO);
    let load = ModelLoad { name: MODEL };
    let mut p = vec![0u8; load.buffer_len()];
    load.emit(&mut p).expect("load");
    let (_, payload) = send(&mut s, Kind::MODEL_LOAD, &p).await;
    let id = ModelLoaded::parse(&payload).expect("loaded").model;
    let mut p = vec![0u8; 256];
    let n = Generate::emit_parts(id, 4, &g, Prompt::Text("hé"), &[], &mut p).expect("encode");
    p[n - 1] = 0xff;
    let (h, payload) = send(&mut s, Kind::GENERATE, &p[..n]).await;
    assert_eq!(common::error_code(&h, &payload), ErrorCode::MALFORMED);
    let n = Generate::emit_parts(id, 4, &g, Prompt::Text("hi"), &[], &mut p).expect("encode");
    p[29] = 1;
    let mut with_stop = p[..n].to_vec();
    with_stop.push(65);
    with_stop.extend(std::iter::repeat_n(b'x', 65));
    let (h, payload) = send(&mut s, Kind::GENERATE, &with_stop).await;
    assert_eq!(common::error_code(&h, &payload), ErrorCode::MALFORMED);
    // A TOKEN sent to the node is not a request.
    let (h, payload) = send(&mut s, Kind::TOKEN, &[0, 0, 0, 0, 0, 0]).await;
    assert_eq!(common::error_code(&h, &payload), ErrorCode::UNKNOWN_KIND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_cache_is_charged_to_the_quota() {
    let Some(dir) = models_dir("the_kv_cache_is_charged_to_the_quota") else { return };
    let mut cfg = node_config(dir);
    // SmolLM2-135M's f32 KV cache takes 23,040 bytes per position for the values, and as many
    // for the keys per position of their stride (the positions rounded up to 16): 3 positions
    // take 19 · 23,040 = 437,760 bytes, 10 take 26 · 23,040 = 599,040.
    cfg.session.quota = 500_000;
    let node = start(cfg, 64 << 20).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let m = within(c.model_load(MODEL)).await.expect("load");
    let err = within(c.generate_text(&request(m.id, Prompt::Text("Hello"), 8), |_| {}))
        .await
        .expect_err("over quota");
    assert_eq!(server_code(&err), ErrorCode::QUOTA_EXCEEDED);
    // Within it: one prompt token and two generated fit.
    let out = within(c.generate_text(&request(m.id, Prompt::Tokens(&[1]), 2), |_| {})).await.expect("fits");
    assert_eq!(out.generated_ids.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_and_damaged_gguf_files_are_refused_with_their_reason() {
    let dir = std::env::temp_dir().join(format!("rela-gguf-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // Another architecture, in an otherwise valid GGUF file.
    let qwen = rela_llm::gguf::GgufBuilder::new()
        .kv("general.architecture", rela_llm::gguf::Value::String("qwen2".into()))
        .build();
    std::fs::write(dir.join("other-arch.gguf"), qwen).expect("write");
    // Not a GGUF file at all.
    std::fs::write(dir.join("garbage.gguf"), b"GGUF but not really").expect("write");
    let node = start(node_config(dir.clone()), 16 << 20).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let err = within(c.model_load("other-arch")).await.expect_err("refused");
    assert_eq!(server_code(&err), ErrorCode::UNSUPPORTED, "{err}");
    assert!(err.to_string().contains("architecture"), "{err}");
    let err = within(c.model_load("garbage")).await.expect_err("refused");
    assert_eq!(server_code(&err), ErrorCode::INTERNAL, "{err}");
    assert!(err.to_string().contains("not a valid GGUF file"), "{err}");
    // The session goes on, and nothing is held.
    within(c.ping()).await.expect("ping");
    assert_eq!(within(c.device_info()).await.expect("info").shared_models, 0);
    within(c.close()).await.expect("close");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// How long a step of the device tests may take: lavapipe (the CI's Vulkan, a CPU emulation)
/// takes seconds per generated token.
const DEVICE_STEP: std::time::Duration = std::time::Duration::from_secs(600);

/// Backend `name` ("vulkan" or "wgpu-vulkan") with room for the model, or `None` with a
/// SKIPPED line when it cannot start (a failure when `RELA_REQUIRE_BACKENDS` names it) or lacks
/// one of the generation kernels the model needs (named).
fn device_backend(name: &str, test: &str) -> Option<Box<dyn rela_core::backend::GpuBackend + Send>> {
    const CAPACITY: u64 = 256 << 20;
    let made: Result<Box<dyn rela_core::backend::GpuBackend + Send>, String> = match name {
        "vulkan" => rela_backend_vulkan::VulkanBackend::new(rela_backend_vulkan::VulkanConfig::new(CAPACITY))
            .map(|b| Box::new(b) as _)
            .map_err(|e| e.to_string()),
        _ => rela_backend_wgpu::WgpuBackend::new(rela_backend_wgpu::WgpuConfig {
            capacity: CAPACITY,
            backends: rela_backend_wgpu::Api::Vulkan,
            adapter: None,
        })
        .map(|b| Box::new(b) as _)
        .map_err(|e| e.to_string()),
    };
    let mut backend = match made {
        Ok(b) => b,
        Err(why) if rela_conformance::required(name) => {
            panic!("{test}: {name} is required but unavailable: {why}")
        }
        Err(why) => {
            eprintln!("*** SKIPPED {test} on {name}: {why} ***");
            return None;
        }
    };
    let types = [rela_core::backend::WeightType::Q4_1, rela_core::backend::WeightType::Q8_0];
    let missing = rela_test_support::kernels::missing_generation_kernels(&mut *backend, &types);
    if !missing.is_empty() {
        eprintln!(
            "*** SKIPPED {test} on {name}: the backend lacks generation kernels {missing:?} (Unsupported) ***"
        );
        return None;
    }
    Some(backend)
}

/// The greedy fixture through a live node whose backend is `name`: the weights go into the
/// backend at MODEL_LOAD and the forward pass runs there (`rela_llm::DeviceLlm`). A subset, as
/// lavapipe is slow: one prompt for 3 tokens (the in-process tests in rela-llm's `device.rs`
/// compare the logits). The weights and the KV cache are freed with the session.
async fn greedy_on_device(name: &str) {
    let test = format!("greedy_generation_on_{name}_through_the_node_matches_transformers");
    let Some(dir) = models_dir(&test) else { return };
    let Some(backend) = device_backend(name, &test) else { return };
    let node = tokio::time::timeout(
        DEVICE_STEP,
        rela_node::Node::start(node_config(dir), rela_node::NodeBackend::from(backend)),
    )
    .await
    .expect("node starts in time")
    .expect("node starts");
    // Each answer waits as long as a step may take (the client's default is 60 s).
    let options = rela_client::ClientOptions { request_timeout: Some(DEVICE_STEP), ..Default::default() };
    let mut c = within(Client::connect_with(node.local_addr(), None, options)).await.expect("connect");
    let m =
        tokio::time::timeout(DEVICE_STEP, c.model_load(MODEL)).await.expect("load in time").expect("load");
    let held = within(c.device_info()).await.expect("info").shared_models;
    let file =
        std::fs::metadata(models_dir("").expect("dir").join(format!("{MODEL}.gguf"))).expect("file").len();
    assert!(held > file, "the file and its weights in the backend: {held} bytes for a {file}-byte file");
    let used = node.usage().await.expect("usage").used;
    assert!(used >= file / 2, "the weights are in the backend: {used} bytes used");
    let fx = fixture();
    let case =
        fx["cases"].as_array().expect("cases").iter().find(|c| c["name"] == "raw_capital").expect("case");
    let input = ids(&case["input_ids"]);
    let want = ids(&case["generated_ids"]);
    let n = before_near_tie(case).min(3);
    let prompt = Prompt::Text(case["text"].as_str().expect("text"));
    let mut streamed = String::new();
    let out = tokio::time::timeout(
        DEVICE_STEP,
        c.generate_text(&request(m.id, prompt, n as u32), |t| streamed.push_str(t)),
    )
    .await
    .expect("generation in time")
    .expect("generate");
    assert_eq!(out.input_ids, input, "input ids");
    assert_eq!(out.generated_ids, want[..n], "greedy ids");
    assert_eq!(streamed, out.text);
    tokio::time::timeout(DEVICE_STEP, c.close()).await.expect("close in time").expect("close");
    // The last session gone: the weights and the cache are freed (hundreds of FREEs, each a
    // device call: polled for up to DEVICE_STEP, not common::wait_idle's 10 s).
    common::wait_idle_within(&node, DEVICE_STEP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_generation_on_vulkan_through_the_node_matches_transformers() {
    greedy_on_device("vulkan").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_generation_on_wgpu_through_the_node_matches_transformers() {
    greedy_on_device("wgpu-vulkan").await;
}

/// The host backend presented as a backend of another kind (an unknown one, so the node takes
/// its device path: the weights uploaded into it, the forward pass run with its generation
/// kernels), counting the output projections that served two or more generations at once, and
/// failing the first of them (a batched pass that fails: each generation then runs its step
/// alone).
struct AsDevice {
    inner: rela_backend_host::OwnedHostBackend<1024>,
    vocab: u32,
    batched: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl AsDevice {
    /// Counts a batched output projection; refuses the first one.
    fn count(&self, call: &rela_core::backend::KernelCall) -> Result<(), rela_core::backend::BackendError> {
        if let rela_core::backend::KernelCall::QLinear { m, n, .. } = *call
            && n == self.vocab
            && m >= 2
            && self.batched.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0
        {
            return Err(rela_core::backend::BackendError::OutOfMemory);
        }
        Ok(())
    }
}

impl rela_core::backend::GpuBackend for AsDevice {
    fn info(&self) -> rela_core::backend::DeviceInfo {
        let mut info = self.inner.info();
        info.backend = rela_core::backend::BackendKind(0xEE);
        info
    }
    fn usage(&self) -> rela_core::backend::Usage {
        self.inner.usage()
    }
    fn alloc(&mut self, size: u64) -> Result<rela_core::backend::BufferId, rela_core::backend::BackendError> {
        self.inner.alloc(size)
    }
    fn free(&mut self, id: rela_core::backend::BufferId) -> Result<(), rela_core::backend::BackendError> {
        self.inner.free(id)
    }
    fn size(&self, id: rela_core::backend::BufferId) -> Result<u64, rela_core::backend::BackendError> {
        self.inner.size(id)
    }
    fn write(
        &mut self,
        id: rela_core::backend::BufferId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), rela_core::backend::BackendError> {
        self.inner.write(id, offset, data)
    }
    fn read(
        &mut self,
        id: rela_core::backend::BufferId,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), rela_core::backend::BackendError> {
        self.inner.read(id, offset, out)
    }
    fn copy(
        &mut self,
        src: rela_core::backend::BufferId,
        src_offset: u64,
        dst: rela_core::backend::BufferId,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), rela_core::backend::BackendError> {
        self.inner.copy(src, src_offset, dst, dst_offset, len)
    }
    fn fill(
        &mut self,
        id: rela_core::backend::BufferId,
        offset: u64,
        len: u64,
        value: u8,
    ) -> Result<(), rela_core::backend::BackendError> {
        self.inner.fill(id, offset, len, value)
    }
    fn dispatch(
        &mut self,
        call: &rela_core::backend::KernelCall,
    ) -> Result<(), rela_core::backend::BackendError> {
        self.count(call)?;
        self.inner.dispatch(call)
    }
    fn dispatch_part(
        &mut self,
        call: &rela_core::backend::KernelCall,
        units: std::ops::Range<u32>,
    ) -> Result<(), rela_core::backend::BackendError> {
        if units.start == 0 {
            self.count(call)?;
        }
        self.inner.dispatch_part(call, units)
    }
}

/// Several sessions loading one model and generating at once on a device backend: the model is
/// uploaded once (the others wait for it), their decode steps share passes (the output
/// projection runs for two or more generations at once), a batched pass that fails costs no
/// generation anything (each runs that step alone), each session still gets exactly its fixture
/// ids, and the weights, the batch's buffers and every cache are freed (and so zeroed) with the
/// last session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_generations_on_a_device_share_decode_passes() {
    let test = "concurrent_generations_on_a_device_share_decode_passes";
    let Some(dir) = models_dir(test) else { return };
    let batched = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let backend = AsDevice {
        inner: rela_backend_host::OwnedHostBackend::with_block_table(vec![0u8; 256 << 20].into_boxed_slice()),
        vocab: 49152,
        batched: batched.clone(),
    };
    let backend: Box<dyn rela_core::backend::GpuBackend + Send> = Box::new(backend);
    let node = rela_node::Node::start(node_config(dir), rela_node::NodeBackend::from(backend))
        .await
        .expect("node starts");
    let fx = fixture();
    let options = rela_client::ClientOptions { request_timeout: Some(DEVICE_STEP), ..Default::default() };
    // The sessions load the model at once: one uploads it, the others wait for that upload (the
    // backend has room for two copies of the weights, not three).
    let mut tasks = Vec::new();
    for name in ["raw_capital", "raw_code", "raw_unicode"] {
        let case =
            fx["cases"].as_array().expect("cases").iter().find(|c| c["name"] == name).expect(name).clone();
        let addr = node.local_addr();
        let options = options.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = within(Client::connect_with(addr, None, options)).await.expect("connect");
            let m =
                tokio::time::timeout(DEVICE_STEP, c.model_load(MODEL)).await.expect("in time").expect("load");
            let input = ids(&case["input_ids"]);
            let n = before_near_tie(&case).min(12);
            let want = ids(&case["generated_ids"])[..n].to_vec();
            let out = tokio::time::timeout(
                DEVICE_STEP,
                c.generate_text(&request(m.id, Prompt::Tokens(&input), n as u32), |_| {}),
            )
            .await
            .expect("generation in time")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(out.generated_ids, want, "{name}: greedy ids");
            tokio::time::timeout(DEVICE_STEP, c.close()).await.expect("close in time").expect("close");
        }));
    }
    for t in tasks {
        t.await.expect("a generation task");
    }
    let passes = batched.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{test}: {passes} output projections served two or more generations (the first refused)");
    assert!(passes > 1, "no decode pass served two generations at once after the refused one");
    // Every buffer freed with the last session.
    common::wait_idle_within(&node, DEVICE_STEP).await;
}
