"""Checkpoints: written atomically, loaded without executing pickled code, averaged as §6.1.

A checkpoint is one ``torch.save`` file holding only tensors, numbers and strings, so it
loads with ``torch.load(weights_only=True)``: no code from the file ever runs (on torch >= 2.6;
before, a crafted file could run code even so, CVE-2025-32434, and loading refuses to start). It
is written to a temporary file, fsynced and renamed, so a kill mid-write leaves the previous one
intact. A run folder may come from elsewhere: its config and decoding.json are checked against
the bounds of aiayn.config, and the weights' shapes against the config, before any tensor of the
model is allocated.

Run folder layout:
    RUN/config.yaml   resolved config          RUN/metrics.csv, RUN/tb/   logs
    RUN/spm.model     tokenizer (copied)       RUN/checkpoints/step_00001000.pt, best.pt
                      (vocab.json for a char or symbol tokenizer, aiayn.data.symbols)
    RUN/averaged.pt   from ``aiayn average``  RUN/decoding.json  from ``aiayn tune-decoding``

A checkpoint file's companions (spm.model or vocab.json, decoding.json) are read from its run folder only
(``run_folder``): RUN for RUN/checkpoints/*.pt, else the file's own folder.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aiayn.config import ENUMS, AiaynError, Config, from_dict, validate
from aiayn.data.symbols import open_tokenizer, tokenizer_file
from aiayn.models.build import build_model

FORMAT = "aiayn-checkpoint-1"
DECODING_FILE = "decoding.json"  # decoding settings chosen on valid by `aiayn tune-decoding`
STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
SAFE_TORCH = (2, 6)  # weights_only=True runs no code from the file from this version on (CVE-2025-32434)
# What tune-decoding writes: the settings it chose, then the record of how it chose them.
DECODING_SETTINGS = {"beam_size": int, "length_penalty": str, "alpha": float}
DECODING_RECORD = ("valid_bleu", "task", "metric", "valid_score", "valid_sentences", "model", "grid", "stops")
MAX_DECODING_BYTES = 1_000_000  # tune-decoding writes a few KB: its grid and the stopping rules compared


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_path(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: temporary file, fsync, rename, fsync folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a damaged file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise AiaynError(f"{path}: no such checkpoint")
    check_torch()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, refused global: all mean "not usable"
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise AiaynError(
            f"{path}: checkpoint is truncated or corrupt ({reason}); delete it to fall back to an earlier one"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise AiaynError(f"{path}: not an aiayn checkpoint (expected format {FORMAT})")
    return state


def check_torch() -> None:
    """Refuse to load any checkpoint with a torch on which ``weights_only`` is not a safe loader."""
    if torch.torch_version.TorchVersion(torch.__version__) < SAFE_TORCH:
        raise AiaynError(
            f"torch {torch.__version__} can run code hidden in a checkpoint (CVE-2025-32434); "
            f"install torch >= {'.'.join(map(str, SAFE_TORCH))} (pip install -U torch) to load one"
        )


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Step checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_good_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest step checkpoint that loads; damaged ones are reported and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except AiaynError as e:
            print(f"aiayn: warning: {e}; falling back to the previous checkpoint", file=sys.stderr)
    return None


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    for path in list_checkpoints(run_dir)[:-keep_last]:
        path.unlink(missing_ok=True)


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean of model weights, accumulated in float64 and cast back; integer buffers are
    copied from the last state rather than divided (docs/pitfalls.md: "Averaging")."""
    if not states:
        raise AiaynError("no checkpoints to average")
    out = {}
    for key, last in states[-1].items():
        if not torch.is_floating_point(last):
            out[key] = last.clone()
            continue
        total = torch.zeros_like(last, dtype=torch.float64)
        for state in states:
            total += state[key].to(torch.float64)
        out[key] = (total / len(states)).to(last.dtype)
    return out


def average_checkpoints(run_dir: Path, last: int, out: Path) -> Path:
    """§6.1: average the last ``last`` step checkpoints of a run (5 for base, 20 for big)."""
    paths = list_checkpoints(run_dir)
    if not paths:
        raise AiaynError(f"{run_dir}: no checkpoints to average (expected {checkpoint_dir(run_dir)}/step_*.pt)")
    chosen = paths[-last:]
    states = [load_checkpoint(p) for p in chosen]
    averaged = {
        "model": average_state_dicts([s["model"] for s in states]),
        "config": states[-1]["config"],
        "step": states[-1]["step"],
        "averaged_steps": [int(s["step"]) for s in states],
    }
    save_checkpoint(Path(out), averaged)
    return Path(out)


def resolve_model_path(path: Path) -> Path:
    """A run folder means its averaged model, else its best, else its latest checkpoint."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise AiaynError(f"{path}: no such run folder or checkpoint")
    for candidate in (path / "averaged.pt", checkpoint_dir(path) / "best.pt"):
        if candidate.is_file():
            return candidate
    steps = list_checkpoints(path)
    if steps:
        return steps[-1]
    raise AiaynError(f"{path}: no checkpoint found; train one with `aiayn train --out {path}`")


def run_folder(model_path: Path) -> Path:
    """The run folder a checkpoint file belongs to, where its companions are: RUN for
    RUN/checkpoints/NAME.pt, else the file's own folder. Never further up: a file copied into
    some/dir/ must not pick up a tokenizer or decoding settings of whatever lies around it."""
    folder = Path(model_path).parent
    return folder.parent if folder.name == checkpoint_dir(folder.parent).name else folder


def find_tokenizer(model_path: Path) -> Path:
    """The run folder's tokenizer file: ``spm.model`` or ``vocab.json`` (aiayn.data.symbols)."""
    path = tokenizer_file(run_folder(model_path))
    if path is None:
        raise AiaynError(f"{model_path}: no spm.model or vocab.json in its run folder {run_folder(model_path)}")
    return path


@dataclass
class Loaded:
    model: torch.nn.Module
    config: Config
    tokenizer: Any  # aiayn.data.tokenizer.Tokenizer or aiayn.data.symbols.SymbolTokenizer
    path: Path
    step: int


def tuned_decoding(model_path: Path) -> dict[str, Any] | None:
    """The settings of the decoding.json in the checkpoint's run folder, if ``tune-decoding``
    wrote one; checked as strictly as a config, since a run folder may come from elsewhere."""
    path = run_folder(model_path) / DECODING_FILE
    if not path.is_file():
        return None
    fix = "delete it or run `aiayn tune-decoding` again"
    if path.stat().st_size > MAX_DECODING_BYTES:
        raise AiaynError(f"{path}: {path.stat().st_size:,} bytes, more than tune-decoding ever writes; {fix}")
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):  # not UTF-8 JSON, or nested past Python's recursion limit
        raise AiaynError(f"{path}: not a decoding file written by `aiayn tune-decoding`; {fix}") from None
    if not isinstance(found, dict):
        raise AiaynError(f"{path}: expected a JSON object of decoding settings; {fix}")
    for key in found:
        if key not in DECODING_SETTINGS and key not in DECODING_RECORD:
            raise AiaynError(f"{path}: unknown key {str(key)[:40]!r}; {fix}")
    settings = {}
    for key, kind in DECODING_SETTINGS.items():
        if key not in found:
            raise AiaynError(f"{path}: key '{key}' is missing; {fix}")
        value = found[key]
        numeric = kind is float and isinstance(value, int)
        if isinstance(value, bool) or not (isinstance(value, kind) or numeric):
            raise AiaynError(f"{path}: key '{key}' must be {kind.__name__}, got {type(value).__name__}; {fix}")
        settings[key] = float(value) if numeric else value
    allowed = ENUMS["decode", "length_penalty"]
    if settings["length_penalty"] not in allowed:
        raise AiaynError(
            f"{path}: key 'length_penalty' must be one of {', '.join(allowed)}, "
            f"got {settings['length_penalty'][:40]!r}; {fix}"
        )
    return settings


def apply_tuned(config: Config, model_path: Path) -> None:
    """Replace ``config``'s decoding settings by those of the run's decoding.json, refusing values
    past the config's own bounds (e.g. a beam of 100,000,000) with the file and key named."""
    settings = tuned_decoding(model_path)
    if settings is None:
        return
    for key, value in settings.items():
        setattr(config.decode, key, value)
    try:
        validate(config)
    except AiaynError as e:
        path = run_folder(model_path) / DECODING_FILE
        raise AiaynError(f"{path}: {e}; delete it or run `aiayn tune-decoding` again") from None


def _misfit(expected: dict[str, torch.Tensor], weights: Any) -> str:
    """What keeps ``weights`` from loading into a model whose state dict is ``expected``, in a
    few words ("" when they fit); ``load_state_dict`` would list every tensor over many lines."""
    if not isinstance(weights, dict):
        return f"model is a {type(weights).__name__}, not a dict of tensors"
    missing = [k for k in expected if k not in weights]
    if missing:
        return f"{len(missing)} tensors missing, the first {missing[0]}"
    extra = [k for k in weights if k not in expected]
    if extra:
        return f"{len(extra)} tensors the model does not have, the first {extra[0]}"
    for key, tensor in expected.items():
        got = weights[key]
        if not isinstance(got, torch.Tensor) or got.shape != tensor.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return f"{key} is {shape}, the config makes it {tuple(tensor.shape)}"
    return ""


def predates_softmax_bias(config: Config, weights: dict[str, Any]) -> bool:
    """An LSTM run written before the LSTM had a softmax bias (models/rnn.py) holds no
    ``out_proj.bias``; a zero bias is exactly the model it was trained as."""
    return config.model.arch == "rnn" and "out_proj.weight" in weights and "out_proj.bias" not in weights


def load_for_inference(path: str | Path, device: str | torch.device = "cpu", use_tuned: bool = True) -> Loaded:
    """Model (eval mode), config and tokenizer from a run folder or a checkpoint file. The
    decoding settings ``aiayn tune-decoding`` chose on valid replace the config's, unless
    ``use_tuned`` is False."""
    model_path = resolve_model_path(Path(path))
    state = load_checkpoint(model_path)
    if "config" not in state:
        raise AiaynError(
            f"{model_path}: the checkpoint holds no config, so its model cannot be built; "
            "use one written by `aiayn train` or `aiayn average`"
        )
    try:
        config = from_dict(json.loads(state["config"]))
    except (TypeError, ValueError, RecursionError, AiaynError) as e:  # not a JSON string, or not a config
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise AiaynError(
            f"{model_path}: the checkpoint's config is unusable ({reason}); "
            "use one written by `aiayn train` or `aiayn average`"
        ) from None
    if use_tuned:
        apply_tuned(config, model_path)
    with torch.device("meta"):  # the shapes the config makes, without allocating them
        expected = build_model(config.model).state_dict()
    if predates_softmax_bias(config, state["model"]):
        state["model"]["out_proj.bias"] = torch.zeros(state["model"]["out_proj.weight"].size(0))
    misfit = _misfit(expected, state["model"])
    if misfit:
        raise AiaynError(
            f"{model_path}: the weights do not fit the checkpoint's own config ({misfit}); "
            "the file was damaged or edited, use another checkpoint"
        )
    model = build_model(config.model)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return Loaded(
        model, config, open_tokenizer(find_tokenizer(model_path).parent), model_path, int(state.get("step", 0))
    )
