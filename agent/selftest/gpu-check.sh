#!/usr/bin/env bash
# The self-test on this machine's real GPUs, for a device check (an H100 or H200 when one is
# lent): prints the table with the card's published figures and keeps each result's JSON.
#
#   agent/selftest/gpu-check.sh [BINARY]
#
# BINARY defaults to a release build (`cargo build --release -p lotabots-gpu-selftest`);
# pass a prebuilt one to spend no device time compiling. JSON goes to $OUT (or /tmp).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${1:-}"
if [[ -z "$bin" ]]; then
  cargo build --release -p lotabots-gpu-selftest
  bin="${CARGO_TARGET_DIR:-target}/release/lotabots-gpu-selftest"
fi
out="${OUT:-/tmp}"
nvidia-smi -L || true
# The default run as the launcher would start it, then a larger product whose rate is closer
# to what the card sustains (n = 1024 is ~2 GFLOP: a fraction of a millisecond).
"$bin" --no-post --format table --output "$out/selftest-default.json"
"$bin" --no-post --format table --matmul-n 4096 --matmul-runs 20 --memory-share 0.5 \
  --output "$out/selftest-n4096.json"
