"""A pure-Python reader for SWORD zText Bible modules (Debian's ``sword-text-*`` packages).

A module is a ``mods.d/NAME.conf`` file plus a data folder. A zText module keeps each
testament in three files, all little-endian:

    {ot,nt}.bzs   block index, 12 bytes a block:  uint32 offset, uint32 compressed size, uint32 raw size
    {ot,nt}.bzv   verse index, one entry a slot:   uint32 block, uint32 start, uint16 size   (zText)
                                                   uint32 block, uint32 start, uint32 size   (zText4)
    {ot,nt}.bzz   the compressed blocks, one after another

Slot ``i`` of a testament's verse index belongs to a fixed place in the module's versification:
slot 0 is the module header, slot 1 the testament introduction, then for each book its
introduction, and for each chapter its introduction followed by its verses. So Gen 1:1 is
slot 4 of ``ot`` (0 module, 1 testament, 2 Genesis, 3 chapter 1) and Matt 1:1 slot 4 of ``nt``.
"""

from __future__ import annotations

import bz2
import lzma
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiayn.config import AiaynError

# Verses per chapter of the KJV versification (SWORD's default), books in canonical order by OSIS id.
_KJV_TABLE = """
Gen 31 25 24 26 32 22 24 22 29 32 32 20 18 24 21 16 27 33 38 18 34 24 20 67 34 35 46 22 35 43 55 32
    20 31 29 43 36 30 23 23 57 38 34 34 28 34 31 22 33 26
Exod 22 25 22 31 23 30 25 32 35 29 10 51 22 31 27 36 16 27 25 26 36 31 33 18 40 37 21 43 46 38 18 35
    23 35 35 38 29 31 43 38
Lev 17 16 17 35 19 30 38 36 24 20 47 8 59 57 33 34 16 30 37 27 24 33 44 23 55 46 34
Num 54 34 51 49 31 27 89 26 23 36 35 16 33 45 41 50 13 32 22 29 35 41 30 25 18 65 23 31 40 16 54 42
    56 29 34 13
Deut 46 37 29 49 33 25 26 20 29 22 32 32 18 29 23 22 20 22 21 20 23 30 25 22 19 19 26 68 29 20 30 52
    29 12
Josh 18 24 17 24 15 27 26 35 27 43 23 24 33 15 63 10 18 28 51 9 45 34 16 33
Judg 36 23 31 24 31 40 25 35 57 18 40 15 25 20 20 31 13 31 30 48 25
Ruth 22 23 18 22
1Sam 28 36 21 22 12 21 17 22 27 27 15 25 23 52 35 23 58 30 24 42 15 23 29 22 44 25 12 25 11 31 13
2Sam 27 32 39 12 25 23 29 18 13 19 27 31 39 33 37 23 29 33 43 26 22 51 39 25
1Kgs 53 46 28 34 18 38 51 66 28 29 43 33 34 31 34 34 24 46 21 43 29 53
2Kgs 18 25 27 44 27 33 20 29 37 36 21 21 25 29 38 20 41 37 37 21 26 20 37 20 30
1Chr 54 55 24 43 26 81 40 40 44 14 47 40 14 17 29 43 27 17 19 8 30 19 32 31 31 32 34 21 30
2Chr 17 18 17 22 14 42 22 18 31 19 23 16 22 15 19 14 19 34 11 37 20 12 21 27 28 23 9 27 36 27 21 33
    25 33 27 23
Ezra 11 70 13 24 17 22 28 36 15 44
Neh 11 20 32 23 19 19 73 18 38 39 36 47 31
Esth 22 23 15 17 14 14 10 17 32 3
Job 22 13 26 21 27 30 21 22 35 22 20 25 28 22 35 22 16 21 29 29 34 30 17 25 6 14 23 28 25 31 40 22
    33 37 16 33 24 41 30 24 34 17
Ps 6 12 8 8 12 10 17 9 20 18 7 8 6 7 5 11 15 50 14 9 13 31 6 10 22 12 14 9 11 12 24 11 22 22 28 12
    40 22 13 17 13 11 5 26 17 11 9 14 20 23 19 9 6 7 23 13 11 11 17 12 8 12 11 10 13 20 7 35 36 5 24
    20 28 23 10 12 20 72 13 19 16 8 18 12 13 17 7 18 52 17 16 15 5 23 11 13 12 9 9 5 8 28 22 35 45
    48 43 13 31 7 10 10 9 8 18 19 2 29 176 7 8 9 4 8 5 6 5 6 8 8 3 18 3 3 21 26 9 8 24 13 10 7 12 15
    21 10 20 14 9 6
Prov 33 22 35 27 23 35 27 36 18 32 31 28 25 35 33 33 28 24 29 30 31 29 35 34 28 28 27 28 27 33 31
Eccl 18 26 22 16 20 12 29 17 18 20 10 14
Song 17 17 11 16 16 13 13 14
Isa 31 22 26 6 30 13 25 22 21 34 16 6 22 32 9 14 14 7 25 6 17 25 18 23 12 21 13 29 24 33 9 20 24 17
    10 22 38 22 8 31 29 25 28 28 25 13 15 22 26 11 23 15 12 17 13 12 21 14 21 22 11 12 19 12 25 24
Jer 19 37 25 31 31 30 34 22 26 25 23 17 27 22 21 21 27 23 15 18 14 30 40 10 38 24 22 17 32 24 40 44
    26 22 19 32 21 28 18 16 18 22 13 30 5 28 7 47 39 46 64 34
Lam 22 22 66 22 22
Ezek 28 10 27 17 17 14 27 18 11 22 25 28 23 23 8 63 24 32 14 49 32 31 49 27 17 21 36 26 21 26 18 32
    33 31 15 38 28 23 29 49 26 20 27 31 25 24 23 35
Dan 21 49 30 37 31 28 28 27 27 21 45 13
Hos 11 23 5 19 15 11 16 14 17 15 12 14 16 9
Joel 20 32 21
Amos 15 16 15 13 27 14 17 14 15
Obad 21
Jonah 17 10 10 11
Mic 16 13 12 13 15 16 20
Nah 15 13 19
Hab 17 20 19
Zeph 18 15 20
Hag 15 23
Zech 21 13 10 14 11 15 14 23 17 12 17 14 9 21
Mal 14 17 18 6
Matt 25 23 17 25 48 34 29 34 38 42 30 50 58 36 39 28 27 35 30 34 46 46 39 51 46 75 66 20
Mark 45 28 35 41 43 56 37 38 50 52 33 44 37 72 47 20
Luke 80 52 38 44 39 49 50 56 62 42 54 59 35 35 32 31 37 43 48 47 38 71 56 53
John 51 25 36 54 47 71 53 59 41 42 57 50 38 31 27 33 26 40 42 31 25
Acts 26 47 26 37 42 15 60 40 43 48 30 25 52 28 41 40 34 28 41 38 40 30 35 27 27 32 44 31
Rom 32 29 31 25 21 23 25 39 33 21 36 21 14 23 33 27
1Cor 31 16 23 21 13 20 40 13 27 33 34 31 13 40 58 24
2Cor 24 17 18 18 21 18 16 24 15 18 33 21 14
Gal 24 21 29 31 26 18
Eph 23 22 21 32 33 24
Phil 30 30 21 23
Col 29 23 25 18
1Thess 10 20 13 18 28
2Thess 12 17 18
1Tim 20 15 16 16 25 21
2Tim 18 26 17 22
Titus 16 15 15
Phlm 25
Heb 14 18 19 16 14 20 28 13 28 39 40 29 25
Jas 27 26 18 17 20
1Pet 25 25 22 19 14
2Pet 21 22 18
1John 10 29 24 21 21
2John 13
3John 14
Jude 25
Rev 20 29 22 11 14 17 17 13 21 11 19 17 18 20 8 21 18 24 21 15 27 21
"""
OT_BOOKS = 39  # Gen..Mal; the New Testament starts at Matt


def _parse_table(table: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    books: list[tuple[str, list[int]]] = []
    for token in table.split():
        if token.isdigit():
            books[-1][1].append(int(token))
        else:
            books.append((token, []))
    return tuple((name, tuple(counts)) for name, counts in books)


@dataclass(frozen=True)
class Versification:
    """Books in index order with their verses per chapter; ``books[:n_ot]`` fill ``ot.bzv``.

    Only the protocanonical books are listed: deuterocanonical books (NRSVA) come after
    Malachi in ``ot.bzv``, so they move no slot of the books listed here.
    """

    name: str
    books: tuple[tuple[str, tuple[int, ...]], ...]
    n_ot: int = OT_BOOKS

    def slots(self, testament: str) -> dict[int, tuple[str, int, int]]:
        """Verse-index slot -> (book, chapter, verse); chapter intros are (book, chapter, 0)."""
        books = self.books[: self.n_ot] if testament == "ot" else self.books[self.n_ot :]
        out: dict[int, tuple[str, int, int]] = {}
        slot = 2  # after the module header and the testament introduction
        for book, chapters in books:
            slot += 1  # the book introduction
            for chapter, n_verses in enumerate(chapters, start=1):
                for verse in range(n_verses + 1):
                    out[slot] = (book, chapter, verse)
                    slot += 1
        return out


def _with_counts(name: str, base: Versification, changes: dict[tuple[str, int], int]) -> Versification:
    books = tuple((b, tuple(changes.get((b, c), n) for c, n in enumerate(counts, start=1))) for b, counts in base.books)
    return Versification(name, books, base.n_ot)


KJV = Versification("KJV", _parse_table(_KJV_TABLE))
# NRSV splits two KJV verses: 3 John 1:14 ends at 1:15, and Rev 12:18 is the first clause of KJV 13:1.
NRSV = _with_counts("NRSV", KJV, {("3John", 1): 15, ("Rev", 12): 18})
VERSIFICATIONS = {"KJV": KJV, "NRSV": NRSV, "NRSVA": NRSV}

_DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "ZIP": zlib.decompress,
    "BZIP2": bz2.decompress,
    "XZ": lzma.decompress,
}
_VERSE_ENTRY = {"ztext": struct.Struct("<IIH"), "ztext4": struct.Struct("<III")}


def read_conf(path: Path) -> tuple[str, dict[str, str]]:
    """A SWORD ``.conf``: ``[Name]``, then ``Key=Value`` lines (a trailing backslash continues a
    value on the next line). Returns the name and the keys; the first of a repeated key wins."""
    name, conf, continued = "", {}, False
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if continued:  # only long descriptions (About=) continue; none of them is needed here
            continued = line.endswith("\\")
        elif line.startswith("[") and line.endswith("]") and not name:
            name = line[1:-1]
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            conf.setdefault(key.strip(), value.strip())
            continued = value.endswith("\\")
    return name, conf


@dataclass(frozen=True)
class Module:
    """One installed module: its conf and the folder holding ``ot.bz*`` and ``nt.bz*``."""

    name: str
    conf: dict[str, str]
    data_dir: Path

    @property
    def versification(self) -> Versification:
        name = self.conf.get("Versification", "KJV")
        if name not in VERSIFICATIONS:
            raise AiaynError(
                f"module {self.name}: versification {name} is not supported (supported: {', '.join(VERSIFICATIONS)})"
            )
        return VERSIFICATIONS[name]


def find_module(name: str, roots: list[Path]) -> Module | None:
    """The module ``name`` (case-insensitive) under the first of ``roots`` that has it."""
    for root in roots:
        for conf_path in sorted((root / "mods.d").glob("*.conf")):
            found, conf = read_conf(conf_path)
            if found.lower() == name.lower():
                return Module(found, conf, (root / conf.get("DataPath", "")).resolve())
    return None


def _read_testament(module: Module, testament: str) -> list[bytes]:
    """Every slot of one testament as raw bytes (empty for an empty slot or a missing testament)."""
    driver = module.conf.get("ModDrv", "").lower()
    compress = module.conf.get("CompressType", "ZIP").upper()
    if driver not in _VERSE_ENTRY:
        raise AiaynError(
            f"module {module.name}: driver {module.conf.get('ModDrv')} is not supported (zText and zText4 are)"
        )
    if compress not in _DECOMPRESS or module.conf.get("CipherKey"):
        raise AiaynError(f"module {module.name}: compression {compress} or a cipher is not supported")
    base = module.data_dir / testament
    if not base.with_suffix(".bzv").exists():
        return []
    cache: dict[int, bytes] = {}
    out = []
    try:
        blocks = list(struct.iter_unpack("<III", base.with_suffix(".bzs").read_bytes()))
        packed = base.with_suffix(".bzz").read_bytes()
        for block, start, size in _VERSE_ENTRY[driver].iter_unpack(base.with_suffix(".bzv").read_bytes()):
            if size == 0:
                out.append(b"")
                continue
            if block not in cache:
                offset, n_packed, _ = blocks[block]
                cache[block] = _DECOMPRESS[compress](packed[offset : offset + n_packed])
            out.append(cache[block][start : start + size])
    except (OSError, IndexError, struct.error, zlib.error, lzma.LZMAError) as e:
        raise AiaynError(f"{base}.bz*: damaged {module.conf.get('ModDrv')} files ({e}); reinstall the module") from None
    return out


_CHAPTER_TAG = re.compile(r'<chapter\b[^>]*\bosisID="([^".]+)\.(\d+)"')


def read_verses(module: Module) -> dict[tuple[str, int, int], str]:
    """Raw markup of every non-empty verse, keyed (OSIS book, chapter, verse).

    Where a chapter introduction carries an OSIS ``<chapter osisID=...>`` tag, it must name
    the chapter the versification puts there; a module that disagrees raises instead of
    silently shifting every verse after the first mismatch.
    """
    encoding = "utf-8" if module.conf.get("Encoding", "").upper() == "UTF-8" else "latin-1"
    versification = module.versification
    verses: dict[tuple[str, int, int], str] = {}
    for testament in ("ot", "nt"):
        raw = _read_testament(module, testament)
        if not raw:
            continue
        slots = versification.slots(testament)
        if len(raw) < max(slots) + 1:
            raise AiaynError(
                f"module {module.name}: {testament}.bzv has {len(raw)} entries, fewer than "
                f"{versification.name} versification needs ({max(slots) + 1})"
            )
        for slot, (book, chapter, verse) in slots.items():
            text = raw[slot].decode(encoding, errors="replace")
            if verse == 0:
                tag = _CHAPTER_TAG.search(text)
                if tag and (tag.group(1), int(tag.group(2))) != (book, chapter):
                    raise AiaynError(
                        f"module {module.name}: slot {slot} of {testament}.bzv holds "
                        f"{tag.group(1)}.{tag.group(2)}, {versification.name} puts "
                        f"{book}.{chapter} there; check Versification= in its conf"
                    )
            elif text.strip():
                verses[(book, chapter, verse)] = text
    return verses
