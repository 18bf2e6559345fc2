"""The contrastive loss: cross entropy over the anchor x positive similarity matrix, the diagonal as targets.

Row i holds s(z_i, z'_j) for every positive j of the batch; the positives of the other clips are the negatives.
This is COLA's one-way loss (anchors classify positives). Under DDP, ``gather_negatives`` adds every rank's
positives as negatives (the gather is differentiable, so each rank's positives get gradients from all anchors).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import Bilinear


def info_nce(logits: Tensor, offset: int = 0) -> Tensor:
    """Mean cross entropy of ``logits`` ``(B, N)`` with targets ``offset + arange(B)`` (computed in float32, under
    autocast too)."""
    if logits.ndim != 2 or logits.shape[1] < logits.shape[0] + offset:
        raise ValueError(f"logits must be (B, N) with N >= B + offset, got {tuple(logits.shape)}, offset {offset}")
    targets = torch.arange(logits.shape[0], device=logits.device) + offset
    device = logits.device.type
    with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext():
        return F.cross_entropy(logits.float(), targets)


def _gather(x: Tensor) -> tuple[Tensor, int]:
    """Every rank's ``x`` concatenated (gradients flow back to each rank), and this rank's offset in it."""
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x.contiguous())
    return torch.cat(parts), dist.get_rank() * x.shape[0]


def contrastive_loss(similarity: Bilinear, anchor: Tensor, positive: Tensor, gather_negatives: bool = False
                     ) -> tuple[Tensor, Tensor]:
    """Loss and the top-1 accuracy of picking the right positive (a cheap training signal to log)."""
    offset = 0
    if gather_negatives:
        positive, offset = _gather(positive)
    logits = similarity(anchor, positive)
    loss = info_nce(logits, offset)
    with torch.no_grad():
        acc = (logits.argmax(1) == torch.arange(anchor.shape[0], device=logits.device) + offset).float().mean()
    return loss, acc
