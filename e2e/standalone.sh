#!/usr/bin/env bash
# End-to-end scenarios against standalone mode (`sluice run --manifests DIR`), as a user sees
# them: curl against the gateway, the quick-start backends behind it, manifests edited on disk.
#
#   e2e/standalone.sh                               # uses target/debug/sluice
#   SLUICE_BIN=target/release/sluice e2e/standalone.sh
#
# Ports: free ones, picked at start (so two runs never collide); E2E_PROXY_PORT, E2E_ADMIN_PORT,
# E2E_ECHO_A_PORT, E2E_ECHO_B_PORT, E2E_USERS_PORT, E2E_REDIS_PORT, E2E_TLS_PORT fix them. The whole run is bounded by
# E2E_TIMEOUT seconds (120). Prints `ok - name` / `not ok - name` per check and finally
# `N passed, M failed`; exits 1 if any check failed. Needs bash 4+, curl, python3, openssl and GNU date.
set -uo pipefail

start_dir="$PWD"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1

if [[ -n "${KUBECONFIG:-}" ]]; then
  echo "# KUBECONFIG is set: cluster scenarios live in e2e/cluster.sh; this script tests standalone mode"
fi

bin="${SLUICE_BIN:-target/debug/sluice}"
if [[ -n "${SLUICE_BIN:-}" && "$bin" != /* ]]; then
  bin="$start_dir/$bin"  # relative to where the caller stands
fi
deadline_s="${E2E_TIMEOUT:-120}"

for tool in curl python3 openssl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "e2e: $tool is required" >&2
    exit 1
  fi
done
if [[ ! -x "$bin" ]]; then
  echo "e2e: sluice binary $bin not found; build it (cargo build -p sluice-controller) or set SLUICE_BIN" >&2
  exit 1
fi

# Ports: free ones the kernel hands out (so that two runs, or anything else listening on the
# machine, never collide), unless E2E_*_PORT names them.
read -r -a free <<<"$(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(11)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)"
proxy_port="${E2E_PROXY_PORT:-${free[0]}}"
admin_port="${E2E_ADMIN_PORT:-${free[1]}}"
echo_a_port="${E2E_ECHO_A_PORT:-${free[2]}}"
echo_b_port="${E2E_ECHO_B_PORT:-${free[3]}}"
users_port="${E2E_USERS_PORT:-${free[4]}}"
redis_port="${E2E_REDIS_PORT:-${free[5]}}"
global_proxy=("${free[6]}" "${free[7]}")   # the two gateways sharing Redis
global_admin=("${free[8]}" "${free[9]}")
tls_port="${E2E_TLS_PORT:-${free[10]}}"
proxy="http://127.0.0.1:$proxy_port"
admin="http://127.0.0.1:$admin_port"

work="$(mktemp -d "${TMPDIR:-/tmp}/sluice-e2e.XXXXXX")"
manifests="$work/manifests"
log="$work/sluice.log"
sluice_pid=""
watchdog_pid=""
declare -A backend_pid=()
# shellcheck source=e2e/tap.sh
source "$(dirname "${BASH_SOURCE[0]}")/tap.sh"

cleanup() {
  trap - EXIT INT TERM
  [[ -n "$watchdog_pid" ]] && kill "$watchdog_pid" 2>/dev/null
  if [[ -n "$sluice_pid" ]] && kill -0 "$sluice_pid" 2>/dev/null; then
    kill -KILL "$sluice_pid" 2>/dev/null
  fi
  for pid in "${backend_pid[@]}"; do
    kill "$pid" 2>/dev/null
  done
  wait 2>/dev/null
  if ((failed > 0)) && [[ -f "$log" ]]; then
    echo "# last lines of the sluice log:"
    tail -n 30 "$log" | sed 's/\x1b\[[0-9;]*m//g; s/^/#   /'
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Helpers (ok, not_ok and check come from tap.sh)

# fetch URL [curl args...]: sets $code, $body (file) and $hdrs (file). Never waits over 10 s.
body="$work/body"
hdrs="$work/headers"
fetch() {
  local url="$1"
  shift
  code="$(curl -sS --max-time 10 -o "$body" -D "$hdrs" -w '%{http_code}' "$@" "$url" 2>"$work/curl.err")" || true
  [[ -n "$code" ]] || code="000"
}
# header NAME: the value of response header NAME from the last fetch.
header() {
  grep -i "^$1:" "$hdrs" | head -n 1 | cut -d: -f2- | sed 's/^ *//' | tr -d '\r'
}
# json KEY.PATH [FILE]: a value from the JSON in the last response body (empty when absent).
json() {
  python3 - "$1" "${2:-$body}" <<'EOF'
import json, sys
try:
    value = json.load(open(sys.argv[2]))
    for key in sys.argv[1].split("."):
        value = value[key]
    print(value)
except Exception:
    pass
EOF
}
# wait_until SECONDS COMMAND...: polls every 0.1 s; fails after SECONDS.
wait_until() {
  local limit=$(($1 * 10))
  shift
  for ((i = 0; i < limit; i++)); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# backends_seen N PATH: GETs PATH N times and prints the sorted set of backend names.
backends_seen() {
  local n="$1" path="$2" names=()
  for ((k = 0; k < n; k++)); do
    fetch "$proxy$path"
    names+=("$(json backend)")
  done
  printf '%s\n' "${names[@]}" | sort -u | tr '\n' ' ' | sed 's/ $//'
}

# ---------------------------------------------------------------------------------------------
# Setup: the quick-start manifests, copied and moved to our ports; the backends; sluice.

for port in "$proxy_port" "$admin_port" "$echo_a_port" "$echo_b_port" "$users_port" "$tls_port"; do
  if port_open "$port"; then
    echo "e2e: port $port is already in use; set the E2E_*_PORT variables" >&2
    exit 1
  fi
done

mkdir -p "$manifests"
cp examples/quickstart/*.yaml "$manifests/"
# Move the backends to our ports, in one pass (so that any port mapping works).
python3 - "$echo_a_port" "$echo_b_port" "$users_port" "$manifests"/*.yaml <<'EOF'
import re, sys
ports = {"9001": sys.argv[1], "9002": sys.argv[2], "9003": sys.argv[3]}
for path in sys.argv[4:]:
    text = open(path).read()
    open(path, "w").write(re.sub(r"\b(9001|9002|9003)\b", lambda m: ports[m.group(1)], text))
EOF

for spec in "echo-a:$echo_a_port" "echo-b:$echo_b_port" "users:$users_port"; do
  name="${spec%%:*}"
  port="${spec#*:}"
  python3 examples/quickstart/backend.py --port "$port" --name "$name" 2>>"$work/backends.log" &
  backend_pid[$name]=$!
done
for port in "$echo_a_port" "$echo_b_port" "$users_port"; do
  if ! wait_until 5 port_open "$port"; then
    echo "e2e: backend on port $port did not start" >&2
    cat "$work/backends.log" >&2
    exit 1
  fi
done

"$bin" run --manifests "$manifests" --listen "127.0.0.1:$proxy_port" \
  --admin-listen "127.0.0.1:$admin_port" --listen-tls "127.0.0.1:$tls_port" \
  --https-redirect-port "$tls_port" --log-format plain >"$log" 2>&1 &
sluice_pid=$!

# Bound the whole run: past the limit, stop what we started so that every remaining check
# fails fast (every single wait below has its own, shorter, limit too).
(
  trap 'kill "$nap" 2>/dev/null; exit 0' TERM
  sleep "$deadline_s" &
  nap=$!
  wait "$nap"
  echo "# e2e: over the ${deadline_s}s limit; stopping sluice and the backends" >&2
  touch "$work/timed-out"
  kill -KILL "$sluice_pid" "${backend_pid[@]}" 2>/dev/null
) &
watchdog_pid=$!

# ---------------------------------------------------------------------------------------------
# Scenarios

readyz() { [[ "$(curl -s --max-time 1 -o /dev/null -w '%{http_code}' "$admin/readyz")" == 200 ]]; }
check "readyz answers 200 once the first snapshot is live" wait_until 10 readyz \
  -- "$admin/readyz never answered 200 within 10 s"

seen="$(backends_seen 20 /echo/hi)"
check "/echo is balanced over both echo backends" test "$seen" == "echo-a echo-b" \
  -- "backends seen over 20 requests: '$seen'"

fetch "$proxy/api/users/42" -H 'Host: api.example.local'
check "host route answers 200" test "$code" == 200 -- "got $code: $(head -c 300 "$body")"
check "ReplacePrefixMatch: backend sees /users/42" test "$(json path)" == /users/42 \
  -- "backend saw path '$(json path)'"
check "requestHeaders.set: backend sees x-gateway: sluice" test "$(json headers.x-gateway)" == sluice \
  -- "x-gateway at the backend: '$(json headers.x-gateway)'"
check "responseHeaders.add: client sees x-served-by: sluice" test "$(header x-served-by)" == sluice \
  -- "x-served-by: '$(header x-served-by)'"
check "backend sees X-Forwarded-Host: api.example.local" test "$(json headers.x-forwarded-host)" == api.example.local \
  -- "x-forwarded-host at the backend: '$(json headers.x-forwarded-host)'"
check "backend sees X-Forwarded-For: 127.0.0.1" test "$(json headers.x-forwarded-for)" == 127.0.0.1 \
  -- "x-forwarded-for at the backend: '$(json headers.x-forwarded-for)'"
check "backend sees X-Forwarded-Proto: http" test "$(json headers.x-forwarded-proto)" == http \
  -- "x-forwarded-proto at the backend: '$(json headers.x-forwarded-proto)'"
fetch "$proxy/api/users/42"
check "host route does not serve other hosts (404)" test "$code" == 404 -- "got $code without Host api.example.local"

fetch "$proxy/nope"
rid="$(header x-request-id)"
check "unknown path: 404 with a JSON error body" \
  test "$code:$(json status):$(header content-type)" == "404:404:application/json" \
  -- "got $code, body: $(head -c 300 "$body")"
check "unknown path: requestId in the body equals the X-Request-Id header" \
  test -n "$rid" -a "$(json requestId)" == "$rid" \
  -- "header '$rid', body '$(json requestId)'"

fetch "$proxy/echo/id" -H 'X-Request-Id: e2e-trace.42:abc_1'
check "a client X-Request-Id is kept end to end" \
  test "$(header x-request-id)|$(json headers.x-request-id)" == "e2e-trace.42:abc_1|e2e-trace.42:abc_1" \
  -- "returned '$(header x-request-id)', backend saw '$(json headers.x-request-id)'"
fetch "$proxy/echo/id" -H 'X-Request-Id: not sane <script>'
check "an insane client X-Request-Id is replaced" \
  test -n "$(header x-request-id)" -a "$(header x-request-id)" != "not sane <script>" \
  -a "$(header x-request-id)" == "$(json headers.x-request-id)" \
  -- "returned '$(header x-request-id)', backend saw '$(json headers.x-request-id)'"

t0=$(date +%s%N)
fetch "$proxy/slow?ms=3000"
elapsed_ms=$((($(date +%s%N) - t0) / 1000000))
check "/slow?ms=3000 with backendRequest 1s: 504 JSON in about 1 s" \
  test "$code:$(json status)" == "504:504" -a "$elapsed_ms" -lt 2500 \
  -- "got $code after ${elapsed_ms} ms, body: $(head -c 300 "$body")"

# Hot reload: a new route file in the watched directory serves within a few seconds.
cat >"$manifests/fresh.yaml" <<'EOF'
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: fresh, namespace: default}
spec:
  rules:
  - matches: [{path: {type: PathPrefix, value: /fresh}}]
    filters:
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /from-fresh}}
    backendRefs: [{name: echo, port: 80}]
EOF
fresh_serves() { fetch "$proxy/fresh/x"; [[ "$code" == 200 && "$(json path)" == /from-fresh ]]; }
check "hot reload: a new route file serves within 5 s" wait_until 5 fresh_serves \
  -- "last answer $code: $(head -c 300 "$body")"
check "the reload log names the rule it added" grep -q "added_rules=default/fresh:0" "$log" \
  -- "$(grep 'snapshot installed' "$log" | tail -n 2)"

# An Ingress (as a user migrating from ingress-nginx would try) is not served, and said so.
printf 'apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: legacy, namespace: default}\nspec: {}\n' \
  >"$manifests/legacy-ingress.yaml"
ingress_warned() { grep -q "Ingress/default/legacy: Ingress is not read by Sluice" "$log"; }
check "an Ingress in the directory is reported in the log, not silently skipped" wait_until 5 ingress_warned \
  -- "$(tail -n 3 "$log")"
rm -f "$manifests/legacy-ingress.yaml"

# Broken YAML: a new broken file, and an existing file broken; what was serving keeps serving.
printf 'apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: broken\n  spec: [oops\n' \
  >"$manifests/broken.yaml"
cp "$manifests/fresh.yaml" "$work/fresh.yaml.good"
printf 'apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: fresh, namespace: default}\nspec:\n  rules: [ {{{\n' \
  >"$manifests/fresh.yaml"
logged_both() {
  grep -q "broken.yaml" "$log" && grep -q "fresh.yaml.*keeping what this file held before" "$log"
}
check "broken YAML files are reported in the log" wait_until 5 logged_both \
  -- "$(grep -E 'broken.yaml|fresh.yaml' "$log" | sed 's/\x1b\[[0-9;]*m//g' | tail -n 2)"
fetch "$proxy/echo/still"
check "broken YAML: existing routes still serve" test "$code:$(json path)" == "200:/echo/still" \
  -- "got $code: $(head -c 300 "$body")"
fetch "$proxy/fresh/x"
check "broken YAML: a file that broke keeps serving what it held before" \
  test "$code:$(json path)" == "200:/from-fresh" -- "got $code: $(head -c 300 "$body")"
rm -f "$manifests/broken.yaml"
cp "$work/fresh.yaml.good" "$manifests/fresh.yaml"

# Authentication (examples/quickstart/auth.yaml): JWTs minted with the example key, API keys.
orders=(-H 'Host: orders.example.local')
fetch "$proxy/orders/health" "${orders[@]}"
check "an anonymous rule under an authenticated route answers without credentials" \
  test "$code" == 200 -- "got $code: $(head -c 300 "$body")"
fetch "$proxy/orders/1" "${orders[@]}"
check "no token: 401 with WWW-Authenticate and the JSON error" \
  test "$code:$(json status):$(header www-authenticate)" == '401:401:Bearer realm="sluice"' \
  -- "got $code, www-authenticate '$(header www-authenticate)', body: $(head -c 300 "$body")"
token="$(examples/quickstart/mint-token.sh alice)"
fetch "$proxy/orders/1" "${orders[@]}" -H "Authorization: Bearer $token" -H 'X-User-Id: mallory'
check "a minted token: 200, the backend sees the verified X-User-Id, not the client's" \
  test "$code:$(json headers.x-user-id):$(json headers.x-auth-provider)" == "200:alice:example" \
  -- "got $code, backend saw x-user-id '$(json headers.x-user-id)': $(head -c 300 "$body")"
check "the token is not forwarded (forwardCredentials: false)" \
  test -z "$(json headers.authorization)" -- "backend saw authorization '$(json headers.authorization)'"
fetch "$proxy/orders/admin" "${orders[@]}" -H "Authorization: Bearer $token"
check "a token without the admin role: 403" test "$code:$(json status)" == 403:403 \
  -- "got $code: $(head -c 300 "$body")"
admin_token="$(examples/quickstart/mint-token.sh bob admin,ops)"
fetch "$proxy/orders/admin" "${orders[@]}" -H "Authorization: Bearer $admin_token"
check "a token with the admin role: 200 and X-User-Roles" \
  test "$code:$(json headers.x-user-roles)" == "200:admin,ops" -- "got $code: $(head -c 300 "$body")"
expired="$(examples/quickstart/mint-token.sh alice "" -120)"
fetch "$proxy/orders/1" "${orders[@]}" -H "Authorization: Bearer $expired"
check "an expired token: 401 invalid_token" \
  test "$code:$(header www-authenticate)" == '401:Bearer realm="sluice", error="invalid_token"' \
  -- "got $code, www-authenticate '$(header www-authenticate)'"
fetch "$proxy/orders/x/%2e%2e/admin" --path-as-is "${orders[@]}" -H "Authorization: Bearer $token"
check "a dot-dot spelling of /orders/admin still needs the admin role (403)" test "$code" == 403 \
  -- "got $code: $(head -c 300 "$body")"
fetch "$proxy/partner" "${orders[@]}" -H 'x-api-key: acme-demo-key-0123456789'
check "an API key: 200, the backend sees X-Consumer" \
  test "$code:$(json headers.x-consumer)" == "200:acme" -- "got $code: $(head -c 300 "$body")"
sed -i 's/acme: acme-demo-key-0123456789/acme: acme-rotated-key-9876543210/' "$manifests/auth.yaml"
rotated() {
  fetch "$proxy/partner" "${orders[@]}" -H 'x-api-key: acme-rotated-key-9876543210'
  [[ "$code" == 200 ]]
}
check "an API key rotated by editing its Secret works within 5 s" wait_until 5 rotated \
  -- "last answer $code: $(head -c 300 "$body")"
fetch "$proxy/partner" "${orders[@]}" -H 'x-api-key: acme-demo-key-0123456789'
check "the old API key is refused after the rotation (401)" test "$code" == 401 -- "got $code"
check "credentials never reach the log" \
  bash -c "! grep -qF -e '$token' -e 'acme-demo-key' -e 'acme-rotated-key' '$log'" \
  -- "a credential was logged"

# The edge (examples/quickstart/edge.yaml): HTTPS by SNI with the demo certificate, the
# redirect from plain HTTP, the response cache, CORS and security headers, trace context.
shop=(--resolve "shop.example.local:$tls_port:127.0.0.1" --cacert examples/quickstart/keys/shop-demo.crt)
shop_url="https://shop.example.local:$tls_port"
h2="$(curl -sS --max-time 10 -o /dev/null -w '%{http_code} %{http_version}' "${shop[@]}" --http2 "$shop_url/catalog/h2" 2>&1)"
check "HTTPS: curl trusts the demo certificate for shop.example.local (SNI) and gets 200 over h2" \
  test "$h2" == "200 2" -- "got '$h2'"
fetch "$shop_url/catalog/items?page=1" "${shop[@]}"
check "HTTPS: the backend sees X-Forwarded-Proto: https" test "$(json headers.x-forwarded-proto)" == https \
  -- "$(head -c 300 "$body")"
check "HTTPS: security headers, HSTS included" \
  test "$(header x-content-type-options):$(header x-frame-options):$(header strict-transport-security)" == \
  "nosniff:DENY:max-age=31536000; includeSubDomains" -- "$(tr -d '\r' <"$hdrs")"
check "cache: the first GET is a MISS" test "$(header x-cache)" == MISS -- "$(tr -d '\r' <"$hdrs")"
first_body="$(cat "$body")"
fetch "$shop_url/catalog/items?page=1" "${shop[@]}"
check "cache: the second GET is a HIT with Age, the same body" \
  test "$(header x-cache):$(header age | grep -c '^[0-9]')" == "HIT:1" -- "$(tr -d '\r' <"$hdrs")"
check "cache: the hit's body is the stored one" test "$(cat "$body")" == "$first_body"
fetch "$proxy/catalog/items?x=1" -H 'Host: shop.example.local'
check "httpsRedirect: plain HTTP gets 301 to https, path and query kept" \
  test "$code $(header location)" == "301 https://shop.example.local:$tls_port/catalog/items?x=1" \
  -- "got $code $(header location)"
fetch "$shop_url/catalog/items" "${shop[@]}" -X OPTIONS -H 'Origin: https://app.example.local' \
  -H 'Access-Control-Request-Method: POST' -H 'Access-Control-Request-Headers: content-type'
check "CORS: the gateway answers an allowed preflight (204 with the allow headers)" \
  test "$code:$(header access-control-allow-origin):$(header access-control-allow-credentials)" == \
  "204:https://app.example.local:true" -- "got $code: $(tr -d '\r' <"$hdrs")"
check "CORS: the preflight never reached the backend (no x-backend header)" test -z "$(header x-backend)"
fetch "$shop_url/catalog/items" "${shop[@]}" -X OPTIONS -H 'Origin: https://evil.example' \
  -H 'Access-Control-Request-Method: GET'
check "CORS: a preflight from another origin is refused (403)" test "$code" == 403 -- "got $code"
fetch "$proxy/echo/trace" -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
check "tracing: the backend gets the client's trace id with the gateway's span as parent" \
  bash -c "[[ '$(json headers.traceparent)' == 00-4bf92f3577b34da6a3ce929d0e0e4736-* && '$(json headers.traceparent)' != *00f067aa0ba902b7* ]]" \
  -- "traceparent: $(json headers.traceparent)"
traced() { grep -q '"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"' "$log"; }
check "tracing: the access log line carries the trace id" wait_until 3 traced
cached_line() { grep -q '"cache":"HIT".*"tls":"TLSv1.3"' "$log"; }
check "access log: cache status and TLS version" wait_until 3 cached_line \
  -- "$(grep -m1 catalog "$log")"

# Traffic management (examples/quickstart/echo.yaml): echo-a dies with SIGKILL; with retries
# on, no GET to /echo fails, and echo-a is ejected after three failures in a row.
kill -KILL "${backend_pid[echo-a]}" 2>/dev/null
wait "${backend_pid[echo-a]}" 2>/dev/null
codes="" attempts=""
for _ in $(seq 20); do
  fetch "$proxy/echo/hi"
  codes+="$code "
  attempts+="$(header x-sluice-attempts) "
done
check "echo-a killed: 20 GETs to /echo all answer 200, retried to echo-b" \
  test "$(tr ' ' '\n' <<<"$codes" | grep -c '^200$')" == 20 -- "got $codes"
check "a retried response says X-Sluice-Attempts: 2" grep -qw 2 <<<"$attempts" -- "attempts: $attempts"
fetch "$admin/debug/snapshot"
echo_a_health="$(python3 - "$body" "127.0.0.1:$echo_a_port" <<'EOF'
import json, sys
snapshot = json.load(open(sys.argv[1]))
for rule in snapshot["rules"]:
    for backend in rule["backends"]:
        for e in backend["endpoints"]:
            if e["addr"] == sys.argv[2]:
                print(e["health"])
                sys.exit()
EOF
)"
check "/debug/snapshot shows echo-a ejected" test "$echo_a_health" == ejected -- "health: '$echo_a_health'"
fetch "$admin/metrics"
check "/metrics: sluice_endpoint_healthy of echo-a is 0" \
  grep -qF "sluice_endpoint_healthy{endpoint=\"127.0.0.1:$echo_a_port\"} 0" "$body" \
  -- "$(grep sluice_endpoint_healthy "$body")"
python3 examples/quickstart/backend.py --port "$echo_a_port" --name echo-a 2>>"$work/backends.log" &
backend_pid[echo-a]=$!
wait_until 5 port_open "$echo_a_port"

# Readiness: echo-b's endpoint turns ready: false; it stops receiving requests.
python3 - "$manifests/echo.yaml" <<'EOF'
import sys
path = sys.argv[1]
docs = open(path).read().split("\n---\n")
docs = [d.replace("ready: true", "ready: false") if "name: echo-b" in d else d for d in docs]
open(path, "w").write("\n---\n".join(docs))
EOF
only_echo_a() { [[ "$(backends_seen 4 /echo/hi)" == echo-a ]]; }
wait_until 5 only_echo_a
seen="$(backends_seen 10 /echo/hi)"
check "an endpoint with ready: false gets no requests" test "$seen" == echo-a \
  -- "backends seen over 10 requests after echo-b turned not ready: '$seen'"

# A backend that dies: 502 with the JSON error.
kill "${backend_pid[users]}" 2>/dev/null
wait "${backend_pid[users]}" 2>/dev/null
unset 'backend_pid[users]'
fetch "$proxy/api/users/42" -H 'Host: api.example.local'
check "users backend down: 502 with a JSON error body" \
  test "$code:$(json status):$(json requestId)" == "502:502:$(header x-request-id)" \
  -- "got $code, body: $(head -c 300 "$body")"

fetch "$admin/metrics"
metrics="$body"
check "/metrics has sluice_http_requests_total by route, rule and status class" \
  grep -qE '^sluice_http_requests_total\{.*route="default/echo".*\} [0-9]+' "$metrics" \
  -- "$(grep '^sluice_http_requests_total' "$metrics" | head -n 3)"
check "/metrics counts 2xx and 5xx classes" \
  bash -c "grep -q '^sluice_http_requests_total{.*code=\"2xx\"' '$metrics' && grep -q '^sluice_http_requests_total{.*code=\"5xx\"' '$metrics'" \
  -- "$(grep '^sluice_http_requests_total' "$metrics" | head -n 5)"
generation="$(awk '/^sluice_snapshot_generation /{print $2}' "$metrics")"
check "/metrics has sluice_snapshot_generation, advanced by the reloads" \
  test "${generation:-0}" -ge 3 -- "sluice_snapshot_generation: '${generation}'"

# Rate limiting (examples/quickstart/limits.yaml): 5 per 10 s per client, then 429.
codes=""
for _ in 1 2 3 4 5 6 7; do
  fetch "$proxy/limited/x"
  codes+="$code "
done
check "a local rate limit admits 5 per client, then answers 429" test "$codes" == "200 200 200 200 200 429 429 " \
  -- "got $codes"
check "the 429 carries Retry-After and the RateLimit headers" \
  test "$(header retry-after | tr -d '\r'):$(header ratelimit-limit | tr -d '\r'):$(header ratelimit-remaining | tr -d '\r'):$(header ratelimit-policy | tr -d '\r'):$(json status)" == "2:5:0:5;w=10:429" \
  -- "headers: $(tr -d '\r' <"$hdrs" | grep -i -e ratelimit -e retry-after | tr '\n' ' ') body: $(head -c 200 "$body")"

# `sluice check` on a broken manifest: exit 1, naming the file and the field.
mkdir -p "$work/bad"
cat >"$work/bad/route.yaml" <<'EOF'
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: bad, namespace: default}
spec:
  rules:
  - matches: [{path: {type: PathPrefix, value: api}}]
    backendRefs: [{name: echo, port: 80}]
EOF
cp "$manifests/echo.yaml" "$work/bad/"
check_out="$("$bin" check "$work/bad" 2>&1)"
check_rc=$?
check "sluice check on a broken manifest exits 1" test "$check_rc" == 1 -- "exit $check_rc: $check_out"
check "sluice check prints the file, object and field" \
  grep -qF "$work/bad/route.yaml: GatewayRoute/default/bad: spec.rules[0].matches[0].path.value:" <<<"$check_out" \
  -- "$check_out"

# SIGTERM: sluice lets the request in flight finish, then exits 0.
curl -s --max-time 10 -o /dev/null -w '%{http_code}' "$proxy/echo/slow?ms=1500" >"$work/inflight" &
inflight_pid=$!
sleep 0.5
kill -TERM "$sluice_pid" 2>/dev/null
stopped() { ! kill -0 "$sluice_pid" 2>/dev/null; }
if wait_until 5 stopped; then
  wait "$sluice_pid"
  rc=$?
  sluice_pid=""
  check "SIGTERM: sluice exits 0 within 5 s" test "$rc" == 0 -- "exit status $rc"
else
  not_ok "SIGTERM: sluice exits 0 within 5 s" "still running 5 s after SIGTERM"
fi
wait "$inflight_pid"
check "SIGTERM: the request in flight still completes (200)" test "$(cat "$work/inflight")" == 200 \
  -- "in-flight request got '$(cat "$work/inflight")'"

# Two sluice processes sharing one real Redis admit a Global limit once in total.
if command -v redis-server >/dev/null 2>&1; then
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
  backend_pid[redis]=$!
  mkdir -p "$work/global"
  cp "$manifests/echo.yaml" "$work/global/"
  sed -e 's/^  name: per-client$/  name: shared/' -e 's/requests: 5/requests: 4/' -e 's/period: 10s/period: 1m/' \
    -e 's/key: {type: ClientIP}/key: {type: Route}/' -e 's/^  limits:$/  scope: Global\n  failureMode: Closed\n  limits:/' \
    "$manifests/limits.yaml" >"$work/global/limits.yaml"
  wait_until 5 port_open "$redis_port"
  for i in 1 2; do
    "$bin" run --manifests "$work/global" --listen "127.0.0.1:${global_proxy[i - 1]}" \
      --admin-listen "127.0.0.1:${global_admin[i - 1]}" --redis "redis://127.0.0.1:$redis_port/0" \
      --access-log off --log-format plain >"$work/global-$i.log" 2>&1 &
    backend_pid[global$i]=$!
  done
  both_ready() { port_open "${global_proxy[0]}" && port_open "${global_proxy[1]}" &&
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${global_admin[0]}/readyz")" == 200 ]] &&
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${global_admin[1]}/readyz")" == 200 ]]; }
  wait_until 10 both_ready
  codes=""
  for i in 1 2 1 2 1 2 1 2; do
    fetch "http://127.0.0.1:${global_proxy[i - 1]}/limited/x"
    codes+="$code "
  done
  check "two sluice processes sharing Redis admit a Global limit of 4 once in total" \
    test "$(tr ' ' '\n' <<<"$codes" | grep -c '^200$'):$(tr ' ' '\n' <<<"$codes" | grep -c '^429$')" == "4:4" \
    -- "got $codes; $(tail -n 3 "$work/global-1.log")"
  kill "${backend_pid[redis]}" 2>/dev/null
  wait "${backend_pid[redis]}" 2>/dev/null
  fetch "http://127.0.0.1:${global_proxy[0]}/limited/x"
  check "Redis gone: failureMode Closed answers 503" test "$code:$(json status)" == "503:503" \
    -- "got $code: $(head -c 200 "$body")"
else
  not_ok "two sluice processes sharing Redis" "redis-server is not installed (scripts/test.sh installs it)"
fi

if [[ -e "$work/timed-out" ]]; then
  not_ok "the run completes within ${deadline_s} s" "set E2E_TIMEOUT to allow more"
fi
echo "$passed passed, $failed failed"
((failed == 0))
