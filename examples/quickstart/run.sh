#!/usr/bin/env bash
# Sluice quick start: builds sluice, starts three small local backends and serves the
# manifests in this folder on localhost:8080 (admin on 127.0.0.1:9901). Ctrl-C stops it all.
#
#   ./examples/quickstart/run.sh
#   SLUICE_BIN=target/debug/sluice ./examples/quickstart/run.sh   # use a binary, skip the build
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
here="examples/quickstart"

if [[ -n "${SLUICE_BIN:-}" ]]; then
  bin="$SLUICE_BIN"
else
  if ! command -v cargo >/dev/null 2>&1; then
    echo "run.sh: cargo not found; install Rust from https://rustup.rs (or set SLUICE_BIN)" >&2
    exit 1
  fi
  echo "==> building sluice (cargo build --release -p sluice-controller)"
  cargo build --release -p sluice-controller
  bin="target/release/sluice"
fi
if [[ ! -x "$bin" ]]; then
  echo "run.sh: $bin is not an executable" >&2
  exit 1
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "run.sh: python3 is needed for the example backends" >&2
  exit 1
fi

pids=()
sluice_pid=""
cleanup() {
  trap - EXIT INT TERM
  if [[ -n "$sluice_pid" ]] && kill -0 "$sluice_pid" 2>/dev/null; then
    kill -TERM "$sluice_pid" 2>/dev/null || true
    wait "$sluice_pid" 2>/dev/null || true
  fi
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

# The backends the manifests point at (see the EndpointSlices in echo.yaml and users.yaml).
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 9001 9002 9003; do
  if port_open "$port"; then
    echo "run.sh: port $port is already in use (another quick start running?)" >&2
    exit 1
  fi
done
for spec in 9001:echo-a 9002:echo-b 9003:users; do
  python3 "$here/backend.py" --port "${spec%%:*}" --name "${spec#*:}" &
  pids+=("$!")
done

# Wait (at most 5 s) until every backend accepts connections.
for i in 0 1 2; do
  port=$((9001 + i))
  for _ in $(seq 50); do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "run.sh: the backend on port $port exited (is the port already in use?)" >&2
      exit 1
    fi
    if port_open "$port"; then
      continue 2
    fi
    sleep 0.1
  done
  echo "run.sh: the backend on port $port did not start" >&2
  exit 1
done

cat <<'EOF'

==> sluice is starting on http://localhost:8080 (admin: http://127.0.0.1:9901)
    Try, in another terminal:

      curl localhost:8080/echo/hi                                   # balanced over echo-a and echo-b
      curl -H 'Host: api.example.local' localhost:8080/api/users/42 # rewritten to /users/42
      curl localhost:8080/nope                                      # 404 JSON error
      curl -i 'localhost:8080/slow?ms=3000'                         # 504 after 1 s
      curl 127.0.0.1:9901/metrics

    Edit examples/quickstart/*.yaml while it runs: changes apply on save.
    Ctrl-C stops sluice and the backends.

EOF

"$bin" run --manifests "$here" --log-format plain &
sluice_pid=$!
set +e
wait "$sluice_pid"
status=$?
set -e
sluice_pid=""
exit "$status"
