//! GENERATE and CANCEL through the session, with a scripted model host: the checks the session
//! makes before the host runs (model, sampling fields, prompt kind), the budget and seq the host
//! gets, the answer it queues, and CANCEL's acknowledgement.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{Driver, MockBackend};
use rela_core::model::{InferOutput, LoadedModel, ModelError, ModelHost, ProgressTarget};
use rela_core::session::SessionConfig;
use rela_core::wire::generate::{FinishReason, Generate, Generated, Prompt, Sampling};
use rela_core::wire::msg::*;
use rela_core::wire::{ErrorCode, Flags, Kind};

/// A host with one language model, "lm", whose generation reports the prompt's byte length as
/// its token count; `calls` records (seq, budget) of each generation.
#[derive(Default)]
struct Lm {
    calls: Vec<(u16, u64)>,
    /// Generates like a host without language models (the trait's default).
    plain: bool,
}

const WEIGHTS: u64 = 100;

impl ModelHost<MockBackend> for Lm {
    fn load(
        &mut self,
        _: &mut MockBackend,
        name: &str,
        _: u64,
        _: Option<ProgressTarget>,
    ) -> Result<LoadedModel, ModelError> {
        if name != "lm" {
            return Err(ModelError::NoSuchModel);
        }
        Ok(LoadedModel { id: 7, dim: 0, bytes: WEIGHTS })
    }
    fn unload(&mut self, _: &mut MockBackend, _: u32) -> Result<(), ModelError> {
        Ok(())
    }
    fn infer(
        &mut self,
        _: &mut MockBackend,
        _: u32,
        _: &Infer<'_>,
        _: u64,
    ) -> Result<InferOutput, ModelError> {
        Err(ModelError::Unsupported("not an embedding model"))
    }
    fn generate(
        &mut self,
        _: &mut MockBackend,
        id: u32,
        req: &Generate<'_>,
        budget: u64,
        seq: u16,
    ) -> Result<Generated, ModelError> {
        if self.plain {
            return Err(ModelError::Unsupported("this node does not generate text"));
        }
        assert_eq!(id, 7);
        self.calls.push((seq, budget));
        if budget < 1000 {
            return Err(ModelError::QuotaExceeded);
        }
        Ok(Generated {
            finish_reason: FinishReason::LENGTH,
            prompt_tokens: req.prompt_bytes().len() as u32,
            generated_tokens: req.max_tokens,
            prompt_us: 1,
            generate_us: 2,
        })
    }
    fn upload_begin(&mut self, _: &str, _: u64) -> Result<(), ModelError> {
        Err(ModelError::NoSuchModel)
    }
    fn upload_chunk(&mut self, _: &[u8]) -> Result<(), ModelError> {
        Err(ModelError::NoSuchModel)
    }
    fn upload_commit(
        &mut self,
        _: &mut MockBackend,
        _: u64,
        _: Option<ProgressTarget>,
    ) -> Result<LoadedModel, ModelError> {
        Err(ModelError::NoSuchModel)
    }
    fn upload_cancel(&mut self) {}
    fn release_all(&mut self, _: &mut MockBackend) {}
}

fn ready(models: bool, quota: u64, b: &mut MockBackend, host: &mut Lm) -> Driver {
    let mut d = Driver::new(SessionConfig { quota, models, ..SessionConfig::default() }, [3; 32]);
    let mut p = [0u8; Hello::LEN];
    Hello { min_version: 1, max_version: 1, caps: Caps::MODELS }.emit(&mut p).unwrap();
    d.raw_with(b, host, Kind::HELLO, Flags::NONE, &p);
    d
}

fn generate(
    d: &mut Driver,
    b: &mut MockBackend,
    host: &mut Lm,
    model: u32,
    max: u32,
    s: Sampling,
) -> common::Out {
    let mut p = vec![0u8; 128];
    let n = Generate::emit_parts(model, max, &s, Prompt::Text("four"), &[], &mut p).unwrap();
    d.raw_with(b, host, Kind::GENERATE, Flags::NONE, &p[..n]).remove(0)
}

fn code(o: &common::Out) -> ErrorCode {
    ErrorCode(o.error_code().unwrap_or_else(|| panic!("expected ERROR, got {:?}", o.response())))
}

fn load(d: &mut Driver, b: &mut MockBackend, host: &mut Lm) -> u32 {
    let mut p = [0u8; 8];
    let n = ModelLoad { name: "lm" }.emit(&mut p).unwrap();
    match d.raw_with(b, host, Kind::MODEL_LOAD, Flags::NONE, &p[..n]).remove(0).response() {
        Response::ModelLoaded(m) => m.model,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_generation_gets_its_seq_and_the_quota_left() {
    let (mut b, mut host) = (MockBackend::new(1 << 20), Lm::default());
    let mut d = ready(true, 5000, &mut b, &mut host);
    let id = load(&mut d, &mut b, &mut host);
    let out = generate(&mut d, &mut b, &mut host, id, 3, Sampling::GREEDY);
    assert_eq!(out.seq, d.last_seq());
    match out.response() {
        Response::Generated(g) => {
            assert_eq!((g.prompt_tokens, g.generated_tokens), (4, 3));
            assert_eq!(g.finish_reason, FinishReason::LENGTH);
        }
        other => panic!("{other:?}"),
    }
    // The budget is the quota less the model's charged bytes.
    assert_eq!(host.calls, [(d.last_seq(), 5000 - WEIGHTS)]);
    // A smaller quota: the host's QUOTA_EXCEEDED reaches the client.
    let mut d = ready(true, 1000, &mut b, &mut host);
    let id = load(&mut d, &mut b, &mut host);
    assert_eq!(
        code(&generate(&mut d, &mut b, &mut host, id, 3, Sampling::GREEDY)),
        ErrorCode::QUOTA_EXCEEDED
    );
}

#[test]
fn the_session_refuses_bad_generates_before_the_host_runs() {
    let (mut b, mut host) = (MockBackend::new(1 << 20), Lm::default());
    let mut d = ready(true, 5000, &mut b, &mut host);
    let id = load(&mut d, &mut b, &mut host);
    let g = Sampling::GREEDY;
    assert_eq!(code(&generate(&mut d, &mut b, &mut host, id + 1, 3, g)), ErrorCode::NO_SUCH_MODEL);
    assert_eq!(code(&generate(&mut d, &mut b, &mut host, id, 0, g)), ErrorCode::INVALID_ARGUMENT);
    for bad in [
        Sampling { temperature: f32::NAN, ..g },
        Sampling { temperature: -1.0, ..g },
        Sampling { top_p: 0.0, ..g },
        Sampling { top_p: 1.5, ..g },
    ] {
        assert_eq!(
            code(&generate(&mut d, &mut b, &mut host, id, 3, bad)),
            ErrorCode::INVALID_ARGUMENT,
            "{bad:?}"
        );
    }
    let mut p = vec![0u8; 128];
    let n = Generate::emit_parts(id, 3, &g, Prompt::Text("hi"), &[], &mut p).unwrap();
    p[28] = 9;
    let out = d.raw_with(&mut b, &mut host, Kind::GENERATE, Flags::NONE, &p[..n]).remove(0);
    assert_eq!(code(&out), ErrorCode::UNSUPPORTED);
    p[28] = 0;
    p[n - 1] = 0xff;
    let out = d.raw_with(&mut b, &mut host, Kind::GENERATE, Flags::NONE, &p[..n]).remove(0);
    assert_eq!(code(&out), ErrorCode::MALFORMED);
    assert!(host.calls.is_empty(), "the host never ran");
    // A host without language models.
    host.plain = true;
    assert_eq!(code(&generate(&mut d, &mut b, &mut host, id, 3, g)), ErrorCode::UNSUPPORTED);
    // A node without models.
    let mut d = ready(false, 5000, &mut b, &mut host);
    assert_eq!(code(&generate(&mut d, &mut b, &mut host, 1, 3, g)), ErrorCode::UNSUPPORTED);
}

#[test]
fn cancel_is_acknowledged_once_ready() {
    let (mut b, mut host) = (MockBackend::new(1 << 20), Lm::default());
    let mut d = Driver::new(SessionConfig { models: true, ..SessionConfig::default() }, [3; 32]);
    let early = d.raw_with(&mut b, &mut host, Kind::CANCEL, Flags::NONE, &[]).remove(0);
    assert_eq!(code(&early), ErrorCode::WRONG_STATE);
    let mut d = ready(true, 5000, &mut b, &mut host);
    let out = d.raw_with(&mut b, &mut host, Kind::CANCEL, Flags::NONE, &[]).remove(0);
    assert_eq!(out.response(), Response::Ack(Kind::CANCEL));
    let out = d.raw_with(&mut b, &mut host, Kind::CANCEL, Flags::NONE, &[0]).remove(0);
    assert_eq!(code(&out), ErrorCode::MALFORMED);
}
