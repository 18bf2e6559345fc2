"""The log-mel's power and mel projection as one Numba kernel on the CPU (parallel over rows).

Replaces :func:`augcl.mel._spectrum_mel` (the reference) after the real FFT: per row, ``|spec| ** power``
of every bin, then each mel band as the sum over only the bins its triangle covers (the log stays in torch, whose
vectorised log is faster than libm's one value at a time). The mel
filterbank is triangles that overlap only their neighbours: each bin lies in at most two bands, so the sparse sum
is ~2 multiply-adds per bin where the reference's dense matmul does ``n_mels`` (64 for the paper's front end: 30x
fewer), and the power spectrum is never materialised as a full-size temporary.

The terms summed are the reference's nonzero products (its zeros add exactly nothing), in another order: float32
rounding differs (tests/test_kernels.py bounds it).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (first: every kernel's cache keyed on all kernel sources)


def sparse_filterbank(filterbank: np.ndarray) -> tuple:
    """``(first, offsets, weights)`` of a dense filterbank ``(F, M)``: band ``m`` covers bins ``first[m] ...
    first[m] + (offsets[m + 1] - offsets[m]) - 1`` with ``weights[offsets[m]:offsets[m + 1]]`` (its nonzero span)."""
    F, M = filterbank.shape
    first = np.zeros(M, np.int64)
    offsets = np.zeros(M + 1, np.int64)
    spans = []
    for m in range(M):
        nz = np.flatnonzero(filterbank[:, m])
        lo, hi = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0)
        first[m] = lo
        spans.append(filterbank[lo:hi, m])
        offsets[m + 1] = offsets[m] + (hi - lo)
    weights = np.concatenate(spans) if spans else np.zeros(0)
    return first, offsets, weights.astype(filterbank.dtype)


#: frames per tile: one AVX-512 register of float32
TILE = 16


@njit(parallel=True, cache=True, fastmath={"contract", "arcp", "nsz"})
def mel_energy(spec, first, offsets, weights, power, out):
    """``out[b, m, k] = sum_f w[m, f] |spec[b, k, f]| ** power`` over band ``m``'s span only; ``spec`` ``(B, K, F)``
    complex, ``out`` ``(B, M, K)`` real (float32 sums for complex64, as the reference's matmul)."""
    B, K, F = spec.shape
    M = first.shape[0]
    lo_bin, hi_bin = F, 0
    for m in range(M):  # the bins any band reads
        n = offsets[m + 1] - offsets[m]
        if n > 0:
            lo_bin = min(lo_bin, first[m])
            hi_bin = max(hi_bin, first[m] + n)
    u0, tile = np.uint64(0), np.uint64(TILE)
    for b in prange(B):
        # TILE frames at a time, their power spectrum bin-major (F, TILE) in L1: each band is then a multiply-add of
        # whole TILE-wide rows (one vector op each) over the band's span, instead of a short scalar sum per frame
        pw = np.zeros((F, TILE), out.dtype)
        for k0 in range(0, K, TILE):
            n_k = min(TILE, K - k0)
            for kk in range(n_k):
                z = spec[b, k0 + kk]
                for f in range(lo_bin, hi_bin):
                    e = z[f].real * z[f].real + z[f].imag * z[f].imag
                    if power == 2.0:
                        pw[f, kk] = e
                    elif power == 1.0:
                        pw[f, kk] = math.sqrt(e)
                    else:
                        pw[f, kk] = e ** (0.5 * power)
            for m in range(M):
                lo, o0, n = first[m], offsets[m], offsets[m + 1] - offsets[m]
                acc = np.zeros(TILE, out.dtype)
                for j in range(n):
                    w = weights[o0 + j]
                    src = pw[lo + j]
                    for kk in range(u0, tile):  # unsigned: no wraparound branch, the loop vectorises
                        acc[kk] += w * src[kk]
                row = out[b, m, k0:k0 + n_k]
                for kk in range(u0, np.uint64(n_k)):
                    row[kk] = acc[kk]


def run(spec: np.ndarray, sparse: tuple, power: float, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`mel_energy` on a C-contiguous complex ``spec`` ``(B, K, F)``; returns ``(B, M, K)`` (``out`` if given)."""
    first, offsets, weights = sparse
    B, K, _ = spec.shape
    real = np.float64 if spec.dtype == np.complex128 else np.float32
    if out is None:
        out = np.empty((B, len(first), K), real)
    mel_energy(spec, first, offsets, weights.astype(real), float(power), out)
    return out
