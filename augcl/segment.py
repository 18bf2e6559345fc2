"""Per-example segments: crop ``wave[b, start[b] : start[b] + length]`` out of a batch, optionally of the time-stretched
clip (:class:`RandomSegment`).

Reading a window costs the window, never the clip: on a CPU whole windows are indexed out of a zero-copy ``unfold``
view, elsewhere one gather per sample of the window. Padding past a row's ``lengths`` reads as zeros.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from . import kernels
from .core import Params, Transform, _coin, _randint_below, crop_segments, draw_device
from .stretch import StretchConfig, check_config, draw_rates, stretch_rows
from .vocoder import stretched_length

if TYPE_CHECKING:
    from .mel import LogMel


class RandomSegment(Transform):
    """A random segment of ``segment_samples`` per example, optionally of the time-stretched clip.

    Standalone: ``RandomSegment(16000)(samples)`` crops ``(B, C, T)`` to ``(B, C, 16000)``, each example at its own
    start, uniform over the positions that keep the segment inside the example's valid part (``lengths``; a clip
    shorter than a segment starts at 0, zeros after it). ``p``: the probability of a random start; the other
    examples start at 0. The dict output's ``lengths`` are the valid samples of each segment. Params: ``start``, and
    ``segment_applied`` when ``p < 1``.

    With a :class:`StretchConfig` (PairAugmenter's positive), each example is stretched with probability ``stretch.p``
    and its start is drawn uniformly in the *stretched* timeline (``ceil(T / rate)`` samples); only that segment is
    computed (:func:`augcl.functional.time_stretch_segment`). Params then add ``stretch_rate`` (1.0 where not applied)
    and ``stretch_applied``. The output carries ``context`` extra samples of the (stretched) clip on each side of the
    segment (zeros beyond the clip's ends).
    """

    keeps_time = False

    def __init__(self, segment_samples: int, *, p: float = 1.0, stretch: Optional[StretchConfig] = None,
                 context: int = 0, backend: str = "auto", mode: str = "per_example",
                 sample_rate: Optional[int] = None, output_type: str = "tensor"):
        super().__init__(p, mode, sample_rate, output_type)
        if isinstance(segment_samples, bool) or not isinstance(segment_samples, int) or segment_samples < 1:
            raise ValueError(f"segment_samples must be a positive int, got {segment_samples!r}")
        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            raise ValueError(f"context must be an int >= 0, got {context!r}")
        if stretch is not None:
            check_config(stretch)
        kernels.check_backend(backend)
        self.segment_samples = segment_samples
        self.context = context
        self.stretch = stretch
        self.backend = backend

    @property
    def param_keys(self) -> tuple:
        coin = ("segment_applied",) if self.p < 1 else ()
        return (("start", "stretch_rate", "stretch_applied") if self.stretch is not None else ("start",)) + coin

    @property
    def output_samples(self) -> int:
        """Samples per output row: the segment plus its context on both sides."""
        return self.segment_samples + 2 * self.context

    @property
    def min_clip_length(self) -> int:
        """Shortest clip in which every segment lies inside the (stretched) clip; shorter clips get zero-padded."""
        return math.ceil(self.segment_samples * (self.stretch.max_rate if self.stretch is not None else 1.0))

    def sample(self, batch: int, length: int, generator=None, device=None, lengths: Optional[Tensor] = None) -> Params:
        """Draw starts (and rates) for ``batch`` clips of ``length`` samples, ``lengths`` ``(batch,)`` of them valid."""
        device = draw_device(generator, device)
        params = {}
        valid = length if lengths is None else lengths.to(device=device, dtype=torch.long)
        if self.stretch is not None:
            rate, applied = draw_rates(self.stretch, batch, generator, device)
            valid = stretched_length(valid, rate)
            params.update(stretch_rate=rate, stretch_applied=applied)
        if isinstance(valid, int):
            span = torch.full((batch,), max(valid - self.segment_samples + 1, 1), device=device)
        else:
            span = (valid - self.segment_samples + 1).clamp_min(1)
        params["start"] = _randint_below(span, generator, device)
        if self.p < 1:  # drawn after the rest, so that p = 1 keeps the draws of earlier versions
            params["segment_applied"] = _coin(self.p, batch, generator, device)
            params["start"] = params["start"] * params["segment_applied"]
        return params

    def apply(self, x: Tensor, params: Params, lengths: Optional[Tensor] = None) -> Tensor:
        """The segments ``(B, output_samples)`` of mono rows ``x`` ``(B, T)``; ``lengths`` ``(B,)``: valid samples per
        clip, those past it read as zeros (masked in the windows read, not in the clip)."""
        start, length = params["start"] - self.context, self.output_samples
        if self.stretch is None:
            return crop_segments(x, start, length, lengths=lengths)
        # the unstretched rows are the crop (made by stretch_rows: on the CPU kernels only those rows are cropped)
        return stretch_rows(x, params["stretch_rate"], params["stretch_applied"], start, length, None, self.stretch,
                            self.backend, lengths)

    def transform(self, x: Tensor, params: Params, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        N, C, T = x.shape
        rows = {k: v.repeat_interleave(C, dim=0) for k, v in params.items() if k != "lengths"}
        row_lengths = None if lengths is None else lengths.repeat_interleave(C)
        y = self.apply(x.reshape(N * C, T), rows, row_lengths).reshape(N, C, -1)
        valid = torch.full((N,), T, dtype=torch.long, device=x.device) if lengths is None else lengths.to(torch.long)
        if self.stretch is not None:
            valid = stretched_length(valid, params["stretch_rate"])
        return y, (valid - params["start"] + self.context).clamp(0, self.output_samples)

    def valid_mask(self, params: Params, lengths: Tensor) -> Tensor:
        """``(B, output_samples)`` bool: which samples of each output row lie inside the (stretched) clip.

        Sample ``i`` of row ``b`` is position ``p = start[b] - context + i`` of the stretched timeline; it is valid
        where ``0 <= p < ceil(lengths[b] / rate[b])`` (rate 1 without stretch). ``lengths``: ``(B,)`` valid
        samples per clip.
        """
        lengths = lengths.to(torch.long)
        if self.stretch is not None:
            lengths = stretched_length(lengths, params["stretch_rate"].to(lengths.device))
        pos = params["start"].to(lengths.device).reshape(-1, 1) - self.context + torch.arange(
            self.output_samples, device=lengths.device)
        return (pos >= 0) & (pos < lengths.reshape(-1, 1))

    def stretched_mel(self, x: Tensor, params: Params, mel: "LogMel", frames: int, lengths: Optional[Tensor] = None,
                      out: Optional[Tensor] = None, log: bool = False) -> Tensor:
        """The mel energies of the stretched segment, without resynthesis (``method="spectral"``); ``lengths`` ``(B,)``:
        valid samples per clip (as in :meth:`apply`); ``out``, ``log``: as in :meth:`LogMel.mel_at_rate`."""
        return mel.mel_at_rate(x, params["stretch_rate"], params["start"] - self.context, frames,
                               self.stretch.rate_bound, lengths=lengths, out=out, log=log)

    def extra_repr(self) -> str:
        return f"segment_samples={self.segment_samples}, context={self.context}, " + super().extra_repr()
