"""rela-llm's host forward pass against llama.cpp (llama-cpp-python) on the same CPU, the same GGUF
and the same thread count, alternating runs in one process tree; plus llama.cpp's tokenizer and
greedy generation against the transformers fixture (hosts/llm/tests/fixtures).

Run by scripts/bench/generate-peers.sh, which sets up the virtual environment and builds the
bench binary. Prints a table and, with --json, writes the raw numbers.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import llama_cpp

NEAR_TIE = 0.05  # the fixture's near-tie margin, as in hosts/llm/tests/generate.rs


def bench_prompt(vocab, n):
    """The fixed prompt generate_bench uses (ordinary token ids)."""
    return [200 + (i * 7919) % (vocab - 400) for i in range(max(n, 1))]


def last_logits(llm):
    """The logits after the last token evaluated (llama-cpp-python fills `scores` only with
    logits_all)."""
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def run_rela(binary, model, n_prompt, n_decode, threads):
    out = subprocess.run(
        [binary, model, str(n_prompt), str(n_decode), str(threads), "1"],
        check=True, capture_output=True, text=True,
    ).stdout
    m = re.search(r"prompt (\d+) tokens ([\d.]+) s [\d.]+ tok/s decode (\d+) tokens ([\d.]+) s", out)
    if not m:
        sys.exit(f"unexpected generate_bench output: {out!r}")
    return int(m[1]) / float(m[2]), int(m[3]) / float(m[4])


def run_llama(llm, prompt, n_decode):
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    pp = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n_decode):
        nxt = int(np.argmax(last_logits(llm)))
        llm.eval([nxt])
    tg = time.perf_counter() - t
    return len(prompt) / pp, n_decode / tg


def tokenizer_check(model, fixtures):
    """llama.cpp's tokenizer against the ids in the fixtures (text, parse_special, ids)."""
    vocab = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    cases = []
    gen = json.load(open(f"{fixtures}/generation_fixture.json"))
    for c in gen["cases"]:
        cases.append(("generation:" + c["name"], c["text"], c["parse_special"], c["input_ids"]))
    tok = json.load(open(f"{fixtures}/smollm2_tokens.json"))
    for i, c in enumerate(tok["cases"]):
        cases.append((f"tokens:{i}", c["text"], c["parse_special"], c["ids"]))
    bad = []
    for name, text, special, want in cases:
        got = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=special)
        if list(got) != list(want):
            bad.append(name)
    return len(cases), bad


def fixture_agreement(llm, fixtures):
    """llama.cpp's greedy ids from the fixture's input ids, compared as the rela-llm test
    compares its own: equal up to the first near tie."""
    fx = json.load(open(f"{fixtures}/generation_fixture.json"))
    eos = fx["eos_token_id"]
    rows = []
    for c in fx["cases"]:
        want = c["generated_ids"]
        checked = next((i for i, m in enumerate(c["margins"]) if m < NEAR_TIE), len(want))
        llm.reset()
        llm.eval(c["input_ids"])
        got = []
        for _ in range(len(want)):
            nxt = int(np.argmax(last_logits(llm)))
            got.append(nxt)
            if nxt == eos:
                break
            llm.eval([nxt])
        agree = 0
        for a, b in zip(got, want):
            if a != b:
                break
            agree += 1
        rows.append({"name": c["name"], "agree": agree, "checked": checked, "len": len(want),
                     "pass": agree >= checked})
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bench", required=True, help="target/release/examples/generate_bench")
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()

    n_tok, bad = tokenizer_check(a.model, a.fixtures)
    print(f"tokenizer: llama.cpp gives the fixtures' ids for {n_tok - len(bad)}/{n_tok} texts"
          + (f"; differs on {', '.join(bad)}" if bad else ""))

    llm = llama_cpp.Llama(model_path=a.model, n_ctx=max(1024, a.prompt + a.decode + 8), n_batch=512,
                          n_ubatch=512, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    agreement = fixture_agreement(llm, a.fixtures)
    passed = sum(r["pass"] for r in agreement)
    print(f"llama.cpp against the transformers fixture: {passed}/{len(agreement)} prompts equal up to the "
          f"first near tie (margin < {NEAR_TIE}); per prompt agree/required/generated: "
          + ", ".join(f"{r['name']} {r['agree']}/{r['checked']}/{r['len']}" for r in agreement))

    prompt = bench_prompt(llm.n_vocab(), a.prompt)
    run_llama(llm, prompt, 4)  # warm-up
    run_rela(a.bench, a.model, 8, 4, a.threads)
    runs = {"rela": [], "llama.cpp": []}
    for r in range(a.rounds):
        order = [("rela", lambda: run_rela(a.bench, a.model, a.prompt, a.decode, a.threads)),
                 ("llama.cpp", lambda: run_llama(llm, prompt, a.decode))]
        if r % 2:
            order.reverse()
        for name, f in order:
            runs[name].append(f())
    med = {k: (statistics.median(p for p, _ in v), statistics.median(d for _, d in v)) for k, v in runs.items()}
    print(f"\n{a.threads} thread(s), {a.prompt}-token prompt, {a.decode} greedy tokens, {a.rounds} rounds "
          "alternating (median; range)")
    print("| | prompt tok/s | decode tok/s |\n|---|---|---|")
    for k, v in runs.items():
        ps, ds = [p for p, _ in v], [d for _, d in v]
        print(f"| {k} | {med[k][0]:.0f} ({min(ps):.0f}-{max(ps):.0f}) | {med[k][1]:.1f} ({min(ds):.1f}-{max(ds):.1f}) |")
    ratio = (med["rela"][0] / med["llama.cpp"][0], med["rela"][1] / med["llama.cpp"][1])
    print(f"| rela / llama.cpp | {ratio[0]:.2f}x | {ratio[1]:.2f}x |")
    if a.json:
        json.dump({"threads": a.threads, "prompt": a.prompt, "decode": a.decode, "runs": runs, "median": med,
                   "ratio": ratio, "tokenizer": {"cases": n_tok, "differ": bad},
                   "llama_cpp_fixture_agreement": agreement,
                   "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode()},
                  open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
