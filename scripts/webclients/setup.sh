#!/usr/bin/env bash
# Install (idempotently) the real tus clients the tests drive, and the reference tus server.
#
#   scripts/webclients/setup.sh install   # install what is missing or out of date; a no-op when stamps match
#   scripts/webclients/setup.sh status    # print what is installed; exit 1 if anything is missing/stale
#
# What goes where (all under target/tools/, which is git-ignored; override with WEBCLIENTS_TOOLS):
#   node/          package.json + package-lock.json copied from here, then `npm ci` (pinned versions):
#                  tus-js-client, @uppy/core, @uppy/tus, playwright-core, @tus/server, @tus/file-store
#   tus-venv/      a Python venv with tuspy (requirements.txt, pinned)
#   /usr/bin/chromium  Debian's chromium (apt-get), only if missing; playwright-core drives it.
# Each part has a stamp file holding a hash of its inputs; a matching stamp means "nothing to do".
# Quiet on success. On failure: the failing step's log on stderr and a non-zero exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLS=${WEBCLIENTS_TOOLS:-$ROOT/target/tools}
NODE_DIR=$TOOLS/node
VENV=$TOOLS/tus-venv
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
PYTHON=${PYTHON:-python3}

die() { echo "webclients/setup.sh: $*" >&2; exit 1; }

# run_logged NAME CMD...: run quietly; on failure print the log tail and fail.
run_logged() {
  local name=$1; shift
  local log; log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    echo "webclients/setup.sh: $name failed: $*" >&2
    tail -n 40 "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
}

node_stamp() {
  command -v node >/dev/null || die "node not found (need Node >= 20)"
  { node --version; cat "$HERE/package.json" "$HERE/package-lock.json"; } | sha256sum | cut -d' ' -f1
}
venv_stamp() {
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
  { "$PYTHON" --version 2>&1; cat "$HERE/requirements.txt"; } | sha256sum | cut -d' ' -f1
}
node_ok() { [ -f "$NODE_DIR/.stamp" ] && [ "$(cat "$NODE_DIR/.stamp")" = "$(node_stamp)" ] && [ -d "$NODE_DIR/node_modules/tus-js-client" ]; }
venv_ok() { [ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$(venv_stamp)" ] && [ -x "$VENV/bin/python" ]; }
chromium_ok() { [ -x "$CHROMIUM" ]; }

install_node() {
  node_ok && return 0
  command -v npm >/dev/null || die "npm not found"
  mkdir -p "$NODE_DIR"
  rm -f "$NODE_DIR/.stamp"
  cp "$HERE/package.json" "$HERE/package-lock.json" "$NODE_DIR/"
  # npm ci: exactly the lockfile's versions; fails if package.json and the lockfile disagree.
  run_logged "npm ci" npm ci --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error
  node_stamp >"$NODE_DIR/.stamp"
}

install_venv() {
  venv_ok && return 0
  rm -rf "$VENV"
  run_logged "python venv" "$PYTHON" -m venv "$VENV"
  run_logged "pip install tuspy" "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
  venv_stamp >"$VENV/.stamp"
}

install_chromium() {
  chromium_ok && return 0
  [ "$(id -u)" = 0 ] || die "$CHROMIUM is missing and installing it needs root: apt-get install -y --no-install-recommends chromium"
  command -v apt-get >/dev/null || die "$CHROMIUM is missing and apt-get is not available"
  export DEBIAN_FRONTEND=noninteractive
  # Try without an update first (fast when the package lists are fresh), then with one.
  if ! apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; then
    run_logged "apt-get update" apt-get update
    run_logged "apt-get install chromium" apt-get install -y --no-install-recommends chromium
  fi
  chromium_ok || die "apt-get finished but $CHROMIUM is still missing"
}

status() {
  local bad=0
  if node_ok; then
    echo "node:     ok   $NODE_DIR ($(cd "$NODE_DIR" && node -e '
      const p = require("./package.json").dependencies;
      console.log(Object.keys(p).map(n => n + "@" + require("./node_modules/" + n + "/package.json").version).join(" "))'))"
  else echo "node:     MISSING or stale ($NODE_DIR)"; bad=1; fi
  if venv_ok; then
    echo "tuspy:    ok   $VENV (tuspy $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("tuspy"))'))"
  else echo "tuspy:    MISSING or stale ($VENV)"; bad=1; fi
  if chromium_ok; then echo "chromium: ok   $CHROMIUM ($("$CHROMIUM" --version 2>/dev/null | head -1))"
  else echo "chromium: MISSING ($CHROMIUM)"; bad=1; fi
  return $bad
}

case "${1:-}" in
  install) install_node; install_venv; install_chromium ;;
  status) status ;;
  *) echo "usage: $0 install|status" >&2; exit 2 ;;
esac
