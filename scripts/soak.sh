#!/usr/bin/env bash
# A bounded soak: sluice (release build, standalone) under mixed traffic for a while, with
# route changes, endpoint churn and Redis restarts all along, then the figures: resident memory
# and open file descriptors 10 s in, after the first minute (once the upstream pools have
# filled), at the end, and their peak; a line per minute; requests served, panics, and
# unexpected answers (every answer here should be a 2xx: the rate limit is generous and fails
# open, and two of the three endpoints are ready at any time).
#
#   scripts/soak.sh                  # 10 minutes
#   scripts/soak.sh --minutes 60
#
# Exits 1 on a panic, an unexpected answer or a wrk socket error.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=10
while (($#)); do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
BASE_PORT=${BASE_PORT:-18500}
SLUICE_PORT=$((BASE_PORT + 1)) ADMIN_PORT=$((BASE_PORT + 2)) REDIS_PORT=$((BASE_PORT + 3))
UP_PORTS=($((BASE_PORT + 11)) $((BASE_PORT + 12)) $((BASE_PORT + 13)))

# shellcheck source=bench/lib.sh
. bench/lib.sh
install_missing wrk:wrk nginx:nginx-light curl:curl redis-server:redis-server
scripts/build-release.sh >&2
SLUICE=${SLUICE:-$PWD/target/release/sluice}
m="$work/manifests"
mkdir -p "$work/nginx" "$m"

{
  nginx_preamble "$work/nginx"
  for p in "${UP_PORTS[@]}"; do
    printf '  server { listen 127.0.0.1:%d; location / { add_header Cache-Control "max-age=1"; return 200 "ok %d\\n"; } }\n' "$p" "$p"
  done
  echo "}"
} >"$work/nginx/nginx.conf"
"$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
pids+=($!)
wait_for "http://127.0.0.1:${UP_PORTS[0]}/"

redis_pid=
start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
}
start_redis

# slices ROUND: three endpoints, one of them (ROUND mod 3) not ready.
slices() {
  local i ready
  for i in 0 1 2; do
    ready=true
    (($1 % 3 == i)) && ready=false
    printf -- '---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: up-%d, namespace: default, labels: {kubernetes.io/service-name: up}}\naddressType: IPv4\nports: [{name: http, port: %d}]\nendpoints: [{addresses: ["127.0.0.1"], conditions: {ready: %s}}]\n' \
      "$i" "${UP_PORTS[$i]}" "$ready"
  done >"$m/.slices.yaml"
  mv "$m/.slices.yaml" "$m/slices.yaml"
}
slices 0
cat >"$m/routes.yaml" <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: up, namespace: default}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: soak, namespace: default}
spec:
  rules:
  - name: plain
    matches: [{path: {type: PathPrefix, value: /plain}}]
    backendRefs: [{name: up, port: 80}]
  - name: cached
    matches: [{path: {type: PathPrefix, value: /cached}}]
    cache: {ttl: 2s, shared: true}
    backendRefs: [{name: up, port: 80}]
  - name: limited
    matches: [{path: {type: PathPrefix, value: /limited}}]
    backendRefs: [{name: up, port: 80}]
---
apiVersion: sluice.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: soak, namespace: default}
spec:
  targetRef: {kind: GatewayRoute, name: soak, rule: limited}
  limits:
  - {name: route, requests: 1000000, period: 1s, key: {type: Route}}
  scope: Global
  failureMode: Open
YAML

SLUICE_LOG=warn "$SLUICE" run --manifests "$m" --redis "redis://127.0.0.1:$REDIS_PORT/0" \
  --access-log json --listen "127.0.0.1:$SLUICE_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  >/dev/null 2>>"$work/sluice.log" &
sluice_pid=$!
pids+=("$sluice_pid")
wait_for "http://127.0.0.1:$ADMIN_PORT/readyz" 60
wait_for "http://127.0.0.1:$SLUICE_PORT/plain" 30

rss_mib() { awk '$1 == "VmRSS:" {printf "%.1f", $2 / 1024}' "/proc/$sluice_pid/status"; }
fds() { find "/proc/$sluice_pid/fd" -mindepth 1 -maxdepth 1 | wc -l; }

cat >"$work/mixed.lua" <<'LUA'
local paths = {"/plain/a", "/cached/b", "/limited/c", "/plain/d?x=1", "/cached/e"}
local i = 0
request = function()
  i = i + 1
  return wrk.format(nil, paths[i % #paths + 1])
end
LUA
seconds=$((minutes * 60))
log "soak: $minutes min of mixed traffic, route changes every 2 s, endpoint churn every 3 s, a Redis restart every $((seconds / 5)) s"
wrk -t1 -c16 -d"${seconds}s" -s "$work/mixed.lua" "http://127.0.0.1:$SLUICE_PORT" >"$work/wrk" &
wrk_pid=$!

sleep 10
rss_start=$(rss_mib) fds_start=$(fds) rss_peak=$rss_start fds_peak=$fds_start
rss_settled=- fds_settled=-
started=$(date +%s)
round=0 restarts=0
while kill -0 "$wrk_pid" 2>/dev/null; do
  sleep 1
  round=$((round + 1))
  if ((round % 2 == 0)); then
    n=$((round / 2))
    printf 'apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: extra-%d, namespace: default}\nspec:\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /extra%d}}]\n    backendRefs: [{name: up, port: 80}]\n' \
      "$n" "$n" >"$m/.extra.yaml"
    mv "$m/.extra.yaml" "$m/extra-$n.yaml"
    rm -f "$m/extra-$((n - 5)).yaml"
  fi
  ((round % 3 == 0)) && slices "$((round / 3))"
  if ((round % (seconds / 5) == 0)) && ((round < seconds - 20)); then
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    sleep 3
    start_redis
    restarts=$((restarts + 1))
  fi
  if ((round % 5 == 0)); then
    r=$(rss_mib) f=$(fds)
    rss_peak=$(awk -v a="$r" -v b="$rss_peak" 'BEGIN {print (a > b) ? a : b}')
    ((f > fds_peak)) && fds_peak=$f
    if ((round % 60 == 0)); then
      log "  minute $((round / 60)): RSS $r MiB, $f fds"
      ((round == 60)) && rss_settled=$r fds_settled=$f
    fi
  fi
done
wait "$wrk_pid" || true
sleep 2
rss_end=$(rss_mib) fds_end=$(fds)
metrics=$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics")
unexpected=$(printf '%s\n' "$metrics" | awk '/^sluice_http_requests_total\{/ && !/code="2xx"/ {s += $NF} END {print s + 0}')
served=$(printf '%s\n' "$metrics" | awk '/^sluice_http_requests_total\{/ {s += $NF} END {print s + 0}')
panics=$(grep -c panicked "$work/sluice.log" || true)
socket_errors=$(awk '/Socket errors/ {print}' "$work/wrk")

echo
echo "Soak (sluice $(git rev-parse --short HEAD), $minutes min, started $(date -u -d "@$started" +%FT%TZ))"
echo
echo "| figure | 10 s in | 1 min in | end | peak |"
echo "|---|---|---|---|---|"
echo "| RSS MiB | $rss_start | $rss_settled | $rss_end | $rss_peak |"
echo "| open fds | $fds_start | $fds_settled | $fds_end | $fds_peak |"
echo
echo "requests answered: $served ($(awk '/Requests\/sec/ {print $2}' "$work/wrk") req/s); not 2xx: $unexpected; panics: $panics; route changes: $((round / 2)); endpoint flips: $((round / 3)); Redis restarts: $restarts; ${socket_errors:-no wrk socket errors}"
if ((unexpected > 0)); then
  printf '%s\n' "$metrics" | grep '^sluice_http_requests_total{' | grep -v 'code="2xx"' >&2
fi
((panics == 0 && unexpected == 0)) && [ -z "$socket_errors" ]
