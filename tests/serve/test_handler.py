"""The service as a hostile or broken client sees it, over raw sockets and http.client on a loopback
port: every malformed request gets a JSON 4xx (never a 500, a reset or silence), the answer is valid
UTF-8 JSON, requests from other sites are refused, and slow clients are cut off."""

from __future__ import annotations

import email.message
import json
import re
import socket
import time

import pytest
import torch
from served import call, post, raw, serving
from toydata import random_run

from aiayn.serve import app as serve
from aiayn.serve.limits import Origins, RequestError

SENTENCE = "en el principio creo dios los cielos"


@pytest.fixture(scope="module")
def explorer(tmp_path_factory) -> serve.Explorer:
    torch.set_num_threads(1)
    return serve.Explorer.load(random_run(tmp_path_factory.mktemp("run"), min_len=4, max_len_offset=0))


@pytest.fixture(scope="module")
def server(explorer):
    with serving(explorer) as httpd:
        yield httpd


def json_error(body: bytes) -> str:
    return json.loads(body.decode("utf-8"))["error"]


DEEP = 30_000  # within the 64 KiB body, and far past Python's recursion limit


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "not valid UTF-8 JSON"),
        (b"\xff\xfe", 400, "not valid UTF-8 JSON"),
        (b'\xef\xbb\xbf{"sentences": []}', 400, "not valid UTF-8 JSON"),  # a BOM is not JSON
        (
            b'{"sentences": ["x"], "beam": 1' + b"0" * 399 + b"}",
            422,
            "a number with 400 digits; numbers here have at most 20",
        ),
        (b'{"sentences": ["x"], "beam": 1' + b"0" * 4999 + b"}", 422, "a number with 5000 digits"),
        (b'{"sentences": [' + b"9" * 5000 + b"]}", 422, "5000 digits"),
        (b'{"sentences": ["x"], "beam": 1e400}', 422, "'beam' must be an integer from 1 to 16, got inf"),
        (b'{"sentences": ["x"], "alpha": -1e999}', 422, "'alpha' must be a number from 0 to 10, got -inf"),
        (b'{"sentences": ["x"], "alpha": NaN}', 400, "NaN is not JSON"),
        (b'{"sentences": ["x"], "alpha": Infinity}', 400, "Infinity is not JSON"),
        (b'{"sentences": ' + b"[" * DEEP + b"]" * DEEP + b"}", 400, "nests arrays or objects too deeply"),
        (b'{"sentences": ["\\ud800 lone"]}', 400, r"lone UTF-16 surrogate \(\\ud800\)"),
        (b'{"\\udfff": 1}', 400, r"lone UTF-16 surrogate \(\\udfff\)"),
        (b'{"sentences": ["x"], "\\ud800": 1}', 400, "surrogate"),
    ],
)
def test_malformed_bodies_get_a_json_4xx(server, body, status, message):
    got, answer, response = call(server, "POST", "/translate", body)
    assert response.getheader("Content-Type") == "application/json"
    assert got == status and re.search(message, answer["error"]), answer


def test_a_valid_surrogate_pair_is_text_and_the_answer_is_utf8(server):
    status, answer, _ = call(server, "POST", "/translate", b'{"sentences": ["dios \\ud83d\\ude00"]}')
    assert status == 200 and isinstance(answer["translations"][0][0]["text"], str)
    status, answer, _ = call(server, "POST", "/translate", '{"sentences": ["dios é ✓"], "bëam": 1}'.encode())
    assert status == 422 and "unknown field 'bëam'" in answer["error"]  # echoed as UTF-8, not escaped


@pytest.mark.parametrize(
    "length, status, message",
    [
        (b"\xb2", 400, r"Content-Length '\u00b2' is not a number"),  # '²': isdigit() is True, int() fails
        ("١٢".encode(), 400, "is not a number of bytes"),  # Arabic-Indic 12, sent as UTF-8 bytes
        (b"12abc", 400, "is not a number of bytes"),
        (b"-1", 400, "is not a number of bytes"),
        (b"99999999999999999999", 400, "is not a number of bytes"),
    ],
)
def test_content_length_must_be_ascii_digits(server, length, status, message):
    head = b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: "
    got, headers, body = raw(server, head + length + b"\r\n\r\n{}", close_write=True)
    assert got == status and headers["content-type"] == "application/json"
    assert re.search(message, json_error(body)), body


def test_content_length_missing_doubled_or_chunked(server):
    got, _, body = raw(server, b"POST /translate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got == 403  # Host comes first: "x" is not this server
    got, _, body = raw(server, b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert got == 411 and "Content-Length header is required" in json_error(body)
    got, _, body = raw(server, post("/translate", b"{}") + b"", close_write=True)
    assert got == 422  # the well-formed control: an empty object reaches the fields
    doubled = b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
    got, _, body = raw(server, doubled, close_write=True)
    assert got == 400 and "more than one Content-Length" in json_error(body)
    chunked = b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    got, _, body = raw(server, chunked, close_write=True)
    assert got == 411 and "Transfer-Encoding is not accepted" in json_error(body)


def test_an_oversized_body_gets_its_413_not_a_reset(server):
    body = json.dumps({"sentences": ["a" * 900] * 80}).encode()
    assert len(body) > serve.MAX_BODY
    status, answer, response = call(server, "POST", "/translate", body)
    assert status == 413 and "limit is 65536" in answer["error"]
    assert response.getheader("Connection") == "close"
    # Announced 5 MB, sent 300 KB: answered, the part sent read and dropped, then closed.
    head = post("/translate", b"")
    head = head.replace(b"Content-Length: 0", b"Content-Length: 5000000")
    got, headers, body = raw(server, head + b"x" * 300_000, close_write=True)
    assert got == 413 and "request body of 5000000 bytes" in json_error(body) and headers["connection"] == "close"
    assert call(server, "GET", "/health")[0] == 200  # and the server goes on


def test_a_client_still_sending_a_refused_body_can_finish_and_read_the_413(server):
    """The answer comes right after the head; the server then reads and drops the body. Closing
    at once instead would reset the connection under a client that is still sending."""
    body = b"x" * 200_000
    head = post("/translate", b"").replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode())
    with socket.create_connection(server.server_address[:2], timeout=30) as s:
        s.sendall(head)
        time.sleep(0.3)  # refused by now
        for start in range(0, len(body), 20_000):
            s.sendall(body[start : start + 20_000])
            time.sleep(0.01)
        reply = b"".join(iter(lambda: s.recv(65536), b""))
    assert reply.startswith(b"HTTP/1.1 413") and b"request body of 200000 bytes" in reply


@pytest.mark.parametrize("method", ["HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_a_json_405(server, method):
    status, answer, response = call(server, method, "/translate", b"{}" if method in ("PUT", "PATCH") else None)
    assert status == 405 and response.getheader("Allow") == "POST"
    assert response.getheader("Content-Type") == "application/json"
    if method == "HEAD":
        assert answer == "" or answer is None  # a HEAD answer has headers only
    else:
        assert answer["error"] == f"/translate takes POST, not {method}"
    assert call(server, method, "/")[0] == 405


@pytest.mark.parametrize(
    "request_line, status, message",
    [
        (b"FETCH / HTTP/1.1", 501, "Unsupported method"),
        (b"GET / HTTP/9.9", 505, "Invalid HTTP version"),
        (b"GARBAGE", 400, "Bad request"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1", 414, ""),
    ],
)
def test_http_server_refusals_are_json_too(server, request_line, status, message):
    got, headers, body = raw(server, request_line + b"\r\nHost: 127.0.0.1\r\n\r\n", close_write=True)
    assert got == status and headers["content-type"] == "application/json" and message in json_error(body)


@pytest.mark.parametrize(
    "content_type, status",
    [
        (None, 415),
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data", 415),
        ("application/json; charset=latin-1", 415),
        ("application/json; charset=UTF-8", 200),
        ("Application/JSON", 200),
    ],
)
def test_posts_must_be_json(server, content_type, status):
    got, answer, _ = call(
        server, "POST", "/translate", {"sentences": [SENTENCE], "beam": 1}, headers={"Content-Type": content_type}
    )
    assert got == status, answer
    if status == 415:
        assert "Content-Type must be application/json" in answer["error"]


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"Host": "evil.example:8000"}, 403),  # DNS rebinding: another site's name for this machine
        ({"Host": "localhost:1234"}, 200),  # an ssh tunnel changes the port, not the name
        ({"Host": "[::1]:80"}, 200),
        ({"Host": "127.0.0.1", "Origin": "http://127.0.0.1"}, 200),  # the page itself
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "null"}, 403),  # sandboxed frames and file:// pages
        ({"Host": "127.0.0.1:8000", "Origin": "http://127.0.0.1:9999"}, 403),  # another local service's page
        ({"Host": "gpu-box:8000"}, 403),
    ],
)
def test_host_and_origin_must_be_this_server(server, headers, status):
    got, answer, _ = call(server, "POST", "/translate", {"sentences": [SENTENCE], "beam": 1}, headers=headers)
    assert got == status, answer
    if status == 403:
        assert "--allow-origin" in answer["error"]
        assert call(server, "GET", "/", headers=headers)[0] == 403  # not even the page


def test_allow_origin_admits_a_named_host(explorer):
    with serving(explorer, allow_origins=["http://gpu-box:8000"]) as server:
        headers = {"Host": "gpu-box:8000", "Origin": "http://gpu-box:8000"}
        assert call(server, "GET", "/health", headers=headers)[0] == 200
        assert call(server, "GET", "/health", headers={"Origin": "http://GPU-box:8000"})[0] == 200
        assert call(server, "GET", "/health", headers={"Host": "evil.example"})[0] == 403


def headers(**fields: str) -> email.message.Message:
    message = email.message.Message()
    for name, value in fields.items():
        message[name] = value
    return message


def test_origins_by_bound_address():
    everywhere, lan = Origins("0.0.0.0"), Origins("192.168.1.5")
    everywhere.check(headers(Host="192.168.1.9:8000", Origin="http://192.168.1.9:8000"))
    lan.check(headers(Host="192.168.1.5:8000"))
    for origins, host in (
        (everywhere, "evil.example:8000"),
        (lan, "127.0.0.1:8000"),
        (lan, "10.0.0.1"),
        (everywhere, "[::1"),
        (everywhere, "a:b:c"),
    ):
        with pytest.raises(RequestError) as refused:
            origins.check(headers(Host=host))
        assert refused.value.status == 403


def test_page_cannot_be_framed(server):
    status, _, response = call(server, "GET", "/")
    policy = response.getheader("Content-Security-Policy")
    assert status == 200 and "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    assert response.getheader("X-Content-Type-Options") == "nosniff"


def closed_within(server, data: bytes, seconds: float, drip: float = 0.0) -> float:
    """Send ``data`` (a byte every ``drip`` seconds when given), then wait; the seconds until the
    server closed the connection without answering."""
    start = time.monotonic()
    with socket.create_connection(server.server_address[:2], timeout=seconds) as s:
        try:
            for i in range(len(data)) if drip else [None]:
                s.sendall(data if i is None else data[i : i + 1])
                time.sleep(drip)
            assert s.recv(65536) == b""
        except (ConnectionResetError, BrokenPipeError):
            pass
    return time.monotonic() - start


def test_slow_clients_are_cut_off(explorer):
    with serving(explorer, read_seconds=0.5) as server:
        assert closed_within(server, b"", 10) < 3  # connects, sends nothing
        assert closed_within(server, b"POST /translate HTTP/1.1\r\n", 10) < 3  # half a head
        # A byte every 0.1 s would take 9 s for this head: each read is quick, the whole is not.
        assert closed_within(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" * 2 + b"\r\n", 10, drip=0.1) < 3
        assert closed_within(server, post("/translate", b'{"sentences": []}')[:-5], 10) < 3  # a short body
        assert call(server, "GET", "/health")[0] == 200


def test_idle_connections_hold_no_worker(explorer):
    """Twenty sockets that send nothing, against one worker and a queue of one: /health and
    /translate are still answered at once (a worker per connection would wait on each for 3 s)."""
    with serving(explorer, workers=1, queue_size=1, read_seconds=3) as server:
        idle = [socket.create_connection(server.server_address[:2]) for _ in range(20)]
        try:
            start = time.monotonic()
            assert call(server, "GET", "/health")[0] == 200
            assert call(server, "POST", "/translate", {"sentences": [SENTENCE], "beam": 1})[0] == 200
            assert time.monotonic() - start < 1.5
        finally:
            for s in idle:
                s.close()


def test_the_time_to_send_a_request_counts_from_the_accept(explorer):
    """Four silent sockets opened at once are all closed one read time after they connected, not
    one after another."""
    with serving(explorer, workers=1, read_seconds=0.5) as server:
        start = time.monotonic()
        idle = [socket.create_connection(server.server_address[:2], timeout=10) for _ in range(4)]
        for s in idle:
            with s:
                assert s.recv(1) == b""
        assert time.monotonic() - start < 1.3


def test_beyond_the_connection_limit_a_client_gets_503_at_once(explorer):
    with serving(explorer, max_connections=3) as server:
        idle = [socket.create_connection(server.server_address[:2]) for _ in range(3)]
        try:
            with socket.create_connection(server.server_address[:2], timeout=2) as s:
                reply = b"".join(iter(lambda: s.recv(65536), b""))  # without sending a byte
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head
            assert "3 connections open" in json_error(body)
        finally:
            for s in idle:
                s.close()
        time.sleep(0.3)  # the server notices that they left
        assert call(server, "GET", "/health")[0] == 200


def test_a_client_that_never_reads_its_answer_holds_no_worker(explorer):
    """/attention's 7 MB answer to a client that reads nothing (a small receive buffer, so that the
    socket buffers cannot take it): the one worker is free for the next request at once."""
    sentence = "y " * (explorer.attention_source - 1)
    with serving(explorer, workers=1) as server:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(server.server_address[:2])
        try:
            stalled.sendall(post("/attention", json.dumps({"sentence": sentence, "beam": 1}).encode()))
            time.sleep(1.0)  # the answer is made and being sent
            start = time.monotonic()
            assert call(server, "POST", "/translate", {"sentences": [SENTENCE], "beam": 1})[0] == 200
            assert time.monotonic() - start < 2
        finally:
            stalled.close()


@pytest.mark.parametrize(
    "path, body", [("/translate", {"sentences": [SENTENCE], "beam": 2}), ("/attention", {"sentence": SENTENCE})]
)
def test_a_half_closed_client_gets_its_answer(server, path, body):
    """``shutdown(SHUT_WR)`` after the body, as ``nc -N`` does: the client still reads."""
    status, headers, answer = raw(server, post(path, json.dumps(body).encode()), close_write=True)
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(answer)


def test_expect_100_continue_is_answered_before_the_body(server):
    body = json.dumps({"sentences": [SENTENCE], "beam": 1}).encode()
    with socket.create_connection(server.server_address[:2], timeout=30) as s:
        s.sendall(post("/translate", b"", **{"Content-Length": str(len(body)), "Expect": "100-continue"}))
        s.settimeout(0.5)  # curl waits 1 s before it sends the body anyway
        assert s.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.settimeout(30)
        s.sendall(body)
        reply = b"".join(iter(lambda: s.recv(65536), b""))
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and b'"translations"' in reply
