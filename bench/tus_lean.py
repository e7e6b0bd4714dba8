#!/usr/bin/env python3
"""A lean tus client for `make bench`: creates an upload at ENDPOINT and sends FILE in
PATCHes of CHUNK bytes over one keep-alive connection, reading the file from the page
cache; its own cost is a memcpy per chunk. Prints one JSON line with the seconds from
creation to the last acknowledged byte and the upload URL.

usage: tus_lean.py ENDPOINT FILE [CHUNK]
"""
import http.client
import json
import os
import sys
import time
import urllib.parse

endpoint, path = sys.argv[1], sys.argv[2]
chunk = int(sys.argv[3]) if len(sys.argv) > 3 else 8 << 20
size = os.path.getsize(path)
u = urllib.parse.urlsplit(endpoint)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
tus = {"Tus-Resumable": "1.0.0"}

with open(path, "rb") as f:
    t0 = time.monotonic()
    conn.request("POST", u.path, headers={**tus, "Upload-Length": str(size)})
    r = conn.getresponse()
    r.read()
    if r.status != 201:
        sys.exit(f"create answered {r.status}")
    loc = urllib.parse.urljoin(endpoint, r.getheader("Location"))
    target = urllib.parse.urlsplit(loc).path
    offset = 0
    while offset < size:
        body = f.read(chunk)
        conn.request("PATCH", target, body=body, headers={
            **tus,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(offset),
        })
        r = conn.getresponse()
        r.read()
        if r.status != 204:
            sys.exit(f"PATCH at {offset} answered {r.status}")
        offset = int(r.getheader("Upload-Offset"))
    secs = time.monotonic() - t0
print(json.dumps({"seconds": round(secs, 3), "url": loc, "bytes": size}))
