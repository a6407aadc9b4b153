"""AugMix's Jensen-Shannon consistency loss (Hendrycks et al. 2020, eq. 2): the predictions
for the clean image and its AugMix views are pulled towards their mean, so the net answers
the same whatever the (corruption-like) changes. The training loss is the clean view's
cross-entropy plus `optim.jsd_weight` (the paper: 12) times this."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def jensen_shannon(logits: torch.Tensor) -> torch.Tensor:
    """JS(p_1, …, p_k) = mean_i KL(p_i ‖ M), M the mean of the p_i, averaged over the batch,
    for logits (k views, B, classes). The reference clamps M at 1e-7 before its log; the
    log-sum-exp of the log-probabilities gives log M without that bias (exactly 0 for equal views)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_m = torch.logsumexp(log_p, dim=0) - math.log(len(log_p))
    return (log_p.exp() * (log_p - log_m)).sum(-1).mean()
