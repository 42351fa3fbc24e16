"""The settings themselves: nested dataclasses, one per stage, with the paper's names.

Names spell the paper out (Table 3): ``n_layers, d_model, d_ff, n_heads, d_k, d_v,
dropout, label_smoothing, warmup_steps``. Defaults are the paper's base model; presets and
recipes (``presets.py``) change them, ``config/load.py`` reads them, ``config/bounds.py`` checks them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
    # > 0: no dropout before this epoch (counted from 0), model.dropout from it on ("late dropout",
    # Liu et al. 2023): a box of a few epochs is underfit and dropout only slows it; longer runs
    # start to overfit, and dropout helps them from there.
    dropout_from_epoch: int = 0
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


def section_fields(section: str) -> dict[str, dataclasses.Field]:
    cls = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "decode": DecodeConfig}[section]
    return {f.name: f for f in dataclasses.fields(cls)}
