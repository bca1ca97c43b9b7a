"""Exponential moving average of model weights (the ``ema_pytorch`` schedule the reference uses).

- before ``start`` (``update_after_step``) the EMA copies the weights;
- afterwards every ``every`` steps: ``ema = d * ema + (1 - d) * w`` with the warm-up decay
  ``d = min(decay, 1 - (1 + (step - start - 1)) ** -power)`` (``power = 2/3``; ``warmup=False`` uses
  ``decay`` throughout);
- buffers (BatchNorm statistics, counters) are copied.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


class EMA:
    """EMA of ``model.state_dict()`` (floating tensors averaged, the rest copied)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, every: int = 10, start: int = 100,
                 warmup: bool = True, power: float = 2.0 / 3.0):
        if not 0.0 <= decay <= 1.0 or every < 1 or start < 0:
            raise ValueError(f"EMA: expected 0 <= decay <= 1, every >= 1, start >= 0, found {decay}, {every}, {start}")
        self.decay, self.every, self.start, self.warmup, self.power = decay, every, start, warmup, power
        self.param_names = {n for n, p in model.named_parameters()}
        self.state: dict[str, Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self, step: int) -> float:
        if not self.warmup:
            return self.decay
        epoch = max(step - self.start - 1, 0)
        return float(min(self.decay, max(0.0, 1.0 - (1.0 + epoch) ** -self.power)))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after optimiser step number ``step`` (1-based)."""
        sd = model.state_dict()
        if step <= self.start:
            for k, v in sd.items():
                self.state[k].copy_(v)
            return
        if step % self.every:
            return
        d = self.current_decay(step)
        for k, v in sd.items():
            if k in self.param_names and v.is_floating_point():
                self.state[k].mul_(d).add_(v.detach().to(self.state[k].dtype), alpha=1.0 - d)
            else:
                self.state[k].copy_(v)

    def state_dict(self) -> dict[str, Tensor]:
        return self.state

    def load_state_dict(self, sd: dict[str, Tensor]) -> None:
        missing = sorted(set(self.state) - set(sd))
        if missing:
            raise ValueError(f"EMA state: missing keys {missing[:5]}")
        for k in self.state:
            self.state[k].copy_(sd[k])
