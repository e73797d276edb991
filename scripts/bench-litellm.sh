#!/usr/bin/env bash
# LiteLLM's proxy, pinned, in a venv under target/, for the side-by-side run of docs/benchmarks.md.
#
#   scripts/bench-litellm.sh --install   install (idempotent) and print the `litellm` executable
#   scripts/bench-litellm.sh [loadgen args]
#                                        install, then run only the LiteLLM comparison: the fake
#                                        upstream alone and LiteLLM in front of it, same rates as
#                                        scenario 2 (scripts/bench.sh runs it in the same run as
#                                        the gateway's scenarios)
set -euo pipefail
cd "$(dirname "$0")/.."

LITELLM_VERSION="${LITELLM_VERSION:-1.74.15.post2}"
VENV="target/litellm-venv"
PYTHON="${PYTHON:-python3}"

install() {
  if [ -x "$VENV/bin/litellm" ] && [ -f "$VENV/.version" ] && [ "$(cat "$VENV/.version")" = "$LITELLM_VERSION" ]; then
    return 0
  fi
  "$PYTHON" -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q "litellm[proxy]==$LITELLM_VERSION" >&2
  echo "$LITELLM_VERSION" > "$VENV/.version"
}

if [ "${1:-}" = "--install" ]; then
  if install; then
    echo "$PWD/$VENV/bin/litellm"
  else
    echo "LiteLLM $LITELLM_VERSION could not be installed" >&2
    exit 1
  fi
  exit 0
fi

install
cargo build --release -p openclaw-bench -p openclaw-gateway -p gateway-rest
exec target/release/loadgen --only litellm --litellm "$PWD/$VENV/bin/litellm" "$@"
