# Sourced by scripts/ci/*.sh: a `vram-relay serve` node on free loopback ports, with a token,
# stopped when the sourcing script exits.
#
#   start_node [EXTRA SERVE ARGS...]
#
# sets NODE_PORT, NODE_DISCOVERY_PORT, NODE_TOKEN_FILE and NODE_PID. Needs target/debug/vram-relay
# (built by `cargo test --workspace`; built here if missing) and python3 (free ports).

NODE_WORK=$(mktemp -d)
NODE_PID=

stop_node() {
  if [ -n "$NODE_PID" ] && kill -0 "$NODE_PID" 2>/dev/null; then
    kill -TERM "$NODE_PID"
    wait "$NODE_PID" || true
  fi
  NODE_PID=
  rm -rf "$NODE_WORK"
}
trap stop_node EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_node() {
  [ -x target/debug/vram-relay ] || cargo build -q -p vram-relay
  mkdir -p "$NODE_WORK"
  NODE_PORT=$(free_port)
  NODE_DISCOVERY_PORT=$(free_port)
  NODE_TOKEN_FILE=$NODE_WORK/token
  head -c 24 /dev/urandom | base64 > "$NODE_TOKEN_FILE"
  # --compute-priority normal: the tests' own processes (a JVM compiling, say) run beside the
  # node, and compute in the idle class (the default) would wait for them.
  env -u AUTH_TOKEN -u REQUIRE_AUTH target/debug/vram-relay serve --backend host --capacity 256MiB \
    --compute-priority normal --listen "127.0.0.1:$NODE_PORT" --discovery "127.0.0.1:$NODE_DISCOVERY_PORT" \
    --token-file "$NODE_TOKEN_FILE" "$@" 2> "$NODE_WORK/node.log" &
  NODE_PID=$!
  for _ in $(seq 1 300); do
    grep -q "node ready" "$NODE_WORK/node.log" && return 0
    kill -0 "$NODE_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "the node did not start:" >&2
  cat "$NODE_WORK/node.log" >&2
  return 1
}
