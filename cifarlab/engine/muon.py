"""Muon: momentum, then an orthogonalized update (Jordan et al. 2024), for conv filters.

Hand-written because `torch.optim.Muon` accepts 2-D parameters only; here a filter bank
(out, in, kh, kw) is orthogonalized as an (out, in·kh·kw) matrix. As in airbench94_muon, the
weights are renormalized to norm sqrt(out) before each update, so their scale cannot drift
and the lr alone sets the relative step size (no weight decay needed).
"""

from __future__ import annotations

import torch


def orthogonalize(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U·Vᵀ of g = U·S·Vᵀ by a quintic Newton–Schulz iteration whose
    coefficients favour speed over exact convergence (singular values end in ~[0.5, 1.5])."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    x = x / (x.norm() + eps)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.02, momentum: float = 0.6, nesterov: bool = True, ns_steps: int = 3):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            momentum = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buffer = self.state[p].get("momentum_buffer")
                if buffer is None:
                    buffer = self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
                buffer.mul_(momentum).add_(p.grad)
                g = p.grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer
                p.mul_(len(p) ** 0.5 / p.norm())
                update = orthogonalize(g.reshape(len(g), -1), group["ns_steps"])
                p.add_(update.reshape(p.shape), alpha=-group["lr"])
