#!/usr/bin/env python3
"""tuspy driver. Prints ONE JSON line; exit 0 on success, non-zero on failure.

Run it with the venv setup.sh made:  target/tools/tus-venv/bin/python scripts/webclients/tuspy_client.py ...

  tuspy_client.py --endpoint URL --file PATH [--chunk-size N] [--checksum] [--checksum-algorithm sha1|sha256|md5]
                  [--resume-url URL] [--stop-after-chunks K] [--url-store PATH] [--metadata k=v,...]
                  [--timeout SECONDS] [--no-sha256]

  --checksum            upload_checksum=True: every PATCH carries `Upload-Checksum: <alg> <base64>`
                        (tuspy's default algorithm is sha1; --checksum-algorithm picks another).
  --stop-after-chunks K create the upload, send K chunks, stop (ok, "complete": false); the JSON has
                        the URL to pass to --resume-url later.
  --resume-url URL      resume that upload: tuspy HEADs it for the offset and sends the rest.
  --url-store PATH      tuspy's own FileStorage (store_url=True): the URL is kept by fingerprint, so
                        running the same command again resumes without --resume-url.
"""
import argparse
import hashlib
import json
import os
import signal
import sys
import time


def emit(obj, code=None):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
    sys.exit(code if code is not None else (0 if obj.get("ok") else 1))


def main():
    ap = argparse.ArgumentParser(description="tuspy driver (one JSON line out)")
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--chunk-size", type=int, default=8 * 1024 * 1024)
    ap.add_argument("--checksum", action="store_true")
    ap.add_argument("--checksum-algorithm", choices=["sha1", "sha256", "md5"], default="sha1")
    ap.add_argument("--resume-url")
    ap.add_argument("--stop-after-chunks", type=int)
    ap.add_argument("--url-store")
    ap.add_argument("--metadata", default="")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--no-sha256", action="store_true")
    a = ap.parse_args()

    try:
        from importlib.metadata import version

        from tusclient import client
        from tusclient.exceptions import TusCommunicationError, TusUploadFailed
        from tusclient.storage import filestorage
        from tusclient.uploader import Uploader
    except ImportError as e:
        emit({"ok": False, "error": f"tuspy not importable ({e}); run scripts/webclients/setup.sh install and use target/tools/tus-venv/bin/python"}, 2)

    path = os.path.abspath(a.file)
    if not os.path.isfile(path):
        emit({"ok": False, "error": f"no such file: {path}"}, 2)
    size = os.path.getsize(path)
    mode = "resume" if a.resume_url else ("partial" if a.stop_after_chunks is not None else "single")
    res = {"client": f"tuspy@{version('tuspy')}", "mode": mode, "endpoint": a.endpoint, "file": path, "bytes": size,
           "chunk_size": a.chunk_size, "checksum": a.checksum_algorithm if a.checksum else None}

    def on_timeout(*_):
        emit({**res, "ok": False, "error": f"timeout after {a.timeout}s"}, 124)

    signal.signal(signal.SIGALRM, on_timeout)
    signal.setitimer(signal.ITIMER_REAL, a.timeout)

    metadata = {"filename": os.path.basename(path), "filetype": "application/octet-stream"}
    for kv in filter(None, a.metadata.split(",")):
        k, sep, v = kv.partition("=")
        if not sep:
            emit({"ok": False, "error": f"--metadata wants k=v pairs, got {kv}"}, 2)
        metadata[k] = v

    algs = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "md5": hashlib.md5}

    class Up(Uploader):
        CHECKSUM_ALGORITHM_PAIR = (a.checksum_algorithm, algs[a.checksum_algorithm])

    t0 = time.monotonic()
    try:
        c = client.TusClient(a.endpoint)
        kw = dict(chunk_size=a.chunk_size, metadata=metadata, retries=0, upload_checksum=a.checksum)
        if a.url_store:
            kw.update(store_url=True, url_storage=filestorage.FileStorage(a.url_store))
        # With url=..., tuspy HEADs the upload for its offset in the constructor.
        up = Up(path, client=c, url=a.resume_url, **kw)
        res["resumed_offset"] = up.offset if (a.resume_url or up.url) else None
        if up.url and not a.resume_url:
            res["resumed_from_store"] = up.url
        chunks = 0
        if a.stop_after_chunks is not None:
            if not up.url:
                up.set_url(up.create_url())
                up.offset = 0
            while chunks < a.stop_after_chunks and up.offset < size:
                up.upload_chunk()
                chunks += 1
        else:
            if not up.url:
                up.set_url(up.create_url())
                up.offset = 0
            while up.offset < size:
                up.upload_chunk()
                chunks += 1
        res.update(url=up.url, offset=up.offset, chunks_sent=chunks, complete=up.offset == size)
    except TusUploadFailed as e:
        emit({**res, "ok": False, "error": f"upload failed: {e}", "status": e.status_code,
              "response_body": (e.response_content or b"")[:300].decode("utf-8", "replace") if isinstance(e.response_content, bytes) else str(e.response_content)[:300]})
    except TusCommunicationError as e:
        emit({**res, "ok": False, "error": f"communication error: {e}", "status": e.status_code})
    except Exception as e:  # noqa: BLE001 - report anything as JSON
        emit({**res, "ok": False, "error": f"{type(e).__name__}: {e}"})
    elapsed = time.monotonic() - t0
    res["elapsed_s"] = round(elapsed, 3)
    res["mib_per_s"] = round(size / 1048576 / elapsed, 1) if res["complete"] else None
    if a.resume_url and res["url"] != a.resume_url:
        emit({**res, "ok": False, "error": "resumed into a different URL"})
    if not a.no_sha256 and res["complete"]:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        res["sha256"] = h.hexdigest()
    signal.setitimer(signal.ITIMER_REAL, 0)
    emit({**res, "ok": True})


if __name__ == "__main__":
    main()
