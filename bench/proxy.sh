#!/usr/bin/env bash
# Whole-proxy benchmark: wrk through sluice vs wrk straight at the same backend, interleaved
# (direct, sluice, direct, sluice, ...) after a warm-up, in one run on one machine.
#
#   bench/proxy.sh            # 3 rounds of 10 s per target
#   ROUNDS=5 DURATION=15 CONNECTIONS=64 bench/proxy.sh
#
# Pinning (2-core machines): the proxy runs alone on core 0; wrk and the nginx backend share
# core 1, so the proxy's CPU is what it is measured on. The direct run uses the same core 1 for
# wrk and the backend, so the backend is never faster in one run than in the other.
# Access logging is off on both sides (SLUICE_LOG=warn, nginx access_log off).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
BACKEND_PORT=${BACKEND_PORT:-18081}
PROXY_PORT=${PROXY_PORT:-18080}
ADMIN_PORT=${ADMIN_PORT:-19911}

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if ((${#missing[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release --locked -p sluice-controller --bin sluice >&2
SLUICE=$PWD/target/release/sluice

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

mkdir -p "$work/manifests" "$work/nginx"
cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$BACKEND_PORT reuseport;
    location / { return 200 "hello from the backend\n"; }
  }
}
CONF
cat >"$work/manifests/bench.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: default}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: backend-1, namespace: default, labels: {kubernetes.io/service-name: backend}}
addressType: IPv4
ports: [{name: http, port: $BACKEND_PORT}]
endpoints: [{addresses: ["127.0.0.1"], conditions: {ready: true}}]
---
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: bench, namespace: default}
spec:
  rules:
  - backendRefs: [{name: backend, port: 80}]
YAML

taskset -c 1 "$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
pids+=($!)
SLUICE_LOG=warn taskset -c 0 "$SLUICE" run --manifests "$work/manifests" --workers 1 \
  --listen "127.0.0.1:$PROXY_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" &
sluice_pid=$!
pids+=($sluice_pid)

for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 &&
    curl -fsS "http://127.0.0.1:$BACKEND_PORT/" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$PROXY_PORT/" >/dev/null

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk=$(getconf CLK_TCK)

# run TARGET URL -> appends "rps p50_ms p99_ms non2xx sockerr cpu_s_per_100k" to $work/TARGET
run() {
  local target=$1 url=$2 before after out
  before=$(cpu_ticks "$sluice_pid")
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url")
  after=$(cpu_ticks "$sluice_pid")
  local rps p50 p99 total non2xx sockerr
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  sockerr=$(awk '/Socket errors/ {gsub(",", ""); print $4+$6+$8+$10}' <<<"$out")
  local cpu=0
  if [ "$target" = sluice ]; then
    cpu=$(awk -v t=$((after - before)) -v hz="$clk" -v n="$total" 'BEGIN {printf "%.2f", t / hz / n * 100000}')
  fi
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") ${non2xx:-0} ${sockerr:-0} $cpu" >>"$work/$target"
}
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) {sub(/us$/, "", v); printf "%.3f", v / 1000} else if (v ~ /ms$/) {sub(/ms$/, "", v); printf "%.3f", v} else {sub(/s$/, "", v); printf "%.3f", v * 1000} }'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
col() { awk -v c="$2" '{print $c}' "$work/$1" | median; }

echo "warming up..." >&2
taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d3s "http://127.0.0.1:$PROXY_PORT/" >/dev/null
taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d3s "http://127.0.0.1:$BACKEND_PORT/" >/dev/null
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  run direct "http://127.0.0.1:$BACKEND_PORT/"
  run sluice "http://127.0.0.1:$PROXY_PORT/"
done
rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$sluice_pid/status")

printf '\n%s rounds x %ss, %s connections, wrk -t1; medians\n\n' "$ROUNDS" "$DURATION" "$CONNECTIONS"
printf '| target | requests/s | p50 ms | p99 ms | non-2xx | socket errors | proxy CPU s / 100k req |\n'
printf '|---|---|---|---|---|---|---|\n'
for t in direct sluice; do
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$(col $t 1)" "$(col $t 2)" "$(col $t 3)" \
    "$(col $t 4)" "$(col $t 5)" "$([ $t = sluice ] && col $t 6 || echo -)"
done
awk -v a="$(col sluice 1)" -v b="$(col direct 1)" -v c="$(col sluice 3)" -v d="$(col direct 3)" \
  'BEGIN {printf "\nsluice / direct: throughput %.2fx, p99 %+.3f ms\n", a / b, c - d}'
echo "sluice peak RSS: $((rss_kb / 1024)) MiB"
