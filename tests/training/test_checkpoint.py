"""Checkpoints as a model's users meet them: a pickle that would run code is refused and its code
never runs; a checkpoint without its config, or whose weights do not fit it, is a one-line error
naming the file; a config or decoding.json past the bounds is refused before any model is allocated,
and a checkpoint's companions come from its run folder only. (Writing, resuming and averaging:
training/test_train.py.)"""

from __future__ import annotations

import builtins
import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from toydata import save_run, train_toy_tokenizer

from aiayn.config import AiaynError, preset
from aiayn.models.transformer import Transformer
from aiayn.training import checkpoint as ckpt


class Payload:
    """Unpickling this calls ``exec`` on code that writes ``marker``: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('the payload ran')",)


def raw_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Payload(marker), protocol=2))


def torch_zip(path: Path, marker: Path) -> None:
    """The checkpoint format itself (torch.save's zip), with the payload where the weights go."""
    torch.save({"format": ckpt.FORMAT, "model": Payload(marker), "step": 1}, path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch.load reading the bare pickle
@pytest.mark.parametrize(
    "write, unsafe_load",
    [
        (raw_pickle, lambda path: pickle.loads(path.read_bytes())),
        (torch_zip, lambda path: torch.load(path, weights_only=False)),
    ],
)
def test_a_pickle_that_would_run_code_is_refused_and_its_code_never_runs(tmp_path, write, unsafe_load):
    # The control: loaded without protection, the payload really writes its marker.
    control = tmp_path / "control-ran"
    write(tmp_path / "control.pt", control)
    unsafe_load(tmp_path / "control.pt")
    assert control.read_text() == "the payload ran"

    marker = tmp_path / "payload-ran"
    write(tmp_path / "evil.pt", marker)
    with pytest.raises(AiaynError, match=r"evil\.pt: checkpoint is truncated or corrupt"):
        ckpt.load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.fixture
def run(tmp_path) -> Path:
    """A run folder with the toy tokenizer and a random tiny model (step 1)."""
    train_toy_tokenizer(tmp_path)
    return save_run(tmp_path, Transformer(preset("tiny").model), preset("tiny"))


def rewrite(path: Path, edit) -> None:
    state = ckpt.load_checkpoint(path)
    edit(state)
    state.pop("format")
    ckpt.save_checkpoint(path, state)


def one_line_error(path: Path) -> str:
    with pytest.raises(AiaynError) as e:
        ckpt.load_for_inference(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message


def test_a_checkpoint_that_fits_its_config_loads(run):
    loaded = ckpt.load_for_inference(run)
    assert loaded.step == 1 and loaded.config.model.d_model == 32 and not loaded.model.training


def test_a_checkpoint_without_config_is_a_one_line_error(run):
    path = ckpt.step_path(run, 1)
    rewrite(path, lambda state: state.pop("config"))
    assert "holds no config" in one_line_error(path)


@pytest.mark.parametrize(
    "config, message",
    [
        ("{not json", "config is unusable"),
        (json.dumps({"model": {"d_modle": 32}}), "unknown config key 'model.d_modle'"),
        (None, "config is unusable"),
        ("[" * 100_000 + "]" * 100_000, "config is unusable (maximum recursion depth exceeded"),
    ],
)
def test_an_unusable_config_is_a_one_line_error(run, config, message):
    path = ckpt.step_path(run, 1)
    rewrite(path, lambda state: state.update(config=config))
    assert message in one_line_error(path)


def edit_config(**model: int) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        cfg = json.loads(state["config"])
        cfg["model"].update(model)
        state["config"] = json.dumps(cfg)

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (edit_config(d_ff=128), r"encoder\.layers\.0\.\S+ is \(64(, 32)?\), the config makes it \(128"),
        (edit_config(n_layers=3), r"tensors missing, the first encoder\.layers\.2\."),
        (edit_config(n_layers=1), r"tensors the model does not have, the first encoder\.layers\.1\."),
        (lambda state: state.update(model=[1, 2]), "model is a list, not a dict of tensors"),
    ],
)
def test_weights_that_do_not_fit_the_config_are_a_one_line_error(run, edit, message):
    path = ckpt.step_path(run, 1)
    rewrite(path, edit)
    found = one_line_error(path)
    assert "do not fit the checkpoint's own config" in found and re.search(message, found), found


# ---------------------------------------------------------------------------- run folders from elsewhere


def test_a_torch_older_than_2_6_is_refused_before_loading(run, monkeypatch):
    """weights_only=True runs no code from the file only from torch 2.6 on (CVE-2025-32434)."""
    assert '"torch>=2.6",' in (Path(__file__).parents[2] / "pyproject.toml").read_text()
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load ran on an unsafe torch"))
    path = ckpt.step_path(run, 1)
    with pytest.raises(AiaynError) as e:
        ckpt.load_for_inference(path)
    assert str(e.value).startswith("torch 2.5.1+cpu can run code hidden in a checkpoint (CVE-2025-32434)")
    assert "\n" not in str(e.value)


@pytest.fixture
def nothing_built(monkeypatch) -> list:
    """Fails the test if a model is built anywhere but on the meta device (which allocates nothing);
    returns the devices of the models that were built."""
    devices = []
    real = ckpt.build_model

    def spy(cfg):
        devices.append(torch.get_default_device().type)
        assert devices[-1] == "meta", "a model was allocated before the checks"
        return real(cfg)

    monkeypatch.setattr(ckpt, "build_model", spy)
    return devices


@pytest.mark.parametrize(
    "section, values, key",
    [
        ("model", {"max_len": 200_000_000}, "model.max_len"),
        ("model", {"vocab_size": 10**9}, "model.vocab_size"),
        ("model", {"d_model": 2**20, "n_heads": 4}, "model.d_model"),
        ("model", {"n_layers": 10_000}, "model.n_layers"),
        ("model", {"d_ff": 60_000, "d_model": 8192, "n_layers": 24, "n_heads": 16}, "model.*"),
        ("decode", {"min_len": 100_000, "max_len_offset": 100_000}, "decode.min_len"),
        ("decode", {"max_len_offset": 100_000}, "decode.max_len_offset"),
        ("decode", {"beam_size": 100_000_000}, "decode.beam_size"),
        ("data", {"batch_tokens": 10**12}, "data.batch_tokens"),
    ],
)
def test_a_config_past_the_bounds_is_refused_before_anything_is_built(run, nothing_built, section, values, key):
    path = ckpt.step_path(run, 1)

    def edit(state: dict) -> None:
        cfg = json.loads(state["config"])
        cfg[section].update(values)
        state["config"] = json.dumps(cfg)

    rewrite(path, edit)
    assert f"config key{'s' if key.endswith('*') else ''} '{key}'" in one_line_error(path)
    assert nothing_built == []


def test_weights_are_checked_against_the_config_on_the_meta_device(run, nothing_built):
    """A small file whose config asks for a model of gigabytes (inside the bounds) is refused by
    comparing shapes on the meta device: the model it asks for is never allocated."""
    path = ckpt.step_path(run, 1)
    rewrite(path, edit_config(vocab_size=200_000, d_model=4096, d_ff=16_384, n_heads=16, n_layers=2))
    assert "do not fit the checkpoint's own config" in one_line_error(path)
    assert nothing_built == ["meta"]


def decoding_file(run: Path, content: str) -> Path:
    path = run / ckpt.DECODING_FILE
    path.write_text(content, encoding="utf-8")
    return path


TUNED = {"beam_size": 6, "length_penalty": "fairseq", "alpha": 1, "valid_bleu": 3.2, "grid": [], "stops": None}


@pytest.mark.parametrize(
    "content, message",
    [
        (json.dumps({**TUNED, "beam_size": 100_000_000}), "config key 'decode.beam_size' must be at most 64"),
        (json.dumps({**TUNED, "beam_size": 0}), "config key 'decode.beam_size' must be positive"),
        (json.dumps({**TUNED, "beam_size": "4"}), "key 'beam_size' must be int, got str"),
        (json.dumps({**TUNED, "beam_size": True}), "key 'beam_size' must be int, got bool"),
        (json.dumps({**TUNED, "alpha": [0.6]}), "key 'alpha' must be float, got list"),
        (json.dumps({**TUNED, "alpha": float("nan")}), "config key 'decode.alpha' must be a finite number"),
        (
            json.dumps({**TUNED, "length_penalty": "wu"}),
            "key 'length_penalty' must be one of gnmt, fairseq, none, got 'wu'",
        ),
        (json.dumps({**TUNED, "grid": ["x" * 1_000_000]}), "bytes, more than tune-decoding ever writes"),
        (json.dumps({**TUNED, "min_len": 100_000}), "unknown key 'min_len'"),
        (json.dumps({"beam_size": 4, "alpha": 0.6}), "key 'length_penalty' is missing"),
        (json.dumps([4, 0.6]), "expected a JSON object"),
        ("[" * 100_000 + "]" * 100_000, "not a decoding file written by `aiayn tune-decoding`"),
        ("{", "not a decoding file written by `aiayn tune-decoding`"),
    ],
)
def test_a_bad_decoding_file_is_a_one_line_error_naming_it(run, nothing_built, content, message):
    path = decoding_file(run, content)
    with pytest.raises(AiaynError) as e:
        ckpt.load_for_inference(run)
    found = str(e.value)
    assert found.startswith(f"{path}: ") and "\n" not in found and message in found, found
    assert "tune-decoding" in found and nothing_built == []


def test_a_decoding_file_within_the_bounds_is_applied(run):
    decoding_file(run, json.dumps(TUNED))
    d = ckpt.load_for_inference(run).config.decode
    assert (d.beam_size, d.length_penalty, d.alpha) == (6, "fairseq", 1.0)
    assert ckpt.load_for_inference(run, use_tuned=False).config.decode.beam_size == 4


def test_companions_are_read_from_the_run_folder_only(run, tmp_path):
    """RUN/checkpoints/NAME.pt reads RUN's spm.model and decoding.json; any other file reads only
    its own folder's, never those of the folders above it."""
    decoding_file(run, json.dumps(TUNED))
    step = ckpt.step_path(run, 1)
    assert ckpt.run_folder(step) == run and ckpt.load_for_inference(step).config.decode.beam_size == 6
    (step.parent / ckpt.DECODING_FILE).write_text("{")  # beside the step file, not in its run folder: unread
    assert ckpt.load_for_inference(step).config.decode.beam_size == 6

    copied = run / "shared" / "dir" / "x.pt"  # two folders below the run's spm.model and decoding.json
    copied.parent.mkdir(parents=True)
    copied.write_bytes(step.read_bytes())
    assert ckpt.run_folder(copied) == copied.parent
    with pytest.raises(AiaynError, match=rf"^{re.escape(str(copied))}: no spm\.model or vocab\.json in its run folder"):
        ckpt.load_for_inference(copied)
    for name in ("spm.model", "spm.vocab"):
        (copied.parent / name).write_bytes((run / name).read_bytes())
    assert ckpt.load_for_inference(copied).config.decode.beam_size == 4  # the run's decoding.json is not its own
