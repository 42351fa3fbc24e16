"""The Bible corpus: Reina-Valera 1909 (Spanish) aligned verse by verse with the World English Bible.

Both translations are in the public domain and packaged by Debian as SWORD modules
(``sword-text-sparv``, ``sword-text-web``). ``aiayn prepare bible`` finds them (or downloads the two
``.deb`` files with ``apt-get download`` and unpacks them into a cache folder; it runs ``apt-get
update`` only when asked to with ``--apt-update``), reads them with ``sword.py``, strips the
OSIS markup (Strong's numbers, notes, section titles; Psalm titles stay where both sides have
them), removes RV1909's letter subscriptions and Psalm 119 stanza letters, and pairs the verses
on KJV versification:

* the WEB module is stored in NRSV versification; its two extra NT verses join their KJV verse;
* RV1909 is labelled KJV but keeps Spanish verse divisions in some chapters. Such a chapter is
  dropped whole when the Spanish lacks a verse the English has, or when somewhere in it three
  consecutive Spanish verses match the English verses one or two places over much better than
  their own numbers (by verse length, the signal Gale & Church 1993 align sentences with);
* single pairs whose length ratio is far from the corpus median are dropped, and so are verses
  that only one side has.

Whole chapters go to valid and test (chosen by a seeded hash, at most one a book while possible),
so no held-out verse has its chapter in training.
"""

from __future__ import annotations

import hashlib
import html
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

from aiayn.config import AiaynError
from aiayn.data.corpus import SPLITS, write_data
from aiayn.data.sword import KJV, NRSV, Module, Versification, find_module, read_verses
from aiayn.data.text import Pair, normalize

SPANISH, ENGLISH = "spaRV1909eb", "engWEB2015eb"  # module names inside the Debian packages
PACKAGES = ("sword-text-sparv", "sword-text-web")
HELD_OUT_PAIRS = 1000  # about this many pairs each in valid and test
MAX_LOG_RATIO = math.log(2.0)  # a pair is dropped when its length ratio is 2x off the median ratio
SHIFT_WINDOW, SHIFT_GAIN = 3, 1.15  # see misaligned_chapters
Verse = tuple[str, int, int]  # (OSIS book, chapter, verse)
VersePair = tuple[Verse, str, str]  # (verse, source, target)
DROP_REASONS = ("one_side_missing", "misaligned_chapter", "length_ratio")

# NRSV verses that KJV has inside a neighbour: (NRSV verse, the KJV verse it belongs to).
NRSV_TO_KJV = {("3John", 1, 15): ("3John", 1, 14), ("Rev", 12, 18): ("Rev", 13, 1)}


def sword_roots(sword_dir: Path | None) -> list[Path]:
    """Where SWORD modules may live, in search order."""
    roots = [Path(sword_dir)] if sword_dir else []
    roots += [Path(p) for p in os.environ.get("SWORD_PATH", "").split(os.pathsep) if p]
    roots += [Path.home() / ".sword", Path("/usr/share/sword"), cache_dir() / "usr/share/sword"]
    return roots


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aiayn" / "sword"


def _apt_download(folder: Path, packages: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", "download", *packages], cwd=folder, capture_output=True, text=True)


def _no_lists(result: subprocess.CompletedProcess) -> bool:
    return result.returncode != 0 and "Unable to locate package" in result.stderr


def fetch_modules(folder: Path, apt_update: bool = False, *, packages: tuple[str, ...] = PACKAGES) -> Path:
    """``apt-get download`` the ``packages`` into ``folder`` and unpack them there (never into /).

    Without apt's package lists (a fresh container) the download finds nothing; ``apt-get
    update`` changes the machine, so it runs only with ``apt_update`` (and as root); otherwise
    the error says which command to run."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise AiaynError(
                f"no SWORD modules found and {tool} is missing; install {' and '.join(packages)} "
                "or pass --sword-dir DIR (a folder with mods.d/ and modules/)"
            )
    folder.mkdir(parents=True, exist_ok=True)
    print(f"downloading {' and '.join(packages)} into {folder}", file=sys.stderr)
    result = _apt_download(folder, packages)
    if _no_lists(result) and apt_update:
        if os.geteuid() != 0:
            raise AiaynError(
                "--apt-update: apt-get update needs root; run `sudo apt-get update`, then this "
                "command again without --apt-update"
            )
        print("apt package lists are missing: running apt-get update (--apt-update)", file=sys.stderr)
        updated = subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        if updated.returncode != 0:
            raise AiaynError(f"apt-get update failed: {(updated.stderr.strip().splitlines() or ['no message'])[-1]}")
        result = _apt_download(folder, packages)
    if result.returncode != 0:
        if _no_lists(result):
            raise AiaynError(
                f"apt-get download cannot find {packages[0]}: the apt package lists are missing; "
                "run `sudo apt-get update` first (or pass --apt-update to let aiayn run it), "
                "or pass --sword-dir DIR"
            )
        raise AiaynError(
            f"apt-get download {' '.join(packages)} failed: "
            f"{(result.stderr.strip().splitlines() or ['no message'])[-1]}"
        )
    for deb in sorted(folder.glob("sword-text-*.deb")):
        unpacked = subprocess.run(["dpkg-deb", "-x", str(deb), str(folder)], capture_output=True, text=True)
        if unpacked.returncode != 0:
            raise AiaynError(f"{deb}: dpkg-deb -x failed: {unpacked.stderr.strip()}; delete it and retry")
    return folder / "usr/share/sword"


def locate_modules(
    sword_dir: Path | None,
    apt_update: bool = False,
    *,
    names: tuple[str, str] = (SPANISH, ENGLISH),
    packages: tuple[str, ...] = PACKAGES,
) -> tuple[Module, Module]:
    """The source and target modules ``names`` (by default the Spanish and English ones), the
    Debian ``packages`` downloaded into the cache when no root has both."""
    roots = sword_roots(sword_dir)
    found = [find_module(name, roots) for name in names]
    if None in found:
        root = fetch_modules(cache_dir(), apt_update, packages=packages)
        found = [find_module(name, [root]) for name in names]
        if None in found:
            raise AiaynError(
                f"{root}: the Debian packages {' and '.join(packages)} hold no module "
                f"{' / '.join(names)}; pass --sword-dir DIR with both modules"
            )
    return found[0], found[1]  # type: ignore[return-value]


# Markup. OSIS (and ThML) notes, titles and speaker labels go with their contents; so do GBF's
# <RF>note<Rf> and <TS>title<Ts>. They and block tags become a space (a space left before
# punctuation is removed at the end); inline tags (<w>, <transChange>, <q>, ...) vanish, except
# that a space separates the word or punctuation before them from a word after them.
PSALM_TITLE = re.compile(r'<title\b[^>]*type="psalm"[^>]*>(.*?)</title\s*>', re.S)
_WITH_CONTENT = re.compile(
    r"<(note|title|speaker|catchWord|rdg|scripRef)\b[^>]*(?<!/)>.*?</\1\s*>"
    r"|<RF>.*?<Rf>|<TS>.*?<Ts>",
    re.S,
)
_BLOCK = re.compile(
    r"</?(?:div|p|l|lg|lb|br|chapter|verse|milestone|item|list|head|table|row|cell|CM|CL)\b"
    r"[^>]*>"
)
_TAG = re.compile(r"<[^>]*>")
_GLUED = re.compile(r"(?<=[\w.,;:!?”)\]])\x00+(?=\w)")
_STRONGS = re.compile(r"\b[HG]\d{1,5}[a-z]?\b")
_SPACE_BEFORE_PUNCT = re.compile(r" (?=[,.;:!?”’)\]])")


def strip_markup(raw: str, keep_psalm_title: bool = True) -> str:
    """Plain text of one verse: no tags, notes, Strong's numbers, entities or pilcrows; NFC."""
    text = PSALM_TITLE.sub(lambda m: f" {m.group(1)} " if keep_psalm_title else " ", raw)
    text = _WITH_CONTENT.sub(" ", text)
    text = _BLOCK.sub(" ", text)
    text = _GLUED.sub(" ", _TAG.sub("\x00", text)).replace("\x00", "")
    text = _STRONGS.sub(" ", html.unescape(text).replace("¶", " "))
    return _SPACE_BEFORE_PUNCT.sub("", normalize(text))


# RV1909 prints a chapter's first word in capitals ("EN el principio", "Salmo de David. JEHOVÁ es
# mi pastor"): the capitals mark where the chapter's text begins, after any psalm title.
_WORD = re.compile(r"[^\W\d_]+")
# After the last "Amén." of Paul's letters, RV1909 (as the KJV) adds where the letter was written.
_SUBSCRIPTION = re.compile(r"(Amén\.)\s+[^.]*\b(?:[Ee]scrita|[Ee]nviada)\b[^.]*\.$")
# RV1909 heads each 8-verse stanza of Psalm 119 with its Hebrew letter ("GIMEL."), a section title.
_STANZA_LETTER = re.compile(r"^[A-Z]+\.?\s+")


def spanish_verse(text: str, key: Verse) -> tuple[str, bool]:
    """Spanish cleanup after ``strip_markup``; also says whether a heading precedes the drop cap."""
    book, chapter, verse = key
    text = _SUBSCRIPTION.sub(r"\1", text)
    if (book, chapter) == ("Ps", 119) and verse % 8 == 1:
        text = _STANZA_LETTER.sub("", text)
    if verse != 1:
        return text, False
    cap = next((w for w in _WORD.finditer(text) if len(w.group()) > 1 and w.group().isupper()), None)
    if cap is None:
        return text, False
    has_heading = _WORD.search(text, 0, cap.start()) is not None
    return text[: cap.start()] + cap.group().capitalize() + text[cap.end() :], has_heading


def to_kjv(verses: dict[Verse, str], versification: Versification) -> dict[Verse, str]:
    """Move NRSV-only verses into the KJV verse that holds their words (no-op for KJV modules)."""
    if versification is not NRSV:
        return verses
    out = dict(verses)
    for extra, home in NRSV_TO_KJV.items():
        if extra in out:
            parts = (out.get(home, ""), out.pop(extra))
            out[home] = " ".join(parts if extra > home else parts[::-1]).strip()
    return out


def _log_ratio(es: str, en: str) -> float:
    return math.log(len(es) / len(en))


def misaligned_chapters(es: dict[Verse, str], en: dict[Verse, str], median: float) -> set[tuple[str, int]]:
    """Chapters whose Spanish verse numbers do not follow the English ones.

    A chapter is misaligned when (a) a verse exists in English but not in Spanish (Spanish
    numbering merged it into a neighbour), or (b) in some window of ``SHIFT_WINDOW`` verses,
    comparing Spanish verse v+s with English verse v (s = ±1, ±2) lowers the summed
    |log length ratio - median| by more than ``SHIFT_GAIN``: the text is there, one or two
    verses over.
    """
    bad = {k[:2] for k in en if k not in es}
    by_chapter: dict[tuple[str, int], list[int]] = defaultdict(list)
    for book, chapter, verse in en:
        by_chapter[book, chapter].append(verse)

    def window_cost(book: str, chapter: int, start: int, shift: int) -> float:
        """Summed |log ratio - median| of Spanish v + shift against English v; inf where one is missing."""
        total = 0.0
        for v in range(start, start + SHIFT_WINDOW):
            a, b = es.get((book, chapter, v + shift)), en.get((book, chapter, v))
            if not a or not b:
                return math.inf
            total += abs(_log_ratio(a, b) - median)
        return total

    for (book, chapter), verses in by_chapter.items():
        for start in verses:
            here = window_cost(book, chapter, start, 0)
            if here < math.inf and any(
                here - window_cost(book, chapter, start, shift) > SHIFT_GAIN for shift in (-2, -1, 1, 2)
            ):
                bad.add((book, chapter))
    return bad


def in_canon_order(keys: set[Verse]) -> list[Verse]:
    """Verse keys sorted as the books, chapters and verses follow each other in the KJV."""
    book_order = {book: i for i, (book, _) in enumerate(KJV.books)}
    return sorted(keys, key=lambda k: (book_order[k[0]], k[1], k[2]))


def align(es_raw: dict[Verse, str], en_raw: dict[Verse, str]) -> tuple[list[VersePair], Counter]:
    """Clean both sides (KJV versification) and keep the pairs that can be trusted; count drops by reason."""
    es: dict[Verse, str] = {}
    en: dict[Verse, str] = {}
    keys = in_canon_order(set(es_raw) | set(en_raw))
    for key in tqdm(keys, desc="cleaning verses", unit="verse", file=sys.stderr, leave=False):
        spanish, has_heading = spanish_verse(strip_markup(es_raw.get(key, "")), key)
        english = strip_markup(en_raw.get(key, ""), keep_psalm_title=has_heading or key[0] != "Ps")
        if spanish:
            es[key] = spanish
        if english:
            en[key] = english
    return pair_verses(es, en)


def pair_verses(src: dict[Verse, str], tgt: dict[Verse, str]) -> tuple[list[VersePair], Counter]:
    """Pairs of cleaned, non-empty verses (KJV versification) that can be trusted, in canon order;
    drops counted by reason: a verse only one side has, a chapter whose source verse numbers do
    not follow the target's (``misaligned_chapters``), a length ratio far from the median."""
    drops: Counter = Counter(dict.fromkeys(DROP_REASONS, 0))
    keys = in_canon_order(set(src) | set(tgt))
    both = [k for k in keys if k in src and k in tgt]
    if not both:
        raise AiaynError("the two modules share no verse; are both Bibles in KJV or NRSV versification?")
    drops["one_side_missing"] = len(keys) - len(both)
    median = statistics.median(_log_ratio(src[k], tgt[k]) for k in both)
    bad = misaligned_chapters(src, tgt, median)
    pairs = []
    for key in both:
        if key[:2] in bad:
            drops["misaligned_chapter"] += 1
        elif abs(_log_ratio(src[key], tgt[key]) - median) > MAX_LOG_RATIO:
            drops["length_ratio"] += 1
        else:
            pairs.append((key, src[key], tgt[key]))
    return pairs, drops


def split_by_chapter(pairs: list[VersePair], seed: int = 1, target: int = HELD_OUT_PAIRS) -> dict[str, list[Pair]]:
    """Whole chapters to valid and test (about ``target`` pairs each), the rest to train.

    Chapters are ranked by a seeded hash; each split takes the next chapter from the book it
    has used least, skipping chapters that would overshoot the target by more than 5 %.
    """
    chapters: dict[tuple[str, int], list[VersePair]] = defaultdict(list)
    for pair in pairs:
        chapters[pair[0][:2]].append(pair)

    def rank(chapter: tuple[str, int]) -> str:
        return hashlib.sha256(f"{seed}:{chapter[0]}.{chapter[1]}".encode()).hexdigest()

    order = sorted(chapters, key=rank)
    held: dict[tuple[str, int], str] = {}
    for split in ("valid", "test"):
        per_book: Counter = Counter()
        n = 0
        while n < target:
            fits = [c for c in order if c not in held and n + len(chapters[c]) <= 1.05 * target]
            if not fits:
                break
            chapter = min(fits, key=lambda c: per_book[c[0]])  # stable: the hash order breaks ties
            held[chapter] = split
            per_book[chapter[0]] += 1
            n += len(chapters[chapter])
    splits: dict[str, list[Pair]] = {split: [] for split in SPLITS}
    for (book, chapter, verse), es, en in pairs:
        splits[held.get((book, chapter), "train")].append((f"{book}.{chapter}.{verse}", es, en))
    return splits


def prepare_bible(
    out: Path, sword_dir: Path | None = None, vocab_size: int = 8000, seed: int = 1, apt_update: bool = False
) -> dict:
    """``aiayn prepare bible``: modules -> aligned, cleaned, split pairs -> data folder in ``out``.
    ``apt_update`` lets a download run ``apt-get update`` when apt's package lists are missing."""
    start = time.monotonic()
    spanish, english = locate_modules(sword_dir, apt_update)
    es_raw = to_kjv(read_verses(spanish), spanish.versification)
    en_raw = to_kjv(read_verses(english), english.versification)
    pairs, drops = align(es_raw, en_raw)
    splits = split_by_chapter(pairs, seed)
    meta = write_data(
        Path(out),
        splits,
        source="bible",
        src_lang="es",
        tgt_lang="en",
        pairs_read=len(pairs) + sum(drops.values()),
        dropped=dict(drops),
        vocab_size=vocab_size,
        extra={"modules": [spanish.name, english.name], "seed": seed},
    )
    print(f"  took {time.monotonic() - start:.1f} s")
    return meta
