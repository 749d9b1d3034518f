#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: a number that,
# unlike requests/s on a shared 2-core machine, does not move from run to run, so an A/B of two
# builds shows a change of a few percent.
#
#   bench/instructions.sh                          # target/release/sluice (built if missing)
#   bench/instructions.sh old-sluice new-sluice    # A/B of two binaries
#   ACCESS_LOG=on bench/instructions.sh ...        # with the JSON access log written (to a file)
#
# Each binary serves one prefix route to one upstream nginx (small static body) under callgrind;
# after 2,000 warm-up requests the counters are zeroed, N (default 20,000) HTTP/1.1 keep-alive
# requests from h2load over 10 connections follow, and the total is divided by N. Kernel time
# is not counted: this measures sluice's own work (and hyper's, tokio's, libc's in-process).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-20000}
# shellcheck source=bench/lib.sh
. bench/lib.sh
install_missing valgrind:valgrind h2load:nghttp2-client nginx:nginx-light curl:curl

if [ $# -eq 0 ]; then
  [ -x target/release/sluice ] || scripts/build-release.sh >&2
  set -- target/release/sluice
fi

UPSTREAM_PORT=${UPSTREAM_PORT:-18311}
PROXY_PORT=${PROXY_PORT:-18310}
ADMIN_PORT=${ADMIN_PORT:-18312}
mkdir -p "$work/nginx" "$work/manifests"
{
  nginx_preamble "$work/nginx"
  echo "  server { listen 127.0.0.1:$UPSTREAM_PORT; location / { return 200 \"hello\\n\"; } }"
  echo "}"
} >"$work/nginx/nginx.conf"
"$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=("$!")
wait_for "http://127.0.0.1:$UPSTREAM_PORT/"
cat >"$work/manifests/route.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: up, namespace: default}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: up-1, namespace: default, labels: {kubernetes.io/service-name: up}}
addressType: IPv4
ports: [{name: http, port: $UPSTREAM_PORT}]
endpoints: [{addresses: ["127.0.0.1"]}]
---
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: r, namespace: default}
spec:
  rules:
  - backendRefs: [{name: up, port: 80}]
EOF

for bin in "$@"; do
  # Access log on or off, for builds before and after it became the pipeline's own writer
  # (`--access-log`): before, it was the `sluice::access` tracing target at info.
  log_flags=()
  if "$bin" run --help 2>/dev/null | grep -q -- --access-log; then
    [ "${ACCESS_LOG:-off}" = on ] && log_flags=(--access-log json) || log_flags=(--access-log off)
    filter=warn
  else
    [ "${ACCESS_LOG:-off}" = on ] && filter="warn,sluice::access=info" || filter=warn
  fi
  SLUICE_LOG=$filter valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
    "$bin" run --manifests "$work/manifests" --workers 1 "${log_flags[@]}" \
    --listen "127.0.0.1:$PROXY_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" >"$work/sluice.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  # Under valgrind start-up takes seconds, not milliseconds.
  wait_for "http://127.0.0.1:$ADMIN_PORT/readyz" 60
  h2load --h1 -n 2000 -c 10 "http://127.0.0.1:$PROXY_PORT/x" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  done_line=$(h2load --h1 -n "$N" -c 10 "http://127.0.0.1:$PROXY_PORT/x" | grep -E '^requests:')
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 0.5
  dump=$(ls "$work/cg.$pid".* | head -1)
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  printf '%s: %s instructions per request (%s)\n' "$bin" "$((total / N))" "${done_line#requests: }"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done
