"""Time stretch of whole clips: :func:`time_stretch` and the :class:`TimeStretch` module, one rate per example.

Both run the phase-locked vocoder of :mod:`augcl.vocoder` (:func:`~augcl.vocoder.time_stretch_segment` from 0), on
the fused kernels of :mod:`augcl.kernels` where they run (``backend``). Rate > 1 is faster (shorter): a clip of ``T``
samples becomes ``ceil(T / rate)``. Cost per row: ``2 * (T / hop + 2 * n_fft / hop)`` real FFTs of ``n_fft``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from . import kernels
from .core import (Params, Transform, _coin, _select, _uniform, as_batch, cpu_branch, crop_segments, draw_device,
                   pad_to_length, position_dtype, valid_mask)
from .vocoder import stretched_length, time_stretch_segment


def time_stretch(
    wave: Tensor,
    rate: Tensor,
    *,
    n_fft: int = 512,
    hop_length: int = 128,
    out_length: Optional[int] = None,
) -> Tensor:
    """Phase-locked time stretch of whole clips: ``(B, T)`` -> ``(B, max_b ceil(T / rate[b]))``.

    Rate > 1 is faster (shorter). Each row is zero past its own length ``ceil(T / rate[b])``. ``rate``: a number or a
    ``(B,)`` tensor on ``wave``'s device. Without ``out_length`` the output length is read from ``rate`` (one host
    sync); pass it and there is none.
    See :func:`time_stretch_segment` for the method; this is that function with ``start = 0``.
    """
    wave = as_batch(wave)
    B, T = wave.shape
    dtype = position_dtype(wave.device)
    if isinstance(rate, (int, float)):  # a number: filled on the device (a tensor of it would be a host-to-device copy)
        rate = torch.full((B,), float(rate), dtype=dtype, device=wave.device)
    else:
        rate = torch.as_tensor(rate, device=wave.device).to(dtype).expand(B)
    lengths = stretched_length(T, rate)
    if out_length is None:
        out_length = int(lengths.max())
    start = torch.zeros(B, dtype=torch.long, device=wave.device)
    # no max_rate: the whole clip is read anyway, and reading the rates' maximum would be a host sync
    out = time_stretch_segment(wave, rate, start, out_length, n_fft=n_fft, hop_length=hop_length)
    valid = torch.arange(out_length, device=wave.device) < lengths[:, None]
    return out * valid.to(out.dtype)


@dataclass(frozen=True)
class StretchConfig:
    """Time stretch of the clip before the segment is chosen (paper: p = 0.5, rate 0.9 or 1.1)."""

    p: float = 0.5
    rates: tuple = (0.9, 1.1)
    mode: str = "choice"  # "choice": one of ``rates``; "uniform": uniform in [min(rates), max(rates)]
    n_fft: int = 512
    hop_length: int = 128
    #: ``"auto"``: ``"spectral"`` when the stretched segment goes straight to the log-mel (no waveform block
    #: after it in its branch), else ``"vocoder"``. ``"spectral"``: the log-mel frames are read from the source
    #: at the stretched positions (:func:`augcl.functional.stretched_frames`; no resynthesis, the cost of a
    #: plain log-mel). ``"vocoder"``: the phase-locked vocoder resynthesises the segment's waveform.
    method: str = "auto"

    @property
    def max_rate(self) -> float:
        return float(max(self.rates))

    @property
    def rate_bound(self) -> float:
        """An upper bound of every row's rate in a batch: rows left unstretched have rate 1."""
        return max(self.max_rate, 1.0)



def draw_rates(config: StretchConfig, batch: int, generator=None, device=None) -> tuple[Tensor, Tensor]:
    """``(rate, applied)`` ``(batch,)`` for :class:`StretchConfig` ``config``: ``applied`` with probability ``p``,
    ``rate`` one of ``rates`` (``mode="choice"``) or uniform between their extremes (``"uniform"``), 1 where not
    applied. Float64 rates (float32 where the device has none)."""
    applied = _coin(config.p, batch, generator, device)
    dtype = position_dtype(device)
    if config.mode == "choice":
        pick = torch.randint(len(config.rates), (batch,), generator=generator, device=device)
        rate = torch.full((batch,), float(config.rates[0]), dtype=dtype, device=device)
        for i, r in enumerate(config.rates[1:], 1):  # scalars: no table to copy to the device
            rate = torch.where(pick == i, float(r), rate)
    else:
        rate = _uniform(batch, min(config.rates), max(config.rates), generator, device, dtype)
    return torch.where(applied, rate, torch.ones_like(rate)), applied


def check_config(config: StretchConfig) -> None:
    if config.mode not in ("choice", "uniform"):
        raise ValueError(f"stretch mode must be 'choice' or 'uniform', got {config.mode!r}")
    if not len(config.rates) or min(config.rates) <= 0:
        raise ValueError(f"stretch rates must be positive, got {config.rates}")
    if config.method not in ("auto", "spectral", "vocoder"):
        raise ValueError(f"stretch method must be 'auto', 'spectral' or 'vocoder', got {config.method!r}")
    if not 0.0 <= config.p <= 1.0:
        raise ValueError(f"stretch p must be in [0, 1], got {config.p}")


def stretch_rows(x: Tensor, rate: Tensor, applied: Tensor, start: Tensor, length: int, plain: Optional[Tensor],
                 config: StretchConfig, backend: str = "auto", lengths: Optional[Tensor] = None,
                 out_lengths: Optional[Tensor] = None) -> Tensor:
    """``length`` samples from ``start`` of each row of ``x`` ``(B, T)`` stretched by ``rate`` where ``applied``,
    ``plain`` ``(B, length)`` elsewhere (None: the crop ``x[b, start[b] : start[b] + length]``, zeros outside the
    clip and past ``lengths``, :func:`augcl.segment.crop_segments`). On a CPU only the applied rows are computed (a
    host-side selection, free there), and with the kernels and no ``plain`` only the other rows are cropped, into the
    same output (:func:`augcl.kernels.crop_and_stretch`); elsewhere every row is, then selected (no sync). The
    vocoder runs on the kernels where ``backend`` says. ``out_lengths`` ``(B,)``: the samples of each stretched row
    the caller keeps (it zeroes the rest), so that the CPU kernels skip the frames past them."""
    use = kernels.use_kernels(backend, x.device)
    stretch = kernels.time_stretch_segment if use else time_stretch_segment
    kw = dict(n_fft=config.n_fft, hop_length=config.hop_length, max_rate=config.rate_bound)
    if plain is None:
        if (use and cpu_branch(x.device) and x.dtype == torch.float32
                and not (x.requires_grad and torch.is_grad_enabled())):
            return kernels.crop_and_stretch(x, rate, applied, start, length, lengths=lengths, out_lengths=out_lengths,
                                            **kw)
        plain = crop_segments(x, start, length, lengths=lengths)
    if cpu_branch(x.device):
        rows = applied.nonzero().flatten()
        out = plain.clone()
        if len(rows):
            part = None if lengths is None else lengths[rows]
            if use and out_lengths is not None:
                kw["out_lengths"] = out_lengths[rows]
            out[rows] = stretch(x, rate[rows], start[rows], length, rows=rows, lengths=part, **kw).to(out.dtype)
        return out
    return _select(applied, stretch(x, rate, start, length, lengths=lengths, **kw), plain)


class TimeStretch(Transform):
    """Pitch-preserving time stretch of whole clips, one rate per example (the phase-locked vocoder).

    ``TimeStretch(min_rate=0.8, max_rate=1.25)`` draws each example's rate uniformly in the range; ``rates=(0.9,
    1.1)`` picks one of a set instead. Rate > 1 is faster: a clip of ``n`` valid samples becomes ``ceil(n / rate)``.
    With ``leave_length_unchanged=True`` (default) the output keeps ``T`` samples: a faster clip ends in zeros, a
    slower one is cut at ``T``. With False the output has ``ceil(T / min(min_rate, 1))`` samples (the longest any
    example can become, known without reading the rates: no host sync), each row zero past its own new length, and
    the call returns ``(samples, lengths)`` (``lengths`` in the dict with ``output_type="dict"``). Channels of an
    example share its rate. Samples past ``lengths`` are padding: they are read as zeros and the stretched clip is
    ``ceil(lengths / rate)`` long. Params: ``stretch_rate`` (1 where not applied), ``stretch_applied``.

    Method and cost: :func:`time_stretch_segment` (``n_fft=512``, ``hop_length=128``); on a CPU only the examples
    drawn for stretching are computed, with the Numba kernels where installed (``backend``, as PairAugmenter's).
    """

    param_keys = ("stretch_rate", "stretch_applied")
    keeps_time = False

    def __init__(self, min_rate: float = 0.8, max_rate: float = 1.25, *, rates: Optional[tuple] = None,
                 p: float = 0.5, leave_length_unchanged: bool = True, n_fft: int = 512, hop_length: int = 128,
                 mode: str = "per_example", sample_rate: Optional[int] = None, output_type: str = "tensor",
                 backend: str = "auto"):
        super().__init__(p, mode, sample_rate, output_type)
        if rates is None:
            if not 0 < min_rate <= max_rate:
                raise ValueError(f"need 0 < min_rate <= max_rate, got min_rate={min_rate}, max_rate={max_rate}")
            config = StretchConfig(p=self.p, rates=(float(min_rate), float(max_rate)), mode="uniform", n_fft=n_fft,
                                   hop_length=hop_length, method="vocoder")
        else:
            config = StretchConfig(p=self.p, rates=tuple(float(r) for r in rates), mode="choice", n_fft=n_fft,
                                   hop_length=hop_length, method="vocoder")
        if not (isinstance(n_fft, int) and isinstance(hop_length, int) and 0 < hop_length <= n_fft // 4):
            raise ValueError(f"need ints 0 < hop_length <= n_fft / 4 (vocoder overlap), got n_fft={n_fft}, "
                             f"hop_length={hop_length}")
        check_config(config)
        kernels.check_backend(backend)
        self.config = config
        self.leave_length_unchanged = bool(leave_length_unchanged)
        self.backend = backend

    def output_length(self, length: int) -> int:
        """Samples of the output for inputs of ``length`` samples."""
        if self.leave_length_unchanged:
            return length
        return math.ceil(length / min(min(self.config.rates), 1.0) - 1e-9)

    def sample(self, batch: int, length: int, generator=None, device=None, lengths: Optional[Tensor] = None) -> Params:
        rate, applied = draw_rates(self.config, batch, generator, draw_device(generator, device))
        return {"stretch_rate": rate, "stretch_applied": applied}

    def transform(self, x: Tensor, params: Params, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        N, C, T = x.shape
        L = self.output_length(T)
        rate = params["stretch_rate"].repeat_interleave(C)
        applied = params["stretch_applied"].repeat_interleave(C)
        valid = (torch.full((N,), T, dtype=torch.long, device=x.device) if lengths is None
                 else lengths.to(torch.long))
        new = stretched_length(valid, params["stretch_rate"]).clamp_max(L)  # (N,): per example
        flat = x.reshape(N * C, T)
        plain = pad_to_length(flat, L)[:, :L]
        row_lengths = None if lengths is None else valid.repeat_interleave(C)
        start = torch.zeros(N * C, dtype=torch.long, device=x.device)
        y = stretch_rows(flat, rate, applied, start, L, plain, self.config, self.backend, row_lengths,
                         new.repeat_interleave(C))
        # a stretched row is zero past its new length (the vocoder's tail there reads the padding)
        y = torch.where(valid_mask(new.repeat_interleave(C), L) | ~applied[:, None], y, 0.0)
        out_lengths = torch.where(params["stretch_applied"], new, valid.clamp_max(L))
        return y.reshape(N, C, L), out_lengths

    def _output(self, y, lengths, params, sample_rate, targets, target_rate):
        if self.leave_length_unchanged or self.returns == "dict":
            return super()._output(y, lengths, params, sample_rate, targets, target_rate)
        if lengths is None:  # eval mode, or every example left alone: all T valid
            lengths = torch.full((y.shape[0],), y.shape[-1], dtype=torch.long, device=y.device)
        return y, lengths

    def extra_repr(self) -> str:
        c = self.config
        rates = f"rates={c.rates}" if c.mode == "choice" else f"min_rate={c.rates[0]}, max_rate={c.rates[1]}"
        return f"{rates}, leave_length_unchanged={self.leave_length_unchanged}, " + super().extra_repr()
