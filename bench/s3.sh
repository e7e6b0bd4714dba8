#!/usr/bin/env bash
# make bench, S3 part: FILE into the S3 store (Ceph RGW, a cluster of the bench's own under
# $WORK/ceph, started empty and stopped afterwards), 8 MiB chunks, 4 in flight, three ways,
# each against `aws s3 cp` of the same file into the same store with the same part size
# and concurrency, in the same run:
#   f1  loadgen -> one upload-server
#   f2  the uploader CLI -> one upload-server
#   f3  loadgen -> three upload-servers on one bucket, chunks spread round-robin, the
#       servers telling each other of their claims (the default)
#   f4  the same with `--peer-url off`: each server reads the others' claims from the store
# RUNS times (default 3), the order rotated each run so that no contender always goes
# first; medians reported. Each contender writes a bucket of its own, so store requests are
# counted by operation from RGW's ops log for that bucket (the bucket's creation left out).
#
# Prints one line per run and contender, the last run's requests by operation (lines
# starting with "requests"), and one final line per row:
#   S3 <row> <MB/s> <aws MB/s> <server peak RSS MiB, max over servers> <read back at
#      completion, max> <store requests per chunk> <aws requests per part> <bytes copied
#      in the store, max> <completion seconds> <bytes spilled, max>
# The completion time is that of the complete request, from its sending to the completed
# state (loadgen's `complete_seconds`); for the CLI, which does not report it, the
# server's own verification time (`upload_verification_duration_seconds`).
set -euo pipefail
cd "$(dirname "$0")/.."
FILE=$1
RUNS=${RUNS:-3}
WORK=${BENCH_DIR:-target/bench}
BIN=target/release
AWS_VENV=target/tools/aws-venv
BYTES=$(stat -c %s "$FILE")
CHUNK=$((8 << 20))
CHUNKS=$(((BYTES + CHUNK - 1) / CHUNK))
mkdir -p "$WORK"

if [ ! -x "$AWS_VENV/bin/aws" ]; then
  python3 -m venv "$AWS_VENV"
  "$AWS_VENV/bin/pip" install -q 'awscli==1.46.2'
fi
# A cluster of the bench's own: a test store of the checkout is left alone, and the
# gigabytes written here go when it is wiped.
export CEPH_STATE="$PWD/$WORK/ceph"
CEPH="bash scripts/ceph/run.sh"
$CEPH install
$CEPH wipe > /dev/null
SPIDS=()
cleanup() {
  local p
  for p in "${SPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  $CEPH wipe > /dev/null 2>&1 || true
}
trap cleanup EXIT
eval "$($CEPH start)"
EP=$S3_ENDPOINT
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_DEFAULT_REGION=$AWS_REGION
unset AWS_CA_BUNDLE
export AWS_CONFIG_FILE="$PWD/$WORK/aws-config"
"$AWS_VENV/bin/aws" configure set default.s3.multipart_chunksize 8MiB
"$AWS_VENV/bin/aws" configure set default.s3.multipart_threshold 8MiB
"$AWS_VENV/bin/aws" configure set default.s3.max_concurrent_requests 4
aws() { "$AWS_VENV/bin/aws" --endpoint-url "$EP" "$@"; }

now() { date +%s.%N; }
# requests BUCKET -> "total copied_bytes by-operation" (the harness's CreateBucket left out)
requests() {
  $CEPH requests --json --bucket "$1" | python3 -c '
import json, sys
r = json.load(sys.stdin)
ops = {k: v for k, v in r["operations"].items() if k != "CreateBucket"}
desc = " ".join(f"{k}={v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1]))
print(sum(ops.values()), r["copied_bytes"], desc)'
}
# The bucket's objects deleted (freed by RGW's garbage collection within a minute), so
# that every run's gigabytes fit the store's sparse file many times over.
empty() { aws s3 rb --force "s3://$1" > /dev/null; }

# start_servers N BUCKET [FLAG...]: N upload-servers on BUCKET -> SPIDS, SURLS
# (comma-separated)
start_servers() {
  local n=$1 bucket=$2 i url log
  shift 2
  SPIDS=(); SURLS=""
  for i in $(seq 1 "$n"); do
    log="$WORK/s3-server-$i.log"
    # Emptied before the start, so that the poll below cannot read an earlier run's URL.
    rm -rf "$WORK/s3-data-$i" "$log"
    "$BIN/upload-server" --listen 127.0.0.1:0 --data-dir "$WORK/s3-data-$i" --storage s3 \
      --s3-bucket "$bucket" --s3-endpoint "$EP" --s3-region "$AWS_REGION" --s3-allow-http \
      --inline-verify-limit 8GiB "$@" > "$log" 2>&1 &
    SPIDS+=("$!")
    url=""
    for _ in $(seq 1 200); do
      url=$(grep -so 'listening on http://[0-9.:]*' "$log" | head -1 | cut -d' ' -f3 || true)
      [ -n "$url" ] && break
      sleep 0.05
    done
    [ -n "$url" ] || { cat "$log"; echo "upload-server did not start"; exit 1; }
    SURLS="${SURLS:+$SURLS,}$url"
  done
}
# metric NAME: the sum of the series NAME (any labels) over the running servers
metric() {
  local url sum=0 v
  for url in ${SURLS//,/ }; do
    v=$(curl -fsS "$url/metrics" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%.0f", s * 1000 }')
    sum=$((sum + v))
  done
  python3 -c "print($sum / 1000)"
}
# stop_servers: records the servers' peak RSS (max), read back at completion (max),
# spilled bytes and verification seconds, then stops them
stop_servers() {
  local p rss=0 r rb=0 b i
  for p in "${SPIDS[@]}"; do
    r=$(awk '/VmHWM/{printf "%d", $2/1024}' "/proc/$p/status")
    [ "$r" -gt "$rss" ] && rss=$r
  done
  for i in $(seq 1 "${#SPIDS[@]}"); do
    b=$(grep -o 'read_back_at_completion=[0-9]*' "$WORK/s3-server-$i.log" | tail -1 | cut -d= -f2 || true)
    [ -n "$b" ] && [ "$b" -gt "$rb" ] && rb=$b
  done
  S_RSS=$rss; S_RB=$rb
  S_SPILLED=$(metric upload_spilled_bytes_total | cut -d. -f1)
  S_VERIFY=$(metric upload_verification_duration_seconds_sum)
  for p in "${SPIDS[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
  SPIDS=()
}

declare -A SECS RSS RB REQ COPIED DONE SPILLED OPS
# record ROW SECONDS COMPLETE_SECONDS BUCKET: appends a run's figures for ROW
record() {
  local row=$1 total copied ops
  read -r total copied ops <<< "$(requests "$4")"
  SECS[$row]+="$2 "; REQ[$row]+="$total "; COPIED[$row]+="$copied "; OPS[$row]=$ops
  DONE[$row]+="$3 "
  if [ "$row" != aws ]; then
    RSS[$row]+="$S_RSS "; RB[$row]+="$S_RB "; SPILLED[$row]+="$S_SPILLED "
  fi
  empty "$4"
}

run_aws() {
  local bucket=aws-bench-$1 t0 t1
  aws s3 mb "s3://$bucket" > /dev/null
  t0=$(now)
  aws s3 cp --only-show-errors "$FILE" "s3://$bucket/file"
  t1=$(now)
  record aws "$(python3 -c "print($t1-$t0)")" 0 "$bucket"
}
# run_loadgen ROW SERVERS RUN [FLAG...]
run_loadgen() {
  local row=$1 n=$2 bucket=$1-bench-$3 out secs csecs
  shift 3
  aws s3 mb "s3://$bucket" > /dev/null
  start_servers "$n" "$bucket" "$@"
  out=$("$BIN/loadgen" "$SURLS" "$FILE" 8MiB 4)
  stop_servers
  read -r secs csecs <<< "$(python3 -c "import json,sys; j=json.loads(sys.argv[1]); print(j['seconds'], j['complete_seconds'])" "$out")"
  record "$row" "$secs" "$csecs" "$bucket"
}
run_cli() {
  local bucket=f2-bench-$1 t0 t1
  aws s3 mb "s3://$bucket" > /dev/null
  start_servers 1 "$bucket"
  export UPLOADER_STATE_DIR="$WORK/cli-state"; rm -rf "$UPLOADER_STATE_DIR"
  t0=$(now)
  "$BIN/uploader" upload --server "$SURLS" -j 4 --chunk-size 8MiB -q "$FILE" > /dev/null
  t1=$(now)
  stop_servers
  record f2 "$(python3 -c "print($t1-$t0)")" "$S_VERIFY" "$bucket"
}

mbs() { python3 -c "import sys; print(f'{$BYTES/1e6/float(sys.argv[1]):.0f}')" "$1"; }
per() { python3 -c "import sys; print(f'{float(sys.argv[1])/$CHUNKS:.2f}')" "$1"; }
last() { local a=($1); echo "${a[-1]}"; }
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" $1; }
maxof() { printf '%s\n' $1 | sort -n | tail -1; }
report() { # report ROW RUN
  local row=$1
  if [ "$row" = aws ]; then
    echo "s3 run $2 aws s3 cp: $(mbs "$(last "${SECS[aws]}")") MB/s, $(per "$(last "${REQ[aws]}")") requests per part"
  else
    echo "s3 run $2 $row: $(mbs "$(last "${SECS[$row]}")") MB/s, RSS $(last "${RSS[$row]}") MiB, read back $(last "${RB[$row]}") B, $(per "$(last "${REQ[$row]}")") store requests per chunk, $(last "${COPIED[$row]}") B copied, $(last "${SPILLED[$row]}") B spilled, completion $(last "${DONE[$row]}") s"
  fi
}

cat "$FILE" > /dev/null  # every contender reads from the page cache
# A new cluster is slow at first (its first writes took 3-4 times as long as later ones,
# some over 3 s): an untimed upload first, so that no contender pays for the warm-up.
aws s3 mb s3://bench-warmup > /dev/null
head -c $((64 << 20)) "$FILE" | aws s3 cp --only-show-errors - s3://bench-warmup/file
empty bench-warmup
ORDER=(aws f1 f2 f3 f4)
for run in $(seq 1 "$RUNS"); do
  for k in 0 1 2 3 4; do
    row=${ORDER[$(((k + run - 1) % 5))]}
    case $row in
      aws) run_aws "$run" ;;
      f1) run_loadgen f1 1 "$run" ;;
      f2) run_cli "$run" ;;
      f3) run_loadgen f3 3 "$run" ;;
      f4) run_loadgen f4 3 "$run" --peer-url off ;;
    esac
    report "$row" "$run"
  done
done
for row in f1 f2 f3 f4 aws; do echo "requests $row (last run): ${OPS[$row]}"; done
for row in f1 f2 f3 f4; do
  echo "S3 $row $(mbs "$(median "${SECS[$row]}")") $(mbs "$(median "${SECS[aws]}")") $(maxof "${RSS[$row]}") $(maxof "${RB[$row]}") $(per "$(median "${REQ[$row]}")") $(per "$(median "${REQ[aws]}")") $(maxof "${COPIED[$row]}") $(printf '%.2f' "$(median "${DONE[$row]}")") $(maxof "${SPILLED[$row]}")"
done
