#!/usr/bin/env bash
# The JNI path beside the Rust client (docs/BENCHMARKS.md, "The JVM path"): one release node on
# loopback with a token, then ROUNDS rounds (default 6) of hosts/jni/examples/baseline.rs and
# Bench.java, alternating. Builds what it needs in release mode.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-6}
cargo build -q --release -p vram-relay
cargo build -q --release -p rela-jni --lib --example baseline
out=$(mktemp -d)
trap 'kill -TERM "$pid" 2>/dev/null || true; rm -rf "$out"' EXIT
javac -d "$out/classes" hosts/jvm/src/main/java/org/vramrelay/*.java hosts/jvm/src/test/java/org/vramrelay/Bench.java
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
head -c 24 /dev/urandom | base64 > "$out/token"
target/release/vram-relay serve --backend host --capacity 256MiB --listen "127.0.0.1:$port" --no-discovery \
  --token-file "$out/token" 2> "$out/node.log" &
pid=$!
for _ in $(seq 1 300); do grep -q "node ready" "$out/node.log" && break; sleep 0.1; done
for round in $(seq 1 "$rounds"); do
  echo "== round $round: rust"
  target/release/examples/baseline "127.0.0.1:$port" "$out/token"
  echo "== round $round: jni"
  java -Dorg.vramrelay.library="$PWD/target/release/librela_jni.so" -cp "$out/classes" org.vramrelay.Bench \
    127.0.0.1 "$port" "$out/token"
done
