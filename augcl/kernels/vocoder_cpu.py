"""The phase-locked vocoder's phase step as one Numba kernel on the CPU (parallel over examples).

Replaces :func:`augcl.functional._vocoder_phase` (the reference): per example, one pass over the frames in
order (the instantaneous-frequency phase accumulation is a scan over frames), and per frame the magnitudes,
the peaks (a bin not exceeded by its two neighbours on either side, above ``1e-6`` of the frame's largest
magnitude), each bin's nearest peak (ties go left) and the locked spectrum. Nothing of size ``(B, K, F)`` is
materialised besides the output, and it does the same arithmetic with less trigonometry:

* the phase advance ``wrap(angle(spec1) - angle(spec0) - w d)`` is ``angle(spec1 * conj(spec0) * exp(-i w d))``:
  one ``atan2`` per bin instead of two;
* the analysis phase ``angle(spec0)`` is needed only at peaks (and in the first frame);
* the locked bin ``polar(|spec0[f]|, phase_s[p] + phase_a[f] - phase_a[p])`` is ``spec0[f] * exp(i (phase_s[p]
  - phase_a[p]))``: sin/cos only at peaks;
* for float32 spectra, atan2 is a polynomial (4e-8 rad, below float32's rounding of pi) and the phase wrap uses
  a floor instead of fmod; float64 keeps libm's atan2 and fmod and equals the reference bin for bin.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import _numba_cache  # noqa: F401  (first: every kernel's cache keyed on all kernel sources)


@njit(cache=True, inline="always")
def _wrap(x, exact=True):
    """``torch.remainder(x + pi, 2 pi) - pi`` as torch computes it (fmod, then shift: the same side of +-pi), or
    (not ``exact``: float32) with a floor instead of the slower fmod, equal to rounding."""
    if exact:
        m = np.fmod(x + math.pi, 2.0 * math.pi)
        if m < 0:
            m += 2.0 * math.pi
        return m - math.pi
    y = x + math.pi
    m = y - 2.0 * math.pi * math.floor(y * (0.5 / math.pi))
    if m >= 2.0 * math.pi:
        m -= 2.0 * math.pi
    return m - math.pi


#: atan(a) = a * P(a²) on [0, 1], P of degree 7: max error 3.7e-8 rad (float32's rounding of pi is 8.7e-8)
_ATAN = (0.9999993356214262, -0.3332986087340988, 0.1994656622998811, -0.13908631182195058,
         0.09642199428872957, -0.05591233606309358, 0.021862954711268423, -0.0040545643798723385)


@njit(cache=True, inline="always")
def _angle(y, x):
    """``math.atan2(y, x)``, but 0 at ``x = y = 0`` whatever the zeros' signs (``atan2(0, -0)`` is pi), as the
    reference's :func:`augcl.vocoder._angle`: a silent frame's zeros have the FFT's signs, not the signal's."""
    return 0.0 if x == 0.0 and y == 0.0 else math.atan2(y, x)


@njit(cache=True, inline="always")
def _atan2(y, x, exact):
    """``math.atan2`` (``exact``, the float64 kernel) or a polynomial with octant folding, 4e-8 rad (float32); both
    0 at a zero, whatever its signs (:func:`_angle`; the polynomial's octant tests are ``< 0``, false at -0.0).

    libm's atan2 was the float32 kernel's largest cost; the polynomial is a few multiply-adds."""
    if exact:
        return _angle(y, x)
    ax, ay = abs(x), abs(y)
    hi, lo = max(ax, ay), min(ax, ay)
    if hi == 0.0:
        return 0.0
    a = lo / hi
    z = a * a
    c0, c1, c2, c3, c4, c5, c6, c7 = _ATAN
    r = a * (c0 + z * (c1 + z * (c2 + z * (c3 + z * (c4 + z * (c5 + z * (c6 + z * c7)))))))
    if ay > ax:
        r = 0.5 * math.pi - r
    if x < 0.0:
        r = math.pi - r
    return -r if y < 0.0 else r


@njit(parallel=True, cache=True, fastmath={"contract", "arcp", "nsz"})
def phase_lock(spec0, spec1, n_fft, hop, out, mag, omega_prev, acc, pa0, nearest, omega_bin, rot_d, rot, exact):
    """``out[b, k, f]``: the synthesis spectra; ``omega_bin[f] = 2 pi f / n_fft``, ``rot_d[f] = exp(-i omega_bin[f]
    d)``; the rest is scratch ``(B, F)``."""
    B, K, nb = spec0.shape
    d = max(n_fft // 8, 1)
    inv_d = 1.0 / d
    half_hop = 0.5 * hop
    nyquist = n_fft // 2 if n_fft % 2 == 0 else -1
    for b in prange(B):
        for k in range(K):
            mx = 0.0
            for f in range(nb):
                z = spec0[b, k, f]
                m = abs(z)  # hypot, as torch's abs: equal magnitudes (a flat spectrum) tie as in the reference
                mag[b, f] = m
                if m > mx or m != m:  # a NaN magnitude is the maximum (the frame has no peak), as the reference's amax
                    mx = m
                z1 = spec1[b, k, f]
                c = z1 * z.conjugate() * rot_d[f]
                if f == 0 or f == nyquist:  # real bins advance at their bin frequency, as in the reference
                    adv = 0.0
                elif c.real == 0.0 and c.imag == 0.0:  # a silent frame: angle(0) = 0, as the reference's _angle
                    adv = _wrap(_angle(z1.imag, z1.real) - _angle(z.imag, z.real) - omega_bin[f] * d)
                else:
                    adv = _atan2(c.imag, c.real, exact)
                    if adv >= math.pi:  # atan2 is in (-pi, pi], the reference's wrap in [-pi, pi): a real
                        adv = -math.pi  # negative c (frames d apart) must agree
                om = omega_bin[f] + adv * inv_d
                if k == 0:
                    acc[b, f] = 0.0
                    pa0[b, f] = _atan2(z.imag, z.real, exact)
                else:
                    acc[b, f] += _wrap(half_hop * (om + omega_prev[b, f]), exact)
                omega_prev[b, f] = om
            floor = mx * 1e-6
            # nearest peak: a left-to-right pass records the last peak, a right-to-left pass picks the closer one
            last = -1
            for f in range(nb):
                m = mag[b, f]
                if (m > floor and (f < 1 or mag[b, f - 1] <= m) and (f < 2 or mag[b, f - 2] <= m)
                        and (f + 1 >= nb or mag[b, f + 1] <= m) and (f + 2 >= nb or mag[b, f + 2] <= m)):
                    last = f
                    z = spec0[b, k, f]
                    th = pa0[b, f] + acc[b, f] - _atan2(z.imag, z.real, exact)
                    rot[b, f] = complex(math.cos(th), math.sin(th))
                nearest[b, f] = last
            nxt = -1
            for f in range(nb - 1, -1, -1):
                left = nearest[b, f]
                if left == f:
                    nxt = f
                if left < 0 and nxt < 0:  # no peak in the frame: the bin keeps its own synthesis phase
                    z = spec0[b, k, f]
                    th = pa0[b, f] + acc[b, f] - _atan2(z.imag, z.real, exact)
                    rot[b, f] = complex(math.cos(th), math.sin(th))
                    left = f
                elif left < 0 or (nxt >= 0 and nxt - f < f - left):
                    left = nxt
                out[b, k, f] = spec0[b, k, f] * rot[b, left]


def run(spec0: np.ndarray, spec1: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Allocate the output and scratch and run :func:`phase_lock` on C-contiguous complex arrays ``(B, K, F)``."""
    B, K, nb = spec0.shape
    real = np.float64 if spec0.dtype == np.complex128 else np.float32
    d = max(n_fft // 8, 1)
    omega_bin = 2 * np.pi * np.arange(nb) / n_fft
    rot_d = np.exp(-1j * omega_bin * d).astype(spec0.dtype)
    out = np.empty_like(spec0)
    mag, omega_prev, pa0 = (np.empty((B, nb), real) for _ in range(3))
    acc, nearest, rot = np.empty((B, nb), np.float64), np.empty((B, nb), np.int64), np.empty((B, nb), spec0.dtype)
    if spec0.dtype == np.complex64:
        phase_lock_f32(spec0, spec1, n_fft, hop, out, omega_bin, rot_d, _both_silent(omega_bin, d))
        return out
    phase_lock(spec0, spec1, n_fft, hop, out, mag, omega_prev, acc, pa0, nearest, omega_bin, rot_d, rot,
               spec0.dtype == np.complex128)
    return out


def _both_silent(omega_bin: np.ndarray, d: int) -> np.ndarray:
    """The advance of a bin silent in both frames (digital silence, common in real recordings), float32 ``(F,)``: the
    reference's ``wrap(angle(0) - angle(0) - omega d)``, rounded as the kernel's silent bins are (``omega d``, then
    ``+ pi``, then fmod, in float64), which the float32 kernel reads instead of libm's fmod and two atan2 per such bin. Made here,
    not in the kernel, whose contract flag may fuse ``pi - omega d`` into one multiply-add (another rounding where
    ``omega d`` is inexact: ``n_fft`` not a power of two)."""
    m = np.fmod(-(omega_bin * d) + math.pi, 2.0 * math.pi)
    m[m < 0] += 2.0 * math.pi
    return (m - math.pi).astype(np.float32)


@njit(cache=True, inline="always", fastmath={"contract", "arcp", "nsz"})
def _atan2_poly(y, x):
    """:func:`_atan2`'s float32 polynomial without branches (selects), so that a loop of it vectorises."""
    ax, ay = abs(x), abs(y)
    hi, lo = max(ax, ay), min(ax, ay)
    a = lo / max(hi, np.float32(1e-38))
    z = a * a
    c0, c1, c2, c3, c4, c5, c6, c7 = _ATAN
    r = a * (c0 + z * (c1 + z * (c2 + z * (c3 + z * (c4 + z * (c5 + z * (c6 + z * c7)))))))
    r = 0.5 * math.pi - r if ay > ax else r
    r = math.pi - r if x < 0.0 else r
    return -r if y < 0.0 else r


@njit(cache=True, inline="always", fastmath={"contract", "arcp", "nsz"})
def _cis(x):
    """``exp(i x)`` complex64 for float32 ``x`` in [-pi, pi]: ``x = y + q pi`` (``|y| <= pi / 2``), Taylor series of
    sin and cos of ``y`` to degree 11 and 12 (errors below 6e-8), signs by ``q``; no branch, so a loop vectorises."""
    q = np.round(x * np.float32(1.0 / math.pi))
    y = x - q * np.float32(math.pi)
    y2 = y * y
    sn = y * (np.float32(1.0) + y2 * (np.float32(-1 / 6) + y2 * (np.float32(1 / 120) + y2 * (np.float32(-1 / 5040) + y2 * (
        np.float32(1 / 362880) + y2 * np.float32(-1 / 39916800))))))
    cs = np.float32(1.0) + y2 * (np.float32(-0.5) + y2 * (np.float32(1 / 24) + y2 * (np.float32(-1 / 720) + y2 * (
        np.float32(1 / 40320) + y2 * (np.float32(-1 / 3628800) + y2 * np.float32(1 / 479001600))))))
    sign = np.float32(1.0) - np.float32(2.0) * (q != 0.0)
    return complex(sign * cs, sign * sn)


@njit(cache=True, inline="always", fastmath={"contract", "arcp", "nsz"})
def _rotation(th):
    """``exp(i th)`` complex64 of a float64 phase ``th``, wrapped to [-pi, pi] first (:func:`_cis`)."""
    return _cis(np.float32(th - 2.0 * math.pi * np.round(th * (0.5 / math.pi))))


@njit(cache=True, inline="always")
def _is_peak(m, left1, left2, right1, right2, floor):
    """A magnitude not exceeded by its two neighbours on either side and above ``floor``: comparisons combined
    without branches (a spectrum's peaks are unpredictable), so a loop of it vectorises."""
    return (m > floor) & (left1 <= m) & (left2 <= m) & (right1 <= m) & (right2 <= m)


@njit(parallel=True, cache=True, fastmath={"contract", "arcp", "nsz"})
def phase_lock_f32(spec0, spec1, n_fft, hop, out, omega_bin, rot_d, both_silent):
    """:func:`phase_lock` for complex64 spectra, its per-bin work in loops that vectorise: magnitudes and the phase
    advance for every bin of a frame at once (the polynomial atan2, no branch; silent cross-spectra flagged in an
    array: counting them in that loop kept it scalar), then the accumulation and the peaks; the rare bins the
    reference treats apart (DC, Nyquist, silent cross-spectra) are redone after, one by one. The analysis phase is
    computed for every bin in the first frame (it starts the synthesis phases) and, after it, at the peaks only, with
    the rotation ``exp(i (synthesis - analysis phase))`` (the peaks' values gathered first, so that loop vectorises;
    a frame without a peak, all zeros, takes every bin's own). Each bin's nearest peak (ties to the left) is a running
    count of marks at the first bin past each midpoint of two peaks, and the product gathers its rotation. The same
    arithmetic as :func:`phase_lock` with ``exact=False`` but ``|z|`` as ``sqrt(re² + im²)`` (hypot's value to
    rounding: only a tie of two magnitudes can pick another peak); the product ``spec0 * rotation``, vectorised, may
    round its parts with or without a fused multiply-add (within an ulp either way)."""
    B, K, nb = spec0.shape
    d = max(n_fft // 8, 1)
    inv_d = 1.0 / d
    half_hop = 0.5 * hop
    nyquist = n_fft // 2 if n_fft % 2 == 0 else -1
    u0, u1, u2, unb = np.uint64(0), np.uint64(1), np.uint64(2), np.uint64(nb)
    two_pi = 2.0 * math.pi
    for b in prange(B):
        mag = np.empty(nb, np.float32)
        adv = np.empty(nb, np.float32)
        omega_prev = np.empty(nb, np.float32)
        acc = np.zeros(nb, np.float64)
        pa0 = np.empty(nb, np.float32)
        silent = np.empty(nb, np.bool_)
        peak = np.empty(nb, np.bool_)
        peaks = np.empty(nb, np.int64)  # the frame's peak bins, in order
        rot = np.empty(nb, np.complex64)  # their rotations
        peak_re = np.empty(nb, np.float32)
        peak_im = np.empty(nb, np.float32)
        peak_phase = np.empty(nb, np.float64)  # first analysis phase + accumulated advance
        owner = np.empty(nb, np.int64)  # each bin's nearest peak, as an index into peaks and rot
        mag_bits = mag.view(np.int32)
        top = np.empty(1, np.int32)  # the frame's largest magnitude, as bits
        top_f = top.view(np.float32)
        for k in range(K):
            z0, z1, o = spec0[b, k], spec1[b, k], out[b, k]
            for f in range(u0, unb):
                re0, im0, re1, im1 = z0[f].real, z0[f].imag, z1[f].real, z1[f].imag
                mag[f] = math.sqrt(re0 * re0 + im0 * im0)
                cr, ci = re1 * re0 + im1 * im0, im1 * re0 - re1 * im0  # z1 * conj(z0)
                rr, ri = rot_d[f].real, rot_d[f].imag
                c2r, c2i = cr * rr - ci * ri, cr * ri + ci * rr
                a = _atan2_poly(c2i, c2r)
                adv[f] = -math.pi if a >= math.pi else a
                silent[f] = (c2r == 0.0) & (c2i == 0.0)
            n_silent = 0
            for f in range(u0, unb):
                n_silent += silent[f]
            adv[0] = 0.0  # real bins advance at their bin frequency, as in the reference
            if nyquist >= 0:
                adv[nyquist] = 0.0
            if n_silent:  # a silent frame: angle(0) = 0 whatever the zeros' signs, as the reference's _angle; the wrap
                # is the reference's own (fmod): with both frames silent the advance is -omega d, an odd multiple of
                # pi at every 4th bin (hop n_fft / 8), where a floor's rounding can pick the other side of +-pi
                for f in range(1, nb):
                    if f != nyquist and silent[f]:
                        z, w = z0[f], z1[f]
                        if z.real == 0.0 and z.imag == 0.0 and w.real == 0.0 and w.imag == 0.0:  # both silent
                            adv[f] = both_silent[f]
                        else:
                            adv[f] = _wrap(_angle(w.imag, w.real) - _angle(z.imag, z.real) - omega_bin[f] * d, True)
            # the largest magnitude: an integer max of the bits (a float32 >= +0 orders as its bits), a reduction
            # that vectorises, where a float max is a chain of dependent maxss, one a bin. The sign bit is masked
            # off: a NaN magnitude (either sign) is the maximum, so the frame has no peak, as the reference's amax
            top[0] = 0
            for f in range(u0, unb):
                top[0] = max(top[0], mag_bits[f] & 0x7FFFFFFF)
            mx = top_f[0]
            if k == 0:
                for f in range(u0, unb):
                    om = omega_bin[f] + adv[f] * inv_d
                    omega_prev[f] = om
                    pa0[f] = _atan2_poly(z0[f].imag, z0[f].real)
            else:
                for f in range(u0, unb):
                    om = omega_bin[f] + adv[f] * inv_d
                    s = half_hop * (om + omega_prev[f]) + math.pi  # _wrap with a floor (float32 kernel's)
                    m = s - two_pi * math.floor(s * (0.5 / math.pi))
                    m = m - two_pi if m >= two_pi else m
                    acc[f] += m - math.pi
                    omega_prev[f] = om
            floor = mx * np.float32(1e-6)
            # peaks (_is_peak); the edges' missing neighbours count as lower, so the two bins at each edge are tested
            # apart and the interior's loop reads its neighbours unguarded (unsigned indices: no wraparound test; the
            # max keeps unb - u2 from wrapping below 2 bins)
            for f in range(u2, max(unb, u2) - u2):
                peak[f] = _is_peak(mag[f], mag[f - u1], mag[f - u2], mag[f + u1], mag[f + u2], floor)
            for f in (0, 1, nb - 2, nb - 1):
                if 0 <= f < nb:
                    m = mag[f]
                    peak[f] = _is_peak(m, mag[f - 1] if f >= 1 else m, mag[f - 2] if f >= 2 else m,
                                       mag[f + 1] if f + 1 < nb else m, mag[f + 2] if f + 2 < nb else m, floor)
            n_peaks = 0
            for f in range(nb):  # the peaks' bins in order, without a branch
                peaks[n_peaks] = f
                n_peaks += peak[f]
            if n_peaks == 0:  # no peak in the frame: every bin keeps its own synthesis phase
                for f in range(u0, unb):
                    o[f] = z0[f] * _rotation(pa0[f] + acc[f] - np.float32(_atan2_poly(z0[f].imag, z0[f].real)))
                continue
            for j in range(n_peaks):  # the peaks' values, gathered contiguous so that the next loop vectorises
                p = peaks[j]
                peak_re[j], peak_im[j], peak_phase[j] = z0[p].real, z0[p].imag, pa0[p] + acc[p]
            for j in range(n_peaks):  # each peak's rotation exp(i (synthesis - analysis phase))
                rot[j] = _rotation(peak_phase[j] - np.float32(_atan2_poly(peak_im[j], peak_re[j])))
            # each bin takes its nearest peak's rotation, ties to the left: the bins up to the midpoint of two
            # successive peaks take the left one's, those before the first peak (after the last) take its. The
            # first bin past each midpoint is marked, and a running count of the marks is the bin's peak (one pass
            # over the bins; a loop a run of bins cost more), then the product gathers its rotation
            for f in range(u0, unb):
                owner[f] = 0
            for j in range(n_peaks - 1):
                owner[(peaks[j] + peaks[j + 1]) // 2 + 1] = 1
            run = 0
            for f in range(u0, unb):
                run += owner[f]
                owner[f] = run
            for f in range(u0, unb):
                o[f] = z0[f] * rot[owner[f]]
