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
