"""Concurrent streaming generation: `vram-relay serve` against llama.cpp's server
(llama-cpp-python's `python -m llama_cpp.server`) on the same CPU, the same GGUF and the same thread
count, in one run: for 1, 4, 8... concurrent streams, the aggregate tokens/s and each stream's time
to first token, runs alternating between the two servers (the order flips every round).

rela's side is `generate_sessions --json --addr ADDR` (the Rust client, one session per stream,
each with its own short prompt; it prints one JSON object per session count). llama.cpp's side is
the same prompts as streaming `/v1/completions` requests (temperature 0, no repeat penalty), one
thread per stream; each server-sent chunk is one token.

llama-cpp-python's server has no parallel slots (no `--n_parallel`; its requests take one lock
and run one after another, and by default a new request interrupts the one streaming, which
`--interrupt_requests False` turns off), so its concurrent streams are served in turn. With
`--llama-server BIN`, llama.cpp's own C++ server is the peer instead: `llama-server --parallel N
--cont-batching`, N the largest stream count, so every stream has a slot and the slots' next
tokens run in one batch (built from the llama.cpp sources in llama-cpp-python's source archive by
generate-peers.sh --llama-server, or by hand). Run by scripts/bench/generate-peers.sh, which sets
up the virtual environment and builds the binaries.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

# The prompts of hosts/node/examples/generate_sessions.rs, in its order (session i takes i % 8).
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three laws of motion are",
    "My favourite recipe for bread starts with",
    "In 1969, the first people to walk on the Moon",
    "A good way to learn a new language is",
    "The weather today is",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready, what, proc, timeout=120):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with status {proc.returncode} before it was ready")
        if ready():
            return
        time.sleep(0.2)
    sys.exit(f"{what} was not ready after {timeout} s")


def tcp_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def http_ok(port, path):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", path)
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


def llama_stream(port, prompt, tokens, start, out):
    """One streaming completion: out gets (tokens, first token time, end time), times from start."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    # Plain greedy decoding, as rela's side: the server's default repeat_penalty is 1.1.
    body = json.dumps({"prompt": prompt, "max_tokens": tokens, "temperature": 0.0, "repeat_penalty": 1.0,
                       "stream": True})
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        out.append(RuntimeError(f"llama.cpp server answered {r.status}: {r.read()[:200]!r}"))
        return
    count, first, last = 0, None, None
    for line in r:
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if chunk["choices"][0].get("finish_reason") is None or chunk["choices"][0].get("text"):
            count += 1
            last = time.perf_counter() - start
            if first is None:
                first = last
    c.close()
    end = time.perf_counter() - start
    first = first if first is not None else end
    out.append((count, first, end, last if last is not None else end))


def run_llama(port, n, tokens):
    results, threads = [], []
    start = time.perf_counter()
    for i in range(n):
        t = threading.Thread(target=llama_stream, args=(port, PROMPTS[i % len(PROMPTS)], tokens, start, results))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for r in results:
        if isinstance(r, Exception):
            raise r
    total = sum(r[0] for r in results)
    # Each stream's own decode rate (tokens after the first, from the first to the last), summed,
    # as generate_sessions computes rela's.
    decode = sum((r[0] - 1) / (r[3] - r[1]) for r in results if r[0] > 1 and r[3] > r[1])
    return {"sessions": n, "tokens": total, "wall_s": wall, "first_ms": sorted(r[1] * 1e3 for r in results),
            "decode_tok_s": decode}


def run_rela(binary, addr, n, tokens):
    out = subprocess.run([binary, "--json", "--addr", addr, str(tokens), str(n)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--relay", required=True, help="target/release/vram-relay")
    ap.add_argument("--sessions-bin", required=True, help="target/release/examples/generate_sessions")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--sessions", default="1,4,8")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--llama-server", help="llama.cpp's C++ llama-server binary, instead of llama-cpp-python's server")
    a = ap.parse_args()
    counts = [int(s) for s in a.sessions.split(",")]

    lport, rport = free_port(), free_port()
    if a.llama_server:
        slots = max(counts)
        # Each slot gets n_ctx / slots of context: 256 per slot covers a prompt and 48 tokens.
        cmd = [a.llama_server, "--model", a.model, "--threads", str(a.threads), "--threads-batch",
               str(a.threads), "--ctx-size", str(256 * slots), "--parallel", str(slots), "--cont-batching",
               "--host", "127.0.0.1", "--port", str(lport), "--no-webui"]
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", a.model, "--n_threads", str(a.threads),
               "--n_threads_batch", str(a.threads), "--n_ctx", "2048", "--interrupt_requests", "False",
               "--host", "127.0.0.1", "--port", str(lport), "--verbose", "False"]
    llama = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peer = f"llama-server --parallel {max(counts)}" if a.llama_server else "llama-cpp-python's server"
    env = dict(os.environ, RUST_LOG="warn")
    rela = subprocess.Popen(
        [a.relay, "serve", "--backend", "host", "--models", a.models_dir, "--kernel-threads", str(a.threads),
         "--listen", f"127.0.0.1:{rport}", "--no-discovery", "--no-mdns"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_until(lambda: http_ok(lport, "/v1/models"), "llama.cpp's server", llama)
        wait_until(lambda: tcp_open(rport), "vram-relay serve", rela)
        addr = f"127.0.0.1:{rport}"
        run_llama(lport, 1, 4)  # warm-up
        run_rela(a.sessions_bin, addr, 1, 4)
        runs = {"rela": {n: [] for n in counts}, "llama.cpp": {n: [] for n in counts}}
        for r in range(a.rounds):
            for n in counts:
                order = [("rela", lambda: run_rela(a.sessions_bin, addr, n, a.tokens)),
                         ("llama.cpp", lambda: run_llama(lport, n, a.tokens))]
                if r % 2:
                    order.reverse()
                for name, f in order:
                    runs[name][n].append(f())
    finally:
        for p in (llama, rela):
            p.terminate()
            p.wait()

    def rate(run):
        return run["tokens"] / run["wall_s"]

    def med(name, n, f):
        return statistics.median(f(run) for run in runs[name][n])

    def spread(name, n, f):
        """The median of f over the rounds, and its range, as a table cell."""
        values = [f(run) for run in runs[name][n]]
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    def scaling(label, rela_key, llama_key):
        """Each stream count's rate over the first count's, for both servers."""
        one = counts[0]
        for n in counts[1:]:
            print(f"{n} streams / {one}{label}: rela {summary[n][rela_key] / summary[one][rela_key]:.2f}x, "
                  f"llama.cpp server {summary[n][llama_key] / summary[one][llama_key]:.2f}x")

    print(f"\nllama.cpp peer: {peer}")
    print(f"{a.threads} thread(s), {a.tokens} greedy tokens per stream, {a.rounds} rounds alternating "
          "(medians over rounds; tok/s: every stream's tokens over the wall time from the first request "
          "to the last stream's end; first token: p50 and slowest stream)")
    print("| streams | rela tok/s | llama.cpp server tok/s | ratio | rela first token p50 / max "
          "| llama.cpp first token p50 / max | ratio (p50, llama.cpp / rela) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for n in counts:
        rr, lr = med("rela", n, rate), med("llama.cpp", n, rate)
        rf = (med("rela", n, lambda x: statistics.median(x["first_ms"])), med("rela", n, lambda x: max(x["first_ms"])))
        lf = (med("llama.cpp", n, lambda x: statistics.median(x["first_ms"])),
              med("llama.cpp", n, lambda x: max(x["first_ms"])))
        print(f"| {n} | {spread('rela', n, rate)} | {spread('llama.cpp', n, rate)} "
              f"| {rr / lr:.2f}x | {rf[0]:.0f} / {rf[1]:.0f} ms | {lf[0]:.0f} / {lf[1]:.0f} ms | {lf[0] / rf[0]:.2f}x |")
        summary[n] = {"rela_tok_s": rr, "llama_tok_s": lr, "rela_first_ms": rf, "llama_first_ms": lf}
    scaling("", "rela_tok_s", "llama_tok_s")

    # Decode only: each stream's tokens after its first over the time from its first token to
    # its last, summed over the streams (its prompt and its wait for a first token left out;
    # other streams' prompts that ran meanwhile left in).
    def decode(run):
        return run["decode_tok_s"]

    print("\ncombined decode tok/s (per stream: tokens after the first over first-to-last token time; "
          "summed over streams; medians over rounds)")
    print("| streams | rela decode tok/s | llama.cpp server decode tok/s | ratio |")
    print("|---:|---:|---:|---:|")
    for n in counts:
        rd, ld = med("rela", n, decode), med("llama.cpp", n, decode)
        print(f"| {n} | {spread('rela', n, decode)} | {spread('llama.cpp', n, decode)} | {rd / ld:.2f}x |")
        summary[n]["rela_decode_tok_s"], summary[n]["llama_decode_tok_s"] = rd, ld
    scaling(", decode", "rela_decode_tok_s", "llama_decode_tok_s")
    if a.json:
        json.dump({"threads": a.threads, "tokens": a.tokens, "runs": runs, "summary": summary},
                  open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
