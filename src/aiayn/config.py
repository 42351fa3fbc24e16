"""Configuration: nested dataclasses, presets, YAML files and ``key=value`` overrides.

Names spell the paper out (Table 3): ``n_layers, d_model, d_ff, n_heads, d_k, d_v,
dropout, label_smoothing, warmup_steps``. The resolved config is saved as JSON in every
checkpoint and as YAML in every run folder, so a model always says how it was built.

    cfg = load_config(preset="small", path="my.yaml", overrides=["d_model=128", "train.max_minutes=20"])
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aiayn.presets import PRESETS, RECIPES

# Special token ids, fixed for every tokenizer aiayn trains (see tokenizer.py).
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class AiaynError(Exception):
    """A user-facing error: the CLI prints its one-line message, never a traceback."""


@dataclass
class ModelConfig:
    """The network of §3. ``d_k``/``d_v`` default to ``d_model // n_heads`` as in the paper.

    ``arch`` picks the network: the Transformer, or one of the two baselines Table 1 and Table 2
    compare it with (``models/rnn.py``, ``models/conv.py``). Every network reads the shared fields
    (``vocab_size``, ``d_model`` = embedding width, ``dropout``, ``tie_embeddings``, ``max_len``)
    and its own group, named by its prefix: the Transformer ``d_ff``, ``n_heads``, ``d_k``,
    ``d_v``, ``n_layers``, ``n_decoder_layers``, ``positional``, ``norm``, ``init``; the LSTM
    ``rnn_*``; ConvS2S ``conv_*``. A preset sizes all three, so ``--preset small model.arch=rnn``
    is a recurrent network of about the Transformer's parameters; a group another network reads
    is simply not used. One group per network, rather than one set of sizes reinterpreted by each,
    because their depths and widths mean different things: an LSTM layer of width H holds 8H²
    weights, a ConvS2S layer 2kC², a Transformer layer 4D² + 2D·d_ff.
    """

    arch: str = "transformer"  # transformer (§3) | rnn (attentional LSTM) | conv (ConvS2S)
    vocab_size: int = 37000
    d_model: int = 512
    d_ff: int = 2048
    n_heads: int = 8
    d_k: int | None = None
    d_v: int | None = None
    n_layers: int = 6  # encoder layers (N)
    n_decoder_layers: int | None = None  # None: same as n_layers
    dropout: float = 0.1  # P_drop: residual dropout and dropout on embeddings + positions
    positional: str = "sinusoidal"  # sinusoidal | learned (Table 3 row E)
    norm: str = "post"  # post (paper) | pre
    tie_embeddings: str = "all"  # all (src, tgt, softmax) | decoder (tgt, softmax) | none
    max_len: int = 1024  # longest sequence the positional table covers
    init: str = "xavier"  # xavier (projections) + N(0, d_model^-0.5) embeddings | normal: N(0, init_std) everywhere
    init_std: float = 0.02  # std of init=normal (BERT, GPT-2 and Marian use 0.02)
    rnn_hidden: int = 1000  # arch=rnn: LSTM width (Luong et al. 2015: 4 layers of 1000 cells)
    rnn_layers: int = 4  # arch=rnn: LSTM layers of the encoder and of the decoder
    conv_channels: int = 512  # arch=conv: convolution width (Gehring et al. 2017: 512 in most layers)
    conv_layers: int = 15  # arch=conv: layers of the encoder and of the decoder (the paper's WMT En-De: 15)
    conv_kernel: int = 3  # arch=conv: kernel width k, odd

    @property
    def head_dim_k(self) -> int:
        return self.d_k if self.d_k is not None else self.d_model // self.n_heads

    @property
    def head_dim_v(self) -> int:
        return self.d_v if self.d_v is not None else self.d_model // self.n_heads

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers if self.n_decoder_layers is not None else self.n_layers


@dataclass
class DataConfig:
    """Batching of §5.1: batches of about ``batch_tokens`` source and as many target tokens."""

    batch_tokens: int = 4096  # padded tokens per side in one batch (per rank)
    max_len: int = 256  # longer training pairs (in subwords, either side) are dropped
    sort: str = "length"  # length: by target, then source length | target: sources at random within one
    limit: str = "side"  # side: rows × the longer side ≤ batch_tokens | total: rows × (S + T) ≤ 2 × batch_tokens
    valid_bleu_sentences: int = 200  # greedy BLEU on this many valid sentences at each evaluation; 0: no BLEU


@dataclass
class TrainConfig:
    """The recipe of §5: label smoothing, Adam(0.9, 0.98, 1e-9), Eq. 3 warmup."""

    label_smoothing: float = 0.1  # ε_ls
    schedule: str = "inverse_sqrt"  # inverse_sqrt (Eq. 3, the paper) | linear | cosine (decay to 0 at the budget's end)
    warmup_steps: int = 4000
    lr_scale: float = 1.0  # multiplies Eq. 3 (and the budgeted schedules' peak, which is Eq. 3's); the paper uses 1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    update_tokens: int = 0  # target tokens per update via gradient accumulation; 0: one batch per update
    clip_norm: float = 0.0  # 0: no clipping
    max_steps: int = 100_000
    max_epochs: int = 0  # 0: no limit
    max_minutes: float = 0.0  # 0: no limit
    seed: int = 1
    log_every: int = 50  # steps between metrics.csv lines
    eval_every: int = 500  # steps between validation runs
    checkpoint_every_steps: int = 1000
    checkpoint_every_minutes: float = 10.0  # the paper wrote one every 10 minutes
    keep_last: int = 5
    # > 0: the last ``keep_last`` checkpoints are spread evenly over this final fraction of the
    # budget (max_steps or max_minutes), so averaging them averages the end of training.
    tail_fraction: float = 0.0
    # > 0: keep an exponential moving average of the weights with this decay (training/ema.py),
    # validated beside them and offered to `aiayn average` as a candidate; 0: none.
    ema_decay: float = 0.0
    precision: str = "auto"  # auto (bf16 on CUDA; on CPU only where it measures faster) | fp32 | bf16
    compile: bool = False
    threads: int = 0  # CPU threads; 0: all cores of this process (or OMP_NUM_THREADS)
    max_bad_steps: int = 5  # consecutive NaN/inf losses before training stops


@dataclass
class DecodeConfig:
    """Decoding of §6.1: beam 4, GNMT length penalty α = 0.6, max length = source + 50."""

    beam_size: int = 4
    alpha: float = 0.6
    length_penalty: str = "gnmt"  # gnmt ((5+|Y|)/6)^α | fairseq |Y|^α | none
    max_len_offset: int = 50  # output length limit = source length + this
    min_len: int = 0
    nbest: int = 1
    stop: str = "bound"  # bound: no live beam can still win (tensor2tensor) | finished: beam_size ended (fairseq)


# The grid ``aiayn tune-decoding`` searches on the valid split by default (§6.1's beam and α
# "chosen after experimentation on the development set").
TUNE_BEAMS = (4, 6)
TUNE_ALPHAS = (0.6, 1.0, 1.4)
TUNE_PENALTIES = ("gnmt", "fairseq")
TUNE_SENTENCES = 500


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    preset: str = "base"
    recipe: str = "paper"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


SECTIONS = ("model", "data", "train", "decode")

ENUMS = {
    ("model", "arch"): ("transformer", "rnn", "conv"),
    ("model", "positional"): ("sinusoidal", "learned"),
    ("data", "sort"): ("length", "target"),
    ("data", "limit"): ("side", "total"),
    ("model", "norm"): ("post", "pre"),
    ("model", "init"): ("xavier", "normal"),
    ("model", "tie_embeddings"): ("all", "decoder", "none"),
    ("train", "precision"): ("auto", "fp32", "bf16"),
    ("train", "schedule"): ("inverse_sqrt", "linear", "cosine"),
    ("decode", "length_penalty"): ("gnmt", "fairseq", "none"),
}


# Upper bounds on every value that sizes memory or time, checked before anything is built: a run
# folder from elsewhere is untrusted input, and a config saying max_len = 200,000,000 would make a
# sinusoid table of hundreds of GB. Generous for real use: the paper's big model is far inside.
MAXIMA = {
    ("model", "vocab_size"): 1_000_000,
    ("model", "d_model"): 16_384,
    ("model", "d_ff"): 65_536,
    ("model", "n_heads"): 256,
    ("model", "d_k"): 4096,
    ("model", "d_v"): 4096,
    ("model", "n_layers"): 128,
    ("model", "n_decoder_layers"): 128,
    ("model", "rnn_hidden"): 16_384,
    ("model", "rnn_layers"): 128,
    ("model", "conv_channels"): 16_384,
    ("model", "conv_layers"): 128,
    ("model", "conv_kernel"): 63,
    ("model", "max_len"): 8192,  # positions, hence also the longest output and the decoding steps
    ("data", "batch_tokens"): 1_048_576,
    ("data", "max_len"): 8192,
    ("data", "valid_bleu_sentences"): 1_000_000,
    ("train", "warmup_steps"): 100_000_000,
    ("train", "max_steps"): 100_000_000,
    ("train", "max_epochs"): 1_000_000,
    ("train", "update_tokens"): 100_000_000,
    ("train", "keep_last"): 1000,
    ("train", "threads"): 1024,
    ("decode", "beam_size"): 64,
    ("decode", "nbest"): 64,
    ("decode", "min_len"): 1024,  # output subwords; also at most model.max_len (validate)
    ("decode", "max_len_offset"): 1024,  # the paper's is 50
}
# 8 GB of float32 weights, ten times the paper's big model (213 M): bounds the product of the
# sizes above, each of which alone still allows far more.
MAX_PARAMETERS = 2_000_000_000


def parameter_count(m: ModelConfig) -> int:
    """The model's weights as the config sizes them (biases and norms left out): what building it
    would allocate, known before it is built."""
    d, h = m.d_model, m.n_heads
    tables = {"all": 1, "decoder": 2, "none": 3}.get(m.tie_embeddings, 3) * m.vocab_size * d
    if m.arch == "rnn":  # models/rnn.py: an LSTM from i to o inputs holds 4o(i + o) weights
        w, layers = m.rnn_hidden, m.rnn_layers
        stack = (layers - 1) * 4 * w * 2 * w
        encoder = 2 * 4 * (w // 2) * (d + w // 2) + stack  # the bidirectional first layer, then the stack
        decoder = 4 * w * (2 * d + w) + stack  # input feeding: the first layer reads 2 × d_model
        return tables + encoder + decoder + w * w + 2 * w * d  # attention's W_a, W_c
    if m.arch == "conv":  # models/conv.py: each layer's kernel 2C × C × k, projections d_model ⇄ C
        c = m.conv_channels
        kernels = 2 * m.conv_layers * 2 * c * c * m.conv_kernel
        return tables + 2 * m.max_len * d + 4 * d * c + kernels + m.conv_layers * 2 * d * c
    attention = 2 * d * h * (m.head_dim_k + m.head_dim_v)  # W^Q, W^K (d_k wide), W^V and W^O (d_v wide)
    ffn = 2 * d * m.d_ff
    positions = 2 * m.max_len * d if m.positional == "learned" else 0
    return tables + positions + m.n_layers * (attention + ffn) + m.decoder_layers * (2 * attention + ffn)


def _section_fields(section: str) -> dict[str, dataclasses.Field]:
    cls = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "decode": DecodeConfig}[section]
    return {f.name: f for f in dataclasses.fields(cls)}


def resolve_key(key: str) -> tuple[str, str]:
    """``d_model`` -> (``model``, ``d_model``); ``train.max_minutes`` passes through."""
    if "." in key:
        section, name = key.split(".", 1)
        if section not in SECTIONS or name not in _section_fields(section):
            raise AiaynError(f"unknown config key '{key}' (sections: {', '.join(SECTIONS)})")
        return section, name
    owners = [s for s in SECTIONS if key in _section_fields(s)]
    if not owners:
        raise AiaynError(f"unknown config key '{key}'; run `aiayn model-info tiny` to see every key")
    if len(owners) > 1:
        raise AiaynError(f"config key '{key}' is ambiguous: write {' or '.join(f'{s}.{key}' for s in owners)}")
    return owners[0], key


def _coerce(section: str, name: str, value: Any) -> Any:
    """Cast a YAML-parsed value to the field's declared type, or fail naming the key."""
    f = _section_fields(section)[name]
    kind = str(f.type)
    key = f"{section}.{name}"
    if value is None:
        if "None" in kind:
            return None
        raise AiaynError(f"config key '{key}' cannot be empty")
    try:
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind.startswith("bool"):
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise AiaynError(f"config key '{key}' expects {kind}, got {value!r}") from None
    return value


def apply(cfg: Config, section: str, name: str, value: Any) -> None:
    setattr(getattr(cfg, section), name, _coerce(section, name, value))


def _apply_tree(cfg: Config, tree: dict[str, Any], origin: str) -> None:
    if "recipe" in tree:
        apply_recipe(cfg, tree["recipe"], origin)
    for section, values in tree.items():
        if section in ("preset", "recipe"):
            continue
        if section not in SECTIONS or not isinstance(values, dict):
            raise AiaynError(f"{origin}: unknown config section '{section}' (expected {', '.join(SECTIONS)})")
        for name, value in values.items():
            if name not in _section_fields(section):
                raise AiaynError(f"{origin}: unknown config key '{section}.{name}'")
            apply(cfg, section, name, value)


# Every (section, key) some recipe sets: switching recipes resets each of them.
RECIPE_KEYS = tuple(dict.fromkeys((s, k) for r in RECIPES.values() for s, values in r.items() for k in values))


def _preset_value(preset_name: str, section: str, key: str) -> Any:
    """The value the preset itself gives a key, before any recipe: its own, else the dataclass default."""
    own = PRESETS.get(preset_name, {}).get(section, {})
    return own[key] if key in own else _section_fields(section)[key].default


def apply_recipe(cfg: Config, name: Any, origin: str = "recipe") -> None:
    """Set every recipe key: the recipe's value where it names one, else the preset's."""
    if name not in RECIPES:
        raise AiaynError(f"{origin}: unknown recipe '{name}' (choose from {', '.join(RECIPES)})")
    cfg.recipe = name
    for section, key in RECIPE_KEYS:
        value = RECIPES[name].get(section, {}).get(key, _preset_value(cfg.preset, section, key))
        apply(cfg, section, key, value)


def preset(name: str) -> Config:
    """The preset's values, then its default recipe on top."""
    if name not in PRESETS:
        raise AiaynError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    cfg = Config(preset=name)
    tree = {k: v for k, v in PRESETS[name].items() if k != "recipe"}
    _apply_tree(cfg, tree, f"preset {name}")
    apply_recipe(cfg, PRESETS[name].get("recipe", "paper"), f"preset {name}")
    return cfg


def from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a config saved by ``Config.to_dict`` (checkpoints, run folders)."""
    cfg = Config(preset=tree.get("preset", "base"), recipe=tree.get("recipe", "paper"))
    _apply_tree(cfg, {k: v for k, v in tree.items() if k != "recipe"}, "saved config")
    return validate(cfg)


def apply_override(cfg: Config, item: str) -> None:
    """One ``key=value``; ``recipe=NAME`` applies a whole recipe."""
    key, _, raw = item.partition("=")
    if "=" in item and key.strip() == "recipe":
        apply_recipe(cfg, raw.strip())
    else:
        apply(cfg, *parse_override(item))


def parse_override(item: str) -> tuple[str, str, Any]:
    if "=" not in item:
        raise AiaynError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    section, name = resolve_key(key.strip())
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return section, name, value


def load_config(
    preset_name: str | None = None, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Preset, then YAML file, then ``key=value`` overrides; validated at the end."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError:
            raise AiaynError(f"{p}: config file not found") from None
        except yaml.YAMLError as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            where = f":{line + 1}" if line is not None else ""
            raise AiaynError(f"{p}{where}: not valid YAML; fix the syntax") from None
        if not isinstance(tree, dict):
            raise AiaynError(f"{p}: expected a mapping of sections (model:, train:, ...)")
    cfg = preset(preset_name or tree.get("preset") or "base")
    if tree:
        _apply_tree(cfg, tree, str(path))
    for item in overrides:
        apply_override(cfg, item)
    return validate(cfg)


def validate(cfg: Config) -> Config:
    """Reject impossible combinations with a message naming the key."""
    m = cfg.model
    for (section, name), allowed in ENUMS.items():
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise AiaynError(f"config key '{section}.{name}' must be one of {', '.join(allowed)}, got '{value}'")
    positive = [
        ("model", "vocab_size"),
        ("model", "d_model"),
        ("model", "d_ff"),
        ("model", "n_heads"),
        ("model", "n_layers"),
        ("model", "max_len"),
        ("model", "rnn_hidden"),
        ("model", "rnn_layers"),
        ("model", "conv_channels"),
        ("model", "conv_layers"),
        ("model", "conv_kernel"),
        ("data", "batch_tokens"),
        ("data", "max_len"),
        ("train", "warmup_steps"),
        ("train", "max_steps"),
        ("train", "keep_last"),
        ("decode", "beam_size"),
        ("decode", "nbest"),
    ]
    for section, name in positive:
        if getattr(getattr(cfg, section), name) <= 0:
            raise AiaynError(f"config key '{section}.{name}' must be positive")
    for name in ("d_k", "d_v", "n_decoder_layers"):
        value = getattr(m, name)
        if value is not None and value <= 0:
            raise AiaynError(f"config key 'model.{name}' must be positive")
    for (section, name), most in MAXIMA.items():
        value = getattr(getattr(cfg, section), name)
        if value is not None and value > most:
            raise AiaynError(f"config key '{section}.{name}' must be at most {most:,}, got {value:,}")
    if parameter_count(m) > MAX_PARAMETERS:
        raise AiaynError(
            f"config keys 'model.*' make {parameter_count(m):,} weights, over the {MAX_PARAMETERS:,} allowed"
        )
    if (m.d_k is None or m.d_v is None) and m.d_model % m.n_heads:
        raise AiaynError(
            f"config key 'model.d_model' ({m.d_model}) must be divisible by model.n_heads "
            f"({m.n_heads}), or set model.d_k and model.d_v"
        )
    if m.rnn_hidden % 2:
        raise AiaynError(
            f"config key 'model.rnn_hidden' ({m.rnn_hidden}) must be even: the first encoder layer "
            f"runs two directions of rnn_hidden / 2"
        )
    if m.conv_kernel % 2 == 0:
        raise AiaynError(
            f"config key 'model.conv_kernel' ({m.conv_kernel}) must be odd, so that the encoder's "
            f"convolutions keep the sentence length"
        )
    if not 0.0 <= m.dropout < 1.0:
        raise AiaynError(f"config key 'model.dropout' must be in [0, 1), got {m.dropout}")
    if not 0.0 <= cfg.train.label_smoothing < 1.0:
        raise AiaynError(f"config key 'train.label_smoothing' must be in [0, 1), got {cfg.train.label_smoothing}")
    if not m.init_std > 0 or not math.isfinite(m.init_std):
        raise AiaynError(f"config key 'model.init_std' must be a positive number, got {m.init_std}")
    for name in ("lr_scale", "adam_eps"):
        if not getattr(cfg.train, name) > 0 or not math.isfinite(getattr(cfg.train, name)):
            raise AiaynError(f"config key 'train.{name}' must be a positive number")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(cfg.train, name) < 1.0:
            raise AiaynError(f"config key 'train.{name}' must be in [0, 1)")
    for name in ("ema_decay", "tail_fraction"):
        value = getattr(cfg.train, name)
        if not 0.0 <= value < 1.0:
            raise AiaynError(f"config key 'train.{name}' must be in [0, 1), got {value}")
    for name in (
        "max_minutes",
        "clip_norm",
        "weight_decay",
        "checkpoint_every_minutes",
        "update_tokens",
        "max_epochs",
        "threads",
        "checkpoint_every_steps",
    ):
        if getattr(cfg.train, name) < 0:
            raise AiaynError(f"config key 'train.{name}' cannot be negative")
    if cfg.decode.nbest > cfg.decode.beam_size:
        raise AiaynError("config key 'decode.nbest' cannot exceed decode.beam_size")
    if cfg.decode.alpha < 0 or cfg.decode.min_len < 0 or cfg.decode.max_len_offset < 0:
        raise AiaynError("config keys 'decode.alpha', 'decode.min_len', 'decode.max_len_offset' cannot be negative")
    if not math.isfinite(cfg.decode.alpha):
        raise AiaynError(f"config key 'decode.alpha' must be a finite number, got {cfg.decode.alpha}")
    for name in ("min_len", "max_len_offset"):  # no output is longer than the model's positions
        value = getattr(cfg.decode, name)
        if value > m.max_len:
            raise AiaynError(f"config key 'decode.{name}' ({value:,}) cannot exceed model.max_len ({m.max_len:,})")
    return cfg
