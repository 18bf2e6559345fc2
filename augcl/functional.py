"""Pure, batched torch reference ops of augcl.

Every op works on a batch ``(B, T)`` of mono clips and takes every random quantity as an argument
(per-example tensors of shape ``(B,)`` or ``(B, n)``); nothing here draws random numbers. The modules in
:mod:`augcl.transforms` draw the parameters and call these functions. Fused kernels (:mod:`augcl.kernels`)
are tested against the functions of this file.

Conventions
-----------
* Waveforms are float tensors ``(B, T)``; :func:`as_batch` also accepts ``(B, 1, T)``.
* Computation runs in float32 (float64 stays float64; bfloat16/float16 are upcast, because FFTs need it);
  callers cast back.
* Sample positions are integer tensors (``torch.long``) in samples; rates and fractional positions are float64
  (float32 on a device without float64: :func:`position_dtype`).
* Devices: a few ops take a CPU-only branch where reading tensor values on the host is free (host-side row
  selection, ``unfold`` reads); every other device takes a branch that never reads device data on the host.
  :func:`cpu_branch` decides; the test-only :func:`_force_device_path` sends CPU tensors down the other branch.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "as_batch",
    "cpu_branch",
    "position_dtype",
    "check_finite",
    "check_lengths",
    "valid_mask",
    "work_dtype",
    "pad_to_length",
    "power_of_two_scale",
    "crop_segments",
    "stretched_length",
    "time_stretch",
    "time_stretch_segment",
    "stretched_frames",
    "fft_convolve",
    "add_noise",
    "noise_gain",
    "gain",
    "normalize_level",
    "colored_noise",
    "gather_ring",
    "mel_filterbank",
    "log_mel",
    "log_mel_frames",
    "mask_along_axis",
    "time_mask",
    "freq_mask",
]


# ----------------------------------------------------------------------------------------------------------
# devices
# ----------------------------------------------------------------------------------------------------------
#: test-only: set by :func:`_force_device_path`, never in normal use
_DEVICE_PATH_ON_CPU = False

#: device types without float64 (Apple's MPS): rates, positions and parameter draws are float32 there
NO_FLOAT64 = ("mps",)


def cpu_branch(device: torch.device) -> bool:
    """Whether code for ``device`` takes its CPU branch, which reads tensor values on the host (free on a CPU, a sync
    anywhere else): True on a CPU, unless the test-only :func:`_force_device_path` is on. One attribute read."""
    return device.type == "cpu" and not _DEVICE_PATH_ON_CPU


@contextlib.contextmanager
def _force_device_path() -> Iterator[None]:
    """Test-only: inside it, CPU tensors take the branches written for accelerators (no host-side row selection,
    region reads, the whole batch at once, the NaN/Inf flag instead of the error, and the trainer's CUDA recipe), so
    that tests compare them with the CPU branches on the same machine. Not thread-safe; not for use outside tests."""
    global _DEVICE_PATH_ON_CPU
    old, _DEVICE_PATH_ON_CPU = _DEVICE_PATH_ON_CPU, True
    try:
        yield
    finally:
        _DEVICE_PATH_ON_CPU = old


def position_dtype(device=None) -> torch.dtype:
    """The float dtype of rates, fractional sample positions and parameter draws on ``device`` (None: the CPU):
    float64, exact to the sample for clips of any length; float32 on devices without float64 (:data:`NO_FLOAT64`),
    where positions past 2 ** 24 samples round and a stretched frame may sit a sample off the float64 one."""
    return torch.float32 if device is not None and torch.device(device).type in NO_FLOAT64 else torch.float64


# ----------------------------------------------------------------------------------------------------------
# validation and shapes
# ----------------------------------------------------------------------------------------------------------
def as_batch(wave: Tensor, name: str = "wave") -> Tensor:
    """Return ``wave`` as ``(B, T)``; raise a named TypeError/ValueError for anything else.

    Accepts ``(B, T)`` and ``(B, 1, T)`` floating tensors. Cost: O(1), no host sync.
    """
    if not isinstance(wave, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, T) or (B, 1, T), got {type(wave).__name__}")
    if wave.is_complex() or not wave.is_floating_point():
        raise TypeError(
            f"{name} must be a real floating tensor (float32/float64/bfloat16/float16), got {wave.dtype}; "
            f"convert int16 PCM with {name}.float() / 32768"
        )
    if wave.ndim == 3:
        if wave.shape[1] != 1:
            raise ValueError(
                f"{name} has {wave.shape[1]} channels (shape {tuple(wave.shape)}); augcl works on mono clips: "
                f"downmix with {name}.mean(dim=1, keepdim=True)"
            )
        wave = wave[:, 0]
    elif wave.ndim != 2:
        hint = f"{name}.unsqueeze(0)" if wave.ndim == 1 else f"{name}.reshape(-1, {name}.shape[-1])"
        raise ValueError(f"{name} must have shape (B, T) or (B, 1, T), got {tuple(wave.shape)}; try {hint}")
    if wave.shape[0] == 0 or wave.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(wave.shape)}); every clip needs at least one sample")
    return wave


def check_finite(wave: Tensor, name: str = "wave") -> None:
    """Raise ValueError if ``wave`` holds NaN or Inf (one reduction; a host sync on accelerators).

    The reduction is a sum: NaN and Inf propagate through it, and it is one fast pass (``isfinite(x).all()`` builds
    three full-size temporaries; docs/guide.md has the measured figures). Only a non-finite sum, which finite values
    too can give by overflowing, is confirmed element by element.
    """
    if not bool(torch.isfinite(wave.sum())) and not bool(torch.isfinite(wave).all()):
        raise ValueError(f"{name} contains NaN or Inf; clean the clip (e.g. torch.nan_to_num) before augmenting")


def check_lengths(lengths: Tensor, wave: Tensor, check_values: bool = True, name: str = "lengths") -> Tensor:
    """Return ``lengths`` (valid samples per row of ``wave (B, T)``) as a ``(B,)`` long tensor, or raise a named error.

    Checks type, dtype, shape and device (no host sync). ``check_values``: also check that every value lies in
    ``[1, T]`` (one reduction: a host sync on accelerators, so callers run it where they run :func:`check_finite`).
    """
    if not isinstance(lengths, Tensor):
        raise TypeError(f"{name} must be a (B,) integer torch.Tensor of valid samples per row, "
                        f"got {type(lengths).__name__}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (valid samples per row), got {lengths.dtype}; "
                        f"use {name}.round().long()")
    B, T = wave.shape[0], wave.shape[-1]
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"{name} must have shape (B,) = ({B},), one value per row of wave, got {tuple(lengths.shape)}")
    if lengths.device != wave.device:
        raise ValueError(f"{name} is on {lengths.device} but wave is on {wave.device}; pass {name}.to(wave.device)")
    lengths = lengths.to(torch.long)
    if check_values and not bool(((lengths >= 1) & (lengths <= T)).all()):
        raise ValueError(f"{name} must lie in [1, T] = [1, {T}] (valid samples per row of wave); "
                         f"got min {int(lengths.min())}, max {int(lengths.max())}")
    return lengths


def valid_mask(lengths: Tensor, length: int) -> Tensor:
    """``(B, length)`` bool mask, True at the first ``lengths[b]`` samples of row ``b`` (an ``arange`` comparison)."""
    return torch.arange(length, device=lengths.device) < lengths.reshape(-1, 1)


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype computation runs in: float64 stays, everything else becomes float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pad_to_length(wave: Tensor, length: int) -> Tensor:
    """Zero-pad ``(B, T)`` at the end to at least ``length`` samples (the policy for clips shorter than a segment)."""
    short = length - wave.shape[-1]
    return F.pad(wave, (0, short)) if short > 0 else wave


def power_of_two_scale(wave: Tensor, limit: float, norm: Optional[Tensor] = None) -> Tensor:
    """``(B,)`` per row of ``wave`` ``(B, T)``: 1 where the row's L2 norm is at most ``limit``, else the power of two
    ``2 ** (e - 1)`` that brings the row's peak ``|x|`` into ``[1, 2)`` (NaN for a row holding NaN or Inf).

    Dividing a row by a power of two is exact, and a linear pipeline's output scales back exactly: a row too loud for
    float32 powers (``|x| ** 2`` overflows from ``|x| ~ 1.8e19``) is augmented divided by it and its log-mels shifted
    back (``log_mel(..., log_gain=)``). ``norm`` ``(B,)``: the rows' L2 norms, if already computed. Cost: one pass for
    the norm (unless given) and two for the peak; no host sync.
    """
    if norm is None:
        norm = torch.linalg.vector_norm(wave, dim=-1)
    peak = torch.maximum(wave.amax(dim=-1), -wave.amin(dim=-1))
    mantissa, _ = torch.frexp(peak)  # peak = mantissa * 2 ** e, mantissa in [0.5, 1)
    scale = peak / (2 * mantissa)  # exactly 2 ** (e - 1): the exact quotient is representable (2 ** e may not be)
    return torch.where(norm <= limit, torch.ones_like(scale), scale)


def _gather_windows(wave: Tensor, start: Tensor, width: int, rows: Optional[Tensor] = None,
                    limit: Optional[Tensor] = None) -> Tensor:
    """``out[b, ..., i] = wave[rows[b], start[b, ...] + i]`` with zeros outside ``[0, min(T, limit[b]))``.

    ``start``: integer tensor ``(B, ...)``; ``rows``: ``(B,)`` rows of ``wave`` to read (default: all, in order);
    ``limit``: ``(B,)`` long, the end of each output row's valid samples (indexed like ``start``: with ``rows``,
    ``limit[b]`` belongs to ``wave[rows[b]]``, i.e. pass ``lengths[rows]``); samples at or past it read as zeros,
    whatever ``wave`` holds there (default: none, only ``T``). Returns ``(B, ..., width)``. The limit costs a pass
    over the output (over the windows that cross it, on a CPU), never one over ``wave``.
    """
    T = wave.shape[-1]
    B = start.shape[0]
    if rows is None and B != wave.shape[0]:
        raise ValueError(f"start has {B} rows but wave has {wave.shape[0]}; pass rows= to read a subset")
    if cpu_branch(wave.device) and T >= width:
        # index whole windows out of a zero-copy unfold view (a row copy each, instead of an int64 index
        # per sample), then redo the few windows that cross the clip's ends (a host-side choice: no sync on a CPU)
        inner = start.clamp(0, T - width)
        index = torch.arange(B) if rows is None else rows
        out = wave.unfold(-1, width, 1)[index.reshape((B,) + (1,) * (start.ndim - 1)), inner]
        edge = (inner != start).reshape(B, -1).any(-1).nonzero().flatten()
        if len(edge):
            out[edge] = _gather_samples(wave[index[edge]], start[edge], width)
        if limit is not None:  # zero the tails of the windows that cross the limit (host-side choice, as above)
            valid = limit.to(torch.long).reshape((B,) + (1,) * (start.ndim - 1)) - start  # valid samples per window
            flat, valid = out.reshape(-1, width), valid.reshape(-1)
            cut = (valid < width).nonzero().flatten()
            if len(cut):
                flat[cut] = flat[cut].masked_fill(torch.arange(width) >= valid[cut, None], 0.0)
        return out
    return _gather_samples(wave if rows is None else wave[rows], start, width, limit)


def _gather_samples(wave: Tensor, start: Tensor, width: int, limit: Optional[Tensor] = None) -> Tensor:
    """:func:`_gather_windows` by an index per sample (any device, any window); ``limit`` ``(B,)`` as there."""
    B, T = wave.shape
    idx = start.unsqueeze(-1) + torch.arange(width, device=wave.device)
    end = T if limit is None else limit.to(torch.long).clamp_max(T).reshape((B,) + (1,) * start.ndim)
    inside = (idx >= 0) & (idx < end)
    flat = idx.clamp(0, T - 1).reshape(B, -1)
    out = torch.gather(wave, 1, flat).reshape(idx.shape)
    return out * inside.to(out.dtype)


def crop_segments(wave: Tensor, start: Tensor, length: int, lengths: Optional[Tensor] = None) -> Tensor:
    """Per-example segments ``wave[b, start[b] : start[b] + length]`` as ``(B, length)``; zeros past the end.

    ``lengths`` ``(B,)``: valid samples per row; samples at or past ``lengths[b]`` read as zeros (default: ``T``).
    """
    dev = wave.device
    limit = None if lengths is None else lengths.to(device=dev, dtype=torch.long)
    return _gather_windows(wave, start.to(device=dev, dtype=torch.long), length, limit=limit)


# ----------------------------------------------------------------------------------------------------------
# time stretch: phase vocoder with identity phase locking
# ----------------------------------------------------------------------------------------------------------
def stretched_length(length: Union[int, Tensor], rate: Tensor) -> Tensor:
    """Length ``ceil(T / rate)`` of a clip of ``T`` samples stretched by ``rate`` (rate > 1 is faster/shorter)."""
    return torch.ceil(length / rate.to(position_dtype(rate.device)) - 1e-9).to(torch.long)


def _wrap(phase: Tensor) -> Tensor:
    return torch.remainder(phase + math.pi, 2 * math.pi) - math.pi


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
    first = first.to(device=dev, dtype=torch.long)
    half = width // 2 if centre is None else int(centre)
    centres = first[:, None] + torch.arange(n_frames, device=dev) * hop_length + half
    src_first = torch.round(centres.to(rate.dtype) * rate[:, None]).to(torch.long) - half
    whole = wave.shape[-1] + 2 * width  # holds every window that reads the clip, at any rate (_frames_in_region)
    if max_rate is None:
        span = whole
    else:
        _check_rate_bound(rate, max_rate)
        span = min(math.ceil((n_frames - 1) * hop_length * max_rate) + width + 2, whole)
    limit = None if lengths is None else lengths.to(device=dev, dtype=torch.long)
    return _frames_at(wave, src_first, width, span, rows, limit)


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
    phase_a = torch.angle(spec0)
    omega_bin = 2 * math.pi * torch.arange(spec0.shape[-1], device=spec0.device, dtype=dtype) / n_fft
    omega = omega_bin + _wrap(torch.angle(spec1) - phase_a - omega_bin * d) / d  # rad/sample
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


# ----------------------------------------------------------------------------------------------------------
# filtering and noise
# ----------------------------------------------------------------------------------------------------------
def _fft_size(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


def fft_convolve(wave: Tensor, ir: Tensor) -> Tensor:
    """Linear convolution of each row with its own impulse response, cut to the input length.

    ``wave``: ``(..., T)``; ``ir``: ``(..., N)`` broadcastable to it. Returns ``(..., T)``: ``out[t] = sum_k
    ir[k] wave[t - k]``, i.e. ``numpy.convolve(wave, ir)[:T]``, so a unit impulse returns the input and the
    output is aligned with it (put the direct sound at index 0 of the IR; :class:`augcl.banks.RIRBank` does).
    Cost: three real FFTs of size ``next_pow2(T + N - 1)``.
    """
    dtype = work_dtype(wave.dtype)
    T, N = wave.shape[-1], ir.shape[-1]
    n = _fft_size(T + N - 1)
    spec = torch.fft.rfft(wave.to(dtype), n=n) * torch.fft.rfft(ir.to(dtype), n=n)
    return torch.fft.irfft(spec, n=n)[..., :T]


def add_noise(wave: Tensor, noise: Tensor, snr_db: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """``wave + g * noise`` with ``g`` per row so that ``10 log10(P_wave / P(g * noise)) = snr_db``.

    ``wave``, ``noise``: ``(B, T)``; ``snr_db``: ``(B,)``. Powers are mean squares over the row, or over the
    samples where ``valid`` ``(B, T)`` (bool) is True; then noise is added there only (the rest is unchanged).
    A silent row stays silent (g = 0); silent noise adds nothing.
    """
    dtype = work_dtype(wave.dtype)
    x, n = wave.to(dtype), noise.to(dtype)
    if valid is not None:
        n = n * valid.to(dtype)
    return torch.addcmul(x, noise_gain(x, n, snr_db, valid), n)  # no full-size temporary besides the output


def noise_gain(wave: Tensor, noise: Tensor, snr_db: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """The gain ``g`` ``(B, 1)`` of :func:`add_noise`: ``wave + g * noise`` is at ``snr_db``; 0 for silent noise.

    ``valid`` ``(B, T)`` bool: energies of signal and noise over those samples only (the same count in both, so the
    ratio of energies is the ratio of mean squares).
    """
    dtype = work_dtype(wave.dtype)
    x, n = wave.to(dtype), noise.to(dtype)
    if valid is not None:
        v = valid.to(device=x.device, dtype=dtype)
        x, n = x * v, n * v
    # energies: the row length cancels in the ratio of mean squares; norms make no full-size temporary
    e_signal = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square()
    e_noise = torch.linalg.vector_norm(n, dim=-1, keepdim=True).square()
    snr = snr_db.to(device=wave.device, dtype=dtype).reshape(-1, 1)
    gain = torch.sqrt(e_signal / (e_noise.clamp_min(torch.finfo(dtype).tiny) * torch.pow(10.0, snr / 10.0)))
    return torch.where(e_noise > 0, gain, 0.0)  # silent noise adds nothing (its gain would overflow)


# ----------------------------------------------------------------------------------------------------------
# level
# ----------------------------------------------------------------------------------------------------------
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


def colored_noise(white: Tensor, exponent: Tensor) -> Tensor:
    """Shape white noise ``(B, T)`` to a power spectrum ``∝ 1 / f**exponent`` per row; unit RMS output.

    exponent 0 is white, 1 pink, 2 brown (red), -1 blue, -2 violet. DC is removed. Cost: two FFTs of size T.
    """
    dtype = work_dtype(white.dtype)
    T = white.shape[-1]
    spec = torch.fft.rfft(white.to(dtype), dim=-1)
    freqs = torch.fft.rfftfreq(T, device=white.device, dtype=dtype)
    freqs = freqs.clamp_min(freqs[1] if T > 1 else 1.0)
    gain = freqs.pow(-0.5 * exponent.to(device=white.device, dtype=dtype).reshape(-1, 1))
    gain = gain * (torch.arange(gain.shape[-1], device=white.device) > 0)
    out = torch.fft.irfft(spec * gain, n=T, dim=-1)
    return out / out.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(torch.finfo(dtype).tiny)


def gather_ring(flat: Tensor, offsets: Tensor, lengths: Tensor, index: Tensor, start: Tensor, length: int) -> Tensor:
    """Read ``length`` samples per row from a bank stored as one flat tensor, looping each entry.

    Entry ``i`` of the bank is ``flat[offsets[i] : offsets[i] + lengths[i]]``. Row ``b`` reads entry
    ``index[b]`` from ``start[b]`` on, wrapping around at the entry's end. Returns ``(B, length)``.
    """
    n = lengths[index].unsqueeze(-1)
    pos = (start.unsqueeze(-1) + torch.arange(length, device=flat.device)) % n
    return flat[offsets[index].unsqueeze(-1) + pos]


# ----------------------------------------------------------------------------------------------------------
# log-mel front end
# ----------------------------------------------------------------------------------------------------------
def _hz_to_mel(f: Tensor, scale: str) -> Tensor:
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return torch.where(f >= min_log_hz, min_log_mel + torch.log(f.clamp_min(min_log_hz) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: Tensor, scale: str) -> Tensor:
    if scale == "htk":
        return 700.0 * (torch.pow(10.0, m / 2595.0) - 1.0)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: Optional[float] = None,
    *,
    mel_scale: str = "slaney",
    norm: Optional[str] = "slaney",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Triangular mel filters ``(n_fft // 2 + 1, n_mels)``, the convention of ``librosa.filters.mel``.

    ``mel_scale``: ``"slaney"`` (linear below 1 kHz, log above; librosa's default) or ``"htk"``.
    ``norm="slaney"`` scales each triangle to unit area (``2 / bandwidth_hz``); ``None`` leaves peaks at 1.
    """
    if mel_scale not in ("slaney", "htk"):
        raise ValueError(f"mel_scale must be 'slaney' or 'htk', got {mel_scale!r}")
    if norm not in ("slaney", None):
        raise ValueError(f"norm must be 'slaney' or None, got {norm!r}")
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}")
    fft_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, hi = _hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64), mel_scale)
    edges_hz = _mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64), mel_scale)
    width = edges_hz.diff()  # (n_mels + 1,)
    ramps = edges_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, F)
    lower = -ramps[:-2] / width[:-1, None]
    upper = ramps[2:] / width[1:, None]
    fb = torch.clamp(torch.minimum(lower, upper), min=0.0)  # (n_mels, F)
    if norm == "slaney":
        fb = fb * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return fb.T.contiguous().to(dtype)


def log_mel(
    wave: Tensor,
    filterbank: Tensor,
    window: Tensor,
    *,
    n_fft: int,
    hop_length: int,
    center: bool = True,
    power: float = 2.0,
    log_eps: float = 1e-6,
    log_mode: str = "offset",
    log_gain: Optional[Tensor] = None,
) -> Tensor:
    """Log-mel spectrogram ``(B, n_mels, frames)`` of ``(B, T)`` clips.

    ``center=True``: frames centred at ``t * hop`` after zero padding of ``n_fft // 2`` on both sides
    (librosa >= 0.10 and torch.stft with ``pad_mode="constant"``), ``1 + T // hop`` frames; the window
    (length ``win_length <= n_fft``) sits in the middle of the frame. ``center=False``: frames of
    ``win_length`` samples from ``t * hop``, zero-padded at the end to ``n_fft`` (``tf.signal.stft``, COLA),
    ``1 + (T - win_length) // hop`` frames. Value: ``log(mel + log_eps)`` (``log_mode="offset"``) or
    ``log(max(mel, log_eps))`` (``"clamp"``) where ``mel = filterbank.T @ |STFT| ** power``.

    ``log_gain`` ``(B,)``: the log-mel of the rows' mel energies times ``exp(log_gain)``, computed in the log domain
    (``logaddexp(log(mel) + log_gain, log(log_eps))``), so the product may exceed the dtype's range; rows with 0
    get exactly the value without it (see :func:`power_of_two_scale`).
    """
    dtype = work_dtype(wave.dtype)
    x = wave.to(dtype)
    win = window.to(device=x.device, dtype=dtype)
    if center:
        spec = torch.stft(x, n_fft, hop_length, win_length=win.shape[-1], window=win, center=True,
                          pad_mode="constant", return_complex=True)  # (B, F, frames)
    else:
        return log_mel_frames(x.unfold(-1, win.shape[-1], hop_length), filterbank, win, n_fft=n_fft, power=power,
                              log_eps=log_eps, log_mode=log_mode, log_gain=log_gain)
    return _mel_log(spec, filterbank, power, log_eps, log_mode, log_gain)


def _spectral_power(spec: Tensor, power: float) -> Tensor:
    """``|spec| ** power`` of a complex spectrum, from ``re² + im²`` (complex ``abs`` costs a ``hypot`` per bin: it was
    the largest single cost of the CPU log-mel; docs/guide.md)."""
    re, im = spec.real, spec.imag
    energy = torch.square(re).addcmul_(im, im)
    # |z| ** p = (re² + im²) ** (p / 2): |z|² overflows float32 from |z| ~ 1.8e19; PairAugmenter divides rows that loud
    # by a power of two first (power_of_two_scale) and adds the scale back in the log (log_mel's log_gain)
    return energy if power == 2.0 else energy.sqrt_() if power == 1.0 else energy.pow(power / 2)


def _mel_log(spec: Tensor, filterbank: Tensor, power: float, log_eps: float, log_mode: str,
             log_gain: Optional[Tensor] = None) -> Tensor:
    """``log`` of the mel energies of a complex spectrum ``(B, F, K)`` -> ``(B, n_mels, K)``, times ``exp(log_gain)``
    ``(B,)`` per row if given (see :func:`log_mel`)."""
    if log_mode not in ("offset", "clamp"):
        raise ValueError(f"log_mode must be 'offset' or 'clamp', got {log_mode!r}")
    pw = _spectral_power(spec, power)
    mel = torch.matmul(filterbank.to(device=pw.device, dtype=pw.dtype).T, pw)
    gained = None
    if log_gain is not None:
        g = log_gain.to(device=mel.device, dtype=mel.dtype).reshape([-1] + [1] * (mel.ndim - 1))
        floor = mel.new_full((), math.log(log_eps))  # filled on the device (new_tensor would copy from the host)
        scaled = torch.log(mel) + g  # -inf where mel is 0: then the floor
        gained = torch.logaddexp(scaled, floor) if log_mode == "offset" else torch.maximum(scaled, floor)
    out = torch.log(mel.add_(log_eps)) if log_mode == "offset" else torch.log(mel.clamp_min(log_eps))
    return out if gained is None else torch.where(g != 0, gained, out)


def log_mel_frames(
    frames: Tensor,
    filterbank: Tensor,
    window: Tensor,
    *,
    n_fft: int,
    power: float = 2.0,
    log_eps: float = 1e-6,
    log_mode: str = "offset",
    log_gain: Optional[Tensor] = None,
) -> Tensor:
    """Log-mel ``(B, n_mels, K)`` of analysis frames ``(B, K, win_length)`` (e.g. :func:`stretched_frames`).

    Each frame is multiplied by ``window`` and zero-padded at the end to ``n_fft``; otherwise as :func:`log_mel`
    with ``center=False``, which calls this on the frames ``unfold`` cuts.
    """
    dtype = work_dtype(frames.dtype)
    win = window.to(device=frames.device, dtype=dtype)
    return _log_mel_windowed(frames.to(dtype) * win, filterbank, n_fft, power, log_eps, log_mode, log_gain)


def _log_mel_windowed(windowed: Tensor, filterbank: Tensor, n_fft: int, power: float, log_eps: float,
                      log_mode: str, log_gain: Optional[Tensor] = None) -> Tensor:
    """:func:`log_mel_frames` of frames already multiplied by the window (a caller that owns fresh frames
    windows them in place: one full-size temporary fewer)."""
    spec = torch.fft.rfft(windowed, n=n_fft).transpose(-1, -2)
    return _mel_log(spec, filterbank, power, log_eps, log_mode, log_gain)


# ----------------------------------------------------------------------------------------------------------
# SpecAugment masks
# ----------------------------------------------------------------------------------------------------------
def mask_along_axis(spec: Tensor, start: Tensor, width: Tensor, axis: int, fill: Union[float, Tensor] = 0.0) -> Tensor:
    """Set ``spec[b, ..., start[b, j] : start[b, j] + width[b, j], ...]`` (along ``axis``) to ``fill``.

    ``spec``: ``(B, ...)``; ``start``, ``width``: integer ``(B,)`` or ``(B, n_masks)``; ``fill``: scalar or
    per-example ``(B,)``. Masks are built from ``arange`` comparisons (no loop); not in place.
    """
    B = spec.shape[0]
    axis = axis % spec.ndim
    size = spec.shape[axis]
    start = start.to(spec.device).reshape(B, -1, 1)
    width = width.to(spec.device).reshape(B, -1, 1)
    pos = torch.arange(size, device=spec.device)
    hit = ((pos >= start) & (pos < start + width)).any(dim=1)  # (B, size)
    shape = [B] + [1] * (spec.ndim - 1)
    shape[axis] = size
    hit = hit.reshape(shape)
    if isinstance(fill, Tensor):
        fill = fill.to(device=spec.device, dtype=spec.dtype).reshape([B] + [1] * (spec.ndim - 1))
    else:  # a Python number goes to the kernel as a scalar (a tensor made of it would be a host-to-device copy)
        fill = float(fill)
    return torch.where(hit, fill, spec)


def time_mask(spec: Tensor, start: Tensor, width: Tensor, fill: Union[float, Tensor] = 0.0) -> Tensor:
    """Time masks on the last axis of a ``(B, ..., n_mels, frames)`` spectrogram."""
    return mask_along_axis(spec, start, width, -1, fill)


def freq_mask(spec: Tensor, start: Tensor, width: Tensor, fill: Union[float, Tensor] = 0.0) -> Tensor:
    """Frequency masks on the mel axis (second to last) of a ``(B, ..., n_mels, frames)`` spectrogram."""
    return mask_along_axis(spec, start, width, -2, fill)
