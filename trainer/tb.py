"""TensorBoard event files beside a run's JSONL and PNGs, in ``OUT/tensorboard`` (``tensorboard --logdir OUT``).

Optional: it needs the ``tensorboard`` package (``pip install 'augcl[tensorboard]'``). Without it :func:`open_writer`
says in one line that TensorBoard logging is off and how to turn it on, and returns None; every caller treats None
as "do not log". Cost: a scalar is a small protobuf appended to a buffer that a background thread writes out; the
images are drawn once, at the start of a run.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch

SUBDIR = "tensorboard"
INSTALL_HINT = "pip install 'augcl[tensorboard]'"


def open_writer(out: Path, purge_step: Optional[int] = None):
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``out/tensorboard``, or None (one line said why) when the
    ``tensorboard`` package is missing. ``purge_step``: the first step this writer logs after a resume; TensorBoard
    discards the events at or after it that earlier event files hold (steps redone since the checkpoint)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print(f"TensorBoard logging is off: the tensorboard package is not installed ({INSTALL_HINT} turns it on)",
              file=sys.stderr)
        return None
    return SummaryWriter(log_dir=str(Path(out) / SUBDIR), purge_step=purge_step)


def log_scalars(writer, prefix: str, values: dict, step: int) -> None:
    """``values`` (name -> number) as scalars ``prefix/name`` at ``step``."""
    for name, value in values.items():
        writer.add_scalar(f"{prefix}/{name}", value, step)


def mel_images(x: torch.Tensor, n: int = 4) -> torch.Tensor:
    """The first ``n`` log-mels of ``x`` ``(B, 1, n_mels, frames)`` as images ``(n, 1, n_mels, frames)`` in [0, 1]:
    each normalised by its own min and max (a constant one is 0), the mel axis flipped so that low frequencies are at
    the bottom (image row 0 is the top)."""
    x = x[:n].detach().float().cpu()
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    span = x.amax(dim=(1, 2, 3), keepdim=True) - lo
    x = torch.where(span > 0, (x - lo) / span.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))
    return x.flip(-2)


def log_pairs(writer, anchor: torch.Tensor, positive: torch.Tensor, step: int = 0, n: int = 4) -> None:
    """A few anchor and positive log-mels of a batch: ``pairs/anchor`` and ``pairs/positive``, row i of one beside
    row i of the other."""
    writer.add_images("pairs/anchor", mel_images(anchor, n), step, dataformats="NCHW")
    writer.add_images("pairs/positive", mel_images(positive, n), step, dataformats="NCHW")
