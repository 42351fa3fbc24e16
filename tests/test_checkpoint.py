"""Checkpoints as a model's users meet them: a pickle that would run code is refused and its code
never runs; a checkpoint without its config, or whose weights do not fit it, is a one-line error
naming the file. (Writing, resuming and averaging: test_train.py.)"""

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

from aiayn import checkpoint as ckpt
from aiayn.config import AiaynError, preset
from aiayn.model import Transformer


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
