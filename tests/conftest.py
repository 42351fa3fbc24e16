"""Fixtures shared by several test files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from strict_skips import STRICT, pytest_runtest_makereport  # noqa: F401 (the hook, registered here)
from toydata import make_toy_data

from aiayn.config import AiaynError
from aiayn.data.corpus import SPLITS


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aiayn"


def _complete(folder: Path, code: tuple[str, ...] = ()) -> bool:
    """A finished ``aiayn prepare``: meta.json (newer than the ``code`` files), the tokenizer, and
    every split with its counted lines."""
    try:
        if any(Path(f).stat().st_mtime > (folder / "meta.json").stat().st_mtime for f in code):
            return False
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        lines = {
            (split, side): (folder / f"{split}.{meta[side]}").read_text(encoding="utf-8").count("\n")
            for split in SPLITS
            for side in ("src_lang", "tgt_lang")
        }
        return (folder / "spm.model").is_file() and all(n == meta["counts"][k[0]] for k, n in lines.items())
    except (OSError, ValueError, KeyError):
        return False


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny tensors: more threads only add synchronisation,
    badly so on a shared machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _prepared(name: str, prepare, packages: tuple[str, ...], code: tuple[str, ...]) -> Path:
    """The data folder ``prepare(folder, apt_update=...)`` writes, built once per machine into the
    user cache as ``name`` and reused while complete and newer than the ``code`` files. When the
    Debian ``packages`` cannot be had (no apt, or no package lists) the test skips, saying why, on a
    developer's machine; in CI and ``make test`` (strict_skips.STRICT) apt's lists are updated when
    missing, and a corpus that still cannot be built fails the run."""
    folder = _cache_root() / name
    if _complete(folder, code):
        return folder
    # Build beside it and rename, so a concurrent test run never sees a half-written folder.
    scratch = folder.with_name(f"{name}.{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        prepare(scratch, apt_update=STRICT)
    except AiaynError as e:
        shutil.rmtree(scratch, ignore_errors=True)
        pytest.skip(f"needs the Debian packages {' and '.join(packages)}: {e}")
    if not _complete(folder, code):
        shutil.rmtree(folder, ignore_errors=True)
        try:
            scratch.rename(folder)
        except OSError:  # another run renamed its copy first
            pass
    shutil.rmtree(scratch, ignore_errors=True)
    assert _complete(folder), f"{folder}: preparing {name} did not complete"
    return folder


@pytest.fixture(scope="session")
def bible_data() -> Path:
    """The prepared Bible corpus (about 10 s; the first run also downloads the two Debian
    packages). Only the tests of the Bible corpus itself use it; they end in ``_debian_packages``."""
    from aiayn.data import bible, corpus, sword

    code = tuple(str(module.__file__) for module in (bible, corpus, sword))
    return _prepared("test-bible", bible.prepare_bible, bible.PACKAGES, code)


@pytest.fixture(scope="session")
def kjv_web_data() -> Path:
    """The prepared KJV -> WEB corpus, as ``bible_data`` (tests/data/test_kjv_web.py)."""
    from aiayn.data import bible, corpus, kjv_web, sword

    code = tuple(str(module.__file__) for module in (bible, corpus, kjv_web, sword))
    return _prepared("test-kjv-web", kjv_web.prepare_kjv_web, kjv_web.PACKAGES, code)


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> Path:
    """The toy task of toydata.make_toy_data (the target is the source reversed word by word),
    prepared by `aiayn prepare files`'s code: made here, no network (about 2 s)."""
    return make_toy_data(tmp_path_factory.mktemp("toy-corpus"), pairs=2000)


@pytest.fixture(scope="session")
def toy_run(toy_corpus, tmp_path_factory) -> Path:
    """A tiny model trained for 1,000 updates on the toy corpus (about 20 s on one thread): real
    SentencePiece pieces, test BLEU about 80. What export, the --quantize paths and the packed
    Translator are tested on, with no network; copy it before writing into it."""
    from aiayn.training.train import train

    run = tmp_path_factory.mktemp("toy-run")
    before = torch.get_num_threads()
    train(
        toy_corpus,
        run,
        "tiny",
        overrides=["max_steps=1000", "valid_bleu_sentences=0", "eval_every=10000", "threads=1", "precision=fp32"],
    )
    torch.set_num_threads(before)
    return run
