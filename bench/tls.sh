#!/usr/bin/env bash
# The bench's TLS rows: the uploader CLI over https against plain http, in the same run.
#
#   bench/tls.sh FILE      (bench/bench.sh calls it; RUNS, BENCH_DIR as there)
#
# For each of RUNS runs, one upload of FILE with `uploader -j 4 --chunk-size 8MiB` to a fresh
# release server: over plain http, over https with HTTP/2 (ALPN: every chunk on one
# connection), and over https with HTTP/1.1 only (`--http2 false`: four connections). The
# certificate comes from a throwaway CA made here with openssl. Progress goes to stderr;
# stdout gets the README table rows (medians), like the other rows of bench/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
FILE=${1:?usage: bench/tls.sh FILE}
RUNS=${RUNS:-3}
WORK=${BENCH_DIR:-target/bench}/tls
BIN=target/release
BYTES=$(stat -c %s "$FILE")
mkdir -p "$WORK"

now() { date +%s.%N; }
mbs() { python3 -c "import sys; print(f'{$BYTES/1e6/float(sys.argv[1]):.0f}')" "$1"; }
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
hwm_mib() { awk '/VmHWM/{printf "%d", $2/1024}' "/proc/$1/status" 2>/dev/null || echo 0; }

# A CA and a certificate for localhost that it signs.
CERTS=$WORK/certs
rm -rf "$CERTS"; mkdir -p "$CERTS"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$CERTS/ca.key" -out "$CERTS/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$CERTS/server.key" -out "$CERTS/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$CERTS/ext"
openssl x509 -req -in "$CERTS/server.csr" -CA "$CERTS/ca.pem" -CAkey "$CERTS/ca.key" -CAcreateserial \
  -days 2 -extfile "$CERTS/ext" -out "$CERTS/server.crt" 2>/dev/null

SPID=
start_server() { # start_server ARGS... -> sets SPID, SURL (https://localhost:PORT or http://ADDR)
  rm -rf "$WORK/data"; mkdir -p "$WORK/data"
  "$BIN/upload-server" --listen 127.0.0.1:0 --data-dir "$WORK/data" "$@" > "$WORK/server.log" 2>&1 &
  SPID=$!
  for _ in $(seq 1 200); do
    SURL=$(grep -o 'listening on https\?://[0-9.:]*' "$WORK/server.log" | head -1 | cut -d' ' -f3 || true)
    if [ -n "$SURL" ]; then
      case $SURL in https://*) SURL="https://localhost:${SURL##*:}" ;; esac
      return 0
    fi
    sleep 0.05
  done
  echo "server did not start" >&2; cat "$WORK/server.log" >&2; exit 1
}
# Returns 0 also when no server runs: as the EXIT trap, its status would be the script's.
stop_server() {
  if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; SPID=; fi
}
trap stop_server EXIT

upload() { # upload MODE -> appends seconds to T_MODE and the server's peak RSS to R_MODE
  local mode=$1; shift
  start_server "$@"; sync
  export UPLOADER_STATE_DIR="$WORK/cli-state"; rm -rf "$UPLOADER_STATE_DIR"
  local t0 t1; t0=$(now)
  "$BIN/uploader" upload --server "$SURL" --cacert "$CERTS/ca.pem" -j 4 --chunk-size 8MiB -q "$FILE" > /dev/null
  t1=$(now)
  eval "T_$mode+=(\"$(python3 -c "print($t1-$t0)")\")"
  eval "R_$mode+=(\"$(hwm_mib "$SPID")\")"
  stop_server
}

TLS=(--tls-cert "$CERTS/server.crt" --tls-key "$CERTS/server.key")
T_plain=(); T_h2=(); T_h1=(); R_plain=(); R_h2=(); R_h1=()
cat "$FILE" > /dev/null
for run in $(seq 1 "$RUNS"); do
  upload plain
  upload h2 "${TLS[@]}"
  upload h1 "${TLS[@]}" --http2 false
  echo "tls run $run: plain $(mbs "${T_plain[-1]}") MB/s (RSS ${R_plain[-1]} MiB), https h2 $(mbs "${T_h2[-1]}") MB/s (RSS ${R_h2[-1]} MiB), https http/1.1 $(mbs "${T_h1[-1]}") MB/s (RSS ${R_h1[-1]} MiB)" >&2
done
rm -rf "$WORK/data" "$WORK/cli-state"

plain=$(mbs "$(median "${T_plain[@]}")"); h2=$(mbs "$(median "${T_h2[@]}")"); h1=$(mbs "$(median "${T_h1[@]}")")
rss() { printf '%s\n' "$@" | sort -n | tail -1; }
ratio() { python3 -c "print(f'{$1/$plain:.2f}')"; }
echo "| (j) uploader → upload-server over https, HTTP/2 (every chunk on one connection), \`-j 4\`, 8 MiB | $h2 | vs plain http (same run: $plain MB/s) = **$(ratio "$h2")** | server $(rss "${R_h2[@]}") MiB (plain: $(rss "${R_plain[@]}") MiB) |"
echo "| (k) the same over https, HTTP/1.1 (four connections, \`--http2 false\`) | $h1 | vs plain http = **$(ratio "$h1")** | server $(rss "${R_h1[@]}") MiB |"
