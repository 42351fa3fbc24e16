"""Presets and recipes as data: what ``config.preset`` and ``recipe=NAME`` apply.

A preset is a model size with the training settings that suit it; a recipe is a named bundle of
training settings applied on top (``small`` trains with ``budget``, every other preset with
``paper``). Plain dictionaries of section -> key -> value, checked by ``config`` like any YAML
file, so this module imports nothing of aiayn's.
"""

from __future__ import annotations

from typing import Any

# Recipes: named bundles of training settings, applied on top of a preset (``recipe=paper``).
# ``paper`` is §5 as written: Eq. 3 with the preset's warmup and scale, batches sorted by both
# lengths, checkpoints at the preset's cadence, and tensor2tensor's Xavier initialisation (the
# paper names none); it is the default of ``base``, ``big`` and ``tiny``. ``budget`` is for runs
# boxed into minutes or updates, and the default of ``small``. Each of its changes was measured
# per update against a Hugging Face Marian of the same shape (docs/quality.md):
# - N(0, 0.02) initial weights, as Marian, BERT and GPT-2: sublayers start small against the
#   residual stream, so each Adam step moves them relatively more;
# - batches sorted by target length alone, sources of any length within one: batches of
#   narrow (target, source) slices learned less per update;
# - batches cut by the padding of both sides together (rows × (S + T) ≤ 2 × batch_tokens): with
#   sources of any length, cutting by the longer side alone gave 12 % fewer target tokens an update;
# - Eq. 3 with a 300-update warmup to a peak of 1e-3 at d_model 256 (Eq. 3's own formula);
# - no dropout for the first 4 epochs, the preset's from there ("late dropout"): a box of a few
#   epochs is underfit and dropout only slows it (0.09–0.14 nats at 500–1,500 updates on both
#   Bible directions), while a longer run without it starts to overfit after about six;
# - the checkpoints to average written in the last 10 % of the budget, and no others but one
#   every 10 minutes for resuming.
# A key a recipe does not name takes the preset's value, so switching recipes never leaves
# another recipe's settings behind.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {"model": dict(init="xavier"), "train": dict(schedule="inverse_sqrt", tail_fraction=0.0)},
    "budget": {
        "model": dict(init="normal"),
        "data": dict(sort="target", limit="total"),
        "train": dict(
            schedule="inverse_sqrt",
            tail_fraction=0.1,
            warmup_steps=300,
            lr_scale=0.27713,
            checkpoint_every_steps=0,
            dropout_from_epoch=4,
        ),
    },
}

# ``small``'s sizes for the two baselines (model.arch=rnn | conv), chosen so that each has about the
# Transformer's 7.58 M parameters at vocabulary 8,000 (tests/models/test_rnn.py and test_conv.py hold
# them within ±15 %): 3 + 3 LSTM layers of 320 cells make 7.21 M (−5 %); 5 + 5 ConvS2S layers of 256
# channels, kernel 3, 7.43 M (−2 %). Their embeddings are d_model = 256 wide like the Transformer's.
SMALL_BASELINES = dict(rnn_hidden=320, rnn_layers=3, conv_channels=256, conv_layers=5, conv_kernel=3)

# Presets as data. ``base`` and ``big`` are the paper's; ``small`` trains on a CPU in
# minutes; ``tiny`` exists for tests. Small data wants a short warmup: the Bible corpus
# gives ~1,000–2,000 updates in 20 CPU minutes, so the paper's 4,000 warmup steps would never
# end. ``recipe`` names the preset's default recipe (``paper`` when absent); the preset's own
# train values are what ``recipe=paper`` runs with.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "model": dict(
            vocab_size=64,
            d_model=32,
            d_ff=64,
            n_heads=4,
            n_layers=2,
            dropout=0.0,
            max_len=256,
            rnn_hidden=32,
            rnn_layers=2,
            conv_channels=32,
            conv_layers=2,
        ),
        "data": dict(batch_tokens=512, max_len=64),
        "train": dict(
            warmup_steps=100,
            lr_scale=1.0,
            max_steps=1000,
            log_every=10,
            eval_every=100,
            checkpoint_every_steps=100,
            checkpoint_every_minutes=0.0,
        ),
    },
    "small": {
        "recipe": "budget",
        "model": dict(
            vocab_size=8000,
            d_model=256,
            d_ff=1024,
            n_heads=4,
            n_layers=3,
            dropout=0.1,
            **SMALL_BASELINES,
        ),
        "data": dict(batch_tokens=3000),
        "train": dict(
            warmup_steps=400, lr_scale=0.4, eval_every=500, checkpoint_every_steps=200, checkpoint_every_minutes=10.0
        ),
    },
    "base": {},
    "big": {
        "model": dict(d_model=1024, d_ff=4096, n_heads=16, dropout=0.3),
        "train": dict(max_steps=300_000),
    },
}
