#!/usr/bin/env bash
# Runs the scaled topology on this machine as plain processes, for demos and manual tests:
# one redis-server, N cores (`openclaw-gateway serve`) and M edges (`openclaw-rest`) that balance
# across every core. Ctrl-C (or SIGTERM) stops it all: edges first, then cores, then Redis.
#
#   scripts/local-topology.sh                      # 2 cores, 2 edges
#   scripts/local-topology.sh --cores 3 --edges 2 --release
#
# State (Redis data, the internal token, logs) lives in .openclaw/topology/ and survives a
# restart, so keys created in one run work in the next; --fresh starts from nothing.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/local-topology.sh [options]
  --cores N         gRPC cores to run (default 2); ports 50051, 50052, ...
  --edges M         REST edges to run (default 2); ports 18789, 18790, ...
  --redis-port P    port of the private redis-server (default 16379)
  --core-port P     first core's port (default 50051)
  --edge-port P     first edge's port (default 18789)
  --release         use target/release (default: release if built, else debug)
  --debug           use target/debug
  --build           run cargo build first even if the binaries exist
  --fresh           forget the previous run's Redis data, token and logs
  --dir DIR         where state and logs go (default .openclaw/topology)
ZAI_API_KEY (environment or .env) makes the cores call Z.ai; without it the simulator answers.
EOF
}

cores=2 edges=2 redis_port=16379 core_port=50051 edge_port=18789
profile="" build=0 fresh=0
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.openclaw/topology"

while [ $# -gt 0 ]; do
  case "$1" in
    --cores) cores=$2; shift 2 ;;
    --edges) edges=$2; shift 2 ;;
    --redis-port) redis_port=$2; shift 2 ;;
    --core-port) core_port=$2; shift 2 ;;
    --edge-port) edge_port=$2; shift 2 ;;
    --release) profile=release; shift ;;
    --debug) profile=debug; shift ;;
    --build) build=1; shift ;;
    --fresh) fresh=1; shift ;;
    --dir) dir=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
for n in "$cores" "$edges" "$redis_port" "$core_port" "$edge_port"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "not a number: $n" >&2; exit 2; }
done
if [ "$cores" -lt 1 ] || [ "$edges" -lt 1 ]; then
  echo "need at least one core and one edge" >&2
  exit 2
fi
dir=$(realpath -m "$dir")
cd "$root" # the cores read .env from here (ZAI_API_KEY)

say() { printf '%s\n' "$*"; }
fail() { printf 'local-topology: %s\n' "$*" >&2; exit 1; }

command -v redis-server >/dev/null || fail "redis-server is not installed (apt-get install redis-server)"
command -v curl >/dev/null || fail "curl is not installed"

# --- binaries ---------------------------------------------------------------------------------
have_binaries() { [ -x "$root/target/$1/openclaw-gateway" ] && [ -x "$root/target/$1/openclaw-rest" ]; }
if [ -z "$profile" ]; then
  if have_binaries release; then profile=release; else profile=debug; fi
fi
if [ "$build" = 1 ] || ! have_binaries "$profile"; then
  say "building the core and the edge ($profile)..."
  flags=()
  [ "$profile" = release ] && flags+=(--release)
  cargo build --locked "${flags[@]}" -p openclaw-gateway -p gateway-rest
fi
core_bin="$root/target/$profile/openclaw-gateway"
edge_bin="$root/target/$profile/openclaw-rest"

# --- ports ------------------------------------------------------------------------------------
# Each process also gets its own metrics port (the defaults 9464/9465 would collide).
core_ports=() edge_ports=() core_metrics=() edge_metrics=()
for ((i = 0; i < cores; i++)); do core_ports+=($((core_port + i))); core_metrics+=($((19464 + i))); done
for ((i = 0; i < edges; i++)); do edge_ports+=($((edge_port + i))); edge_metrics+=($((19564 + i))); done

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$redis_port" "${core_ports[@]}" "${edge_ports[@]}"; do
  if listening "$port"; then
    fail "port $port is already in use (a previous topology or \`cargo run\`?); pick others with --redis-port/--core-port/--edge-port"
  fi
done

# --- state ------------------------------------------------------------------------------------
[ "$fresh" = 1 ] && rm -rf "$dir"
mkdir -p "$dir/redis" "$dir/logs"
token_file="$dir/internal-token"
if [ ! -s "$token_file" ]; then
  (umask 077 && printf 'ocit_%s\n' "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')" >"$token_file")
fi
token=$(tr -d '\n' <"$token_file")

# --- processes --------------------------------------------------------------------------------
# Each child runs in its own session, so the terminal's Ctrl-C reaches only this script, which
# then stops the children in order: edges drain first, then cores, then Redis.
pids=() names=()
stopping=0

stop_all() {
  [ "$stopping" = 1 ] && return
  stopping=1
  trap '' INT TERM
  say ""
  say "stopping: edges, then cores, then Redis..."
  local group i deadline
  for group in edge core redis; do
    for i in "${!pids[@]}"; do
      if [[ "${names[$i]}" == "$group"* ]]; then kill -TERM "${pids[$i]}" 2>/dev/null || true; fi
    done
    # The drain bound (OPENCLAW_DRAIN_TIMEOUT_MS, default 30 s) plus a margin, then SIGKILL.
    deadline=$((SECONDS + 35))
    for i in "${!pids[@]}"; do
      [[ "${names[$i]}" == "$group"* ]] || continue
      while kill -0 "${pids[$i]}" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
      if kill -0 "${pids[$i]}" 2>/dev/null; then
        say "  ${names[$i]} did not stop in time; killing it"
        kill -KILL "${pids[$i]}" 2>/dev/null || true
      fi
      wait "${pids[$i]}" 2>/dev/null || true
    done
  done
  say "stopped. Logs: $dir/logs/"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

start() { # name, then the command; output goes to logs/<name>.log (plain text, no colours)
  local name=$1
  shift
  NO_COLOR=1 setsid "$@" >>"$dir/logs/$name.log" 2>&1 </dev/null &
  pids+=($!)
  names+=("$name")
}

wait_until() { # description, pid, then a command that succeeds once ready
  local what=$1 pid=$2 deadline=$((SECONDS + 30))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      say "$what exited during startup; the end of its log:"
      tail -n 20 "$dir/logs/$what.log" | sed 's/^/  /'
      exit 1
    fi
    [ "$SECONDS" -lt "$deadline" ] || { say "$what is not ready after 30 s (see $dir/logs/$what.log)"; exit 1; }
    sleep 0.2
  done
}

edge_ready() { # /readyz where the edge serves it, /healthz otherwise
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz") || return 1
  [ "$code" = 200 ] && return 0
  [ "$code" = 404 ] && curl -sf -o /dev/null "http://127.0.0.1:$1/healthz"
}

start redis redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$dir/redis" \
  --appendonly yes --save "" --protected-mode yes --logfile ""
wait_until redis "${pids[-1]}" redis-cli -p "$redis_port" ping

core_urls=()
for ((i = 0; i < cores; i++)); do
  name="core-$((i + 1))"
  start "$name" env \
    OPENCLAW_GRPC_ADDR="127.0.0.1:${core_ports[$i]}" \
    OPENCLAW_METRICS_ADDR="127.0.0.1:${core_metrics[$i]}" \
    OPENCLAW_REDIS_URL="redis://127.0.0.1:$redis_port/0" \
    OPENCLAW_INTERNAL_TOKEN="$token" \
    OPENCLAW_REPLICA_ID="$name" \
    OPENCLAW_CORE_REPLICAS="$cores" \
    OPENCLAW_DATA_DIR="$dir" \
    "$core_bin" serve
  core_urls+=("http://127.0.0.1:${core_ports[$i]}")
done
for ((i = 0; i < cores; i++)); do
  wait_until "core-$((i + 1))" "${pids[$((i + 1))]}" listening "${core_ports[$i]}"
done

core_url_list=$(IFS=,; echo "${core_urls[*]}")
for ((i = 0; i < edges; i++)); do
  start "edge-$((i + 1))" env \
    OPENCLAW_HTTP_ADDR="127.0.0.1:${edge_ports[$i]}" \
    OPENCLAW_METRICS_ADDR="127.0.0.1:${edge_metrics[$i]}" \
    OPENCLAW_CORE_URL="$core_url_list" \
    "$edge_bin"
done
for ((i = 0; i < edges; i++)); do
  wait_until "edge-$((i + 1))" "${pids[$((1 + cores + i))]}" edge_ready "${edge_ports[$i]}"
done

# --- what is running --------------------------------------------------------------------------
first="http://127.0.0.1:${edge_ports[0]}"
say ""
say "  OpenClaw Gateway topology is running ($profile binaries)"
say "  redis      redis://127.0.0.1:$redis_port   (data in $dir/redis)"
for ((i = 0; i < cores; i++)); do
  say "  core-$((i + 1))     grpc://127.0.0.1:${core_ports[$i]}   metrics :${core_metrics[$i]}"
done
for ((i = 0; i < edges; i++)); do
  say "  edge-$((i + 1))     http://127.0.0.1:${edge_ports[$i]}/api/v1   metrics :${edge_metrics[$i]}"
done
say "  logs       $dir/logs/"
say "  internal   token in $token_file"
say ""
say "  Create an API key (through any edge):"
say "  curl -s -X POST $first/api/v1/keys \\"
say "    -H \"Authorization: Bearer \$(cat $token_file)\" \\"
say "    -H \"Content-Type: application/json\" -d '{\"name\": \"demo\"}'"
say ""
say "  Then use data.key as in the README, against any edge URL above. Ctrl-C stops everything."
say ""

# Runs until Ctrl-C, or until one of the processes exits on its own.
set +e
wait -n "${pids[@]}"
status=$?
for i in "${!pids[@]}"; do
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then
    say "${names[$i]} exited (status $status); the end of its log:"
    tail -n 20 "$dir/logs/${names[$i]}.log" | sed 's/^/  /'
    break
  fi
done
exit 1
