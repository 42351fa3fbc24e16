"""The KJV -> WEB corpus: markup of raw verses copied from Debian's KJV module (no download needed),
psalm titles, pairing and drops, the copy baseline, the command; then the real corpus (tests ending
in _debian_packages, built by tests/conftest.py, failing in CI when the packages cannot be had)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sacrebleu
from test_bible import KJV_SIZES, FakeApt, write_ztext
from toydata import random_run

from aiayn.cli import main
from aiayn.data import bible, kjv_web
from aiayn.data.corpus import SPLITS, load_meta, read_split
from aiayn.data.kjv_web import clean_verses, copy_baseline, kjv_verse
from aiayn.data.sword import read_verses
from aiayn.evaluation.evaluate import corpus_scores, format_copy_baseline, recorded_copy_baseline

# Raw verses of engKJV2006eb (sword-text-kjv 14.3) and the text a reader of a printed KJV sees.
RAW_KJV = {
    "Gen.1.1": (
        'In the <w lemma="strong:H7225">beginning</w> <w lemma="strong:H0430">God</w> <w lemma="strong:H1254">'
        'created</w> the <w lemma="strong:H8064">heaven</w> <w lemma="strong:H0853">and</w> the <w lemma="'
        'strong:H0776">earth</w>. ',
        "In the beginning God created the heaven and the earth.",
    ),
    "John.11.35": ('<w lemma="strong:G2424">Jesus</w> <w lemma="strong:G1145">wept</w>. ', "Jesus wept."),
    # italics (the translators' supplied words) and a paragraph's end
    "Gen.1.2": (
        'And the <w lemma="strong:H0776">earth</w> <w lemma="strong:H1961">was</w> without <w lemma="strong:H8414">'
        'form</w>, and <w lemma="strong:H0922">void</w>; and <w lemma="strong:H2822">darkness</w> <transChange '
        'type="added">was</transChange> upon the <w lemma="strong:H6440">face</w> of the <w lemma="strong:H8415">'
        'deep</w>.  <div eID="gen3" type="x-p"/>',
        "And the earth was without form, and void; and darkness was upon the face of the deep.",
    ),
    # milestones, a pilcrow, red letters
    "John.3.16": (
        '<div type="x-milestone" subType="x-preverse" sID="pv5746"/><div sID="gen8359" type="x-p"/> <div type="x-'
        'milestone" subType="x-preverse" eID="pv5746"/><q marker="" who="Jesus">¶ <w lemma="strong:G1063">For</w> '
        '<w lemma="strong:G2316">God</w> <w lemma="strong:G3779">so</w> <w lemma="strong:G0025">loved</w> <w lemma='
        '"strong:G2889">the world</w>, <w lemma="strong:G5620">that</w> <w lemma="strong:G1325">he gave</w> <w '
        'lemma="strong:G0846">his</w> <w lemma="strong:G3439">only begotten</w> <w lemma="strong:G5207">Son</w>.</q> ',
        "For God so loved the world, that he gave his only begotten Son.",
    ),
    # a footnote, the divine name, a poetry line
    "Ps.119.1": (
        '<w lemma="strong:H0835">Blessed</w> <transChange type="added">are</transChange> the <w lemma="strong:H8549">'
        'undefiled</w> in the <w lemma="strong:H1870">way</w>, who <w lemma="strong:H1980">walk</w> in the <w '
        'lemma="strong:H8451">law</w> of the <divineName><w lemma="strong:H3068">LORD</w></divineName>.<note '
        'placement="foot"><reference type="annotateRef">119.1 </reference>undefiled: or, perfect, or, sincere'
        '</note> <l eID="gen4635" level="1"/>',
        "Blessed are the undefiled in the way, who walk in the law of the LORD.",
    ),
    # a stanza letter, an untitled <title> in another script
    "Ps.119.9": (
        '<div type="x-milestone" subType="x-preverse" sID="pv4024"/><title><foreign>ב BETH.</foreign></title> <lg '
        'sID="gen4643"/> <l level="1" sID="gen4644"/> <div type="x-milestone" subType="x-preverse" eID="pv4024"/>'
        'Wherewithal shall a young <w lemma="strong:H5288">man</w> <w lemma="strong:H2135">cleanse</w> his way?',
        "Wherewithal shall a young man cleanse his way?",
    ),
    # USFM \nd the module's conversion let through, a stray end tag
    "Exod.6.3": (
        'but by my <w lemma="strong:H8034">name</w> \\nd <w lemma="strong:H3068">JEHOVAH</w></divineName> was I not '
        '<w lemma="strong:H3045">known</w> to them. ',
        "but by my name JEHOVAH was I not known to them.",
    ),
    # the 1611 brackets, inside italics
    "1John.2.23": (
        '<w lemma="strong:G3962">Father</w>: <transChange type="added">[but] <w lemma="strong:G3670">he that '
        'acknowledgeth</w> <w lemma="strong:G5207">the Son</w></transChange>. ',
        "Father: but he that acknowledgeth the Son.",
    ),
    # the subscription after Paul's letter, and the book's end
    "Rom.16.27": (
        '<w lemma="strong:G0281">Amen</w>.  <div eID="gen9005" type="x-p"/> <chapter eID="Rom.16"/> <title>Written '
        'to the Romans from Corinthus, <transChange type="added">and sent</transChange> by Phebe servant of the '
        'church at Cenchrea.</title> <div canonical="true" eID="gen8965" osisID="Rom" type="book"/>',
        "Amen.",
    ),
}
MARKUP = re.compile(r"[<>¶\[\]\\]|&#?\w+;|\b[HG]\d{1,5}\b|  |^ | $", re.M)


@pytest.mark.parametrize("ref", RAW_KJV)
def test_kjv_markup_is_stripped(ref):
    raw, plain = RAW_KJV[ref]
    assert kjv_verse(raw) == plain
    assert not MARKUP.search(kjv_verse(raw))


def test_psalm_titles_stay_only_where_both_sides_have_one():
    kjv = {
        ("Ps", 23, 1): '<title canonical="true" type="psalm">A Psalm of David.</title> The LORD is my shepherd.',
        ("Ps", 119, 1): "Blessed are the undefiled.",
    }
    web = {
        ("Ps", 23, 1): '<title canonical="true" type="psalm">A Psalm by David.</title> Yahweh is my shepherd.',
        ("Ps", 119, 1): '<title canonical="true" type="psalm">ALEPH</title> Blessed are those.',
    }
    old, new = clean_verses(kjv, web)
    assert old == {("Ps", 23, 1): "A Psalm of David. The LORD is my shepherd.", ("Ps", 119, 1): kjv["Ps", 119, 1]}
    assert new == {("Ps", 23, 1): "A Psalm by David. Yahweh is my shepherd.", ("Ps", 119, 1): "Blessed are those."}


def test_pairs_keep_their_references_and_drops_are_counted():
    kjv = {("John", 3, v): f"Verse {v} of John three, as the King James Version has it." for v in range(1, 9)}
    web = {("John", 3, v): f"Verse {v} of John three, as the World English Bible has it." for v in range(1, 8)}
    kjv[("Luke", 17, 36)] = "Two men shall be in the field; the one shall be taken, and the other left."
    web[("John", 3, 7)] = "A verse that the WEB prints much longer than the KJV does, " * 4
    pairs, drops = bible.pair_verses(*clean_verses(kjv, web))
    assert [key for key, _, _ in pairs] == [("John", 3, v) for v in range(1, 7)]
    assert all(old.split()[1] == new.split()[1] == str(key[2]) for key, old, new in pairs)
    assert dict(drops) == {"one_side_missing": 2, "misaligned_chapter": 0, "length_ratio": 1}


def test_copy_baseline_is_sacrebleu_of_the_source_against_the_reference():
    held = [("Gen.1.1", "In the beginning God created the heaven and the earth.", "In the beginning, God created")]
    held.append(("John.11.35", "Jesus wept.", "Jesus wept."))
    held.append(("John.3.16", "whosoever believeth in him", "whoever believes in him"))
    baseline = copy_baseline({"train": [], "valid": held[:2], "test": held})
    sources, references = [p[1] for p in held], [p[2] for p in held]
    assert baseline["test"]["bleu"] == sacrebleu.corpus_bleu(sources, [references]).score
    assert baseline["test"]["chrf"] == sacrebleu.corpus_chrf(sources, [references]).score
    assert 0 < baseline["test"]["bleu"] < 100 and baseline["valid"]["sentences"] == 2
    scored = corpus_scores(sources, references)  # what `aiayn evaluate` scores a model with
    assert {k: scored[k] for k in baseline["test"]} == baseline["test"]


def test_evaluate_prints_the_recorded_copy_baseline(tmp_path):
    (tmp_path / "meta.json").write_text(
        '{"src_lang": "en-x-kjv", "tgt_lang": "en", "counts": {}, "vocab_size": 8, "copy_baseline": '
        '{"test": {"bleu": 40.0, "chrf": 60.0, "bleu_signature": "b", "chrf_signature": "c"}}}',
        encoding="utf-8",
    )
    baseline = recorded_copy_baseline(tmp_path, "test")
    assert recorded_copy_baseline(tmp_path, "valid") is None and recorded_copy_baseline(None, "test") is None
    line = format_copy_baseline(baseline, {"bleu": 42.5, "chrf": 59.0, "bleu_signature": "b", "chrf_signature": "c"})
    assert line == "copy baseline (source unchanged): BLEU 40.00, chrF2 60.00; the model +2.50 BLEU, -1.00 chrF2"
    other = format_copy_baseline(baseline, {"bleu": 1, "chrf": 1, "bleu_signature": "b2", "chrf_signature": "c"})
    assert "recorded with another signature" in other


def test_evaluate_command_prints_the_copy_baseline_beside_the_model(tmp_path, capsys):
    """`aiayn evaluate --data` on a folder with a copy baseline: printed and kept in scores.json."""
    old, new = ["Jesus wept.", "Thou shalt not kill."], ["Jesus wept.", "You shall not murder."]
    data = tmp_path / "data"
    data.mkdir()
    baseline = copy_baseline({"train": [], "valid": [("", "a", "b")], "test": [("", *p) for p in zip(old, new)]})
    meta = {"src_lang": "en-x-kjv", "tgt_lang": "en", "counts": {"test": 2}, "vocab_size": 64}
    (data / "meta.json").write_text(json.dumps({**meta, "copy_baseline": baseline}), encoding="utf-8")
    (data / "test.en-x-kjv").write_text("".join(f"{line}\n" for line in old), encoding="utf-8")
    (data / "test.en").write_text("".join(f"{line}\n" for line in new), encoding="utf-8")
    (tmp_path / "run").mkdir()
    run = random_run(tmp_path / "run", max_len_offset=5)
    args = ["evaluate", "--model", str(run), "--data", str(data), "--beam", "1", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "eval")]) == 0
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text(encoding="utf-8"))
    assert scores["copy_baseline"] == baseline["test"]
    assert format_copy_baseline(baseline["test"], scores) in capsys.readouterr().out.splitlines()


def test_the_kjv_and_web_modules_are_found_or_fetched(tmp_path, monkeypatch):
    for name, text in ((kjv_web.KJV_MODULE, "In the beginning"), (kjv_web.WEB_MODULE, "In the beginning,")):
        write_ztext(tmp_path / "lib", name, {("ot", 4): text}, KJV_SIZES)
    found = bible.locate_modules(tmp_path / "lib", names=(kjv_web.KJV_MODULE, kjv_web.WEB_MODULE))
    assert [read_verses(m) for m in found] == [
        {("Gen", 1, 1): "In the beginning"},
        {("Gen", 1, 1): "In the beginning,"},
    ]
    apt = FakeApt(monkeypatch)
    assert bible.fetch_modules(tmp_path / "fetched", apt_update=True, packages=kjv_web.PACKAGES)
    assert apt.commands[-1] == ["apt-get", "download", "sword-text-kjv", "sword-text-web"]


def test_prepare_kjv_web_command_passes_its_options(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(kjv_web, "prepare_kjv_web", lambda out, **kwargs: seen.append((out, kwargs)))
    assert main(["prepare", "kjv-web", "--out", str(tmp_path), "--apt-update", "--vocab-size", "500"]) == 0
    assert seen == [(tmp_path, {"sword_dir": None, "vocab_size": 500, "apt_update": True})]


# The real corpus, from Debian's sword-text-kjv and sword-text-web.


def verses(folder: Path) -> dict[str, tuple[str, str, str]]:
    out = {}
    for split in SPLITS:
        for line in (folder / f"{split}.tsv").read_text(encoding="utf-8").splitlines():
            ref, old, new = line.split("\t")
            out[ref] = (split, old, new)
    return out


def test_kjv_web_size_and_metadata_debian_packages(kjv_web_data):
    meta = load_meta(kjv_web_data)
    assert (meta["source"], meta["task"], meta["src_lang"], meta["tgt_lang"]) == (
        "kjv-web",
        "translation",
        "en-x-kjv",
        "en",
    )
    assert meta["verses_read"] == {"engKJV2006eb": 31102, "engWEB2015eb": 31100}
    assert meta["pairs_read"] == sum(meta["counts"].values()) + sum(meta["dropped"].values())
    assert sum(meta["counts"].values()) >= 31_000 and all(900 <= meta["counts"][s] <= 1100 for s in ("valid", "test"))
    for split in SPLITS:
        old, new = read_split(kjv_web_data, split)
        assert len(old) == len(new) == meta["counts"][split] and all(old) and all(new)


def test_kjv_web_has_no_markup_debian_packages(kjv_web_data):
    for split in SPLITS:
        for lang in ("en-x-kjv", "en"):
            text = (kjv_web_data / f"{split}.{lang}").read_text(encoding="utf-8")
            assert not MARKUP.search(text), (split, lang, MARKUP.search(text))


@pytest.mark.parametrize(
    "ref, old, new",
    [
        (
            "Gen.1.1",
            "In the beginning God created the heaven and the earth.",
            "In the beginning, God created the heavens and the earth.",
        ),
        ("John.11.35", "Jesus wept.", "Jesus wept."),
        (
            "Gen.1.2",
            (
                "And the earth was without form, and void; and darkness was upon the face of the deep. "
                "And the Spirit of God moved upon the face of the waters."
            ),
            None,
        ),
        (
            "Exod.6.3",
            (
                "And I appeared unto Abraham, unto Isaac, and unto Jacob, by the name of God Almighty, "
                "but by my name JEHOVAH was I not known to them."
            ),
            None,
        ),
        (
            "John.3.16",
            (
                "For God so loved the world, that he gave his only begotten Son, that whosoever "
                "believeth in him should not perish, but have everlasting life."
            ),
            (
                "For God so loved the world, that he gave his only born Son, that whoever believes in "
                "him should not perish, but have eternal life."
            ),
        ),
        (
            "Ps.23.1",
            "A Psalm of David. The LORD is my shepherd; I shall not want.",
            "A Psalm by David. Yahweh is my shepherd; I shall lack nothing.",
        ),
        (
            "Rev.13.1",
            None,
            (
                "Then I stood on the sand of the sea. I saw a beast coming up out of the sea, having ten "
                "horns and seven heads. On his horns were ten crowns, and on his heads, blasphemous names."
            ),
        ),
    ],
)
def test_known_verses_pair_up_debian_packages(kjv_web_data, ref, old, new):
    _, kjv, web = verses(kjv_web_data)[ref]
    assert (kjv if old is None else old, web if new is None else new) == (kjv, web)


def test_pairs_follow_the_modules_verse_by_verse_debian_packages(kjv_web_data):
    """Each row's two texts are the two modules' texts at the row's reference."""
    kjv_module, web_module = bible.locate_modules(None, names=(kjv_web.KJV_MODULE, kjv_web.WEB_MODULE))
    kjv, web = clean_verses(read_verses(kjv_module), bible.to_kjv(read_verses(web_module), web_module.versification))
    rows = verses(kjv_web_data)
    for ref, (_, old, new) in list(rows.items())[::97]:
        key = (ref.split(".")[0], int(ref.split(".")[1]), int(ref.split(".")[2]))
        assert (old, new) == (kjv[key], web[key]), ref
    # left out by the WEB, or printed elsewhere (Rom 16:25-27 inside 14:23)
    assert not {"Luke.17.36", "Acts.8.37", "Rom.14.23", "Rom.16.25", "Rom.16.27"} & set(rows)


def test_kjv_web_splits_hold_out_whole_chapters_debian_packages(kjv_web_data):
    chapters = {}
    for split in SPLITS:
        rows = (kjv_web_data / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        chapters[split] = {row.split("\t")[0].rsplit(".", 1)[0] for row in rows}
    assert not (chapters["train"] & (chapters["valid"] | chapters["test"]) or chapters["valid"] & chapters["test"])
    assert len({c.split(".")[0] for c in chapters["test"]}) >= 20


def test_copy_baseline_recorded_debian_packages(kjv_web_data):
    baseline = load_meta(kjv_web_data)["copy_baseline"]
    for split in ("valid", "test"):
        old, new = read_split(kjv_web_data, split)
        assert baseline[split]["bleu"] == sacrebleu.corpus_bleu(old, [new]).score
        assert baseline[split]["chrf"] == sacrebleu.corpus_chrf(old, [new]).score
        assert 30 < baseline[split]["bleu"] < 60 and baseline[split]["sentences"] == len(old)
