#!/usr/bin/env bash
# make bench, browser part: a 256 MiB random file uploaded in the same headless Chromium by
#   - the built-in page (GET /),
#   - tus-js-client, one upload in 8 MiB PATCHes (no parallel uploads),
#   - Uppy with @uppy/tus, 8 MiB PATCHes,
# each against a fresh upload-server (release build), alternated, RUNS times (default 5: on this busy machine a CPU ratio swings by ±0.15 from run to run).
# Measured by scripts/webclients/page_bench.mjs, which drives Chromium over a bare DevTools pipe
# (no Network instrumentation, unlike playwright-core) and waits until the new browser is idle:
# the time from choosing the file to the client reporting completion, and the CPU time of every
# Chromium process meanwhile (from /proc), by process type.
# Progress goes to stderr; stdout is one README bench-table row (medians).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
WORK=${BENCH_DIR:-target/bench}
BIN=${BIN:-target/release}
MIB=${PAGE_BENCH_MIB:-256}
mkdir -p "$WORK"
bash scripts/webclients/setup.sh install >&2
FILE=$WORK/file-${MIB}m
[ -f "$FILE" ] || head -c $((MIB << 20)) /dev/urandom > "$FILE"
cat "$FILE" > /dev/null # from the page cache for every client

SPID=""
cleanup() { [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true; }
trap cleanup EXIT

# one CLIENT -> the driver's JSON line, against a fresh server (tus clients are cross-origin).
one() {
  # The old log goes first: the new server's redirection may not have truncated it yet when
  # the loop below reads it.
  rm -rf "$WORK/page-data" "$WORK/page-server.log"
  "$BIN/upload-server" --listen 127.0.0.1:0 --data-dir "$WORK/page-data" --cors-origin '*' > "$WORK/page-server.log" 2>&1 &
  SPID=$!
  local url=""
  for _ in $(seq 1 200); do
    url=$(grep -so 'http://[0-9.:]*' "$WORK/page-server.log" | head -1 || true)
    [ -n "$url" ] && break
    sleep 0.05
  done
  [ -n "$url" ] || { echo "upload-server did not start" >&2; cat "$WORK/page-server.log" >&2; exit 1; }
  sync
  local out
  out=$(node scripts/webclients/page_bench.mjs --client "$1" --url "$url" --file "$FILE" --chunk-size 8388608 --timeout 600) || {
    echo "page_bench.mjs --client $1 failed: $out" >&2; exit 1; }
  kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=""
  rm -rf "$WORK/page-data"
  echo "$out"
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }

declare -A S C
for run in $(seq 1 "$RUNS"); do
  line="page run $run:"
  for client in page tusjs uppy; do
    out=$(one "$client")
    S[$client]="${S[$client]:-} $(field "$out" seconds)"
    C[$client]="${C[$client]:-} $(field "$out" cpu_s_per_gb)"
    extra=""
    [ "$client" = page ] && extra=" (long main-thread tasks $(field "$out" long_tasks), PUTs in flight $(field "$out" stats))"
    extra="$extra CPU-s by process $(field "$out" cpu_by_process)"
    line="$line $client $(field "$out" mb_s) MB/s $(field "$out" cpu_s_per_gb) CPU-s/GB$extra;"
  done
  echo "$line" >&2
done

BYTES=$(stat -c %s "$FILE")
mbs() { python3 -c "import sys; print(f'{$BYTES/1e6/float(sys.argv[1]):.0f}')" "$(median ${S[$1]})"; }
cpu() { python3 -c "import sys; print(f'{float(sys.argv[1]):.1f}')" "$(median ${C[$1]})"; }
p=$(mbs page); t=$(mbs tusjs); u=$(mbs uppy)
pc=$(cpu page); tc=$(cpu tusjs); uc=$(cpu uppy)
ratio=$(python3 -c "print(f'{$p/$t:.2f}')")
cratio=$(python3 -c "print(f'{$pc/$tc:.2f}')")
echo "| (i) the built-in page in headless Chromium, ${MIB} MiB: the whole \`File\` in one request (a run of 16 MiB chunks), each chunk digested in a Worker (WebCrypto) and checked at completion | $p | vs tus-js-client in the same Chromium (one upload, 8 MiB PATCHes; same run: $t MB/s) = **$ratio**; Uppy + @uppy/tus (8 MiB): $u MB/s | Chromium CPU-s per GB: page $pc, tus-js-client $tc (**$cratio**), Uppy $uc |"
