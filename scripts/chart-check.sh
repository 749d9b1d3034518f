#!/usr/bin/env bash
# Offline check of the Helm chart charts/sluice (lint, render, schema validation, the chart's
# RBAC/security/drain invariants): runs scripts/chart_check.py in a virtualenv of its own. No
# helm binary, no cluster, no Docker; needs python3 >= 3.10 and PyPI on the first run only.
#
#   scripts/chart-check.sh [--kube-version 1.33.0]     # arguments go to chart_check.py
#
# The virtualenv lives in ${XDG_CACHE_HOME:-~/.cache}/sluice-chart-venv (SLUICE_CHART_VENV
# overrides it) and is rebuilt whenever the Python version or the pins below change. Where
# python3 cannot create a virtualenv (Debian/Ubuntu without python3-venv), the package is
# installed with apt-get, through sudo when not root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# PyYAML, jsonschema and the rest come in as kubernetes-validate's dependencies.
pins=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0)
venv="${SLUICE_CHART_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice-chart-venv}"

as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "chart-check: need root (or sudo) to run: $*" >&2
    exit 1
  fi
}

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "chart-check: install $* (python3 with the venv module) and rerun" >&2
    exit 1
  fi
  echo "chart-check: installing $* with apt-get" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "chart-check: python3 >= 3.10 required (helm-python-sdk), found $(python3 -V 2>&1)" >&2
  exit 1
fi

want="$(python3 -c 'import platform; print(platform.python_version())') ${pins[*]}"
mkdir -p "$(dirname "$venv")"
if command -v flock >/dev/null 2>&1; then  # two runs sharing one cache build it once
  exec 9>"$venv.lock"
  flock 9
fi
if [[ "$(cat "$venv/.sluice-pins" 2>/dev/null)" != "$want" ]]; then
  echo "chart-check: creating $venv (${pins[*]})" >&2
  if [[ -e "$venv" && ! -f "$venv/pyvenv.cfg" && -n "$(ls -A "$venv" 2>/dev/null)" ]]; then
    echo "chart-check: $venv exists and is not a virtualenv; not touching it" >&2
    exit 1
  fi
  rm -rf "$venv"
  # Debian and Ubuntu ship the venv module (ensurepip) apart, as python3-venv.
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${pins[@]}"
  echo "$want" >"$venv/.sluice-pins"  # written last: a half-built venv is rebuilt next time
fi

exec "$venv/bin/python" scripts/chart_check.py "$@"
