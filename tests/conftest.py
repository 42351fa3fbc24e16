"""Fixtures shared by several test files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from aiayn.config import AiaynError
from aiayn.corpus import SPLITS


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


@pytest.fixture(scope="session")
def bible_data() -> Path:
    """The prepared Bible corpus, built once per machine into the user cache (about 10 s; the first
    run also downloads the two Debian packages) and reused while complete and newer than the code.
    The tests that use it end in ``_debian_packages``; they skip, saying why, when the packages
    cannot be had (no apt, or no package lists: ``aiayn prepare bible`` never updates them unasked)."""
    from aiayn import bible, corpus, sword

    folder = _cache_root() / "test-bible"
    code = tuple(str(module.__file__) for module in (bible, corpus, sword))
    if _complete(folder, code):
        return folder
    # Build beside it and rename, so a concurrent test run never sees a half-written folder.
    scratch = folder.with_name(f"test-bible.{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        bible.prepare_bible(scratch)
    except AiaynError as e:
        shutil.rmtree(scratch, ignore_errors=True)
        pytest.skip(f"needs the Debian packages {' and '.join(bible.PACKAGES)}: {e}")
    if not _complete(folder, code):
        shutil.rmtree(folder, ignore_errors=True)
        try:
            scratch.rename(folder)
        except OSError:  # another run renamed its copy first
            pass
    shutil.rmtree(scratch, ignore_errors=True)
    assert _complete(folder), f"{folder}: preparing the Bible corpus did not complete"
    return folder


@pytest.fixture(scope="session")
def bible_run(bible_data, tmp_path_factory) -> Path:
    """A tiny model trained for 300 updates on the Bible corpus (vocabulary 8,000; about 20 s):
    real verses, real SentencePiece pieces, outputs no longer random (if still repetitive)."""
    from aiayn.train import train

    run = tmp_path_factory.mktemp("bible-run")
    before = torch.get_num_threads()
    train(
        bible_data,
        run,
        "tiny",
        overrides=["vocab_size=8000", "max_steps=300", "valid_bleu_sentences=0", "eval_every=1000", "threads=1"],
    )
    torch.set_num_threads(before)
    return run
