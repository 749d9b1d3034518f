# shellcheck shell=bash
# Set-up shared by the bench scripts (source it from the repository root): Debian packages for
# the tools they need, a work directory and the processes started in it (stopped on exit), and
# the common part of an nginx configuration.

# install_missing COMMAND:PACKAGE...: apt-get installs the packages whose command is missing.
install_missing() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null && continue
    # Debian puts nginx in /usr/sbin, which is not on every PATH.
    [ "${pair%%:*}" = nginx ] && [ -x /usr/sbin/nginx ] && continue
    missing+=("${pair#*:}")
  done
  if ((${#missing[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
}

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

log() { printf '%s\n' "$*" >&2; }
# wait_for URL [SECONDS]: until URL answers 2xx (default 10 s).
wait_for() {
  local tries=$((${2:-10} * 20))
  for _ in $(seq "$tries"); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.05; done
  log "not up: $1"
  return 1
}

# nginx_preamble DIR: one worker, files under DIR, no access log, long keep-alive; the caller
# writes the rest of the `http` block and closes it.
nginx_preamble() {
  cat <<CONF
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
CONF
}

# ok_upstream PORT: one nginx on core 1 answering "ok" on PORT (its files under $work/nginx),
# started and waited for.
ok_upstream() {
  mkdir -p "$work/nginx"
  {
    nginx_preamble "$work/nginx"
    printf '  server { listen 127.0.0.1:%d reuseport; location / { return 200 "ok\\n"; } }\n}\n' "$1"
  } >"$work/nginx/nginx.conf"
  taskset -c 1 "$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
  pids+=($!)
  wait_for "http://127.0.0.1:$1/"
}

# upstream_manifests PORT: Service `up` and its one-endpoint EndpointSlice on 127.0.0.1:PORT.
upstream_manifests() {
  printf 'apiVersion: v1\nkind: Service\nmetadata: {name: up, namespace: default}\nspec:\n  ports: [{name: http, port: 80}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: up-0, namespace: default, labels: {kubernetes.io/service-name: up}}\naddressType: IPv4\nports: [{name: http, port: %d}]\nendpoints: [{addresses: ["127.0.0.1"], conditions: {ready: true}}]\n' "$1"
}

# route_manifests N: N GatewayRoutes, prefix /rI/ to Service `up`, one in ten with a hostname
# (as in a cluster where some teams have their own).
route_manifests() {
  awk -v n="$1" 'BEGIN {
    for (r = 0; r < n; r++) {
      host = (r % 10 == 0) ? sprintf("  hostnames: [r%d.example.com]\n", r) : ""
      printf "---\napiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: r%d, namespace: default}\nspec:\n%s  rules:\n  - name: main\n    matches: [{path: {type: PathPrefix, value: /r%d/}}]\n    backendRefs: [{name: up, port: 80}]\n", r, host, r
    }
  }'
}
