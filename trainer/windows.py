"""The paper's front end for evaluation: a clip cut into 96-frame log-mel windows, and clip scores from them.

A window is ``segment_frames`` (96) log-mel frames of a preset's ``MelConfig``, i.e. ``seg =
mel.segment_samples(96)`` samples plus ``mel.context`` samples of context on each side (zeros only beyond the
clip's ends). A clip of ``n`` valid samples gets ``k = max(1, ceil(n / seg))`` windows whose starts are spread
evenly over ``[0, max(n - seg, 0)]`` (rounded half up): they cover the whole clip, never reach past it when ``n >=
seg``, and a clip shorter than a window gives one zero-padded window. Padding is never a window, so a long clip
elsewhere in a store changes nothing about the other clips. A clip's score is the mean of its windows'
probabilities (softmax single-label, sigmoid multi-label).

Cost. All windows of a store are listed as (clip, start) and read in batches of at most ``window_batch`` windows
(a clip's windows may span batches); memory is that budget plus one float32 h per window. Used by
``trainer.probe``, ``trainer.invariance`` and ``trainer.hear``.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from augcl import PRESETS
from augcl.transforms import LogMel

from .data import PackedStore
from .pack import INT16_SCALE


class Windows(nn.Module):
    """The paper's front end: ``(B, segment + 2 * context)`` samples -> ``(B, 1, n_mels, frames)`` log-mel."""

    def __init__(self, preset: str, sample_rate: int):
        super().__init__()
        config = PRESETS[preset](sample_rate)
        self.mel = LogMel(config.mel, sample_rate)
        self.frames = config.segment_frames
        self.segment = config.mel.segment_samples(self.frames)  # samples a window covers
        self.context = self.mel.context                          # extra samples each side
        self.width = self.segment + 2 * self.context

    def forward(self, wave: Tensor) -> Tensor:
        if wave.shape[-1] != self.width:
            raise ValueError(f"windows must be {self.width} samples wide, got {wave.shape[-1]}")
        return self.mel.from_context(wave).unsqueeze(1)


def window_starts(lengths: np.ndarray, segment: int) -> tuple[np.ndarray, np.ndarray]:
    """Every window of every clip: ``(clip index, start sample)``, both ``(W,)`` int64, clip by clip.

    ``k = max(1, ceil(n / segment))`` windows per clip of ``n`` samples, starts evenly spread over
    ``[0, max(n - segment, 0)]`` and rounded half up.
    """
    n = np.asarray(lengths, np.int64)
    k = np.maximum(1, -(-n // segment))
    clip = np.repeat(np.arange(len(n)), k)
    j = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)  # rank of the window within its clip
    span, kc = np.maximum(n - segment, 0)[clip], k[clip]
    start = np.where(kc > 1, (2 * j * span + (kc - 1)) // np.maximum(2 * (kc - 1), 1), 0)
    return clip, start.astype(np.int64)


def read_windows(store: PackedStore, clips: np.ndarray, starts: np.ndarray, gains: np.ndarray,
                 windows: Windows) -> Tensor:
    """Windows ``(B, width)`` float32 of the store's clips at ``starts`` (window sample 0 of the segment), with
    ``context`` samples each side, zeros beyond the clip's ends, scaled by each clip's gain."""
    c, width = windows.context, windows.width
    out = np.zeros((len(clips), width), np.float32)
    for row, (i, s) in enumerate(zip(clips.tolist(), starts.tolist(), strict=True)):
        x = store.clip(i)
        a, b = max(s - c, 0), min(s - c + width, len(x))
        if b > a:
            out[row, a - (s - c):b - (s - c)] = x[a:b]
    scale = (gains[clips] / INT16_SCALE).astype(np.float32)
    return torch.from_numpy(out * scale[:, None])


def tiles(store: PackedStore, windows: Windows, clips: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The windows of ``clips`` (default all) of a store, as :func:`window_starts` (clip indices into the store)."""
    clips = np.arange(len(store)) if clips is None else np.asarray(clips, np.int64)
    which, starts = window_starts(store.length[clips], windows.segment)
    return clips[which], starts


def window_batches(store, clip, start, gains, windows, window_batch: int, device) -> Iterable[Tensor]:
    """Log-mels of the listed windows, at most ``window_batch`` at a time."""
    for a in range(0, len(clip), window_batch):
        wave = read_windows(store, clip[a:a + window_batch], start[a:a + window_batch], gains, windows)
        yield windows(wave.to(device))


@torch.no_grad()
def window_features(encoder: nn.Module, batches: Iterable[Tensor], desc: str = "features") -> Tensor:
    """h of every window, ``(W, out_dim)`` float32 on the CPU (eval mode)."""
    encoder.eval()
    return torch.cat([encoder(x).float().cpu() for x in tqdm(batches, desc=desc, leave=False)])


def clip_scores(window_probs: Tensor, clip: np.ndarray, n_clips: int) -> Tensor:
    """Mean of each clip's window probabilities: ``(W, C)`` and the windows' clip indices -> ``(n_clips, C)``."""
    index = torch.from_numpy(np.asarray(clip, np.int64))
    total = torch.zeros(n_clips, window_probs.shape[1], dtype=window_probs.dtype).index_add_(0, index, window_probs)
    count = torch.bincount(index, minlength=n_clips).clamp_min(1).to(window_probs.dtype)
    return total / count[:, None]


@torch.no_grad()
def recompute_batchnorm(encoder: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """Re-estimate every BatchNorm layer's running mean and variance on ``batches`` (a cumulative average over
    the batches), then put the encoder in eval mode. Only the BatchNorm layers run in train mode: dropout and
    stochastic depth stay off, so the statistics are those of the network used at evaluation."""
    bns = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    encoder.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for x in batches:
        encoder(x)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    return encoder.eval()


def class_probs(logits: Tensor, multi: bool) -> Tensor:
    """Class probabilities from logits: softmax (single-label) or sigmoid per class (multi-label)."""
    return torch.sigmoid(logits) if multi else torch.softmax(logits, -1)
