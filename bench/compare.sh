#!/usr/bin/env bash
# Sluice and nginx side by side as reverse proxies, in one run on one machine, over the same
# upstreams, driven by the same load generators in alternating order (nginx, sluice, nginx, ...).
#
#   bench/compare.sh                              # every scenario, 3 rounds of 10 s
#   SCENARIOS="plain routes10k" ROUNDS=5 DURATION=15 bench/compare.sh
#
# Scenarios: plain (HTTP/1.1 keep-alive, one route), routes100, routes10k (the matched route is
# the last one defined), h2 (HTTP/2 cleartext to the proxy, h2load), rate (fixed 5,000 requests/s
# with latency percentiles; needs `oha`, see below), swaps and swaps10k (a route added 10 times a
# second under load, with 100 and with 10,000 routes configured), churn (an upstream instance
# removed and re-added under load), auth (sluice alone: an open route, one needing an RS256 JWT
# and one needing an API key, alternating; every connection sends the same valid credential),
# limits (sluice alone: an open route, one with a Local rate limit per client address and one with
# a Global one in Redis, alternating; the limits are high enough never to refuse, so what is
# measured is what an admitted request pays), balancers (sluice alone: the same three upstreams
# through RoundRobin, LeastRequest, Random and ConsistentHash, and LeastRequest with retries,
# passive health checks and circuit limits all on, alternating), failover (sluice alone: under
# load, one upstream is killed with SIGKILL; measured: the time from the kill to the endpoint's
# ejection, and the failed requests the client saw, with retries on), cache (sluice alone: a
# proxied route, one with CORS and security headers, and a cached one answered from the cache,
# alternating), tls (HTTPS with the same
# EC P-256 certificate on both: keep-alive requests over TLS 1.3, and full handshakes per second
# with one request per connection; needs bench.sluice.test in /etc/hosts for SNI, which the
# script adds when it may write the file).
#
# SLUICE_B=/path/to/another/sluice with SCENARIOS=ab: that build and this one side by side on
# the plain route (one at a time on core 0, alternating), to measure a change's cost in one run.
#
# BALANCERS="rr lr" limits the balancers scenario to those variants (more rounds of an A/B in
# the same time).
#
# ACCESS_LOG=on turns both proxies' access logs on (nginx: a JSON log_format to a file; sluice:
# its JSON access log, stdout to a file), as users run them; the default is both off.
#
# Pinning, for 2-core machines: the proxy under test runs alone on core 0; the load generator
# and the upstreams share core 1. Both proxies get one worker (nginx worker_processes 1, sluice
# --workers 1), access logs off, upstream keep-alive on. Three upstream nginx processes on
# separate ports return a small static body; both proxies balance across them round robin.
#
# Fixed-rate latency uses oha (wrk cannot hold a fixed rate and wrk2 is not packaged): set
# OHA=/path/to/oha, or INSTALL_OHA=1 to `cargo install oha` into target/bench-tools first.
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${SCENARIOS:-"plain routes100 routes10k h2 rate swaps swaps10k churn"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
RATE=${RATE:-5000}
BASE_PORT=${BASE_PORT:-18100}
NGINX_PORT=$((BASE_PORT)) SLUICE_PORT=$((BASE_PORT + 1)) ADMIN_PORT=$((BASE_PORT + 2))
NGINX_H2_PORT=$((BASE_PORT + 3)) NGINX_TLS_PORT=$((BASE_PORT + 4)) SLUICE_TLS_PORT=$((BASE_PORT + 5))
REDIS_PORT=$((BASE_PORT + 20)) UP_PORTS=($((BASE_PORT + 11)) $((BASE_PORT + 12)) $((BASE_PORT + 13)))

# shellcheck source=bench/lib.sh
. bench/lib.sh
install_missing wrk:wrk h2load:nghttp2-client nginx:nginx-light curl:curl openssl:openssl redis-server:redis-server
if [ -z "${OHA:-}" ]; then
  if command -v oha >/dev/null; then
    OHA=$(command -v oha)
  elif [ -x target/bench-tools/bin/oha ]; then
    OHA=$PWD/target/bench-tools/bin/oha
  elif [ "${INSTALL_OHA:-0}" = 1 ]; then
    cargo install oha --locked --root target/bench-tools >&2
    OHA=$PWD/target/bench-tools/bin/oha
  fi
fi
scripts/build-release.sh >&2
SLUICE=$PWD/target/release/sluice

# The tls scenario's certificate, the same for both proxies; SNI needs a name, resolved here.
TLS_HOST=bench.sluice.test
mkdir -p "$work/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$TLS_HOST" \
  -addext "subjectAltName=DNS:$TLS_HOST" -keyout "$work/tls/key.pem" -out "$work/tls/cert.pem" 2>/dev/null
if ! getent hosts "$TLS_HOST" >/dev/null && [ -w /etc/hosts ]; then
  echo "127.0.0.1 $TLS_HOST" >>/etc/hosts
fi

# Anything still running when the time budget is spent is stopped by the trap.
# (The sleep must not hold our stdout open, or a pipeline reading it waits for the sleep.)
( sleep "${TIME_LIMIT:-1800}" >/dev/null 2>&1 & wait $!; echo "bench/compare.sh: time limit reached" >&2; kill -TERM $$ ) &
pids+=("$!")

# --- upstreams: three nginx processes, so that one can be stopped on its own -----------------
for i in 0 1 2; do
  d="$work/up$i"
  mkdir -p "$d"
  {
    nginx_preamble "$d"
    cat <<CONF
  server {
    listen 127.0.0.1:${UP_PORTS[$i]} reuseport;
    location / { return 200 "hello from upstream $i\n"; }
  }
}
CONF
  } >"$d/nginx.conf"
  taskset -c 1 "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" &
  pids+=("$!")
  eval "up_pid_$i=$!"
done
for p in "${UP_PORTS[@]}"; do wait_for "http://127.0.0.1:$p/"; done
# The Redis of the limits scenario's Global limit, beside the upstreams on core 1.
taskset -c 1 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
pids+=("$!")

# --- configuration of both proxies for N routes (/r0/ ... /r{N-1}/) --------------------------
# upstream_servers PORT... -> nginx `server` lines
upstream_servers() { for p in "$@"; do printf '    server 127.0.0.1:%s;\n' "$p"; done; }

write_nginx_conf() { # ROUTES [PORTS...]
  local routes=$1
  shift
  local d="$work/nginx"
  mkdir -p "$d"
  local access="access_log off;"
  [ "${ACCESS_LOG:-off}" = on ] && access="access_log $d/access.log json;"
  {
    nginx_preamble "$d"
    cat <<CONF
  log_format json escape=json '{"time":"\$time_iso8601","request_id":"\$request_id","client":"\$remote_addr",'
    '"method":"\$request_method","path":"\$uri","status":\$status,"upstream":"\$upstream_addr",'
    '"duration":\$request_time}';
  $access
  upstream up {
$(upstream_servers "$@")
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT reuseport;
    listen 127.0.0.1:$NGINX_H2_PORT http2;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$host;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
CONF
    for ((r = 0; r < routes; r++)); do printf '    location /r%d/ { proxy_pass http://up; }\n' "$r"; done
    echo "  }"
    # HTTPS as sluice serves it: TLS 1.2 and 1.3, no session tickets (rustls issues none by
    # default), so every new connection is a full handshake on both.
    cat <<CONF
  server {
    listen 127.0.0.1:$NGINX_TLS_PORT ssl http2;
    ssl_certificate $work/tls/cert.pem;
    ssl_certificate_key $work/tls/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$host;
    location / { proxy_pass http://up; }
  }
CONF
    echo "}"
  } >"$d/nginx.conf.tmp"
  mv "$d/nginx.conf.tmp" "$d/nginx.conf"
}

write_sluice_manifests() { # ROUTES [READY...] (one ready flag per upstream, default all true)
  local routes=$1
  shift
  local ready=("${@:-true}")
  local d="$work/manifests"
  mkdir -p "$d"
  {
    printf 'apiVersion: v1\nkind: Service\nmetadata: {name: up, namespace: default}\nspec:\n  ports: [{name: http, port: 80}]\n'
    for i in 0 1 2; do
      printf -- '---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: up-%d, namespace: default, labels: {kubernetes.io/service-name: up}}\naddressType: IPv4\nports: [{name: http, port: %d}]\nendpoints: [{addresses: ["127.0.0.1"], conditions: {ready: %s}}]\n' \
        "$i" "${UP_PORTS[$i]}" "${ready[$i]:-true}"
    done
  } >"$d/backends.yaml.tmp"
  mv "$d/backends.yaml.tmp" "$d/backends.yaml"
  awk -v n="$routes" 'BEGIN {
    for (r = 0; r < n; r++) {
      printf "---\napiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: r%d, namespace: default}\nspec:\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /r%d/}}]\n    backendRefs: [{name: up, port: 80}]\n", r, r
    }
  }' >"$d/routes.yaml.tmp"
  mv "$d/routes.yaml.tmp" "$d/routes.yaml"
  write_auth_manifests "$d"
  write_limit_manifests "$d"
  write_balancer_manifests "$d"
  write_edge_manifests "$d"
}

# The cache and tls scenarios' routes: /cached/ answered from the cache (one key, stored by
# the first request), and the HTTPS host with the bench certificate.
write_edge_manifests() { # DIR
  local cert key
  cert=$(sed 's/^/    /' "$work/tls/cert.pem")
  key=$(sed 's/^/    /' "$work/tls/key.pem")
  cat >"$1/edge.yaml.tmp" <<EOF
apiVersion: v1
kind: Secret
metadata: {name: bench-tls, namespace: default}
type: kubernetes.io/tls
stringData:
  tls.crt: |
$cert
  tls.key: |
$key
---
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: edge, namespace: default}
spec:
  rules:
  - name: cached
    matches: [{path: {type: PathPrefix, value: /cached/}}]
    cache: {ttl: 1h}
    backendRefs: [{name: up, port: 80}]
  - name: filters
    matches: [{path: {type: PathPrefix, value: /filters/}}]
    filters:
      cors: {allowOrigins: ["https://app.example.com"]}
      securityHeaders: {}
    backendRefs: [{name: up, port: 80}]
---
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: tls, namespace: default}
spec:
  hostnames: [$TLS_HOST]
  tls: [{secretName: bench-tls}]
  rules:
  - backendRefs: [{name: up, port: 80}]
EOF
  mv "$1/edge.yaml.tmp" "$1/edge.yaml"
}

# The balancers and failover scenarios' routes: one rule per balancer, one with every traffic
# feature on (limits far above the load: what is measured is their bookkeeping), and the
# failover rule (retries and passive health checks as a user would set them).
write_balancer_manifests() { # DIR
  cat >"$1/balancers.yaml.tmp" <<EOF
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: balancers, namespace: default}
spec:
  rules:
  - name: rr
    matches: [{path: {type: PathPrefix, value: /rr/}}]
    backendRefs: [{name: up, port: 80}]
    loadBalancer: {type: RoundRobin}
  - name: lr
    matches: [{path: {type: PathPrefix, value: /lr/}}]
    backendRefs: [{name: up, port: 80}]
    loadBalancer: {type: LeastRequest}
  - name: random
    matches: [{path: {type: PathPrefix, value: /random/}}]
    backendRefs: [{name: up, port: 80}]
    loadBalancer: {type: Random}
  - name: hash
    matches: [{path: {type: PathPrefix, value: /hash/}}]
    backendRefs: [{name: up, port: 80}]
    loadBalancer: {type: ConsistentHash, consistentHash: {sourceIP: {}}}
  - name: full
    matches: [{path: {type: PathPrefix, value: /full/}}]
    backendRefs: [{name: up, port: 80}]
    retry: {attempts: 2, backoff: 25ms}
    healthCheck: {passive: {consecutiveFailures: 5, ejectionTime: 30s}}
    circuitBreaker: {maxConnections: 100000, maxPendingRequests: 100000, maxRequests: 100000}
  - name: failover
    matches: [{path: {type: PathPrefix, value: /failover/}}]
    backendRefs: [{name: up, port: 80}]
    retry: {attempts: 2, backoff: 5ms}
    healthCheck: {passive: {consecutiveFailures: 5, ejectionTime: 30s}}
EOF
  mv "$1/balancers.yaml.tmp" "$1/balancers.yaml"
}

# The limits scenario's routes: /local/ and /global/, each limited per client address to a
# million requests a second (never reached), locally and in Redis.
write_limit_manifests() { # DIR
  cat >"$1/limits.yaml.tmp" <<EOF
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: limits, namespace: default}
spec:
  rules:
  - name: local
    matches: [{path: {type: PathPrefix, value: /local/}}]
    backendRefs: [{name: up, port: 80}]
  - name: global
    matches: [{path: {type: PathPrefix, value: /global/}}]
    backendRefs: [{name: up, port: 80}]
---
apiVersion: sluice.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: local, namespace: default}
spec:
  targetRef: {kind: GatewayRoute, name: limits, rule: local}
  limits: [{name: per-client, requests: 1000000, period: 1s, key: {type: ClientIP}}]
---
apiVersion: sluice.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: global, namespace: default}
spec:
  targetRef: {kind: GatewayRoute, name: limits, rule: global}
  scope: Global
  limits: [{name: per-client, requests: 1000000, period: 1s, key: {type: ClientIP}}]
EOF
  mv "$1/limits.yaml.tmp" "$1/limits.yaml"
}

# The auth scenario's routes: /jwt/ needs an RS256 token (the example key of the quick start),
# /key/ an API key. They sit beside the others and cost the other scenarios nothing.
JWT_TOKEN=$(examples/quickstart/mint-token.sh bench admin 86400)
API_KEY=bench-api-key-0123456789
write_auth_manifests() { # DIR
  local pem
  pem=$(openssl pkey -in examples/quickstart/keys/example-private.pem -pubout | sed 's/^/    /')
  cat >"$1/auth.yaml.tmp" <<EOF
apiVersion: v1
kind: Secret
metadata: {name: bench-keys, namespace: default}
stringData:
  public.pem: |
$pem
  bench: $API_KEY
---
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: auth, namespace: default}
spec:
  rules:
  - name: jwt
    matches: [{path: {type: PathPrefix, value: /jwt/}}]
    authentication:
      jwt:
        providers:
        - name: example
          issuer: https://auth.example.local
          audiences: [orders]
          algorithms: [RS256]
          keySecretRef: {name: bench-keys, key: public.pem}
    backendRefs: [{name: up, port: 80}]
  - name: key
    matches: [{path: {type: PathPrefix, value: /key/}}]
    authentication:
      apiKey: {secretRefs: [{name: bench-keys}]}
    backendRefs: [{name: up, port: 80}]
EOF
  mv "$1/auth.yaml.tmp" "$1/auth.yaml"
}

nginx_pid=
sluice_pid=
start_proxies() { # ROUTES
  stop_proxies
  write_nginx_conf "$1" "${UP_PORTS[@]}"
  write_sluice_manifests "$1"
  taskset -c 0 "$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
  nginx_pid=$!
  pids+=("$nginx_pid")
  local access=off
  [ "${ACCESS_LOG:-off}" = on ] && access=json
  SLUICE_LOG=warn taskset -c 0 "$SLUICE" run --manifests "$work/manifests" --workers 1 \
    --access-log "$access" --listen "127.0.0.1:$SLUICE_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --redis "redis://127.0.0.1:$REDIS_PORT/0" --listen-tls "127.0.0.1:$SLUICE_TLS_PORT" \
    >"$work/sluice-access.log" 2>>"$work/sluice.log" &
  sluice_pid=$!
  pids+=("$sluice_pid")
  local last=$(($1 - 1))
  wait_for "http://127.0.0.1:$NGINX_PORT/r$last/x"
  wait_for "http://127.0.0.1:$ADMIN_PORT/readyz"
  wait_for "http://127.0.0.1:$SLUICE_PORT/r$last/x"
}
stop_proxies() {
  [ -n "$sluice_b_pid" ] && kill "$sluice_b_pid" 2>/dev/null && wait "$sluice_b_pid" 2>/dev/null || true
  sluice_b_pid=""
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null || true
  [ -n "$sluice_pid" ] && kill "$sluice_pid" 2>/dev/null && wait "$sluice_pid" 2>/dev/null || true
  nginx_pid="" sluice_pid=""
}

# Every process of a proxy: nginx's master and its worker(s), or sluice.
proxy_pids() {
  case $1 in
    nginx) echo "$nginx_pid $(pgrep -P "$nginx_pid" | tr '\n' ' ')" ;;
    sluiceb) echo "$sluice_b_pid" ;;
    *) echo "$sluice_pid" ;;
  esac
}
cpu_ticks() { local t=0 p; for p in $(proxy_pids "$1"); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $t; }
peak_rss_mib() { local k=0 p; for p in $(proxy_pids "$1"); do k=$((k + $(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; echo $((k / 1024)); }
port_of() {
  case $1 in
    nginx) echo "$NGINX_PORT" ;;
    sluiceb) echo "$((BASE_PORT + 6))" ;;
    *) echo "$SLUICE_PORT" ;;
  esac
}
sluice_b_pid=
start_sluice_b() {
  SLUICE_LOG=warn taskset -c 0 "$SLUICE_B" run --manifests "$work/manifests" --workers 1 \
    --access-log "$([ "${ACCESS_LOG:-off}" = on ] && echo json || echo off)" \
    --listen "127.0.0.1:$((BASE_PORT + 6))" --admin-listen "127.0.0.1:$((BASE_PORT + 7))" \
    >"$work/sluice-b-access.log" 2>>"$work/sluice-b.log" &
  sluice_b_pid=$!
  pids+=("$sluice_b_pid")
  wait_for "http://127.0.0.1:$((BASE_PORT + 6))/r0/x"
}
clk=$(getconf CLK_TCK)
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) {sub(/us$/, "", v); printf "%.3f", v / 1000} else if (v ~ /ms$/) {sub(/ms$/, "", v); printf "%.3f", v} else {sub(/s$/, "", v); printf "%.3f", v * 1000} }'; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "-"; else print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
col() { [ -s "$work/res/$1" ] && awk -v c="$2" '{print $c}' "$work/res/$1" | median || echo -; }
mkdir -p "$work/res"

# wrk_summary WRK-OUTPUT -> "rps p50_ms p99_ms non2xx sockerr" (wrk run with --latency)
wrk_summary() {
  local rps p50 p99 non2xx sockerr
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$1")
  p50=$(awk '$1=="50%" {print $2}' <<<"$1")
  p99=$(awk '$1=="99%" {print $2}' <<<"$1")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$1")
  sockerr=$(awk '/Socket errors/ {gsub(",", ""); print $4+$6+$8+$10}' <<<"$1")
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") ${non2xx:-0} ${sockerr:-0}"
}

# wrk_run SCENARIO PATH TARGET [WRK ARGS...] -> "rps p50 p99 non2xx sockerr cpu_s_per_100k rss"
wrk_run() {
  local scenario=$1 path=$2 target=$3 before after out
  shift 3
  before=$(cpu_ticks "$target")
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" "http://127.0.0.1:$(port_of "$target")$path")
  after=$(cpu_ticks "$target")
  local total cpu
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu=$(awk -v t=$((after - before)) -v hz="$clk" -v n="$total" 'BEGIN {printf "%.2f", t / hz / n * 100000}')
  echo "$(wrk_summary "$out") $cpu $(peak_rss_mib "$target")" >>"$work/res/$scenario-$target"
}

# h2_run TARGET -> "rps - - failed errored cpu rss" (h2load: 10 connections x 10 streams)
h2_run() {
  local target=$1 port before after out
  port=$([ "$target" = nginx ] && echo "$NGINX_H2_PORT" || echo "$SLUICE_PORT")
  before=$(cpu_ticks "$target")
  out=$(taskset -c 1 h2load -c10 -m10 -D"$DURATION" "http://127.0.0.1:$port/r0/x" 2>&1)
  after=$(cpu_ticks "$target")
  local rps done_ failed errored
  rps=$(awk '/^finished in/ {gsub(",", ""); print $4}' <<<"$out")
  done_=$(awk '/^requests:/ {gsub(",", ""); print $8}' <<<"$out")
  failed=$(awk '/^requests:/ {gsub(",", ""); print $10}' <<<"$out")
  errored=$(awk '/^requests:/ {gsub(",", ""); print $12}' <<<"$out")
  local non2xx
  non2xx=$(awk '/^status codes:/ {gsub(",", ""); print $5+$7+$9}' <<<"$out")
  awk -v t=$((after - before)) -v hz="$clk" -v n="${done_:-1}" -v rps="${rps:-0}" -v f="${failed:-0}" \
    -v e="${errored:-0}" -v x="${non2xx:-0}" -v rss="$(peak_rss_mib "$target")" \
    'BEGIN {printf "%s - - %d %d %.2f %s\n", rps, f + x, e, t / hz / (n > 0 ? n : 1) * 100000, rss}' \
    >>"$work/res/h2-$target"
}

# rate_run TARGET -> "rps p50 p99 p99.9 non2xx errors cpu rss" at a fixed RATE with oha
rate_run() {
  local target=$1 before after json
  before=$(cpu_ticks "$target")
  json=$(taskset -c 1 "$OHA" --no-tui --output-format json -z "${DURATION}s" -c "$CONNECTIONS" \
    -q "$RATE" --latency-correction "http://127.0.0.1:$(port_of "$target")/r0/x")
  after=$(cpu_ticks "$target")
  python3 - "$json" $((after - before)) "$clk" "$(peak_rss_mib "$target")" >>"$work/res/rate-$target" <<'PY'
import json, sys
d = json.loads(sys.argv[1]); ticks, hz, rss = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = d["summary"]; p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2")); total = sum(codes.values())
errors = sum(d.get("errorDistribution", {}).values())
ms = lambda v: "%.3f" % (v * 1000) if v is not None else "-"
print("%.0f" % s["requestsPerSec"], ms(p["p50"]), ms(p["p99"]), ms(p["p99.9"]), total - ok, errors,
      "%.2f" % (ticks / hz / max(total, 1) * 100000), rss)
PY
}

# swaps_run TARGET [RESULT] -> "rps p50 p99 non2xx sockerr - - change_p50_ms change_max_ms change_p99_ms"
# During a wrk run, the configuration gains a new route 10 times a second (nginx: rewrite its
# configuration and `nginx -s reload`; sluice: rewrite a manifest); each change is timed from
# just before the write to the first 200 on the new path, by one poller process (a persistent
# connection, every 1 ms) so that no process start-up is counted.
swaps_run() {
  local target=$1 result=${2:-swaps} port
  port=$(port_of "$target")
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/r0/x" >"$work/wrk.out" &
  local wrk_pid=$!
  taskset -c 1 python3 - "$target" "$port" "$DURATION" "$work" "$NGINX" >"$work/swap-times" <<'PY'
import http.client, re, subprocess, sys, time
target, port, duration, work, nginx = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
base = open(f"{work}/nginx/nginx.conf").read() if target == "nginx" else None
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
def ok(path):
    global conn
    try:
        conn.request("GET", path)
        r = conn.getresponse(); r.read()
        return r.status == 200
    except Exception:
        conn.close(); conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        return False
end = time.monotonic() + duration - 0.5
i = 0
while time.monotonic() < end:
    started = time.monotonic()
    if target == "nginx":
        with open(f"{work}/nginx/nginx.conf", "w") as f:
            f.write(re.sub(r"location /(r99|swap[0-9]+)/ ", f"location /swap{i}/ ", base))
        subprocess.run([nginx, "-p", f"{work}/nginx", "-c", f"{work}/nginx/nginx.conf", "-s", "reload"],
                       stderr=subprocess.DEVNULL, check=False)
    else:
        with open(f"{work}/manifests/swap.yaml.tmp", "w") as f:
            f.write("apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\n"
                    "metadata: {name: swap, namespace: default}\nspec:\n  rules:\n"
                    f"  - matches: [{{path: {{type: PathPrefix, value: /swap{i}/}}}}]\n"
                    "    backendRefs: [{name: up, port: 80}]\n")
        import os; os.replace(f"{work}/manifests/swap.yaml.tmp", f"{work}/manifests/swap.yaml")
    while not ok(f"/swap{i}/x"):
        if time.monotonic() - started > 10:
            print("timeout"); break
        time.sleep(0.001)
    else:
        print("%.1f" % ((time.monotonic() - started) * 1000))
    i += 1
    time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
PY
  wait "$wrk_pid" || true
  local cp50 cmax cp99
  cp50=$({ grep -v timeout "$work/swap-times" || true; } | median)
  cmax=$({ grep -v timeout "$work/swap-times" || true; } | sort -g | tail -1)
  cp99=$({ grep -v timeout "$work/swap-times" || true; } | sort -g |
    awk '{v[NR] = $1} END {if (NR) {i = int(NR * 0.99 + 0.999); if (i > NR) i = NR; print v[i]} else print "-"}')
  local timeouts
  timeouts=$(grep -c timeout "$work/swap-times" || true)
  [ "${timeouts:-0}" -gt 0 ] && log "  $target: $timeouts change(s) not served within 10 s"
  echo "$(wrk_summary "$(cat "$work/wrk.out")") - - $cp50 ${cmax:--} $cp99" >>"$work/res/$result-$target"
}

swaps10k_run() { swaps_run "$1" swaps10k; }

# churn_run TARGET -> "rps p50 p99 non2xx sockerr"
# During a wrk run, upstream 2 is taken out of the proxy's set (sluice: its endpoint turns not
# ready; nginx: configuration reload without it), stopped gracefully, started again and put back.
churn_run() {
  local target=$1 port
  port=$(port_of "$target")
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/r0/x" >"$work/wrk.out" &
  local wrk_pid=$!
  sleep "$(awk -v d="$DURATION" 'BEGIN {print d / 4}')"
  if [ "$target" = nginx ]; then
    write_nginx_conf 1 "${UP_PORTS[0]}" "${UP_PORTS[1]}"
    "$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf" -s reload 2>/dev/null
  else
    write_sluice_manifests 1 true true false
  fi
  sleep 0.5
  "$NGINX" -p "$work/up2" -c "$work/up2/nginx.conf" -s quit 2>/dev/null
  wait "$up_pid_2" 2>/dev/null || true
  sleep "$(awk -v d="$DURATION" 'BEGIN {print d / 4}')"
  taskset -c 1 "$NGINX" -p "$work/up2" -c "$work/up2/nginx.conf" -e "$work/up2/error.log" &
  up_pid_2=$!
  pids+=("$up_pid_2")
  wait_for "http://127.0.0.1:${UP_PORTS[2]}/"
  if [ "$target" = nginx ]; then
    write_nginx_conf 1 "${UP_PORTS[@]}"
    "$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf" -s reload 2>/dev/null
  else
    write_sluice_manifests 1 true true true
  fi
  wait "$wrk_pid" || true
  wrk_summary "$(cat "$work/wrk.out")" >>"$work/res/churn-$target"
}

# auth_rounds: the open, JWT and API key routes of sluice, alternating, ROUNDS times.
auth_rounds() {
  local round
  for round in $(seq "$ROUNDS"); do
    log "  round $round/$ROUNDS"
    wrk_run auth-open /r0/x sluice
    wrk_run auth-jwt /jwt/x sluice -H "Authorization: Bearer $JWT_TOKEN"
    wrk_run auth-apikey /key/x sluice -H "x-api-key: $API_KEY"
  done
}

# limits_rounds: the open, locally limited and globally limited routes of sluice, alternating.
limits_rounds() {
  local round
  for round in $(seq "$ROUNDS"); do
    log "  round $round/$ROUNDS"
    wrk_run limits-none /r0/x sluice
    wrk_run limits-local /local/x sluice
    wrk_run limits-global /global/x sluice
  done
}

cache_rounds() {
  local round
  for round in $(seq "$ROUNDS"); do
    log "  round $round/$ROUNDS"
    wrk_run cache-proxied /r0/x sluice
    wrk_run cache-filters /filters/x sluice -H "Origin: https://app.example.com"
    wrk_run cache-hit /cached/x sluice
  done
}

# tls_run TARGET: keep-alive requests over HTTPS, then one request per connection (a full
# handshake each: requests/s is handshakes/s).
tls_port_of() { [ "$1" = nginx ] && echo "$NGINX_TLS_PORT" || echo "$SLUICE_TLS_PORT"; }
tls_run() {
  local target=$1 url out before after total cpu
  url="https://$TLS_HOST:$(tls_port_of "$target")/r0/x"
  before=$(cpu_ticks "$target")
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url")
  after=$(cpu_ticks "$target")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu=$(awk -v t=$((after - before)) -v hz="$clk" -v n="$total" 'BEGIN {printf "%.2f", t / hz / n * 100000}')
  echo "$(wrk_summary "$out") $cpu $(peak_rss_mib "$target")" >>"$work/res/tls-keepalive-$target"
  before=$(cpu_ticks "$target")
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Connection: close" "$url")
  after=$(cpu_ticks "$target")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu=$(awk -v t=$((after - before)) -v hz="$clk" -v n="$total" 'BEGIN {printf "%.2f", t / hz / n * 100000}')
  echo "$(wrk_summary "$out") $cpu $(peak_rss_mib "$target")" >>"$work/res/tls-handshake-$target"
}

# balancers_rounds: each balancer's route of sluice, and the one with every feature on,
# alternating; each round starts one variant later, so that no variant always runs first.
balancers_rounds() {
  local round v i
  local -a variants
  read -r -a variants <<<"${BALANCERS:-rr lr random hash full}"
  local n=${#variants[@]}
  for round in $(seq "$ROUNDS"); do
    log "  round $round/$ROUNDS"
    for ((i = 0; i < n; i++)); do
      v=${variants[$(((i + round - 1) % n))]}
      wrk_run "balancers-$v" "/$v/x" sluice
    done
  done
}

# failover_run: under load on /failover/, upstream 2 (master and worker) is killed with
# SIGKILL; records "kill-to-ejection ms, non-2xx, socket errors, requests/s" from the
# "endpoint ejected" line of sluice's log. Sluice is restarted each round (the ejection lasts
# 30 s) and the upstream brought back.
failover_run() {
  : >"$work/sluice.log"
  start_proxies 1
  wait_for "http://127.0.0.1:$SLUICE_PORT/failover/x"
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$SLUICE_PORT/failover/x" >"$work/wrk.out" &
  local wrk_pid=$!
  sleep "$(awk -v d="$DURATION" 'BEGIN {print d / 3}')"
  # Master and worker in one `kill`, master first: a master that outlived its worker would
  # start a new one. The clock is read just before (the ejection may be logged before `kill`
  # returns).
  local killed_ns workers
  workers=$(pgrep -P "$up_pid_2" || true)
  killed_ns=$(date +%s%N)
  # shellcheck disable=SC2086
  kill -KILL "$up_pid_2" $workers 2>/dev/null || true
  wait "$up_pid_2" 2>/dev/null || true
  wait "$wrk_pid" || true
  local ejected_ns=
  local line
  line=$(grep -m1 'endpoint ejected' "$work/sluice.log" || true)
  if [ -n "$line" ]; then
    ejected_ns=$(date -d "$(sed -E 's/.*"timestamp":"([^"]+)".*/\1/' <<<"$line")" +%s%N)
  fi
  local summary
  summary=$(wrk_summary "$(cat "$work/wrk.out")")
  awk -v k="$killed_ns" -v e="${ejected_ns:-0}" -v s="$summary" 'BEGIN {
    split(s, f, " ");
    printf "%s %s %s %s\n", (e > 0 ? sprintf("%.1f", (e - k) / 1e6) : "never"), f[4], f[5], f[1] }' \
    >>"$work/res/failover-sluice"
  taskset -c 1 "$NGINX" -p "$work/up2" -c "$work/up2/nginx.conf" -e "$work/up2/error.log" &
  up_pid_2=$!
  pids+=("$up_pid_2")
  wait_for "http://127.0.0.1:${UP_PORTS[2]}/"
}

alternate() { # FUNCTION ARGS... : runs nginx then sluice, ROUNDS times
  local round
  for round in $(seq "$ROUNDS"); do
    log "  round $round/$ROUNDS"
    "$@" nginx
    "$@" sluice
  done
}
warm() { taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$NGINX_PORT$1" >/dev/null; taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$SLUICE_PORT$1" >/dev/null; }

for scenario in $SCENARIOS; do
  log "== $scenario"
  case $scenario in
    plain) start_proxies 1; warm /r0/x; alternate wrk_run plain /r0/x ;;
    routes100) start_proxies 100; warm /r99/x; alternate wrk_run routes100 /r99/x ;;
    routes10k) start_proxies 10000; warm /r9999/x; alternate wrk_run routes10k /r9999/x ;;
    h2) start_proxies 1; alternate h2_run ;;
    rate)
      if [ -z "${OHA:-}" ]; then log "  skipped: no oha (set OHA=... or INSTALL_OHA=1)"; continue; fi
      start_proxies 1; warm /r0/x; alternate rate_run ;;
    swaps) start_proxies 100; warm /r0/x; alternate swaps_run ;;
    swaps10k) start_proxies 10000; warm /r0/x; alternate swaps10k_run ;;
    churn) start_proxies 1; warm /r0/x; alternate churn_run ;;
    auth)
      start_proxies 1
      [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $JWT_TOKEN" "http://127.0.0.1:$SLUICE_PORT/jwt/x")" = 200 ] ||
        { log "  the JWT route does not accept the bench token"; exit 1; }
      warm /r0/x; auth_rounds ;;
    limits)
      start_proxies 1
      for p in /local/x /global/x; do
        [ -n "$(curl -s -D - -o /dev/null "http://127.0.0.1:$SLUICE_PORT$p" | grep -i '^ratelimit-remaining')" ] ||
          { log "  $p is not rate limited (is Redis up?)"; exit 1; }
      done
      warm /r0/x; limits_rounds ;;
    balancers) start_proxies 1; warm /rr/x; balancers_rounds ;;
    ab)
      if [ -z "${SLUICE_B:-}" ]; then log "  skipped: set SLUICE_B to the other build"; continue; fi
      start_proxies 1; start_sluice_b; warm /r0/x
      for round in $(seq "$ROUNDS"); do
        log "  round $round/$ROUNDS"
        wrk_run ab-b /r0/x sluiceb
        wrk_run ab-a /r0/x sluice
      done ;;
    cache)
      start_proxies 1
      curl -s -o /dev/null "http://127.0.0.1:$SLUICE_PORT/cached/x"
      [ "$(curl -s -D - -o /dev/null "http://127.0.0.1:$SLUICE_PORT/cached/x" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache" {print $2}')" = HIT ] ||
        { log "  /cached/x is not answered from the cache"; exit 1; }
      warm /r0/x; cache_rounds ;;
    tls)
      start_proxies 1
      for t in nginx sluice; do
        curl -fsS -o /dev/null --cacert "$work/tls/cert.pem" "https://$TLS_HOST:$(tls_port_of $t)/r0/x" ||
          { log "  $t does not serve https://$TLS_HOST:$(tls_port_of $t)/ (is $TLS_HOST in /etc/hosts?)"; exit 1; }
      done
      alternate tls_run ;;
    failover)
      for round in $(seq "$ROUNDS"); do log "  round $round/$ROUNDS"; failover_run; done ;;
    *) log "unknown scenario $scenario"; exit 64 ;;
  esac
done
stop_proxies

# --- report -----------------------------------------------------------------------------------
# ratio_table TITLE COLUMN PREFIX BASELINE FORMAT VARIANTS...: sluice's variants of one scenario
# (results in PREFIX-VARIANT-sluice), each against BASELINE's throughput and CPU per request.
ratio_table() {
  local title=$1 column=$2 prefix=$3 base=$4 fmt=$5 v f
  shift 5
  [ -s "$work/res/$prefix-$base-sluice" ] || return 0
  printf '\n### %s\n\n' "$title"
  printf '| %s | requests/s | p50 ms | p99 ms | non-2xx | CPU s / 100k | vs %s: throughput | CPU |\n|---|---|---|---|---|---|---|---|\n' \
    "$column" "$base"
  for v in "$@"; do
    f=$prefix-$v-sluice
    awk -v v="$v" -v a="$(col "$f" 1)" -v b="$(col "$prefix-$base-sluice" 1)" -v c="$(col "$f" 6)" \
      -v d="$(col "$prefix-$base-sluice" 6)" -v p50="$(col "$f" 2)" -v p99="$(col "$f" 3)" -v bad="$(col "$f" 4)" \
      -v fmt="$fmt" 'BEGIN {printf "| %s | %s | %s | %s | %s | %s | " fmt "x | " fmt "x |\n", v, a, p50, p99, bad, c, a / b, c / d}'
  done
}
printf '\n%s; %s rounds x %ss per target, alternating; %s connections; medians\n' \
  "$(date -u +%Y-%m-%d) $(nproc) cores" "$ROUNDS" "$DURATION" "$CONNECTIONS"
printf 'access logs: %s\n' "${ACCESS_LOG:-off}"
for scenario in $SCENARIOS; do
  case $scenario in
    auth) ratio_table "auth (sluice: the same credential on every request)" route auth open %.2f open jwt apikey ;;
    limits) ratio_table "limits (sluice: one rate limit per client address, never reached)" route limits none %.2f none local global ;;
    balancers) ratio_table "balancers (sluice: three upstreams; full = LeastRequest + retries + passive health + circuit limits)" \
      balancer balancers rr %.3f ${BALANCERS:-rr lr random hash full} ;;
    cache) ratio_table "cache (sluice: a proxied request; the same with CORS and security headers; a cache hit)" \
      route cache proxied %.2f proxied filters hit ;;
  esac
  case $scenario in auth | limits | balancers | cache) continue ;; esac
  if [ "$scenario" = ab ] && [ -s "$work/res/ab-a-sluice" ]; then
    printf '\n### ab (plain route: this build against SLUICE_B=%s)\n\n' "$SLUICE_B"
    printf '| build | requests/s | p50 ms | p99 ms | non-2xx | CPU s / 100k |\n|---|---|---|---|---|---|\n'
    printf '| SLUICE_B | %s | %s | %s | %s | %s |\n' "$(col ab-b-sluiceb 1)" "$(col ab-b-sluiceb 2)" "$(col ab-b-sluiceb 3)" "$(col ab-b-sluiceb 4)" "$(col ab-b-sluiceb 6)"
    printf '| this | %s | %s | %s | %s | %s |\n' "$(col ab-a-sluice 1)" "$(col ab-a-sluice 2)" "$(col ab-a-sluice 3)" "$(col ab-a-sluice 4)" "$(col ab-a-sluice 6)"
    awk -v a="$(col ab-a-sluice 1)" -v b="$(col ab-b-sluiceb 1)" -v c="$(col ab-a-sluice 6)" -v d="$(col ab-b-sluiceb 6)" \
      'BEGIN {if (b > 0 && d > 0) printf "\nthis / SLUICE_B: throughput %.3fx, CPU per request %.3fx\n", a / b, c / d}'
    continue
  fi
  if [ "$scenario" = tls ] && [ -s "$work/res/tls-keepalive-nginx" ]; then
    for kind in keepalive handshake; do
      printf '\n### tls-%s (%s)\n\n' "$kind" \
        "$([ $kind = keepalive ] && echo 'keep-alive requests over HTTPS' || echo 'a new TLS connection per request: requests/s = full handshakes/s')"
      printf '| target | requests/s | p50 ms | p99 ms | non-2xx | socket errors | CPU s / 100k | peak RSS MiB |\n|---|---|---|---|---|---|---|---|\n'
      for t in nginx sluice; do
        f=tls-$kind-$t
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$(col $f 1)" "$(col $f 2)" "$(col $f 3)" \
          "$(col $f 4)" "$(col $f 5)" "$(col $f 6)" "$(col $f 7)"
      done
      awk -v a="$(col tls-$kind-sluice 1)" -v b="$(col tls-$kind-nginx 1)" -v c="$(col tls-$kind-sluice 6)" -v d="$(col tls-$kind-nginx 6)" \
        'BEGIN {if (b > 0 && d > 0) printf "\nsluice / nginx: throughput %.2fx, CPU per request %.2fx\n", a / b, c / d}'
    done
    continue
  fi
  if [ "$scenario" = failover ] && [ -s "$work/res/failover-sluice" ]; then
    printf '\n### failover (one of three upstreams killed with SIGKILL under load; retries on)\n\n'
    printf '| round | kill to ejection, ms | non-2xx | socket errors | requests/s |\n|---|---|---|---|---|\n'
    awk '{printf "| %d | %s | %s | %s | %s |\n", NR, $1, $2, $3, $4}' "$work/res/failover-sluice"
    printf '\nmedian kill to ejection: %s ms\n' "$(col failover-sluice 1)"
    continue
  fi
  [ -s "$work/res/$scenario-nginx" ] || continue
  case $scenario in
    rate)
      printf '\n### rate (fixed %s requests/s, oha, latency-corrected)\n\n' "$RATE"
      printf '| target | requests/s | p50 ms | p99 ms | p99.9 ms | non-2xx | errors | CPU s / 100k | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|\n'
      for t in nginx sluice; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$(col rate-$t 1)" "$(col rate-$t 2)" \
          "$(col rate-$t 3)" "$(col rate-$t 4)" "$(col rate-$t 5)" "$(col rate-$t 6)" "$(col rate-$t 7)" "$(col rate-$t 8)"
      done
      ;;
    swaps | swaps10k)
      printf '\n### %s (a route added 10 times a second under load, %s routes)\n\n' "$scenario" \
        "$([ "$scenario" = swaps ] && echo 100 || echo 10,000)"
      printf '| target | requests/s | p50 ms | p99 ms | non-2xx | socket errors | change to first 200, p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|---|---|\n'
      for t in nginx sluice; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$(col $scenario-$t 1)" "$(col $scenario-$t 2)" \
          "$(col $scenario-$t 3)" "$(col $scenario-$t 4)" "$(col $scenario-$t 5)" "$(col $scenario-$t 8)" \
          "$(col $scenario-$t 10)" "$(col $scenario-$t 9)"
      done
      ;;
    churn)
      printf '\n### churn (an upstream taken out, stopped, restarted and put back under load)\n\n'
      printf '| target | requests/s | p50 ms | p99 ms | non-2xx | socket errors |\n|---|---|---|---|---|---|\n'
      for t in nginx sluice; do
        printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$(col churn-$t 1)" "$(col churn-$t 2)" \
          "$(col churn-$t 3)" "$(col churn-$t 4)" "$(col churn-$t 5)"
      done
      ;;
    *)
      printf '\n### %s\n\n' "$scenario"
      printf '| target | requests/s | p50 ms | p99 ms | non-2xx / failed | socket errors | CPU s / 100k | peak RSS MiB |\n|---|---|---|---|---|---|---|---|\n'
      for t in nginx sluice; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$(col "$scenario-$t" 1)" "$(col "$scenario-$t" 2)" \
          "$(col "$scenario-$t" 3)" "$(col "$scenario-$t" 4)" "$(col "$scenario-$t" 5)" "$(col "$scenario-$t" 6)" "$(col "$scenario-$t" 7)"
      done
      awk -v a="$(col "$scenario-sluice" 1)" -v b="$(col "$scenario-nginx" 1)" -v c="$(col "$scenario-sluice" 6)" -v d="$(col "$scenario-nginx" 6)" \
        'BEGIN {if (b > 0 && d > 0) printf "\nsluice / nginx: throughput %.2fx, CPU per request %.2fx\n", a / b, c / d}'
      ;;
  esac
done
