#!/usr/bin/env bash
# Route changes and memory at scale, standalone: for each route count, sluice serves that many
# routes from one manifest file and gains a new route file per change; measured are
#
# - the change to its first 200 (from just before the file is written to the first 200 on the
#   new route's path, one poller on a persistent connection every 1 ms): idle, and 10 times a
#   second under wrk load;
# - request p99 under load without changes (steady) and while the changes land;
# - resident memory after the start, after the changes, and its peak.
#
#   bench/scale.sh                               # 100, 10,000 and 50,000 routes
#   ROUTES="10000" CHANGES=50 LOGS="off on" bench/scale.sh
#
# LOGS lists the access-log settings to run each count with (off: none; on: the JSON access log,
# stdout to a file, as users run it). Pinning as in compare.sh: sluice alone on core 0 with one
# worker (its compile thread too), wrk, the poller and the upstream nginx on core 1.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUTES=${ROUTES:-"100 10000 50000"}
CHANGES=${CHANGES:-40}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
LOGS=${LOGS:-"off on"}
BASE_PORT=${BASE_PORT:-18300}
SLUICE_PORT=$((BASE_PORT + 1)) ADMIN_PORT=$((BASE_PORT + 2)) UP_PORT=$((BASE_PORT + 11))

# shellcheck source=bench/lib.sh
. bench/lib.sh
install_missing wrk:wrk nginx:nginx-light curl:curl python3:python3
scripts/build-release.sh >&2
SLUICE=${SLUICE:-$PWD/target/release/sluice}

ok_upstream "$UP_PORT"

write_manifests() { # ROUTES
  local d="$work/manifests"
  rm -rf "$d" && mkdir -p "$d"
  upstream_manifests "$UP_PORT" >"$d/backends.yaml"
  route_manifests "$1" >"$d/routes.yaml"
}

sluice_pid=
start_sluice() { # ACCESS_LOG(off|on) ROUTES
  local access=off
  [ "$1" = on ] && access=json
  SLUICE_LOG=warn taskset -c 0 "$SLUICE" run --manifests "$work/manifests" --workers 1 \
    --access-log "$access" --listen "127.0.0.1:$SLUICE_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    >"$work/access.log" 2>>"$work/sluice.log" &
  sluice_pid=$!
  pids+=("$sluice_pid")
  wait_for "http://127.0.0.1:$ADMIN_PORT/readyz" 120
  wait_for "http://127.0.0.1:$SLUICE_PORT/r$(($2 - 1))/x" 60
}
stop_sluice() { kill "$sluice_pid" 2>/dev/null && wait "$sluice_pid" 2>/dev/null || true; }
rss_mib() { awk -v f="$1" '$1 == f":" {printf "%.1f", $2 / 1024}' "/proc/$sluice_pid/status"; }
wrk_p99() { awk '$1 == "99%" {print $2}' "$1"; }
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) {sub(/us$/, "", v); printf "%.2f", v / 1000} else if (v ~ /ms$/) {sub(/ms$/, "", v); printf "%.2f", v} else {sub(/s$/, "", v); printf "%.2f", v * 1000} }'; }

# changes FIRST COUNT SPACING_MS -> one line per change: ms from the write to the first 200
changes() {
  taskset -c 1 python3 - "$SLUICE_PORT" "$work/manifests" "$1" "$2" "$3" <<'PY'
import http.client, os, sys, time
port, d, first, count, spacing = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]) / 1000
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
def ok(path):
    global conn
    try:
        conn.request("GET", path)
        r = conn.getresponse(); r.read()
        return r.status == 200
    except Exception:
        conn.close(); conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        return False
for i in range(first, first + count):
    started = time.monotonic()
    with open(f"{d}/.new-{i}.yaml", "w") as f:
        f.write("apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\n"
                f"metadata: {{name: new-{i}, namespace: default}}\nspec:\n  rules:\n"
                f"  - matches: [{{path: {{type: PathPrefix, value: /new{i}/}}}}]\n"
                "    backendRefs: [{name: up, port: 80}]\n")
    os.replace(f"{d}/.new-{i}.yaml", f"{d}/new-{i}.yaml")
    while not ok(f"/new{i}/x"):
        if time.monotonic() - started > 10:
            print("timeout", flush=True); break
        time.sleep(0.001)
    else:
        print("%.2f" % ((time.monotonic() - started) * 1000), flush=True)
    time.sleep(max(0.0, spacing - (time.monotonic() - started)))
PY
}
pct() { # P < samples -> the P-th percentile (nearest rank)
  sort -g | awk -v p="$1" '{v[NR] = $1} END {if (NR) {i = int(NR * p / 100 + 0.999); if (i < 1) i = 1; if (i > NR) i = NR; print v[i]} else print "-"}'
}

results=()
for n in $ROUTES; do
  for logs in $LOGS; do
    log "== $n routes, access log $logs"
    write_manifests "$n"
    start_sluice "$logs" "$n"
    # Past the two seconds in which a just-written file is read again on every reload (its
    # timestamp could hide a second write): what is measured is a change among settled files.
    sleep 3
    rss_start=$(rss_mib VmRSS)
    # Idle: one change at a time, nothing else running.
    changes 0 "$CHANGES" 200 >"$work/idle"
    # Steady load, then the same load while a route arrives 10 times a second.
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$SLUICE_PORT/r1/x" >"$work/steady"
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$SLUICE_PORT/r1/x" >"$work/loaded" &
    wrk_pid=$!
    sleep 0.5
    changes "$CHANGES" $(((DURATION - 1) * 10)) 100 >"$work/busy"
    wait "$wrk_pid"
    errors=$(awk '/Non-2xx|Socket errors/ {print FILENAME": "$0}' "$work/steady" "$work/loaded" | tr '\n' ' ')
    [ -n "$errors" ] && log "  under changes: $errors"
    timeouts=$(cat "$work/idle" "$work/busy" | grep -c timeout || true)
    [ "$timeouts" -gt 0 ] && log "  $timeouts change(s) not served within 10 s"
    steady=$(to_ms "$(wrk_p99 "$work/steady")") loaded=$(to_ms "$(wrk_p99 "$work/loaded")")
    ratio=$(awk -v a="$loaded" -v b="$steady" 'BEGIN {printf "%.2f", a / b}')
    row="| $n | $logs | $(grep -v timeout "$work/idle" | pct 50) | $(grep -v timeout "$work/idle" | pct 99)"
    row+=" | $(grep -v timeout "$work/busy" | pct 50) | $(grep -v timeout "$work/busy" | pct 99) | $(grep -cv timeout "$work/busy")"
    row+=" | $steady | $loaded | ${ratio}x | $rss_start | $(rss_mib VmRSS) | $(rss_mib VmHWM) |"
    results+=("$row")
    log "$row"
    stop_sluice
  done
done

echo
echo "Route changes at scale, standalone (sluice $(git rev-parse --short HEAD), $CHANGES idle changes, then a change every 100 ms for ${DURATION} s of wrk with $CONNECTIONS connections)"
echo
echo "| routes | access log | idle change p50 ms | p99 ms | under load p50 ms | p99 ms | changes | request p99 steady ms | during changes ms | ratio | RSS start MiB | after changes | peak |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
