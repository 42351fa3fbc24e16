"""aiayn/config/: presets, preset < YAML file < key=value overrides (load.py), errors that name
the key and bounds on every size (bounds.py), and round trips through the saved forms (dict/JSON
in checkpoints, YAML in run folders)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from aiayn.config import (
    MAX_PARAMETERS,
    MAXIMA,
    AiaynError,
    Config,
    from_dict,
    load_config,
    parameter_count,
    preset,
    resolve_key,
)


def test_paper_presets() -> None:
    base = load_config("base")
    m, t = base.model, base.train
    assert (m.n_layers, m.d_model, m.d_ff, m.n_heads, m.head_dim_k, m.head_dim_v) == (6, 512, 2048, 8, 64, 64)
    assert (m.dropout, t.label_smoothing, t.warmup_steps) == (0.1, 0.1, 4000)
    assert (t.adam_beta1, t.adam_beta2, t.adam_eps) == (0.9, 0.98, 1e-9)
    assert (m.norm, m.positional, m.tie_embeddings, m.decoder_layers) == ("post", "sinusoidal", "all", 6)
    assert (base.decode.beam_size, base.decode.alpha) == (4, 0.6)

    big = load_config("big")
    m = big.model
    assert (m.n_layers, m.d_model, m.d_ff, m.n_heads, m.head_dim_k, m.dropout) == (6, 1024, 4096, 16, 64, 0.3)
    assert big.train.max_steps == 300_000

    small = load_config("small")
    m = small.model
    assert (m.d_model, m.n_heads, m.d_ff, m.n_layers, m.decoder_layers) == (256, 4, 1024, 3, 3)
    assert small.preset == "small"


def test_unknown_preset() -> None:
    with pytest.raises(AiaynError, match="medium"):
        preset("medium")


def test_file_then_overrides_in_order(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  d_model: 128\n  n_layers: 2\ntrain:\n  warmup_steps: 50\n")
    cfg = load_config("small", path, ["d_model=64", "train.max_minutes=20", "model.d_model=96"])
    assert cfg.model.d_model == 96  # the last override wins over the earlier one and the file
    assert cfg.model.n_layers == 2  # the file wins over the preset
    assert cfg.model.d_ff == 1024  # the preset where nothing else speaks
    assert cfg.train.warmup_steps == 50
    assert cfg.train.max_minutes == 20.0 and isinstance(cfg.train.max_minutes, float)


def test_preset_named_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("preset: small\nmodel:\n  n_layers: 1\n")
    cfg = load_config(path=path)
    assert cfg.preset == "small" and cfg.model.d_model == 256 and cfg.model.n_layers == 1


def test_dotted_and_undotted_keys() -> None:
    assert resolve_key("d_model") == ("model", "d_model")
    assert resolve_key("model.d_model") == ("model", "d_model")
    assert resolve_key("warmup_steps") == ("train", "warmup_steps")
    assert resolve_key("data.max_len") == ("data", "max_len")
    a = load_config("base", overrides=["d_model=256", "label_smoothing=0.2", "beam_size=5"])
    b = load_config("base", overrides=["model.d_model=256", "train.label_smoothing=0.2", "decode.beam_size=5"])
    assert a == b
    assert (a.model.d_model, a.train.label_smoothing, a.decode.beam_size) == (256, 0.2, 5)


def test_none_and_bool_values() -> None:
    cfg = load_config("base", overrides=["d_k=32", "n_decoder_layers=2", "compile=true"])
    assert (cfg.model.d_k, cfg.model.head_dim_k, cfg.model.head_dim_v, cfg.model.decoder_layers) == (32, 32, 64, 2)
    assert cfg.train.compile is True
    assert load_config("base", overrides=["d_k=32", "d_k="]).model.d_k is None


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["foo=1"], "foo"),
        (["model.foo=1"], "model.foo"),
        (["max_len=5"], "max_len"),  # model.max_len or data.max_len
        (["d_model=abc"], "model.d_model"),
        (["n_layers=2.5"], "model.n_layers"),
        (["dropout=yes"], "model.dropout"),
        (["compile=3"], "train.compile"),
        (["d_model=500"], "model.d_model"),  # not divisible by 8 heads, d_k unset
        (["dropout=-0.1"], "model.dropout"),
        (["dropout=1.0"], "model.dropout"),
        (["label_smoothing=-0.1"], "train.label_smoothing"),
        (["n_layers=0"], "model.n_layers"),
        (["d_k=-4"], "model.d_k"),
        (["norm=middle"], "model.norm"),
        (["positional=rotary"], "model.positional"),
        (["tie_embeddings=some"], "model.tie_embeddings"),
        (["length_penalty=wu"], "decode.length_penalty"),
        (["d_model"], "d_model"),  # no '='
    ],
)
def test_errors_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(AiaynError) as info:
        load_config("base", overrides=overrides)
    message = str(info.value)
    assert key in message and "\n" not in message


def test_ambiguous_key_suggests_both() -> None:
    with pytest.raises(AiaynError, match="ambiguous") as info:
        load_config("base", overrides=["max_len=5"])
    assert "model.max_len" in str(info.value) and "data.max_len" in str(info.value)


def test_d_model_not_divisible_is_fine_with_explicit_head_dims() -> None:
    cfg = load_config("base", overrides=["d_model=500", "d_k=64", "d_v=64"])
    assert (cfg.model.d_model, cfg.model.head_dim_k, cfg.model.head_dim_v) == (500, 64, 64)


def test_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  d_modle: 128\n")
    with pytest.raises(AiaynError, match=r"unknown\.yaml.*model\.d_modle"):
        load_config("base", unknown)
    section = tmp_path / "section.yaml"
    section.write_text("optimizer:\n  lr: 1\n")
    with pytest.raises(AiaynError, match=r"section\.yaml.*optimizer"):
        load_config("base", section)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  d_model: 128\n  n_layers: [2\n")
    with pytest.raises(AiaynError, match=r"broken\.yaml:\d+"):
        load_config("base", broken)
    wrong_type = tmp_path / "type.yaml"
    wrong_type.write_text("train:\n  warmup_steps: soon\n")
    with pytest.raises(AiaynError, match="train.warmup_steps"):
        load_config("base", wrong_type)
    with pytest.raises(AiaynError, match="missing.yaml"):
        load_config("base", tmp_path / "missing.yaml")


def test_round_trips(tmp_path: Path) -> None:
    cfg = load_config(
        "big",
        overrides=[
            "d_k=32",
            "norm=pre",
            "tie_embeddings=decoder",
            "max_minutes=12.5",
            "data.max_len=100",
            "beam_size=6",
            "compile=true",
        ],
    )
    assert isinstance(cfg, Config)
    assert from_dict(cfg.to_dict()) == cfg
    assert from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # as saved in a checkpoint
    path = tmp_path / "config.yaml"
    cfg.save_yaml(path)
    assert load_config(path=path) == cfg  # as saved in a run folder
    assert from_dict(load_config("tiny").to_dict()) == load_config("tiny")


def test_recipes_paper_and_budget(tmp_path: Path) -> None:
    """`small` trains with `recipe=budget` by default, the other presets with the paper's; one word
    switches, and switching back restores the preset's own values (no leftovers of the other)."""
    for name in ("base", "big", "tiny"):
        cfg = load_config(name)
        assert (cfg.recipe, cfg.train.schedule, cfg.train.tail_fraction, cfg.model.init) == (
            "paper",
            "inverse_sqrt",
            0.0,
            "xavier",
        )
    small = load_config("small")
    t = small.train
    assert (small.recipe, t.schedule, t.tail_fraction, small.model.init) == ("budget", "inverse_sqrt", 0.1, "normal")
    assert (t.warmup_steps, t.lr_scale, t.checkpoint_every_steps, t.dropout_from_epoch) == (300, 0.27713, 0, 4)
    assert (small.data.sort, small.data.limit, small.data.batch_tokens) == ("target", "total", 3000)
    paper = load_config("small", overrides=["recipe=paper"])
    t = paper.train
    assert (paper.recipe, t.schedule, t.tail_fraction, paper.model.init) == ("paper", "inverse_sqrt", 0.0, "xavier")
    # small's own values, as before the budget recipe existed
    assert (t.warmup_steps, t.lr_scale, t.checkpoint_every_steps, t.dropout_from_epoch) == (400, 0.4, 200, 0)
    assert paper.model.dropout == small.model.dropout == 0.1  # budget gates the same P_drop by epoch
    assert (paper.data.sort, paper.data.limit, paper.data.batch_tokens) == ("length", "side", 3000)
    assert load_config("small", overrides=["recipe=paper", "recipe=budget"]) == small
    assert dataclasses.replace(paper.model, init="normal") == small.model  # the network's shape stays
    # Later keys win over the recipe, in either order of the command line.
    assert load_config("small", overrides=["recipe=paper", "warmup_steps=500"]).train.warmup_steps == 500
    assert load_config("small", overrides=["warmup_steps=500", "recipe=paper"]).train.warmup_steps == 400
    assert load_config("small", overrides=["recipe=budget", "schedule=cosine"]).train.schedule == "cosine"
    assert load_config("small", overrides=["schedule=cosine", "recipe=budget"]).train.schedule == "inverse_sqrt"
    path = tmp_path / "run.yaml"
    path.write_text("recipe: budget\ntrain:\n  schedule: cosine\n")
    cfg = load_config("base", path)
    assert (cfg.recipe, cfg.train.schedule, cfg.train.tail_fraction, cfg.data.sort) == (
        "budget",
        "cosine",
        0.1,
        "target",
    )
    assert from_dict(cfg.to_dict()) == cfg
    path.write_text("preset: small\nrecipe: paper\n")
    assert load_config(path=path) == paper
    with pytest.raises(AiaynError, match="unknown recipe 'fast'.*paper, budget"):
        load_config("small", overrides=["recipe=fast"])


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["schedule=step"], "train.schedule"),
        (["tail_fraction=1.0"], "train.tail_fraction"),
        (["init=kaiming"], "model.init"),
        (["init_std=0"], "model.init_std"),
        (["dropout_from_epoch=-1"], "train.dropout_from_epoch"),
    ],
)
def test_new_keys_are_checked(overrides: list[str], key: str) -> None:
    with pytest.raises(AiaynError, match=key.replace(".", r"\.")):
        load_config("small", overrides=overrides)


def test_bounds_pass_the_paper_models_and_refuse_one_more() -> None:
    """Every value that sizes memory or time has an upper bound the paper's big model is inside;
    one past it is a one-line error naming the key."""
    for name in ("base", "big"):
        assert parameter_count(load_config(name).model) <= MAX_PARAMETERS
    for (section, name), most in MAXIMA.items():
        with pytest.raises(AiaynError, match=rf"^config key '{section}\.{name}' must be at most {most:,}, got"):
            load_config("tiny", overrides=[f"{section}.{name}={most + 1}"])
    with pytest.raises(AiaynError, match=r"^config keys 'model\.\*' make [\d,]+ weights, over the 2,000,000,000"):
        load_config("big", overrides=["n_layers=80"])
    with pytest.raises(AiaynError, match=r"^config key 'decode\.min_len' \(257\) cannot exceed model\.max_len \(256\)"):
        load_config("tiny", overrides=["min_len=257"])


def test_an_unknown_architecture_is_one_line_naming_the_choices():
    with pytest.raises(AiaynError) as e:
        load_config("small", overrides=["model.arch=lstm"])
    assert str(e.value) == "config key 'model.arch' must be one of transformer, rnn, conv, got 'lstm'"
    for key, value, fix in (("rnn_hidden", 33, "must be even"), ("conv_kernel", 4, "must be odd")):
        with pytest.raises(AiaynError, match=fix):
            load_config("small", overrides=[f"model.{key}={value}"])
