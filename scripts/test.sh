#!/usr/bin/env bash
# Runs every test of the workspace, first installing what this machine lacks for them:
#
#   redis-server                 every test starts a private redis-server
#   curl                         the API guide's cURL examples run as written
#   python3-pip                  when a Python package below is missing and pip is too
#   requests, openai (pinned)    the guide's Python example, the official OpenAI Python SDK
#   nodejs, npm, axios           the guide's Node example (axios from tests/guide/package-lock.json)
#   chromium, chromium-driver    the dashboard's browser tests drive a real headless Chromium
#
# Debian packages are installed with apt-get as root (or through passwordless sudo); when that is
# not possible the script names what to install and stops before running anything. Then:
#
#   cargo test --workspace --locked --no-fail-fast [your arguments]
#
# so every test binary runs even when an earlier one fails, and cargo's own summary comes last.
#
#   scripts/test.sh                       every test
#   scripts/test.sh --test dashboard      one test file
#   scripts/test.sh -- --nocapture        arguments after -- go to the test binaries
#
# Once all of the above is present, plain `cargo test --workspace` runs the same tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# The versions the tests prove (tests/openai_compat.rs pins the same SDK).
REQUESTS='requests==2.32.*'
OPENAI_SDK='openai==3.57.0'

# What is missing: Debian packages (one entry per purpose) and Python packages.
apt_missing=() apt_why=()
py_missing=() py_why=()
missing_apt() { apt_missing+=("$1"); apt_why+=("$2"); }

command -v redis-server >/dev/null ||
  missing_apt "redis-server" "every test starts a private redis-server"
command -v redis-cli >/dev/null ||
  missing_apt "redis-tools" "the Redis Cluster and Sentinel tests build their topologies with redis-cli"
command -v openssl >/dev/null ||
  missing_apt "openssl" "the Redis TLS tests make their certificates with openssl"
command -v curl >/dev/null ||
  missing_apt "curl" "the API guide's cURL examples run as written"
{ command -v node && command -v npm; } >/dev/null ||
  missing_apt "nodejs npm" "the guide's Node example runs under node, its axios installed with npm"
{ [ -x /usr/bin/chromium ] && command -v "${CHROMEDRIVER:-chromedriver}"; } >/dev/null ||
  missing_apt "chromium chromium-driver" "the dashboard's browser tests drive a real headless Chromium"
python3 -c 'import requests' 2>/dev/null ||
  { py_missing+=("$REQUESTS"); py_why+=("the guide's Python example uses requests"); }
python3 -c 'import openai' 2>/dev/null ||
  { py_missing+=("$OPENAI_SDK"); py_why+=("the OpenAI-compatible API is proven with the official SDK"); }
if [ ${#py_missing[@]} -gt 0 ] && ! python3 -m pip --version >/dev/null 2>&1; then
  missing_apt "python3-pip" "pip installs the pinned Python packages (python3 comes with it)"
fi

# How Debian packages can be installed here, if at all.
sudo=()
can_apt=1
if ! command -v apt-get >/dev/null; then
  can_apt=0 why_not="there is no apt-get"
elif [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    can_apt=0 why_not="not root, and no passwordless sudo"
  fi
fi

# Cannot install: say what is missing, one line each, and run nothing.
if [ ${#apt_missing[@]} -gt 0 ] && [ "$can_apt" = 0 ]; then
  echo "scripts/test.sh cannot install what the tests need ($why_not); install these, then run it again:" >&2
  for i in "${!apt_missing[@]}"; do
    printf '  %-48s # %s\n' "apt-get install -y ${apt_missing[$i]}" "${apt_why[$i]}" >&2
  done
  for i in "${!py_missing[@]}"; do
    printf '  %-48s # %s\n' "python3 -m pip install '${py_missing[$i]}'" "${py_why[$i]}" >&2
  done
  exit 1
fi

if [ ${#apt_missing[@]} -gt 0 ]; then
  # apt's chatter is shown only when an install fails.
  apt_log=$(mktemp)
  trap 'rm -f "$apt_log"' EXIT
  "${sudo[@]}" apt-get update -qq
  for i in "${!apt_missing[@]}"; do
    echo "installing ${apt_missing[$i]}: ${apt_why[$i]}"
    # shellcheck disable=SC2086 # one entry names several packages
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq ${apt_missing[$i]} >"$apt_log" 2>&1; then
      cat "$apt_log" >&2
      echo "apt-get install ${apt_missing[$i]} failed" >&2
      exit 1
    fi
  done
  rm -f "$apt_log"
fi

if [ ${#py_missing[@]} -gt 0 ]; then
  pip=(python3 -m pip install -q --disable-pip-version-check)
  # Debian's own python3 refuses pip installs (PEP 668, "externally-managed-environment"); the
  # tests run plain `python3`, so the packages go where it imports from: /usr/local as root,
  # ~/.local otherwise, both apart from the files apt manages.
  if python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    pip+=(--break-system-packages)
  fi
  for i in "${!py_missing[@]}"; do
    echo "installing ${py_missing[$i]}: ${py_why[$i]}"
    PIP_ROOT_USER_ACTION=ignore "${pip[@]}" "${py_missing[$i]}"
  done
fi

# The guide's Node example requires axios, pinned by the lock file: installed again when the lock
# file is newer than what npm last installed.
if [ ! -f tests/guide/node_modules/.package-lock.json ] ||
  [ tests/guide/package-lock.json -nt tests/guide/node_modules/.package-lock.json ]; then
  echo "installing tests/guide's Node modules (npm ci): the guide's Node example requires axios"
  npm ci --prefix tests/guide --no-audit --no-fund --silent
fi

echo "running: cargo test --workspace --locked --no-fail-fast${*:+ $*}"
exec cargo test --workspace --locked --no-fail-fast "$@"
