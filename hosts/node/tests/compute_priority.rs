//! `ComputePriority::Idle` (what `vram-relay serve` chooses by default): while a session
//! generates, the node's compute threads (the kernel pool's workers, the job thread, the
//! generation batcher) are in Linux's `SCHED_IDLE` class, and the threads that answer requests
//! (the engine, the async runtime's workers) are not. The setting is the process's, so this
//! file holds this one test.
//!
//! Needs SmolLM2-135M-Instruct Q4_1 (`hosts/models/fetch-model.sh`); without it the test prints
//! a SKIPPED line, unless `RELA_REQUIRE_GGUF=1`.

mod common;

use std::collections::BTreeMap;

use common::{MODEL, config, models_dir, start, within};
use rela_client::{Client, GenerateEvent, GenerateRequest};
use rela_core::wire::generate::{Prompt, Sampling};
use rela_kernels::fast::priority::{ComputePriority, set_compute_priority};
use rela_node::NodeConfig;

/// Linux's `SCHED_IDLE` policy number (`/proc/<pid>/task/<tid>/stat`, field 41).
const SCHED_IDLE: u32 = 5;

/// Each thread of this process by name: the scheduling policy of every thread of that name.
fn policies() -> BTreeMap<String, Vec<u32>> {
    let mut by_name: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("task").path();
        // A thread that ended since the listing has no files left.
        let (Ok(name), Ok(stat)) =
            (std::fs::read_to_string(dir.join("comm")), std::fs::read_to_string(dir.join("stat")))
        else {
            continue;
        };
        // Fields after the command name, which ends at the last ')': field 3 (state) first.
        let fields: Vec<&str> = stat.rsplit_once(')').expect("stat").1.split_whitespace().collect();
        let policy = fields[41 - 3].parse().expect("policy");
        by_name.entry(name.trim().to_owned()).or_default().push(policy);
    }
    by_name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg(target_os = "linux")]
async fn compute_threads_run_in_the_idle_class_and_request_threads_do_not() {
    let Some(dir) = models_dir("compute_threads_run_in_the_idle_class_and_request_threads_do_not") else {
        return;
    };
    set_compute_priority(ComputePriority::Idle);
    let node = start(NodeConfig { models: Some(dir), ..config() }, 64 << 20).await;
    let mut c = within(Client::connect(node.local_addr(), None)).await.expect("connect");
    let m = within(c.model_load(MODEL)).await.expect("load");
    let prompt = "Once upon a time, in a village by the sea, there lived";
    let request = GenerateRequest {
        model: m.id,
        prompt: Prompt::Text(prompt),
        max_tokens: 64,
        sampling: Sampling::GREEDY,
        stops: &[],
    };
    let mut stream = within(c.generate(&request)).await.expect("generate");
    // Looked at while tokens come: the job thread lives as long as the generation.
    let mut seen = None;
    while let Some(event) = within(stream.next()).await.expect("event") {
        if matches!(event, GenerateEvent::Token { .. }) && seen.is_none() {
            seen = Some(policies());
        }
    }
    drop(stream);
    within(c.close()).await.expect("close");
    let seen = seen.expect("the generation made a token");
    let of = |name: &str| seen.get(name).cloned().unwrap_or_default();
    for name in ["rela-job", "rela-llm-batch"] {
        let p = of(name);
        assert!(!p.is_empty(), "no {name} thread while generating: {seen:?}");
        assert!(p.iter().all(|&p| p == SCHED_IDLE), "{name} is not SCHED_IDLE: {seen:?}");
    }
    // The pool's workers (none where the pool has one thread, the caller).
    let workers: Vec<u32> =
        seen.iter().filter(|(n, _)| n.starts_with("rela-kernels-")).flat_map(|(_, p)| p.clone()).collect();
    assert!(workers.iter().all(|&p| p == SCHED_IDLE), "kernel pool workers: {seen:?}");
    for name in ["rela-engine", "tokio-rt-worker"] {
        let p = of(name);
        assert!(!p.is_empty(), "no {name} thread: {seen:?}");
        assert!(p.iter().all(|&p| p != SCHED_IDLE), "{name} must stay in the normal class: {seen:?}");
    }
}
