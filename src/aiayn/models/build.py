"""The one place a network is built from its config: ``model.arch`` picks the class.

Every network offers the same four methods (``encode``, ``init_cache``, ``decode``, ``forward``;
docs/architecture.md), so training, search, translation and evaluation never ask which one they drive.
"""

from __future__ import annotations

from torch import nn

from aiayn.config import ModelConfig
from aiayn.models.conv import ConvSeq2Seq
from aiayn.models.rnn import RecurrentSeq2Seq
from aiayn.models.transformer import Transformer

ARCHS: dict[str, type[nn.Module]] = {"transformer": Transformer, "rnn": RecurrentSeq2Seq, "conv": ConvSeq2Seq}


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network ``cfg.arch`` names (config validation has checked the name)."""
    return ARCHS[cfg.arch](cfg)


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout of ``model`` to probability ``p``, in place (``train.dropout_from_epoch``): the
    ``nn.Dropout`` modules, and the dropout ``nn.LSTM`` applies between its layers."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        elif isinstance(module, nn.RNNBase) and module.num_layers > 1:
            module.dropout = p
