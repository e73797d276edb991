#!/usr/bin/env bash
# Schema-driven API fuzzing of the REST edge: schemathesis generates requests for every operation
# of the served /openapi.json (valid and invalid ones) and checks that no answer is a 5xx, that
# every answer's status, content type and body match what the document declares (so the guide's
# envelope is never missing).
#
#   scripts/schemathesis.sh            # short run (CI): a bounded number of cases per operation
#   scripts/schemathesis.sh --long     # many cases per operation, stateful phase included
#
# It starts a real stack of its own on free ports: a private redis-server, the core
# (`openclaw-gateway serve`) and the edge (`openclaw-rest`) from target/debug, models answered by
# the offline simulator (no ZAI_API_KEY), and a key with generous limits created through the
# REST key API. Before the run, a burst of requests without a credential and with wrong keys from
# the same address trips the brute-force guard; the run must then meet no 429 at all (the guard
# refuses guesses, never a valid key). Schemathesis (pinned below) is installed into
# target/schemathesis-venv if missing.
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
long=0
for arg in "$@"; do
  case "$arg" in
    --long) long=1 ;;
    -h|--help) sed -n 2,17p "$0"; exit 0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/target/schemathesis-venv"
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

# Up to date with the tree (a no-op after `cargo test --workspace`).
cargo build --locked --quiet -p openclaw-gateway -p gateway-rest --bins

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port what pid
  for _ in $(seq 1 400); do
    if (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    if ! kill -0 "$3" 2>/dev/null; then echo "$2 exited before listening on $1" >&2; return 1; fi
    sleep 0.05
  done
  echo "$2 did not listen on $1" >&2
  return 1
}

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_port "$redis_port" redis-server "${pids[-1]}"

token="schemathesis-internal-token-$RANDOM$RANDOM$RANDOM"
grpc_port=$(free_port) core_metrics=$(free_port)
http_port=$(free_port) edge_metrics=$(free_port)
# A clean environment: no provider credential (the simulator answers), no .env from the tree.
# A generous Redis timeout: on a loaded machine the limiter would otherwise fail closed (503), which
# is the documented behaviour for an unreachable Redis, not what this run looks for.
(cd "$work" && exec env -i PATH="$PATH" RUST_LOG="${SCHEMATHESIS_CORE_LOG:-warn}" \
  OPENCLAW_GRPC_ADDR="127.0.0.1:$grpc_port" OPENCLAW_METRICS_ADDR="127.0.0.1:$core_metrics" \
  OPENCLAW_INTERNAL_TOKEN="$token" OPENCLAW_REDIS_URL="redis://127.0.0.1:$redis_port" \
  OPENCLAW_DATA_DIR="$work" OPENCLAW_REPLICA_ID=schemathesis-core \
  OPENCLAW_REDIS_TIMEOUT_MS=10000 \
  "$root/target/debug/openclaw-gateway" serve) >"$work/core.log" 2>&1 &
pids+=($!)
wait_port "$grpc_port" "openclaw-gateway serve" "${pids[-1]}"
(cd "$work" && exec env -i PATH="$PATH" RUST_LOG=warn \
  OPENCLAW_HTTP_ADDR="127.0.0.1:$http_port" OPENCLAW_METRICS_ADDR="127.0.0.1:$edge_metrics" \
  OPENCLAW_CORE_URL="http://127.0.0.1:$grpc_port" OPENCLAW_INTERNAL_TOKEN="$token" \
  "$root/target/debug/openclaw-rest") >"$work/edge.log" 2>&1 &
pids+=($!)
wait_port "$http_port" openclaw-rest "${pids[-1]}"

base="http://127.0.0.1:$http_port"
key=$(curl -fsS -X POST "$base/api/v1/keys" \
  -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d '{"name":"schemathesis","limits":{"requestsPerMinute":1000000000,"tokensPerMinute":1000000000000,"contextTokensPerMinute":1000000000000}}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["key"])')

# First, from this same address, a burst of requests without a credential and with wrong keys,
# enough to trip the brute-force guard: it must refuse further guesses, and nothing else.
status_of() { curl -s -o /dev/null -w '%{http_code}' "$@" "$base/api/v1/system/status"; }
for _ in $(seq 1 25); do
  status_of >/dev/null
  status_of -H "Authorization: Bearer oc_wrongwrongwrongwrongwrongwrongwrongwrong" >/dev/null
done
guess=$(status_of -H "Authorization: Bearer oc_wrongwrongwrongwrongwrongwrongwrongwrong")
valid=$(status_of -H "Authorization: Bearer $key")
if [ "$guess" != 429 ] || [ "$valid" != 200 ]; then
  echo "after the burst a further guess got $guess (want 429) and the valid key $valid (want 200)" >&2
  exit 1
fi
# 429s the edge has answered so far (the burst's); schemathesis's valid key must add none.
refused() {
  curl -fsS "http://127.0.0.1:$edge_metrics/metrics" |
    awk '/^openclaw_http_requests_total\{/ && /status="429"/ { n += $NF } END { print n + 0 }'
}
refused_before=$(refused)

checks=not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance
if [ "$long" = 1 ]; then
  limits=(--max-examples 500 --phases examples,coverage,fuzzing,stateful)
else
  limits=(--max-examples 15 --phases examples,coverage,fuzzing --max-time 110)
fi
status=0
# From target/: schemathesis keeps its example database in the working directory.
cd "$root/target"
"$venv/bin/st" run "$base/openapi.json" \
  --header "Authorization: Bearer $key" \
  --checks "$checks" \
  --request-timeout 30 \
  --workers 4 \
  --seed "${SCHEMATHESIS_SEED:-20260214}" \
  --suppress-health-check all \
  --report junit --report-dir "$root/target/schemathesis-report" \
  "${limits[@]}" || status=$?
refused_by_run=$(( $(refused) - refused_before ))
echo "requests refused with 429 during the run (key with roomy limits, after the guard tripped): $refused_by_run"
if [ "$refused_by_run" != 0 ] && [ "$status" = 0 ]; then
  echo "the valid key met $refused_by_run refusals (429): the guard or a limit stood in its way" >&2
  status=1
fi
if [ "$status" != 0 ]; then
  cp "$work/core.log" "$work/edge.log" "$root/target/schemathesis-report/" 2>/dev/null || true
  echo "--- core log (tail; whole log in target/schemathesis-report/core.log)"; tail -n 40 "$work/core.log" || true
  echo "--- edge log (tail; whole log in target/schemathesis-report/edge.log)"; tail -n 40 "$work/edge.log" || true
fi
exit "$status"
