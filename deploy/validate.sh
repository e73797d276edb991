#!/usr/bin/env bash
# Validates the Kubernetes manifests without a cluster: renders the base and every overlay with
# `kubectl kustomize`, checks each object against the Kubernetes schemas in strict mode (unknown
# fields are errors) for the oldest supported and the newest known Kubernetes, then checks that
# the objects fit together (check_consistency.py).
set -euo pipefail
cd "$(dirname "$0")"

# 1.30: the oldest Kubernetes these manifests run on (preStop `sleep` is on by default from 1.30;
# gRPC probes from 1.27). 1.37: the newest schemas kubernetes-validate 1.37.0 ships.
K8S_VERSIONS=(1.30.0 1.37.0)
VALIDATOR_VERSION=1.37.0

if ! command -v kubectl >/dev/null; then
  echo "deploy/validate.sh: kubectl (with its built-in kustomize) is required" >&2
  exit 1
fi
if [ "$(kubernetes-validate --version 2>/dev/null)" != "$VALIDATOR_VERSION" ]; then
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    "kubernetes-validate==$VALIDATOR_VERSION"
fi

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT

targets=(base overlays/*/)
failed=0
for target in "${targets[@]}"; do
  target=${target%/}
  out="$rendered/${target//\//_}.yaml"
  if ! kubectl kustomize "$target" >"$out"; then
    echo "FAIL $target: kustomize could not render it"
    failed=1
    continue
  fi
  versions=()
  for v in "${K8S_VERSIONS[@]}"; do versions+=(-k "$v"); done
  # --quiet prints only problems; a WARN (no schema for a kind) is a problem too, since an
  # object nobody checked could carry any typo.
  schema=$(kubernetes-validate --strict --quiet "${versions[@]}" "$out" 2>&1) && status=0 || status=$?
  fit=$(python3 check_consistency.py <"$out" 2>&1) || status=1
  if [ "$status" -ne 0 ] || [ -n "$schema$fit" ]; then
    echo "FAIL $target"
    printf '%s\n' "$schema" "$fit" | sed '/^$/d; s/^/  /'
    failed=1
  else
    echo "ok   $target ($(grep -c '^kind:' "$out") objects; Kubernetes ${K8S_VERSIONS[*]})"
  fi
done
exit "$failed"
