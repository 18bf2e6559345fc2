"""The log-mel's framing, real FFT, power, mel projection and log fused in one Numba kernel on the CPU (parallel over
clips, 8 frames of a clip at a time).

Replaces the frames, ``torch.fft.rfft`` and :func:`.mel_cpu.mel_energy` on float32: a B=128 batch's 24,576 windowed
frames (39 MB) and their complex spectrum (40 MB) no longer go through memory. A tile of 8 frames stays in the core's
cache from the clip's samples to the mel energies.

The FFT of ``n_fft`` real samples is the complex FFT of ``n_fft / 2`` points ``z[n] = x[2n] + i x[2n + 1]``, then
``X[k] = (Z[k] + conj Z[H - k]) / 2 - i W^k (Z[k] - conj Z[H - k]) / 2`` (``W = exp(-2 pi i / n_fft)``, ``H =
n_fft / 2``). The complex FFT is a mixed-radix Stockham autosort FFT (radices 4, 2, 3, 5; Govindaraju et al.,
"High performance discrete Fourier transforms on graphics processors", SC 2008) computed *across* the frames of a
tile: every butterfly is the same few operations on the 8 frames' values, written as operations on tuples of
:data:`V` lanes that LLVM's SLP vectoriser turns into one vector instruction each (one AVX2 register of float32).
Numba leaves the SLP vectoriser off by default; :func:`run` compiles the kernel with it on (:func:`_slp`), and nothing
else: the setting is put back at once. Sizes whose half has a prime factor above 5 have no plan
(:func:`plan` is None): the caller keeps MKL.

float32 rounding differs from MKL's (another algorithm): tests/test_kernels_cpu.py bounds it against numpy's float64
FFT and against the reference log-mel.
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import Optional

import numba
import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (first: every kernel's cache keyed on all kernel sources)
from .frames_cpu import _noisy_segment
from .noise_cpu import split_exponent

#: frames per tile: one vector of V lanes. A tile's four FFT buffers and its power spectrum (n_fft 400: 5 x 200 x 8
#: float32, 32 KB) stay in a core's L1 cache; tiles of 16 frames (64 KB) spilled to L2 and were slower
TILE = 8

#: lanes of one vector: one AVX2 register of float32
V = 8
FM = {"contract", "nsz"}
U0 = np.uint64(0)
#: the radices the butterflies exist for, in the order plan() takes them
RADICES = (4, 2, 3, 5)


# --- lane vectors: tuples of V float32, one element per frame; each helper is one vector op after SLP -------------

@njit(inline="always", fastmath=FM)
def _ld(a, r, c):
    r, c = np.uint64(r), np.uint64(c)
    return (a[r, c], a[r, c + np.uint64(1)], a[r, c + np.uint64(2)], a[r, c + np.uint64(3)],
            a[r, c + np.uint64(4)], a[r, c + np.uint64(5)], a[r, c + np.uint64(6)], a[r, c + np.uint64(7)])


@njit(inline="always", fastmath=FM)
def _st(a, r, c, v):
    r, c = np.uint64(r), np.uint64(c)
    a[r, c], a[r, c + np.uint64(1)], a[r, c + np.uint64(2)], a[r, c + np.uint64(3)] = v[0], v[1], v[2], v[3]
    a[r, c + np.uint64(4)], a[r, c + np.uint64(5)], a[r, c + np.uint64(6)], a[r, c + np.uint64(7)] = v[4], v[5], v[6], v[7]


@njit(inline="always", fastmath=FM)
def _add(a, b):
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4], a[5] + b[5], a[6] + b[6], a[7] + b[7])


@njit(inline="always", fastmath=FM)
def _sub(a, b):
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3], a[4] - b[4], a[5] - b[5], a[6] - b[6], a[7] - b[7])


@njit(inline="always", fastmath=FM)
def _lin(a, s, b, t):
    """``a * s + b * t`` (``s``, ``t`` scalars)."""
    return (a[0] * s + b[0] * t, a[1] * s + b[1] * t, a[2] * s + b[2] * t, a[3] * s + b[3] * t,
            a[4] * s + b[4] * t, a[5] * s + b[5] * t, a[6] * s + b[6] * t, a[7] * s + b[7] * t)


@njit(inline="always", fastmath=FM)
def _lin3(a, b, s, c, t):
    """``a + b * s + c * t`` (``s``, ``t`` scalars)."""
    return (a[0] + b[0] * s + c[0] * t, a[1] + b[1] * s + c[1] * t, a[2] + b[2] * s + c[2] * t,
            a[3] + b[3] * s + c[3] * t, a[4] + b[4] * s + c[4] * t, a[5] + b[5] * s + c[5] * t,
            a[6] + b[6] * s + c[6] * t, a[7] + b[7] * s + c[7] * t)


@njit(inline="always")
def _zeros():
    z = np.float32(0.0)
    return (z, z, z, z, z, z, z, z)


@njit(inline="always", fastmath=FM)
def _madd(a, b, s):
    """``a + b * s`` (``s`` a scalar)."""
    return (a[0] + b[0] * s, a[1] + b[1] * s, a[2] + b[2] * s, a[3] + b[3] * s, a[4] + b[4] * s, a[5] + b[5] * s,
            a[6] + b[6] * s, a[7] + b[7] * s)


@njit(inline="always", fastmath=FM)
def _at(row, s, i, w):
    """``row[s[l] + i] * w`` of each lane ``l`` (``s`` the lanes' starts): a gather."""
    return (row[s[0] + i] * w, row[s[1] + i] * w, row[s[2] + i] * w, row[s[3] + i] * w, row[s[4] + i] * w,
            row[s[5] + i] * w, row[s[6] + i] * w, row[s[7] + i] * w)


@njit(inline="always", fastmath=FM)
def _energy(a, b):
    """``a * a + b * b``."""
    return (a[0] * a[0] + b[0] * b[0], a[1] * a[1] + b[1] * b[1], a[2] * a[2] + b[2] * b[2],
            a[3] * a[3] + b[3] * b[3], a[4] * a[4] + b[4] * b[4], a[5] * a[5] + b[5] * b[5],
            a[6] * a[6] + b[6] * b[6], a[7] * a[7] + b[7] * b[7])


@njit(inline="always", fastmath=FM)
def _twiddled(sr, si, row, c, wr, wi):
    """Lanes ``c .. c + V`` of row ``row`` times the twiddle ``wr + i wi``."""
    xr, xi = _ld(sr, row, c), _ld(si, row, c)
    return _lin(xr, wr, xi, -wi), _lin(xr, wi, xi, wr)


# --- one Stockham stage per radix: reads rows j + r * (N / R) of s, writes rows d0 + r * Ns of d ----------------
# (j = blk * Ns + jm, jm the twiddle index: Ns divides NR, so two loops give both without an integer division per
# butterfly, j % Ns; the twiddles are read once per jm, since the stores could alias them)

@njit(cache=True, fastmath=FM)
def _radix2(sr, si, dr, di, NR, Ns, twr, twi, toff):
    NB = NR // Ns
    for jm in range(Ns):
        t = toff + jm * 2
        w1r, w1i = twr[t + 1], twi[t + 1]
        for blk in range(NB):
            j = blk * Ns + jm
            d0 = blk * Ns * 2 + jm
            for c in range(0, TILE, V):
                a0r, a0i = _ld(sr, j, c), _ld(si, j, c)
                a1r, a1i = _twiddled(sr, si, j + NR, c, w1r, w1i)
                _st(dr, d0, c, _add(a0r, a1r))
                _st(di, d0, c, _add(a0i, a1i))
                _st(dr, d0 + Ns, c, _sub(a0r, a1r))
                _st(di, d0 + Ns, c, _sub(a0i, a1i))


@njit(cache=True, fastmath=FM)
def _radix3(sr, si, dr, di, NR, Ns, twr, twi, toff):
    h, s = np.float32(-0.5), np.float32(math.sqrt(3.0) / 2.0)
    one = np.float32(1.0)
    NB = NR // Ns
    for jm in range(Ns):
        t = toff + jm * 3
        w1r, w1i = twr[t + 1], twi[t + 1]
        w2r, w2i = twr[t + 2], twi[t + 2]
        for blk in range(NB):
            j = blk * Ns + jm
            d0 = blk * Ns * 3 + jm
            for c in range(0, TILE, V):
                a0r, a0i = _ld(sr, j, c), _ld(si, j, c)
                a1r, a1i = _twiddled(sr, si, j + NR, c, w1r, w1i)
                a2r, a2i = _twiddled(sr, si, j + 2 * NR, c, w2r, w2i)
                pr, pi = _add(a1r, a2r), _add(a1i, a2i)
                qr, qi = _lin(a1r, s, a2r, -s), _lin(a1i, s, a2i, -s)  # sqrt(3)/2 (a1 - a2)
                mr, mi = _lin(a0r, one, pr, h), _lin(a0i, one, pi, h)  # a0 - (a1 + a2) / 2
                _st(dr, d0, c, _add(a0r, pr))
                _st(di, d0, c, _add(a0i, pi))
                _st(dr, d0 + Ns, c, _add(mr, qi))  # m - i q
                _st(di, d0 + Ns, c, _sub(mi, qr))
                _st(dr, d0 + 2 * Ns, c, _sub(mr, qi))  # m + i q
                _st(di, d0 + 2 * Ns, c, _add(mi, qr))


@njit(inline="always", fastmath=FM)
def _radix4_butterfly(dr, di, d0, Ns, c, a0r, a0i, a1r, a1i, a2r, a2i, a3r, a3i):
    b0r, b0i = _add(a0r, a2r), _add(a0i, a2i)
    b1r, b1i = _sub(a0r, a2r), _sub(a0i, a2i)
    b2r, b2i = _add(a1r, a3r), _add(a1i, a3i)
    b3r, b3i = _sub(a1r, a3r), _sub(a1i, a3i)
    _st(dr, d0, c, _add(b0r, b2r))
    _st(di, d0, c, _add(b0i, b2i))
    _st(dr, d0 + Ns, c, _add(b1r, b3i))  # b1 - i b3
    _st(di, d0 + Ns, c, _sub(b1i, b3r))
    _st(dr, d0 + 2 * Ns, c, _sub(b0r, b2r))
    _st(di, d0 + 2 * Ns, c, _sub(b0i, b2i))
    _st(dr, d0 + 3 * Ns, c, _sub(b1r, b3i))  # b1 + i b3
    _st(di, d0 + 3 * Ns, c, _add(b1i, b3r))


@njit(cache=True, fastmath=FM)
def _radix4(sr, si, dr, di, NR, Ns, twr, twi, toff):
    if Ns == 1:  # the first stage: every twiddle is 1
        for j in range(NR):
            for c in range(0, TILE, V):
                _radix4_butterfly(dr, di, j * 4, 1, c, _ld(sr, j, c), _ld(si, j, c), _ld(sr, j + NR, c),
                                  _ld(si, j + NR, c), _ld(sr, j + 2 * NR, c), _ld(si, j + 2 * NR, c),
                                  _ld(sr, j + 3 * NR, c), _ld(si, j + 3 * NR, c))
        return
    NB = NR // Ns
    for jm in range(Ns):
        t = toff + jm * 4
        w1r, w1i = twr[t + 1], twi[t + 1]
        w2r, w2i = twr[t + 2], twi[t + 2]
        w3r, w3i = twr[t + 3], twi[t + 3]
        for blk in range(NB):
            j = blk * Ns + jm
            d0 = blk * Ns * 4 + jm
            for c in range(0, TILE, V):
                a0r, a0i = _ld(sr, j, c), _ld(si, j, c)
                a1r, a1i = _twiddled(sr, si, j + NR, c, w1r, w1i)
                a2r, a2i = _twiddled(sr, si, j + 2 * NR, c, w2r, w2i)
                a3r, a3i = _twiddled(sr, si, j + 3 * NR, c, w3r, w3i)
                _radix4_butterfly(dr, di, d0, Ns, c, a0r, a0i, a1r, a1i, a2r, a2i, a3r, a3i)


@njit(cache=True, fastmath=FM)
def _radix5(sr, si, dr, di, NR, Ns, twr, twi, toff):
    c1, c2 = np.float32(math.cos(2 * math.pi / 5)), np.float32(math.cos(4 * math.pi / 5))
    s1, s2 = np.float32(math.sin(2 * math.pi / 5)), np.float32(math.sin(4 * math.pi / 5))
    NB = NR // Ns
    for jm in range(Ns):
        t = toff + jm * 5
        w1r, w1i = twr[t + 1], twi[t + 1]
        w2r, w2i = twr[t + 2], twi[t + 2]
        w3r, w3i = twr[t + 3], twi[t + 3]
        w4r, w4i = twr[t + 4], twi[t + 4]
        for blk in range(NB):
            j = blk * Ns + jm
            d0 = blk * Ns * 5 + jm
            for c in range(0, TILE, V):
                a0r, a0i = _ld(sr, j, c), _ld(si, j, c)
                x1r, x1i = _twiddled(sr, si, j + NR, c, w1r, w1i)
                x2r, x2i = _twiddled(sr, si, j + 2 * NR, c, w2r, w2i)
                x3r, x3i = _twiddled(sr, si, j + 3 * NR, c, w3r, w3i)
                x4r, x4i = _twiddled(sr, si, j + 4 * NR, c, w4r, w4i)
                t1r, t1i = _add(x1r, x4r), _add(x1i, x4i)
                t2r, t2i = _add(x2r, x3r), _add(x2i, x3i)
                t3r, t3i = _sub(x1r, x4r), _sub(x1i, x4i)
                t4r, t4i = _sub(x2r, x3r), _sub(x2i, x3i)
                m1r, m1i = _lin3(a0r, t1r, c1, t2r, c2), _lin3(a0i, t1i, c1, t2i, c2)
                m2r, m2i = _lin3(a0r, t1r, c2, t2r, c1), _lin3(a0i, t1i, c2, t2i, c1)
                n1r, n1i = _lin(t3r, s1, t4r, s2), _lin(t3i, s1, t4i, s2)
                n2r, n2i = _lin(t3r, s2, t4r, -s1), _lin(t3i, s2, t4i, -s1)
                _st(dr, d0, c, _add(a0r, _add(t1r, t2r)))
                _st(di, d0, c, _add(a0i, _add(t1i, t2i)))
                _st(dr, d0 + Ns, c, _add(m1r, n1i))  # m1 - i n1
                _st(di, d0 + Ns, c, _sub(m1i, n1r))
                _st(dr, d0 + 4 * Ns, c, _sub(m1r, n1i))  # m1 + i n1
                _st(di, d0 + 4 * Ns, c, _add(m1i, n1r))
                _st(dr, d0 + 2 * Ns, c, _add(m2r, n2i))  # m2 - i n2
                _st(di, d0 + 2 * Ns, c, _sub(m2i, n2r))
                _st(dr, d0 + 3 * Ns, c, _sub(m2r, n2i))  # m2 + i n2
                _st(di, d0 + 3 * Ns, c, _add(m2i, n2r))


@njit(cache=True, fastmath=FM)
def fft_tile(ar, ai, br, bi, radices, offsets, twr, twi):
    """The complex FFT along axis 0 of a tile ``(H, TILE)`` (one frame per column) held in ``ar + i ai``, ``br, bi``
    its scratch; returns 0 where the result is in ``a``, 1 where it is in ``b``."""
    H = ar.shape[0]
    Ns, cur = 1, 0
    for s in range(radices.shape[0]):
        R = radices[s]
        sr, si, dr, di = (ar, ai, br, bi) if cur == 0 else (br, bi, ar, ai)
        if R == 4:
            _radix4(sr, si, dr, di, H // 4, Ns, twr, twi, offsets[s])
        elif R == 2:
            _radix2(sr, si, dr, di, H // 2, Ns, twr, twi, offsets[s])
        elif R == 3:
            _radix3(sr, si, dr, di, H // 3, Ns, twr, twi, offsets[s])
        else:
            _radix5(sr, si, dr, di, H // 5, Ns, twr, twi, offsets[s])
        cur = 1 - cur
        Ns *= R
    return cur


@njit(cache=True, fastmath=FM)
def _real_power(zr, zi, post_r, post_i, lo_bin, hi_bin, power, pw):
    """``pw[k] = |X[k]| ** power`` for bins ``lo_bin <= k < hi_bin`` of the real FFT whose half-length complex FFT
    is ``zr + i zi`` ``(H, TILE)``. Bins ``k`` and ``H - k`` read the same two values ``Z[k]``, ``Z[H - k]``: with
    ``E = (Z[k] + conj Z[H-k]) / 2``, ``D = Z[k] - conj Z[H-k]`` and ``W^(H-k) = -conj W^k``, ``X[k] = E + (W^k / 2)
    (-i D)`` and ``X[H-k] = conj E - conj((W^k / 2) (-i D))``: one pass computes both."""
    H = zr.shape[0]
    half = np.float32(0.5)
    for k in range(lo_bin, hi_bin):
        k2 = H - k  # the partner bin
        pair = k2 != k and lo_bin <= k2 < hi_bin
        if pair and k2 < k:  # done with its partner
            continue
        k1 = k - H if k >= H else k  # k % H and k2 % H (both in [0, H]) without a division
        kq = k2 - H if k2 >= H else k2
        wr, wi = post_r[k] * half, post_i[k] * half
        for c in range(0, TILE, V):
            pr, pi, qr, qi = _ld(zr, k1, c), _ld(zi, k1, c), _ld(zr, kq, c), _ld(zi, kq, c)
            er, ei = _lin(pr, half, qr, half), _lin(pi, half, qi, -half)  # E
            dr, di = _sub(pr, qr), _add(pi, qi)  # D
            ar = _lin(di, wr, dr, wi)  # (W / 2) (-i D) = (W / 2) (di - i dr)
            ai = _lin(di, wi, dr, -wr)
            _st(pw, k, c, _energy(_add(er, ar), _add(ei, ai)))
            if pair:
                _st(pw, k2, c, _energy(_sub(er, ar), _sub(ai, ei)))
    if power != 2.0:
        for k in range(lo_bin, hi_bin):
            for kk in range(U0, np.uint64(TILE)):
                e = pw[k, kk]
                pw[k, kk] = math.sqrt(e) if power == 1.0 else e ** (0.5 * power)


@njit(cache=True, fastmath=FM)
def _gather_tile(row, starts, n_l, end, window, ar, ai):
    """Columns ``l < n_l`` of the tile: frame ``l``, ``row[starts[l] + i] * window[i]`` (zero outside ``[0, end)`` and
    past the window), its even samples in ``ar``, its odd ones in ``ai``; the other columns zero."""
    H = ar.shape[0]
    W = window.shape[0]
    pairs = min(W, 2 * H) // 2
    for c in range(0, TILE, V):
        inside = c + V <= n_l
        if inside:
            for l in range(c, c + V):
                inside = inside and starts[l] >= 0 and starts[l] + W <= end
        if inside and W % 2 == 0:  # V whole frames inside the valid samples: a gather per sample pair, one vector
            st = (starts[c], starts[c + 1], starts[c + 2], starts[c + 3], starts[c + 4], starts[c + 5], starts[c + 6],
                  starts[c + 7])
            for n in range(pairs):
                _st(ar, n, c, _at(row, st, 2 * n, window[2 * n]))
                _st(ai, n, c, _at(row, st, 2 * n + 1, window[2 * n + 1]))
            zero = _zeros()
            for n in range(pairs, H):
                _st(ar, n, c, zero)
                _st(ai, n, c, zero)
            continue
        for l in range(c, c + V):  # frames at the clip's edges, or past n_l (zeros): sample by sample
            ul = np.uint64(l)
            s = starts[l] if l < n_l else end
            for n in range(H):
                i0, i1 = s + 2 * n, s + 2 * n + 1
                ar[n, ul] = row[i0] * window[2 * n] if 0 <= i0 < end and 2 * n < W else 0.0
                ai[n, ul] = row[i1] * window[2 * n + 1] if 0 <= i1 < end and 2 * n + 1 < W else 0.0


@njit(cache=True, fastmath=FM)
def _bands(pw, band_first, band_offsets, weights, out, k0, n_l):
    """``out[m, k0 + l] = sum_j weights[offsets[m] + j] pw[first[m] + j, l]`` for each band ``m`` and ``l < n_l``: its
    nonzero span only, the tile's sums in registers."""
    for c in range(0, TILE, V):
        for m in range(band_first.shape[0]):
            lo, o0 = band_first[m], band_offsets[m]
            a = _zeros()
            for j in range(band_offsets[m + 1] - o0):
                a = _madd(a, _ld(pw, lo + j, c), weights[o0 + j])
            if c + V <= n_l:
                _st(out, m, k0 + c, a)
            else:
                for l in range(max(n_l - c, 0)):
                    out[m, k0 + c + l] = a[l]


#: fdlibm's logf (e_logf.c): log(2) split so that ``e * LN2_HI`` is exact, and the series of ``log((1 + s) / (1 - s))``
LN2_HI = np.float32(6.9313812256e-01)
LN2_LO = np.float32(9.0580006145e-06)
LG = (np.float32(6.6666668653e-01), np.float32(4.0000000596e-01), np.float32(2.8571429849e-01),
      np.float32(2.2222198546e-01), np.float32(1.8183572590e-01), np.float32(1.5313838422e-01),
      np.float32(1.4798198640e-01))
FLT_MIN = np.float32(1.1754943508222875e-38)
FLT_MAX = np.float32(3.4028234663852886e+38)


# error_model="numpy": a float division by zero would give inf instead of raising (Python's model tests every divisor,
# a branch that kept the series' loop scalar); the divisor here, 2 + f, is at least 1.7
@njit(cache=True, fastmath=FM, error_model="numpy")
def log_inplace(v, mode, eps, expo):
    """``v`` (1-D float32) := ``log(v + eps)`` (``mode`` 1) or ``log(max(v, eps))`` (``mode`` 2; NaN stays NaN), within
    1 ulp of the exact log (tests/test_kernels_cpu.py): fdlibm's ``logf`` (``v = (1 + f) 2 ** e`` with ``1 + f`` in
    [0.71, 1.41), ``log(1 + f) = f - (f² / 2 - s (f² / 2 + R(s²)))``, ``s = f / (2 + f)``), written as three loops that
    vectorise (libm's ``logf`` does not). A ``v`` that is 0, subnormal, infinite or NaN sends the whole array to libm's
    ``log`` (its exact special values). ``expo``: int32 scratch of ``v``'s length."""
    n = v.shape[0]
    special = False
    for i in range(n):
        a = v[i] + eps if mode == 1 else (eps if v[i] < eps else v[i])
        v[i] = a
        special |= not (a >= FLT_MIN and a <= FLT_MAX)
    if special:
        for i in range(n):
            v[i] = np.log(v[i])
        return
    split_exponent(v.view(np.int32), expo, n)  # v = (1 + f) * 2 ** exponent, 1 + f in [0.71, 1.41)
    half = np.float32(0.5)
    for i in range(n):
        f = v[i] - np.float32(1.0)
        s = f / (np.float32(2.0) + f)
        z = s * s
        w = z * z
        r = z * (LG[0] + w * (LG[2] + w * (LG[4] + w * LG[6]))) + w * (LG[1] + w * (LG[3] + w * LG[5]))
        hfsq = half * f * f
        e = np.float32(expo[i])
        v[i] = e * LN2_HI - ((hfsq - (s * (hfsq + r) + e * LN2_LO)) - f)


@njit(parallel=True, cache=True, fastmath=FM)
def log_rows(v, mode, eps):
    """:func:`log_inplace` of each row of ``v`` ``(B, n)`` float32, parallel over rows."""
    for b in prange(v.shape[0]):
        log_inplace(v[b], mode, eps, np.empty(v.shape[1], np.int32))


@njit(cache=True)
def _bin_span(band_first, band_offsets, H):
    """``(lo, hi)``: the bins any band reads."""
    lo_bin, hi_bin = H + 1, 0
    for m in range(band_first.shape[0]):
        n = band_offsets[m + 1] - band_offsets[m]
        if n > 0:
            lo_bin = min(lo_bin, band_first[m])
            hi_bin = max(hi_bin, band_first[m] + n)
    return lo_bin, max(hi_bin, lo_bin)


@njit(cache=True, fastmath=FM)
def _mel_row(row, starts, end, window, radices, offsets, twr, twi, post_r, post_i, band_first, band_offsets, weights,
             power, log_mode, log_eps, out):
    """One clip of :func:`mel_at`: ``out`` ``(M, K)`` from ``row``'s frames at ``starts`` ``(K,)`` (zeros outside ``[0,
    end)``), tile by tile in a scratch that stays in the cache."""
    K = out.shape[1]
    H = post_r.shape[0] - 1
    lo_bin, hi_bin = _bin_span(band_first, band_offsets, H)
    ar, ai = np.empty((H, TILE), np.float32), np.empty((H, TILE), np.float32)
    br, bi = np.empty((H, TILE), np.float32), np.empty((H, TILE), np.float32)
    pw = np.zeros((H + 1, TILE), np.float32)
    for k0 in range(0, K, TILE):
        n_l = min(TILE, K - k0)
        _gather_tile(row, starts[k0:k0 + n_l], n_l, end, window, ar, ai)
        if fft_tile(ar, ai, br, bi, radices, offsets, twr, twi) == 0:
            _real_power(ar, ai, post_r, post_i, lo_bin, hi_bin, power, pw)
        else:
            _real_power(br, bi, post_r, post_i, lo_bin, hi_bin, power, pw)
        _bands(pw, band_first, band_offsets, weights, out, k0, n_l)
    if log_mode != 0:  # the clip's mel energies, still in the cache
        log_inplace(out.reshape(-1), log_mode, np.float32(log_eps), np.empty(out.size, np.int32))


@njit(parallel=True, cache=True, fastmath=FM)
def mel_at(x, first, limit, window, radices, offsets, twr, twi, post_r, post_i, band_first, band_offsets, weights,
           power, log_mode, log_eps, out):
    """``out[b, m, k] = sum_f w[m, f] |rfft(frame, n_fft)[f]| ** power`` over band ``m``'s span only, where ``frame =
    x[b, first[b, k] + i] * window[i]`` (zeros outside ``[0, min(T, limit[b]))``, zero-padded to ``n_fft = 2 H``);
    ``log_mode`` 1 or 2: its log instead, ``log(out + log_eps)`` or ``log(max(out, log_eps))`` (:func:`log_inplace`).

    ``x`` ``(B, T)`` float32; ``first`` ``(B, K)`` int64; the plan (:func:`plan`) of ``n_fft``; the sparse filterbank
    (:func:`.mel_cpu.sparse_filterbank`); ``out`` ``(B, M, K)`` float32."""
    T = x.shape[1]
    for b in prange(first.shape[0]):
        _mel_row(x[b], first[b], min(limit[b], T), window, radices, offsets, twr, twi, post_r, post_i, band_first,
                 band_offsets, weights, power, log_mode, log_eps, out[b])


@njit(parallel=True, cache=True, fastmath=FM)
def noisy_mel(x, start, limit, seeds, snr_db, applied, hop, window, radices, offsets, twr, twi, post_r, post_i,
              band_first, band_offsets, weights, power, log_mode, log_eps, out):
    """:func:`mel_at` of the frames ``k * hop`` of :func:`.frames_cpu.noisy_segments`' segment of row ``b`` (``n = (K -
    1) * hop + len(window)`` samples from ``start[b]``, white noise of stream ``seeds[b]`` at ``snr_db[b]`` where
    ``applied[b]``), the segment made in a per-row scratch that stays in the cache: the same numbers as the two
    kernels one after the other, without the batch's segments going through memory (a B=128 batch's 8 MB, which the
    allocator maps afresh on every call)."""
    K = out.shape[2]
    n = (K - 1) * hop + window.shape[0]
    starts = np.arange(K) * hop
    for b in prange(out.shape[0]):
        seg = np.empty(n, np.float32)
        _noisy_segment(x, b, start, limit, seeds, snr_db, applied, seg)
        _mel_row(seg, starts, n, window, radices, offsets, twr, twi, post_r, post_i, band_first, band_offsets, weights,
                 power, log_mode, log_eps, out[b])


@functools.lru_cache(maxsize=None)
def plan(n_fft: int) -> Optional[tuple]:
    """The radices, twiddles and real-FFT post-twiddles for frames of ``n_fft`` samples, or None where ``n_fft`` is odd
    or its half has a prime factor above 5 (no butterfly for it)."""
    if n_fft < 2 or n_fft % 2:
        return None
    H, radices = n_fft // 2, []
    for r in RADICES:
        while H % r == 0:
            radices.append(r)
            H //= r
    if H != 1:
        return None
    H = n_fft // 2
    tw_r, tw_i, offs, ns = [], [], [], 1
    for R in radices:
        offs.append(len(tw_r))
        angles = -2.0 * np.pi * np.arange(R)[None, :] * np.arange(ns)[:, None] / (ns * R)  # (ns, R)
        tw_r.extend(np.cos(angles).ravel())
        tw_i.extend(np.sin(angles).ravel())
        ns *= R
    post = np.exp(-2j * np.pi * np.arange(H + 1) / n_fft)
    return (np.array(radices, np.int64), np.array(offs, np.int64), np.array(tw_r, np.float32),
            np.array(tw_i, np.float32), post.real.astype(np.float32), post.imag.astype(np.float32))


_slp_lock = threading.Lock()


@contextlib.contextmanager
def _slp():
    """Numba's SLP vectoriser on while a kernel of this module compiles (it reads the setting when it builds a pass
    manager, i.e. per compilation; a kernel loaded from the cache does not compile)."""
    with _slp_lock:
        before = numba.config.SLP_VECTORIZE
        numba.config.SLP_VECTORIZE = 1
        try:
            yield
        finally:
            numba.config.SLP_VECTORIZE = before


#: ``log=`` of :func:`run`: the log_mode of :class:`augcl.MelConfig` -> mel_at's ``log_mode``
LOG_MODES = {"offset": 1, "clamp": 2}


def run(x: np.ndarray, first: np.ndarray, limit: np.ndarray, window: np.ndarray, n_fft: int, sparse: tuple,
        power: float, out: Optional[np.ndarray] = None, log: Optional[tuple] = None) -> np.ndarray:
    """:func:`mel_at` on ``x`` ``(B, T)``, ``first`` ``(B, K)``, ``limit`` ``(B,)`` and ``window``; returns ``(B, M, K)``
    float32 (``out`` if given: it must be C-contiguous float32 of that shape). ``plan(n_fft)`` must not be None.
    ``log`` ``(log_eps, log_mode)`` (``"offset"`` or ``"clamp"``): the log-mels of :func:`augcl.functional.log_of_mel`
    instead of the energies.

    The arguments are brought to the one signature the kernel is compiled for (C-contiguous float32 / int64), so a
    process compiles it once, with the SLP vectoriser on (:func:`_slp`; about a minute here, then Numba's cache)."""
    B, K = first.shape
    out, log_mode, log_eps = _out_and_log(out, (B, len(sparse[0]), K), log)
    _call(mel_at, (_f32(x), _i64(first), _i64(limit), _f32(window), *_tables(n_fft, sparse), float(power), log_mode,
                   log_eps, out))
    return out


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32)


def _i64(a) -> np.ndarray:
    return np.ascontiguousarray(a, np.int64)


def _tables(n_fft: int, sparse: tuple) -> tuple:
    """The kernels' plan (:func:`plan`) and sparse filterbank arguments, in their one signature's types."""
    band_first, band_offsets, weights = sparse
    return (*plan(n_fft), _i64(band_first), _i64(band_offsets), _f32(weights))


def _out_and_log(out: Optional[np.ndarray], shape: tuple, log: Optional[tuple]) -> tuple:
    """``(out, log_mode, log_eps)`` for a kernel writing ``shape`` float32: ``out`` checked (a writable C-contiguous
    float32 array of that shape; the kernel never writes past it) or made; ``log`` ``(log_eps, log_mode)`` or None."""
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.dtype != np.float32 or out.shape != shape or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writable C-contiguous float32 array of shape {shape}, got "
                         f"{out.dtype} {out.shape}")
    return (out, 0, 0.0) if log is None else (out, LOG_MODES[log[1]], float(log[0]))


def _call(kernel, args) -> None:
    """``kernel(*args)``, compiled for these arguments' types with SLP (:func:`_slp`) on its first call."""
    if not kernel.signatures:
        with _slp():
            kernel.compile(tuple(numba.typeof(a) for a in args))
    kernel(*args)


def run_noisy(x: np.ndarray, start: np.ndarray, limit: np.ndarray, seeds: np.ndarray, snr_db: np.ndarray,
              applied: np.ndarray, hop: int, window: np.ndarray, n_fft: int, sparse: tuple, power: float, frames: int,
              out: Optional[np.ndarray] = None, log: Optional[tuple] = None) -> np.ndarray:
    """:func:`noisy_mel` ``(B, M, frames)`` float32 (into ``out`` if given, as in :func:`run`): ``x`` ``(B, T)``,
    ``start``, ``limit`` ``(B,)`` int64, ``seeds`` uint64, ``snr_db`` float64, ``applied`` bool; ``log`` as in
    :func:`run`. One signature, compiled once with SLP."""
    out, log_mode, log_eps = _out_and_log(out, (x.shape[0], len(sparse[0]), frames), log)
    _call(noisy_mel, (_f32(x), _i64(start), _i64(limit), np.ascontiguousarray(seeds, np.uint64),
                      np.ascontiguousarray(snr_db, np.float64), np.ascontiguousarray(applied, np.bool_), int(hop),
                      _f32(window), *_tables(n_fft, sparse), float(power), log_mode, log_eps, out))
    return out
