"""The log-mel's analysis frames, windowed, in one pass on the CPU (Numba, parallel over rows).

* :func:`windows`: frames at any per-frame source positions (the stretched timeline's frames of
  :func:`augcl.vocoder.stretched_frames`, the vocoder's analysis frames), zeros outside ``[0, min(T, limit))``, times
  the window. Replaces the reference's gather (an index per window), the masking of windows that
  cross the clip's ends and the window product: three passes and two full-size temporaries.
* :func:`noisy_segments`: the anchor's chain up to the log-mel: the segment (zeros outside the clip), white noise
  from the row's seed (:func:`.noise_cpu.noise_row`), both energies over the segment's valid samples, and the gain
  that puts the noise at the row's SNR (:func:`augcl.noise.noise_gain`); the noise lives in a per-row scratch in the
  cache. :func:`noisy_frames` is the same with the segment's windowed frames as its output (for an ``n_fft`` the
  fused log-mel kernel, :mod:`.fft_cpu`, has no plan for).

* :func:`crop_rows`: segments of chosen rows copied into the same rows of an output (the unstretched rows of a
  stretched branch, beside the vocoder's rows: no crop of every row, copy and overwrite).

Float sums are float64 here and float32 in the reference: energies agree to float32 rounding.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (first: every kernel's cache keyed on all kernel sources)
from .noise_cpu import BLOCK, noise_row


#: loop indices are unsigned: Numba wraps negative signed indices around, a branch per access that keeps LLVM from
#: vectorising the loop
U0 = np.uint64(0)


@njit(cache=True, inline="always", fastmath={"contract", "nsz"})
def _windowed(src, window, o):
    """``o[i] = src[i] * window[i]`` (equal lengths)."""
    for i in range(U0, np.uint64(o.shape[0])):
        o[i] = src[i] * window[i]


@njit(cache=True, inline="always")
def _zero(o):
    for i in range(U0, np.uint64(o.shape[0])):
        o[i] = 0.0


@njit(cache=True, inline="always", fastmath={"contract", "nsz"})
def _window_at(row, f0, end, window, o):
    """``o[i] = row[f0 + i] * window[i]`` where ``0 <= f0 + i < end``, else 0 (``len(o) == len(window)``)."""
    W = o.shape[0]
    lo, hi = min(max(0, -f0), W), max(min(W, end - f0), 0)  # the window's samples inside [0, end)
    if hi <= lo:
        _zero(o)
        return
    _zero(o[:lo])
    _windowed(row[f0 + lo:f0 + hi], window[lo:hi], o[lo:hi])
    _zero(o[hi:])


@njit(parallel=True, cache=True, fastmath={"contract", "nsz"})
def windows(x, first, limit, window, out):
    """``out[b, k, i] = x[b, first[b, k] + i] * window[i]`` where ``0 <= first[b, k] + i < limit[b]``
    (``limit`` clipped to ``T``), else 0. ``x`` ``(B, T)``, ``first`` ``(B, K)`` int64, ``out`` ``(B, K, W)``."""
    B, K, W = out.shape
    T = x.shape[1]
    for b in prange(B):
        end = min(limit[b], T)
        row = x[b]
        for k in range(K):
            _window_at(row, first[b, k], end, window, out[b, k])


@njit(cache=True, inline="always")
def _crop_into(row, s0, end, dst):
    """``dst[i] = row[s0 + i]`` where ``0 <= s0 + i < end``, else 0 (the reference's crop,
    :func:`augcl.segment.crop_segments`, of one row); returns ``(lo, hi)``, the copied samples of ``dst``."""
    n = dst.shape[0]
    lo, hi = min(max(0, -s0), n), max(min(n, end - s0), 0)  # the segment's samples inside [0, end)
    hi = max(hi, lo)
    _zero(dst[:lo])
    src, part = row[s0 + lo:s0 + hi], dst[lo:hi]
    for i in range(U0, np.uint64(part.shape[0])):
        part[i] = src[i]
    _zero(dst[hi:])
    return lo, hi


@njit(cache=True, fastmath={"reassoc", "contract", "nsz"})  # not inlined: reassociation is for this sum alone
def _energy(v):
    e = 0.0
    for i in range(U0, np.uint64(v.shape[0])):
        e += np.float64(v[i]) * v[i]
    return e


@njit(cache=True, fastmath={"contract", "nsz"})
def _noisy_segment(x, b, start, limit, seeds, snr_db, applied, seg):
    """``seg`` (``n`` samples) := segment ``x[b, start[b] : start[b] + n]`` (zeros outside ``[0, min(T,
    limit[b]))``) plus, where ``applied[b]``, white noise of stream ``seeds[b]`` masked to the same valid samples at
    ``snr_db[b]`` over them."""
    n = seg.shape[0]
    lo, hi = _crop_into(x[b], start[b], min(limit[b], x.shape[1]), seg)
    valid = seg[lo:hi]
    if applied[b] and hi > lo:
        noise = np.empty(n, np.float32)
        noise_row(seeds[b], noise, np.empty(BLOCK, np.float32), np.empty(BLOCK, np.float32),
                  np.empty(BLOCK, np.int32))
        e_noise = _energy(noise[lo:hi])
        if e_noise > 0:
            g = np.float32(math.sqrt(_energy(valid) / (e_noise * 10.0 ** (snr_db[b] / 10.0))))
            nv = noise[lo:hi]
            for i in range(U0, np.uint64(valid.shape[0])):
                valid[i] += g * nv[i]


@njit(parallel=True, cache=True, fastmath={"contract", "nsz"})
def noisy_frames(x, start, limit, seeds, snr_db, applied, window, hop, out):
    """The windowed frames ``out`` ``(B, K, W)`` of :func:`noisy_segments`' segments of ``n = (K - 1) * hop + W``
    samples."""
    B, K, W = out.shape
    n = (K - 1) * hop + W
    for b in prange(B):
        seg = np.empty(n, np.float32)
        _noisy_segment(x, b, start, limit, seeds, snr_db, applied, seg)
        for k in range(K):
            _windowed(seg[k * hop:k * hop + W], window, out[b, k])


@njit(parallel=True, cache=True, fastmath={"contract", "nsz"})
def noisy_segments(x, start, limit, seeds, snr_db, applied, out):
    """``out[b]`` ``(B, n)``: segment ``x[b, start[b] : start[b] + n]`` (zeros outside ``[0, min(T, limit[b]))``)
    plus, where ``applied[b]``, white noise of stream ``seeds[b]`` masked to the same valid samples at ``snr_db[b]``
    over them."""
    for b in prange(out.shape[0]):
        _noisy_segment(x, b, start, limit, seeds, snr_db, applied, out[b])


@njit(parallel=True, cache=True, fastmath={"contract", "nsz"})
def analysis_frames(x, src_row, first, limit, window, d, out0, out1):
    """The vocoder's two analysis frames per synthesis frame: ``out0[r, k, i] = x[src_row[r], first[r, k] + i] *
    window[i]`` and ``out1`` the same ``d`` samples later, zeros outside ``[0, min(T, limit[r]))``."""
    R, K, W = out0.shape
    T = x.shape[1]
    for r in prange(R):
        end = min(limit[r], T)
        row = x[src_row[r]]
        for k in range(K):
            _window_at(row, first[r, k], end, window, out0[r, k])
            _window_at(row, first[r, k] + d, end, window, out1[r, k])


@njit(parallel=True, cache=True, fastmath={"contract", "nsz"})
def overlap_add(frames, window, inv_env, hop, offset, dst_row, out):
    """Weighted overlap-add of the synthesis frames ``frames`` ``(R, K, N)`` (times ``window``) placed ``hop`` apart,
    divided by the window's own overlap-add (``inv_env``: its reciprocal, over the whole ``(K - 1) * hop + N``), read
    from ``offset``: ``out[dst_row[r], t]`` for ``t < out.shape[1]`` (zeros where no frame reaches)."""
    R, K, N = frames.shape
    L = out.shape[1]
    span = (K - 1) * hop + N
    for r in prange(R):
        acc = np.zeros(span, np.float32)
        for k in range(K):
            _accumulate(frames[r, k], window, acc[k * hop:k * hop + N])
        dst = out[dst_row[r]]
        n = max(min(L, span - offset), 0)
        src, inv = acc[offset:offset + n], inv_env[offset:offset + n]
        for t in range(U0, np.uint64(n)):
            dst[t] = src[t] * inv[t]
        for t in range(np.uint64(n), np.uint64(L)):
            dst[t] = 0.0


@njit(cache=True, inline="always", fastmath={"contract", "nsz"})
def _accumulate(src, window, acc):
    for i in range(U0, np.uint64(acc.shape[0])):
        acc[i] += src[i] * window[i]


@njit(parallel=True, cache=True)
def crop_rows(x, rows, start, limit, out):
    """``out[rows[r], i] = x[rows[r], start[r] + i]`` where ``0 <= start[r] + i < min(T, limit[r])``, else 0, for
    ``i < out.shape[1]``: the reference's crop (:func:`augcl.segment.crop_segments`) of those rows, the same bits."""
    T = x.shape[1]
    for r in prange(rows.shape[0]):
        _crop_into(x[rows[r]], start[r], min(limit[r], T), out[rows[r]])
