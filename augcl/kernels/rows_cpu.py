"""Two passes of PairAugmenter on the CPU that torch spends more than the memory traffic on (Numba, parallel over
rows).

* :func:`row_norms`: the input check's L2 norm of every clip (NaN/Inf and the rows too loud for float32 powers), one
  read of the batch at the memory's speed on every thread (``torch.linalg.vector_norm(x, dim=-1)`` took 4-5 ms of a
  B=128 x 10 s ``ts+mask`` call at 2 threads: ``python -m benchmarks.profile``). Sums of squares in float64, so a
  finite row's norm is within float32 rounding of torch's and never overflows below 1.3e154.
* :func:`fill_masks`: SpecAugment's masks written in place, only the masked rectangles: the reference's
  ``torch.where(hit, fill, spec)`` reads and writes the whole spectrogram plus two broadcast comparisons. The values
  are the same bits (each masked cell is the fill, every other cell untouched).
* :func:`mul_rows`: the RIR's spectral product, each clip's spectrum times its IR's row of the bank's spectra, in
  place: the reference gathers the rows first (``bank[index]``, a ``(B, F)`` complex copy: 8 MB a 64-clip chunk).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (first: every kernel's cache keyed on all kernel sources)

U0 = np.uint64(0)


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def row_norms(x, out):
    """``out[b] = sqrt(sum_t x[b, t] ** 2)`` (float64 sums; NaN/Inf propagate)."""
    for b in prange(x.shape[0]):
        row = x[b]
        e = 0.0
        for t in range(U0, np.uint64(row.shape[0])):
            v = np.float64(row[t])
            e += v * v
        out[b] = math.sqrt(e)


@njit(parallel=True, cache=True)
def fill_masks(spec, t_start, t_width, f_start, f_width, fill):
    """``spec`` ``(B, C, F, K)`` in place: ``spec[b, :, :, s:s + w] = fill[b]`` for each time mask ``(s, w)`` of row
    ``b`` and ``spec[b, :, s:s + w, :] = fill[b]`` for each frequency mask (clipped to the axis)."""
    B, C, F, K = spec.shape
    for b in prange(B):
        v = fill[b]
        for j in range(t_start.shape[1]):
            lo, hi = max(t_start[b, j], 0), min(t_start[b, j] + t_width[b, j], K)
            for c in range(C):
                for f in range(F):
                    for k in range(lo, hi):
                        spec[b, c, f, k] = v
        for j in range(f_start.shape[1]):
            lo, hi = max(f_start[b, j], 0), min(f_start[b, j] + f_width[b, j], F)
            for c in range(C):
                for f in range(lo, hi):
                    for k in range(K):
                        spec[b, c, f, k] = v


@njit(parallel=True, cache=True)
def mul_rows(spec, table, index):
    """``spec[b] *= table[index[b]]`` in place, complex ``(B, F)`` by ``(N, F)``. No fastmath: each product is
    ``(ac - bd) + i (ad + bc)`` with every operation rounded once (no fused multiply-add), whatever the threads;
    torch's ``mul_`` computes the same in its vector loop, its other elements through fused multiply-adds (an ulp
    apart there)."""
    for b in prange(spec.shape[0]):
        row, ir = spec[b], table[index[b]]
        for f in range(row.shape[0]):
            row[f] = row[f] * ir[f]
