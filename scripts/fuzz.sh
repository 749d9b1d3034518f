#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ and runs each for a bounded time, on the stable
# toolchain (no cargo-fuzz, no nightly: the coverage instrumentation is stable rustc flags).
#
#   scripts/fuzz.sh                    # every target, 60 s each
#   scripts/fuzz.sh --time 3600 jwt    # one target for an hour
#   scripts/fuzz.sh --smoke            # what CI runs: 20 s each from the seeds alone, fixed seed
#   scripts/fuzz.sh --list
#
# Each target starts from its seeds (fuzz/seeds/TARGET, in the repo) and grows a working
# corpus in fuzz/corpus/TARGET (not in the repo). A crash or timeout stops the run: the input
# is in fuzz/artifacts/TARGET/, and it belongs in a regression test before the fix.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

time_per_target=60
smoke=0
seed=()
targets=()
while (($#)); do
  case "$1" in
    --time) time_per_target="$2"; shift 2 ;;
    --smoke) smoke=1; time_per_target=20; seed=(-seed=1); shift ;;
    --list) sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^sluice-fuzz$'; exit 0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "unknown flag $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^sluice-fuzz$')
fi

# The flags cargo-fuzz passes, minus the sanitizer (AddressSanitizer needs nightly; the code
# under test forbids `unsafe`, so what it finds are panics, overflows and hangs, which these
# catch). `--target` keeps them off build scripts and proc macros.
host="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="${SLUICE_FUZZ_TARGET_DIR:-$PWD/target}"
cargo build --locked --release --target "$host" --bins
bin="$CARGO_TARGET_DIR/$host/release"

# Inputs past these sizes only make a target slower; manifests and tokens are the long ones.
max_len() {
  case "$1" in
    manifests) echo 16384 ;;
    jwt|path_routing) echo 4096 ;;
    *) echo 8192 ;;
  esac
}

status=0
printf '%-15s %12s %10s %8s  %s\n' target executions exec/s corpus result
for t in "${targets[@]}"; do
  [[ -x "$bin/$t" ]] || { echo "no target $t (scripts/fuzz.sh --list)" >&2; exit 2; }
  corpus="corpus/$t"
  if ((smoke)); then corpus="$(mktemp -d)"; fi
  mkdir -p "$corpus" "artifacts/$t"
  log="$(mktemp)"
  if "$bin/$t" "$corpus" "seeds/$t" -max_total_time="$time_per_target" -max_len="$(max_len "$t")" \
      -timeout=10 -rss_limit_mb=2048 -artifact_prefix="artifacts/$t/" -print_final_stats=1 "${seed[@]}" \
      >"$log" 2>&1; then
    result=ok
  else
    result="FAILED (see artifacts/$t/)"
    status=1
    tail -40 "$log" >&2
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  speed="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
  size="$(find "$corpus" -type f | wc -l)"
  printf '%-15s %12s %10s %8s  %s\n' "$t" "${runs:-?}" "${speed:-?}" "$size" "$result"
  rm -f "$log"
  if ((smoke)); then rm -rf "$corpus"; fi
done
exit "$status"
