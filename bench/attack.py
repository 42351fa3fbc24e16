"""An attack on ``aiayn serve`` while a well-behaved client asks it something once a second.

    python -m bench.attack [--model RUN] [--quiet-seconds 20] [--seconds 60] [--decode-seconds 30]

The server is ``aiayn serve`` itself on a free loopback port (127.0.0.1 only), started as bench.load
starts it (a random tiny model unless ``--model`` names one). First the well-behaved client alone for
``--quiet-seconds``: GET /health, then POST /translate of one sentence at the default beam, once a
second. Then the same client for ``--seconds`` while these attack the server, all from the start:

- ``--idle`` sockets (100) that connect and send nothing; one the server closes is opened again;
- ``--stalled`` clients (20) that post /attention of the longest sentence the model shows (an answer
  of about 7 MB) and never read it, with a 4 KiB receive buffer so that the socket buffers cannot
  take it; every ``STALL_SECONDS`` they close and start again;
- the longest decoding the limits allow, back to back: 64 sentences of 998 characters at beam 1
  (exactly 16,384 source subwords x beam) under the server's time limit, ``--decode-seconds`` (30 s
  as by default; the tiny model's 64 x 256 steps take about 4 s on a quiet machine, so a limit of
  2 s shows them cut);
- a half-closed client, once a second: a /translate, ``shutdown(SHUT_WR)``, then it reads the answer;
- the malformed requests of the hardening round, in turn, each expecting its 4xx: bench.load's, the
  raw ones of tests/serve/test_handler.py (Content-Length in other digits or twice, a chunked body, a
  bad request line, HTTP/9.9, a 70 KB path, 5 MB announced and 300 KB sent), and a client that
  sends its head a byte every half second, which must be cut off at the read limit.

Reported as JSON lines: per phase, the well-behaved client's requests, latency p50/p99 (ms) and errors
(a status other than 200, or a failed connection); for the attack, the attackers' counts and what
they saw that they should not have (503 counts as a fair answer to an attacker: the queue was full,
or its time ran out there), and the longest requests' seconds past their limit; the server's RSS
after loading, at its peak and at the end. The bar (exit status 2 when it is missed): no errors, the
attack's p99 within 2 s of the quiet p99, no request more than 1 s past its limit, RSS under 1.5 GB,
every attacker answered as it should be. The server runs ``--threads`` intra-op threads (1 by
default: it shares the cores with the attackers and the client, and threads beyond the free cores spin).
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from aiayn.config import AiaynError
from aiayn.serve.limits import DECODE_SECONDS, MAX_SENTENCES, READ_SECONDS
from bench.common import Reporter, run_main
from bench.load import MALFORMED, Server, percentile, random_model, send

SENTENCE = "en el principio creo dios los cielos"
LONGEST = json.dumps({"sentences": ["y " * 499] * MAX_SENTENCES, "beam": 1}).encode()
STALL_SECONDS = 35.0  # past the server's 30 s to send an answer
HEAD = "POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
# (name, bytes sent as they are, status it must get)
RAW: tuple[tuple[str, bytes, int], ...] = (
    *(
        (f"Content-Length {length!r}", f"{HEAD}Content-Length: {length}\r\n\r\n{{}}".encode(), 400)
        for length in ("\u00b2", "\u0661\u0662", "12abc", "-1", "9" * 20)
    ),
    ("no Content-Length", f"{HEAD}\r\n".encode(), 411),
    ("two Content-Lengths", f"{HEAD}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}".encode(), 400),
    ("chunked", f"{HEAD}Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n".encode(), 411),
    ("unknown method", b"FETCH / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 501),
    ("HTTP/9.9", b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", 505),
    ("no request line", b"GARBAGE\r\nHost: 127.0.0.1\r\n\r\n", 400),
    ("70 KB path", b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),
    ("5 MB announced, 300 KB sent", f"{HEAD}Content-Length: 5000000\r\n\r\n".encode() + b"x" * 300_000, 413),
)


def raw(port: int, data: bytes, close_write: bool = True) -> int:
    """Send ``data``, end our side, read until the server closes; the status (0: none came)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(data)
            if close_write:
                s.shutdown(socket.SHUT_WR)
            reply = b"".join(iter(lambda: s.recv(65536), b""))
        return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.") else 0
    except (OSError, ValueError, IndexError):
        return 0


def well_behaved(port: int, seconds: float, out: list[tuple[str, int, float]]) -> None:
    """GET /health and POST /translate once a second (a second late answer delays the next), for ``seconds``."""
    body = json.dumps({"sentences": [SENTENCE]}).encode()
    start = time.monotonic()
    for n in range(int(seconds)):
        if time.monotonic() >= start + seconds:
            return
        time.sleep(max(0.0, start + n - time.monotonic()))
        for kind, method, path, data in (("health", "GET", "/health", None), ("translate", "POST", "/translate", body)):
            began = time.perf_counter()
            status = send(port, method, path, data, {})
            out.append((kind, status, time.perf_counter() - began))


class Attack:
    """The attackers, each a thread until ``stop`` is set; what they saw goes into ``counts``."""

    def __init__(self, port: int, idle: int, stalled: int, attention: bytes, decode_seconds: float):
        self.port, self.idle, self.stalled, self.attention = port, idle, stalled, attention
        self.decode_seconds = decode_seconds
        self.stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.longest: list[tuple[int, float]] = []  # (status, seconds) of each longest request
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=target, daemon=True)
            for target in (
                self.hold_idle,
                self.stall,
                self.longest_decoding,
                self.half_close,
                self.malformed,
                self.drip,
            )
        ]

    def note(self, count: str, failure: str | None = None) -> None:
        with self.lock:
            self.counts[count] += 1
            if failure and len(self.failures) < 20:
                self.failures.append(failure)

    def connect(self, receive_buffer: int = 0) -> socket.socket:
        s = socket.socket()
        if receive_buffer:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        s.connect(("127.0.0.1", self.port))
        return s

    def hold_idle(self) -> None:
        held: list[socket.socket] = []
        try:
            while not self.stop.is_set():
                while len(held) < self.idle:
                    held.append(self.connect())
                    self.note("idle_opened")
                closed, _, _ = select.select(held, [], [], 0.2)  # an idle socket reads only its closing
                for s in closed:
                    held.remove(s)
                    s.close()
                    self.note("idle_closed_by_server")
        finally:
            for s in held:
                s.close()

    def stall(self) -> None:
        while not self.stop.is_set():
            held = []
            try:
                for _ in range(self.stalled):
                    s = self.connect(receive_buffer=4096)
                    held.append(s)
                    s.sendall(self.attention)
                    self.note("stalled_requests")
                self.stop.wait(STALL_SECONDS)
            finally:
                for s in held:
                    s.close()

    def longest_decoding(self) -> None:
        while not self.stop.is_set():
            began = time.perf_counter()
            status = send(self.port, "POST", "/translate", LONGEST, {})
            took = time.perf_counter() - began
            self.longest.append((status, took))
            late = took - self.decode_seconds
            ok = status in (200, 503) and late <= 1.0
            self.note("longest_requests", None if ok else f"longest request: {status} after {took:.2f} s")

    def half_close(self) -> None:
        body = json.dumps({"sentences": [SENTENCE], "beam": 2}).encode()
        while not self.stop.wait(1.0):
            status = raw(self.port, f"{HEAD}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            self.note("half_closed_requests", None if status in (200, 503) else f"half-closed client: {status}")

    def malformed(self) -> None:
        cases = [
            (name, lambda m=m, p=p, b=b, h=h: send(self.port, m, p, b, h), want) for name, m, p, b, h, want in MALFORMED
        ]
        cases += [(name, lambda d=data: raw(self.port, d), want) for name, data, want in RAW]
        n = 0
        while not self.stop.wait(0.2):
            name, ask, want = cases[n % len(cases)]
            status = ask()
            fair = status in (want, 503)
            self.note("malformed_requests", None if fair else f"{name}: {status}, expected {want}")
            n += 1

    def drip(self) -> None:
        """A head a byte every half second: the server must close within its read limit (+1 s)."""
        while not self.stop.is_set():
            began = time.monotonic()
            with self.connect() as s:
                s.settimeout(0.5)
                answered = b""
                while True:
                    try:
                        s.sendall(b"X")
                        answered = s.recv(1)
                        break  # closed (b"") or answered
                    except TimeoutError:
                        if self.stop.is_set():
                            return
                    except OSError:
                        break
            took = time.monotonic() - began
            ok = answered == b"" and took <= READ_SECONDS + 1
            self.note("drip_clients", None if ok else f"drip client: {answered!r} after {took:.1f} s")

    def __enter__(self) -> Attack:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=90)


def latency(results: list[tuple[str, int, float]]) -> dict[str, Any]:
    ms = sorted(seconds * 1e3 for _, _, seconds in results)
    return {
        "requests": len(results),
        "latency_p50_ms": percentile(ms, 50),
        "latency_p99_ms": percentile(ms, 99),
        "latency_max_ms": ms[-1] if ms else float("nan"),
        "errors": sum(status != 200 for _, status, _ in results),
        "translate_p99_ms": percentile(sorted(s * 1e3 for k, _, s in results if k == "translate"), 99),
        "health_p99_ms": percentile(sorted(s * 1e3 for k, _, s in results if k == "health"), 99),
    }


def attention_request(port: int) -> bytes:
    """/attention of the longest sentence the model shows: the most weights, the longest answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/health")
        words = json.loads(conn.getresponse().read())["limits"]["attention_source_subwords"] - 1
    finally:
        conn.close()
    body = json.dumps({"sentence": "y " * words, "beam": 1}).encode()
    status = send(port, "POST", "/attention", body, {})
    if status not in (200, 503):  # 503: it fits, but took longer than the time limit on this machine
        raise AiaynError(f"/attention of {words} subwords got {status}; the bench expects it to fit the limits")
    head = (
        f"POST /attention HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    )
    return f"{head}\r\n\r\n".encode() + body


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="An attack on aiayn serve while a well-behaved client asks once a second.")
    p.add_argument("--model", help="a run folder or checkpoint (default: a random tiny model)")
    p.add_argument("--quiet-seconds", type=float, default=20, help="the client alone first (default 20)")
    p.add_argument("--seconds", type=float, default=60, help="the attack (default 60)")
    p.add_argument("--idle", type=int, default=100, help="idle sockets (default 100)")
    p.add_argument("--stalled", type=int, default=20, help="clients that never read their answer (default 20)")
    p.add_argument("--decode-seconds", type=float, default=DECODE_SECONDS, help="the server's time limit (default 30)")
    p.add_argument("--threads", type=int, default=1, help="the server's intra-op threads (default 1)")
    args = p.parse_args(argv)
    if args.quiet_seconds < 2 or args.seconds < 2 or args.idle < 0 or args.stalled < 0:
        raise AiaynError("--quiet-seconds and --seconds must be at least 2, --idle and --stalled not negative")
    report = Reporter("attack", torch.device("cpu"), args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else random_model(Path(tmp))
        server = Server(model, args.threads, 4, 32, "--decode-seconds", str(args.decode_seconds))
        try:
            loaded = server.memory_mb("VmRSS")
            attention = attention_request(server.port)
            quiet: list[tuple[str, int, float]] = []
            well_behaved(server.port, args.quiet_seconds, quiet)
            attacked: list[tuple[str, int, float]] = []
            rss: list[float] = []
            with Attack(server.port, args.idle, args.stalled, attention, args.decode_seconds) as attack:
                client = threading.Thread(target=well_behaved, args=(server.port, args.seconds, attacked))
                client.start()
                while client.is_alive():
                    rss.append(server.memory_mb("VmRSS"))
                    client.join(timeout=1.0)
            if server.proc.poll() is not None or "Traceback" in server.errors():
                raise AiaynError(f"aiayn serve failed during the attack:\n{server.errors()}")
            end, peak = server.memory_mb("VmRSS"), server.memory_mb("VmHWM")
        finally:
            server.stop()
    name = args.model or "random tiny"
    before = report.emit(phase="quiet", model=name, seconds=args.quiet_seconds, **latency(quiet))
    during = report.emit(phase="attack", model=name, seconds=args.seconds, **latency(attacked))
    slowest = max((t for _, t in attack.longest), default=0.0)
    attackers = report.emit(
        phase="attackers",
        model=name,
        p99_increase_ms=during["latency_p99_ms"] - before["latency_p99_ms"],
        counts=dict(sorted(attack.counts.items())),
        failures=attack.failures,
        decode_seconds=args.decode_seconds,
        longest_statuses=dict(Counter(str(s) for s, _ in attack.longest)),
        longest_max_seconds=slowest,
        longest_max_past_limit_s=slowest - args.decode_seconds,
    )
    memory = report.emit(
        phase="server",
        model=name,
        rss_loaded_mb=loaded,
        rss_attack_max_mb=max(rss, default=end),
        rss_end_mb=end,
        rss_peak_mb=peak,
    )
    errors = before["errors"] + during["errors"]
    print(
        f"\nattack: p50/p99 {before['latency_p50_ms']:.0f}/{before['latency_p99_ms']:.0f} ms quiet, "
        f"{during['latency_p50_ms']:.0f}/{during['latency_p99_ms']:.0f} ms attacked, {errors} errors; longest "
        f"request {slowest:.2f} s (limit {args.decode_seconds:g} s); RSS peak {memory['rss_peak_mb']:.0f} MB; "
        f"{attackers['counts']}",
        file=sys.stderr,
    )
    missed = [
        f"{errors} well-behaved errors" if errors else "",
        f"p99 up {attackers['p99_increase_ms']:.0f} ms" if attackers["p99_increase_ms"] > 2000 else "",
        f"a request {slowest - args.decode_seconds:.2f} s past its limit" if slowest > args.decode_seconds + 1 else "",
        f"RSS peak {memory['rss_peak_mb']:.0f} MB" if memory["rss_peak_mb"] >= 1536 else "",
        f"attackers saw {'; '.join(attack.failures)}" if attack.failures else "",
    ]
    if any(missed):
        raise AiaynError(f"the service missed the bar: {', '.join(m for m in missed if m)}")


if __name__ == "__main__":
    run_main(main)
