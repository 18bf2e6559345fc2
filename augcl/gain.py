"""Level: a per-example gain in dB (:class:`Gain`) and per-row loudness normalisation (:func:`normalize_level`).

One pass over the batch each; no host sync.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .core import Params, Transform, _coin, _uniform, draw_device, valid_mask, work_dtype


#: :func:`normalize_level`'s default targets in dBFS, by mode (the trainer's per-clip gains use the same)
LEVEL_TARGET_DB = {"rms": -20.0, "peak": -1.0}


def gain(wave: Tensor, gain_db: Tensor) -> Tensor:
    """Each row of ``wave`` ``(B, T)`` times ``10 ** (gain_db[b] / 20)``; ``gain_db``: ``(B,)`` in dB. One pass."""
    dtype = work_dtype(wave.dtype)
    scale = torch.pow(10.0, gain_db.to(device=wave.device, dtype=dtype).reshape(-1, 1) / 20.0)
    return wave.to(dtype) * scale


def normalize_level(wave: Tensor, lengths: Optional[Tensor] = None, mode: str = "rms",
                    target_db: Optional[float] = None, eps: float = 1e-10) -> Tensor:
    """Per-row loudness normalisation over each row's valid samples (the first ``lengths[b]``; default all).

    ``mode="rms"``: the RMS over the valid samples becomes ``target_db`` dBFS (default -20); ``"peak"``: the
    largest ``|x|`` there becomes ``10 ** (target_db / 20)`` (default -1 dBFS); ``"none"``: ``wave`` unchanged.
    Samples past a row's length come out zero. Rows whose level is at most ``eps`` (silence) are left unscaled,
    so they stay finite (zero stays zero). Cost: two passes over ``(B, T)``, no host sync.
    """
    if mode not in ("rms", "peak", "none"):
        raise ValueError(f"mode must be 'rms', 'peak' or 'none', got {mode!r}")
    if mode == "none":
        return wave
    if target_db is None:
        target_db = LEVEL_TARGET_DB[mode]
    dtype = work_dtype(wave.dtype)
    x = wave.to(dtype)
    if lengths is not None:
        x = x * valid_mask(lengths.to(x.device), x.shape[-1]).to(dtype)
    if mode == "rms":
        count = (lengths.to(device=x.device, dtype=dtype) if lengths is not None
                 else torch.full((x.shape[0],), x.shape[-1], device=x.device, dtype=dtype)).reshape(-1, 1)
        level = torch.linalg.vector_norm(x, dim=-1, keepdim=True) / count.clamp_min(1).sqrt()
    else:
        level = x.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(level > eps, 10.0 ** (target_db / 20.0) / level.clamp_min(eps), 1.0)
    return x * scale


@dataclass(frozen=True)
class GainConfig:
    """Random gain of the segment, per example: with probability ``p``, ``gain_db`` uniform in the range (dB).

    Off in every preset (the paper has no gain); ``BranchConfig(gain=GainConfig())`` turns it on.
    """

    p: float = 1.0
    gain_db: tuple = (-6.0, 6.0)



class Gain(Transform):
    """Per-example random gain: with probability ``p``, example ``b`` (all its channels) times ``10 ** (g / 20)``,
    ``g`` uniform in ``gain_db`` (dB). Params: ``gain_db`` (drawn for every example), ``gain_applied``."""

    param_keys = ("gain_applied", "gain_db")

    def __init__(self, gain_db: tuple = (-6.0, 6.0), *, p: float = 0.5, mode: str = "per_example",
                 sample_rate: Optional[int] = None, output_type: str = "tensor"):
        super().__init__(p, mode, sample_rate, output_type)
        if len(gain_db) != 2 or not gain_db[0] <= gain_db[1]:
            raise ValueError(f"gain_db must be a (low, high) range in dB with low <= high, got {gain_db!r}")
        self.config = GainConfig(p=self.p, gain_db=tuple(float(g) for g in gain_db))

    @classmethod
    def from_config(cls, config: GainConfig) -> "Gain":
        """The block a :class:`GainConfig` describes (PairAugmenter's)."""
        return cls(config.gain_db, p=config.p)

    def sample(self, batch: int, length: int, generator=None, device=None, lengths: Optional[Tensor] = None) -> Params:
        device = draw_device(generator, device)
        return {
            "gain_applied": _coin(self.p, batch, generator, device),
            "gain_db": _uniform(batch, *self.config.gain_db, generator, device),
        }

    def applied_db(self, params: Params) -> Tensor:
        """``(B,)`` gain in dB each row gets: ``gain_db`` where applied, 0 elsewhere."""
        return params["gain_db"] * params["gain_applied"].to(params["gain_db"].dtype)

    def factor(self, params: Params) -> Tensor:
        """``(B, 1)`` linear factor each row is multiplied by."""
        return torch.pow(10.0, self.applied_db(params).reshape(-1, 1) / 20.0)

    def apply(self, x: Tensor, params: Params) -> Tensor:
        """Mono rows ``x`` ``(B, T)`` times their gains."""
        return gain(x, self.applied_db(params))

    def transform(self, x: Tensor, params: Params, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        return x * self.factor(params).to(x.dtype).unsqueeze(-1), lengths

    def extra_repr(self) -> str:
        return f"gain_db={self.config.gain_db}, " + super().extra_repr()
