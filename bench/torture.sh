#!/usr/bin/env bash
# `make torture`: the long reliability pass. Runs the crash loop for many rounds and puts
# its figures in README.md (between the torture markers) and target/torture/.
#
#   CRASH_ROUNDS (default 200), CRASH_S3_ROUNDS (20), CRASH_SIZE_MIB (256), CRASH_SEED (the
#   time) as for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CRASH_ROUNDS=${CRASH_ROUNDS:-200} CRASH_S3_ROUNDS=${CRASH_S3_ROUNDS:-20}
# The S3 variant needs the local S3-compatible server (make s3-install).
bash scripts/s3-server/run.sh install
rm -f target/torture/crash-loop.md target/torture/crash-loop-s3.md
S3_REQUIRED=1 cargo test -q -p tests --test crash_loop -- --nocapture --test-threads 1
for report in target/torture/crash-loop.md target/torture/crash-loop-s3.md; do
  [ -f "$report" ] || { echo "torture: no report at $report" >&2; exit 1; }
done
table="$(cat target/torture/crash-loop.md)

$(cat target/torture/crash-loop-s3.md)
Measured $(date -u +%Y-%m-%d) by \`make torture\` on $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)."
echo "$table"
if grep -q '<!-- torture:start -->' README.md; then
  python3 - "$table" <<'PY'
import re, sys
p = "README.md"; s = open(p).read()
s = re.sub(r"(<!-- torture:start -->\n).*?(\n<!-- torture:end -->)", lambda m: m.group(1) + sys.argv[1] + m.group(2), s, flags=re.S)
open(p, "w").write(s)
PY
  echo "(README.md torture table updated)"
fi
