# shellcheck shell=bash
# Reporting shared by the e2e scripts (source it): `ok - NAME` and `not ok - NAME` with `#`
# diagnostic lines, counted in $passed and $failed.

passed=0
failed=0

ok() { echo "ok - $1"; passed=$((passed + 1)); }
not_ok() {
  echo "not ok - $1"
  shift
  for line in "$@"; do echo "#   $line"; done
  failed=$((failed + 1))
}
# check NAME CONDITION-COMMAND... [-- diagnostic lines]: ok when the command succeeds.
check() {
  local name="$1"
  shift
  local cmd=()
  while (($#)) && [[ "$1" != "--" ]]; do cmd+=("$1"); shift; done
  (($#)) && shift
  if "${cmd[@]}"; then ok "$name"; else not_ok "$name" "$@"; fi
}
