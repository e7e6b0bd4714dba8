#!/usr/bin/env bash
# The project's S3 store: Ceph RGW (radosgw) on a one-node RADOS cluster (one monitor,
# one BlueStore OSD on a sparse file), from Debian sid's packages in a debootstrap chroot.
#
#   run.sh install   chroot with pinned ceph-mon, ceph-osd, radosgw (~1.1 GB, ~1 min);
#                    idempotent (stamp), one installer at a time (flock); needs root
#   run.sh start     install if needed, start mon, osd and radosgw on free loopback ports,
#                    create the test user; prints the endpoint and credentials as shell
#                    assignments (S3_ENDPOINT=... AWS_ACCESS_KEY_ID=...); a running store
#                    is reused; a failed start stops what it started and exits non-zero
#   run.sh env       the same assignments for the running store (exit 3 if none)
#   run.sh stop      stop every daemon of this checkout's cluster by PID (radosgw: SIGTERM,
#                    SIGKILL after 5 s)
#   run.sh status    what runs; exit 0 if the store answers, 3 if not
#   run.sh wipe      stop, then delete the cluster's data (the next start is a new, empty
#                    cluster)
#   run.sh gateway [--foreground] [PORT]
#                    start one more radosgw attached to the running cluster, on a free
#                    port (or PORT) of its own; prints GATEWAY_ENDPOINT=... GATEWAY_PID=...
#                    (it keeps no state: a test may SIGSTOP, SIGKILL or restart it);
#                    --foreground: exec it in place of this script, for a harness that
#                    keeps it as its child
#   run.sh installed exit 0 if the install is complete
#   run.sh requests [--since UNIX_TIME] [--until UNIX_TIME] [--bucket NAME] [--json]
#                    store requests by S3 operation from the gateways' ops logs: one
#                    "COUNT OPERATION" line each, "TOTAL N", "COPIED_BYTES N"
#                    (scripts/ceph/requests.py)
#
# Environment:
#   CEPH_ROOT    the chroot (default <repo>/target/tools/ceph-root); checkouts may share
#                one install, each keeps its own cluster
#   CEPH_STATE   this checkout's cluster: config, data, logs, pidfiles
#                (default <repo>/target/tools/ceph)
#   CEPH_MIRROR  Debian mirror for the chroot (default: the one apt uses on this host)
#
# The daemons run in a mount namespace of their own in which CEPH_STATE is bound to
# /cluster inside the chroot: nothing stays mounted on the host after they exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TOOLS="$REPO/target/tools"
CEPH_ROOT="${CEPH_ROOT:-$TOOLS/ceph-root}"
STATE="${CEPH_STATE:-$TOOLS/ceph}"

# Pinned: the S3 behaviour the tests rely on (conditional writes, checksums) was checked
# on this version; Debian 12's 16.2 and 18.2 do not have it.
CEPH_VERSION="20.2.4+ds-2"
PACKAGES=(radosgw="$CEPH_VERSION" ceph-mon="$CEPH_VERSION" ceph-osd="$CEPH_VERSION")
STAMP="$CEPH_ROOT/.installed"
STAMP_VALUE="ceph=$CEPH_VERSION suite=sid"

# The test user's keys (a loopback test store, not a secret).
ACCESS_KEY="uploadtest"
SECRET_KEY="uploadtestsecret"
USER_ID="uploadtest"

CONF="$STATE/ceph.conf"
LOGDIR="$STATE/log"

die() {
    echo "ceph: $*" >&2
    exit 1
}

need_root() {
    [[ "$(id -u)" == 0 ]] || die "$1 needs root (debootstrap, chroot and mount namespaces)"
}

# --- install ----------------------------------------------------------------------------

installed() {
    [[ -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_VALUE" ]]
}

# The Debian mirror apt uses on this host (deb822 .sources or one-line sources.list), so
# the chroot comes from the same registry; deb.debian.org when none is found.
host_mirror() {
    local uri=""
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        uri="$(awk '
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { if (u != "" && s !~ /security/) { print u; exit } u = ""; s = ""; next }
            /^URIs:/ { u = $2 }
            /^Suites:/ { s = $0 }
            END { if (u != "" && s !~ /security/) print u }
        ' /etc/apt/sources.list.d/*.sources | grep -v security | head -n1 || true)"
    fi
    if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
        uri="$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
            /etc/apt/sources.list || true)"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

do_install() {
    installed && return 0
    need_root "install"
    mkdir -p "$(dirname "$CEPH_ROOT")"
    # One installer at a time (make test and a developer, or two checkouts, may race).
    exec 8>"$CEPH_ROOT.lock"
    flock 8
    if installed; then
        exec 8>&-
        return 0
    fi
    if ! command -v debootstrap >/dev/null; then
        echo "ceph: installing debootstrap (apt-get)" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } \
            >"$CEPH_ROOT.apt.log" 2>&1 ||
            die "could not install debootstrap with apt-get (see $CEPH_ROOT.apt.log)"
    fi
    local mirror log partial started
    mirror="${CEPH_MIRROR:-$(host_mirror)}"
    log="$CEPH_ROOT.install.log"
    partial="$CEPH_ROOT.partial"
    started=$SECONDS
    echo "ceph: installing Ceph $CEPH_VERSION from $mirror (sid) into $CEPH_ROOT (~1.1 GB, ~1 min)" >&2
    rm -rf "$CEPH_ROOT" "$partial"
    : >"$log"
    if ! install_into "$partial" "$mirror" >>"$log" 2>&1; then
        umount "$partial/proc" 2>/dev/null || true
        tail -n 30 "$log" >&2
        rm -rf "$partial"
        die "install failed (last lines above, all in $log)"
    fi
    mv "$partial" "$CEPH_ROOT"
    echo "$STAMP_VALUE" >"$STAMP"
    echo "ceph: installed in $((SECONDS - started)) s" >&2
    exec 8>&-
}

# debootstrap, then the pinned packages; /proc is mounted only while apt runs (package
# scripts need it) and a policy-rc.d keeps any service from starting.
install_into() {
    local dir="$1" mirror="$2" apt_opts
    apt_opts=(-o Acquire::Check-Valid-Until=false -o Acquire::Check-Date=false -o Dpkg::Use-Pty=0)
    debootstrap --variant=minbase sid "$dir" "$mirror"
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod 755 "$dir/usr/sbin/policy-rc.d"
    # The registry's sid snapshot may carry a Release file past its Valid-Until date.
    printf 'Acquire::Check-Valid-Until "false";\nAcquire::Check-Date "false";\n' \
        >"$dir/etc/apt/apt.conf.d/99no-valid-until"
    mount -t proc proc "$dir/proc"
    local rc=0
    {
        chroot "$dir" apt-get "${apt_opts[@]}" update &&
            DEBIAN_FRONTEND=noninteractive chroot "$dir" apt-get "${apt_opts[@]}" install -y \
                --no-install-recommends "${PACKAGES[@]}" &&
            chroot "$dir" apt-get clean
    } || rc=$?
    umount "$dir/proc"
    [[ $rc == 0 ]] || return $rc
    rm -rf "$dir"/var/lib/apt/lists/*
    mkdir -p "$dir/cluster"
}

# --- running ----------------------------------------------------------------------------

# Runs a program inside the chroot, in a private mount namespace where CEPH_STATE is
# /cluster. `exec` all the way down, so the PID is the program's own.
IN_ROOT=(unshare --mount --propagation private -- /bin/sh -c
    'mount --bind "$1" "$0/cluster" && shift && exec chroot "$0" "$@"')
in_root() {
    "${IN_ROOT[@]}" "$CEPH_ROOT" "$STATE" "$@"
}

# Alive and not a zombie.
alive() {
    [[ -r "/proc/$1/status" ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# PID from a pidfile if that process is alive and runs the expected daemon; else nothing.
pid_of() {
    local file="$STATE/$1.pid" pid
    [[ -f "$file" ]] || return 1
    pid="$(cat "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2"* ]] || return 1
    echo "$pid"
}

# A free loopback TCP port (bound, then released; the daemon binds it right after).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Whether something answers HTTP on the port.
answers() {
    python3 - "$1" <<'EOF' >/dev/null 2>&1
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen("http://127.0.0.1:%s/" % sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass
EOF
}

write_conf() {
    local mon_port="$1" rgw_port="$2" fsid="$3"
    cat >"$CONF" <<EOF
# One-node test cluster (written by scripts/ceph/run.sh start).
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$mon_port
mon initial members = a
ms bind msgr2 = false
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
# The monitor refuses to start below 5% free on its disk by default: a large shared disk
# may have that little free and still many GB, far more than this cluster needs.
mon data avail crit = 1
mon data avail warn = 2
run dir = /cluster/run
admin socket = /cluster/run/\$cluster-\$name.asok
log file = /cluster/log/\$cluster-\$name.log
keyring = /cluster/keyring
mon data = /cluster/mon
osd data = /cluster/osd
osd objectstore = bluestore
bluestore block path = /cluster/osd-block
bluestore block create = true
bluestore block size = 21474836480
bluestore fsck on mount = false
osd memory target = 1073741824
osd op num shards = 1
osd op num threads per shard = 2
debug rgw = 0

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw dns name = localhost
rgw data = /cluster/rgw
# Deleted objects are freed within about a minute (default: 2 hours), so that suites
# writing gigabytes do not fill the OSD file.
rgw gc obj min wait = 30
rgw gc processor period = 30
rgw gc processor max time = 30
# Every operation by name (copy_obj, init_multipart, ...), for \`run.sh requests\`.
rgw enable ops log = true
rgw ops log file path = /cluster/log/ops-rgw.log
# ... with the copy source, which tells UploadPartCopy and CopyObject from writes.
rgw log http headers = http_x_amz_copy_source,http_x_amz_copy_source_range
EOF
}

# Runs a Ceph command-line tool against this cluster.
ceph_tool() {
    in_root "$@" -c /cluster/ceph.conf
}

started_once() {
    [[ -f "$STATE/mon/.created" && -f "$STATE/osd/.created" ]]
}

# Starts a daemon in the background in a session of its own (a Ctrl-C in make does not
# reach it) and writes its pidfile.
spawn() {
    local name="$1"
    shift
    setsid "${IN_ROOT[@]}" "$CEPH_ROOT" "$STATE" "$@" </dev/null >>"$LOGDIR/$name.out" 2>&1 8>&- 9>&- &
    echo $! >"$STATE/$name.pid"
}

mon_port() { sed -n 's/^mon host = v1:127.0.0.1:\([0-9]*\)$/\1/p' "$CONF"; }
rgw_port() { sed -n 's/^rgw frontends = beast endpoint=127.0.0.1:\([0-9]*\)$/\1/p' "$CONF"; }

print_env() {
    local port
    port="$(rgw_port)"
    echo "S3_ENDPOINT=http://127.0.0.1:$port"
    echo "AWS_ACCESS_KEY_ID=$ACCESS_KEY"
    echo "AWS_SECRET_ACCESS_KEY=$SECRET_KEY"
    echo "AWS_REGION=us-east-1"
    echo "CEPH_STATE=$STATE"
}

store_up() {
    [[ -f "$CONF" ]] && pid_of mon ceph-mon >/dev/null && pid_of osd ceph-osd >/dev/null &&
        pid_of rgw radosgw >/dev/null && answers "$(rgw_port)"
}

# Waits (bounded) until `cond` succeeds; fails with the daemon's log if `pidname` dies.
wait_for() {
    local what="$1" seconds="$2" pidname="$3" comm="$4"
    shift 4
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if ! pid_of "$pidname" "$comm" >/dev/null; then
            echo "ceph: $comm exited while waiting for $what" >&2
            return 1
        fi
        ((SECONDS < deadline)) || {
            echo "ceph: timed out after $seconds s waiting for $what" >&2
            return 1
        }
        sleep 0.2
    done
}

# The OSD process itself says it is active (the monitor acknowledged its boot); the
# monitor's map alone may still show a previous OSD process as up.
osd_up() {
    in_root ceph --admin-daemon /cluster/run/ceph-osd.0.asok status 2>/dev/null |
        grep -q '"state": "active"'
}

start_mon() {
    spawn mon ceph-mon -c /cluster/ceph.conf -i a -f
    wait_for "the monitor" 30 mon ceph-mon ceph_tool ceph --connect-timeout 2 mon stat >/dev/null 2>&1
}

# ceph-osd sometimes exits at once on a fresh cluster ("wrong fsid": its first command
# to the monitor carries fsid 0); starting it again fixes it.
start_osd() {
    local try
    for try in 1 2 3 4 5; do
        spawn osd ceph-osd -c /cluster/ceph.conf -i 0 -f
        if wait_for "the OSD to be up" 60 osd ceph-osd osd_up 2>/dev/null; then
            return 0
        fi
        stop_daemon osd ceph-osd
        echo "ceph: OSD start $try failed, retrying" >>"$LOGDIR/start.log"
    done
    echo "ceph: the OSD did not come up (see $LOGDIR/ceph-osd.0.log)" >&2
    return 1
}

# A fresh cluster: keyring, monmap, monitor store, OSD.
create_cluster() {
    local fsid="$1" mon_port="$2"
    mkdir -p "$STATE/mon" "$STATE/osd" "$STATE/rgw" &&
        ceph_tool ceph-authtool --create-keyring /cluster/keyring --gen-key -n mon. \
            --cap mon 'allow *' >/dev/null &&
        in_root monmaptool --create --fsid "$fsid" --addv a "[v1:127.0.0.1:$mon_port]" \
            /cluster/monmap >/dev/null &&
        ceph_tool ceph-mon --mkfs -i a --monmap /cluster/monmap --keyring /cluster/keyring \
            >>"$LOGDIR/start.log" 2>&1 &&
        touch "$STATE/mon/.created"
}

create_osd() {
    local uuid
    uuid="$(cat /proc/sys/kernel/random/uuid)"
    ceph_tool ceph osd new "$uuid" 0 >/dev/null &&
        ceph_tool ceph-osd -i 0 --mkfs --osd-uuid "$uuid" >>"$LOGDIR/start.log" 2>&1 &&
        touch "$STATE/osd/.created"
}

ensure_user() {
    ceph_tool radosgw-admin user info --uid "$USER_ID" >/dev/null 2>&1 ||
        ceph_tool radosgw-admin user create --uid "$USER_ID" --display-name "upload tests" \
            --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" >/dev/null
}

start_rgw() {
    spawn rgw radosgw -c /cluster/ceph.conf -n client.rgw -f
    wait_for "radosgw" 60 rgw radosgw answers "$(rgw_port)"
}

do_start() {
    do_install
    need_root "start"
    mkdir -p "$STATE"
    exec 9>"$STATE/lock"
    flock 9
    if store_up; then
        print_env
        return 0
    fi
    local started=$SECONDS
    # Whatever half of a cluster runs (a failed or killed start) goes first.
    stop_all >/dev/null
    # The gateways' logs start afresh with the daemons (request counts read them whole).
    rm -rf "$LOGDIR"/ops-rgw*.log "$LOGDIR"/gw-*.out "$LOGDIR"/ceph-client.rgw-*.log \
        "$STATE"/rgw-* "$STATE"/gw-*.pid
    mkdir -p "$LOGDIR" "$STATE/run"
    if ! started_once; then
        rm -rf "$STATE/mon" "$STATE/osd" "$STATE/osd-block" "$STATE"/rgw* "$STATE/run"/*
        mkdir -p "$STATE/run"
        write_conf "$(free_port)" "$(free_port)" "$(cat /proc/sys/kernel/random/uuid)"
    else
        # Same cluster (fsid, data), new free ports.
        local fsid
        fsid="$(sed -n 's/^fsid = //p' "$CONF")"
        write_conf "$(free_port)" "$(free_port)" "$fsid"
        # The monitor's address is in its store's monmap: rewrite it for the new port.
        in_root monmaptool --create --clobber --fsid "$fsid" \
            --addv a "[v1:127.0.0.1:$(mon_port)]" /cluster/monmap >/dev/null &&
            ceph_tool ceph-mon -i a --inject-monmap /cluster/monmap >>"$LOGDIR/start.log" 2>&1 ||
            die "could not move the monitor to its new port (see $LOGDIR/start.log; run.sh wipe starts afresh)"
    fi
    if ! {
        { [[ -f "$STATE/mon/.created" ]] || create_cluster "$(sed -n 's/^fsid = //p' "$CONF")" "$(mon_port)"; } &&
            start_mon &&
            { [[ -f "$STATE/osd/.created" ]] || create_osd; } &&
            start_osd &&
            start_rgw &&
            ensure_user
    }; then
        stop_all >/dev/null
        local f
        for f in "$LOGDIR"/*.log "$LOGDIR"/*.out; do
            [[ -s "$f" ]] && { echo "--- $f (last lines)"; tail -n 15 "$f"; }
        done >&2
        die "the store did not start (logs above, all in $LOGDIR)"
    fi
    echo "ceph: store up in $((SECONDS - started)) s" >&2
    print_env
}

# Stops one daemon by its pidfile: SIGTERM, SIGKILL after 5 s (radosgw may hang on
# SIGTERM; none of the daemons loses acknowledged data to SIGKILL).
stop_daemon() {
    local name="$1" comm="$2" pid i
    if pid="$(pid_of "$name" "$comm")"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            alive "$pid" || break
            sleep 0.05
        done
        if alive "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 100; i++)); do
                alive "$pid" || break
                sleep 0.05
            done
        fi
        echo "ceph: stopped $comm (pid $pid)"
    fi
    rm -f "$STATE/$name.pid"
}

stop_all() {
    local f name
    # Extra gateways first, then the main one, the OSD, the monitor.
    for f in "$STATE"/gw-*.pid; do
        [[ -e "$f" ]] || continue
        name="$(basename "$f" .pid)"
        stop_daemon "$name" radosgw
    done
    stop_daemon rgw radosgw
    stop_daemon osd ceph-osd
    stop_daemon mon ceph-mon
}

do_stop() {
    [[ -d "$STATE" ]] || {
        echo "ceph: not running"
        return 0
    }
    exec 9>"$STATE/lock"
    flock 9
    local out
    out="$(stop_all)"
    echo "${out:-ceph: not running}"
}

do_wipe() {
    do_stop
    [[ -d "$STATE" ]] || return 0
    exec 9>"$STATE/lock"
    flock 9
    rm -rf "$STATE/mon" "$STATE/osd" "$STATE/osd-block" "$STATE"/rgw* "$STATE/run" "$LOGDIR" "$STATE/monmap" \
        "$STATE/keyring" "$CONF"
    echo "ceph: wiped $STATE"
}

do_status() {
    local name comm pid
    for name in mon:ceph-mon osd:ceph-osd rgw:radosgw; do
        comm="${name#*:}"
        if pid="$(pid_of "${name%%:*}" "$comm")"; then
            echo "ceph: $comm running (pid $pid)"
        else
            echo "ceph: $comm not running"
        fi
    done
    if store_up; then
        echo "ceph: S3 endpoint http://127.0.0.1:$(rgw_port)"
        return 0
    fi
    return 3
}

# One more radosgw on the running cluster, on its own port (given or free), with its
# own logs; the caller owns it (it may stop it by signal; `stop` also stops it). With
# --foreground the gateway replaces this script (same PID: the caller's child) and the
# caller waits for its port to answer.
do_gateway() {
    local foreground=0
    if [[ "${1:-}" == --foreground ]]; then
        foreground=1
        shift
    fi
    store_up || die "the store is not running (run.sh start)"
    local port="${1:-$(free_port)}" name
    name="gw-$port"
    mkdir -p "$STATE/rgw-$port"
    local cmd=(radosgw -c /cluster/ceph.conf -n client.rgw -f
        --rgw-frontends "beast endpoint=127.0.0.1:$port"
        --rgw-data "/cluster/rgw-$port"
        --admin-socket "/cluster/run/ceph-client.rgw-$port.asok"
        --log-file "/cluster/log/ceph-client.rgw-$port.log"
        --rgw-ops-log-file-path "/cluster/log/ops-rgw-$port.log")
    if ((foreground)); then
        echo $$ >"$STATE/$name.pid"
        exec 8>&- 9>&- </dev/null >>"$LOGDIR/$name.out" 2>&1
        exec "${IN_ROOT[@]}" "$CEPH_ROOT" "$STATE" "${cmd[@]}"
    fi
    spawn "$name" "${cmd[@]}"
    if ! wait_for "the gateway on port $port" 60 "$name" radosgw answers "$port"; then
        stop_daemon "$name" radosgw >/dev/null
        die "the gateway did not start (see $LOGDIR/ceph-client.rgw-$port.log)"
    fi
    echo "GATEWAY_ENDPOINT=http://127.0.0.1:$port"
    echo "GATEWAY_PID=$(cat "$STATE/$name.pid")"
}

do_requests() {
    local flush=() f port
    if store_up; then
        flush+=(--flush "http://127.0.0.1:$(rgw_port)")
    fi
    for f in "$STATE"/gw-*.pid; do
        [[ -e "$f" ]] || continue
        port="$(basename "$f" .pid)"
        port="${port#gw-}"
        pid_of "gw-$port" radosgw >/dev/null && flush+=(--flush "http://127.0.0.1:$port")
    done
    python3 "$HERE/requests.py" "${flush[@]}" "$@" "$LOGDIR"/ops-rgw*.log
}

case "${1:-}" in
install) do_install ;;
start) do_start ;;
stop) do_stop ;;
wipe) do_wipe ;;
status) do_status ;;
env)
    store_up || exit 3
    print_env
    ;;
gateway)
    shift
    do_gateway "$@"
    ;;
installed) installed ;;
requests)
    shift
    do_requests "$@"
    ;;
*)
    echo "usage: $0 install|installed|start|stop|status|env|wipe|gateway [--foreground] [PORT]|requests [--since T] [--until T] [--bucket B] [--json]" >&2
    exit 2
    ;;
esac
