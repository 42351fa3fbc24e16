"""The Bible corpus: the SWORD reader on modules written here (no download needed), markup, alignment,
fetching the Debian packages (apt faked), and the real corpus (tests ending in _debian_packages)."""

from __future__ import annotations

import re
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import pytest

from aiayn.cli import main
from aiayn.config import AiaynError
from aiayn.data import bible
from aiayn.data.bible import misaligned_chapters, spanish_verse, split_by_chapter, strip_markup, to_kjv
from aiayn.data.corpus import SPLITS, load_meta, read_split
from aiayn.data.sword import KJV, NRSV, find_module, read_verses

# Slot numbers from SWORD's index layout (JSword's SystemKJV chapter starts: Gen 2 opens at 35,
# Exodus at 1586) and from Debian's files (ot.bzv of a KJV module has 24,115 entries, nt.bzv 8,246).
KJV_SLOTS = {
    ("ot", 4): ("Gen", 1, 1),
    ("ot", 5): ("Gen", 1, 2),
    ("ot", 36): ("Gen", 2, 1),
    ("ot", 1588): ("Exod", 1, 1),
    ("ot", 24114): ("Mal", 4, 6),
    ("nt", 4): ("Matt", 1, 1),
    ("nt", 8245): ("Rev", 22, 21),
}
KJV_SIZES = {"ot": 24115, "nt": 8246}


def write_ztext(
    root: Path,
    name: str,
    slots: dict[tuple[str, int], str],
    sizes: dict[str, int],
    driver: str = "zText",
    versification: str = "KJV",
    block_size: int = 3,
) -> None:
    """A zText module from scratch: every ``block_size`` texts share one zlib block."""
    data = root / "modules" / "texts" / "ztext" / name.lower()
    data.mkdir(parents=True)
    (root / "mods.d").mkdir(exist_ok=True)
    (root / "mods.d" / f"{name.lower()}.conf").write_text(
        f"[{name}]\nDataPath=./modules/texts/ztext/{name.lower()}/\nModDrv={driver}\nSourceType=OSIS\n"
        f"About=A module written by a test;\\\nVersification=Vulg is this line's text, not a key\n"
        f"Encoding=UTF-8\nCompressType=ZIP\nBlockType=BOOK\nVersification={versification}\n"
    )
    entry = "<IIH" if driver == "zText" else "<III"
    for testament, size in sizes.items():
        texts = sorted((slot, text.encode()) for (t, slot), text in slots.items() if t == testament)
        index = [struct.pack(entry, 0, 0, 0)] * size
        bzs, bzz = b"", b""
        for first in range(0, len(texts), block_size):
            block, raw = texts[first : first + block_size], b""
            for slot, text in block:
                index[slot] = struct.pack(entry, len(bzs) // 12, len(raw), len(text))
                raw += text
            packed = zlib.compress(raw)
            bzs += struct.pack("<III", len(bzz), len(packed), len(raw))
            bzz += packed
        (data / f"{testament}.bzv").write_bytes(b"".join(index))
        (data / f"{testament}.bzs").write_bytes(bzs)
        (data / f"{testament}.bzz").write_bytes(bzz)


@pytest.mark.parametrize("driver", ["zText", "zText4"])
def test_reader_returns_the_verses_written(tmp_path, driver):
    slots = {
        key: f'<w lemma="strong:H1">{book} {chapter}:{verse} ñ</w>' for key, (book, chapter, verse) in KJV_SLOTS.items()
    }
    slots["ot", 35] = '<chapter n="2" osisID="Gen.2" sID="Gen.2"/>'  # a chapter intro, not a verse
    write_ztext(tmp_path, "Test", slots, KJV_SIZES, driver)
    verses = read_verses(find_module("test", [tmp_path / "nowhere", tmp_path]))
    assert verses == {ref: slots[key] for key, ref in KJV_SLOTS.items()}


def test_reader_follows_nrsv_versification_and_maps_it_to_kjv(tmp_path):
    # NRSV has 3 John 1:15 and Rev 12:18, so Rev 22:21 is the last of 8,248 NT slots. Counting back:
    # Rev 13:1..22:21 is 193 verses + 9 chapter intros (Rev 13:1 = 8046, its intro 8045, 12:18 = 8044);
    # Revelation is 1 + 22 + 405 slots and Jude 1 + 1 + 25, so 3 John 1:15 = 8247 - 428 - 27 = 7792.
    slots = {
        ("nt", 8247): "Grace.",
        ("nt", 8044): "Then I stood on the sand.",
        ("nt", 8046): "I saw a beast.",
        ("nt", 7792): "Greet the friends.",
        ("nt", 7791): "Peace be to you.",
    }
    write_ztext(tmp_path, "Web", slots, {"nt": 8248}, versification="NRSVA")
    module = find_module("Web", [tmp_path])
    verses = read_verses(module)
    assert verses[("Rev", 22, 21)] == "Grace." and verses[("Rev", 12, 18)] == "Then I stood on the sand."
    kjv = to_kjv(verses, module.versification)
    assert kjv[("Rev", 13, 1)] == "Then I stood on the sand. I saw a beast."
    assert kjv[("3John", 1, 14)] == "Peace be to you. Greet the friends."
    assert ("Rev", 12, 18) not in kjv and ("3John", 1, 15) not in kjv


def test_reader_rejects_a_module_in_another_versification(tmp_path):
    write_ztext(tmp_path, "Shifted", {("ot", 35): '<chapter osisID="Gen.3"/>'}, KJV_SIZES)  # Gen 2's intro slot
    with pytest.raises(AiaynError, match=r"holds Gen\.3, KJV puts Gen\.2 there"):
        read_verses(find_module("Shifted", [tmp_path]))


def test_reader_reports_a_damaged_module(tmp_path):
    write_ztext(tmp_path, "Broken", {("ot", 4): "In the beginning"}, KJV_SIZES)
    bzz = next(tmp_path.rglob("ot.bzz"))
    bzz.write_bytes(b"not zlib" + bzz.read_bytes()[8:])
    with pytest.raises(AiaynError, match="ot.bz\\*: damaged zText files"):
        read_verses(find_module("Broken", [tmp_path]))


def test_versification_tables():
    assert [sum(map(sum, (c for _, c in books))) for books in (KJV.books[:39], KJV.books[39:])] == [23145, 7957]
    assert max(KJV.slots("ot")) + 1 == 24115 and max(NRSV.slots("nt")) + 1 == 8248


@pytest.mark.parametrize(
    "raw, plain",
    [
        ('<w lemma="strong:H7225">EN el principio</w> <w lemma="strong:H1254">crió</w>. ', "EN el principio crió."),
        ('<w>God</w><note placement="foot"><reference>1:1 </reference>Elohim.</note><w>created</w>', "God created"),
        ('<w>cubits</w>,<note placement="foot">A cubit is 46 cm.</note><w>and</w> it', "cubits, and it"),
        ('<w>alas</w><transChange type="added">traerá</transChange><w>salud</w>', "alas traerá salud"),
        ("rest awhile.”</q><w>For</w> there", "rest awhile.” For there"),
        ("<w>God</w>’s <w>Spirit</w><lb/>moved", "God’s Spirit moved"),
        ('<title type="main">Section</title>¶ Tom &amp; Jerry <seg>H1234</seg> G5547 said', "Tom & Jerry said"),
        ("<speaker>Beloved</speaker><l sID='a'/>Kiss me<l eID='a'/><l sID='b'/>now", "Kiss me now"),
        ("cafe\u0301 <RF>a GBF note<Rf>ok<WH1234>", "café ok"),
    ],
)
def test_strip_markup(raw, plain):
    assert strip_markup(raw) == plain


def test_psalm_titles_and_spanish_drop_caps():
    web = '<title canonical="true" type="psalm">A Psalm by David.</title> <l/>Yahweh is my shepherd'
    assert strip_markup(web) == "A Psalm by David. Yahweh is my shepherd"
    assert strip_markup(web, keep_psalm_title=False) == "Yahweh is my shepherd"
    assert spanish_verse("Salmo de David. JEHOVÁ es mi pastor", ("Ps", 23, 1)) == (
        "Salmo de David. Jehová es mi pastor",
        True,
    )
    assert spanish_verse("¡OH Jehová, oye", ("Ps", 6, 1)) == ("¡Oh Jehová, oye", False)
    assert spanish_verse("GIMEL. Haz bien", ("Ps", 119, 17)) == ("Haz bien", False)
    assert (
        spanish_verse("Gracia sea contigo. Amén. Escrita de Roma con Epafrodito.", ("Phil", 4, 23))[0]
        == "Gracia sea contigo. Amén."
    )
    assert spanish_verse("Y dijo JEHOVÁ: No", ("Gen", 7, 2))[0] == "Y dijo JEHOVÁ: No"  # only chapter starts


def test_misaligned_chapters_are_found():
    lengths = [40, 90, 25, 130, 60, 33, 100, 45, 75, 20]
    en = {("A", 1, v): "x" * n for v, n in enumerate(lengths, 1)}
    es = dict(en)
    en.update({("B", 1, v): "x" * n for v, n in enumerate(lengths, 1)})
    es.update({("B", 1, v): "x" * n for v, n in enumerate(lengths[1:] + [50], 1)})  # one verse over
    en.update({("C", 1, v): "x" * n for v, n in enumerate(lengths, 1)})
    es.update({("C", 1, v): "x" * n for v, n in enumerate(lengths[:-1], 1)})  # last verse missing
    assert misaligned_chapters(es, en, median=0.0) == {("B", 1), ("C", 1)}


def test_split_by_chapter_holds_out_whole_chapters():
    pairs = [((f"B{b}", c, v), "es", "en") for b in range(20) for c in range(1, 11) for v in range(1, 1 + 5 + c)]
    splits = split_by_chapter(pairs, seed=1, target=100)
    chapters = {s: {r.rsplit(".", 1)[0] for r, _, _ in splits[s]} for s in SPLITS}
    assert sum(map(len, splits.values())) == len(pairs)
    assert all(100 <= len(splits[s]) <= 105 for s in ("valid", "test"))
    assert not (
        chapters["train"] & chapters["valid"]
        or chapters["train"] & chapters["test"]
        or chapters["valid"] & chapters["test"]
    )
    assert max(Counter(c.split(".")[0] for c in chapters["test"]).values()) == 1  # spread over books
    assert split_by_chapter(pairs, seed=1, target=100) == splits
    assert split_by_chapter(pairs, seed=2, target=100)["test"] != splits["test"]


def test_modules_in_a_sword_dir_are_found_without_a_download(tmp_path, monkeypatch):
    for name, text in ((bible.SPANISH, "EN el principio"), (bible.ENGLISH, "In the beginning")):
        write_ztext(tmp_path, name, {("ot", 4): text}, KJV_SIZES)

    def no_download(*args, **kwargs):
        raise AssertionError("the modules are in --sword-dir: nothing may be downloaded")

    monkeypatch.setattr(bible, "fetch_modules", no_download)
    spanish, english = bible.locate_modules(tmp_path)
    assert (spanish.name, english.name) == (bible.SPANISH, bible.ENGLISH)
    assert read_verses(spanish) == {("Gen", 1, 1): "EN el principio"}


class FakeApt:
    """``apt-get download`` that cannot find the packages until ``apt-get update`` has run."""

    def __init__(self, monkeypatch, root: bool = True):
        self.commands: list[list[str]] = []
        self.updated = False
        monkeypatch.setattr(bible.shutil, "which", lambda tool: f"/usr/bin/{tool}")
        monkeypatch.setattr(bible.os, "geteuid", lambda: 0 if root else 1000)
        monkeypatch.setattr(bible.subprocess, "run", self.run)

    def run(self, command: list[str], **kwargs) -> subprocess.CompletedProcess:
        self.commands.append(command)
        if command[:2] == ["apt-get", "update"]:
            self.updated = True
        elif command[:2] == ["apt-get", "download"] and not self.updated:
            return subprocess.CompletedProcess(command, 100, "", "E: Unable to locate package sword-text-sparv\n")
        return subprocess.CompletedProcess(command, 0, "", "")


def test_missing_package_lists_are_not_updated_unasked(tmp_path, monkeypatch):
    apt = FakeApt(monkeypatch)
    with pytest.raises(AiaynError) as e:
        bible.fetch_modules(tmp_path)
    assert "\n" not in str(e.value) and "run `sudo apt-get update` first (or pass --apt-update" in str(e.value)
    assert apt.commands == [["apt-get", "download", *bible.PACKAGES]]


def test_apt_update_runs_when_asked(tmp_path, monkeypatch):
    apt = FakeApt(monkeypatch)
    assert bible.fetch_modules(tmp_path, apt_update=True) == tmp_path / "usr/share/sword"
    assert apt.commands == [
        ["apt-get", "download", *bible.PACKAGES],
        ["apt-get", "update"],
        ["apt-get", "download", *bible.PACKAGES],
    ]


def test_apt_update_needs_root(tmp_path, monkeypatch):
    apt = FakeApt(monkeypatch, root=False)
    with pytest.raises(AiaynError, match=r"apt-get update needs root; run `sudo apt-get update`"):
        bible.fetch_modules(tmp_path, apt_update=True)
    assert ["apt-get", "update"] not in apt.commands


def test_prepare_bible_passes_apt_update_on(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(bible, "prepare_bible", lambda *args, **kwargs: seen.append(kwargs["apt_update"]))
    for flags in ([], ["--apt-update"]):
        assert main(["prepare", "bible", "--out", str(tmp_path), *flags]) == 0
    assert seen == [False, True]


# The real corpus (tests/conftest.py builds it once per machine from the Debian packages; the tests
# that need it end in _debian_packages and skip, saying why, when the packages cannot be had, except
# in CI and `make test`, where that fails the run: tests/strict_skips.py).


def verses(folder: Path) -> dict[str, tuple[str, str, str]]:
    out = {}
    for split in SPLITS:
        for line in (folder / f"{split}.tsv").read_text(encoding="utf-8").splitlines():
            ref, es, en = line.split("\t")
            out[ref] = (split, es, en)
    return out


def test_bible_size_and_metadata_debian_packages(bible_data):
    meta = load_meta(bible_data)
    assert (meta["source"], meta["src_lang"], meta["tgt_lang"], meta["vocab_size"]) == ("bible", "es", "en", 8000)
    assert sum(meta["counts"].values()) >= 30_000
    assert all(900 <= meta["counts"][s] <= 1100 for s in ("valid", "test"))
    assert meta["pairs_read"] == sum(meta["counts"].values()) + sum(meta["dropped"].values())
    assert meta["special_ids"] == {"PAD": 0, "UNK": 1, "BOS": 2, "EOS": 3}
    for split in SPLITS:
        es, en = read_split(bible_data, split)
        assert len(es) == len(en) == meta["counts"][split] and all(es) and all(en)


def test_bible_has_no_markup_debian_packages(bible_data):
    text = "".join(
        (bible_data / f"{split}.{lang}").read_text(encoding="utf-8") for split in SPLITS for lang in ("es", "en")
    )
    assert not re.search(r"[<>¶]|&#?\w+;|\b[HG]\d{1,5}\b|  |^ | $", text, re.M)


@pytest.mark.parametrize(
    "ref, spanish, english",
    [
        ("Gen.1.1", ["principio", "cielos"], ["beginning", "heavens"]),
        ("John.3.16", ["amó", "unigénito"], ["loved", "world"]),
        ("Ps.23.1", ["Salmo de David", "pastor"], ["Psalm by David", "shepherd"]),
        ("Exod.20.13", ["No matarás"], ["murder"]),
        ("Matt.5.3", ["pobres"], ["poor"]),
        ("Mal.4.6", ["corazón de los padres"], ["fathers"]),  # the last OT slot
        ("Rev.13.1", ["arena del mar", "bestia"], ["sand of the sea", "beast"]),  # after NRSV's Rev 12:18
        ("Rev.22.20", ["Ven, Señor Jesús"], ["come, Lord Jesus"]),  # after 3 John 1:15 and Rev 12:18
    ],
)
def test_famous_verses_pair_up_debian_packages(bible_data, ref, spanish, english):
    _, es, en = verses(bible_data)[ref]
    assert all(w in es for w in spanish) and all(w in en for w in english), (es, en)


def test_spanish_verse_divisions_are_dropped_debian_packages(bible_data):
    refs = verses(bible_data)
    # RV1909 numbers Jonah 1:17 as 2:1 and Numbers 12:16 as 13:1: both chapters of each pair go.
    assert not any(r.startswith(("Jonah.1.", "Jonah.2.", "Num.12.", "Num.13.")) for r in refs)
    assert "Jonah.3.1" in refs and "Num.14.1" in refs


def test_bible_splits_hold_out_whole_chapters_debian_packages(bible_data):
    chapters = {
        s: {r.rsplit(".", 1)[0] for r, (split, _, _) in verses(bible_data).items() if split == s} for s in SPLITS
    }
    assert not (chapters["train"] & (chapters["valid"] | chapters["test"]) or chapters["valid"] & chapters["test"])
    assert len({c.split(".")[0] for c in chapters["test"]}) >= 20
