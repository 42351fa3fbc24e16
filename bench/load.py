"""Load on ``aiayn serve``: many concurrent clients, each sending many requests, malformed ones mixed in.

    python -m bench.load [--model RUN] [--clients 50] [--requests 100] [--malformed 0.2] [--seconds 300]

The server is ``aiayn serve`` itself, started on a free loopback port (127.0.0.1 only) with
``--threads`` intra-op threads and a queue as long as the number of clients, so that every
request is served rather than refused (a shorter ``--queue`` measures the 503s of overload).
Without ``--model`` it serves a random tiny model written to a temporary folder. Each client
thread sends ``--requests`` requests, one connection each, until ``--seconds`` have passed:
well-formed ones (/translate of 1-4 sentences at beam 1-4, /attention, /health) and, with
probability ``--malformed``, one of the malformed requests in ``MALFORMED`` with the 4xx it must get.

Reported: requests/s, latency p50/p99 of the well-formed requests, errors (a well-formed request
not answered 200, a malformed one not answered its 4xx, a connection that failed), the count of
5xx answers, and the server's resident memory after loading, at the end and at its peak (VmHWM).
The guarantees: no errors, no 5xx; the command exits with status 2 when one fails.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import random
import re
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from aiayn.config import AiaynError
from bench.common import Reporter, run_main, status_kib

WORDS = "en el principio creo dios los cielos y la tierra luz agua noche dia mar".split()
DEEP = 30_000
# (name, method, path, body, headers, status it must get)
MALFORMED: tuple[tuple[str, str, str, bytes | None, dict[str, str], int], ...] = (
    ("not json", "POST", "/translate", b"{not json", {}, 400),
    ("wrong type", "POST", "/translate", b'{"sentences": "one"}', {}, 422),
    ("unknown field", "POST", "/translate", b'{"sentences": ["dios"], "beams": 4}', {}, 422),
    ("400-digit integer", "POST", "/translate", b'{"sentences": ["dios"], "beam": 1' + b"0" * 399 + b"}", {}, 422),
    ("deep nesting", "POST", "/translate", b'{"sentences": ' + b"[" * DEEP + b"]" * DEEP + b"}", {}, 400),
    ("lone surrogate", "POST", "/attention", b'{"sentence": "\\ud800"}', {}, 400),
    ("text/plain", "POST", "/translate", b'{"sentences": ["dios"]}', {"Content-Type": "text/plain"}, 415),
    ("oversized body", "POST", "/translate", b" " * 100_000, {}, 413),
    ("Content-Length in other digits", "POST", "/translate", b"{}", {"Content-Length": "\u00b2"}, 400),
    ("DELETE", "DELETE", "/translate", None, {}, 405),
    ("unknown path", "GET", "/nope", None, {}, 404),
    ("another site's Host", "GET", "/health", None, {"Host": "evil.example"}, 403),
)


def random_model(folder: Path) -> Path:
    """A run folder with a tokenizer trained on random sentences of ``WORDS`` and a random tiny
    model whose translations are 4 to source + 8 subwords long (a random model never stops by itself)."""
    from aiayn.config import preset
    from aiayn.data.tokenizer import Tokenizer
    from aiayn.models.transformer import Transformer
    from aiayn.training.checkpoint import save_checkpoint, step_path

    rng = random.Random(0)
    text = folder / "train.txt"
    text.write_text("".join(" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) + "\n" for _ in range(400)))
    Tokenizer.train([text], folder, vocab_size=64)
    cfg = preset("tiny")
    cfg.decode = dataclasses.replace(cfg.decode, min_len=4, max_len_offset=8)
    torch.manual_seed(0)
    save_checkpoint(
        step_path(folder, 1),
        {"model": Transformer(cfg.model).state_dict(), "config": json.dumps(cfg.to_dict()), "step": 1},
    )
    return folder


@dataclasses.dataclass
class Result:
    kind: str  # "translate", "attention", "health" or the name of a malformed request
    well_formed: bool
    status: int  # 0: the connection failed
    seconds: float
    expected: int


def well_formed(rng: random.Random) -> tuple[str, str, str, bytes | None, dict[str, str], int]:
    def sentence() -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(3, 10)))

    roll = rng.random()
    if roll < 0.7:
        body = {"sentences": [sentence() for _ in range(rng.randint(1, 4))], "beam": rng.randint(1, 4)}
        return "translate", "POST", "/translate", json.dumps(body).encode(), {}, 200
    if roll < 0.9:
        body = {"sentence": sentence(), "beam": rng.randint(1, 2)}
        return "attention", "POST", "/attention", json.dumps(body).encode(), {}, 200
    return "health", "GET", "/health", None, {}, 200


def send(port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> int:
    """One request on its own connection; the status (0 when the connection failed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.putrequest(method, path, skip_host="Host" in headers)
        fields = {"Content-Type": "application/json", **headers} if method == "POST" else dict(headers)
        if body is not None:
            fields.setdefault("Content-Length", str(len(body)))
        for name, value in fields.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def client(port: int, seed: int, requests: int, malformed: float, deadline: float, out: list[Result]) -> None:
    rng = random.Random(seed)
    for _ in range(requests):
        if time.monotonic() > deadline:
            return
        bad = rng.random() < malformed
        kind, method, path, body, headers, expected = rng.choice(MALFORMED) if bad else well_formed(rng)
        start = time.perf_counter()
        status = send(port, method, path, body, headers)
        out.append(Result(kind, not bad, status, time.perf_counter() - start, expected))


class Server:
    """``aiayn serve`` in a subprocess on a free loopback port, and its memory."""

    def __init__(self, model: Path, threads: int, workers: int, queue: int, *options: str):
        command = [
            sys.executable,
            "-m",
            "aiayn",
            "serve",
            "--model",
            str(model),
            "--port",
            "0",
            "--quiet",
            "--device",
            "cpu",
            "--workers",
            str(workers),
            "--queue",
            str(queue),
            *options,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        # A file, not a pipe: nobody reads the server's warnings while it runs, and a full pipe would stall it.
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        ready, _, _ = select.select([self.proc.stdout], [], [], 120)
        line = self.proc.stdout.readline() if ready else ""
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not found:
            self.stop()
            raise AiaynError(f"aiayn serve did not start: {line.strip() or self.errors()}")
        self.port = int(found.group(1))

    def errors(self) -> str:
        """The end of what the server wrote to stderr."""
        self.log.seek(0)
        return self.log.read()[-2000:]

    def memory_mb(self, field: str) -> float:
        return status_kib(field, self.proc.pid) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else (values[0] if values else float("nan"))
    )


def summarize(results: list[Result], wall: float) -> dict[str, Any]:
    good = [r for r in results if r.well_formed]
    bad = [r for r in results if not r.well_formed]
    latency = sorted(r.seconds * 1e3 for r in good)
    return {
        "requests": len(results),
        "requests_per_s": len(results) / wall,
        "well_formed": len(good),
        "malformed": len(bad),
        "latency_p50_ms": percentile(latency, 50),
        "latency_p99_ms": percentile(latency, 99),
        "errors_well_formed": sum(r.status != 200 for r in good),
        "errors_malformed": sum(r.status != r.expected for r in bad),
        "connection_failures": sum(r.status == 0 for r in results),
        "status_5xx": sum(r.status >= 500 for r in results),
        "statuses": {str(s): n for s, n in sorted(Counter(r.status for r in results).items())},
    }


def table(record: dict[str, Any]) -> None:
    rows = [
        (
            "clients x requests",
            f"{record['clients']} x {record['requests_per_client']} ({record['malformed_fraction']:.0%} malformed)",
        ),
        ("requests answered", f"{record['requests']:,} in {record['seconds']:.1f} s"),
        ("requests/s", f"{record['requests_per_s']:,.1f}"),
        ("latency p50 / p99", f"{record['latency_p50_ms']:,.1f} / {record['latency_p99_ms']:,.1f} ms (well-formed)"),
        (
            "errors",
            f"{record['errors_well_formed']} well-formed, {record['errors_malformed']} malformed "
            f"({record['connection_failures']} connections failed)",
        ),
        ("5xx answers", str(record["status_5xx"])),
        ("statuses", ", ".join(f"{s}: {n}" for s, n in record["statuses"].items())),
        (
            "server RSS",
            f"{record['rss_loaded_mb']:,.0f} MB loaded, {record['rss_end_mb']:,.0f} MB at the end, "
            f"{record['rss_peak_mb']:,.0f} MB peak",
        ),
    ]
    print(
        f"\nload: aiayn serve ({record['model']}), {record['threads']} threads, {record['workers']} workers, "
        f"torch {record['torch']}",
        file=sys.stderr,
    )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from aiayn.serve.limits import WORKERS

    p = argparse.ArgumentParser(description="Load on aiayn serve: concurrent clients, malformed requests mixed in.")
    p.add_argument("--model", help="a run folder or checkpoint (default: a random tiny model)")
    p.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    p.add_argument("--requests", type=int, default=100, help="requests per client (default 100)")
    p.add_argument("--malformed", type=float, default=0.2, help="share of malformed requests (default 0.2)")
    p.add_argument("--seconds", type=float, default=300, help="stop sending after this long (default 300)")
    p.add_argument("--threads", type=int, default=2, help="the server's intra-op threads (default 2)")
    p.add_argument("--workers", type=int, default=WORKERS, help=f"the server's workers (default {WORKERS})")
    p.add_argument("--queue", type=int, help="the server's queue (default: --clients, so nothing is refused)")
    args = p.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or not 0 <= args.malformed <= 1 or args.seconds <= 0:
        raise AiaynError("--clients and --requests must be at least 1, --malformed in [0, 1], --seconds positive")
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else random_model(Path(tmp))
        server = Server(model, args.threads, args.workers, args.queue or args.clients)
        try:
            loaded = server.memory_mb("VmRSS")
            results: list[Result] = []
            deadline = time.monotonic() + args.seconds
            threads = [
                threading.Thread(
                    target=client, args=(server.port, seed, args.requests, args.malformed, deadline, results)
                )
                for seed in range(args.clients)
            ]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            end, peak = server.memory_mb("VmRSS"), server.memory_mb("VmHWM")
        finally:
            server.stop()
    report = Reporter("load", torch.device("cpu"), args.threads)
    record = report.emit(
        impl="aiayn serve",
        model=args.model or "random tiny",
        clients=args.clients,
        requests_per_client=args.requests,
        malformed_fraction=args.malformed,
        workers=args.workers,
        seconds=wall,
        **summarize(results, wall),
        rss_loaded_mb=loaded,
        rss_end_mb=end,
        rss_peak_mb=peak,
    )
    table(record)
    failed = [
        f"{record[k]} {k.replace('_', ' ')}"
        for k in ("errors_well_formed", "errors_malformed", "status_5xx")
        if record[k]
    ]
    if failed:
        raise AiaynError(f"the service broke its guarantees: {', '.join(failed)}")


if __name__ == "__main__":
    run_main(main)
