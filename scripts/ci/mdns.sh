#!/usr/bin/env bash
# mDNS/DNS-SD on the loopback interface (hosts/vram-relay/tests/mdns.rs: serve --mdns, discover
# --mdns with and without the token). Linux leaves multicast off on lo; this turns it on (root, or
# passwordless sudo), which is harmless, and then requires the test to run. Where it cannot be
# turned on, it says so and skips. Assumes `cargo test --workspace` ran.
set -euo pipefail
cd "$(dirname "$0")/../.."

multicast_on_lo() { (( $(cat /sys/class/net/lo/flags) & 0x1000 )); }

if ! multicast_on_lo; then
  if ! command -v ip >/dev/null 2>&1; then
    echo "*** SKIPPED mDNS on loopback: multicast is off on lo and iproute2 (ip) is not installed ***"
    exit 0
  fi
  if [ "$(id -u)" = 0 ]; then
    ip link set lo multicast on || true
  elif sudo -n true 2>/dev/null; then
    sudo ip link set lo multicast on || true
  fi
  if ! multicast_on_lo; then
    echo "*** SKIPPED mDNS on loopback: multicast is off on lo and cannot be turned on here (needs root) ***"
    exit 0
  fi
  echo "turned on multicast on lo (ip link set lo multicast on)"
fi
# --workspace: the feature set `cargo test --workspace` built with, so nothing is rebuilt.
RELA_REQUIRE_MDNS=1 cargo test -q --workspace --test mdns
