#!/usr/bin/env bash
# `make torture`: the long reliability pass. Runs the crash loops for many rounds, the
# power-cut check and a 10-minute soak, and puts their figures in README.md (between the
# torture markers) and target/torture/.
#
#   CRASH_ROUNDS (default 200), CRASH_S3_ROUNDS (20), CRASH_SIZE_MIB (256), CRASH_SEED (the
#   time), POWER_CUT_SEEDS (5000), RACE_ROUNDS (20), SOAK_SECS (600), MODEL_SCHEDULES
#   (50000), MODEL_FIRST_SEED (the time) as for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CRASH_ROUNDS=${CRASH_ROUNDS:-200} CRASH_S3_ROUNDS=${CRASH_S3_ROUNDS:-20}
export POWER_CUT_SEEDS=${POWER_CUT_SEEDS:-5000} RACE_ROUNDS=${RACE_ROUNDS:-20}
# The S3 variants need the S3 store (Ceph RGW): started here, stopped by PID at the end.
bash scripts/ceph/run.sh start > /dev/null
trap 'bash scripts/ceph/run.sh stop > /dev/null' EXIT
reports="crash-loop crash-loop-s3 power-cut power-cut-replay soak"
for r in $reports; do rm -f "target/torture/$r.md"; done
rm -rf target/torture/tally
S3_REQUIRED=1 cargo test -q -p tests --test e2e -- crash_loop:: --nocapture --test-threads 1
STRACE_REQUIRED=1 cargo test -q -p tests --test e2e -- power_cut:: --nocapture
SOAK_SECS=${SOAK_SECS:-600} cargo test -q -p tests --test e2e -- soak:: --nocapture
# Faults and races: the tests that inject them, each adding its count to target/torture/tally.
races="racing_puts_to_one_index concurrent_completes_complete_once a_retried_complete cancel_racing_complete idle_uploads_expire"
S3_REQUIRED=1 cargo test -q -p tests --test e2e -- $races a_failed_fsync
S3_REQUIRED=1 cargo test -q -p tests --test e2e -- store_faults_are_survived the_cli_outlasts
cargo test -q -p tests --test e2e -- cli::faults::upload_survives_
cargo test -q -p tests --test e2e -- limits::a_full_disk
# The model check of the S3 protocol: 50,000 schedules a scenario from a fresh first seed.
MODEL_SCHEDULES=${MODEL_SCHEDULES:-50000} MODEL_FIRST_SEED=${MODEL_FIRST_SEED:-$(date +%s)} \
  cargo test -q -p storage --test model -- --nocapture
table=""
for r in $reports; do
  [ -f "target/torture/$r.md" ] || { echo "torture: no report target/torture/$r.md" >&2; exit 1; }
  table="$table$(cat "target/torture/$r.md")

"
done
table="$table$(python3 - <<'PY'
import glob
rows = {"fault": [], "race": []}
for f in sorted(glob.glob("target/torture/tally/*.txt")):
    kind, what, n = open(f).read().strip().split("|")
    rows[kind].append((what, int(n)))
out = ["| faults injected and racing requests tried (each test asserts its outcome) | count |", "| --- | --- |"]
for kind, total in [("fault", "storage and network faults injected"), ("race", "duplicate and racing requests tried")]:
    out += [f"| {w} | {n} |" for w, n in rows[kind]]
    out.append(f"| **{total}** | **{sum(n for _, n in rows[kind])}** |")
print("\n".join(out))
PY
)

"
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
