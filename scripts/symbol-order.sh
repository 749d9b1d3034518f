#!/usr/bin/env bash
# Regenerates build/sluice.order, the functions scripts/build-release.sh links first: it runs
# the release binary under callgrind while it starts on 10,000 routes (bench/scale.sh's), serves
# requests through them to a real upstream with the JSON access log on, answers a 404 and is
# scraped, once standalone (reloading a new route file too) and once in cluster mode against
# the fake API server (`fake-api`, tests/src/bin), and lists every function that ran, in the
# order callgrind first saw it. Rerun it after changes that move much code (a dependency or
# toolchain upgrade renames nearly every symbol); names that no longer exist only cost the pages
# they would have saved.
#
#   scripts/symbol-order.sh && scripts/build-release.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
install_missing valgrind:valgrind curl:curl python3:python3 nginx:nginx-light

ROUTES=${ROUTES:-10000}
BASE_PORT=${BASE_PORT:-18400}
PORT=$((BASE_PORT + 1)) ADMIN=$((BASE_PORT + 2)) UP=$((BASE_PORT + 11))

scripts/build-release.sh >&2
ok_upstream "$UP"
mkdir -p "$work/manifests"
upstream_manifests "$UP" >"$work/manifests/backends.yaml"
route_manifests "$ROUTES" >"$work/manifests/routes.yaml"

# profile NAME ARGS...: the release binary under callgrind, its profile in $work/NAME.out.
profile() {
  local name=$1
  shift
  valgrind --tool=callgrind --demangle=no --compress-strings=no --dump-instr=no \
    --callgrind-out-file="$work/$name.out" \
    target/release/sluice run "$@" --workers 1 --access-log json \
    --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" >/dev/null 2>"$work/$name.log" &
  gateway=$!
  pids+=("$gateway")
  wait_for "http://127.0.0.1:$PORT/r$((ROUTES - 1))/x" 300
  for p in /r0/ /r1/a "/r$((ROUTES / 2))/b?q=1" /nothing; do
    curl -s -o /dev/null "http://127.0.0.1:$PORT$p"
  done
  curl -s -o /dev/null -H 'Host: r0.example.com' "http://127.0.0.1:$PORT/r0/"
}
stop_profile() {
  for p in /metrics /readyz /healthz; do curl -s -o /dev/null "http://127.0.0.1:$ADMIN$p"; done
  kill -TERM "$gateway"
  wait "$gateway" || true
}

# Standalone: start, serve, reload a new route file.
profile standalone --manifests "$work/manifests"
printf 'apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: new, namespace: default}\nspec:\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /new/}}]\n    backendRefs: [{name: up, port: 80}]\n' \
  >"$work/manifests/new.yaml"
wait_for "http://127.0.0.1:$PORT/new/x" 60
stop_profile

# Cluster mode, against the fake API server serving the same objects: lists, watches, leader
# election and the status writer's first pass over every route (given 20 s under callgrind).
cargo build --locked -p sluice-tests --bin fake-api >&2
target/debug/fake-api "$work/kubeconfig" "$work/manifests/backends.yaml" \
  "$work/manifests/routes.yaml" >"$work/fake-api.out" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/fake-api.out" ] && break; sleep 0.1; done
KUBECONFIG="$work/kubeconfig" profile cluster
sleep 20
stop_profile

# Every function that ran (fn=) or was called (cfn=), first sighting first; callgrind names
# code it has no symbol for by address, which the linker could not place anyway.
# Standalone's first, then what only cluster mode ran.
cat "$work/standalone.out" "$work/cluster.out" | grep -E '^c?fn=' | sed -E 's/^c?fn=//' |
  grep -v '^0x' | awk '!seen[$0]++' >build/sluice.order
log "build/sluice.order: $(wc -l <build/sluice.order) functions"
