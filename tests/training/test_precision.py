"""precision.py: the start-of-run precision probe."""

from __future__ import annotations

import torch

from aiayn.config import preset
from aiayn.models.transformer import Transformer
from aiayn.training.precision import choose_precision


def test_precision_probe_leaves_the_random_stream_alone():
    """choose_precision times real steps with random inputs; the run's dropout stream must not move."""
    model = Transformer(preset("tiny").model)
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    choose_precision("auto", torch.device("cpu"), model, 256, log=lambda _: None)
    assert torch.equal(torch.rand(4), expected)
