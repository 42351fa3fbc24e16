"""An exponential moving average of the weights (Polyak averaging), kept beside training.

Checkpoint averaging (§6.1) averages a few snapshots written minutes apart; this average takes
every update into account, at the cost of one copy of the weights and one ``lerp`` an update:

    ema ← d_t · ema + (1 − d_t) · θ,    d_t = min(decay, (1 + t) / (10 + t))

where t is the update count. The ramp d_t (TensorFlow's ``ExponentialMovingAverage`` with
``num_updates``) keeps the starting weights from lingering in the average of a short run:
0.998^1500 would still give them 5 % of the weight after 1,500 updates.

The average never feeds back into training: it is validated beside the trained weights, saved in
every checkpoint under ``"ema"`` as a state dict of the same keys, and ``aiayn average`` offers it as
one more candidate, kept only where it scores better on valid.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def ema_decay_at(decay: float, step: int) -> float:
    """d_t: the configured decay, ramped up over the first updates."""
    return min(decay, (1 + step) / (10 + step))


class WeightEMA:
    """The moving average of a model's parameters (each tied matrix once); buffers are not averaged."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.names = [name for name, _ in model.named_parameters()]
        self.shadow = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards the weights after update ``step`` (counted from 1)."""
        torch._foreach_lerp_(
            self.shadow, [p.detach() for p in model.parameters()], 1.0 - ema_decay_at(self.decay, step)
        )

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's own state dict with every parameter replaced by its average: tied entries
        (one tensor under several keys) all get that tensor's average; buffers are the model's."""
        averaged = {id(p): s for p, s in zip(model.parameters(), self.shadow)}
        return {k: averaged.get(id(v), v).detach().clone() for k, v in model.state_dict(keep_vars=True).items()}

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Restore the average from ``state_dict``'s output (a resumed run)."""
        missing = [name for name in self.names if name not in state]
        if missing:
            raise KeyError(f"the saved moving average lacks {', '.join(missing[:3])}")
        for shadow, name in zip(self.shadow, self.names):
            shadow.copy_(state[name])

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Run the model with the averaged weights inside the block; its own come back after."""
        params = list(model.parameters())
        kept = [p.detach().clone() for p in params]
        with torch.no_grad():
            torch._foreach_copy_(params, self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, kept)
