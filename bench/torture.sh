#!/usr/bin/env bash
# `make torture`: the long reliability pass. Runs the crash loops for many rounds, the
# power-cut check and a 10-minute soak, and puts their figures in README.md (between the
# torture markers) and target/torture/.
#
#   CRASH_ROUNDS (default 200), CRASH_S3_ROUNDS (20), CRASH_SIZE_MIB (256), CRASH_SEED (the
#   time), POWER_CUT_SEEDS (5000), SOAK_SECS (600) as for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CRASH_ROUNDS=${CRASH_ROUNDS:-200} CRASH_S3_ROUNDS=${CRASH_S3_ROUNDS:-20}
export POWER_CUT_SEEDS=${POWER_CUT_SEEDS:-5000}
# The S3 variant needs the local S3-compatible server (make s3-install).
bash scripts/s3-server/run.sh install
reports="crash-loop crash-loop-s3 power-cut power-cut-replay soak"
for r in $reports; do rm -f "target/torture/$r.md"; done
S3_REQUIRED=1 cargo test -q -p tests --test crash_loop -- --nocapture --test-threads 1
STRACE_REQUIRED=1 cargo test -q -p tests --test power_cut -- --nocapture
SOAK_SECS=${SOAK_SECS:-600} cargo test -q -p tests --test soak -- --nocapture
table=""
for r in $reports; do
  [ -f "target/torture/$r.md" ] || { echo "torture: no report target/torture/$r.md" >&2; exit 1; }
  table="$table$(cat "target/torture/$r.md")

"
done
table="${table}Measured $(date -u +%Y-%m-%d) by \`make torture\` on $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)."
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
