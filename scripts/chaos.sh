#!/usr/bin/env bash
# The long chaos run: Redis, 3 cores and 2 edges on loopback (edges reach cores, and cores reach
# Redis, through fault proxies) under steady load (session turns through both edges, traffic
# against a 5-per-minute key, a cron job due every second), while the fault sequence of
# tests/chaos.rs runs again and again: core and edge SIGKILL + restart, Redis SIGSTOP/SIGCONT,
# latency, stalls, resets and refused connections edge→core and core→Redis. It fails on any lost
# or half-stored acknowledged turn, doubled or lost cron due time, over-admission, answer outside
# the contract or fault that did not heal, and writes the figures either way.
#
#   scripts/chaos.sh                 # 5 rounds (about 2 minutes)
#   CHAOS_ROUNDS=20 scripts/chaos.sh # longer
#
# Settings (environment): CHAOS_ROUNDS (5), CHAOS_CLIENTS (6 concurrent turn clients),
# CHAOS_FAULT_MS (how long each fault holds, 1500; Redis stays stopped twice as long),
# CHAOS_OUT (target/chaos: figures.md and the processes' logs, logs/*.log).
# Needs redis-server, like the test suite.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${CHAOS_OUT:-$root/target/chaos}
rm -rf "$out"
mkdir -p "$out/logs"

# The edge binary the test starts, up to date with the tree.
cargo build --quiet -p gateway-rest --bin openclaw-rest

status=0
CHAOS_ROUNDS=${CHAOS_ROUNDS:-5} \
CHAOS_CLIENTS=${CHAOS_CLIENTS:-6} \
CHAOS_FAULT_MS=${CHAOS_FAULT_MS:-1500} \
CHAOS_FIGURES="$out/figures.md" \
CHAOS_LOG_DIR="$out/logs" \
  cargo test --quiet --test chaos -- --nocapture --test-threads 1 || status=$?

if [ -f "$out/figures.md" ]; then
  echo "figures: $out/figures.md   logs: $out/logs/"
else
  echo "the run ended before it wrote figures; logs: $out/logs/" >&2
fi
exit "$status"
