"""Store requests by S3 operation, read from RGW's ops logs (`run.sh requests`).

Each gateway writes one JSON object per request to its ops log (objects are not always
separated by newlines). The S3 operation is named from the method, the query and the
`x-amz-copy-source` header (RGW's own names do not tell UploadPart from UploadPartCopy).
The harness's probes (anonymous `GET /`) are not counted.

Before reading, a marker request is sent to each `--flush` endpoint and the logs are read
once it appears: every request answered before the marker is then in the logs.

Prints one `COUNT OPERATION` line per operation, then `TOTAL COUNT` and `COPIED_BYTES N`
(bytes copied inside the store by CopyObject and UploadPartCopy).
"""

import argparse
import collections
import datetime
import json
import math
import sys
import time
import urllib.parse
import urllib.request
import uuid


def entries(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return
    decoder = json.JSONDecoder()
    i = 0
    while i < len(text):
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            # A record cut short (the gateway was killed mid-write): skip to the next one.
            nxt = text.find('{"bucket"', i + 1)
            if nxt < 0:
                break
            i = nxt
            continue
        yield obj


def headers(entry):
    out = {}
    for h in entry.get("http_x_headers", []):
        out.update({k.upper(): v for k, v in h.items()})
    return out


def operation(entry):
    method, _, rest = entry.get("uri", "").partition(" ")
    target = rest.rsplit(" ", 1)[0]
    path, _, query = target.partition("?")
    params = {p.split("=", 1)[0] for p in query.split("&") if p}
    has_object = bool(path.lstrip("/").partition("/")[2])
    copy = "HTTP_X_AMZ_COPY_SOURCE" in headers(entry)
    if not entry.get("bucket") and path in ("", "/"):
        return "ListBuckets"
    if method == "PUT":
        if not has_object:
            return "CreateBucket"
        if "partNumber" in params and "uploadId" in params:
            return "UploadPartCopy" if copy else "UploadPart"
        return "CopyObject" if copy else "PutObject"
    if method == "POST":
        if "uploads" in params:
            return "CreateMultipartUpload"
        if "uploadId" in params:
            return "CompleteMultipartUpload"
        if "delete" in params:
            return "DeleteObjects"
        return "Post"
    if method == "GET":
        if has_object:
            return "ListParts" if "uploadId" in params else "GetObject"
        if "uploads" in params:
            return "ListMultipartUploads"
        if "list-type" in params:
            return "ListObjectsV2"
        return "ListObjects"
    if method == "HEAD":
        return "HeadObject" if has_object else "HeadBucket"
    if method == "DELETE":
        if "uploadId" in params:
            return "AbortMultipartUpload"
        return "DeleteObject" if has_object else "DeleteBucket"
    return method or "?"


def query_params(entry):
    target = entry.get("uri", "").partition(" ")[2].rsplit(" ", 1)[0]
    query = target.partition("?")[2]
    return dict(p.split("=", 1) if "=" in p else (p, "") for p in query.split("&") if p)


class Sizes:
    """Object sizes as the logs wrote them, so that a whole-object copy (whose log entry
    has no size) is counted with its source's size."""

    def __init__(self):
        self.objects = {}
        self.parts = collections.defaultdict(dict)

    def source(self, entry):
        src = headers(entry).get("HTTP_X_AMZ_COPY_SOURCE", "")
        src = urllib.parse.unquote(src.split("?", 1)[0]).lstrip("/")
        bucket, _, key = src.partition("/")
        return self.objects.get((bucket, key), 0)

    def copied(self, entry, op):
        rng = headers(entry).get("HTTP_X_AMZ_COPY_SOURCE_RANGE", "")
        if rng.startswith("bytes="):
            first, _, last = rng[len("bytes="):].partition("-")
            try:
                return int(last) - int(first) + 1
            except ValueError:
                pass
        return int(entry.get("object_size") or 0) or self.source(entry)

    def record(self, entry, op):
        key = (entry.get("bucket", ""), entry.get("object", ""))
        if not entry.get("http_status", "").startswith("2"):
            return
        params = query_params(entry)
        if op == "PutObject":
            self.objects[key] = int(entry.get("bytes_received") or 0)
        elif op == "CopyObject":
            self.objects[key] = self.copied(entry, op)
        elif op in ("UploadPart", "UploadPartCopy"):
            size = int(entry.get("bytes_received") or 0)
            if op == "UploadPartCopy":
                size = self.copied(entry, op)
            self.parts[params.get("uploadId")][params.get("partNumber")] = size
        elif op == "CompleteMultipartUpload":
            self.objects[key] = sum(self.parts.pop(params.get("uploadId"), {}).values())


def start_time(entry):
    stamp = entry.get("time", "")
    try:
        return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc
        ).timestamp()
    except ValueError:
        return math.nan


def flush(endpoints, logs, timeout=10.0):
    """Sends a marker to each endpoint and waits (bounded) until every marker is logged."""
    markers = []
    for ep in endpoints:
        marker = "requests-marker=" + uuid.uuid4().hex
        try:
            urllib.request.urlopen(f"{ep.rstrip('/')}/?{marker}", timeout=5).read()
        except Exception as e:  # the store is down: nothing more will be logged
            print(f"requests: marker to {ep} failed ({e})", file=sys.stderr)
            continue
        markers.append(marker)
    deadline = time.monotonic() + timeout
    while markers:
        text = "".join(open(p, errors="replace").read() for p in logs if _exists(p))
        markers = [m for m in markers if m not in text]
        if not markers:
            break
        if time.monotonic() > deadline:
            print("requests: markers not logged within %.0f s" % timeout, file=sys.stderr)
            break
        time.sleep(0.05)


def _exists(path):
    try:
        open(path).close()
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="*", help="ops log files")
    ap.add_argument("--since", type=float, default=0.0, help="Unix time, inclusive")
    ap.add_argument("--until", type=float, default=math.inf, help="Unix time, exclusive")
    ap.add_argument("--bucket", help="count only this bucket's requests")
    ap.add_argument("--flush", action="append", default=[], help="gateway endpoint")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    args = ap.parse_args()
    flush(args.flush, args.logs)
    counts = collections.Counter()
    copied = 0
    sizes = Sizes()
    logged = [e for path in args.logs for e in entries(path)]
    logged.sort(key=start_time)
    for e in logged:
        if e.get("user") == "anonymous" and not e.get("bucket"):
            continue
        op = operation(e)
        counted = (args.bucket is None or e.get("bucket") == args.bucket) and (
            args.since <= start_time(e) < args.until
        )
        if counted:
            counts[op] += 1
            if op in ("CopyObject", "UploadPartCopy"):
                copied += sizes.copied(e, op)
        sizes.record(e, op)
    if args.json:
        print(json.dumps({"operations": dict(counts), "total": sum(counts.values()),
                          "copied_bytes": copied}))
        return
    for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{n} {op}")
    print(f"TOTAL {sum(counts.values())}")
    print(f"COPIED_BYTES {copied}")


if __name__ == "__main__":
    main()
