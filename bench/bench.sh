#!/usr/bin/env bash
# make bench: throughput and memory of upload-server against ceilings measured in the
# same run on this machine. Prints a table and rewrites the README's bench table.
#
#   (a) durable disk ceiling: dd bs=8M conv=fdatasync into the data directory's disk
#   (b) hash ceiling:         openssl dgst -sha256
#   (c) server:               loadgen -> upload-server, 8 MiB chunks, 4 in flight,
#                             Content-Digest on every chunk, whole-file SHA-256 checked
#   (d) CLI end to end:       uploader -> upload-server, same shape
#   (f1-f4) S3: into the S3 store (Ceph RGW) vs aws s3 cp, with store requests per
#       chunk: loadgen -> upload-server, uploader -> upload-server, loadgen round-robin
#       over three upload-servers on one bucket, telling each other of their claims and
#       not (bench/s3.sh)
#   (g, h) tus: upload-server vs @tus/server, lean client and tus-js-client (bench/tus_bench.sh)
#   (j, k) the CLI over https, HTTP/2 and HTTP/1.1, vs plain http (bench/tls.sh)
#   (l) small files: 1,000 files of 16 KiB, uploader --transfers 8, files/s against an
#       fsync loop on the same disk; aws s3 cp --recursive as a reference (bench/small.sh)
#   (e) CLI resume cost:      Ctrl-C at half, then the same command: its wall time over
#                             the time (d) takes for the same remaining bytes
# Each is run RUNS times (default 3); the median is reported.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
WORK=${BENCH_DIR:-target/bench}
BIN=target/release
mkdir -p "$WORK"
FILE=$WORK/file-${SIZE_MIB}m
if [ ! -f "$FILE" ]; then
  echo "making a ${SIZE_MIB} MiB random file..."
  head -c $((SIZE_MIB << 20)) /dev/urandom > "$FILE"
fi
BYTES=$(stat -c %s "$FILE")

now() { date +%s.%N; }
mbs() { python3 -c "import sys; print(f'{$BYTES/1e6/float(sys.argv[1]):.0f}')" "$1"; }
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
hwm_mib() { awk '/VmHWM/{printf "%d", $2/1024}' "/proc/$1/status" 2>/dev/null || echo 0; }

start_server() { # start_server DATA_DIR -> sets SPID, SURL
  rm -rf "$1"; mkdir -p "$1"
  "$BIN/upload-server" --listen 127.0.0.1:0 --data-dir "$1" > "$WORK/server.log" 2>&1 &
  SPID=$!
  for _ in $(seq 1 200); do
    SURL=$(grep -o 'http://[0-9.:]*' "$WORK/server.log" | head -1 || true)
    [ -n "$SURL" ] && return 0
    sleep 0.05
  done
  echo "server did not start"; cat "$WORK/server.log"; exit 1
}
stop_server() { kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; }
trap 'stop_server 2>/dev/null || true' EXIT

cat "$FILE" > /dev/null  # warm the page cache: every contender reads from memory
A=(); B=(); C=(); CR=(); RB=(); RT=(); D=(); DR=(); E=()
for run in $(seq 1 "$RUNS"); do
  rm -f "$WORK/dd.out"; sync
  t0=$(now); dd if="$FILE" of="$WORK/dd.out" bs=8M conv=fdatasync status=none; t1=$(now)
  A+=("$(python3 -c "print($t1-$t0)")"); rm -f "$WORK/dd.out"

  t0=$(now); openssl dgst -sha256 "$FILE" > /dev/null; t1=$(now)
  B+=("$(python3 -c "print($t1-$t0)")")

  start_server "$WORK/data"; sync
  out=$("$BIN/loadgen" "$SURL" "$FILE" 8MiB 4)
  C+=("$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['seconds'])" "$out")")
  CR+=("$(hwm_mib "$SPID")")
  RB+=("$(grep -o 'read_back_at_completion=[0-9]*' "$WORK/server.log" | tail -1 | cut -d= -f2 || echo '?')")
  RT+=("$(grep -o 'read_back_total=[0-9]*' "$WORK/server.log" | tail -1 | cut -d= -f2 || echo '?')")
  stop_server

  if [ -x "$BIN/uploader" ] && "$BIN/uploader" --help > /dev/null 2>&1; then
    start_server "$WORK/data"; sync
    export UPLOADER_STATE_DIR="$WORK/cli-state"; rm -rf "$UPLOADER_STATE_DIR"
    t0=$(now)
    /usr/bin/time -f '%M' -o "$WORK/cli.rss" "$BIN/uploader" upload --server "$SURL" -j 4 --chunk-size 8MiB -q "$FILE" > /dev/null
    t1=$(now)
    D+=("$(python3 -c "print($t1-$t0)")")
    DR+=("$(( $(cat "$WORK/cli.rss") / 1024 ))")
    stop_server

    start_server "$WORK/data"; sync
    rm -rf "$UPLOADER_STATE_DIR"
    out=$(python3 bench/resume_cost.py "$BIN/uploader" "$SURL" "$FILE" "$UPLOADER_STATE_DIR")
    E+=("$(python3 -c "import json,sys; e=json.loads(sys.argv[1]); full=float(sys.argv[2]); print(e['resume_seconds']/(full*e['remaining_bytes']/$BYTES))" "$out" "${D[-1]}")")
    RESUME_JSON=$out
    stop_server
  fi
  echo "run $run: dd $(mbs "${A[-1]}") MB/s, openssl $(mbs "${B[-1]}") MB/s, server $(mbs "${C[-1]}") MB/s (RSS ${CR[-1]} MiB, read back at completion ${RB[-1]} B, during upload ${RT[-1]} B)${D:+, cli $(mbs "${D[-1]}") MB/s (RSS ${DR[-1]} MiB), resume cost ${E[-1]}}"
done
rm -rf "$WORK/data"

a=$(mbs "$(median "${A[@]}")"); b=$(mbs "$(median "${B[@]}")"); c=$(mbs "$(median "${C[@]}")")
ceil=$(( a < b ? a : b ))
ratio=$(python3 -c "print(f'{$c/$ceil:.2f}')")
rss=$(median "${CR[@]}" | cut -d. -f1)
rb=$(printf '%s\n' "${RB[@]}" | sort -n | tail -1)
rt=$(printf '%s\n' "${RT[@]}" | sort -n | tail -1)
load=$(cut -d' ' -f1-3 /proc/loadavg)
table="| what | MB/s (median of $RUNS) | ratio | peak RSS |
| --- | --- | --- | --- |
| (a) disk ceiling: \`dd bs=8M conv=fdatasync\` | $a | | |
| (b) hash ceiling: \`openssl dgst -sha256\` | $b | | |
| (c) upload-server ← loadgen, 8 MiB × 4, digests + whole-file SHA-256 | $c | c / min(a,b) = **$ratio** | server $rss MiB; whole-file hash: bytes read back at completion (max) $rb, read back in all (mostly from the page cache while uploading) $rt |"
if [ ${#D[@]} -gt 0 ]; then
  d=$(mbs "$(median "${D[@]}")")
  dratio=$(python3 -c "print(f'{$d/$ceil:.2f}')")
  drss=$(median "${DR[@]}" | cut -d. -f1)
  table="$table
| (d) uploader → upload-server, \`-j 4\`, 8 MiB, hashing on both sides | $d | d / min(a,b) = **$dratio** | CLI $drss MiB |
| (e) uploader resume after Ctrl-C at half: second run's time / (d)'s time for the same bytes | | **$(printf '%.2f' "$(median "${E[@]}")")** | last run: $RESUME_JSON |"
fi
if [ "${BENCH_S3:-1}" = 1 ]; then
  s3out=$(bash bench/s3.sh "$FILE")
  echo "$s3out"
  s3row() { # s3row ROW LABEL: one table row from bench/s3.sh's "S3 ROW ..." line
    local o a rss rb req areq copied fin spilled
    read -r _ _ o a rss rb req areq copied fin spilled <<< "$(echo "$s3out" | grep "^S3 $1 ")"
    echo "| ($1) $2 | $o | vs \`aws s3 cp\` (8 MiB × 4, same store, same run: $a MB/s) = **$(python3 -c "print(f'{$o/$a:.2f}')")** | server $rss MiB; store requests per chunk $req (aws s3 cp: $areq per part); bytes copied in the store $copied; completion $fin s; read back at completion $rb, spilled $spilled |"
  }
  table="$table
$(s3row f1 'loadgen → upload-server → S3 store (Ceph RGW), 8 MiB × 4, verified')
$(s3row f2 'uploader → upload-server → Ceph RGW, `-j 4`, 8 MiB')
$(s3row f3 'loadgen → three upload-servers on one bucket, chunks round-robin, telling each other of their claims → Ceph RGW')
$(s3row f4 'the same three servers with `--peer-url off` (reading the claims of the others from the store)')"
fi
if [ "${BENCH_TUS:-1}" = 1 ]; then
  tusout=$(bash bench/tus_bench.sh "$FILE")
  echo "$tusout"
  read -r _ tol trl toj trj torss trrss <<< "$(echo "$tusout" | grep '^TUS ')"
  table="$table
| (g) tus, 8 MiB PATCHes, lean client: upload-server (fsync + SHA-256) | $tol | vs @tus/server + @tus/file-store (neither; same run: $trl MB/s) = **$(python3 -c "print(f'{$tol/$trl:.2f}')")** | ours $torss MiB, @tus/server $trrss MiB (tus-js-client runs) |
| (h) tus end to end with tus-js-client | $toj | vs @tus/server ($trj MB/s) = **$(python3 -c "print(f'{$toj/$trj:.2f}')")** | |"
fi
[ "${BENCH_PAGE:-1}" = 1 ] && table="$table"$'\n'"$(bash bench/page.sh)"
if [ "${BENCH_TLS:-1}" = 1 ]; then table="$table"$'\n'"$(bash bench/tls.sh "$FILE")"; fi
if [ "${BENCH_SMALL:-1}" = 1 ]; then table="$table"$'\n'"$(bash bench/small.sh)"; fi
table="$table

Measured $(date -u +%Y-%m-%d) by \`make bench\` on $(nproc) cores, ${SIZE_MIB} MiB random file, load average $load."
echo
echo "$table"
if [ "${BENCH_UPDATE_README:-1}" = 1 ] && grep -q '<!-- bench:start -->' README.md; then
  python3 - "$table" <<'PY'
import re, sys
p = "README.md"; s = open(p).read()
s = re.sub(r"(<!-- bench:start -->\n).*?(\n<!-- bench:end -->)", lambda m: m.group(1) + sys.argv[1] + m.group(2), s, flags=re.S)
open(p, "w").write(s)
PY
  echo "(README.md table updated)"
fi
