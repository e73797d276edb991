#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of the gateway's parsers, each target for a few
# seconds, from the seed corpora in fuzz/seeds/ (the API guide's examples) plus whatever earlier
# runs kept in fuzz/corpus/:
#
#   rest_bodies    every JSON request body the edge accepts → its core request
#   cron_schedule  schedules (every / at / cron expressions and time zones), next runs
#   config_file    the configuration file reader shared by both binaries
#   event_id       event ids as Last-Event-ID and ?after= carry them
#   authorization  the Authorization header as the core reads it
#
#   scripts/fuzz.sh            # 10 s per target
#   scripts/fuzz.sh 600        # 10 minutes per target
#   scripts/fuzz.sh 60 cron_schedule
#
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the run; reproduce it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>` (in fuzz/), then keep it as a regression test.
# cargo fuzz needs nightly compiler features; the stable toolchain provides them under
# RUSTC_BOOTSTRAP=1.
set -euo pipefail

seconds=${1:-10}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(rest_bodies cron_schedule config_file event_id authorization)
fi

export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked --version 0.13.2 --quiet
fi
if ! rustc -Z unstable-options --version >/dev/null 2>&1; then
  echo "SKIPPED: this toolchain cannot enable the nightly features cargo fuzz needs"
  exit 0
fi

cargo fuzz build
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "--- $target (${seconds}s)"
  status=0
  cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1 ||
    status=$?
  grep -E '^(#[0-9]+\s+DONE|stat::number_of_executed_units|stat::new_units_added)' "$log" || true
  if [ "$status" != 0 ]; then
    tail -n 60 "$log"
    echo "fuzz target $target failed; its input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
echo "fuzzing: ${#targets[@]} targets ran ${seconds}s each without a failure"
