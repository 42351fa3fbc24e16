"""The HTTP service on a loopback port, answered in a thread: good requests give what the Python API
gives; bad ones give 400/404/405/411/413/422 with a JSON error, never a 500, and the server keeps going."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from aiayn import serve
from aiayn.cli import main
from aiayn.visualize import sentence_attention
from toydata import random_run

SENTENCE = "en el principio creo dios los cielos"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder with a random tiny model whose translations are 4–8 subwords long."""
    return random_run(tmp_path_factory.mktemp("run"), step=42, min_len=4, max_len_offset=0)


@pytest.fixture(scope="module")
def explorer(run_dir) -> serve.Explorer:
    torch.set_num_threads(1)
    return serve.Explorer.load(run_dir)


@pytest.fixture(scope="module")
def server(explorer):
    """The service on a free loopback port (port 0: the kernel picks one), in a thread."""
    httpd = serve.ExplorerServer(explorer, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def call(server, method: str, path: str, body: bytes | dict | list | None = None,
         headers: dict | None = None) -> tuple[int, dict | str, http.client.HTTPResponse]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    conn.request(method, path, body=data, headers=headers or {})
    response = conn.getresponse()
    raw = response.read().decode("utf-8")
    conn.close()
    kind = response.getheader("Content-Type", "")
    return response.status, json.loads(raw) if kind == "application/json" else raw, response


def test_health_names_the_model_and_its_shape(server, run_dir):
    status, body, _ = call(server, "GET", "/health")
    assert status == 200 and body["status"] == "ok"
    assert body["model"] == str(run_dir / "checkpoints" / "step_00000042.pt") and body["step"] == 42
    assert body["config"]["n_heads"] == 4 and body["config"]["encoder_layers"] == 2
    assert body["limits"] == {"body_bytes": 65536, "sentences": 64, "chars": 1000, "beam": 16}


def test_translate_gives_what_the_translator_gives(server, explorer):
    lines = [SENTENCE, "", "la luz"]
    status, body, _ = call(server, "POST", "/translate", {"sentences": lines, "beam": 3, "nbest": 2, "alpha": 1.0})
    assert status == 200
    expected = explorer.translator.translate(lines, beam_size=3, nbest=2, alpha=1.0)
    assert [[t["text"] for t in nb] for nb in body["translations"]] == [[t.text for t in nb] for nb in expected]
    assert [[t["score"] for t in nb] for nb in body["translations"]] == \
        [[round(t.score, 4) for t in nb] for nb in expected]
    status, body, _ = call(server, "POST", "/translate", {"sentences": [SENTENCE]})  # defaults: beam 4, nbest 1
    assert status == 200 and len(body["translations"][0]) == 1
    assert body["translations"][0][0]["text"] == explorer.translator.translate([SENTENCE])[0][0].text


def test_attention_gives_pieces_and_rounded_weights_of_every_layer_and_head(server, explorer):
    status, body, _ = call(server, "POST", "/attention", {"sentence": SENTENCE, "beam": 2})
    assert status == 200
    maps = sentence_attention(explorer.translator, SENTENCE, 2)
    assert body["source"] == maps.source and body["target"] == maps.target and body["translation"] == maps.translation
    for kind in ("encoder", "decoder", "cross"):
        got = np.array(body["weights"][kind])
        assert got.shape == getattr(maps, kind).shape  # [layer][head][i][j]
        np.testing.assert_allclose(got, getattr(maps, kind), atol=5.1e-5)
        np.testing.assert_array_equal(got, np.round(got, 4))
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=got.shape[-1] * 5e-5)
    decoder = np.array(body["weights"]["decoder"])
    future = np.triu(np.ones(decoder.shape[-2:], dtype=bool), 1)  # query i, key j > i
    assert (decoder[..., future] == 0).all()


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid UTF-8 JSON"),
    (b"\xff\xfe", 400, "not valid UTF-8 JSON"),
    ([1, 2], 422, "must be a JSON object"),
    ({"sentences": "one sentence"}, 422, "'sentences' must be a list"),
    ({"sentences": [3]}, 422, r"sentences\[0\] must be a string"),
    ({"sentences": ["x"] * 65}, 422, "65 sentences; the limit is 64"),
    ({"sentences": ["ok", "y" * 1001]}, 422, r"sentences\[1\] has 1001 characters; the limit is 1000"),
    ({"sentences": ["x"], "beam": 0}, 422, "'beam' must be an integer from 1 to 16"),
    ({"sentences": ["x"], "beam": "4"}, 422, "'beam' must be an integer"),
    ({"sentences": ["x"], "beam": 2.0}, 422, "'beam' must be an integer"),
    ({"sentences": ["x"], "beam": True}, 422, "'beam' must be an integer"),
    ({"sentences": ["x"], "beam": 2, "nbest": 3}, 422, "'nbest' must be an integer from 1 to 2"),
    ({"sentences": ["x"], "alpha": -1}, 422, "'alpha' must be a number"),
    ({"sentences": ["x"], "beams": 4}, 422, "unknown field 'beams'"),
])
def test_bad_translate_requests_are_4xx_with_a_json_error(server, body, status, message):
    got, answer, _ = call(server, "POST", "/translate", body)
    assert got == status and re.search(message, answer["error"]), answer


@pytest.mark.parametrize("body, message", [
    ({"sentence": "   "}, "'sentence' is empty"),
    ({"sentence": None}, "'sentence' must be a string"),
    ({"sentence": "x" * 1001}, "1001 characters"),
    ({"sentences": ["x"]}, "unknown field 'sentences'"),
])
def test_bad_attention_requests_are_422(server, body, message):
    status, answer, _ = call(server, "POST", "/attention", body)
    assert status == 422 and message in answer["error"]


def test_oversized_body_is_413_without_reading_it(server):
    body = json.dumps({"sentences": ["a" * 900] * 80}).encode()
    assert len(body) > serve.MAX_BODY
    status, answer, _ = call(server, "POST", "/translate", body)
    assert status == 413 and "limit is 65536" in answer["error"]


def test_no_content_length_is_411(server):
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b"".join(iter(lambda: s.recv(4096), b""))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 411") and b"Content-Length header is required" in body


def test_unknown_paths_and_wrong_methods(server):
    status, answer, _ = call(server, "GET", "/nope")
    assert status == 404 and "no such path /nope" in answer["error"]
    status, answer, response = call(server, "GET", "/translate")
    assert status == 405 and response.getheader("Allow") == "POST"
    status, answer, response = call(server, "POST", "/health", {})
    assert status == 405 and response.getheader("Allow") == "GET"
    assert call(server, "GET", "/health?verbose=1")[0] == 200  # a query string does not change the route


def test_page_is_self_contained_and_served_from_the_package(server):
    status, page, response = call(server, "GET", "/")
    assert status == 200 and response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert "default-src 'none'" in response.getheader("Content-Security-Policy")
    assert "<script>" in page and "/attention" in page and 'id="lines"' in page and 'id="grid"' in page
    # Nothing fetched from elsewhere: no external scripts, styles, fonts or images.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert not re.search(r"""url\(\s*["']?(https?:)?//""", page) and "@import" not in page


def test_concurrent_requests_share_the_model_safely(server, explorer):
    expected = explorer.translator.translate([SENTENCE])[0][0].text
    results: list = []

    def worker() -> None:
        status, body, _ = call(server, "POST", "/translate", {"sentences": [SENTENCE]})
        results.append((status, body["translations"][0][0]["text"]))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(200, expected)] * 6


def test_serve_command_reports_a_busy_port_in_one_line(server, run_dir, capsys):
    host, port = server.server_address[:2]
    assert main(["serve", "--model", str(run_dir), "--host", host, "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"aiayn: error: cannot listen on {host}:{port}")
