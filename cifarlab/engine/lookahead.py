"""airbench's lookahead: every few steps, pull the weights toward a slow moving average and
copy the average back into the net, with an averaging strength that grows through training
(move fast early, average strongly at the end)."""

from __future__ import annotations

import torch
from torch import nn


class Lookahead:
    def __init__(self, model: nn.Module, every: int, decay: float, power: float, start_step: int, total_steps: int):
        self.model, self.every, self.decay, self.power = model, every, decay, power
        self.start_step, self.total_steps = start_step, total_steps
        self.average: dict[str, torch.Tensor] | None = None

    def _floating_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Call after optimizer step number `step` (1-based)."""
        if step < self.start_step or step % self.every:
            return
        state = self._floating_state()
        if self.average is None:
            self.average = {k: v.clone() for k, v in state.items()}
            return
        rho = self.decay**self.every * (step / self.total_steps) ** self.power
        for key, value in state.items():
            self.average[key].lerp_(value, 1 - rho)
            value.copy_(self.average[key])

    @torch.no_grad()
    def sync(self) -> None:
        """Put the average into the net (at epoch ends, so evaluation sees it)."""
        if self.average is not None:
            for key, value in self._floating_state().items():
                value.copy_(self.average[key])

    def state_dict(self) -> dict:
        return {"average": self.average}

    def load_state_dict(self, state: dict) -> None:
        self.average = state["average"]
