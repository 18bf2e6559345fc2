"""SpecAugment: time and frequency masks on spectrograms, per example, from ``arange`` comparisons (no loop).

Cost: one pass over the spectrogram per axis masked (plus one for the mean fill); no host sync.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from . import kernels
from .core import Params, Transform, _coin, _randint_below, draw_device


def mask_along_axis(spec: Tensor, start: Tensor, width: Tensor, axis: int, fill: Union[float, Tensor] = 0.0) -> Tensor:
    """Set ``spec[b, ..., start[b, j] : start[b, j] + width[b, j], ...]`` (along ``axis``) to ``fill``.

    ``spec``: ``(B, ...)``; ``start``, ``width``: integer ``(B,)`` or ``(B, n_masks)``; ``fill``: scalar or
    per-example ``(B,)``. Masks are built from ``arange`` comparisons (no loop); not in place.
    """
    return torch.where(_hits(spec, start, width, axis), _fill(spec, fill), spec)


def _hits(spec: Tensor, start: Tensor, width: Tensor, axis: int) -> Tensor:
    """Bool ``(B, 1, ..., size, ..., 1)``: where the masks ``[start, start + width)`` along ``axis`` cover ``spec``."""
    B = spec.shape[0]
    axis = axis % spec.ndim
    size = spec.shape[axis]
    start = start.to(spec.device).reshape(B, -1, 1)
    width = width.to(spec.device).reshape(B, -1, 1)
    pos = torch.arange(size, device=spec.device)
    hit = ((pos >= start) & (pos < start + width)).any(dim=1)  # (B, size)
    shape = [B] + [1] * (spec.ndim - 1)
    shape[axis] = size
    return hit.reshape(shape)


def _fill(spec: Tensor, fill: Union[float, Tensor]) -> Union[float, Tensor]:
    if isinstance(fill, Tensor):
        return fill.to(device=spec.device, dtype=spec.dtype).reshape([spec.shape[0]] + [1] * (spec.ndim - 1))
    return float(fill)  # a Python number goes to the kernel as a scalar (a tensor of it would be a host-to-device copy)


def time_mask(spec: Tensor, start: Tensor, width: Tensor, fill: Union[float, Tensor] = 0.0) -> Tensor:
    """Time masks on the last axis of a ``(B, ..., n_mels, frames)`` spectrogram."""
    return mask_along_axis(spec, start, width, -1, fill)


def freq_mask(spec: Tensor, start: Tensor, width: Tensor, fill: Union[float, Tensor] = 0.0) -> Tensor:
    """Frequency masks on the mel axis (second to last) of a ``(B, ..., n_mels, frames)`` spectrogram."""
    return mask_along_axis(spec, start, width, -2, fill)


@dataclass(frozen=True)
class MaskConfig:
    """SpecAugment time and frequency masks on the log-mel, per example.

    Each of the ``n_time_masks`` masks has a width uniform in ``[0, max_time_frames]`` and a uniform start;
    likewise on the mel axis. ``fill="mean"``: the example's mean log-mel value (a mask then carries no level
    cue); a number: that value.
    """

    n_time_masks: int = 2
    max_time_frames: int = 12
    n_freq_masks: int = 2
    max_freq_bins: int = 8
    fill: Union[str, float] = "mean"



class SpecAugment(Transform):
    """SpecAugment's time and frequency masks on ``(B, C, n_mels, frames)`` or ``(B, n_mels, frames)``, per example.

    Each of the ``n_time_masks`` masks has a width uniform in ``[0, max_time_frames]`` and a uniform start; likewise
    on the mel axis. Channels of an example share its masks. ``fill="mean"``: the example's mean value (over its valid
    frames; a mask then carries no level cue); a number: that value. ``lengths`` ``(B,)``: valid frames per example
    (:meth:`augcl.mel.LogMel.frames`): time masks are drawn inside them and no mask touches the padding. ``p``: the
    probability that an example is masked. Params: ``time_mask_width``, ``time_mask_start``, ``freq_mask_width``,
    ``freq_mask_start`` ``(B, n)``, and ``mask_applied`` when ``p < 1``.
    """

    event_dims = 2

    def __init__(self, n_time_masks: int = 2, max_time_frames: int = 12, n_freq_masks: int = 2,
                 max_freq_bins: int = 8, *, fill: Union[str, float] = "mean", p: float = 1.0,
                 mode: str = "per_example", output_type: str = "tensor"):
        super().__init__(p, mode, None, output_type)
        for name, value in (("n_time_masks", n_time_masks), ("max_time_frames", max_time_frames),
                            ("n_freq_masks", n_freq_masks), ("max_freq_bins", max_freq_bins)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if not (fill == "mean" or (isinstance(fill, (int, float)) and not isinstance(fill, bool))):
            raise ValueError(f"mask fill must be 'mean' or a number, got {fill!r}")
        self.config = MaskConfig(n_time_masks, max_time_frames, n_freq_masks, max_freq_bins, fill)

    @classmethod
    def from_config(cls, config: MaskConfig) -> "SpecAugment":
        """The block a :class:`MaskConfig` describes (PairAugmenter's)."""
        c = config
        return cls(c.n_time_masks, c.max_time_frames, c.n_freq_masks, c.max_freq_bins, fill=c.fill)

    @property
    def param_keys(self) -> tuple:
        keys = ("time_mask_width", "time_mask_start", "freq_mask_width", "freq_mask_start")
        return keys + (("mask_applied",) if self.p < 1 else ())

    def sample(self, batch: int, n_mels: int, frames: int, generator=None, device=None,
               lengths: Optional[Tensor] = None) -> Params:
        """Masks for ``batch`` spectrograms of ``n_mels x frames``; ``lengths`` ``(batch,)``: valid frames of each."""
        c = self.config
        device = draw_device(generator, device)
        params = {}
        for axis, n, max_width, size in (("time", c.n_time_masks, c.max_time_frames, frames),
                                          ("freq", c.n_freq_masks, c.max_freq_bins, n_mels)):
            max_width = min(max_width, size)
            width = torch.randint(max_width + 1, (batch, n), generator=generator, device=device)
            span = size - width + 1
            if axis == "time" and lengths is not None:  # inside the valid frames only
                valid = lengths.to(device=device, dtype=torch.long).clamp(1, size).reshape(-1, 1)
                width = torch.minimum(width, valid)
                span = valid - width + 1
            params[f"{axis}_mask_width"] = width
            params[f"{axis}_mask_start"] = _randint_below(span, generator, device)
        if self.p < 1:  # drawn after the rest, so that p = 1 keeps the draws of earlier versions
            applied = _coin(self.p, batch, generator, device)
            params["mask_applied"] = applied
            for axis in ("time", "freq"):
                params[f"{axis}_mask_width"] = params[f"{axis}_mask_width"] * applied.reshape(-1, 1)
        return params

    def apply(self, spec: Tensor, params: Params, lengths: Optional[Tensor] = None, inplace: bool = False) -> Tensor:
        """Mask ``spec`` ``(B, ..., n_mels, frames)``; ``lengths`` ``(B,)``: valid frames, for the mean fill.
        ``inplace``: the caller owns ``spec`` and may have it masked in place (the CPU kernel writes only the masked
        cells of a contiguous float32 ``spec`` without ``lengths``; the values are the same either way)."""
        if (inplace and lengths is None and spec.device.type == "cpu"
                and spec.dtype == torch.float32 and spec.is_contiguous() and kernels.use_kernels("auto", spec.device)
                and not (torch.is_grad_enabled() and spec.requires_grad)):
            fill = (spec.mean(dim=tuple(range(1, spec.ndim))) if self.config.fill == "mean"
                    else torch.full((spec.shape[0],), float(self.config.fill)))
            return kernels.fill_masks(spec, params, fill)
        if lengths is not None:
            inside = (torch.arange(spec.shape[-1], device=spec.device) < lengths.reshape(-1, 1)).to(spec.dtype)
            inside = inside.reshape((spec.shape[0],) + (1,) * (spec.ndim - 2) + (-1,))
        if self.config.fill != "mean":
            fill = float(self.config.fill)
        elif lengths is None:
            fill = spec.mean(dim=tuple(range(1, spec.ndim)))
        else:
            count = (inside.sum(dim=-1) * spec[0, ..., 0].numel()).reshape(-1)
            fill = (spec * inside).sum(dim=tuple(range(1, spec.ndim))) / count.clamp_min(1)
        # both axes' masks in one pass (the same fill; two passes of where over the batch cost 4x as much on a CPU)
        hit = (_hits(spec, params["time_mask_start"], params["time_mask_width"], -1)
               | _hits(spec, params["freq_mask_start"], params["freq_mask_width"], -2))
        out = torch.where(hit, _fill(spec, fill), spec)
        if lengths is None:
            return out
        return torch.where(inside.bool(), out, spec)  # frequency masks too stop at the valid frames

    def transform(self, x: Tensor, params: Params, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        return self.apply(x, params, lengths), lengths

    def extra_repr(self) -> str:
        c = self.config
        return (f"n_time_masks={c.n_time_masks}, max_time_frames={c.max_time_frames}, n_freq_masks={c.n_freq_masks}, "
                f"max_freq_bins={c.max_freq_bins}, fill={c.fill!r}, " + super().extra_repr())
