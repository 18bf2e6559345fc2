"""The phase-locked vocoder: per-example rates, computing only the segment asked for.

:func:`time_stretch_segment` stretches ``[start, start + length)`` of each row by its own rate, analysing only the
source region that segment needs (about ``length * rate`` samples plus one window each side); :func:`stretched_frames`
reads a stretched timeline's analysis frames straight from the source (for a log-mel without resynthesis). Rate > 1 is
faster (shorter): a clip of ``T`` samples becomes ``ceil(T / rate)``. Cost per row: ``2 * (length / hop + 2 * n_fft /
hop)`` real FFTs of ``n_fft``. :mod:`augcl.kernels` replaces the phase step (:func:`_vocoder_phase`) with fused kernels.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .core import _gather_windows, cpu_branch, position_dtype, work_dtype


def stretched_length(length: Union[int, Tensor], rate: Tensor) -> Tensor:
    """Length ``ceil(T / rate)`` of a clip of ``T`` samples stretched by ``rate`` (rate > 1 is faster/shorter)."""
    return torch.ceil(length / rate.to(position_dtype(rate.device)) - 1e-9).to(torch.long)


def _wrap(phase: Tensor) -> Tensor:
    return torch.remainder(phase + math.pi, 2 * math.pi) - math.pi


def _angle(z: Tensor) -> Tensor:
    """``torch.angle``, but 0 at an exact zero whatever the signs of its parts (``angle(-0 + 0i)`` is pi).

    A silent frame's spectrum is zeros whose signs are the FFT's and the framing's, not the signal's: MKL's AVX-512
    path gives -0.0 real parts where its AVX2 path gives +0.0, and a masked sample ``x * 0`` is -0.0 for ``x < 0``. The
    first frame's phases start every later frame's synthesis phases (and a silent frame's advances add to them), so
    with ``torch.angle`` a row that starts in silence was stretched differently on another CPU and by the kernels,
    whose framing writes +0.0 (tests/test_kernels.py::test_the_signs_of_a_silent_frames_zeros_change_no_phase)."""
    return torch.angle(z).masked_fill(z == 0, 0.0)


def _nearest_peak(mag: Tensor) -> Tensor:
    """Index of the nearest spectral peak for every bin of ``mag`` (..., F) (the peak's region of influence).

    A peak is a bin not exceeded by its two neighbours on either side. Bins of a frame without peaks (silence)
    map to themselves.
    """
    nbins = mag.shape[-1]
    flat = mag.reshape(-1, 1, nbins)
    local_max = F.max_pool1d(F.pad(flat, (2, 2), value=-1.0), kernel_size=5, stride=1).reshape(mag.shape)
    floor = mag.amax(dim=-1, keepdim=True) * 1e-6
    peak = (mag >= local_max) & (mag > floor)
    bins = torch.arange(nbins, device=mag.device).expand_as(mag)
    left = torch.where(peak, bins, torch.full_like(bins, -1)).cummax(dim=-1).values
    right = torch.where(peak, bins, torch.full_like(bins, 2 * nbins))
    right = right.flip(-1).cummin(dim=-1).values.flip(-1)
    has_left, has_right = left >= 0, right < nbins
    take_left = has_left & (~has_right | ((bins - left) <= (right - bins)))
    nearest = torch.where(take_left, left, right)
    return torch.where(has_left | has_right, nearest, bins)


def _frames_at(wave: Tensor, first: Tensor, width: int, span: int, rows: Optional[Tensor] = None,
               limit: Optional[Tensor] = None) -> Tensor:
    """Windows ``wave[b, first[b, k] : first[b, k] + width]`` as ``(B, K, width)``, zeros outside ``[0, T)`` and
    at or past ``limit[b]`` (``(B,)``, indexed like ``first``: see :func:`_gather_windows`).

    Every row's windows that read the clip must lie in ``[max(first[b, 0], -width), ... + span)``; ``T + 2 * width``
    covers any windows. On a CPU the windows come straight out of the clip's ``unfold`` view
    (:func:`_gather_windows`, exact whatever ``span``); elsewhere through :func:`_frames_in_region`.
    """
    if cpu_branch(wave.device):
        return _gather_windows(wave, first, width, rows, limit)
    return _frames_in_region(wave, first, width, span, rows, limit)


def _frames_in_region(wave: Tensor, first: Tensor, width: int, span: int, rows: Optional[Tensor] = None,
                      limit: Optional[Tensor] = None) -> Tensor:
    """:func:`_frames_at` by cutting one region of ``span`` samples per row, then indexing the windows out of a
    zero-copy ``unfold`` view of it (no index per sample of every window: one per sample of the region).

    The region starts at ``max(first[b, 0], -width)``: windows wholly before the clip read zeros either way (they are
    clamped to the region's first window, which is zeros then), so a span of ``T + 2 * width`` holds every window that
    reads the clip, whatever the rows' rates."""
    lo = first[:, :1].clamp_min(-width)
    region = _gather_windows(wave, lo[:, 0], span, rows, limit)  # the limit costs a pass over the region only
    index = torch.arange(first.shape[0], device=wave.device)[:, None]
    return region.unfold(-1, width, 1)[index, (first - lo).clamp(0, span - width)]


def stretched_frames(wave: Tensor, rate: Tensor, first: Tensor, n_frames: int, hop_length: int, width: int,
                     max_rate: Optional[float] = None, centre: Optional[int] = None,
                     rows: Optional[Tensor] = None, lengths: Optional[Tensor] = None) -> Tensor:
    """Analysis frames of the *stretched* timeline read straight from the source clip: ``(B, n_frames, width)``.

    Frame ``k`` of row ``b`` covers stretched samples ``[first[b] + k * hop, ... + width)``; its centre ``c``
    (sample ``centre`` of the frame, default ``width // 2``) maps to the source position ``round(c * rate[b])``
    and the frame is the ``width`` source samples placed the same way around it.
    The short-time spectrum of an ideally time-stretched signal at ``c`` is the source's spectrum at
    ``c * rate``, so a log-mel of these frames is the log-mel of the stretched clip without resynthesis (no
    vocoder, no phase): ``rate == 1`` gives exactly the frames of the plain clip. ``max_rate``: an upper bound of
    ``rate`` that sizes the source region read per row on an accelerator; a larger rate is an error, as an index out of
    range is (a ValueError on a CPU; on an accelerator ``torch._assert_async``, a device-side assert: no host sync).
    ``None``: the region is the whole clip (exact for any rate, no sync; the cost of the whole clip on an
    accelerator). ``rows`` ``(B,)``: the rows of ``wave`` that ``rate`` and ``first`` are for (default: all); the
    others are not read or copied. ``lengths`` ``(B,)``: valid samples of each row's *source* clip, indexed like
    ``rate`` (with ``rows``: ``lengths[rows]``); source samples at or past it read as zeros (default: ``T``), at the
    cost of the frames, not of the clip.
    """
    dev = wave.device
    rate = rate.to(device=dev, dtype=position_dtype(dev))
    src_first = stretched_starts(rate, first, n_frames, hop_length, width // 2 if centre is None else int(centre))
    whole = wave.shape[-1] + 2 * width  # holds every window that reads the clip, at any rate (_frames_in_region)
    if max_rate is None:
        span = whole
    else:
        _check_rate_bound(rate, max_rate)
        span = min(math.ceil((n_frames - 1) * hop_length * max_rate) + width + 2, whole)
    limit = None if lengths is None else lengths.to(device=dev, dtype=torch.long)
    return _frames_at(wave, src_first, width, span, rows, limit)


def stretched_starts(rate: Tensor, first: Tensor, n_frames: int, hop_length: int, centre: int) -> Tensor:
    """``(B, n_frames)`` source position of the first sample of each frame of :func:`stretched_frames` (whose
    sample ``centre`` sits at the source position ``round(c * rate)`` of the stretched frame's centre ``c``)."""
    dev = rate.device
    first = first.to(device=dev, dtype=torch.long)
    centres = first[:, None] + torch.arange(n_frames, device=dev) * hop_length + centre
    return torch.round(centres.to(rate.dtype) * rate[:, None]).to(torch.long) - centre


def _check_rate_bound(rate: Tensor, max_rate: float) -> None:
    """Refuse rates above ``max_rate`` (beyond float rounding; the span's 2 spare samples absorb that): on a CPU a
    ValueError, elsewhere a device-side assert (``torch._assert_async``: no host sync, like an index out of range)."""
    within = rate <= max_rate * (1 + 1e-9)
    message = (f"stretch rate above max_rate={max_rate} (the bound that sizes the source region read per row); pass "
               f"max_rate >= every rate, or max_rate=None")
    if cpu_branch(rate.device):
        if not bool(within.all()):
            raise ValueError(f"{message}; got {float(rate.max())}")
    else:
        torch._assert_async(within.all(), message)


def _vocoder_analysis(wave: Tensor, rate: Tensor, start: Tensor, length: int, n_fft: int, hop_length: int,
                      max_rate: Optional[float], rows: Optional[Tensor] = None,
                      lengths: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Spectra of the analysis frames and of the frames ``n_fft // 8`` later: two ``(B, K, n_fft // 2 + 1)``."""
    dev, dtype = wave.device, work_dtype(wave.dtype)
    pad_frames = n_fft // hop_length
    n_frames = -(-length // hop_length) + 2 * pad_frames + 1
    d = max(n_fft // 8, 1)
    # frames of width n_fft + d whose sample n_fft // 2 sits at round(c * rate), c the synthesis frame's centre:
    # the first n_fft samples are the analysis frame, the last n_fft the frame d samples later
    first = start.to(device=dev, dtype=torch.long) - pad_frames * hop_length - n_fft // 2
    frames = stretched_frames(wave.to(dtype), rate, first, n_frames, hop_length, n_fft + d, max_rate, n_fft // 2,
                              rows, lengths)
    window = torch.hann_window(n_fft, periodic=True, dtype=dtype, device=dev)
    spec0 = torch.fft.rfft(frames[..., :n_fft] * window)
    spec1 = torch.fft.rfft(frames[..., d:] * window)
    return spec0, spec1


def _vocoder_phase(spec0: Tensor, spec1: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """The phase-locked vocoder's synthesis spectra ``(B, K, F)`` from the two analysis spectra (reference).

    Kernels (:mod:`augcl.kernels`) replace exactly this step.
    """
    d = max(n_fft // 8, 1)
    dtype = spec0.real.dtype
    mag = spec0.abs()
    phase_a = _angle(spec0)  # 0 at a silent bin, whatever its zeros' signs
    omega_bin = 2 * math.pi * torch.arange(spec0.shape[-1], device=spec0.device, dtype=dtype) / n_fft
    omega = omega_bin + _wrap(_angle(spec1) - phase_a - omega_bin * d) / d  # rad/sample
    # The DC and Nyquist bins of a real signal are real: their phase is 0 or pi, so the deviation read there is an
    # alias that rounding puts on either side of +-pi (with hop = n_fft / 8 that flips the bin's sign). They
    # advance at their bin frequency.
    omega[..., 0] = omega_bin[0]
    if n_fft % 2 == 0:
        omega[..., -1] = omega_bin[-1]
    # Synthesis phase of each bin: the analysis phase of the first frame, then advanced by the instantaneous
    # frequency over each synthesis hop (trapezoid rule); advances are wrapped so the cumsum stays small.
    step = _wrap(hop_length * 0.5 * (omega[:, 1:] + omega[:, :-1]))
    phase_s = torch.cat([phase_a[:, :1], phase_a[:, :1] + torch.cumsum(step, dim=1)], dim=1)
    # Identity phase locking: bins follow the synthesis phase of their peak, keeping the analysis offset.
    peak = _nearest_peak(mag)
    phase = phase_s.gather(-1, peak) + (phase_a - phase_a.gather(-1, peak))
    return torch.polar(mag, phase)


def _vocoder_synthesis(spec: Tensor, length: int, n_fft: int, hop_length: int) -> Tensor:
    """Weighted overlap-add of the synthesis spectra ``(B, K, F)`` -> the ``length`` segment samples."""
    B, n_frames = spec.shape[:2]
    window = torch.hann_window(n_fft, periodic=True, dtype=spec.real.dtype, device=spec.device)
    frames = torch.fft.irfft(spec, n=n_fft).mul_(window)  # (B, K, n_fft)
    y = _overlap_add(frames, hop_length)
    env = _overlap_add((window**2).expand(1, n_frames, n_fft), hop_length)
    offset = (n_fft // hop_length) * hop_length + n_fft // 2
    return y[:, offset : offset + length] / env[:, offset : offset + length]


def _overlap_add(frames: Tensor, hop_length: int) -> Tensor:
    """Overlap-add of frames ``(B, K, N)`` placed ``hop_length`` apart -> ``(B, (K - 1) * hop + N)``."""
    B, K, N = frames.shape
    if N % hop_length:
        fold = dict(output_size=(1, (K - 1) * hop_length + N), kernel_size=(1, N), stride=(1, hop_length))
        return F.fold(frames.transpose(1, 2), **fold).reshape(B, -1)
    # N = r * hop: frame k's part j lands on output block k + j, so the sum is r shifted adds of (B, K, hop) blocks
    # (r = 4 for the vocoder), instead of fold's col2im
    r = N // hop_length
    parts = frames.reshape(B, K, r, hop_length)
    y = frames.new_zeros(B, K + r - 1, hop_length)
    for j in range(r):
        y[:, j:j + K] += parts[:, :, j]
    return y.reshape(B, -1)


def time_stretch_segment(
    wave: Tensor,
    rate: Tensor,
    start: Tensor,
    length: int,
    *,
    n_fft: int = 512,
    hop_length: int = 128,
    max_rate: Optional[float] = None,
    rows: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
) -> Tensor:
    """Samples ``[start, start + length)`` of each row time-stretched by ``rate``, shape ``(B, length)``.

    Output sample ``t`` of row ``b`` sits at source time ``(start[b] + t) * rate[b]``: rate > 1 is faster
    (shorter), the stretched clip has ``ceil(T / rate)`` samples. Only the source region the segment needs is
    analysed (about ``length * rate`` samples plus one window each side), so cropping 1 s of a 10-s clip costs
    1 s of work.

    Method: a phase vocoder whose analysis frames are taken at the exact source positions of the synthesis
    frames (no interpolation of magnitudes between frames), instantaneous frequency from a second frame
    ``n_fft // 8`` samples later, synthesis phases of spectral peaks advanced by the instantaneous frequency
    (a cumulative sum over frames), and *identity phase locking* (Laroche & Dolson 1999): every bin keeps
    its analysis phase offset to the nearest peak, which keeps a partial's main lobe coherent across an onset.
    Weighted overlap-add with a Hann window. Cost per row: ``2 * (length / hop_length + 2 * n_fft / hop_length)``
    real FFTs of size ``n_fft``.

    Args:
        wave: ``(B, T)`` float.
        rate: ``(B,)`` positive stretch rates.
        start: ``(B,)`` integer start positions in the stretched timeline.
        length: segment length in samples.
        n_fft, hop_length: vocoder window and synthesis hop (hop <= n_fft / 4 for good overlap).
        max_rate: an upper bound of ``rate``, or None (see :func:`stretched_frames`: a larger rate is an error; None
            reads the whole clip on an accelerator, with no host sync).
        rows: ``(R,)`` indices of the rows of ``wave`` to stretch, ``rate`` and ``start`` then being ``(R,)``
            (default: every row). Cheaper than ``wave[rows]``, which copies whole clips.
        lengths: ``(B,)`` valid samples of each source row, indexed like ``rate`` (with ``rows``: ``(R,)``,
            ``lengths[rows]``); source samples at or past it are read as zeros (default: ``T``). Masked where the
            analysis frames are read: it costs the frames, not a pass over the clip.
    """
    spec0, spec1 = _vocoder_analysis(wave, rate, start, length, n_fft, hop_length, max_rate, rows, lengths)
    return _vocoder_synthesis(_vocoder_phase(spec0, spec1, n_fft, hop_length), length, n_fft, hop_length)
