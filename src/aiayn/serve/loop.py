"""The connections of ``aiayn serve``: one event-loop thread that holds every connection, and a fixed
pool of worker threads for the requests that need the model (the handler: handler.py).

A thread per connection lets idle or slow clients hold every thread: idle sockets kept /health from
answering for minutes, and a client that never read its answer held a worker while it was sent.
So one thread (``serve_forever``) does all the waiting, for every connection at once: it accepts,
reads each request whole into memory (head and body within ``READ_SECONDS`` of the accept, or the
connection closes), answers ``Expect: 100-continue``, sends each answer within ``WRITE_SECONDS``,
then reads and drops what the client still sends (up to ``MAX_DISCARD``, for ``DRAIN_SECONDS``)
before it closes, since closing on unread input resets the connection and can destroy the answer.
A waiting client costs a socket and its buffers, never a thread. Requests that need no model
(GET /, /health, and every request refused before its body is read) are answered in that thread at
once; a POST to /translate or /attention goes, once whole, to ``WORKERS`` threads through a queue
of ``QUEUE``, and is answered 503 at once when the queue is full. The queue hands out the smallest
body first: a request's work is bounded by its sentences' length times its beam, so a one-sentence
request does not wait behind a burst of large ones (a large one that waits too long gets its 503
when its time limit, counted from its arrival, has passed). Beyond ``MAX_CONNECTIONS`` open
connections, a new one gets 503 at once and is closed.
"""

from __future__ import annotations

import itertools
import math
import queue
import selectors
import socket
import sys
import threading
import time
import traceback
from importlib import resources
from typing import Any

from aiayn.config import AiaynError
from aiayn.serve.handler import PROBE, PROTOCOL, Handler, json_answer, needs_body
from aiayn.serve.limits import (
    MAX_CONNECTIONS,
    MAX_DISCARD,
    MAX_HEAD,
    QUEUE,
    READ_SECONDS,
    RETRY_AFTER,
    WORKERS,
    WRITE_SECONDS,
    Origins,
    busy,
)

DRAIN_SECONDS = 2.0  # how long input after the answer is read and dropped before the connection closes
TICK = 0.05  # seconds between two checks of the connections' deadlines
READING, QUEUED, WORKING, WRITING, DRAINING = "reading", "queued", "working", "writing", "draining"


class Connection:
    """One client: its socket, the request as it arrives, the answer as it leaves. The loop thread
    owns it, except once a worker has taken it from the queue (``WORKING``)."""

    def __init__(self, sock: socket.socket, address: Any, deadline: float):
        self.sock, self.address, self.deadline = sock, address, deadline
        self.state = READING
        self.data = bytearray()  # the request as received
        self.received = time.monotonic()  # when its last byte came; until then, the accept
        self.reply = b""  # the whole answer; b"" for none
        self.sent = 0  # bytes of the answer sent
        self.dropped = 0  # bytes read and dropped after the request
        self.refusal: Exception | None = None  # the 503 to answer instead of the request
        self.continued = self.probed = self.left = False

    def gone(self) -> bool:
        """True once the client has closed its connection. End-of-file alone does not say so: a
        client that only shut its sending side after the body (``shutdown(SHUT_WR)``, ``nc -N``)
        still waits for the answer. So at the first end-of-file, the bytes every answer begins
        with go out as a probe: a socket its owner closed answers them with a reset."""
        if not self.left:
            try:
                if not self.probed:
                    if self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                        self.sent = self.sock.send(PROBE)  # the first bytes: the buffer has room
                        self.probed = self.sent == len(PROBE)
                        self.left = not self.probed
                else:
                    self.left = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
            except BlockingIOError:  # nothing to read, nor end-of-file
                pass
            except OSError:
                self.left = True
        return self.left


class ExplorerServer:
    """The loop thread (``serve_forever``) and the workers (see the module docstring)."""

    def __init__(
        self,
        explorer: Any,
        host: str = "127.0.0.1",
        port: int = 8000,
        quiet: bool = False,
        workers: int = WORKERS,
        queue_size: int = QUEUE,
        allow_origins: list[str] | tuple[str, ...] = (),
        read_seconds: float = READ_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ):
        if workers < 1 or queue_size < 1:  # a queue of 0 would be unbounded, 0 workers would answer nobody
            raise AiaynError(f"--workers and --queue must be at least 1, got {workers} and {queue_size}")
        self.explorer, self.quiet, self.read_seconds = explorer, quiet, read_seconds
        self.queue_size, self.max_connections = queue_size, max_connections
        self.page = resources.files("aiayn.serve").joinpath("static/explorer.html").read_bytes()
        self.origins = Origins(host, allow_origins)
        self.socket = socket.create_server((host, port), backlog=128)  # binds, or raises OSError
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        # (body length, arrival order, connection): the smallest first (see the module docstring)
        self.waiting: queue.PriorityQueue[tuple[float, int, Connection | None]] = queue.PriorityQueue(queue_size)
        self.arrivals = itertools.count()
        self.answered: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self.wake, self.woken = socket.socketpair()  # a worker's answer wakes the loop
        self.wake.setblocking(False)
        self.connections: set[Connection] = set()
        self.taking = threading.Lock()
        self.selector = selectors.DefaultSelector()
        self.stopping, self.stopped = threading.Event(), threading.Event()
        self.stopped.set()  # until serve_forever runs
        self.workers = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for thread in self.workers:
            thread.start()

    # ------------------------------------------------------------------------ the loop thread

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self.stopped.clear()
        self.selector.register(self.socket, selectors.EVENT_READ)
        self.selector.register(self.woken, selectors.EVENT_READ)
        checked = time.monotonic()
        try:
            while not self.stopping.is_set():
                for key, events in self.selector.select(min(poll_interval, TICK)):
                    if key.fileobj is self.socket:
                        self._accept()
                    elif key.fileobj is self.woken:
                        self._collect()
                    elif events & selectors.EVENT_WRITE:
                        self._write(key.data)
                    elif key.data.state == READING:
                        self._read(key.data)
                    else:
                        self._drop(key.data)
                if time.monotonic() - checked >= TICK:
                    checked = time.monotonic()
                    self._expire(checked)
        finally:
            for sock in (self.socket, self.woken):
                self.selector.unregister(sock)
            self.stopped.set()

    def _expire(self, now: float) -> None:
        for conn in list(self.connections):
            if conn.state not in (QUEUED, WORKING) and conn.deadline < now:
                self._close(conn)  # too slow to send its request, read its answer or leave
            elif conn.state == QUEUED and now > conn.received + self.explorer.decode_seconds and self._take(conn):
                conn.refusal = self.explorer.late()  # answered at its time limit, not once a worker is free
                self._answer_here(conn)

    def _take(self, conn: Connection) -> bool:
        """Takes a queued request for a worker or for its 503, once: whichever comes first."""
        with self.taking:
            if conn.state != QUEUED:
                return False
            conn.state = WORKING
            return True

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self.socket.accept()
            except OSError:  # none left to accept (or out of file descriptors until some close)
                return
            sock.setblocking(False)
            if len(self.connections) >= self.max_connections:
                message = f"the server is busy ({len(self.connections)} connections open); retry later"
                try:
                    sock.send(json_answer(503, message, {"Retry-After": str(RETRY_AFTER)}))
                except OSError:
                    pass
                sock.close()
                continue
            conn = Connection(sock, address, time.monotonic() + self.read_seconds)
            self.connections.add(conn)
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: Connection) -> None:
        try:
            chunk = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        conn.data += chunk
        end = conn.data.find(b"\r\n\r\n")
        if end < 0:
            if not chunk and not conn.data:
                self._close(conn)
            elif not chunk or len(conn.data) > MAX_HEAD:
                self._answer_here(conn)  # http.server refuses a head too long; or the client stopped
            return
        length, expect = needs_body(bytes(conn.data[: end + 4]))
        if length is None or not chunk:
            self._answer_here(conn)
        elif len(conn.data) >= end + 4 + length:
            self.selector.unregister(conn.sock)
            conn.state, conn.received = QUEUED, time.monotonic()
            try:
                self.waiting.put_nowait((length, next(self.arrivals), conn))
            except queue.Full:
                conn.state = WORKING
                conn.refusal = busy(f"the server is busy ({self.queue_size} requests waiting); retry later")
                self._answer_here(conn)
        elif expect and not conn.continued and len(conn.data) == end + 4:
            conn.continued = True
            try:
                conn.sock.send(f"{PROTOCOL} 100 Continue\r\n\r\n".encode())  # the first bytes sent: room
            except OSError:
                self._close(conn)

    def _answer_here(self, conn: Connection) -> None:
        if conn.state == READING:
            self.selector.unregister(conn.sock)
        conn.state = WORKING
        self._handle(conn)
        self._reply(conn)

    def _collect(self) -> None:
        """The answers the workers finished."""
        try:
            self.woken.recv(4096)
        except OSError:
            pass
        while True:
            try:
                conn = self.answered.get_nowait()
            except queue.Empty:
                return
            if conn in self.connections:
                self._reply(conn)

    def _reply(self, conn: Connection) -> None:
        if conn.left or not conn.reply or (conn.probed and not conn.reply.startswith(PROBE)):
            self._close(conn)
            return
        conn.state, conn.deadline = WRITING, time.monotonic() + WRITE_SECONDS
        self.selector.register(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn: Connection) -> None:
        try:
            conn.sent += conn.sock.send(memoryview(conn.reply)[conn.sent :])
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        if conn.sent < len(conn.reply):
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)  # the client reads to the end of the answer
        except OSError:
            self._close(conn)
            return
        conn.state, conn.deadline = DRAINING, time.monotonic() + DRAIN_SECONDS
        self.selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _drop(self, conn: Connection) -> None:
        """Input after the answer: dropped until the client closes, or up to MAX_DISCARD."""
        try:
            chunk = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        conn.dropped += len(chunk)
        if not chunk or conn.dropped > MAX_DISCARD:
            self._close(conn)

    def _close(self, conn: Connection) -> None:
        if conn.state not in (QUEUED, WORKING):
            self.selector.unregister(conn.sock)
        conn.sock.close()
        self.connections.discard(conn)

    # ------------------------------------------------------------------------ the workers

    def _work(self) -> None:
        while not self.stopping.is_set():
            try:
                _, _, conn = self.waiting.get(timeout=0.5)
            except queue.Empty:
                continue
            if conn is None or not self._take(conn):  # server_close's wake-up call, or answered 503
                continue
            self._handle(conn)
            self.answered.put(conn)
            try:
                self.wake.send(b"\0")
            except OSError:  # the loop has a wake-up pending already, or has stopped
                pass

    def _handle(self, conn: Connection) -> None:
        try:
            Handler(conn, conn.address, self)
        except Exception:  # the handler answers every error it can; this one leaves no answer
            traceback.print_exc(file=sys.stderr)
            conn.left = True

    # ------------------------------------------------------------------------ stopping

    def shutdown(self) -> None:
        """Stops ``serve_forever`` (called from another thread) and waits until it has."""
        self.stopping.set()
        self.stopped.wait(5)

    def server_close(self) -> None:
        self.stopping.set()
        self.stopped.wait(1)
        for _ in self.workers:
            try:
                self.waiting.put_nowait((math.inf, next(self.arrivals), None))
            except queue.Full:
                break
        for thread in self.workers:
            thread.join(timeout=5)
        for conn in list(self.connections):
            conn.sock.close()
        self.connections.clear()
        for sock in (self.socket, self.wake, self.woken):
            sock.close()
        self.selector.close()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"
