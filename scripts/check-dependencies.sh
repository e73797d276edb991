#!/usr/bin/env bash
# Dependencies point one way: the edge (gateway-rest) and the core (openclaw-gateway) both build
# on the contract (proto/) and the shared runtime (runtime/), and the runtime on neither. The core
# holds the edge only behind its `rest` feature (the combined replica), so:
#   - the core without default features must not pull in the edge or what only the edge uses
#     (utoipa for the OpenAPI document, maud for the dashboard pages), and must keep compiling;
#   - the runtime crate must depend on neither the edge nor the core.
set -euo pipefail
cd "$(dirname "$0")/.."

failed=0

# Prints the crates named in $2.. that the normal-dependency tree given by $1 lists.
listed() {
  local tree=$1
  shift
  local name
  for name in "$@"; do
    if grep -Eq "(^|[^[:alnum:]_-])${name} v" <<<"$tree"; then
      echo "$name"
    fi
  done
}

core_tree=$(cargo tree --locked -p openclaw-gateway -e normal --no-default-features --prefix none)
found=$(listed "$core_tree" gateway-rest utoipa maud)
if [ -n "$found" ]; then
  echo "FAIL the core without the rest feature depends on: $(paste -sd, - <<<"$found")"
  echo "     Only the combined replica may use the edge, behind the core's \`rest\` feature;"
  echo "     shared runtime code belongs in runtime/ (openclaw-runtime). See:"
  echo "     cargo tree -p openclaw-gateway -e normal --no-default-features -i <crate>"
  failed=1
else
  echo "ok   the core without the rest feature depends on none of gateway-rest, utoipa, maud"
fi

runtime_tree=$(cargo tree --locked -p openclaw-runtime -e normal --prefix none)
found=$(listed "$runtime_tree" gateway-rest openclaw-gateway)
if [ -n "$found" ]; then
  echo "FAIL the shared runtime (openclaw-runtime) depends on: $(paste -sd, - <<<"$found")"
  echo "     Both processes depend on the runtime, so it can depend on neither of them."
  failed=1
else
  echo "ok   the shared runtime depends on neither gateway-rest nor openclaw-gateway"
fi

# The feature-less core must keep compiling (lib, binary, tests, benches) without warnings.
if cargo clippy --locked -p openclaw-gateway --no-default-features --all-targets -- -D warnings; then
  echo "ok   the core without the rest feature compiles cleanly"
else
  echo "FAIL the core without the rest feature does not compile cleanly (cargo clippy above)"
  failed=1
fi

# Built without the edge, asking for the REST API is refused with what to run instead.
if cargo test --locked -q -p openclaw-gateway --no-default-features --lib cli:: >/dev/null; then
  echo "ok   the core without the rest feature refuses --http-addr and dev, naming what to run"
else
  echo "FAIL the core without the rest feature does not refuse the REST API as it should"
  echo "     cargo test -p openclaw-gateway --no-default-features --lib cli::"
  failed=1
fi

exit "$failed"
