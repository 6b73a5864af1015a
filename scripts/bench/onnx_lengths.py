#!/usr/bin/env python3
"""onnxruntime's all-MiniLM-L6-v2 forward pass at fixed token counts, one thread, for comparison
with `cargo run --release -p rela-models --example embed_profile -- MODEL_DIR TOKENS RUNS 1`.

Run after scripts/bench/embed-peers.sh, with its virtual environment and the ONNX file it
exported:

    target/embed-peers-venv/bin/python scripts/bench/onnx_lengths.py \\
        [--onnx target/embed-peers/all-MiniLM-L6-v2.onnx] [--tokens 8,16,32,64,128,256]

Prints the mean and best milliseconds per pass for each token count (the encoder only: no
tokenizer, pooling or normalization, which cost the node nothing comparable at these sizes).
"""

import argparse
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", default="target/embed-peers/all-MiniLM-L6-v2.onnx")
    ap.add_argument("--tokens", default="8,16,32,64,128,256")
    args = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(args.onnx, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    for n in (int(t) for t in args.tokens.split(",")):
        ids = np.full((1, n), 2000, dtype=np.int64)
        ids[0, 0], ids[0, -1] = 101, 102
        feed = {}
        for name in names:
            if name == "input_ids":
                feed[name] = ids
            elif name == "attention_mask":
                feed[name] = np.ones((1, n), np.int64)
            else:
                feed[name] = np.zeros((1, n), np.int64)
        for _ in range(3):
            s.run(None, feed)
        runs = 40 if n < 128 else 15
        best = float("inf")
        start = time.perf_counter()
        for _ in range(runs):
            t = time.perf_counter()
            s.run(None, feed)
            best = min(best, time.perf_counter() - t)
        mean = (time.perf_counter() - start) / runs
        print(f"{n} tokens, 1 thread: mean {mean * 1e3:.1f} ms, best {best * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
