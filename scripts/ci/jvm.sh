#!/usr/bin/env bash
# The JVM API (hosts/jvm, native side hosts/jni): compiled with plain javac and jar, tested on the
# JVM against a live node with a token (embeddings and generation too when their models are in
# models/); the README's Java example is compiled. Assumes `cargo test --workspace` ran; builds rela-jni.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/ci/lib/node.sh

cargo build -q -p rela-jni
lib=$PWD/target/debug/librela_jni.so
out=$(mktemp -d)

javac -Xlint:all -Werror -d "$out/classes" hosts/jvm/src/main/java/org/vramrelay/*.java
jar cf "$out/rela.jar" -C "$out/classes" .
javac -Xlint:all -Werror -cp "$out/rela.jar" -d "$out/test" hosts/jvm/src/test/java/org/vramrelay/*.java

# The README's Java example, as printed there.
mkdir -p "$out/readme"
awk '/<!-- java-example: compiled by scripts\/ci\/jvm.sh -->/ { on = 1; next }
     on && /^```java/ { next }
     on && /^```/ { exit }
     on { print }' README.md > "$out/readme/Hello.java"
[ -s "$out/readme/Hello.java" ] || { echo "README.md has no Java example marked for CI" >&2; exit 1; }
javac -Xlint:all -Werror -cp "$out/rela.jar" -d "$out/readme" "$out/readme/Hello.java"

# Embeddings and generation run when their models are in models/ (hosts/models/fetch-model.sh).
embedding=""
llm=()
serve=()
if [ -f models/all-MiniLM-L6-v2/model.safetensors ]; then
  embedding=all-MiniLM-L6-v2
elif [ "${RELA_REQUIRE_MODEL:-}" = 1 ]; then
  echo "RELA_REQUIRE_MODEL=1 but models/all-MiniLM-L6-v2 is missing" >&2
  exit 1
else
  echo "*** SKIPPED embeddings from the JVM: models/all-MiniLM-L6-v2 not found (hosts/models/fetch-model.sh) ***"
fi
if [ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  llm=(SmolLM2-135M-Instruct.Q4_1)
elif [ "${RELA_REQUIRE_GGUF:-}" = 1 ]; then
  echo "RELA_REQUIRE_GGUF=1 but models/SmolLM2-135M-Instruct.Q4_1.gguf is missing" >&2
  exit 1
else
  echo "*** SKIPPED generation from the JVM: models/SmolLM2-135M-Instruct.Q4_1.gguf not found ***"
fi
if [ -n "$embedding" ] || [ ${#llm[@]} -gt 0 ]; then
  serve=(--models models)
fi
start_node "${serve[@]}"
java -Dorg.vramrelay.library="$lib" -cp "$out/rela.jar:$out/test" org.vramrelay.RelaClientTest \
  127.0.0.1 "$NODE_PORT" "$NODE_TOKEN_FILE" "$embedding" "${llm[@]}"
# loadLibrary("rela_jni") through java.library.path, as an app would.
java -Djava.library.path="$(dirname "$lib")" -cp "$out/rela.jar:$out/readme" Hello 127.0.0.1 "$NODE_PORT" "$(cat "$NODE_TOKEN_FILE")"

# The README's Kotlin example, with kotlinc where installed (.ci/run installs Debian's `kotlin`
# and sets RELA_REQUIRE_KOTLIN=1).
if command -v kotlinc >/dev/null 2>&1; then
  awk '/<!-- kotlin-example: compiled by scripts\/ci\/jvm.sh -->/ { on = 1; next }
       on && /^```kotlin/ { next }
       on && /^```/ { exit }
       on { print }' README.md > "$out/readme/Hello.kt"
  [ -s "$out/readme/Hello.kt" ] || { echo "README.md has no Kotlin example marked for CI" >&2; exit 1; }
  klib="$(dirname "$(readlink -f "$(command -v kotlinc)")")/../lib"
  kotlinc -cp "$out/rela.jar:$klib/kotlin-stdlib-jdk7.jar" "$out/readme/Hello.kt" -d "$out/hello-kt.jar" 2>&1 \
    | grep -v 'deprecated in JDK' || true
  [ -s "$out/hello-kt.jar" ] || { echo "the README's Kotlin example did not compile" >&2; exit 1; }
  got=$(java -Djava.library.path="$(dirname "$lib")" \
    -cp "$out/hello-kt.jar:$out/rela.jar:$klib/kotlin-stdlib.jar:$klib/kotlin-stdlib-jdk7.jar" \
    HelloKt 127.0.0.1 "$NODE_PORT" "$(cat "$NODE_TOKEN_FILE")")
  [ "$got" = hello ] || { echo "the README's Kotlin example printed '$got'" >&2; exit 1; }
  echo "Kotlin: README example ok"
elif [ "${RELA_REQUIRE_KOTLIN:-}" = 1 ]; then
  echo "RELA_REQUIRE_KOTLIN=1 but kotlinc is not installed" >&2
  exit 1
else
  echo "*** SKIPPED the README's Kotlin example: kotlinc not installed (apt-get install kotlin) ***"
fi
# Over TLS: a node serving TLS with a certificate of its own; the test pins the fingerprint the
# node logs, and tries trust on first use and the refusals.
stop_node
start_node --tls --state-dir "$NODE_WORK/state"
fingerprint=$(grep -o 'tls_fingerprint=[0-9a-f]\{64\}' "$NODE_WORK/node.log" | head -n 1 | cut -d= -f2)
[ -n "$fingerprint" ] || { echo "the TLS node logged no fingerprint:" >&2; cat "$NODE_WORK/node.log" >&2; exit 1; }
java -Dorg.vramrelay.library="$lib" -cp "$out/rela.jar:$out/test" org.vramrelay.RelaTlsTest \
  127.0.0.1 "$NODE_PORT" "$NODE_TOKEN_FILE" "$fingerprint" "$out/known_nodes"

rm -rf "$out"
echo "JVM API: tests and README examples ok against a live node, and over TLS"
