#!/usr/bin/env bash
# Install (idempotently) the tools that check the server's observability surface.
#
#   scripts/api-tools/setup.sh install   # install what is missing or out of date; a no-op when stamps match
#   scripts/api-tools/setup.sh status    # print what is installed; exit 1 if anything is missing/stale
#
# What goes where (under target/tools/, git-ignored; override with API_TOOLS):
#   api-venv/        a Python venv with Schemathesis (requirements.txt, pinned)
#   prometheus/      Debian's prometheus package unpacked (not installed: no service is
#                    set up); only its promtool is used, as prometheus/usr/bin/promtool
# Quiet on success. On failure: the failing step's log on stderr and a non-zero exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLS=${API_TOOLS:-$ROOT/target/tools}
VENV=$TOOLS/api-venv
PROM=$TOOLS/prometheus
PYTHON=${PYTHON:-python3}

die() { echo "api-tools/setup.sh: $*" >&2; exit 1; }

# run_logged NAME CMD...: run quietly; on failure print the log tail and fail.
run_logged() {
  local name=$1; shift
  local log; log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    echo "api-tools/setup.sh: $name failed: $*" >&2
    tail -n 40 "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
}

venv_stamp() {
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
  { "$PYTHON" --version 2>&1; cat "$HERE/requirements.txt"; } | sha256sum | cut -d' ' -f1
}
venv_ok() { [ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$(venv_stamp)" ] && [ -x "$VENV/bin/schemathesis" ]; }
promtool_ok() { [ -x "$PROM/usr/bin/promtool" ] && "$PROM/usr/bin/promtool" --version >/dev/null 2>&1; }

install_venv() {
  venv_ok && return 0
  rm -rf "$VENV"
  run_logged venv "$PYTHON" -m venv "$VENV"
  run_logged "pip install" "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-input -r "$HERE/requirements.txt"
  venv_stamp >"$VENV/.stamp"
}

install_promtool() {
  promtool_ok && return 0
  command -v apt-get >/dev/null || die "apt-get not found (promtool comes from Debian's prometheus package)"
  local dl; dl=$(mktemp -d)
  # The package is only downloaded and unpacked here, never installed.
  if ! (cd "$dl" && apt-get download -qq prometheus >/dev/null 2>&1); then
    run_logged "apt-get update" apt-get update -qq
    (cd "$dl" && run_logged "apt-get download" apt-get download -qq prometheus)
  fi
  rm -rf "$PROM"
  run_logged "dpkg-deb" dpkg-deb -x "$dl"/prometheus_*.deb "$PROM"
  rm -rf "$dl"
  promtool_ok || die "promtool does not run after unpacking"
}

case "${1:-install}" in
  install)
    mkdir -p "$TOOLS"
    exec 9>"$TOOLS/api-tools.lock"
    flock 9
    install_venv
    install_promtool
    ;;
  status)
    ok=0
    if venv_ok; then echo "schemathesis: $("$VENV/bin/schemathesis" --version)"; else echo "schemathesis: missing"; ok=1; fi
    if promtool_ok; then echo "promtool: $("$PROM/usr/bin/promtool" --version 2>&1 | head -1)"; else echo "promtool: missing"; ok=1; fi
    exit $ok
    ;;
  *) die "usage: setup.sh install|status" ;;
esac
