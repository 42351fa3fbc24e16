"""The HTTP side of ``aiayn serve``: a fixed pool of worker threads fed by a bounded queue, and
the handler that turns each request into JSON (or the explorer page).

One thread accepts connections and queues them; ``WORKERS`` threads answer them. When
``QUEUE`` connections are already waiting, one more thread answers 503 with Retry-After to
the overflow (and when even its queue is full, the connection is closed unanswered), so
the number of threads never depends on the number of clients. A watchdog thread shuts
down connections that have not delivered their request within ``READ_SECONDS``: socket
timeouts alone would let a client sending one byte every few seconds hold a worker forever.
"""

from __future__ import annotations

import json
import queue
import select
import socket
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from aiayn.config import AiaynError
from aiayn.serve_limits import (
    MAX_BODY,
    MAX_DISCARD,
    QUEUE,
    READ_SECONDS,
    WORKERS,
    WRITE_SECONDS,
    ClientGone,
    Origins,
    RequestError,
    busy,
    check_content_type,
    content_length,
    parse_json,
)

PAGE_SECURITY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)
DRAIN_SECONDS = 2.0  # how long a refused body may take to arrive before the connection closes


class Watchdog:
    """Shuts down each watched socket at its deadline, from one thread for all of them."""

    def __init__(self) -> None:
        self.deadlines: dict[socket.socket, float] = {}
        self.lock, self.stopped = threading.Lock(), threading.Event()

    def watch(self, sock: socket.socket, seconds: float) -> None:
        with self.lock:
            self.deadlines[sock] = time.monotonic() + seconds

    def forget(self, sock: socket.socket) -> None:
        with self.lock:
            self.deadlines.pop(sock, None)

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            now = time.monotonic()
            with self.lock:
                late = [s for s, deadline in self.deadlines.items() if deadline < now]
                for s in late:
                    del self.deadlines[s]
            for s in late:
                try:
                    s.shutdown(socket.SHUT_RDWR)  # the worker's blocked read returns at once
                except OSError:
                    pass


class Handler(BaseHTTPRequestHandler):
    """One request: check where it comes from, route, parse, answer JSON (or the page).
    ``self.server`` is an ``ExplorerServer``."""

    server_version = "aiayn"
    # Until a request line parses, http.server assumes HTTP/0.9 and answers with no status line
    # or headers; every answer here has them, so that a client can tell what went wrong.
    default_request_version = "HTTP/1.0"
    routes = {"/": "GET", "/health": "GET", "/translate": "POST", "/attention": "POST"}
    busy = False  # the overflow thread's handler: every request is answered 503

    def setup(self) -> None:
        self.timeout = self.server.read_seconds  # every read of this connection; writes get WRITE_SECONDS
        super().setup()
        self.unread = 0  # bytes of the announced body not read yet
        self.server.watchdog.watch(self.connection, self.server.read_seconds)

    def finish(self) -> None:
        self.server.watchdog.forget(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    # Other methods get a JSON 405 naming the allowed one, not http.server's HTML 501.
    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = lambda self: self._answer(self.command)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, headers too long, an unknown
        method) as JSON too."""
        self.close_connection = True
        self._send_json(code, {"error": message or HTTPStatus(code).phrase})
        self._drain(MAX_DISCARD, 0)

    def _answer(self, method: str) -> None:
        path = urlsplit(self.path).path
        try:
            self.unread = self._announced_length()
            if self.busy:
                raise busy(f"the server is busy ({self.server.queue_size} requests waiting); retry later")
            if method != "POST":
                self.server.watchdog.forget(self.connection)
            self.server.origins.check(self.headers)
            if path not in self.routes:
                raise RequestError(
                    404, f"no such path {path[:80]} (try GET /, GET /health, POST /translate, POST /attention)"
                )
            if self.routes[path] != method:
                raise RequestError(405, f"{path} takes {self.routes[path]}, not {method}")
            explorer = self.server.explorer
            if path == "/":
                self._send(200, self.server.page, "text/html; charset=utf-8")
            elif path == "/health":
                self._send_json(200, explorer.health())
            elif path == "/translate":
                self._send_json(200, explorer.translate(self._read_json(), self._client_gone))
            else:
                self._send_json(200, explorer.attention(self._read_json(), self._client_gone))
        except RequestError as e:
            self._send_json(e.status, {"error": str(e)}, e.headers)
        except ClientGone:
            self.close_connection = True
        except AiaynError as e:
            self._send_json(422, {"error": str(e)})
        except Exception as e:  # a bug, not bad input: say so, and keep serving
            traceback.print_exc(file=sys.stderr)
            self._send_json(500, {"error": f"internal error: {type(e).__name__}"})
        finally:
            if self.unread > 0:
                self._drain(min(self.unread, MAX_DISCARD), DRAIN_SECONDS)
            else:  # a body without a usable Content-Length: drop what has arrived
                self._drain(MAX_DISCARD, 0)

    def _announced_length(self) -> int:
        try:
            return content_length(self.headers)
        except RequestError:
            return 0

    def _read_json(self) -> dict:
        length = content_length(self.headers)
        if length > MAX_BODY:
            raise RequestError(413, f"request body of {length} bytes; the limit is {MAX_BODY}")
        check_content_type(self.headers)
        try:
            data = self.rfile.read(length)
        except OSError:  # a read timeout, or the watchdog shut the socket
            raise ClientGone from None
        self.unread -= len(data)
        if len(data) < length:
            raise ClientGone
        self.server.watchdog.forget(self.connection)
        return parse_json(data)

    def _drain(self, limit: int, seconds: float) -> None:
        """Read and drop up to ``limit`` bytes of a refused request for at most ``seconds`` (0:
        only what has arrived), after the answer: closing a socket with unread input sends a
        reset, which can destroy the answer before the client reads it. ``read1`` takes what
        the head's read left in the buffer before it waits on the socket."""
        self.close_connection = True
        deadline = time.monotonic() + seconds
        try:
            while limit > 0:
                self.connection.settimeout(max(0.0, deadline - time.monotonic()) if seconds else 0.0)
                chunk = self.rfile.read1(min(limit, 65536))
                if not chunk:
                    break
                limit -= len(chunk)
        except OSError:  # nothing more within the time, or the client left
            pass

    def _client_gone(self) -> bool:
        """True when the client has closed its end. The request has been read whole by now, so a
        socket that reads as end-of-file (or fails) means nobody waits for the answer."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _send_json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self._send(status, data, "application/json", headers)

    def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        try:
            self.connection.settimeout(WRITE_SECONDS)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            if content_type.startswith("text/html"):
                self.send_header("Content-Security-Policy", PAGE_SECURITY)
            if status == HTTPStatus.METHOD_NOT_ALLOWED:
                self.send_header("Allow", self.routes.get(urlsplit(self.path).path, "GET"))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError:  # the client left while we answered
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


class BusyHandler(Handler):
    busy = True


class ExplorerServer(HTTPServer):
    """``HTTPServer`` with a bounded pool of workers (see the module docstring)."""

    request_queue_size = 128  # the listen backlog: a burst of clients is accepted, then queued or refused

    def __init__(
        self,
        explorer: Any,
        host: str = "127.0.0.1",
        port: int = 8000,
        quiet: bool = False,
        workers: int = WORKERS,
        queue_size: int = QUEUE,
        allow_origins: list[str] | tuple[str, ...] = (),
        read_seconds: float = READ_SECONDS,
    ):
        if workers < 1 or queue_size < 1:  # a queue of 0 would be unbounded, 0 workers would answer nobody
            raise AiaynError(f"--workers and --queue must be at least 1, got {workers} and {queue_size}")
        self.explorer, self.quiet, self.read_seconds = explorer, quiet, read_seconds
        self.workers, self.queue_size = workers, queue_size
        self.page = resources.files("aiayn").joinpath("static/explorer.html").read_bytes()
        self.origins = Origins(host, allow_origins)
        self.watchdog = Watchdog()
        self.waiting: queue.Queue = queue.Queue(queue_size)
        self.overflow: queue.Queue = queue.Queue(queue_size)
        self.threads = [
            threading.Thread(target=self._work, args=(self.waiting, Handler), daemon=True) for _ in range(workers)
        ]
        self.threads += [
            threading.Thread(target=self._work, args=(self.overflow, BusyHandler), daemon=True),
            threading.Thread(target=self.watchdog.run, daemon=True),
        ]
        super().__init__((host, port), Handler)  # binds, or closes the socket and raises
        for thread in self.threads:
            thread.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        for waiting in (self.waiting, self.overflow):
            try:
                waiting.put_nowait((request, client_address))
                return
            except queue.Full:
                pass
        self.shutdown_request(request)

    def _work(self, waiting: queue.Queue, handler: type[Handler]) -> None:
        while not self.watchdog.stopped.is_set():
            try:
                item = waiting.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:  # server_close's wake-up call
                continue
            request, client_address = item
            try:
                handler(request, client_address, self)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that disconnects is no error
            super().handle_error(request, client_address)

    def server_close(self) -> None:
        super().server_close()
        self.watchdog.stopped.set()  # workers stop when woken below, or within half a second
        for waiting in (self.waiting, self.overflow):
            while True:  # connections nobody will answer now
                try:
                    item = waiting.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    self.shutdown_request(item[0])
            for _ in range(self.workers):
                try:
                    waiting.put_nowait(None)
                except queue.Full:
                    break
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout=5)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"
