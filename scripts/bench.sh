#!/usr/bin/env bash
# The one command behind every figure in docs/benchmarks.md: builds the release binaries, starts
# Redis, the fake upstream, the core, the edge, a combined replica and LiteLLM's proxy on
# loopback, runs every scenario at a sweep of rates BENCH_REPEATS times (default 5), and writes
# docs/benchmarks.json, the tables in docs/benchmarks.md and
# docs/benchmarks/latency-vs-throughput.svg (medians).
#
#   scripts/bench.sh                      the full run (about 30 minutes on 2 cores)
#   scripts/bench.sh --smoke              a few seconds of each scenario at a low rate, with the
#                                         debug binaries `cargo test --workspace` built; fails if
#                                         any request fails (CI runs this; it writes nothing in docs/)
#   scripts/bench.sh [loadgen flags]      e.g. --only s2,litellm --rates 500,1000 (see
#                                         `target/release/loadgen --help`)
#   scripts/bench.sh --redis-topologies [flags]
#                                         standalone Redis against a 3-primary Redis Cluster
#                                         under the same gateway: send-message and
#                                         /v1/chat/completions side by side, Redis commands per
#                                         request, one node's capacity (redis-benchmark); writes
#                                         docs/benchmarks/redis-topologies.{md,json}; about 4
#                                         minutes (see `target/release/redis-topologies --help`)
#   scripts/bench.sh --history [flags]   send-message p50/p99 and Redis bytes read per turn on
#                                         sessions of 10, 100 and 1,000 turns with a model whose
#                                         context window holds about 100 of them; prints a table
#                                         for docs/benchmarks.md (see `target/release/history --help`)
#
# Scenario 2 is also measured by oha (https://github.com/hatoo/oha), a widely used HTTP load
# generator, beside our own: open loop at every rate of the sweep, against the fake upstream
# alone (oha's own baseline) and then the gateway, and closed loop (no rate limit) once per
# topology. The full run installs the pinned version below with
# `cargo install --locked` under target/tools when target/tools/bin/oha is missing or another
# version (needs crates.io once); the smoke run never does.
#
# Set BENCH_NO_LITELLM=1 to skip installing and running LiteLLM, BENCH_NO_OHA=1 to skip oha.
set -euo pipefail
cd "$(dirname "$0")/.."

# Up to 10,000 open streams go through every process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ "${1:-}" = "--smoke" ]; then
  shift
  for bin in openclaw-gateway openclaw-rest; do
    [ -x "target/debug/$bin" ] || cargo build -q -p openclaw-gateway -p gateway-rest
  done
  cargo build -q -p openclaw-bench
  exec target/debug/loadgen --bin-dir target/debug --repeats 1 --rates 50 --streaming-rates 20 \
    --step-secs 1 --streams 100 --check --command "scripts/bench.sh --smoke" \
    --json target/bench-smoke/benchmarks.json --markdown target/bench-smoke/benchmarks.md \
    --svg target/bench-smoke/latency-vs-throughput.svg "$@"
fi

cargo build --release -p openclaw-gateway -p gateway-rest -p openclaw-bench

if [ "${1:-}" = "--history" ]; then
  shift
  exec target/release/history --bin-dir target/release "$@"
fi

if [ "${1:-}" = "--redis-topologies" ]; then
  shift
  exec target/release/redis-topologies --bin-dir target/release \
    --command "scripts/bench.sh --redis-topologies${*:+ $*}" "$@"
fi

# oha, pinned: its flags and its JSON are what bench/src/oha.rs passes and reads. 1.16.0 is the
# newest on crates.io when pinned (MSRV 1.88; builds with rustc 1.95).
OHA_VERSION=1.16.0
oha_bin=target/tools/bin/oha
oha=()
if [ -n "${BENCH_NO_OHA:-}" ]; then
  oha=(--oha-missing "skipped (BENCH_NO_OHA)")
else
  if [ "$("$oha_bin" --version 2>/dev/null)" != "oha $OHA_VERSION" ]; then
    cargo install oha --version "$OHA_VERSION" --locked --force --root target/tools >&2 || true
  fi
  if [ "$("$oha_bin" --version 2>/dev/null)" = "oha $OHA_VERSION" ]; then
    oha=(--oha "$oha_bin")
  else
    oha=(--oha-missing "cargo install oha --version $OHA_VERSION --locked did not succeed here")
  fi
fi

litellm=()
if [ -n "${BENCH_NO_LITELLM:-}" ]; then
  litellm=(--litellm-missing "skipped (BENCH_NO_LITELLM)")
elif path="$(bash scripts/bench-litellm.sh --install)"; then
  litellm=(--litellm "$path")
else
  litellm=(--litellm-missing "pip could not install litellm[proxy] here")
fi

exec target/release/loadgen --bin-dir target/release --repeats "${BENCH_REPEATS:-5}" \
  --command "scripts/bench.sh${*:+ $*}" "${litellm[@]}" "${oha[@]}" "$@"
