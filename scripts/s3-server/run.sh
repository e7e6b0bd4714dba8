#!/usr/bin/env bash
# The local S3-compatible test server (moto behind scripts/s3-server/launcher.py).
#
#   run.sh install   venv under target/tools/s3-venv with the pinned requirements.txt;
#                    idempotent (a stamp file makes a second run a no-op), quiet unless
#                    it fails
#   run.sh start     install if needed, start the launcher in the background on a free
#                    loopback port, wait until it answers, print S3_ENDPOINT=http://...
#                    (PID in target/tools/s3-server.pid, log in target/tools/s3-server.log)
#   run.sh stop      stop the server started by `start`, by the PID in the pidfile
#   run.sh status    print the endpoint and exit 0 if running; exit 3 if not
#   run.sh endpoint  print the endpoint of the running server (exit 3 if none)
#   run.sh reset     empty all buckets of the running server (POST /moto-api/reset)
#   run.sh python    print the venv's python (for harnesses)
#
# Environment: PYTHON (default python3) creates the venv; S3_TOOLS_DIR (default
# <repo>/target/tools) holds the venv, stamp, pidfile, port file and log.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TOOLS="${S3_TOOLS_DIR:-$ROOT/target/tools}"
VENV="$TOOLS/s3-venv"
STAMP="$VENV/.installed"
REQS="$HERE/requirements.txt"
LAUNCHER="$HERE/launcher.py"
PIDFILE="$TOOLS/s3-server.pid"
PORTFILE="$TOOLS/s3-server.port"
LOG="$TOOLS/s3-server.log"
PYTHON="${PYTHON:-python3}"

export PYTHONDONTWRITEBYTECODE=1

die() {
    echo "s3-server: $*" >&2
    exit 1
}

# What the stamp records: the requirements and the interpreter they were installed for.
stamp_value() {
    local py_version
    py_version="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo unknown)"
    echo "python=$py_version reqs=$(sha256sum "$REQS" | cut -d' ' -f1)"
}

installed() {
    [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_value)" ]]
}

do_install() {
    mkdir -p "$TOOLS"
    installed && return 0
    # One installer at a time (make test and a developer may race).
    exec 9>"$TOOLS/s3-venv.lock"
    flock 9
    if installed; then
        exec 9>&-
        return 0
    fi
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (needs CPython >= 3.9 with venv and pip)"
    local log="$TOOLS/s3-install.log"
    rm -rf "$VENV"
    if ! {
        "$PYTHON" -m venv "$VENV" &&
            "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
                --no-input -r "$REQS"
    } >"$log" 2>&1; then
        cat "$log" >&2
        rm -rf "$VENV"
        die "install failed (log above, also in $log)"
    fi
    stamp_value >"$STAMP"
    exec 9>&-
}

# Alive and not a zombie (an exited child waits for its reaper, which may be slow).
alive() {
    [[ -r "/proc/$1/status" ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# PID from the pidfile if that process is alive and is our launcher; else nothing.
running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$LAUNCHER" || return 1
    echo "$pid"
}

endpoint() {
    running_pid >/dev/null || return 3
    [[ -s "$PORTFILE" ]] || return 3
    echo "http://127.0.0.1:$(cat "$PORTFILE")"
}

healthy() {
    "$VENV/bin/python" - "$1" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/_launcher/health", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
}

do_start() {
    do_install
    local ep
    if ep="$(endpoint)"; then
        echo "S3_ENDPOINT=$ep"
        return 0
    fi
    rm -f "$PORTFILE" "$PIDFILE"
    # setsid: not in the caller's process group, so a Ctrl-C in make does not kill it
    # halfway; it is stopped by `run.sh stop`.
    setsid "$VENV/bin/python" "$LAUNCHER" --port 0 --port-file "$PORTFILE" --quiet \
        </dev/null >"$LOG" 2>&1 &
    local pid=$!
    echo "$pid" >"$PIDFILE"
    # Bounded wait for the port file, then for a health answer.
    local i
    for ((i = 0; i < 300; i++)); do
        if ! alive "$pid"; then
            cat "$LOG" >&2
            rm -f "$PIDFILE"
            die "launcher exited during start-up (log above)"
        fi
        if [[ -s "$PORTFILE" ]] && healthy "http://127.0.0.1:$(cat "$PORTFILE")"; then
            echo "S3_ENDPOINT=http://127.0.0.1:$(cat "$PORTFILE")"
            return 0
        fi
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    cat "$LOG" >&2
    die "launcher did not answer within 30 s"
}

do_stop() {
    local pid i
    if ! pid="$(running_pid)"; then
        rm -f "$PIDFILE" "$PORTFILE"
        echo "s3-server: not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || break
        sleep 0.05
    done
    if alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE" "$PORTFILE"
    echo "s3-server: stopped (pid $pid)"
}

case "${1:-}" in
install) do_install ;;
start) do_start ;;
stop) do_stop ;;
status)
    if ep="$(endpoint)"; then
        echo "s3-server: running (pid $(running_pid)) at $ep"
    else
        echo "s3-server: not running"
        exit 3
    fi
    ;;
endpoint) endpoint ;;
reset)
    ep="$(endpoint)" || die "not running"
    "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1] + "/moto-api/reset", method="POST"), timeout=10)' "$ep"
    ;;
python) echo "$VENV/bin/python" ;;
*)
    echo "usage: $0 install|start|stop|status|endpoint|reset|python" >&2
    exit 2
    ;;
esac
