#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, then checks the Helm
# chart, and runs formatting, lints, the licence and source checks (cargo deny), unit and
# integration tests (the cluster-mode scenarios against a fake API server among them), the CRD
# drift test, a short run of every fuzz target and the end-to-end scenarios.
# CI runs exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)  # Global rate-limit tests
if ((${#need_apt[@]})); then
  step "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi

step "Helm chart: lint, render, validate"
scripts/chart-check.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "supply chain: cargo deny check licenses bans sources (deny.toml)"
if ! cargo deny --version >/dev/null 2>&1; then cargo install cargo-deny --version 0.20.2 --locked; fi
cargo deny check licenses bans sources

step "unit, integration and CRD drift tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi

step "fuzz smoke: every target in fuzz/ for 20 s from its seeds (scripts/fuzz.sh --smoke)"
scripts/fuzz.sh --smoke

step "end-to-end: standalone mode"
cargo build --locked -p sluice-controller --bin sluice
SLUICE_BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/sluice" e2e/standalone.sh

step "end-to-end: cluster"
cluster_log="$(mktemp)"
e2e/cluster.sh | tee "$cluster_log"

# A green run must not read as "cluster mode tested" when it was not.
step "summary"
if skipped="$(sed -n 's/^skipped: //p' "$cluster_log")" && [[ -n "$skipped" ]]; then
  echo "passed: chart, fmt, clippy, cargo deny, unit, integration, fuzz smoke, standalone e2e; NOT run: cluster e2e ($skipped)"
else
  echo "passed: chart, fmt, clippy, cargo deny, unit, integration, fuzz smoke, standalone e2e, cluster e2e"
fi
rm -f "$cluster_log"
