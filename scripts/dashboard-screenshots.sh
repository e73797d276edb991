#!/usr/bin/env bash
# Regenerates docs/screenshots/*.png: every dashboard page at desktop (1280×800) and phone
# (390×844) width, in headless Chromium against a throwaway deployment (Redis, core, edge).
# Needs redis-server, chromium and chromium-driver (apt-get install -y chromium chromium-driver).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo test --test dashboard -- --ignored --exact screenshots_of_every_page --nocapture
cargo test --test dashboard -- --ignored --exact screenshots_of_usage_and_budgets --nocapture
ls -1 docs/screenshots/*.png
