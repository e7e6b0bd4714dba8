#!/usr/bin/env bash
# make bench, S3 part: 1 GiB through upload-server into the local S3-compatible server
# (moto), 8 MiB chunks, 4 in flight, against `aws s3 cp` of the same file into the same
# server with the same part size and concurrency, in the same run. Prints one line per
# run and a final line `S3 <ours MB/s> <aws MB/s> <server RSS MiB> <read back bytes>`.
set -euo pipefail
cd "$(dirname "$0")/.."
FILE=$1
RUNS=${RUNS:-3}
WORK=${BENCH_DIR:-target/bench}
BIN=target/release
TOOLS=target/tools
AWS_VENV=$TOOLS/aws-venv
BYTES=$(stat -c %s "$FILE")

if [ ! -x "$AWS_VENV/bin/aws" ]; then
  python3 -m venv "$AWS_VENV"
  "$AWS_VENV/bin/pip" install -q 'awscli==1.46.2'
fi
bash scripts/s3-server/run.sh install
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
unset AWS_CA_BUNDLE
"$AWS_VENV/bin/aws" configure set default.s3.multipart_chunksize 8MB
"$AWS_VENV/bin/aws" configure set default.s3.multipart_threshold 8MB
"$AWS_VENV/bin/aws" configure set default.s3.max_concurrent_requests 4

now() { date +%s.%N; }
S3PID=""; SPID=""
cleanup() {
  [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true
  bash scripts/s3-server/run.sh stop > /dev/null 2>&1 || true
}
trap cleanup EXIT

# Each client gets the store empty (moto holds every object in memory, and a full store
# is slower), in alternating order.
fresh() {
  bash scripts/s3-server/run.sh reset > /dev/null
  curl -s -o /dev/null -X PUT -H 'authorization: AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0' "$EP/$1"
}
run_aws() {
  fresh aws-bench
  t0=$(now)
  "$AWS_VENV/bin/aws" --endpoint-url "$EP" s3 cp --only-show-errors "$FILE" s3://aws-bench/file
  t1=$(now)
  AWS+=("$(python3 -c "print($t1-$t0)")")
}
run_ours() {
  fresh ours-bench
  "$BIN/upload-server" --listen 127.0.0.1:0 --storage s3 --s3-bucket ours-bench --s3-endpoint "$EP" \
    --s3-allow-http --inline-verify-limit 8GiB > "$WORK/s3-server.log" 2>&1 &
  SPID=$!
  for _ in $(seq 1 200); do
    SURL=$(grep -o 'http://[0-9.:]*' "$WORK/s3-server.log" | head -1 || true)
    [ -n "$SURL" ] && break
    sleep 0.05
  done
  out=$("$BIN/loadgen" "$SURL" "$FILE" 8MiB 4)
  OURS+=("$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['seconds'])" "$out")")
  RSS+=("$(awk '/VmHWM/{printf "%d", $2/1024}' /proc/$SPID/status)")
  RB+=("$(grep -o 'read_back_at_completion=[0-9]*' "$WORK/s3-server.log" | tail -1 | cut -d= -f2)")
  kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=""
}
OURS=(); AWS=(); RSS=(); RB=()
for run in $(seq 1 "$RUNS"); do
  # A fresh store per run: moto keeps objects in memory.
  bash scripts/s3-server/run.sh stop > /dev/null 2>&1 || true
  EP=$(bash scripts/s3-server/run.sh start | sed -n 's/^S3_ENDPOINT=//p')
  if [ $((run % 2)) -eq 1 ]; then run_aws; run_ours; else run_ours; run_aws; fi
  echo "s3 run $run: upload-server $(python3 -c "print(f'{$BYTES/1e6/${OURS[-1]}:.0f}')") MB/s (RSS ${RSS[-1]} MiB, read back ${RB[-1]} B), aws s3 cp $(python3 -c "print(f'{$BYTES/1e6/${AWS[-1]}:.0f}')") MB/s"
done
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
o=$(python3 -c "print(f'{$BYTES/1e6/$(median "${OURS[@]}"):.0f}')")
a=$(python3 -c "print(f'{$BYTES/1e6/$(median "${AWS[@]}"):.0f}')")
echo "S3 $o $a $(median "${RSS[@]}" | cut -d. -f1) $(printf '%s\n' "${RB[@]}" | sort -n | tail -1)"
