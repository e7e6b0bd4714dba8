#!/usr/bin/env python3
"""Resume cost of `uploader`: interrupt an upload (SIGINT) at about half, run the same
command again, and print one JSON line with the bytes acknowledged at the pause, the
second run's wall time and the bytes it read from the file.

usage: resume_cost.py UPLOADER SERVER_URL FILE STATE_DIR
"""
import json
import os
import signal
import subprocess
import sys
import time

uploader, url, path, state = sys.argv[1:5]
size = os.path.getsize(path)
cmd = [uploader, "upload", "--server", url, "-j", "4", "--chunk-size", "8MiB", "--json", path]
env = dict(os.environ, UPLOADER_STATE_DIR=state)

first = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
paused_at = None
sent_sigint = False
for line in first.stdout:
    ev = json.loads(line)
    if ev.get("event") == "progress" and not sent_sigint and ev["bytes"] >= size // 2:
        first.send_signal(signal.SIGINT)
        sent_sigint = True
    if ev.get("event") == "paused":
        paused_at = ev.get("bytes")
first.wait(timeout=600)
if first.returncode != 130 or paused_at is None:
    sys.exit(f"first run did not pause (exit {first.returncode})")

t0 = time.monotonic()
second = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, timeout=600)
secs = time.monotonic() - t0
if second.returncode != 0:
    sys.exit(f"second run failed (exit {second.returncode})")
done = [json.loads(l) for l in second.stdout.splitlines() if '"completed"' in l][-1]
print(json.dumps({
    "paused_bytes": paused_at,
    "remaining_bytes": size - paused_at,
    "resume_seconds": round(secs, 3),
    "resume_read_bytes": done.get("read_bytes"),
    "sha256": done.get("sha256"),
}))
