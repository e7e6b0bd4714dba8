#!/usr/bin/env bash
# make bench, small files: a folder of 1,000 random files of 16 KiB (SMALL_FILES), RUNS
# times (default 3), medians:
#   - uploader -q upload --transfers 8 DIR -> upload-server (release build, local disk):
#     files/s, with the server's default limits;
#   - the same with the server's rate limit off (--rate-limit 0), and the 429s the default
#     limit answered: whether the limiter slowed a well-behaved client's folder;
#   - the fsync loop on the same disk (write 16 KiB, fsync, rename, fsync the directory),
#     files/s: what one durable file costs here, the baseline of the ratio;
#   - for reference, `aws s3 cp --recursive` of the folder into the S3 store (Ceph RGW, a
#     cluster of the bench's own, as bench/s3.sh does), 8 requests at once: files/s.
# Progress goes to stderr; stdout is one README bench-table row. Exits 1 when the upload
# is below MIN_RATIO (0.35) x the fsync loop.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
N=${SMALL_FILES:-1000}
WORK=${BENCH_DIR:-target/bench}/small
BIN=${BIN:-target/release}
AWS_VENV=${AWS_VENV:-target/tools/aws-venv}
MIN_RATIO=0.35
mkdir -p "$WORK"

DIR=$WORK/files
if [ "$(find "$DIR" -type f 2>/dev/null | wc -l)" != "$N" ]; then
  rm -rf "$DIR"; mkdir -p "$DIR"
  python3 - "$DIR" "$N" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(16 << 10))
PY
fi
cat "$DIR"/* > /dev/null # every contender reads from the page cache

SPID=""
CEPH_STARTED=""
CEPH="bash scripts/ceph/run.sh"
cleanup() {
  [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true
  [ -n "$CEPH_STARTED" ] && CEPH_STATE="$PWD/$WORK/ceph" $CEPH wipe > /dev/null 2>&1 || true
}
trap cleanup EXIT

now() { date +%s.%N; }
rate() { python3 -c "import sys; print(f'{$N/float(sys.argv[1]):.0f}')" "$1"; }
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }

# fsync_loop: seconds for N files of 16 KiB made durable one by one, next to the server's data.
fsync_loop() {
  rm -rf "$WORK/fsync"
  python3 - "$WORK/fsync" "$N" <<'PY'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d)
datas = [os.urandom(16 << 10) for _ in range(n)]
dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
t0 = time.monotonic()
for i, data in enumerate(datas):
    tmp = os.path.join(d, f".f{i}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, os.path.join(d, f"f{i}"))
    os.fsync(dfd)
print(time.monotonic() - t0)
PY
  rm -rf "$WORK/fsync"
}

# upload [SERVER ARGS...]: the folder through a fresh server; sets SECS and REFUSED (429s)
upload() {
  rm -rf "$WORK/data" "$WORK/server.log" "$WORK/cli-state"
  "$BIN/upload-server" --listen 127.0.0.1:0 --data-dir "$WORK/data" "$@" > "$WORK/server.log" 2>&1 &
  SPID=$!
  local url="" t0 t1 ids
  for _ in $(seq 1 200); do
    url=$(grep -so 'listening on http://[0-9.:]*' "$WORK/server.log" | head -1 | cut -d' ' -f3 || true)
    [ -n "$url" ] && break
    sleep 0.05
  done
  [ -n "$url" ] || { echo "upload-server did not start" >&2; cat "$WORK/server.log" >&2; exit 1; }
  sync
  t0=$(now)
  UPLOADER_STATE_DIR="$WORK/cli-state" "$BIN/uploader" -q upload --server "$url" --transfers 8 "$DIR" > "$WORK/ids"
  t1=$(now)
  ids=$(sort -u "$WORK/ids" | wc -l)
  [ "$ids" = "$N" ] || { echo "uploader printed $ids ids for $N files" >&2; exit 1; }
  REFUSED=$(grep -c 'status=429' "$WORK/server.log" || true)
  kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=""
  rm -rf "$WORK/data"
  SECS=$(python3 -c "print($t1-$t0)")
}

F=(); U=(); O=(); A=(); R429=()
# The local contenders first, with no S3 store running: its daemons' own syncs on the same
# disk would slow the fsync loop (and the server) by an amount that varies from run to run.
for run in $(seq 1 "$RUNS"); do
  F+=("$(fsync_loop)")
  upload; U+=("$SECS"); R429+=("$REFUSED")
  upload --rate-limit 0; O+=("$SECS")
  echo "small run $run: fsync loop $(rate "${F[-1]}") files/s, uploader $(rate "${U[-1]}") files/s (${R429[-1]} answers 429), rate limit off $(rate "${O[-1]}") files/s" >&2
done

AWS=""
if [ "${BENCH_S3:-1}" = 1 ]; then
  if [ ! -x "$AWS_VENV/bin/aws" ]; then
    python3 -m venv "$AWS_VENV"
    "$AWS_VENV/bin/pip" install -q 'awscli==1.46.2'
  fi
  # A cluster of the bench's own, as bench/s3.sh: a test store of the checkout is left alone.
  export CEPH_STATE="$PWD/$WORK/ceph"
  $CEPH install >&2
  $CEPH wipe > /dev/null
  CEPH_STARTED=1
  eval "$($CEPH start)"
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_DEFAULT_REGION=$AWS_REGION
  unset AWS_CA_BUNDLE
  export AWS_CONFIG_FILE="$PWD/$WORK/aws-config"
  "$AWS_VENV/bin/aws" configure set default.s3.max_concurrent_requests 8
  aws() { "$AWS_VENV/bin/aws" --endpoint-url "$S3_ENDPOINT" "$@"; }
  # A new cluster is slow at first: an untimed copy of the folder before the timed ones.
  aws s3 mb s3://small-warmup > /dev/null
  aws s3 cp --only-show-errors --recursive "$DIR" s3://small-warmup/files
  aws s3 rb --force s3://small-warmup > /dev/null
fi
aws_copy() { # aws_copy RUN: seconds
  local bucket=small-bench-$1 t0 t1
  aws s3 mb "s3://$bucket" > /dev/null
  t0=$(now)
  aws s3 cp --only-show-errors --recursive "$DIR" "s3://$bucket/files"
  t1=$(now)
  aws s3 rb --force "s3://$bucket" > /dev/null
  python3 -c "print($t1-$t0)"
}

if [ -n "$CEPH_STARTED" ]; then
  for run in $(seq 1 "$RUNS"); do
    A+=("$(aws_copy "$run")")
    echo "small run $run: aws s3 cp --recursive $(rate "${A[-1]}") files/s" >&2
  done
  CEPH_STATE="$PWD/$WORK/ceph" $CEPH wipe > /dev/null
  CEPH_STARTED=""
fi

f=$(rate "$(median "${F[@]}")"); u=$(rate "$(median "${U[@]}")"); o=$(rate "$(median "${O[@]}")")
ratio=$(python3 -c "print(f'{$u/$f:.2f}')")
refused=$(printf '%s\n' "${R429[@]}" | sort -n | tail -1)
if [ ${#A[@]} -gt 0 ]; then
  AWS="; \`aws s3 cp --recursive\` of the folder into the S3 store (Ceph RGW, 8 at once): $(rate "$(median "${A[@]}")") files/s"
fi
echo "| (l) $N files of 16 KiB: \`uploader -q upload --transfers 8 DIR\` → upload-server (local disk), one request a file | $u files/s | vs the fsync loop on the same disk (write 16 KiB, fsync, rename, fsync the directory; same run: $f files/s) = **$ratio** (≥ $MIN_RATIO) | rate limit off: $o files/s; 429s at the default limit: $refused (max of $RUNS)$AWS |"
if python3 -c "import sys; sys.exit(0 if $u / $f >= $MIN_RATIO else 1)"; then
  exit 0
fi
echo "small files: $u files/s is below $MIN_RATIO x the fsync loop's $f files/s" >&2
exit 1
