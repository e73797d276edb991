#!/usr/bin/env bash
# Where the time goes (docs/benchmarks.md, "Where the time goes"): two kinds of profile of the
# core (`openclaw-gateway serve`) and the edge (`openclaw-rest`), release binaries.
#
#   scripts/profile.sh flame       perf (DWARF call graphs, 499 Hz, 8 s) on both processes while
#                                  the load generator drives scenario 2 at 2,000/s and scenario 1
#                                  at 1,000/s; folded with inferno into
#                                  docs/benchmarks/flame-<process>-<scenario>.svg
#   scripts/profile.sh callgrind   both processes, and a combined replica (`serve --http-addr`),
#                                  under valgrind's callgrind, counters zeroed after warm-up, then
#                                  N_CALLS requests of each scenario, one at a time;
#                                  instructions per request, whole and by component, into
#                                  docs/benchmarks/callgrind.md (load-insensitive: the figures do
#                                  not depend on what else the machine runs)
#   scripts/profile.sh             both
#
# BIN_DIR=<dir> profiles the openclaw-gateway and openclaw-rest found there instead of this
# tree's release build (to compare two builds by instruction counts). KEEP_PROFILES=<dir> keeps
# callgrind's own outputs there, for `callgrind_annotate --inclusive=yes`.
#
# Needs perf, valgrind (callgrind_annotate) and inferno (`cargo install inferno`), redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
what=${1:-all}
bin=${BIN_DIR:-target/release}
out=docs/benchmarks
mkdir -p "$out"
cargo build --release --quiet -p openclaw-gateway -p gateway-rest -p openclaw-bench

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port name
  for _ in $(seq 1 1200); do
    if (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "$2 did not listen on $1" >&2
  return 1
}

flame() {
  command -v inferno-flamegraph >/dev/null || { echo "inferno is missing: cargo install inferno" >&2; exit 1; }
  local work
  work=$(mktemp -d)
  for spec in "s2:2000:s2-openai-stateless" "s1:1000:s1-send-message"; do
    IFS=: read -r scenario rate label <<<"$spec"
    echo "== flamegraphs: $label at $rate/s"
    target/release/loadgen --repeats 1 --only "$scenario" --rates "$rate" --step-secs 16 --streams 0 \
      --litellm-missing "not part of a profile" --json "$work/b.json" --markdown "$work/b.md" \
      --svg "$work/b.svg" >"$work/load.log" 2>&1 &
    local loadgen=$!
    # The baseline (upstream alone) runs first; the gateway step follows it.
    until grep -q "$label *upstream *rate *$rate " "$work/load.log" 2>/dev/null; do
      kill -0 "$loadgen" 2>/dev/null || { cat "$work/load.log" >&2; exit 1; }
      sleep 0.2
    done
    sleep 2
    local core edge pid
    # The load generator also starts a combined replica (`serve` too): the core is bench-core.
    for pid in $(pgrep -P "$loadgen" -f "openclaw-gateway serve"); do
      if tr '\0' '\n' <"/proc/$pid/environ" | grep -qx OPENCLAW_REPLICA_ID=bench-core; then core=$pid; fi
    done
    edge=$(pgrep -P "$loadgen" -f "openclaw-rest" | head -1)
    perf record -q -F 499 --call-graph dwarf,16384 -p "$core" -o "$work/core.data" -- sleep 8 &
    perf record -q -F 499 --call-graph dwarf,16384 -p "$edge" -o "$work/edge.data" -- sleep 8
    wait %2 2>/dev/null || true
    wait "$loadgen"
    grep "$label *gateway" "$work/load.log" || true
    for process in core edge; do
      perf script -i "$work/$process.data" 2>/dev/null | inferno-collapse-perf >"$work/$process.folded"
      inferno-flamegraph --title "$process, $label at $rate requests/s (perf, 499 Hz, 8 s)" \
        <"$work/$process.folded" >"$out/flame-$process-$scenario.svg"
      echo "wrote $out/flame-$process-$scenario.svg"
    done
  done
  rm -rf "$work"
}

callgrind() {
  command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
  local calls=${N_CALLS:-300}
  local work pids=()
  work=$(mktemp -d)
  # shellcheck disable=SC2317
  stop() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
  trap stop EXIT
  local redis_port upstream_port grpc_port http_port token=profile-internal-token
  redis_port=$(free_port) upstream_port=$(free_port) grpc_port=$(free_port) http_port=$(free_port)
  local replica_grpc_port replica_http_port
  replica_grpc_port=$(free_port) replica_http_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
  pids+=($!)
  target/release/fake-upstream --listen "127.0.0.1:$upstream_port" >/dev/null 2>&1 &
  pids+=($!)
  wait_port "$redis_port" redis-server
  wait_port "$upstream_port" fake-upstream
  # A core under callgrind: name, gRPC port, then any further VAR=value for its environment.
  core_under_callgrind() {
    local name=$1 port=$2
    shift 2
    env -i PATH="$PATH" RUST_LOG=warn OPENCLAW_GRPC_ADDR="127.0.0.1:$port" \
      OPENCLAW_METRICS_ADDR="127.0.0.1:$(free_port)" OPENCLAW_REDIS_URL="redis://127.0.0.1:$redis_port" \
      OPENCLAW_INTERNAL_TOKEN="$token" OPENCLAW_REPLICA_ID="profile-$name" OPENCLAW_DATA_DIR="$work" \
      OPENCLAW_REDIS_TIMEOUT_MS=30000 OPENCLAW_PROVIDER_TIMEOUT_MS=120000 \
      ZAI_BASE_URL="http://127.0.0.1:$upstream_port/v1" ZAI_API_KEY=profile-upstream-key "$@" \
      valgrind --tool=callgrind --callgrind-out-file="$work/$name.out" \
      "$bin"/openclaw-gateway serve >"$work/$name.log" 2>&1 &
    pids+=($!)
  }
  core_under_callgrind core "$grpc_port"
  wait_port "$grpc_port" "openclaw-gateway under callgrind"
  env -i PATH="$PATH" RUST_LOG=warn OPENCLAW_HTTP_ADDR="127.0.0.1:$http_port" \
    OPENCLAW_METRICS_ADDR="127.0.0.1:$(free_port)" OPENCLAW_CORE_URL="http://127.0.0.1:$grpc_port" \
    valgrind --tool=callgrind --callgrind-out-file="$work/edge.out" \
    "$bin"/openclaw-rest >"$work/edge.log" 2>&1 &
  pids+=($!)
  wait_port "$http_port" "openclaw-rest under callgrind"
  core_under_callgrind replica "$replica_grpc_port" OPENCLAW_HTTP_ADDR="127.0.0.1:$replica_http_port"
  wait_port "$replica_http_port" "the combined replica under callgrind"
  local core_pid edge_pid replica_pid
  core_pid=$(pgrep -f "callgrind-out-file=$work/core.out" | head -1)
  edge_pid=$(pgrep -f "callgrind-out-file=$work/edge.out" | head -1)
  replica_pid=$(pgrep -f "callgrind-out-file=$work/replica.out" | head -1)

  # One request kind at a time: warm up (connections, caches, lazily loaded vocabulary), zero
  # both processes' counters, run the measured calls, dump.
  for scenario in s2 s1; do
    python3 scripts/profile_client.py --base "http://127.0.0.1:$http_port" --token "$token" \
      --scenario "$scenario" --calls "$calls" \
      --before-measure "callgrind_control -z $core_pid >/dev/null 2>&1 && callgrind_control -z $edge_pid >/dev/null 2>&1" \
      --after-measure "callgrind_control -d $scenario $core_pid >/dev/null 2>&1 && callgrind_control -d $scenario $edge_pid >/dev/null 2>&1"
    python3 scripts/profile_client.py --base "http://127.0.0.1:$replica_http_port" --token "$token" \
      --scenario "$scenario" --calls "$calls" \
      --before-measure "callgrind_control -z $replica_pid >/dev/null 2>&1" \
      --after-measure "callgrind_control -d $scenario $replica_pid >/dev/null 2>&1"
  done
  stop
  trap - EXIT
  python3 scripts/profile_report.py --work "$work" --calls "$calls" --out "$out/callgrind.md"
  if [ -n "${KEEP_PROFILES:-}" ]; then
    mkdir -p "$KEEP_PROFILES" && cp "$work"/*.out* "$KEEP_PROFILES"/
    echo "kept the callgrind outputs in $KEEP_PROFILES (callgrind_annotate --inclusive=yes <file>)"
  fi
  rm -rf "$work"
}

case "$what" in
  flame) flame ;;
  callgrind) callgrind ;;
  all) flame; callgrind ;;
  -h|--help) sed -n 2,18p "$0" ;;
  *) echo "unknown: $what (flame, callgrind)" >&2; exit 2 ;;
esac
