"""What one request to ``aiayn serve`` may be: the limits, and the checks that hold every request
to them before the model does any work (app.py lists the limits for users).

Everything here turns bad input into a ``RequestError`` (a status and a one-line message), so
the handler answers every malformed request with a JSON 4xx: an oversized or unannounced body,
a Content-Length in other digits than 0-9, a body that is not UTF-8 JSON, numbers too long to
convert, arrays nested past Python's recursion limit, lone UTF-16 surrogates, a Host or Origin
from another site.
"""

from __future__ import annotations

import ipaddress
import json
import re
from email.message import Message
from typing import Any
from urllib.parse import urlsplit

MAX_BODY = 64 * 1024  # bytes of one request body
MAX_SENTENCES = 64  # sentences in one /translate request
MAX_CHARS = 1000  # characters in one sentence
MAX_BEAM = 16
MAX_BEAM_TOKENS = 16_384  # /translate: source subwords (EOS included) x beam, summed over the sentences
MAX_ATTENTION_WEIGHTS = 1_000_000  # /attention: layers x heads x (S² + T² + T·S) at the longest T
MAX_DIGITS = 20  # digits of a JSON integer; longer ones are never a usable value
MAX_DISCARD = 1024 * 1024  # bytes of a refused body read and dropped so that the client sees the answer
DECODE_SECONDS = 30.0  # from a request's last byte to its last decoding step, all waiting included
CHUNK_SENTENCES = 8  # sentences decoded together; requests waiting for the model get it between two steps
READ_SECONDS = 10.0  # from the accept to the request's last byte, head and body together
MAX_HEAD = 128 * 1024  # bytes of request line and headers (http.server refuses any line over 64 KiB)
WRITE_SECONDS = 30.0  # to send one answer
WORKERS = 4  # threads answering /translate and /attention (the model itself answers one at a time)
QUEUE = 32  # whole requests waiting for a worker; more get 503
MAX_CONNECTIONS = 256  # open at once (idle, sending, waiting or being answered); more get 503
RETRY_AFTER = 1  # seconds, in the Retry-After header of a 503


class RequestError(Exception):
    """A request the service refuses: sent as ``status`` with ``{"error": message}`` and ``headers``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class ClientGone(Exception):
    """The client closed its connection or stopped sending: there is nobody to answer."""


def busy(message: str) -> RequestError:
    return RequestError(503, message, {"Retry-After": str(RETRY_AFTER)})


# ---------------------------------------------------------------------------- the body


def content_length(headers: Message) -> int:
    """The body's length in bytes: one Content-Length of ASCII digits (``str.isdigit`` would
    also take '²' or Arabic-Indic digits, which ``int`` then rejects or reads as a number)."""
    if "Transfer-Encoding" in headers:
        raise RequestError(411, "Transfer-Encoding is not accepted; send the body with a Content-Length header")
    values = headers.get_all("Content-Length") or []
    if not values:
        raise RequestError(411, "a Content-Length header is required")
    if len(set(values)) > 1:
        raise RequestError(400, "more than one Content-Length header")
    if not re.fullmatch(r"[0-9]{1,15}", values[0].strip()):
        raise RequestError(400, f"Content-Length {values[0].strip()[:40]!r} is not a number of bytes")
    return int(values[0])


def check_content_type(headers: Message) -> None:
    """POST bodies are ``application/json`` (UTF-8): a cross-site HTML form can only send
    text/plain or form types, and a script needs a CORS preflight for JSON, which this
    service never grants."""
    kind, charset = headers.get_content_type(), headers.get_content_charset()
    if "Content-Type" not in headers or kind != "application/json" or charset not in (None, "utf-8"):
        raise RequestError(
            415, f"Content-Type must be application/json (UTF-8), got {str(headers.get('Content-Type', 'none'))[:60]!r}"
        )


def _integer(digits: str) -> int:
    # Before int(): Python refuses to convert more than 4,300 digits with a ValueError.
    if len(digits.lstrip("-")) > MAX_DIGITS:
        raise RequestError(
            422, f"a number with {len(digits.lstrip('-'))} digits; numbers here have at most {MAX_DIGITS}"
        )
    return int(digits)


def _constant(name: str) -> Any:
    raise RequestError(400, f"{name} is not JSON; send a number")


def parse_json(data: bytes) -> dict:
    """The body as a JSON object of valid Unicode, or a RequestError saying what is wrong."""
    try:
        body = json.loads(data.decode("utf-8"), parse_int=_integer, parse_constant=_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"the body is not valid UTF-8 JSON ({e})") from None
    except RecursionError:
        raise RequestError(400, "the body nests arrays or objects too deeply") from None
    try:
        # JSON may escape half of a UTF-16 pair ("\ud800"): Python keeps it as a lone surrogate,
        # which no reply (and no tokenizer) can encode. Serialising once finds one anywhere.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise RequestError(
            400, f"the body holds a lone UTF-16 surrogate (\\u{ord(e.object[e.start]):04x}); text must be valid Unicode"
        ) from None
    except RecursionError:
        raise RequestError(400, "the body nests arrays or objects too deeply") from None
    if not isinstance(body, dict):
        raise RequestError(422, f"the body must be a JSON object, got {type(body).__name__}")
    return body


# ---------------------------------------------------------------------------- fields


def only(body: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise RequestError(422, f"unknown field {unknown[0][:40]!r} (expected {', '.join(allowed)})")


def number(body: dict, name: str, default: float, low: float, high: float, integer: bool) -> Any:
    # Compared as they are: float(value) would overflow on a huge integer; NaN compares false.
    value = body.get(name, default)
    valid_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not valid_type or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        got = repr(value) if isinstance(value, (int, float)) else type(value).__name__
        raise RequestError(422, f"'{name}' must be {kind} from {low:g} to {high:g}, got {got}")
    return value


def sentence(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RequestError(422, f"{where} must be a string, got {type(value).__name__}")
    if len(value) > MAX_CHARS:
        raise RequestError(422, f"{where} has {len(value)} characters; the limit is {MAX_CHARS}")
    return value


# ---------------------------------------------------------------------------- where requests come from


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def parse_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, or ValueError."""
    parts = urlsplit(origin.strip())
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise ValueError(origin)
    return f"{parts.scheme}://{parts.netloc.lower()}"


class Origins:
    """Which Host and Origin headers a request may carry.

    DNS rebinding: a page on another site can make its own name resolve to this machine, and
    the browser then sends its requests here with that name in Host. So Host must name this
    server: an IP address (of this machine when bound to a specific one, any when bound to all
    of them), ``localhost``, or a host given with ``--allow-origin``. A browser's Origin must be
    this same server as the browser sees it (``http://`` + Host) or an allowed origin.
    Requests without these headers (curl, scripts) are not from a browser page and pass.
    """

    def __init__(self, bound: str, allowed: list[str] | tuple[str, ...] = ()):
        self.allowed = {parse_origin(o) for o in allowed}
        self.names = {"localhost", urlsplit(f"//[{bound}]" if ":" in bound else f"//{bound}").hostname}
        self.names |= {urlsplit(o).hostname for o in self.allowed}
        address = _ip(bound)
        self.any_ip = address is not None and address.is_unspecified
        self.loopback = address is None or address.is_loopback or self.any_ip

    def _host_ok(self, host: str) -> bool:
        name = urlsplit(f"//{host}").hostname
        if name in self.names:
            return True
        address = _ip(name or "")
        return address is not None and (self.any_ip or (self.loopback and address.is_loopback))

    def check(self, headers: Message) -> None:
        host = headers.get("Host")
        try:
            host_ok = host is None or self._host_ok(host.strip())
        except ValueError:  # an unparsable port or address
            host_ok = False
        if not host_ok:
            raise RequestError(
                403,
                f"Host {host.strip()[:80]!r} is not an address of this server; to serve "
                f"pages under that name, start aiayn serve with --allow-origin "
                f"http://{host.strip()[:80]}",
            )
        origin = headers.get("Origin")
        if origin is None:
            return
        try:
            same = host is not None and parse_origin(origin) == f"http://{host.strip().lower()}"
            ok = same or parse_origin(origin) in self.allowed
        except ValueError:
            ok = False
        if not ok:
            raise RequestError(
                403,
                f"Origin {origin.strip()[:80]!r} may not use this service; start aiayn serve "
                "with --allow-origin ORIGIN to allow a page elsewhere",
            )
