#!/usr/bin/env bash
# LZ4 on and off over a real shaped link: `vram-relay serve` in a network namespace behind a
# veth pair whose two ends are each limited to RATE Mbit/s by tc's token bucket filter, and the
# rela-node `lz4` example outside it (which also measures loopback, against a node of its own).
# The kernel paces the link, so a busy CPU on either end does not cost link time, as it can with
# the example's in-process shaping proxy.
#
#   cargo build --release -p vram-relay && cargo build --release -p rela-node --example lz4
#   sudo scripts/bench/lz4-veth.sh [MiB, default 32] [Mbit/s, default 1000]
#
# Needs root (ip netns, tc). VRAM_RELAY and LZ4_EXAMPLE name other binaries to use.
set -euo pipefail
cd "$(dirname "$0")/../.."

MIB=${1:-32}
RATE=${2:-1000}
BIN=${VRAM_RELAY:-target/release/vram-relay}
EXAMPLE=${LZ4_EXAMPLE:-target/release/examples/lz4}
NS=rela-lz4-$$
OUTER=rl4o$$
INNER=rl4i$$
NODE=10.233.77.2:8765
SERVE=

cleanup() {
    [ -n "$SERVE" ] && kill "$SERVE" 2>/dev/null && wait "$SERVE" 2>/dev/null
    ip netns del "$NS" 2>/dev/null || true
    ip link del "$OUTER" 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "$NS"
ip link add "$OUTER" type veth peer name "$INNER"
ip link set "$INNER" netns "$NS"
ip addr add 10.233.77.1/30 dev "$OUTER"
ip link set "$OUTER" up
ip netns exec "$NS" ip addr add 10.233.77.2/30 dev "$INNER"
ip netns exec "$NS" ip link set "$INNER" up
ip netns exec "$NS" ip link set lo up
# Each direction: RATE Mbit/s, a 256 KiB bucket (above RATE/HZ), 20 ms of queue.
tc qdisc add dev "$OUTER" root tbf rate "${RATE}mbit" burst 256kb latency 20ms
ip netns exec "$NS" tc qdisc add dev "$INNER" root tbf rate "${RATE}mbit" burst 256kb latency 20ms

# Room for one transfer's buffer per session, with margin.
ip netns exec "$NS" "$BIN" serve --backend host --listen "$NODE" --allow-plaintext \
    --allow-unauthenticated --no-discovery --no-mdns --capacity "$((4 * MIB + 64))MiB" \
    --quota "$((2 * MIB + 16))MiB" 2>/dev/null &
SERVE=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/${NODE%:*}/${NODE#*:}") 2>/dev/null && break
    sleep 0.1
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
"$EXAMPLE" "$MIB" "$RATE" "$NODE"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
