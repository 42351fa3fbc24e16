"""What a config may hold: the choices of each enumerated key, upper bounds on every size, and
the combinations that cannot be built. Checked before anything is allocated, on every config
aiayn reads: presets, YAML files, overrides and the configs saved in checkpoints and run folders.
"""

from __future__ import annotations

import math

from aiayn.config.schema import AiaynError, Config, ModelConfig

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
    ("train", "dropout_from_epoch"): 1_000_000,
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
        "dropout_from_epoch",
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
