#!/usr/bin/env bash
# make bench, S3 part: FILE through upload-server into the S3 store (Ceph RGW, a cluster
# of the bench's own under $WORK/ceph, started empty and stopped afterwards), 8 MiB
# chunks, 4 in flight (loadgen), against `aws s3 cp` of the same file into the same store
# with the same part size and concurrency, alternated, RUNS times. Store requests are
# counted by operation from RGW's ops log, per bucket.
#
# Prints one line per run and a final line
#   S3 <ours MB/s> <aws MB/s> <server RSS MiB> <read back bytes> <ours store requests per
#      chunk> <aws store requests per part> <bytes copied in the store, max>
# and the last run's requests by operation (lines starting with "requests").
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
SPID=""
cleanup() {
  if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; fi
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
# requests BUCKET -> "total copied_bytes by-operation-json"
requests() {
  $CEPH requests --json --bucket "$1" | python3 -c '
import json, sys
r = json.load(sys.stdin)
ops = " ".join(f"{k}={v}" for k, v in sorted(r["operations"].items(), key=lambda kv: -kv[1]))
print(r["total"], r["copied_bytes"], ops)'
}
# The bucket's objects deleted (freed by RGW's garbage collection within a minute), so
# that three runs of 1 GiB each fit the store's sparse file many times over.
empty() { aws s3 rb --force "s3://$1" > /dev/null; }

run_aws() {
  local bucket=aws-bench-$1
  aws s3 mb "s3://$bucket" > /dev/null
  t0=$(now)
  aws s3 cp --only-show-errors "$FILE" "s3://$bucket/file"
  t1=$(now)
  AWS+=("$(python3 -c "print($t1-$t0)")")
  read -r total _ ops <<< "$(requests "$bucket")"
  AREQ+=("$total")
  AOPS=$ops
  empty "$bucket"
}
run_ours() {
  local bucket=ours-bench-$1
  aws s3 mb "s3://$bucket" > /dev/null
  "$BIN/upload-server" --listen 127.0.0.1:0 --data-dir "$WORK/s3-data" --storage s3 \
    --s3-bucket "$bucket" --s3-endpoint "$EP" --s3-region "$AWS_REGION" --s3-allow-http \
    --inline-verify-limit 8GiB > "$WORK/s3-server.log" 2>&1 &
  SPID=$!
  for _ in $(seq 1 200); do
    SURL=$(grep -o 'http://[0-9.:]*' "$WORK/s3-server.log" | head -1 || true)
    [ -n "$SURL" ] && break
    sleep 0.05
  done
  [ -n "$SURL" ] || { cat "$WORK/s3-server.log"; echo "upload-server did not start"; exit 1; }
  out=$("$BIN/loadgen" "$SURL" "$FILE" 8MiB 4)
  OURS+=("$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['seconds'])" "$out")")
  RSS+=("$(awk '/VmHWM/{printf "%d", $2/1024}' /proc/$SPID/status)")
  RB+=("$(grep -o 'read_back_at_completion=[0-9]*' "$WORK/s3-server.log" | tail -1 | cut -d= -f2 || echo 0)")
  kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=""
  read -r total copied ops <<< "$(requests "$bucket")"
  OREQ+=("$total"); COPIED+=("$copied")
  OOPS=$ops
  empty "$bucket"
}

mbs() { python3 -c "import sys; print(f'{$BYTES/1e6/float(sys.argv[1]):.0f}')" "$1"; }
per() { python3 -c "import sys; print(f'{float(sys.argv[1])/$CHUNKS:.2f}')" "$1"; }
OURS=(); AWS=(); RSS=(); RB=(); OREQ=(); AREQ=(); COPIED=(); OOPS=""; AOPS=""
for run in $(seq 1 "$RUNS"); do
  if [ $((run % 2)) -eq 1 ]; then run_aws "$run"; run_ours "$run"; else run_ours "$run"; run_aws "$run"; fi
  echo "s3 run $run: upload-server $(mbs "${OURS[-1]}") MB/s (RSS ${RSS[-1]} MiB, read back ${RB[-1]} B, $(per "${OREQ[-1]}") store requests per chunk, ${COPIED[-1]} B copied), aws s3 cp $(mbs "${AWS[-1]}") MB/s ($(per "${AREQ[-1]}") requests per part)"
done
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
echo "requests upload-server (last run): $OOPS"
echo "requests aws s3 cp (last run): $AOPS"
echo "S3 $(mbs "$(median "${OURS[@]}")") $(mbs "$(median "${AWS[@]}")") $(median "${RSS[@]}" | cut -d. -f1) $(printf '%s\n' "${RB[@]}" | sort -n | tail -1) $(per "$(median "${OREQ[@]}")") $(per "$(median "${AREQ[@]}")") $(printf '%s\n' "${COPIED[@]}" | sort -n | tail -1)"
