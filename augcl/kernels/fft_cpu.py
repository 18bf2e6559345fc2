"""The log-mel's framing, real FFT, power and mel projection fused in one Numba kernel on the CPU (parallel over
clips, 16 frames of a clip at a time).

Replaces the frames, ``torch.fft.rfft`` and :func:`.mel_cpu.mel_energy` on float32: a B=128 batch's 24,576 windowed
frames (39 MB) and their complex spectrum (40 MB) no longer go through memory. A tile of 16 frames stays in the core's
cache from the clip's samples to the mel energies.

The FFT of ``n_fft`` real samples is the complex FFT of ``n_fft / 2`` points ``z[n] = x[2n] + i x[2n + 1]``, then
``X[k] = (Z[k] + conj Z[H - k]) / 2 - i W^k (Z[k] - conj Z[H - k]) / 2`` (``W = exp(-2 pi i / n_fft)``, ``H =
n_fft / 2``). The complex FFT is a mixed-radix Stockham autosort FFT (radices 4, 2, 3, 5; Govindaraju et al.,
"High performance discrete Fourier transforms on graphics processors", SC 2008) computed *across* the frames of a
tile: every butterfly is the same few operations on the 16 frames' values, written as operations on tuples of
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

#: frames per tile: one vector of V lanes
TILE = 16

#: lanes of one vector: one AVX2 register of float32. A tile's TILE = 16 frames are two vectors
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

@njit(cache=True, fastmath=FM)
def _radix2(sr, si, dr, di, NR, Ns, twr, twi, toff):
    for j in range(NR):
        jm = j % Ns
        d0 = (j - jm) * 2 + jm
        t = toff + jm * 2
        for c in range(0, TILE, V):
            a0r, a0i = _ld(sr, j, c), _ld(si, j, c)
            a1r, a1i = _twiddled(sr, si, j + NR, c, twr[t + 1], twi[t + 1])
            _st(dr, d0, c, _add(a0r, a1r))
            _st(di, d0, c, _add(a0i, a1i))
            _st(dr, d0 + Ns, c, _sub(a0r, a1r))
            _st(di, d0 + Ns, c, _sub(a0i, a1i))


@njit(cache=True, fastmath=FM)
def _radix3(sr, si, dr, di, NR, Ns, twr, twi, toff):
    h, s = np.float32(-0.5), np.float32(math.sqrt(3.0) / 2.0)
    one = np.float32(1.0)
    for j in range(NR):
        jm = j % Ns
        d0 = (j - jm) * 3 + jm
        t = toff + jm * 3
        for c in range(0, TILE, V):
            a0r, a0i = _ld(sr, j, c), _ld(si, j, c)
            a1r, a1i = _twiddled(sr, si, j + NR, c, twr[t + 1], twi[t + 1])
            a2r, a2i = _twiddled(sr, si, j + 2 * NR, c, twr[t + 2], twi[t + 2])
            pr, pi = _add(a1r, a2r), _add(a1i, a2i)
            qr, qi = _lin(a1r, s, a2r, -s), _lin(a1i, s, a2i, -s)  # sqrt(3)/2 (a1 - a2)
            mr, mi = _lin(a0r, one, pr, h), _lin(a0i, one, pi, h)  # a0 - (a1 + a2) / 2
            _st(dr, d0, c, _add(a0r, pr))
            _st(di, d0, c, _add(a0i, pi))
            _st(dr, d0 + Ns, c, _add(mr, qi))  # m - i q
            _st(di, d0 + Ns, c, _sub(mi, qr))
            _st(dr, d0 + 2 * Ns, c, _sub(mr, qi))  # m + i q
            _st(di, d0 + 2 * Ns, c, _add(mi, qr))


@njit(cache=True, fastmath=FM)
def _radix4(sr, si, dr, di, NR, Ns, twr, twi, toff):
    for j in range(NR):
        jm = j % Ns
        d0 = (j - jm) * 4 + jm
        t = toff + jm * 4
        for c in range(0, TILE, V):
            a0r, a0i = _ld(sr, j, c), _ld(si, j, c)
            a1r, a1i = _twiddled(sr, si, j + NR, c, twr[t + 1], twi[t + 1])
            a2r, a2i = _twiddled(sr, si, j + 2 * NR, c, twr[t + 2], twi[t + 2])
            a3r, a3i = _twiddled(sr, si, j + 3 * NR, c, twr[t + 3], twi[t + 3])
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
def _radix5(sr, si, dr, di, NR, Ns, twr, twi, toff):
    c1, c2 = np.float32(math.cos(2 * math.pi / 5)), np.float32(math.cos(4 * math.pi / 5))
    s1, s2 = np.float32(math.sin(2 * math.pi / 5)), np.float32(math.sin(4 * math.pi / 5))
    for j in range(NR):
        jm = j % Ns
        d0 = (j - jm) * 5 + jm
        t = toff + jm * 5
        for c in range(0, TILE, V):
            a0r, a0i = _ld(sr, j, c), _ld(si, j, c)
            x1r, x1i = _twiddled(sr, si, j + NR, c, twr[t + 1], twi[t + 1])
            x2r, x2i = _twiddled(sr, si, j + 2 * NR, c, twr[t + 2], twi[t + 2])
            x3r, x3i = _twiddled(sr, si, j + 3 * NR, c, twr[t + 3], twi[t + 3])
            x4r, x4i = _twiddled(sr, si, j + 4 * NR, c, twr[t + 4], twi[t + 4])
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
    is ``zr + i zi`` ``(H, TILE)``."""
    H = zr.shape[0]
    half = np.float32(0.5)
    for k in range(lo_bin, hi_bin):
        k1, k2 = k % H, (H - k) % H
        wr, wi = post_r[k] * half, post_i[k] * half
        for c in range(0, TILE, V):
            pr, pi, qr, qi = _ld(zr, k1, c), _ld(zi, k1, c), _ld(zr, k2, c), _ld(zi, k2, c)
            er, ei = _lin(pr, half, qr, half), _lin(pi, half, qi, -half)  # (Z[k] + conj Z[H-k]) / 2
            dr, di = _sub(pr, qr), _add(pi, qi)  # Z[k] - conj Z[H-k]
            # X = E + W (-i D) / 2 = E + (W / 2) (di - i dr)
            xr = _lin3(er, di, wr, dr, wi)
            xi = _lin3(ei, dr, -wr, di, wi)
            _st(pw, k, c, _energy(xr, xi))
        if power != 2.0:
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
    nonzero span only, the TILE frames' sums in registers."""
    zero = _zeros()
    for m in range(band_first.shape[0]):
        lo, o0 = band_first[m], band_offsets[m]
        a0, a1 = zero, zero
        for j in range(band_offsets[m + 1] - o0):
            w = weights[o0 + j]
            a0 = _madd(a0, _ld(pw, lo + j, 0), w)
            a1 = _madd(a1, _ld(pw, lo + j, V), w)
        if n_l == TILE:
            _st(out, m, k0, a0)
            _st(out, m, k0 + V, a1)
        else:
            for l in range(min(n_l, V)):
                out[m, k0 + l] = a0[l]
            for l in range(V, n_l):
                out[m, k0 + l] = a1[l - V]


@njit(parallel=True, cache=True, fastmath=FM)
def mel_at(x, first, limit, window, radices, offsets, twr, twi, post_r, post_i, band_first, band_offsets, weights,
           power, out):
    """``out[b, m, k] = sum_f w[m, f] |rfft(frame, n_fft)[f]| ** power`` over band ``m``'s span only, where ``frame =
    x[b, first[b, k] + i] * window[i]`` (zeros outside ``[0, min(T, limit[b]))``, zero-padded to ``n_fft = 2 H``).

    ``x`` ``(B, T)`` float32; ``first`` ``(B, K)`` int64; the plan (:func:`plan`) of ``n_fft``; the sparse filterbank
    (:func:`.mel_cpu.sparse_filterbank`); ``out`` ``(B, M, K)`` float32."""
    B, K = first.shape
    T = x.shape[1]
    H = post_r.shape[0] - 1
    M = band_first.shape[0]
    lo_bin, hi_bin = H + 1, 0
    for m in range(M):  # the bins any band reads
        n = band_offsets[m + 1] - band_offsets[m]
        if n > 0:
            lo_bin = min(lo_bin, band_first[m])
            hi_bin = max(hi_bin, band_first[m] + n)
    hi_bin = max(hi_bin, lo_bin)
    for b in prange(B):
        ar, ai = np.empty((H, TILE), np.float32), np.empty((H, TILE), np.float32)
        br, bi = np.empty((H, TILE), np.float32), np.empty((H, TILE), np.float32)
        pw = np.zeros((H + 1, TILE), np.float32)
        end = min(limit[b], T)
        for k0 in range(0, K, TILE):
            n_l = min(TILE, K - k0)
            _gather_tile(x[b], first[b, k0:k0 + n_l], n_l, end, window, ar, ai)
            if fft_tile(ar, ai, br, bi, radices, offsets, twr, twi) == 0:
                _real_power(ar, ai, post_r, post_i, lo_bin, hi_bin, power, pw)
            else:
                _real_power(br, bi, post_r, post_i, lo_bin, hi_bin, power, pw)
            _bands(pw, band_first, band_offsets, weights, out[b], k0, n_l)


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


def run(x: np.ndarray, first: np.ndarray, limit: np.ndarray, window: np.ndarray, n_fft: int, sparse: tuple,
        power: float, out: Optional[np.ndarray] = None) -> np.ndarray:
    """:func:`mel_at` on ``x`` ``(B, T)``, ``first`` ``(B, K)``, ``limit`` ``(B,)`` and ``window``; returns ``(B, M, K)``
    float32 (``out`` if given: it must be C-contiguous float32 of that shape). ``plan(n_fft)`` must not be None.

    The arguments are brought to the one signature the kernel is compiled for (C-contiguous float32 / int64), so a
    process compiles it once, with the SLP vectoriser on (:func:`_slp`; about a minute here, then Numba's cache)."""
    band_first, band_offsets, weights = sparse
    B, K = first.shape
    M = len(band_first)
    if out is None:
        out = np.empty((B, M, K), np.float32)
    elif out.dtype != np.float32 or out.shape != (B, M, K) or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writable C-contiguous float32 array of shape {(B, M, K)}, got "
                         f"{out.dtype} {out.shape}")
    c32, c64 = (lambda a: np.ascontiguousarray(a, np.float32)), (lambda a: np.ascontiguousarray(a, np.int64))
    args = (c32(x), c64(first), c64(limit), c32(window), *plan(n_fft), c64(band_first), c64(band_offsets),
            c32(weights), float(power), out)
    if not mel_at.signatures:
        with _slp():
            mel_at.compile(tuple(numba.typeof(a) for a in args))
    mel_at(*args)
    return out
