"""``aiayn serve``: translation and attention over HTTP, and the explorer page, on the standard library.

    GET  /            the explorer page (static/explorer.html: inline JS and CSS, nothing fetched from elsewhere)
    GET  /health      model path, training step, config summary, limits
    POST /translate   {"sentences": [...], "beam": 4, "nbest": 1, "alpha": 0.6}
                      -> {"translations": [[{"text": ..., "score": ...}, ...], ...]}  (per sentence, best first)
    POST /attention   {"sentence": "...", "beam": 4}
                      -> {"source": [pieces], "target": [pieces], "translation": "...",
                          "weights": {"encoder": [layer][head][i][j], "decoder": ..., "cross": ...}}

Three endpoints do not need a web framework: ``http.server.ThreadingHTTPServer`` answers each
request in a thread and a lock lets one request at a time use the model. Bad input is a 4xx
with ``{"error": "..."}``: 400 malformed JSON, 404 unknown path, 405 wrong method, 411 no
Content-Length, 413 body over 64 KiB, 422 a well-formed request with unusable values.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from aiayn.config import AiaynError

MAX_BODY = 64 * 1024  # bytes of one request body
MAX_SENTENCES = 64  # sentences in one /translate request
MAX_CHARS = 1000  # characters in one sentence
MAX_BEAM = 16
PAGE_SECURITY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                 "connect-src 'self'; img-src 'self' data:")


class RequestError(Exception):
    """A request the service refuses: sent as ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _number(body: dict, name: str, default: float, low: float, high: float, integer: bool) -> Any:
    value = body.get(name, default)
    valid_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not valid_type or not (math.isfinite(value) and low <= value <= high):
        kind = "an integer" if integer else "a number"
        raise RequestError(422, f"'{name}' must be {kind} from {low:g} to {high:g}, got {value!r}")
    return value


def _sentence(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RequestError(422, f"{where} must be a string, got {type(value).__name__}")
    if len(value) > MAX_CHARS:
        raise RequestError(422, f"{where} has {len(value)} characters; the limit is {MAX_CHARS}")
    return value


def _only(body: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise RequestError(422, f"unknown field '{unknown[0]}' (expected {', '.join(allowed)})")


class Explorer:
    """The model behind the service. Requests share it; the lock lets one use it at a time."""

    def __init__(self, translator: Any, path: Path, step: int):
        self.translator, self.path, self.step = translator, Path(path), step
        self.lock = threading.Lock()

    @classmethod
    def load(cls, model: str | Path, device: str | None = None, *, quantize: str | None = None) -> Explorer:
        from aiayn.checkpoint import load_for_inference
        from aiayn.translate import Translator

        loaded = load_for_inference(model, device or "cpu")
        return cls(Translator(loaded.model, loaded.tokenizer, loaded.config, quantize=quantize), loaded.path,
                   loaded.step)

    def health(self) -> dict[str, Any]:
        cfg = self.translator.config
        m = cfg.model
        return {"status": "ok", "model": str(self.path), "step": self.step,
                "config": {"preset": cfg.preset, "d_model": m.d_model, "d_ff": m.d_ff, "n_heads": m.n_heads,
                           "encoder_layers": m.n_layers, "decoder_layers": m.decoder_layers,
                           "vocab_size": m.vocab_size, "max_len": m.max_len, "norm": m.norm,
                           "beam_size": cfg.decode.beam_size, "alpha": cfg.decode.alpha},
                "limits": {"body_bytes": MAX_BODY, "sentences": MAX_SENTENCES, "chars": MAX_CHARS, "beam": MAX_BEAM}}

    def translate(self, body: dict) -> dict[str, Any]:
        _only(body, ("sentences", "beam", "nbest", "alpha"))
        sentences = body.get("sentences")
        if not isinstance(sentences, list):
            raise RequestError(422, "'sentences' must be a list of strings")
        if len(sentences) > MAX_SENTENCES:
            raise RequestError(422, f"{len(sentences)} sentences; the limit is {MAX_SENTENCES} per request")
        lines = [_sentence(s, f"sentences[{i}]") for i, s in enumerate(sentences)]
        d = self.translator.config.decode
        beam = _number(body, "beam", d.beam_size, 1, MAX_BEAM, integer=True)
        nbest = _number(body, "nbest", 1, 1, beam, integer=True)
        alpha = _number(body, "alpha", d.alpha, 0, 10, integer=False)
        with self.lock:
            found = self.translator.translate(lines, beam_size=beam, nbest=nbest, alpha=alpha)
        return {"translations": [[{"text": t.text, "score": round(t.score, 4)} for t in nb] for nb in found]}

    def attention(self, body: dict) -> dict[str, Any]:
        from aiayn.visualize import sentence_attention

        _only(body, ("sentence", "beam"))
        sentence = _sentence(body.get("sentence"), "'sentence'")
        if not sentence.strip():
            raise RequestError(422, "'sentence' is empty")
        beam = _number(body, "beam", self.translator.config.decode.beam_size, 1, MAX_BEAM, integer=True)
        with self.lock:
            maps = sentence_attention(self.translator, sentence, beam)
        # float64 before rounding, or float32's nearest value prints as 0.4050000011920929
        rounded = {k: np.round(getattr(maps, k).astype(np.float64), 4).tolist()
                   for k in ("encoder", "decoder", "cross")}
        return {"source": maps.source, "target": maps.target, "translation": maps.translation, "weights": rounded}


class Handler(BaseHTTPRequestHandler):
    """One request: route, parse, answer JSON (or the page). ``self.server`` is an ``ExplorerServer``."""

    server_version = "aiayn"
    routes = {"/": "GET", "/health": "GET", "/translate": "POST", "/attention": "POST"}

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        path = urlsplit(self.path).path
        try:
            if path not in self.routes:
                raise RequestError(404, f"no such path {path} (try GET /, GET /health, POST /translate, "
                                        "POST /attention)")
            if self.routes[path] != method:
                raise RequestError(405, f"{path} takes {self.routes[path]}, not {method}")
            if path == "/":
                self._send(200, self.server.page, "text/html; charset=utf-8")
                return
            explorer = self.server.explorer
            if path == "/health":
                self._send_json(200, explorer.health())
            elif path == "/translate":
                self._send_json(200, explorer.translate(self._read_json()))
            else:
                self._send_json(200, explorer.attention(self._read_json()))
        except RequestError as e:
            self._send_json(e.status, {"error": str(e)})
        except AiaynError as e:
            self._send_json(422, {"error": str(e)})
        except Exception as e:  # a bug, not bad input: say so, and keep serving
            traceback.print_exc(file=sys.stderr)
            self._send_json(500, {"error": f"internal error: {type(e).__name__}"})

    def _read_json(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(411, "a Content-Length header is required")
        if not length.isdigit():
            raise RequestError(400, f"Content-Length '{length}' is not a number")
        if int(length) > MAX_BODY:
            self.close_connection = True  # the unread body must not be taken for the next request
            raise RequestError(413, f"request body of {int(length)} bytes; the limit is {MAX_BODY}")
        try:
            body = json.loads(self.rfile.read(int(length)).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RequestError(400, f"the body is not valid UTF-8 JSON ({e})") from None
        if not isinstance(body, dict):
            raise RequestError(422, f"the body must be a JSON object, got {type(body).__name__}")
        return body

    def _send_json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), "application/json")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", PAGE_SECURITY)
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", self.routes[urlsplit(self.path).path])
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


class ExplorerServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung client never keeps the process alive

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False):
        self.explorer, self.quiet = explorer, quiet
        self.page = resources.files("aiayn").joinpath("static/explorer.html").read_bytes()
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def run(args: Any) -> None:
    """``aiayn serve``: load the model, bind (127.0.0.1 by default), print the URL, serve until Ctrl-C."""
    explorer = Explorer.load(args.model, args.device, quantize=args.quantize)
    try:
        server = ExplorerServer(explorer, args.host, args.port, quiet=args.quiet)
    except OSError as e:
        raise AiaynError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); choose another --port") from None
    print(f"aiayn: serving {explorer.path} at {server.url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("aiayn: stopped", file=sys.stderr)
    finally:
        server.server_close()
