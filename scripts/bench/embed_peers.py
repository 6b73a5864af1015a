#!/usr/bin/env python3
"""All-MiniLM-L6-v2 embedding throughput: a vram-relay node against sentence-transformers and
onnxruntime on the same CPU, in one run, plus GEMM GFLOP/s against numpy.

Run through scripts/bench/embed-peers.sh, which builds the Rust side, makes the virtual
environment, starts the node and passes the paths here. Everything is offline: the model comes
from --model-dir, the ONNX file is exported from it once (into --work).

Method:
- One text set (--texts, default 32) of realistic lengths, 6 to 256 tokens, one of them
  truncated at 256 (the model's limit on every side), built deterministically from fixed
  sentences and measured with the model's own tokenizer.
- Every peer computes the same thing: token ids, the BERT encoder, mean pooling, L2
  normalization, from text to vector. The node is reached through a persistent client session
  (one connection, one MODEL_LOAD; hosts/client/examples/embed_session.rs), timed on the
  client's side.
- The same thread count everywhere: torch.set_num_threads, onnxruntime's intra-op threads, and
  the node's kernel pool (RELA_KERNEL_THREADS, set by the shell script).
- Rounds alternate the peers (the first peer of each round rotates) at each batch size; the
  tables give the median and the range over rounds, and ratios of medians.
- Before timing, the embeddings are compared: the minimum cosine over all texts between the node
  and sentence-transformers (and onnxruntime and sentence-transformers).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BASE_SENTENCES = [
    "The relay node lends the memory of its accelerator to small devices on the local network.",
    "Quarterly revenue grew by four percent while operating costs stayed flat.",
    "She walked to the station in the rain and missed the last train home.",
    "Vectors that lie close together in embedding space usually share meaning.",
    "The museum opens at nine on weekdays and at ten on weekends and holidays.",
    "Fresh bread, cheese and olives made an easy dinner after a long day at work.",
    "Engineers measured the latency of every request under heavy load for a week.",
    "A thin client sends text over the network and receives one vector per sentence.",
    "Researchers compared the new treatment with a placebo in a randomized trial.",
    "The committee postponed its decision until the next meeting in early spring.",
    "Heavy snowfall closed the mountain pass, and drivers were told to wait in town.",
    "Small language models can run on a laptop without a dedicated graphics card.",
]

# Target lengths in tokens (before truncation): mostly short and medium, a few long, and one
# past the model's 256-token limit. Cycled to fill --texts.
TARGET_TOKENS = [12, 18, 9, 25, 40, 14, 60, 22, 31, 8, 95, 17, 48, 11, 130, 27,
                 20, 6, 75, 16, 35, 300, 13, 55, 24, 10, 180, 19, 42, 15, 28, 66]


def build_texts(tokenizer, count):
    """Texts whose token counts (with [CLS] and [SEP]) approach TARGET_TOKENS."""
    words = " ".join(BASE_SENTENCES).split()
    texts = []
    for i in range(count):
        target = TARGET_TOKENS[i % len(TARGET_TOKENS)]
        start = (i * 7) % len(words)
        out = []
        j = start
        while True:
            out.append(words[j % len(words)])
            j += 1
            if len(tokenizer(" ".join(out))["input_ids"]) >= target:
                break
        texts.append(" ".join(out))
    return texts


def tokens(tokenizer, text, limit=256):
    return min(len(tokenizer(text)["input_ids"]), limit)


class Node:
    """The persistent client session (embed_session example) as a child process."""

    name = "vram-relay"

    def __init__(self, exe, addr, model, texts_file):
        self.p = subprocess.Popen([exe, addr, model, str(texts_file)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"embed_session did not start: {line!r}")

    def ask(self, command):
        self.p.stdin.write(command + "\n")
        self.p.stdin.flush()
        lines = []
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise SystemExit(f"embed_session exited during {command!r}")
            line = line.strip()
            if line.startswith("ok"):
                return lines, line[2:].split()
            if line.startswith("error"):
                raise SystemExit(f"embed_session: {line}")
            lines.append(line)

    def bench(self, batch, seconds):
        _, (sent, elapsed) = self.ask(f"bench {batch} {seconds}")
        return int(sent) / float(elapsed)

    def one(self, index, reps):
        _, times = self.ask(f"one {index} {reps}")
        return [float(t) for t in times]

    def vectors(self):
        import numpy as np
        lines, _ = self.ask("vectors")
        return np.array([[float(x) for x in line.split()] for line in lines], dtype=np.float32)

    def close(self):
        self.ask_quit()

    def ask_quit(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            self.p.wait(timeout=30)
        except Exception:  # noqa: BLE001 - best effort at exit
            self.p.kill()


class Python:
    """A peer in this process: `embed(list of texts) -> normalized vectors`."""

    def __init__(self, name, embed, texts):
        self.name, self.embed, self.texts = name, embed, texts

    def bench(self, batch, seconds):
        n = len(self.texts)
        t, sent, i = time.perf_counter(), 0, 0
        while sent == 0 or time.perf_counter() - t < seconds:
            self.embed([self.texts[(i * batch + j) % n] for j in range(batch)])
            sent += batch
            i += 1
        return sent / (time.perf_counter() - t)

    def one(self, index, reps):
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            self.embed([self.texts[index]])
            times.append(time.perf_counter() - t)
        return times

    def vectors(self):
        import numpy as np
        return np.concatenate([self.embed(self.texts[i:i + 32]) for i in range(0, len(self.texts), 32)])


def onnx_peer(st, model_dir, work, threads, texts):
    import numpy as np
    import onnxruntime as ort
    import torch

    path = Path(work) / "all-MiniLM-L6-v2.onnx"
    if not path.exists():
        model = st[0].auto_model.eval()

        class Encoder(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, ids, mask, types):
                return self.m(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

        enc = st.tokenizer(["hello world", "a longer sentence than that"], padding=True, return_tensors="pt")
        names = ["input_ids", "attention_mask", "token_type_ids"]
        torch.onnx.export(Encoder(model), tuple(enc[n] for n in names), str(path), input_names=names,
                          output_names=["hidden"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in names + ["hidden"]})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    tok = st.tokenizer

    def embed(batch):
        enc = tok(batch, padding=True, truncation=True, max_length=256, return_tensors="np")
        feeds = {n: enc[n].astype(np.int64) for n in ["input_ids", "attention_mask", "token_type_ids"]}
        hidden = session.run(None, feeds)[0]
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    return Python("onnxruntime", embed, texts)


def numpy_gflops(shape, seconds):
    import numpy as np
    m, k, n = shape
    rng = np.random.default_rng(1)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    np.matmul(a, b, out=out)
    best = 0.0
    for _ in range(3):
        t, calls = time.perf_counter(), 0
        while calls == 0 or time.perf_counter() - t < seconds / 3:
            np.matmul(a, b, out=out)
            calls += 1
        best = max(best, 2 * m * k * n * calls / (time.perf_counter() - t) / 1e9)
    return best


def rust_gflops(exe, shapes, seconds, threads):
    arg = ",".join(f"{m}x{k}x{n}" for m, k, n in shapes)
    out = subprocess.run([exe, "--threads", str(threads), "--seconds", str(seconds), "--shapes", arg],
                         check=True, capture_output=True, text=True).stdout
    result = {}
    for line in out.splitlines():
        kind, m, k, n, g = line.split()
        result[(kind, int(m), int(k), int(n))] = float(g)
    return result


def spread(values):
    values = sorted(values)
    med = statistics.median(values)
    return med, f"{med:.1f} ({values[0]:.1f}–{values[-1]:.1f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--node", required=True, help="the node's address")
    ap.add_argument("--client", required=True, help="the embed_session example binary")
    ap.add_argument("--gemm", required=True, help="the gemm_gflops example binary")
    ap.add_argument("--work", required=True, help="a directory for the text set and the ONNX file")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--texts", type=int, default=32)
    ap.add_argument("--gemm-shapes", default="256x384x1536,256x1536x384,32x384x384,1024x1024x1024")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--json", help="write every measurement here")
    args = ap.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    st = SentenceTransformer(args.model_dir, device="cpu")
    texts = build_texts(st.tokenizer, args.texts)
    lens = [tokens(st.tokenizer, t) for t in texts]
    long_index = max(range(len(texts)), key=lambda i: lens[i])
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    texts_file = work / "texts.txt"
    texts_file.write_text("\n".join(texts) + "\n")
    print(f"texts: {len(texts)}, tokens per text {min(lens)}–{max(lens)} (mean {statistics.mean(lens):.0f}, "
          f"the {lens[long_index]}-token text is #{long_index}); threads: {args.threads}", flush=True)

    def st_embed(batch):
        return st.encode(batch, batch_size=len(batch), convert_to_numpy=True, normalize_embeddings=True,
                         show_progress_bar=False)

    peers = [Python("sentence-transformers", st_embed, texts)]
    if not args.no_onnx:
        try:
            peers.append(onnx_peer(st, args.model_dir, work, args.threads, texts))
        except Exception as e:  # noqa: BLE001 - onnxruntime is optional
            print(f"onnxruntime: skipped ({e})", flush=True)
    node = Node(args.client, args.node, "all-MiniLM-L6-v2", texts_file)
    peers.append(node)

    ref = peers[0].vectors()
    for p in peers[1:]:
        v = p.vectors()
        cos = (v * ref).sum(1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(ref, axis=1))
        print(f"{p.name}: min cosine against sentence-transformers over {len(texts)} texts: {cos.min():.6f}",
              flush=True)

    batches = [int(b) for b in args.batches.split(",")]
    rates = {(p.name, b): [] for p in peers for b in batches}
    for r in range(args.rounds):
        for b in batches:
            order = peers[r % len(peers):] + peers[:r % len(peers)]
            for p in order:
                rates[(p.name, b)].append(p.bench(b, args.seconds))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{p.name} b{b} {rates[(p.name, b)][-1]:.1f}" for b in batches for p in peers), flush=True)

    long_times = {p.name: [] for p in peers}
    for r in range(args.rounds):
        for p in peers[r % len(peers):] + peers[:r % len(peers)]:
            p.one(long_index, 1)  # warm-up
            long_times[p.name].extend(p.one(long_index, 5))

    shapes = [tuple(int(x) for x in s.split("x")) for s in args.gemm_shapes.split(",")]
    np_g = {s: [] for s in shapes}
    rs_g = {}
    for r in range(args.rounds):
        steps = [lambda: [np_g[s].append(numpy_gflops(s, args.seconds / 2)) for s in shapes],
                 lambda: [rs_g.setdefault(key, []).append(g) for key, g in
                          rust_gflops(args.gemm, shapes, args.seconds / 2, args.threads).items()]]
        for step in (steps if r % 2 == 0 else steps[::-1]):
            step()
    node.close()

    print()
    print(f"## sentences/s (median (min–max) over {args.rounds} rounds of ≥{args.seconds:g} s; "
          f"{len(texts)} texts, {args.threads} threads)")
    print()
    print("| peer | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|" + "---:|" * len(batches))
    med = {}
    for p in peers:
        cells = []
        for b in batches:
            m, text = spread(rates[(p.name, b)])
            med[(p.name, b)] = m
            cells.append(text)
        print(f"| {p.name} | " + " | ".join(cells) + " |")
    for other in [p for p in peers if p.name != node.name]:
        print(f"| ratio vram-relay / {other.name} | " + " | ".join(
            f"{med[(node.name, b)] / med[(other.name, b)]:.2f}" for b in batches) + " |")
    print()
    print(f"## the {lens[long_index]}-token text alone, batch 1 (ms, median (min–max) of "
          f"{5 * args.rounds} runs)")
    print()
    print("| peer | ms | vram-relay / peer (time) |")
    print("|---|---:|---:|")
    node_ms = statistics.median(long_times[node.name]) * 1e3
    for p in peers:
        ts = sorted(t * 1e3 for t in long_times[p.name])
        m = statistics.median(ts)
        print(f"| {p.name} | {m:.1f} ({ts[0]:.1f}–{ts[-1]:.1f}) | {node_ms / m:.2f} |")
    print()
    print(f"## GEMM GFLOP/s (best of 3 stretches per round; median (min–max) over {args.rounds} rounds, "
          f"{args.threads} threads)")
    print()
    print("| m×k×n | numpy matmul | rela fast::matmul | rela fast::linear (x·Wᵀ) | matmul / numpy |")
    print("|---|---:|---:|---:|---:|")
    for s in shapes:
        npm, npt = spread(np_g[s])
        mm, mmt = spread(rs_g[("matmul", *s)])
        _, lit = spread(rs_g[("linear", *s)])
        print(f"| {s[0]}×{s[1]}×{s[2]} | {npt} | {mmt} | {lit} | {mm / npm:.2f} |")
    try:
        import numpy
        blas = numpy.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
        print(f"\nnumpy {numpy.__version__} BLAS: {blas.get('name', '?')} {blas.get('version', '')}; "
              f"torch {torch.__version__}")
    except Exception:  # noqa: BLE001 - informational only
        pass
    if args.json:
        Path(args.json).write_text(json.dumps({
            "threads": args.threads, "texts": texts, "tokens": lens,
            "rates": {f"{n}|{b}": v for (n, b), v in rates.items()},
            "long_seconds": long_times,
            "numpy_gflops": {"x".join(map(str, s)): v for s, v in np_g.items()},
            "rust_gflops": {"|".join(map(str, k)): v for k, v in rs_g.items()},
        }, indent=1))


if __name__ == "__main__":
    sys.exit(main())
