#!/usr/bin/env bash
# Well-behaved clients during floods: wrk's p99 (a few keep-alive connections, the way a
# service calls its API) against sluice alone, then while each flood runs, in one run side by
# side; and sluice's resident memory before, at the end of each flood and after all of them.
#
#   bench/flood.sh
#   DURATION=20 FLOODS="idle rapid" LOGS=on bench/flood.sh
#
# Floods (bench/flood.py): idle connections, slowloris heads, HTTP/2 rapid reset, heads the
# parser refuses. Pinning: sluice alone on core 0 (one worker); wrk, the flooder and the
# upstream nginx share core 1, so a flood also takes CPU from the client measuring it: the
# figures are an upper bound on what the flood costs the gateway's clients.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-8}
FLOODS=${FLOODS:-"idle slowloris rapid garbage"}
FLOOD_CONNECTIONS=${FLOOD_CONNECTIONS:-5000}
LOGS=${LOGS:-off}
BASE_PORT=${BASE_PORT:-18400}
SLUICE_PORT=$((BASE_PORT + 1)) ADMIN_PORT=$((BASE_PORT + 2)) UP_PORT=$((BASE_PORT + 11))

# shellcheck source=bench/lib.sh
. bench/lib.sh
install_missing wrk:wrk nginx:nginx-light curl:curl python3:python3
scripts/build-release.sh >&2
SLUICE=${SLUICE:-$PWD/target/release/sluice}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

ok_upstream "$UP_PORT"
mkdir -p "$work/manifests"
{
  upstream_manifests "$UP_PORT"
  printf -- '---\napiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: public, namespace: default}\nspec:\n  rules:\n  - backendRefs: [{name: up, port: 80}]\n'
} >"$work/manifests/all.yaml"

access=off
[ "$LOGS" = on ] && access=json
SLUICE_LOG=error taskset -c 0 "$SLUICE" run --manifests "$work/manifests" --workers 1 \
  --access-log "$access" --listen "127.0.0.1:$SLUICE_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  >"$work/access.log" 2>>"$work/sluice.log" &
sluice_pid=$!
pids+=("$sluice_pid")
wait_for "http://127.0.0.1:$ADMIN_PORT/readyz" 60
wait_for "http://127.0.0.1:$SLUICE_PORT/" 30

rss_mib() { awk '$1 == "VmRSS:" {printf "%.1f", $2 / 1024}' "/proc/$sluice_pid/status"; }
fds() { find "/proc/$sluice_pid/fd" -mindepth 1 -maxdepth 1 | wc -l; }
wrk_p() { awk -v p="$2" '$1 == p {print $2}' "$1"; }
errors() { awk '/Non-2xx|Socket errors|timeout/ {printf "%s; ", $0}' "$1"; }
measure() { taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$SLUICE_PORT/" >"$1"; }

sleep 1
rss_start=$(rss_mib)
measure "$work/steady"
rows=("| none | $(wrk_p "$work/steady" 50%) | $(wrk_p "$work/steady" 99%) | $(awk '/Requests\/sec/ {print $2}' "$work/steady") | $(rss_mib) | $(fds) | $(errors "$work/steady") |")
for f in $FLOODS; do
  log "== flood: $f"
  taskset -c 1 python3 bench/flood.py "$f" "127.0.0.1:$SLUICE_PORT" "$((DURATION + 2))" "$FLOOD_CONNECTIONS" >"$work/flood-$f" &
  flood_pid=$!
  sleep 1.5
  measure "$work/during-$f"
  during_rss=$(rss_mib) during_fds=$(fds)
  wait "$flood_pid" || true
  rows+=("| $f ($(cat "$work/flood-$f")) | $(wrk_p "$work/during-$f" 50%) | $(wrk_p "$work/during-$f" 99%) | $(awk '/Requests\/sec/ {print $2}' "$work/during-$f") | $during_rss | $during_fds | $(errors "$work/during-$f") |")
  sleep 2
done
panics=$(grep -c panicked "$work/sluice.log" || true)

echo
echo "Well-behaved clients during floods (sluice $(git rev-parse --short HEAD), access log $LOGS, wrk $CONNECTIONS connections for ${DURATION} s, sluice on one core)"
echo
echo "| flood | p50 | p99 | req/s | sluice RSS MiB | open fds | wrk errors |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "RSS: $rss_start MiB at start, $(rss_mib) MiB after the floods; $(fds) open fds; panics: $panics"
