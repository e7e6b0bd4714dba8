#!/usr/bin/env bash
# make bench, tus part: FILE over tus in 8 MiB PATCHes into upload-server (fsync'd and
# SHA-256-verified) and into @tus/server with @tus/file-store (neither), in the same run:
# once with a lean client (bench/tus_lean.py) so that the servers are the bottleneck, once
# end to end with tus-js-client. Prints per-run lines and a final line
# `TUS <ours lean> <ref lean> <ours tusjs> <ref tusjs> <our RSS MiB> <ref RSS MiB>` (MB/s).
set -euo pipefail
cd "$(dirname "$0")/.."
FILE=$1
RUNS=${RUNS:-3}
WORK=${BENCH_DIR:-target/bench}
BIN=target/release
BYTES=$(stat -c %s "$FILE")
bash scripts/webclients/setup.sh install

mbs() { python3 -c "import sys; print(f'{$BYTES/1e6/float(sys.argv[1]):.0f}')" "$1"; }
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
hwm_mib() { awk '/VmHWM/{printf "%d", $2/1024}' "/proc/$1/status" 2>/dev/null || echo 0; }
SPID=""
cleanup() { [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true; }
trap cleanup EXIT

start_ours() {
  rm -rf "$WORK/tus-data"
  "$BIN/upload-server" --listen 127.0.0.1:0 --data-dir "$WORK/tus-data" > "$WORK/tus-server.log" 2>&1 &
  SPID=$!
  for _ in $(seq 1 200); do
    URL=$(grep -o 'http://[0-9.:]*' "$WORK/tus-server.log" | head -1 || true)
    [ -n "$URL" ] && { EP="$URL/files/"; return 0; }
    sleep 0.05
  done
  echo "upload-server did not start"; exit 1
}
start_ref() {
  rm -rf "$WORK/tus-ref"; mkdir -p "$WORK/tus-ref"
  node scripts/webclients/reference-tus-server.mjs --dir "$WORK/tus-ref" > "$WORK/tus-ref.log" 2>&1 &
  SPID=$!
  for _ in $(seq 1 200); do
    EP=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['endpoint'])" "$WORK/tus-ref.log" 2>/dev/null || true)
    [ -n "$EP" ] && return 0
    sleep 0.05
  done
  echo "@tus/server did not start"; cat "$WORK/tus-ref.log"; exit 1
}
stop() { kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=""; }
lean() { python3 bench/tus_lean.py "$EP" "$FILE" 8388608 | python3 -c "import json,sys; print(json.load(sys.stdin)['seconds'])"; }
tusjs() { node scripts/webclients/tusjs.mjs --endpoint "$EP" --file "$FILE" --chunk-size 8388608 --no-sha256 --timeout 600 | python3 -c "import json,sys; print(json.load(sys.stdin)['elapsed_s'])"; }

OL=(); RL=(); OJ=(); RJ=(); ORSS=(); RRSS=()
for run in $(seq 1 "$RUNS"); do
  start_ours; sync; OL+=("$(lean)"); stop
  start_ref; sync; RL+=("$(lean)"); stop
  start_ours; sync; OJ+=("$(tusjs)"); ORSS+=("$(hwm_mib "$SPID")"); stop
  start_ref; sync; RJ+=("$(tusjs)"); RRSS+=("$(hwm_mib "$SPID")"); stop
  echo "tus run $run: lean: ours $(mbs "${OL[-1]}") / @tus/server $(mbs "${RL[-1]}") MB/s; tus-js-client: ours $(mbs "${OJ[-1]}") / @tus/server $(mbs "${RJ[-1]}") MB/s; RSS ours ${ORSS[-1]} / @tus/server ${RRSS[-1]} MiB"
done
echo "TUS $(mbs "$(median "${OL[@]}")") $(mbs "$(median "${RL[@]}")") $(mbs "$(median "${OJ[@]}")") $(mbs "$(median "${RJ[@]}")") $(median "${ORSS[@]}" | cut -d. -f1) $(median "${RRSS[@]}" | cut -d. -f1)"
