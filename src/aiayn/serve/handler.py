"""The HTTP messages of ``aiayn serve``: the handler that turns one request, received whole, into its
answer (JSON, or the explorer page), and what the connection loop (loop.py) needs to know of
a request's head before the handler sees it: whether a body must come first, and whether the client
waits for 100 Continue before it sends one.

The handler is ``http.server``'s, run on bytes in memory rather than on a socket, so that its parsing
and its refusals (a malformed request line, an unknown method, a line too long) stay the standard
library's, answered as JSON.
"""

from __future__ import annotations

import http.client
import io
import json
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from aiayn.config import AiaynError
from aiayn.serve.limits import (
    MAX_BODY,
    ClientGone,
    RequestError,
    check_content_type,
    content_length,
    parse_json,
)

PAGE_SECURITY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)
PROTOCOL = "HTTP/1.1"
PROBE = f"{PROTOCOL} ".encode()  # how every answer begins (see loop.Connection.gone)


def needs_body(head: bytes) -> tuple[int | None, bool]:
    """For a POST to the model with a usable Content-Length: (the body's length, whether the
    client waits for 100 Continue before sending it). Else (None, False): the handler answers
    from the head alone (with its 4xx, or GET's answer)."""
    line, _, fields = head.partition(b"\r\n")
    words = line.split()
    if len(words) != 3 or words[0] != b"POST" or Handler.routes.get(path(words[1].decode("latin-1"))) != "POST":
        return None, False
    try:
        headers = http.client.parse_headers(io.BytesIO(fields))
        length = content_length(headers)
    except (http.client.HTTPException, RequestError):
        return None, False
    expect = words[2] == PROTOCOL.encode() and headers.get("Expect", "").strip().lower() == "100-continue"
    return (length, expect) if length <= MAX_BODY else (None, False)


def path(target: str) -> str:
    try:
        return urlsplit(target).path
    except ValueError:  # e.g. "//[x": an unbalanced IPv6 bracket
        return target


def json_text(value: Any) -> str:
    """``json.dumps(value)`` (compact, UTF-8 kept), written a list of lists at a time. One call holds
    the GIL until it returns: for /attention's million weights that was a quarter of a second, which
    every other thread (the loop answering /health, another request's decoding steps) waited for,
    once per such answer. A row at a time, they get in between."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{json_text(k)}:{json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list) and value and isinstance(value[0], list):
        return "[" + ",".join(json_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def json_answer(status: int, message: str, headers: dict[str, str]) -> bytes:
    """A whole JSON error answer, for the loop thread's refusals that come before any request."""
    body = json.dumps({"error": message}).encode()
    fields = {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Cache-Control": "no-store",
        **headers,
        "Connection": "close",
    }
    head = f"{PROTOCOL} {status} {HTTPStatus(status).phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return (head + "\r\n").encode() + body


class Handler(BaseHTTPRequestHandler):
    """One request, read whole beforehand: check where it comes from, route, parse, answer JSON
    (or the page) into ``request.reply``. ``self.request`` is a ``Connection``, ``self.server``
    an ``ExplorerServer``."""

    server_version = "aiayn"
    protocol_version = PROTOCOL  # 100 Continue needs it; every connection still closes after one answer
    # Until a request line parses, http.server assumes HTTP/0.9 and answers with no status line
    # or headers; every answer here has them, so that a client can tell what went wrong.
    default_request_version = "HTTP/1.0"
    routes = {"/": "GET", "/health": "GET", "/translate": "POST", "/attention": "POST"}

    def setup(self) -> None:
        self.connection = self.request.sock
        self.rfile, self.wfile = io.BytesIO(bytes(self.request.data)), io.BytesIO()

    def handle(self) -> None:
        self.handle_one_request()  # one request per connection: anything after it is dropped

    def finish(self) -> None:
        self.request.reply = self.wfile.getvalue()

    def handle_expect_100(self) -> bool:
        return True  # the loop thread sent 100 Continue before the body came

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    # Other methods get a JSON 405 naming the allowed one, not http.server's HTML 501.
    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = lambda self: self._answer(self.command)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, headers too long, an unknown
        method) as JSON too."""
        self._send_json(code, {"error": message or HTTPStatus(code).phrase})

    def _answer(self, method: str) -> None:
        where = path(self.path)
        try:
            if self.request.refusal is not None:
                raise self.request.refusal
            self.server.origins.check(self.headers)
            if where not in self.routes:
                raise RequestError(
                    404, f"no such path {where[:80]} (try GET /, GET /health, POST /translate, POST /attention)"
                )
            if self.routes[where] != method:
                raise RequestError(405, f"{where} takes {self.routes[where]}, not {method}")
            explorer = self.server.explorer
            if where == "/":
                self._send(200, self.server.page, "text/html; charset=utf-8")
            elif where == "/health":
                self._send_json(200, explorer.health())
            elif where == "/translate":
                self._send_json(200, explorer.translate(self._read_json(), self.request.gone, self.request.received))
            else:
                self._send_json(200, explorer.attention(self._read_json(), self.request.gone, self.request.received))
        except RequestError as e:
            self._send_json(e.status, {"error": str(e)}, e.headers)
        except ClientGone:
            self.request.left = True
        except AiaynError as e:
            self._send_json(422, {"error": str(e)})
        except Exception as e:  # a bug, not bad input: say so, and keep serving
            traceback.print_exc(file=sys.stderr)
            self._send_json(500, {"error": f"internal error: {type(e).__name__}"})

    def _read_json(self) -> dict:
        length = content_length(self.headers)
        if length > MAX_BODY:
            raise RequestError(413, f"request body of {length} bytes; the limit is {MAX_BODY}")
        check_content_type(self.headers)
        data = self.rfile.read(length)
        if len(data) < length:  # the client ended its side before the whole body
            raise ClientGone
        return parse_json(data)

    def _send_json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        data = json_text(payload).encode("utf-8")
        self._send(status, data, "application/json", headers)

    def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", PAGE_SECURITY)
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", self.routes.get(path(self.path), "GET"))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)
