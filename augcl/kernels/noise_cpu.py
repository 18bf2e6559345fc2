"""White Gaussian noise from per-row seeds as one Numba kernel on the CPU (parallel over rows, vectorised).

Computes exactly the numbers of :func:`augcl.noise.white_noise` (the reference): a counter-based generator (SplitMix64's
output function of the Weyl sequence ``seed + (i + 1) * golden``; each 64-bit output gives two 24-bit uniforms), each
uniform mapped to a normal by ``sqrt(2) erfinv(2 u - 1)``. The integers and the uniforms are bit-equal to the
reference; ``erfinv`` is Giles' single-precision approximation ("Approximating the erfinv function", GPU Computing
Gems, 2011) with ``log`` from its exponent and a series (so that the loop vectorises: libm's ``logf`` does not),
within 2e-6 of torch's ``erfinv`` over the whole range (tests/test_kernels.py). ``torch.randn`` draws from one
sequential generator; this one has no state: rows and blocks are independent, so it runs on every core.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (first: every kernel's cache keyed on all kernel sources)

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
U0 = np.uint64(0)
BLOCK = 512  # values per scratch block: a few KB, in L1; even (a block starts at an even value: noise_row)
LN2 = np.float32(0.6931471805599453)
SQRT2 = np.float32(1.4142135623730951)
SQRT2_BITS = 0x3FB504F3  # the float32 sqrt(2): a mantissa above it is halved (the series then converges fast)


@njit(inline="always")
def split_exponent(bits, expo, n):
    """The first ``n`` positive normal float32 ``v = m 2 ** e`` (their bits ``bits``, int32) split in place: ``bits``
    := those of the mantissa ``m`` in [0.71, 1.41) (one above sqrt(2) is halved: a log's series in ``m`` then converges
    fast), ``expo`` := ``e``. A loop that vectorises."""
    for t in range(n):
        ib = bits[t]
        e = (ib >> 23) - 127
        mb = (ib & 0x007FFFFF) | 0x3F800000
        if mb > SQRT2_BITS:
            mb -= 0x00800000
            e += 1
        expo[t] = e
        bits[t] = mb


@njit(cache=True, inline="always", fastmath={"contract", "nsz"})
def noise_row(key, out, x, arg, expo):
    """Normals ``0 ... len(out) - 1`` of stream ``key`` into ``out``; ``x``, ``arg`` (float32), ``expo`` (int32):
    scratch of :data:`BLOCK` values."""
    n = out.shape[0]
    one = np.float32(1.0)
    bits = arg.view(np.int32)
    for j0 in range(0, n, BLOCK):
        m = min(BLOCK, n - j0)
        # 2 u - 1 in (-1, 1), exact in float32 (|integer| < 2 ** 24): values j0 + 2 p and j0 + 2 p + 1 are the high
        # and low 24 bits of output j0 / 2 + p (j0 is even), one hash for both (a partner past m, when m is odd,
        # lands in x[m] < BLOCK and is not used)
        base = key + np.uint64(j0 // 2 + 1) * GOLDEN
        for p in range(U0, np.uint64((m + 1) // 2)):
            z = base + p * GOLDEN
            z = (z ^ (z >> np.uint64(30))) * MIX1
            z = (z ^ (z >> np.uint64(27))) * MIX2
            z = z ^ (z >> np.uint64(31))
            hi = np.int32(z >> np.uint64(40))
            lo = np.int32((z >> np.uint64(8)) & np.uint64(0xFFFFFF))
            x[np.uint64(2) * p] = np.float32(hi * 2 + 1 - 16777216) * np.float32(2.0 ** -24)
            x[np.uint64(2) * p + np.uint64(1)] = np.float32(lo * 2 + 1 - 16777216) * np.float32(2.0 ** -24)
        for t in range(m):  # (1 - x)(1 + x)
            xv = x[t]
            arg[t] = (one - xv) * (one + xv)
        split_exponent(bits, expo, m)  # (1 - x)(1 + x) = mantissa * 2 ** exponent, the mantissa in [0.71, 1.41)
        for t in range(m):
            mm = arg[t]
            s = (mm - one) / (mm + one)
            s2 = s * s
            log_m = np.float32(2.0) * s * (one + s2 * (np.float32(1 / 3) + s2 * (np.float32(0.2) + s2 * (
                np.float32(1 / 7) + s2 * np.float32(1 / 9)))))
            w = -(np.float32(expo[t]) * LN2 + log_m)
            # Giles' two branches, both evaluated (no branch in the vectorised loop)
            c = w - np.float32(2.5)
            p = np.float32(2.81022636e-08)
            p = np.float32(3.43273939e-07) + p * c
            p = np.float32(-3.5233877e-06) + p * c
            p = np.float32(-4.39150654e-06) + p * c
            p = np.float32(0.00021858087) + p * c
            p = np.float32(-0.00125372503) + p * c
            p = np.float32(-0.00417768164) + p * c
            p = np.float32(0.246640727) + p * c
            p = np.float32(1.50140941) + p * c
            r = np.sqrt(w) - np.float32(3.0)
            q = np.float32(-0.000200214257)
            q = np.float32(0.000100950558) + q * r
            q = np.float32(0.00134934322) + q * r
            q = np.float32(-0.00367342844) + q * r
            q = np.float32(0.00573950773) + q * r
            q = np.float32(-0.0076224613) + q * r
            q = np.float32(0.00943887047) + q * r
            q = np.float32(1.00167406) + q * r
            q = np.float32(2.83297682) + q * r
            out[j0 + t] = SQRT2 * (p if w < np.float32(5.0) else q) * x[t]


@njit(parallel=True, cache=True, fastmath={"contract", "nsz"})
def white_noise(seeds, out):
    """``out[b, j]``: normal ``j`` of row ``b``'s stream ``seeds[b]`` (uint64); ``out`` float32 ``(B, n)``."""
    for b in prange(out.shape[0]):
        noise_row(seeds[b], out[b], np.empty(BLOCK, np.float32), np.empty(BLOCK, np.float32),
                  np.empty(BLOCK, np.int32))


def run(seeds: np.ndarray, length: int) -> np.ndarray:
    """:func:`white_noise` ``(B, length)`` float32 for int64 ``seeds`` ``(B,)`` (read as uint64)."""
    out = np.empty((len(seeds), length), np.float32)
    white_noise(np.ascontiguousarray(seeds).view(np.uint64), out)
    return out
