#!/usr/bin/env bash
# Run every web-client driver flow against a tus server and print one line per flow.
#
#   scripts/webclients/validate.sh                 # against @tus/server + @tus/file-store, started here
#   scripts/webclients/validate.sh --endpoint URL  # against a running server (e.g. upload-server's /files/)
#
# Against the reference server each flow has an expected outcome: @tus/file-store has no
# concatenation (parallelUploads -> 501), no checksum extension (a wrong Upload-Checksum is
# accepted with 204) and no IETF draft (412 "Tus-Resumable Required"); those show as XFAIL.
# Against --endpoint every flow is expected to pass. Successful uploads into the reference server
# are checked byte for byte (SHA-256 of the stored file). Exit 1 if any flow is not as expected.
# Env: SIZE_MIB (default 20), ARTIFACTS (default target/webclients-artifacts) for the screenshot.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLS=${WEBCLIENTS_TOOLS:-$ROOT/target/tools}
PY=$TOOLS/tus-venv/bin/python
ARTIFACTS=${ARTIFACTS:-$ROOT/target/webclients-artifacts}
ENDPOINT=""
[ "${1:-}" = "--endpoint" ] && ENDPOINT=${2:?--endpoint needs a URL}

"$HERE/setup.sh" status >/dev/null || { echo "validate.sh: tools missing; run scripts/webclients/setup.sh install" >&2; exit 2; }

WORK=$(mktemp -d)
SPID=""
cleanup() { [ -n "$SPID" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

FILE=$WORK/upload.bin
head -c $(( ${SIZE_MIB:-20} * 1048576 )) /dev/urandom >"$FILE"
SHA=$(sha256sum "$FILE" | cut -d' ' -f1)

STORE=""
if [ -z "$ENDPOINT" ]; then
  STORE=$WORK/store
  node "$HERE/reference-tus-server.mjs" --dir "$STORE" >"$WORK/server.json" 2>"$WORK/server.err" &
  SPID=$!
  for _ in $(seq 1 100); do [ -s "$WORK/server.json" ] && break; sleep 0.1; done
  [ -s "$WORK/server.json" ] || { echo "reference server did not start: $(cat "$WORK/server.err")" >&2; exit 1; }
  ENDPOINT=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).endpoint)' "$WORK/server.json")
  echo "reference server: $(cat "$WORK/server.json")"
fi

field() { node -e 'const d=JSON.parse(process.argv[1]); const v=d[process.argv[2]]; console.log(v===undefined||v===null?"":v)' "$1" "$2" 2>/dev/null; }
bad=0
# flow NAME EXPECT(pass|xfail:STATUS) CMD...
flow() {
  local name=$1 expect=$2; shift 2
  local t0 out rc ok status url note=""
  t0=$(date +%s.%N)
  out=$(timeout 300 "$@" 2>"$WORK/err"); rc=$?
  local secs; secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')
  [ -n "$out" ] || out='{"ok":false,"error":"no output"}'
  ok=$(field "$out" ok); status=$(field "$out" status); url=$(field "$out" url)
  if [ "$ok" = true ] && [ $rc = 0 ] && [ -n "$STORE" ] && [ -n "$url" ] && [ "$(field "$out" complete)" != false ]; then
    local f="$STORE/${url##*/}"
    if [ -f "$f" ] && [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$SHA" ]; then note="sha256-ok"; else note="SHA256-MISMATCH"; ok=false; fi
  fi
  local verdict
  if [ "$expect" = pass ] || [ -z "$STORE" ]; then
    [ "$ok" = true ] && [ $rc = 0 ] && verdict=PASS || { verdict=FAIL; bad=1; }
  else
    local want=${expect#xfail:}
    if [ "$ok" != true ] && [ "$status" = "$want" ]; then verdict="XFAIL(expected: $want)"; else verdict="UNEXPECTED"; bad=1; fi
  fi
  printf '%-34s %-22s %5.1fs %s\n' "$name" "$verdict" "$secs" "$note"
  if [ "${VERBOSE:-0}" = 1 ] || [[ $verdict == FAIL || $verdict == UNEXPECTED ]]; then echo "    $out" | cut -c1-1200; fi
}

J="node $HERE/tusjs.mjs --endpoint $ENDPOINT --file $FILE"
P="$PY $HERE/tuspy_client.py --endpoint $ENDPOINT --file $FILE"
flow "tusjs single"                     pass          $J
flow "tusjs single chunk 8MiB"          pass          $J --chunk-size 8388608
flow "tusjs parallelUploads 4"          xfail:501     $J --parallel 4 --chunk-size 4194304
flow "tusjs interrupt@0.4 + resume"     pass          $J --interrupt-at 0.4 --chunk-size 4194304
flow "tusjs interrupt@0.5 (one PATCH)"  pass          $J --interrupt-at 0.5
flow "tusjs checksum mismatch (460)"    xfail:204     $J --checksum-mismatch --chunk-size 4194304
flow "tusjs protocol ietf-draft-05"     xfail:412     $J --protocol ietf-draft-05
flow "tusjs protocol ietf-draft-03"     xfail:412     $J --protocol ietf-draft-03
flow "tuspy checksum sha1"              pass          $P --checksum
flow "tuspy checksum sha256"            pass          $P --checksum --checksum-algorithm sha256 --chunk-size 3000000
# tuspy: stop after 2 chunks, then resume from the stored URL in a new process.
out=$(timeout 120 $P --checksum --chunk-size 4194304 --stop-after-chunks 2 2>/dev/null)
rurl=$(field "$out" url)
flow "tuspy resume from stored URL"     pass          $P --checksum --chunk-size 4194304 --resume-url "${rurl:-missing}"
mkdir -p "$ARTIFACTS"
flow "uppy in headless chromium"        pass          node "$HERE/uppy.mjs" --endpoint "$ENDPOINT" --file "$FILE" --screenshot "$ARTIFACTS/uppy.png"
flow "uppy resume via HEAD (2nd Uppy)"  pass          node "$HERE/uppy.mjs" --endpoint "$ENDPOINT" --file "$FILE" --upload-twice
exit $bad
