#!/usr/bin/env bash
# Install (idempotently) Debian's nginx for the reverse-proxy tests.
#
#   scripts/nginx/setup.sh install   # download and unpack when missing; a no-op otherwise
#   scripts/nginx/setup.sh status    # print the version; exit 1 if it is missing
#
# The package is only downloaded and unpacked under target/tools/nginx (override with
# NGINX_TOOLS), never installed: no service is set up, nothing listens until a test starts
# its own nginx on a free port with a generated configuration, and stops it by PID.
# The binary is then target/tools/nginx/usr/sbin/nginx. Quiet on success.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLS=${NGINX_TOOLS:-$ROOT/target/tools}
DIR=$TOOLS/nginx
BIN=$DIR/usr/sbin/nginx

die() { echo "nginx/setup.sh: $*" >&2; exit 1; }

run_logged() {
  local name=$1; shift
  local log; log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    echo "nginx/setup.sh: $name failed: $*" >&2
    tail -n 40 "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
}

# The binary runs and has what the tests use: TLS, HTTP/2 and proxying.
nginx_ok() {
  [ -x "$BIN" ] || return 1
  local v; v=$("$BIN" -V 2>&1) || return 1
  grep -q -- '--with-http_ssl_module' <<<"$v" && grep -q -- '--with-http_v2_module' <<<"$v"
}

install_nginx() {
  nginx_ok && return 0
  command -v apt-get >/dev/null || die "apt-get not found (nginx comes from Debian's nginx package)"
  local dl; dl=$(mktemp -d)
  if ! (cd "$dl" && apt-get download -qq nginx >/dev/null 2>&1); then
    run_logged "apt-get update" apt-get update -qq
    (cd "$dl" && run_logged "apt-get download" apt-get download -qq nginx)
  fi
  rm -rf "$DIR"
  run_logged "dpkg-deb" dpkg-deb -x "$dl"/nginx_*.deb "$DIR"
  rm -rf "$dl"
  nginx_ok || die "nginx does not run after unpacking: $("$BIN" -V 2>&1 | head -3)"
}

case "${1:-install}" in
  install)
    mkdir -p "$TOOLS"
    exec 9>"$TOOLS/nginx.lock"
    flock 9
    install_nginx
    ;;
  status)
    if nginx_ok; then echo "nginx: $("$BIN" -v 2>&1) at $BIN"; else echo "nginx: missing (run scripts/nginx/setup.sh install)"; exit 1; fi
    ;;
  *) die "usage: setup.sh install|status" ;;
esac
