"""``aiayn serve``: translation and attention over HTTP, and the explorer page, on the standard library.

    GET  /            the explorer page (static/explorer.html: inline JS and CSS, nothing fetched from elsewhere)
    GET  /health      model (run folder and checkpoint names), training step, config summary, limits
    POST /translate   {"sentences": [...], "beam": 4, "nbest": 1, "alpha": 0.6}
                      -> {"translations": [[{"text": ..., "score": ...}, ...], ...]}  (per sentence, best first)
    POST /attention   {"sentence": "...", "beam": 4}
                      -> {"source": [pieces], "target": [pieces], "translation": "...",
                          "weights": {"encoder": [layer][head][i][j], "decoder": ..., "cross": ...}}

POST bodies are ``Content-Type: application/json``. Bad input is a 4xx with ``{"error": "..."}``:
400 malformed (not UTF-8 JSON, NaN, a lone surrogate, nesting past Python's recursion limit,
a bad Content-Length), 403 a Host or Origin of another site (DNS rebinding; ``--allow-origin``
admits one), 404 unknown path, 405 another method than the path's, 411 no Content-Length,
413 too large, 415 not JSON, 422 a well-formed request with unusable values. 503 with
Retry-After: too many connections, the queue is full, or the decoding time limit ran out. Limits (limits.py):

    body                64 KiB; a refused body is read and dropped up to 1 MiB, then the connection closes
    /translate          64 sentences of at most 1,000 characters; beam 1-16; integers of at most 20 digits;
                        source subwords (EOS included) x beam, summed over the sentences: 16,384
    /attention          layers x heads x (S² + T² + T·S) numbers at most 1,000,000, with S source and
                        T target positions (T at its longest, S + max_len_offset): /health gives the
                        source subwords this allows for the model; weights rounded to 4 decimals
    time                10 s from the accept to receive a request (head and body), 30 s to send an answer,
                        30 s from a request's last byte to its last decoding step, waiting for a worker
                        and for the model included; checked before every decoding step, so a request
                        ends within one step of its limit
    concurrency         256 open connections, idle or not (each one a socket, not a thread); 4 worker
                        threads for /translate and /attention, 32 whole requests waiting for them,
                        the smallest body first; beyond either, 503 (Retry-After: 1) at once

The model serves one request at a time (in chunks of 8 sentences), first come first served, and
passes to the requests waiting for it between two decoding steps, in turn (``Turns``): waiting for
the model costs a request one decoding step (plus an encoder pass) of each of the at most 3 others
(4 workers) per step of its own, and counts against its time limit like waiting for a worker. A
client that has closed its connection is noticed before the next decoding step and its request
stops there; one that only shut its sending side (``nc -N``) gets its answer. There is no
authentication: the service binds to 127.0.0.1 unless ``--host`` says otherwise, and warns when it does.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from aiayn.config import AiaynError
from aiayn.evaluation.visualize import sentence_attention
from aiayn.inference.translate import Translator
from aiayn.runtime import resolve_device
from aiayn.serve.limits import (
    CHUNK_SENTENCES,
    DECODE_SECONDS,
    MAX_ATTENTION_WEIGHTS,
    MAX_BEAM,
    MAX_BEAM_TOKENS,
    MAX_BODY,
    MAX_CHARS,
    MAX_SENTENCES,
    ClientGone,
    RequestError,
    busy,
    is_loopback,
    number,
    only,
    parse_origin,
    sentence,
)
from aiayn.serve.loop import ExplorerServer
from aiayn.training.checkpoint import load_for_inference


def model_name(path: Path) -> str:
    """The run folder's name: what /health shows instead of a path on the server's disk."""
    return (path.parent.parent if path.parent.name == "checkpoints" else path.parent).name


class Turns:
    """The model, lent to one request at a time, first come first served, and passed on between
    two decoding steps to the requests waiting for it, in turn: a request waits for one step of
    each request ahead of it, not for their end. (A ``threading.Lock`` lets the thread that
    releases it take it straight back, so one long request kept the others waiting.)"""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.line: deque[object] = deque()

    @contextmanager
    def turn(self, deadline: float) -> Iterator[Callable[[], bool] | None]:
        """Waits in line until this turn comes or ``deadline`` passes. Yields None when it did not
        come, else ``share``: called between two steps, it lets every request waiting in line have
        the model until its own next ``share``, and says whether the turn came back before ``deadline``."""
        ticket = object()

        def wait() -> bool:
            return self.changed.wait_for(lambda: self.line[0] is ticket, timeout=max(0.0, deadline - time.monotonic()))

        def share() -> bool:
            with self.changed:
                if len(self.line) == 1:
                    return True
                self.line.rotate(-1)  # this ticket, first in line, goes last
                self.changed.notify_all()
                return wait()

        with self.changed:
            self.line.append(ticket)
            mine = wait()
        try:
            yield share if mine else None
        finally:
            with self.changed:
                self.line.remove(ticket)
                self.changed.notify_all()


class Explorer:
    """The model behind the service. Requests share it, a decoding step at a time in turn (``Turns``)."""

    def __init__(self, translator: Any, path: Path, step: int, decode_seconds: float = DECODE_SECONDS):
        self.translator, self.path, self.step = translator, Path(path), step
        self.decode_seconds = decode_seconds
        self.turns = Turns()
        m = translator.config.model
        self.attention_source = max(
            (s for s in range(1, m.max_len + 1) if self.attention_size(s) <= MAX_ATTENTION_WEIGHTS), default=0
        )

    @classmethod
    def load(
        cls,
        model: str | Path,
        device: str | None = None,
        *,
        quantize: str | None = None,
        decode_seconds: float = DECODE_SECONDS,
    ) -> Explorer:
        loaded = load_for_inference(model, resolve_device(device, cpu_only=quantize is not None))
        translator = Translator(loaded.model, loaded.tokenizer, loaded.config, quantize=quantize)
        return cls(translator, loaded.path, loaded.step, decode_seconds)

    def health(self) -> dict[str, Any]:
        cfg = self.translator.config
        m = cfg.model
        return {
            "status": "ok",
            "model": model_name(self.path),
            "checkpoint": self.path.name,
            "step": self.step,
            "config": {
                "preset": cfg.preset,
                "d_model": m.d_model,
                "d_ff": m.d_ff,
                "n_heads": m.n_heads,
                "encoder_layers": m.n_layers,
                "decoder_layers": m.decoder_layers,
                "vocab_size": m.vocab_size,
                "max_len": m.max_len,
                "norm": m.norm,
                "beam_size": cfg.decode.beam_size,
                "alpha": cfg.decode.alpha,
            },
            "limits": {
                "body_bytes": MAX_BODY,
                "sentences": MAX_SENTENCES,
                "chars": MAX_CHARS,
                "beam": MAX_BEAM,
                "beam_tokens": MAX_BEAM_TOKENS,
                "attention_weights": MAX_ATTENTION_WEIGHTS,
                "attention_source_subwords": self.attention_source,
                "decode_seconds": self.decode_seconds,
            },
        }

    def _positions(self, lines: list[str]) -> list[int]:
        """Source positions of each line as the translator will see them: subwords + EOS, cut
        at the model's length (empty lines are not translated)."""
        limit = self.translator.config.model.max_len
        ids = self.translator.tokenizer.encode_batch([line for line in lines if line.strip()])
        return [min(len(x) + 1, limit) for x in ids]

    def attention_size(self, source: int) -> int:
        """Weights /attention returns for ``source`` positions, at the longest translation."""
        m, offset = self.translator.config.model, self.translator.config.decode.max_len_offset
        target = min(1 + min(source + offset, m.max_len), m.max_len)  # BOS + tokens
        return m.n_heads * (m.n_layers * source**2 + m.decoder_layers * (target**2 + target * source))

    def late(self) -> RequestError:
        """The answer to a request that ran out of time (waiting or decoding)."""
        return busy(
            f"decoding did not finish within {self.decode_seconds:g} s (the limit per request); "
            "retry later, or send fewer sentences or a smaller beam"
        )

    def _with_model(self, work: Callable[..., Any], deadline: float, client_gone: Callable[[], bool]) -> Any:
        """``work(step_hook=...)`` in the model's turn. The hook, called before every decoding step,
        stops the work there when the time is up or the client has left, and lets the requests
        waiting for the model have it first."""
        late = self.late()
        if client_gone():
            raise ClientGone
        with self.turns.turn(deadline) as share:
            if share is None:
                raise late

            def step_hook() -> None:
                if client_gone():
                    raise ClientGone
                if time.monotonic() > deadline or not share():
                    raise late

            step_hook()  # it may have left, or the time run out, while waiting for the model
            return work(step_hook=step_hook)

    def translate(
        self, body: dict, client_gone: Callable[[], bool] = lambda: False, received: float | None = None
    ) -> dict[str, Any]:
        deadline = (time.monotonic() if received is None else received) + self.decode_seconds
        only(body, ("sentences", "beam", "nbest", "alpha"))
        sentences = body.get("sentences")
        if not isinstance(sentences, list):
            raise RequestError(422, "'sentences' must be a list of strings")
        if len(sentences) > MAX_SENTENCES:
            raise RequestError(422, f"{len(sentences)} sentences; the limit is {MAX_SENTENCES} per request")
        lines = [sentence(s, f"sentences[{i}]") for i, s in enumerate(sentences)]
        d = self.translator.config.decode
        beam = number(body, "beam", d.beam_size, 1, MAX_BEAM, integer=True)
        nbest = number(body, "nbest", 1, 1, beam, integer=True)
        alpha = number(body, "alpha", d.alpha, 0, 10, integer=False)
        work = sum(self._positions(lines)) * beam
        if work > MAX_BEAM_TOKENS:
            raise RequestError(
                413,
                f"{work // beam} source subwords x beam {beam} = {work}; the limit is "
                f"{MAX_BEAM_TOKENS} per request: send fewer sentences or a smaller beam",
            )
        found = []
        for start in range(0, len(lines), CHUNK_SENTENCES):
            chunk = lines[start : start + CHUNK_SENTENCES]
            found += self._with_model(
                functools.partial(self.translator.translate, chunk, beam_size=beam, nbest=nbest, alpha=alpha),
                deadline,
                client_gone,
            )
        return {"translations": [[{"text": t.text, "score": round(t.score, 4)} for t in nb] for nb in found]}

    def attention(
        self, body: dict, client_gone: Callable[[], bool] = lambda: False, received: float | None = None
    ) -> dict[str, Any]:
        deadline = (time.monotonic() if received is None else received) + self.decode_seconds
        only(body, ("sentence", "beam"))
        text = sentence(body.get("sentence"), "'sentence'")
        if not text.strip():
            raise RequestError(422, "'sentence' is empty")
        beam = number(body, "beam", self.translator.config.decode.beam_size, 1, MAX_BEAM, integer=True)
        source = self._positions([text])[0]
        if source > self.attention_source:
            raise RequestError(
                413,
                f"'sentence' is {source} subwords (EOS included); this model shows attention "
                f"for at most {self.attention_source} ({MAX_ATTENTION_WEIGHTS:,} weights)",
            )
        maps = self._with_model(
            functools.partial(sentence_attention, self.translator, text, beam), deadline, client_gone
        )
        # float64 before rounding, or float32's nearest value prints as 0.4050000011920929; one
        # (layer, head) map at a time, since one tolist() of a million numbers holds the GIL 50 ms
        rounded = {
            k: [[np.round(m.astype(np.float64), 4).tolist() for m in layer] for layer in getattr(maps, k)]
            for k in ("encoder", "decoder", "cross")
        }
        return {"source": maps.source, "target": maps.target, "translation": maps.translation, "weights": rounded}


def run(args: Any) -> None:
    """``aiayn serve``: load the model, bind (127.0.0.1 by default), print the URL, serve until Ctrl-C."""
    for origin in args.allow_origin or ():
        try:
            parse_origin(origin)
        except ValueError:
            raise AiaynError(
                f"--allow-origin {origin!r}: expected scheme://host[:port], e.g. http://gpu-box:8000"
            ) from None
    if not 0 < args.decode_seconds <= 3600:
        raise AiaynError(f"--decode-seconds must be above 0 and at most 3600, got {args.decode_seconds:g}")
    explorer = Explorer.load(args.model, args.device, quantize=args.quantize, decode_seconds=args.decode_seconds)
    try:
        server = ExplorerServer(
            explorer,
            args.host,
            args.port,
            quiet=args.quiet,
            workers=args.workers,
            queue_size=args.queue,
            allow_origins=args.allow_origin or (),
        )
    except OSError as e:
        raise AiaynError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); choose another --port") from None
    if not is_loopback(args.host):
        print(
            f"aiayn: warning: listening on {args.host}: the service has no authentication, so anyone who can "
            "reach this port can use the model",
            file=sys.stderr,
            flush=True,
        )
    print(f"aiayn: serving {explorer.path} at {server.url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("aiayn: stopped", file=sys.stderr)
    finally:
        server.server_close()
