"""The HTTP service's endpoints on a loopback port, answered in threads: good requests give what the
Python API gives; unusable values give a JSON 4xx; work per request is bounded in size and time;
the model serves one chunk at a time and stops for a client that left. (Malformed HTTP and JSON,
methods, types, origins and timeouts: serve/test_handler.py.)"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from served import Stand, call, post, serving
from toydata import random_run

from aiayn.cli import main
from aiayn.evaluation.visualize import sentence_attention
from aiayn.serve import app as serve

SENTENCE = "en el principio creo dios los cielos"
LONG = "y " * 499  # 499 subwords of the toy tokenizer: the model's 256 positions, after truncation


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
    with serving(explorer) as httpd:
        yield httpd


def stand_in(explorer, **options) -> tuple[serve.Explorer, Stand]:
    """An Explorer over the same model whose translator is a ``Stand`` (see served.py)."""
    stand = Stand(explorer.translator, **options)
    return serve.Explorer(stand, explorer.path, explorer.step), stand


def test_health_names_the_model_not_its_path(server, run_dir):
    status, body, _ = call(server, "GET", "/health")
    assert status == 200 and body["status"] == "ok"
    assert (body["model"], body["checkpoint"], body["step"]) == (run_dir.name, "step_00000042.pt", 42)
    assert str(run_dir.parent) not in str(body)
    assert body["config"]["n_heads"] == 4 and body["config"]["encoder_layers"] == 2
    # tiny: 2 + 2 layers, 4 heads, 256 positions, max_len_offset 0, so T = S + 1 at the longest
    largest = max(s for s in range(1, 257) if 4 * (2 * s * s + 2 * ((s + 1) ** 2 + (s + 1) * s)) <= 1_000_000)
    assert body["limits"] == {
        "body_bytes": 65536,
        "sentences": 64,
        "chars": 1000,
        "beam": 16,
        "beam_tokens": 16384,
        "attention_weights": 1_000_000,
        "attention_source_subwords": largest,
        "decode_seconds": 30.0,
    }


def test_translate_gives_what_the_translator_gives(server, explorer):
    lines = [SENTENCE, "", "la luz"]
    status, body, _ = call(server, "POST", "/translate", {"sentences": lines, "beam": 3, "nbest": 2, "alpha": 1.0})
    assert status == 200
    expected = explorer.translator.translate(lines, beam_size=3, nbest=2, alpha=1.0)
    assert [[t["text"] for t in nb] for nb in body["translations"]] == [[t.text for t in nb] for nb in expected]
    assert [[t["score"] for t in nb] for nb in body["translations"]] == [
        [round(t.score, 4) for t in nb] for nb in expected
    ]
    status, body, _ = call(server, "POST", "/translate", {"sentences": [SENTENCE]})  # defaults: beam 4, nbest 1
    assert status == 200 and len(body["translations"][0]) == 1
    assert body["translations"][0][0]["text"] == explorer.translator.translate([SENTENCE])[0][0].text


def test_more_sentences_than_a_chunk_come_back_in_order(server, explorer):
    lines = [" ".join(SENTENCE.split()[i % 7 :]) or "dios" for i in range(2 * serve.CHUNK_SENTENCES + 3)]
    status, body, _ = call(server, "POST", "/translate", {"sentences": lines, "beam": 2})
    assert status == 200
    assert [nb[0]["text"] for nb in body["translations"]] == [
        nb[0].text for nb in explorer.translator.translate(lines, beam_size=2)
    ]


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
    # The bound the service checks before decoding covers what it sent.
    sent = sum(np.array(body["weights"][k]).size for k in ("encoder", "decoder", "cross"))
    assert sent <= explorer.attention_size(len(body["source"]))


@pytest.mark.parametrize(
    "body, status, message",
    [
        ([1, 2], 422, "must be a JSON object"),
        ({"sentences": "one sentence"}, 422, "'sentences' must be a list"),
        ({"sentences": [3]}, 422, r"sentences\[0\] must be a string"),
        ({"sentences": ["x"] * 65}, 422, "65 sentences; the limit is 64"),
        ({"sentences": ["ok", "y" * 1001]}, 422, r"sentences\[1\] has 1001 characters; the limit is 1000"),
        ({"sentences": ["x"], "beam": 0}, 422, "'beam' must be an integer from 1 to 16"),
        ({"sentences": ["x"], "beam": "4"}, 422, "'beam' must be an integer"),
        ({"sentences": ["x"], "beam": 2.0}, 422, "'beam' must be an integer"),
        ({"sentences": ["x"], "beam": True}, 422, "'beam' must be an integer"),
        ({"sentences": ["x"], "beam": 10**19}, 422, "'beam' must be an integer from 1 to 16"),
        ({"sentences": ["x"], "beam": 2, "nbest": 3}, 422, "'nbest' must be an integer from 1 to 2"),
        ({"sentences": ["x"], "alpha": -1}, 422, "'alpha' must be a number"),
        ({"sentences": ["x"], "alpha": [0.6]}, 422, "'alpha' must be a number from 0 to 10, got list"),
        ({"sentences": ["x"], "beams": 4}, 422, "unknown field 'beams'"),
    ],
)
def test_bad_translate_requests_are_4xx_with_a_json_error(server, body, status, message):
    got, answer, _ = call(server, "POST", "/translate", body)
    assert got == status and re.search(message, answer["error"]), answer


@pytest.mark.parametrize(
    "body, message",
    [
        ({"sentence": "   "}, "'sentence' is empty"),
        ({"sentence": None}, "'sentence' must be a string"),
        ({"sentence": "x" * 1001}, "1001 characters"),
        ({"sentences": ["x"]}, "unknown field 'sentences'"),
    ],
)
def test_bad_attention_requests_are_422(server, body, message):
    status, answer, _ = call(server, "POST", "/attention", body)
    assert status == 422 and message in answer["error"]


def test_work_per_request_is_bounded_before_the_model_runs(explorer):
    bounded, stand = stand_in(explorer)
    with serving(bounded) as server:
        # 64 x 256 source positions x beam 2 = 32,768 > 16,384
        status, answer, _ = call(server, "POST", "/translate", {"sentences": [LONG] * 64, "beam": 2})
        assert status == 413 and "16384 source subwords x beam 2 = 32768; the limit is 16384" in answer["error"]
        # 256 source positions: 4 x (2 x 256² + 2 x (256² + 256 x 256)) weights, over 1,000,000
        status, answer, _ = call(server, "POST", "/attention", {"sentence": LONG})
        assert status == 413 and re.search(r"is 256 subwords .*at most \d+ \(1,000,000 weights\)", answer["error"])
    assert stand.calls == 0


def test_concurrent_requests_use_the_model_one_at_a_time(explorer):
    """Six requests at once on six workers: the stand-in notes any call that starts while another
    runs (each lasts 50 ms), so without the model lock this fails. What is tested is the order of
    the calls, not their speed: six threads that hand the model on at every decoding step each
    wait to be scheduled, which on a loaded machine once took more than the 30 s allowed, so the
    server's time limit and the client's are both 10 minutes here."""
    guarded, stand = stand_in(explorer, delay=0.05)
    guarded.decode_seconds = 600.0
    expected = explorer.translator.translate([SENTENCE])[0][0].text
    results: list = []
    with serving(guarded, workers=6) as server:

        def worker() -> None:
            status, body, _ = call(server, "POST", "/translate", {"sentences": [SENTENCE]}, timeout=600)
            results.append((status, body["translations"][0][0]["text"]))

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [(200, expected)] * 6
    assert stand.calls == 6 and stand.most_active == 1


def test_decoding_time_limit_stops_between_chunks(explorer):
    slow, stand = stand_in(explorer, delay=0.3)
    slow.decode_seconds = 0.2
    with serving(slow) as server:
        lines = [SENTENCE] * (3 * serve.CHUNK_SENTENCES)
        status, answer, response = call(server, "POST", "/translate", {"sentences": lines})
    assert status == 503 and "within 0.2 s" in answer["error"] and response.getheader("Retry-After") == "1"
    assert stand.calls == 1  # the first chunk ran; the time was up before the second


def test_a_client_that_disconnects_stops_its_request(explorer):
    gate = threading.Event()
    held, stand = stand_in(explorer, gate=gate)
    with serving(held, workers=1) as server:
        body = json.dumps({"sentences": [SENTENCE] * (3 * serve.CHUNK_SENTENCES)}).encode()
        s = socket.create_connection(server.server_address[:2], timeout=30)
        s.sendall(post("/translate", body))
        assert stand.entered.wait(30)  # the first chunk is decoding
        s.close()
        gate.set()
        # One worker: /health is answered once the abandoned request has ended.
        assert call(server, "GET", "/health")[0] == 200
    assert stand.calls == 1


def test_a_full_queue_gets_503_with_retry_after(explorer):
    gate = threading.Event()
    held, stand = stand_in(explorer, gate=gate)
    with serving(held, workers=1, queue_size=1) as server:
        answers: list = []

        def ask() -> None:
            answers.append(call(server, "POST", "/translate", {"sentences": [SENTENCE]})[0])

        first = threading.Thread(target=ask)
        first.start()
        assert stand.entered.wait(30)  # the one worker is busy
        second = threading.Thread(target=ask)
        second.start()
        deadline = time.monotonic() + 30
        while server.waiting.qsize() < 1 and time.monotonic() < deadline:  # the queue is full
            time.sleep(0.01)
        status, answer, response = call(server, "POST", "/translate", {"sentences": [SENTENCE]})
        assert status == 503 and "busy" in answer["error"] and response.getheader("Retry-After") == "1"
        gate.set()
        first.join()
        second.join()
    assert answers == [200, 200] and stand.calls == 2


def test_serve_command_reports_a_busy_port_in_one_line(server, run_dir, capsys):
    host, port = server.server_address[:2]
    assert main(["serve", "--model", str(run_dir), "--host", host, "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"aiayn: error: cannot listen on {host}:{port}")


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("127.0.0.1", False), ("localhost", False)])
def test_serve_warns_that_there_is_no_authentication_beyond_loopback(run_dir, capsys, monkeypatch, host, warned):
    def stop_at_once(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(serve.ExplorerServer, "serve_forever", stop_at_once)
    assert main(["serve", "--model", str(run_dir), "--host", host, "--port", "0"]) == 0
    err = capsys.readouterr().err
    assert ("no authentication" in err) == warned, err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--allow-origin", "gpu-box"], "--allow-origin 'gpu-box': expected scheme://host[:port]"),
        (["--allow-origin", "http://gpu-box/page"], "expected scheme://host[:port]"),
        (["--queue", "0"], "--workers and --queue must be at least 1"),
        (["--decode-seconds", "0"], "--decode-seconds must be above 0 and at most 3600, got 0"),
        (["--decode-seconds", "nan"], "--decode-seconds must be above 0"),
    ],
)
def test_serve_flags_are_checked_in_one_line(run_dir, capsys, flags, message):
    assert main(["serve", "--model", str(run_dir), "--port", "0", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_decoding_stops_at_the_time_limit_inside_a_chunk(explorer):
    """8 sentences of 256 positions at beam 8: one chunk, about a second of decoding here. The
    limit is checked before every decoding step, so the request ends a step after it."""
    limited = serve.Explorer(explorer.translator, explorer.path, explorer.step, decode_seconds=0.05)
    with serving(limited) as server:
        start = time.monotonic()
        status, answer, _ = call(server, "POST", "/translate", {"sentences": [LONG] * 8, "beam": 8})
        took = time.monotonic() - start
    assert status == 503 and "within 0.05 s" in answer["error"]
    assert took < 0.4, f"{took:.2f} s"


def test_the_model_goes_to_waiting_requests_first_come_first_served():
    """Two requests wait while a third holds the model; the holder lets go and asks again at once,
    as a request of many chunks does: it comes after them. (A plain lock goes to whichever thread
    asks first once it is free, most often the one that just let it go.)"""
    turns, order = serve.Turns(), []
    deadline = time.monotonic() + 30

    def wait_in_line(name: str) -> None:
        with turns.turn(deadline) as mine:
            order.append((name, mine is not None))

    waiting = [threading.Thread(target=wait_in_line, args=(name,)) for name in ("b", "c")]
    with turns.turn(deadline) as mine:
        assert mine is not None
        for n, thread in enumerate(waiting, 2):
            thread.start()
            while len(turns.line) < n and time.monotonic() < deadline:
                time.sleep(0.001)
    wait_in_line("a")
    for thread in waiting:
        thread.join()
    assert order == [("b", True), ("c", True), ("a", True)]


def test_a_request_waiting_for_the_model_has_it_between_two_steps_of_another():
    turns, order = serve.Turns(), []
    deadline = time.monotonic() + 30

    def short() -> None:
        with turns.turn(deadline):
            order.append("short")

    waiting = threading.Thread(target=short)
    with turns.turn(deadline) as share:
        order.append("long, step 1")
        waiting.start()
        while len(turns.line) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert share()
        order.append("long, step 2")
        assert share()  # nobody waits: at once
    waiting.join()
    assert order == ["long, step 1", "short", "long, step 2"]


def test_waiting_for_the_model_ends_at_the_deadline():
    turns = serve.Turns()
    with turns.turn(time.monotonic() + 30):
        start = time.monotonic()
        with turns.turn(start + 0.1) as mine:
            assert mine is None and 0.1 <= time.monotonic() - start < 1
    assert not turns.line


def test_attention_works_when_the_runs_nbest_exceeds_the_beam(tmp_path):
    """A run tuned with decode.nbest = 3: /attention at beam 1 needs only the best translation."""
    wide = serve.Explorer.load(random_run(tmp_path, min_len=4, max_len_offset=0, nbest=3))
    with serving(wide) as server:
        status, answer, _ = call(server, "POST", "/attention", {"sentence": SENTENCE, "beam": 1})
    assert status == 200, answer
    assert answer["translation"] == wide.translator.translate([SENTENCE], beam_size=1, nbest=1)[0][0].text


def held_server_test(explorer, decode_seconds: float, requests: list[list[str]], wait: float = 0.0):
    """One worker, held by a first request while ``requests`` arrive in order and wait in the queue;
    released ``wait`` seconds later. Returns the statuses of all and the stand's first lines."""
    gate = threading.Event()
    held, stand = stand_in(explorer, gate=gate)
    held.decode_seconds = decode_seconds
    statuses: dict[int, int] = {}
    with serving(held, workers=1) as server:

        def ask(n: int, lines: list[str]) -> None:
            statuses[n] = call(server, "POST", "/translate", {"sentences": lines, "beam": 1})[0]

        threads = [threading.Thread(target=ask, args=(n, lines)) for n, lines in enumerate([["la luz"], *requests])]
        threads[0].start()
        assert stand.entered.wait(30)
        for n, thread in enumerate(threads[1:], 1):
            thread.start()
            deadline = time.monotonic() + 30
            while server.waiting.qsize() < n and time.monotonic() < deadline:
                time.sleep(0.01)
        time.sleep(wait)
        gate.set()
        for thread in threads:
            thread.join()
    return [statuses[n] for n in range(len(threads))], stand.lines


def test_waiting_requests_get_a_worker_smallest_first(explorer):
    """A request of 24 sentences, then one of one sentence, wait for the one worker: the small one
    goes first, so that a burst of large requests does not hold up small ones."""
    statuses, lines = held_server_test(explorer, 30.0, [["dios"] * 3 * serve.CHUNK_SENTENCES, ["los cielos"]])
    assert statuses == [200, 200, 200] and lines == ["la luz", "los cielos", "dios", "dios", "dios"]


def test_a_request_waiting_for_a_worker_gets_its_503_at_its_time_limit(explorer):
    """The limit counts from the request's arrival, and a request still waiting for a worker then
    is answered at once, not once a worker is free, and never decoded."""
    gate = threading.Event()
    held, stand = stand_in(explorer, gate=gate)
    held.decode_seconds = 0.5
    with serving(held, workers=1) as server:
        first = threading.Thread(target=call, args=(server, "POST", "/translate", {"sentences": ["la luz"]}))
        first.start()
        assert stand.entered.wait(30)
        start = time.monotonic()
        status, answer, _ = call(server, "POST", "/translate", {"sentences": [SENTENCE]})
        took = time.monotonic() - start
        gate.set()
        first.join()
    assert status == 503 and "within 0.5 s" in answer["error"] and 0.5 <= took < 1.0
    assert stand.lines == ["la luz"]


def test_time_spent_waiting_for_a_worker_counts_against_the_limit(explorer):
    """Held 0.6 s in the queue, then a second of decoding under a 1 s limit: the 503 comes 1 s after
    the request arrived, not 1 s after a worker took it."""
    gate = threading.Event()
    held, stand = stand_in(explorer, gate=gate)
    held.decode_seconds = 1.0
    with serving(held, workers=1) as server:
        first = threading.Thread(target=call, args=(server, "POST", "/translate", {"sentences": ["la luz"]}))
        first.start()
        assert stand.entered.wait(30)
        threading.Timer(0.6, gate.set).start()
        start = time.monotonic()
        status, answer, _ = call(server, "POST", "/translate", {"sentences": [LONG] * 8, "beam": 8})
        took = time.monotonic() - start
        first.join()
    assert status == 503 and "within 1 s" in answer["error"] and 1.0 <= took < 1.4, took


def test_a_request_answered_at_its_time_limit_is_left_alone_by_the_worker_that_pops_it(explorer):
    """The 503 of a request that timed out in the queue is sent while the request is still queued;
    the worker that pops it later must leave that connection to the loop, which closes it when the
    client leaves (once, a worker's mark on it left its closed socket registered, and the next
    connection given the same descriptor stopped the loop)."""
    gate = threading.Event()
    held, stand = stand_in(explorer, gate=gate)
    held.decode_seconds = 0.5
    with serving(held, workers=1) as server:
        first = threading.Thread(target=call, args=(server, "POST", "/translate", {"sentences": ["la luz"]}))
        first.start()
        assert stand.entered.wait(30)
        with socket.create_connection(server.server_address[:2], timeout=10) as late:
            late.sendall(post("/translate", json.dumps({"sentences": [SENTENCE]}).encode()))
            assert b"".join(iter(lambda: late.recv(65536), b"")).startswith(b"HTTP/1.1 503")
            gate.set()
            first.join()
            time.sleep(0.2)  # the worker pops it
        time.sleep(0.2)  # the loop closes it
        assert not [key for key in server.selector.get_map().values() if key.fileobj.fileno() == -1]
        assert call(server, "GET", "/health")[0] == 200
    assert stand.calls == 1
