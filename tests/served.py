"""The HTTP tests' tools: a server on a free loopback port (port 0: the kernel picks one) in a
thread, a client that sends JSON, one that sends raw bytes, and a translator stand-in that
counts, holds and times its calls."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiayn.serve.app import Explorer
from aiayn.serve.loop import ExplorerServer


@contextmanager
def serving(explorer: Explorer, **options: Any) -> Iterator[ExplorerServer]:
    httpd = ExplorerServer(explorer, "127.0.0.1", 0, quiet=True, **options)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def call(
    server: ExplorerServer,
    method: str,
    path: str,
    body: bytes | dict | list | None = None,
    headers: dict[str, str | None] | None = None,
    timeout: float = 30,
) -> tuple[int, Any, http.client.HTTPResponse]:
    """One request; POSTs are application/json unless ``headers`` say otherwise (None drops a
    header); the client gives up after ``timeout`` seconds. Returns the status, the parsed JSON
    (or the text) and the response."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    sent = {"Content-Type": "application/json"} if method == "POST" else {}
    sent = {k: v for k, v in {**sent, **(headers or {})}.items() if v is not None}
    conn.request(method, path, body=data, headers=sent)
    response = conn.getresponse()
    raw = response.read().decode("utf-8")  # strict: every answer must be valid UTF-8
    conn.close()
    kind = response.getheader("Content-Type", "")
    return response.status, json.loads(raw) if kind == "application/json" and raw else raw, response


def raw(server: ExplorerServer, data: bytes, close_write: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as it is and read until the server closes; ``close_write`` ends our side
    first. Returns the status, the headers (lower-case names) and the body."""
    with socket.create_connection(server.server_address[:2], timeout=30) as s:
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        reply = b"".join(iter(lambda: s.recv(65536), b""))
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
    return int(lines[0].split()[1]), headers, body


def post(path: str, body: bytes, **headers: str) -> bytes:
    """A raw POST with a Host, the JSON type and the body's length, unless ``headers`` replace them."""
    fields = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": str(len(body)), **headers}
    return (f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n").encode() + body


class Stand:
    """A translator that passes calls to ``real`` but first counts them, notes any that overlap
    (it keeps each one busy for ``delay`` seconds so that overlaps would happen), and waits for
    ``gate`` when one is given; ``entered`` is set once a call has begun; ``lines`` holds each
    call's first line, in the order the calls began. A call waiting in its step hook (for the
    model, which another request has between two steps) is not active meanwhile."""

    def __init__(self, real: Any, delay: float = 0.0, gate: threading.Event | None = None):
        self.real, self.config, self.tokenizer, self.model = real, real.config, real.tokenizer, real.model
        self.delay, self.gate, self.entered = delay, gate, threading.Event()
        self.calls = self.active = self.most_active = 0
        self.lines: list[str] = []
        self.count = threading.Lock()

    def _activity(self, change: int) -> None:
        with self.count:
            self.active += change
            self.most_active = max(self.most_active, self.active)

    def translate(self, lines: list[str], step_hook: Any = None, **options: Any) -> Any:
        def hook() -> None:
            self._activity(-1)
            try:
                if step_hook is not None:
                    step_hook()
            finally:
                self._activity(+1)

        with self.count:
            self.calls += 1
            self.lines.append(lines[0])
        self._activity(+1)
        self.entered.set()
        try:
            time.sleep(self.delay)
            if self.gate is not None:
                self.gate.wait(30)
            return self.real.translate(lines, step_hook=hook, **options)
        finally:
            self._activity(-1)
