#!/usr/bin/env bash
# Resident memory of sluice under a flood of distinct client keys: one route limited per client
# address, sluice trusting X-Forwarded-For from 127.0.0.1, and wrk sending a new forwarded
# address with every request (a million by default). Prints RSS before, during and after.
#
#   bench/limit-keys.sh                 # REQUESTS=1000000 LIMIT_KEYS=100000
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-1000000}
LIMIT_KEYS=${LIMIT_KEYS:-100000}
PORT=${PORT:-18200}
# shellcheck source=bench/lib.sh
. bench/lib.sh
install_missing wrk:wrk curl:curl
scripts/build-release.sh >&2
d="$work/m"
mkdir -p "$d"
# No backend listens on PORT+1: admitted requests get a quick 502, after the limit has counted
# them, so the flood measures the limiter and not a backend.
cat >"$d/all.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: up, namespace: default}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: up, namespace: default, labels: {kubernetes.io/service-name: up}}
addressType: IPv4
ports: [{name: http, port: $((PORT + 1))}]
endpoints: [{addresses: ["127.0.0.1"]}]
---
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: r, namespace: default}
spec: {rules: [{name: all, backendRefs: [{name: up, port: 80}]}]}
---
apiVersion: sluice.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: p, namespace: default}
spec:
  targetRef: {kind: GatewayRoute, name: r}
  limits: [{name: per-client, requests: 10, period: 1h, key: {type: ClientIP}}]
YAML
SLUICE_LOG=warn target/release/sluice run --manifests "$d" --workers 1 --access-log off \
  --listen 127.0.0.1:$PORT --admin-listen 127.0.0.1:$((PORT + 2)) \
  --trusted-proxies 127.0.0.1 --limit-keys "$LIMIT_KEYS" &
sluice=$!
pids+=("$sluice")
wait_for "http://127.0.0.1:$((PORT + 2))/readyz"
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/$sluice/status"; }
echo "RSS at start: $(rss)"
cat >"$work/keys.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  local a = n % 256; local b = math.floor(n / 256) % 256; local c = math.floor(n / 65536) % 256
  return wrk.format("GET", "/x", {["X-Forwarded-For"] = "10." .. c .. "." .. b .. "." .. a})
end
LUA
# One wrk thread counts from 1 over its connections: about REQUESTS distinct addresses (up to
# 16.7 million), in order.
secs=$(( REQUESTS / 12000 + 5 ))
wrk -t1 -c8 -d"${secs}s" -s "$work/keys.lua" "http://127.0.0.1:$PORT/" >"$work/wrk.out" &
w=$!
for _ in 1 2 3 4; do sleep $(( secs / 4 )); echo "RSS during: $(rss)"; done
wait "$w" || true
grep -E "requests in|Requests/sec" "$work/wrk.out"
echo "RSS after: $(rss), peak $(awk '/VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/$sluice/status")"
