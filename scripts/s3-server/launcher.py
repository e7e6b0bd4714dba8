#!/usr/bin/env python3
"""A local S3-compatible server for the tests: moto's S3 app behind one request lock.

Serves moto's WSGI application (moto 5.2.x) on 127.0.0.1 with a threaded werkzeug
server, and closes two gaps between moto and S3 that the upload server relies on:

* Conditional writes are atomic. moto checks ``If-None-Match: *`` (and ``If-Match``)
  and then writes, without a lock, so two concurrent creates of one key can both
  win. Here every request is handled under ONE global lock, so check-and-write is
  atomic. Request bodies are read *before* the lock is taken and responses are
  written *after* it is released, so a slow client delays nobody but itself.
* An unknown, aborted or completed multipart upload id answers
  ``404 NoSuchUpload`` as S3 does. moto raises a bare ``KeyError`` (a 500) for
  UploadPart, UploadPartCopy and CompleteMultipartUpload with such an id; the
  middleware turns exactly that error (a ``KeyError`` whose key is the request's
  ``uploadId``) into S3's error document. moto's files are not patched.

Admin:
* ``POST /moto-api/reset`` (moto's own) empties every bucket and backend; it runs
  under the lock like any request.
* ``GET /_launcher/health`` answers ``ok`` (readiness probe, never reaches moto).
* ``POST /_launcher/drop-bucket/{name}`` removes a bucket with everything in it
  (objects and multipart uploads) and frees their memory, under the lock: tests that
  share one server with a bucket each clean up after themselves with it.
* ``LAUNCHER_REQUEST_LOG=<path>``: one line per request (method, path and query,
  status, milliseconds under the lock), to see what a client asks of the store.
* Signals: SIGUSR1 takes the server "down" (the listening socket is closed, so new
  connections are refused, and requests on kept-alive connections get 503 with
  ``Connection: close``) while keeping all state in memory; SIGUSR2 brings it back
  on the same port. SIGTERM/SIGINT stop it.

Requests need no signature: moto accepts unsigned requests and any credentials.
Path-style addressing (``http://127.0.0.1:PORT/bucket/key``) is what the tests use.

Prints ``listening on http://127.0.0.1:PORT`` on stdout once the socket listens
(connections made from then on are queued, so this line means ready), and writes
the port to ``--port-file`` when asked. Creates no other files.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from werkzeug.serving import make_server

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

HEALTH_PATH = "/_launcher/health"
DROP_BUCKET_PREFIX = "/_launcher/drop-bucket/"


def _read_body(environ: dict[str, Any]) -> bytes | None:
    """Reads the whole request body (Content-Length or chunked); ``None`` when the
    client went away before sending all of the bytes its Content-Length announced."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            n = int(length)
        except ValueError:
            n = 0
        chunks = []
        while n > 0:
            chunk = stream.read(min(n, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            n -= len(chunk)
        return None if n > 0 else b"".join(chunks)
    if environ.get("wsgi.input_terminated"):
        # Chunked transfer encoding: werkzeug ends the stream at the last chunk.
        return stream.read()
    return b""


def _drop_bucket(name: str) -> bool:
    """Removes bucket ``name`` and everything in it from moto's memory, as moto's own
    reset does for all buckets. Returns whether it existed. Caller holds the lock."""
    from moto.s3.models import FakeKey, s3_backends

    owner = s3_backends.bucket_accounts.get(name)
    if owner is None:
        return False
    partition, account_id = owner
    backend = s3_backends[account_id][partition]
    bucket = backend.buckets.pop(name, None)
    s3_backends.bucket_accounts.pop(name, None)
    if bucket is None:
        return False
    for key in bucket.keys.values():
        if isinstance(key, FakeKey):
            key.dispose()
    for part in bucket.multiparts.values():
        part.dispose()
    return True


def _no_such_upload(upload_id: str, resource: str) -> tuple[str, list, list[bytes]]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<Error><Code>NoSuchUpload</Code>"
        "<Message>The specified upload does not exist. The upload ID may be invalid, "
        "or the upload may have been aborted or completed.</Message>"
        f"<UploadId>{escape(upload_id)}</UploadId>"
        f"<Resource>{escape(resource)}</Resource>"
        f"<RequestId>{uuid.uuid4().hex}</RequestId>"
        "</Error>"
    ).encode()
    headers = [
        ("Content-Type", "application/xml"),
        ("Content-Length", str(len(body))),
    ]
    return "404 Not Found", headers, [body]


class SerializedApp:
    """WSGI middleware: one global lock around the wrapped app, bodies buffered."""

    def __init__(self, app: Callable) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.down = threading.Event()
        log = os.environ.get("LAUNCHER_REQUEST_LOG")
        self.log = open(log, "a", buffering=1) if log else None

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == HEALTH_PATH:
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
            return [b"ok\n"]
        if path.startswith(DROP_BUCKET_PREFIX) and environ.get("REQUEST_METHOD") == "POST":
            with self.lock:
                found = _drop_bucket(path[len(DROP_BUCKET_PREFIX) :])
            status = "204 No Content" if found else "404 Not Found"
            start_response(status, [("Content-Length", "0")])
            return [b""]

        # Outside the lock: a slow upload only delays itself.
        body = _read_body(environ)
        if body is None:
            # S3 stores nothing of a request whose body was cut short.
            start_response("400 Bad Request", [("Content-Length", "0"), ("Connection", "close")])
            return [b""]
        if self.down.is_set():
            msg = b"launcher is down (SIGUSR1)\n"
            start_response(
                "503 Service Unavailable",
                [
                    ("Content-Type", "text/plain"),
                    ("Content-Length", str(len(msg))),
                    ("Connection", "close"),
                ],
            )
            return [msg]
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))

        captured: dict[str, Any] = {}
        written: list[bytes] = []

        def capture(status: str, headers: list, exc_info: Any = None) -> Callable:
            captured["status"] = status
            captured["headers"] = headers
            return written.append  # legacy write() callable

        with self.lock:
            started = time.monotonic()
            try:
                result = self.app(environ, capture)
                try:
                    chunks = written + [bytes(c) for c in result]
                finally:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
            except KeyError as err:
                upload_id = _query_param(environ, "uploadId")
                if upload_id is None or err.args != (upload_id,):
                    raise
                status, headers, chunks = _no_such_upload(upload_id, path)
                captured["status"] = status
                captured["headers"] = headers
            if self.log is not None:
                query = environ.get("QUERY_STRING", "")
                self.log.write(
                    f"{environ.get('REQUEST_METHOD')} {path}{'?' + query if query else ''} "
                    f"{captured['status'].split()[0]} {len(body)} "
                    f"{(time.monotonic() - started) * 1000:.1f}\n"
                )

        # Outside the lock: sending the response.
        start_response(captured["status"], captured["headers"])
        return chunks


def _query_param(environ: dict[str, Any], name: str) -> str | None:
    values = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).get(name)
    return values[0] if values else None


class Launcher:
    """Owns the listening server; can take it down and bring it back on one port."""

    def __init__(self, host: str, port: int, app: SerializedApp) -> None:
        self.host = host
        self.port = port
        self.app = app
        self.server = None
        self.thread: threading.Thread | None = None
        self.mutex = threading.Lock()

    def up(self) -> None:
        with self.mutex:
            if self.server is not None:
                return
            # The port of a closed listener can be bound again at once
            # (SO_REUSEADDR), but retry briefly in case of a stray race.
            deadline = time.monotonic() + 10
            while True:
                try:
                    server = make_server(
                        self.host,
                        self.port,
                        self.app,
                        threaded=True,
                        request_handler=MotoRequestHandler,
                    )
                    break
                except OSError:
                    if self.port == 0 or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self.port = server.server_port
            self.app.down.clear()
            self.server = server
            self.thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self.thread.start()

    def down(self) -> None:
        with self.mutex:
            if self.server is None:
                return
            self.app.down.set()
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _watch_parent(ppid: int) -> None:
    """Exits when the process that started us is gone (e.g. a killed test run)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != ppid:
            os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    parser.add_argument("--port-file", help="write the port to this file once listening")
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="exit when the parent process exits (for test harnesses)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not log requests")
    parser.add_argument(
        "--switch-interval",
        type=float,
        help="sys.setswitchinterval() in seconds (default 0.005); a tiny value such as "
        "1e-6 makes threads switch often, so that a race the lock did not close shows",
    )
    args = parser.parse_args(argv)

    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)

    if args.quiet:
        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    main_app = DomainDispatcherApplication(create_backend_app)
    app = SerializedApp(main_app)
    launcher = Launcher(args.host, args.port, app)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=launcher.down).start())
    signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(target=launcher.up).start())

    launcher.up()
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{launcher.port}\n")
        os.replace(tmp, args.port_file)
    print(f"listening on http://{args.host}:{launcher.port}", flush=True)

    if args.exit_with_parent:
        threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()

    # A signal may land on any thread, and CPython runs its handler only when the main
    # thread executes bytecode: a blocking wait() could delay it forever, so poll.
    while not stop.wait(0.05):
        pass
    # All state is in memory: nothing to flush, so no graceful drain either.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
