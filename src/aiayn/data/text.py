"""Text in: lines of UTF-8 files and streams, parallel files and TSV rows, and the chunks that
`aiayn translate` reads its input in.

Every reader holds bad input to one line naming the file (or stream) and the line: invalid
UTF-8, a line too long to be a sentence, files of different lengths, a TSV row of the wrong
width. ``normalize`` is the one spelling of a sentence every data folder holds (NFC, single spaces).
"""

from __future__ import annotations

import itertools
import queue
import threading
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from aiayn.config import AiaynError

Pair = tuple[str, str, str]  # (ref, src, tgt); ref is "" when the corpus has none
# One sentence a line: a model of 8,192 positions (config.MAXIMA) reads about 40 KB of text.
MAX_LINE_BYTES = 100_000
# `aiayn translate` reads its input in chunks of this many lines or characters, whichever comes
# first: sorted by length within a chunk, batches stay full; the input is never held whole.
CHUNK_LINES, CHUNK_CHARS = 1000, 1_000_000


def normalize(text: str) -> str:
    """NFC, every run of whitespace (tabs, line separators too) to one space, stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file, split on ``\\n`` only, no trailing empty line. Files from Windows
    editors read as the same text: a ``\\r`` before each ``\\n`` and a leading byte-order mark
    (U+FEFF) are dropped."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AiaynError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise AiaynError(f"{path}: is a folder, expected a text file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise AiaynError(
            f"{path}:{line}: invalid UTF-8 at byte {e.start}; convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def stream_lines(stream: BinaryIO, name: str) -> Iterator[str]:
    """Lines of a binary stream as they arrive, decoded as UTF-8 whatever the locale says, read as
    ``read_lines`` reads a file. At most one line is held: a line over ``MAX_LINE_BYTES`` (a file
    without line breaks, ``/dev/zero``) is an error naming its number, and is read no further."""
    for n in itertools.count(1):
        raw = stream.readline(MAX_LINE_BYTES + 1)  # a full line of MAX_LINE_BYTES, and its \n
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise AiaynError(f"{name}:{n}: a line of more than {MAX_LINE_BYTES:,} bytes; put one sentence on each line")
        try:
            line = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError:
            raise AiaynError(
                f"{name}:{n}: invalid UTF-8; convert the input to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            ) from None
        yield line.removeprefix("\ufeff") if n == 1 else line


def line_chunks(lines: Iterator[str]) -> Iterator[list[str]]:
    """``lines`` in chunks of ``CHUNK_LINES`` lines or ``CHUNK_CHARS`` characters, whichever comes
    first: enough for length-sorted batches, and all that is held of an input of any size."""
    chunk, chars = [], 0
    for line in lines:
        chunk.append(line)
        chars += len(line)
        if len(chunk) == CHUNK_LINES or chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def arriving_chunks(lines: Iterator[str], size: int = 16) -> Iterator[list[str]]:
    """Chunks of ``lines`` as they arrive: wait for one line, then take those already waiting (up
    to ``size``), so a pipe is answered line by line while a fast producer still gets batches."""
    waiting: queue.Queue[str | BaseException | None] = queue.Queue()

    def read() -> None:
        try:
            for line in lines:
                waiting.put(line)
        except BaseException as e:  # handed to the main thread, which raises it
            waiting.put(e)
        waiting.put(None)

    threading.Thread(target=read, daemon=True).start()
    while True:
        chunk, item = [], waiting.get()  # wait for the first line of a chunk
        while isinstance(item, str):
            chunk.append(item)
            if len(chunk) == size:
                break
            try:
                item = waiting.get_nowait()
            except queue.Empty:
                break
        if chunk:
            yield chunk
        if item is None:
            return
        if isinstance(item, BaseException):
            raise item


def read_parallel(src: Path, tgt: Path) -> list[Pair]:
    """Two line-aligned files as pairs; different lengths name the line where the shorter ends."""
    a, b = read_lines(src), read_lines(tgt)
    if len(a) != len(b):
        short, long_, n = (src, tgt, len(a)) if len(a) < len(b) else (tgt, src, len(b))
        raise AiaynError(
            f"{short}:{n + 1}: file ends after {n} lines but {long_} has {max(len(a), len(b))}; "
            "the two files must have one line per sentence pair"
        )
    return [("", s, t) for s, t in zip(a, b)]


def read_tsv(path: Path) -> list[Pair]:
    """``src<TAB>tgt`` or ``ref<TAB>src<TAB>tgt`` rows (the first row decides); blank lines are empty pairs."""
    pairs: list[Pair] = []
    width = None
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            pairs.append(("", "", ""))
            continue
        cells = line.split("\t")
        width = width or len(cells)
        if len(cells) not in (2, 3) or len(cells) != width:
            expected = f"{width} like the first row" if width in (2, 3) else "2 (src, tgt) or 3 (ref, src, tgt)"
            raise AiaynError(f"{path}:{number}: found {len(cells)} tab-separated columns, expected {expected}")
        pairs.append(tuple(cells) if len(cells) == 3 else ("", *cells))  # type: ignore[arg-type]
    return pairs
