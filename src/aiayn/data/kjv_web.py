"""Early Modern to modern English: the King James Version aligned verse by verse with the World English Bible.

A transduction task inside one language: the KJV (1769 text) says "Jesus wept." as the WEB does,
but "whosoever believeth in him" where the WEB says "whoever believes in him". So much of a verse
can stay as it is that the source copied unchanged already scores a BLEU a model has to beat:
``aiayn prepare kjv-web`` records that *copy baseline* for valid and test in ``meta.json``, scored
as ``aiayn evaluate`` scores a model, and ``aiayn evaluate`` prints it beside the model's scores.

Both texts are in the public domain and packaged by Debian as SWORD modules (``sword-text-kjv``,
``sword-text-web``), found or downloaded as ``bible.py`` does. The KJV module (eBible.org's
``engKJV2006eb``, KJV versification) is OSIS with a Strong's number on most words, the translators'
supplied words in ``<transChange type="added">`` (the italics of printed KJVs), the divine name,
red-letter ``<q who="Jesus">``, footnotes, pilcrows, Psalm 119's stanza letters and the
subscriptions after Paul's letters as untitled ``<title>`` elements: ``bible.strip_markup`` keeps
the words and drops the rest. What it leaves, this module removes: the USFM ``\\nd`` markers the
conversion let through (27 in the text), and the one pair of square brackets (1 John 2:23, the words
the 1611 printers set in another type). Words in ``transChange`` stay: they are part of the text.

The WEB module is stored in NRSV versification and read so (``sword.read_verses`` checks each
chapter's place); its two NRSV-only verses are empty in Debian's module, and ``bible.to_kjv``
would join them to their KJV verse otherwise. A Psalm title stays only where both sides have one
(the WEB gives Psalm 119's stanza letters as titles; the KJV's go with the other untitled titles).
Then ``bible.pair_verses`` drops what cannot be trusted (the WEB leaves out Luke 17:36, Acts 8:37,
15:34 and 24:7, prints Rom 16:25-27 inside 14:23 and its glossary after Rev 22:21), and
``bible.split_by_chapter`` holds whole chapters out, by the Bible corpus's rule and seed.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF
from tqdm import tqdm

from aiayn.config import AiaynError
from aiayn.data.bible import (
    PSALM_TITLE,
    Verse,
    in_canon_order,
    locate_modules,
    pair_verses,
    split_by_chapter,
    strip_markup,
    to_kjv,
)
from aiayn.data.corpus import write_data
from aiayn.data.sword import read_verses
from aiayn.data.text import Pair, normalize

KJV_MODULE, WEB_MODULE = "engKJV2006eb", "engWEB2015eb"  # module names inside the Debian packages
PACKAGES = ("sword-text-kjv", "sword-text-web")
# BCP 47 tags, also the data folder's file suffixes: train.en-x-kjv beside train.en.
SRC_LANG, TGT_LANG = "en-x-kjv", "en"
HELD_OUT = ("valid", "test")

_USFM_MARKER = re.compile(r"\\\+?[a-z]+\d*\*?")  # \nd, \+nd*: USFM character markers
_BRACKETS = re.compile(r"[\[\]]")


def kjv_verse(raw: str, *, keep_psalm_title: bool = True) -> str:
    """Plain text of one raw KJV verse: ``bible.strip_markup``, then the markers it does not know."""
    text = strip_markup(raw, keep_psalm_title=keep_psalm_title)
    return normalize(_BRACKETS.sub("", _USFM_MARKER.sub(" ", text)))


def clean_verses(kjv_raw: dict[Verse, str], web_raw: dict[Verse, str]) -> tuple[dict[Verse, str], dict[Verse, str]]:
    """Both sides as plain text, KJV versification; a verse that cleans to nothing is left out."""
    kjv: dict[Verse, str] = {}
    web: dict[Verse, str] = {}
    keys = in_canon_order(set(kjv_raw) | set(web_raw))
    for key in tqdm(keys, desc="cleaning verses", unit="verse", file=sys.stderr, leave=False):
        old, new = kjv_raw.get(key, ""), web_raw.get(key, "")
        titled = bool(PSALM_TITLE.search(old) and PSALM_TITLE.search(new))
        if text := kjv_verse(old, keep_psalm_title=titled):
            kjv[key] = text
        if text := strip_markup(new, keep_psalm_title=titled):
            web[key] = text
    return kjv, web


def copy_scores(sources: Sequence[str], references: Sequence[str]) -> dict:
    """sacreBLEU BLEU and chrF of the sources copied unchanged, with ``evaluation.evaluate.corpus_scores``'s
    settings (sacreBLEU's defaults) and signatures: the floor a model of this task has to beat."""
    if len(sources) != len(references) or not sources:
        raise AiaynError(f"copy baseline: {len(sources)} sources and {len(references)} references; need equal, > 0")
    bleu, chrf = BLEU(), CHRF()
    return {
        "bleu": bleu.corpus_score(list(sources), [list(references)]).score,
        "chrf": chrf.corpus_score(list(sources), [list(references)]).score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": len(sources),
    }


def copy_baseline(splits: dict[str, list[Pair]]) -> dict[str, dict]:
    """``copy_scores`` of the held-out splits, as ``meta.json``'s ``copy_baseline``."""
    return {split: copy_scores([p[1] for p in splits[split]], [p[2] for p in splits[split]]) for split in HELD_OUT}


def prepare_kjv_web(
    out: Path, *, sword_dir: Path | None = None, vocab_size: int = 8000, seed: int = 1, apt_update: bool = False
) -> dict:
    """``aiayn prepare kjv-web``: modules -> cleaned, aligned, split pairs -> data folder in ``out``,
    with the copy baseline in ``meta.json``. ``apt_update`` as for ``aiayn prepare bible``."""
    start = time.monotonic()
    kjv_module, web_module = locate_modules(sword_dir, apt_update, names=(KJV_MODULE, WEB_MODULE), packages=PACKAGES)
    kjv_raw, web_nrsv = read_verses(kjv_module), read_verses(web_module)
    if not kjv_raw or not web_nrsv:
        empty = kjv_module if not kjv_raw else web_module
        raise AiaynError(f"{empty.data_dir}: module {empty.name} has no verses; reinstall its Debian package")
    web_raw = to_kjv(web_nrsv, web_module.versification)
    kjv, web = clean_verses(to_kjv(kjv_raw, kjv_module.versification), web_raw)
    pairs, drops = pair_verses(kjv, web)
    splits = split_by_chapter(pairs, seed)
    baseline = copy_baseline(splits)
    read = {kjv_module.name: len(kjv_raw), web_module.name: len(web_nrsv)}
    meta = write_data(
        Path(out),
        splits,
        source="kjv-web",
        src_lang=SRC_LANG,
        tgt_lang=TGT_LANG,
        pairs_read=len(pairs) + sum(drops.values()),
        dropped=dict(drops),
        vocab_size=vocab_size,
        extra={
            "task": "translation",
            "modules": [kjv_module.name, web_module.name],
            "verses_read": read,
            "versification": {m.name: m.versification.name for m in (kjv_module, web_module)},
            "seed": seed,
            "copy_baseline": baseline,
        },
    )
    for name, n in read.items():
        print(f"  verses read    {n:,} ({name}, {meta['versification'][name]} versification)")
    print(f"  verse pairs    {len(pairs):,} aligned on KJV versification")
    for split, scores in baseline.items():
        print(f"  copy baseline  {split}: BLEU {scores['bleu']:.2f}, chrF2 {scores['chrf']:.2f} (source unchanged)")
    print(f"  took {time.monotonic() - start:.1f} s")
    return meta
