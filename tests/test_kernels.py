"""augcl.kernels against the functional reference: the Numba CPU kernel, the CUDA kernel (in numba's CUDA
simulator here; on a real GPU where there is one) and the backend dispatcher."""
import importlib.util
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from augcl import PairAugmenter, kernels
from augcl import functional as AF
from augcl.banks import RIRBank

from .conftest import REPO, SR, cpu_generator

needs_numba = pytest.mark.skipif(not kernels.available("cpu"), reason="Numba is not installed")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.available("cuda")),
                                reason="needs a CUDA GPU with numba-cuda")
# CI installs numba-cuda (the dev extra) and must run the PTX tests: skipping there would hide a broken install
needs_numba_cuda = pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None and not os.environ.get("CI"),
                                      reason="numba-cuda is not installed (pip install -e '.[dev]')")


def _signal(kind: str, batch: int, length: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Noise, a sum of tones, or tones with silent stretches (frames with no peak, exact zeros)."""
    g = cpu_generator(seed)
    t = torch.arange(length, dtype=torch.float64) / SR
    if kind == "noise":
        x = torch.randn(batch, length, generator=g, dtype=torch.float64)
    else:
        f = 100 + 4000 * torch.rand(batch, 3, 1, generator=g, dtype=torch.float64)
        x = torch.sin(2 * torch.pi * f * t).sum(1)
        if kind == "gaps":
            x = x * (torch.rand(batch, length // 600 + 1, generator=g) < 0.5).repeat_interleave(600, 1)[:, :length]
    return (0.1 * x).to(dtype)


def _tie_frames(spec0: torch.Tensor, rel: float = 1e-12) -> torch.Tensor:
    """``(B, K)``: frames where picking peaks is a tie at float64 rounding (``rel``: at that relative tolerance), equal
    magnitudes within two bins (e.g. the flat spectrum of a frame that holds one sample of the clip), which torch's
    vectorised abs, libm's and CUDA's hypot round differently: peaks, and so the locked phases, may differ there."""
    mag = spec0.abs()
    close = torch.zeros(mag.shape[:-1], dtype=torch.bool)
    for lag in (1, 2):
        near = (mag[..., lag:] - mag[..., :-lag]).abs() <= rel * mag.amax(-1, keepdim=True)
        close |= near.any(-1)
    return close


def _frame_errors(out: torch.Tensor, truth: torch.Tensor, spec0: torch.Tensor) -> torch.Tensor:
    """``(B, K)``: each frame's largest error of ``out`` against the float64 ``truth``, relative to the bin's
    magnitude in ``spec0``."""
    return ((out.cpu().to(truth.dtype) - truth).abs() / spec0.abs().clamp_min(1e-30)).amax(-1)


def _check_float32(out: torch.Tensor, ref32: torch.Tensor, truth: torch.Tensor, spec0: torch.Tensor) -> tuple:
    """The float32 tolerance: on every frame where the float32 reference keeps the float64 truth's peaks (its
    error <= 1e-3), the kernel's error is at most twice the reference's largest there, plus 1e-5. Frames whose
    peaks tie at float32 rounding may lock to other peaks (errors of order 1), in the reference as in a kernel:
    only there may a kernel be off, and only where the reference is too. Returns both largest errors."""
    err, err_ref = _frame_errors(out, truth, spec0), _frame_errors(ref32, truth, spec0)
    kept = err_ref <= 1e-3
    worst, worst_ref = (float(torch.cat([e.new_zeros(1), e[kept]]).max()) for e in (err, err_ref))
    assert worst <= 2 * worst_ref + 1e-5, (worst, worst_ref)
    return worst, worst_ref


case = dict(
    kind=st.sampled_from(["noise", "tones", "gaps"]),
    batch=st.integers(1, 3),
    n_fft=st.sampled_from([64, 128, 256, 512]),
    hop_div=st.sampled_from([4, 8]),
    length=st.integers(1, 2500),
    rate=st.lists(st.floats(0.5, 2.0), min_size=3, max_size=3),
    start=st.integers(-1000, 6000),
    seed=st.integers(0, 2**16),
)


def _spectra(kind, batch, n_fft, hop_div, length, rate, start, seed, dtype=torch.float64):
    x = _signal(kind, batch, 20000, seed, dtype)  # (6000 + 2500 + 2 * 512) * 2 < 20000: edges only at the start
    r = torch.tensor(rate[:batch], dtype=torch.float64)
    s0, s1 = AF._vocoder_analysis(x, r, torch.full((batch,), start), length, n_fft, n_fft // hop_div, None)
    return x, r, s0, s1


@needs_numba
@given(**(case | dict(hop_div=st.just(4))))
@example(kind="tones", batch=1, n_fft=64, hop_div=4, length=1, rate=[1.0] * 3, start=2, seed=2295)  # a tie frame of 10
def test_cpu_kernel_equals_the_reference_in_float64(kind, batch, n_fft, hop_div, length, rate, start, seed):
    """Bin for bin, at the vocoder's hop n_fft / 4 (the default 512 / 128). With hop = n_fft / 8 a bin whose phase
    advance is exactly +-pi (an exactly negative real cross-spectrum: silence, DC) lands on either side of the
    wrap by rounding and the synthesis phase then differs by pi, in the reference as much as here; at n_fft / 4
    the two sides differ by 2 pi, which is no difference."""
    _, _, s0, s1 = _spectra(kind, batch, n_fft, hop_div, length, rate, start, seed)
    ref = AF._vocoder_phase(s0, s1, n_fft, n_fft // hop_div)
    out = kernels.vocoder_phase(s0, s1, n_fft, n_fft // hop_div)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    # the same arithmetic in another order: bin by bin, relative to that bin's magnitude
    err = (out - ref).abs() / s0.abs().clamp_min(1e-300)
    bad = err.amax(-1) > 1e-7  # (B, K) frames that differ
    # ... except where picking peaks is a tie at rounding level (_tie_frames)
    close = _tie_frames(s0)
    assert not bool((bad & ~close).any()), err.amax(-1)[bad & ~close]
    # ties are rare: at most 5 % of the frames, or one (a short segment has ~10 frames, and a frame at the clip's
    # start that holds one sample is flat: every bin ties)
    assert int(bad.sum()) <= max(1, int(0.05 * bad.numel()))


@needs_numba
@given(**case)
# its assume() discards about half the drawn cases, so after other hypothesis tests in one run the health check can
# stop it for filtering (seen in CI-sized runs); the cases it does run are the ones it asserts on
@settings(suppress_health_check=[HealthCheck.filter_too_much])
# the Nyquist bin's advance read as +pi or -pi by rounding, which flipped its sign at hop n_fft / 8 (fixed: real
# bins advance at their bin frequency)
@example(kind="noise", batch=2, n_fft=512, hop_div=8, length=1, rate=[1.0] * 3, start=4024, seed=11)
def test_cpu_kernel_in_float32_is_as_accurate_as_the_reference(kind, batch, n_fft, hop_div, length, rate, start, seed):
    """float32 against the float64 truth: the kernel's error is within the float32 reference's own.

    Away from the clip's start and from silence: a frame holding a few samples has a near-flat spectrum whose
    peaks are ties at float32 rounding, broken either way (the float64 test above covers those frames)."""
    assume(kind != "gaps" and start >= 2 * n_fft)
    x, r, s0, s1 = _spectra(kind, batch, n_fft, hop_div, length, rate, start, seed)
    hop = n_fft // hop_div
    truth = AF.time_stretch_segment(x, r, torch.full((batch,), start), length, n_fft=n_fft, hop_length=hop)
    x32 = x.float()
    ref32 = AF.time_stretch_segment(x32, r, torch.full((batch,), start), length, n_fft=n_fft, hop_length=hop)
    ker32 = kernels.time_stretch_segment(x32, r, torch.full((batch,), start), length, n_fft=n_fft, hop_length=hop)
    assert ker32.dtype == torch.float32 and ker32.shape == (batch, length)
    scale = float(x.abs().max()) + 1e-12
    err_ref = float((ref32.double() - truth).abs().max()) / scale
    err_ker = float((ker32.double() - truth).abs().max()) / scale
    assert err_ker <= 2 * err_ref + 2e-5, (err_ker, err_ref)


@needs_numba
@given(**case)
@settings(max_examples=30)
def test_cpu_kernel_phase_step_in_float32_is_as_accurate_as_the_reference(kind, batch, n_fft, hop_div, length, rate,
                                                                         start, seed):
    """The float32 phase step alone (complex64 spectra): within the float32 reference's own error of the float64
    truth (_check_float32), as the CUDA kernel's test asks."""
    _, _, s0, s1 = _spectra(kind, batch, n_fft, hop_div, length, rate, start, seed)
    hop = n_fft // hop_div
    c0, c1 = s0.to(torch.complex64), s1.to(torch.complex64)
    out = kernels.vocoder_phase(c0, c1, n_fft, hop)
    assert out.dtype == torch.complex64
    truth = AF._vocoder_phase(s0, s1, n_fft, hop)
    # frames whose peaks tie at float32 rounding (the kernel's sqrt(re² + im²) and torch's hypot may break a tie
    # either way) are left out: there a kernel and the reference may each lock to another peak
    tie = _tie_frames(s0, 1e-6)
    out = torch.where(tie.unsqueeze(-1), truth.to(out.dtype), out)
    _check_float32(out, AF._vocoder_phase(c0, c1, n_fft, hop), truth, s0)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_cpu_kernel_locks_each_bin_to_its_nearest_peak_ties_to_the_left(dtype):
    """Designed magnitudes: peaks at both edges, runs of odd and even length between peaks (a bin midway between two
    peaks goes to the left one), a single peak, and an all-zero frame (no peak; its output is zero whatever the
    rotation). Every bin's rotation ``out / spec0`` is its nearest peak's, read off the output alone; the rotations
    equal the float64 reference's. (Each listed peak is 2.0, every other bin within two of it at most 1.951, and a
    non-peak bin has a neighbour 0.05 larger: the jitter, < 1e-3, moves no peak.)"""
    nb, n_fft, hop = 33, 64, 16
    # frame 0 (every rotation is 1: no advance yet) only starts the phases; then a single peak next to the edge
    peaks_of = [[3, 20], [1], [0, 6, 12, 17, 32], [], [2, 31]]
    g = cpu_generator(4)
    mag = torch.full((1, len(peaks_of), nb), 0.5, dtype=torch.float64)
    for k, peaks in enumerate(peaks_of):
        if peaks:
            dist = (torch.arange(nb).reshape(-1, 1) - torch.tensor(peaks)).abs().amin(1)
            mag[0, k] = 2.0 - 0.05 * dist + 1e-3 * torch.rand(nb, generator=g, dtype=torch.float64) * (dist > 0)
        else:
            mag[0, k] = 0.0
    phase = (torch.rand(mag.shape, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    s0 = torch.polar(mag, phase)
    s1 = s0 * torch.polar(torch.ones_like(mag), torch.rand(mag.shape, generator=g, dtype=torch.float64))
    out = kernels.vocoder_phase(s0.to(dtype), s1.to(dtype), n_fft, hop)
    truth = AF._vocoder_phase(s0, s1, n_fft, hop)
    for k, peaks in enumerate(peaks_of):
        if not peaks:
            assert bool((out[0, k] == 0).all())
            continue
        rot = out[0, k].to(torch.complex128) / s0[0, k]
        for f in range(nb):
            dist = [abs(f - p) for p in peaks]
            nearest = peaks[dist.index(min(dist))]  # the first of equals: the left one
            assert abs(rot[f] - rot[nearest]) < 1e-6, (k, f, nearest)
        assert float((rot - truth[0, k] / s0[0, k]).abs().max()) < (1e-5 if dtype == torch.complex64 else 1e-12)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_cpu_kernel_peaks_lie_above_a_millionth_of_the_frames_largest_magnitude(dtype):
    """Designed magnitudes: a frame's largest bin (first, last or inside) sets the floor; a bump 5e-6 of it is a peak
    and takes the bins nearest to it, a bump 5e-7 of it (and the 1e-8 background) is not and locks to a peak. Read
    off the output as in the nearest-peak test; the rotations equal the float64 reference's."""
    nb, n_fft, hop = 33, 64, 16
    # (largest bin, bump above the floor, bump below it) for frames 1-4; frame 0 only starts the phases
    designs = [(30, 15, 5), (0, 20, 10), (nb - 1, 3, 24), (16, 8, 26)]
    g = cpu_generator(5)
    mag = torch.full((1, len(designs) + 1, nb), 1e-8, dtype=torch.float64)
    mag[0, 0] = 1.0
    for k, (top, above, below) in enumerate(designs, 1):
        mag[0, k, top], mag[0, k, above], mag[0, k, below] = 1.0, 5e-6, 5e-7
    phase = (torch.rand(mag.shape, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    s0 = torch.polar(mag, phase)
    s1 = s0 * torch.polar(torch.ones_like(mag), torch.rand(mag.shape, generator=g, dtype=torch.float64))
    out = kernels.vocoder_phase(s0.to(dtype), s1.to(dtype), n_fft, hop)
    truth = AF._vocoder_phase(s0, s1, n_fft, hop)
    for k, (top, above, below) in enumerate(designs, 1):
        rot = out[0, k].to(torch.complex128) / s0[0, k]
        peaks = sorted([top, above])
        for f in range(nb):
            dist = [abs(f - p) for p in peaks]
            nearest = peaks[dist.index(min(dist))]
            assert abs(rot[f] - rot[nearest]) < 1e-6, (k, f, nearest)
        assert float((rot - truth[0, k] / s0[0, k]).abs().max()) < (1e-5 if dtype == torch.complex64 else 1e-12)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_cpu_kernel_on_tiny_spectra_and_a_nan_bin_follows_the_reference(dtype):
    """Spectra of 1 to 4 bins (n_fft 1 to 6: the peak test's interior loop is empty) run and equal the reference; a
    frame holding one NaN bin (of either sign) has no peak, as the reference's (its amax is NaN): its other bins keep
    their own synthesis phases, NaN exactly where the reference's are and equal to them elsewhere."""
    g = cpu_generator(6)
    for n_fft in (1, 2, 4, 6):
        nb = n_fft // 2 + 1
        s0 = torch.randn(2, 4, nb, generator=g, dtype=torch.complex128)
        s1 = torch.randn(2, 4, nb, generator=g, dtype=torch.complex128)
        out = kernels.vocoder_phase(s0.to(dtype), s1.to(dtype), n_fft, 1)
        truth = AF._vocoder_phase(s0, s1, n_fft, 1)
        assert float((out.to(torch.complex128) - truth).abs().max()) < (1e-4 if dtype == torch.complex64 else 1e-12)
    s0 = torch.randn(1, 3, 33, generator=g, dtype=torch.complex128)
    turn = torch.rand(1, 3, 33, generator=g, dtype=torch.float64)
    s1 = s0 * torch.polar(torch.ones_like(turn), turn)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    # a NaN of either sign (a magnitude's sign bit may be set)
    s0[0, 2, 7] = torch.complex(nan, torch.zeros((), dtype=torch.float64))
    s0[0, 1, 20] = torch.complex(-nan, -nan)
    out = kernels.vocoder_phase(s0.to(dtype), s1.to(dtype), 64, 16).to(torch.complex128)
    truth = AF._vocoder_phase(s0, s1, 64, 16)
    assert bool(truth[0, 2, 7].isnan()) and bool(truth[0, 1, 20].isnan())
    assert torch.equal(out.isnan(), truth.isnan())  # where the reference's is NaN (a NaN advance carries on)
    keep = ~truth.isnan()
    assert float((out[keep] - truth[keep]).abs().max()) < (1e-4 if dtype == torch.complex64 else 1e-12)


def _with_signed_zeros(z: torch.Tensor, real: float, imag: float) -> torch.Tensor:
    """``z`` with its exact zeros replaced by ``complex(real, imag)`` (+-0.0 each)."""
    zero = z == 0
    return torch.complex(z.real.masked_fill(zero, real), z.imag.masked_fill(zero, imag))


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_signs_of_a_silent_frames_zeros_change_no_phase(dtype):
    """A segment that starts in silence (its first frames read nothing): its zeros' signs are the FFT's (MKL's
    AVX-512 path gives -0.0 real parts, its AVX2 path +0.0) and ``angle(-0 + 0i)`` is pi, and the first frame's
    phases start every later frame's synthesis phases. The reference (``vocoder._angle``) and the CPU kernels take
    a zero's phase as 0 whatever its signs: the same synthesis spectra for every choice of signs, the kernels'
    as the reference's (float64: bin for bin; float32: the kernel's polynomial atan2 and float32 phases)."""
    n_fft, hop = 512, 128
    x = _signal("tones", 2, 20000, 3, dtype)
    s0, s1 = AF._vocoder_analysis(x, torch.tensor([1.1, 0.9], dtype=torch.float64), torch.full((2,), -200), 3000,
                                  n_fft, hop, None)
    assert bool((s0[:, 0] == 0).all()) and bool((s1[:, 0] == 0).all())  # the first frames are silent
    p0, p1 = _with_signed_zeros(s0, 0.0, 0.0), _with_signed_zeros(s1, 0.0, 0.0)
    ref = AF._vocoder_phase(p0, p1, n_fft, hop)
    got_ref = kernels.vocoder_phase(p0, p1, n_fft, hop)
    for sign_re, sign_im in [(-0.0, 0.0), (-0.0, -0.0), (0.0, -0.0)]:
        z0, z1 = _with_signed_zeros(s0, sign_re, sign_im), _with_signed_zeros(s1, sign_re, sign_im)
        assert torch.equal(torch.signbit(z0[:, 0].real), torch.full(z0[:, 0].shape, math.copysign(1, sign_re) < 0))
        assert torch.equal(torch.signbit(z1[:, 0].imag), torch.full(z1[:, 0].shape, math.copysign(1, sign_im) < 0))
        assert torch.equal(AF._vocoder_phase(z0, z1, n_fft, hop), ref)
        assert torch.equal(kernels.vocoder_phase(z0, z1, n_fft, hop), got_ref)
    loud = s0.abs() > 1e-3 * s0.abs().amax(-1, keepdim=True)
    err = (got_ref - ref).abs() / s0.abs().clamp_min(1e-30)
    assert float(err[loud].max()) < (1e-9 if dtype == torch.float64 else 1e-3)


@needs_numba
@pytest.mark.parametrize("n_fft", [200, 400, 512])
def test_float32_kernel_follows_the_truth_through_digital_silence_at_hop_n_fft_8(n_fft):
    """Rows that start in silence and have a silent stretch (exact zeros), at hop n_fft / 8: a bin silent in both
    frames advances by -omega d, an odd multiple of pi at every 4th bin, so its wrap must round as the float64
    reference's (omega d, then + pi, then fmod) or later frames come out off by pi (errors of 2). The float32 kernel
    reads those advances from a table (vocoder_cpu._both_silent); made inside the kernel, its contract flag fused
    pi - omega d into one multiply-add and took the other side at n_fft 200 and 400, where omega d is inexact."""
    hop = n_fft // 8
    x = torch.randn(4, 8000, generator=cpu_generator(0), dtype=torch.float64) * 0.1
    x[:, 2000:4000] = 0
    r = torch.tensor([1.0, 0.9, 1.1, 0.8], dtype=torch.float64)
    s0, s1 = AF._vocoder_analysis(x, r, torch.full((4,), -300), 1500, n_fft, hop, None)
    assert bool((s0 == 0).all(-1).any())  # some frames are digital silence
    truth = AF._vocoder_phase(s0, s1, n_fft, hop)
    out = kernels.vocoder_phase(s0.to(torch.complex64), s1.to(torch.complex64), n_fft, hop)
    err = _frame_errors(out, truth, s0).masked_fill(_tie_frames(s0), 0)
    assert float(err.max()) < 1e-3, float(err.max())


@needs_numba
@given(y=st.floats(-1e30, 1e30, allow_subnormal=True), x=st.floats(-1e30, 1e30, allow_subnormal=True))
def test_float32_kernel_atan2_is_within_4e8_rad_of_libm(y, x):
    """The float32 kernel's polynomial atan2 against numpy's, every octant; +-pi count as one angle."""
    import numpy as np

    from augcl.kernels.vocoder_cpu import _atan2

    fast, ref = _atan2(y, x, False), float(np.arctan2(y, x))
    if x == 0.0 and y == 0.0:  # 0 whatever the zeros' signs (atan2(0, -0) = pi): vocoder._angle
        assert _atan2(y, x, True) == 0.0 and fast == 0.0
        return
    # the float64 kernel calls libm's atan2 (math.atan2); numpy's own (SIMD on AVX-512) may differ by an ulp
    assert _atan2(y, x, True) == math.atan2(y, x)
    diff = abs(fast - ref)
    assert min(diff, abs(diff - 2 * np.pi)) <= 4e-8, (y, x, fast, ref)


@needs_numba
@pytest.mark.parametrize("y, x", [(0.0, 1.0), (1.0, 0.0), (0.0, -1.0), (-1.0, 0.0), (1.0, 1.0), (-1.0, -1.0),
                                  (1.0, -1.0), (0.0, 0.0), (-0.0, 1.0), (3e-39, -2e-39), (1e-300, 1e300),
                                  (0.0, -0.0), (-0.0, -0.0), (-0.0, 0.0), (1.0, -0.0), (-1.0, -0.0)])
def test_float32_kernel_atan2_on_axes_diagonals_and_zeros(y, x):
    import numpy as np

    from augcl.kernels.vocoder_cpu import _atan2

    # a zero's angle is 0 whatever its signs (vocoder._angle); elsewhere -0.0 is 0.0
    fast, ref = _atan2(y, x, False), 0.0 if x == 0.0 and y == 0.0 else float(np.arctan2(y, x))
    diff = abs(fast - ref)
    assert min(diff, abs(diff - 2 * np.pi)) <= 4e-8, (fast, ref)


@needs_numba
def test_kernel_backend_matches_torch_backend_end_to_end():
    """The `all` preset (stretch -> RIR: the vocoder runs) with the same parameters on both backends."""
    irs = torch.zeros(2, 400)
    irs[0, 0] = 1.0
    irs[1] = torch.exp(-torch.arange(400) / 80.0) * torch.randn(400, generator=cpu_generator(3))
    bank = RIRBank(irs / irs.norm(dim=1, keepdim=True), torch.tensor([1, 400]), SR)
    x = _signal("tones", 6, 3 * SR, 5, torch.float32)
    ref_aug = PairAugmenter.from_preset("all", rir_bank=bank, backend="torch")
    ker_aug = PairAugmenter.from_preset("all", rir_bank=bank, backend="kernels")
    assert ker_aug.positive.spectral is False  # the RIR needs the waveform: the vocoder runs
    ref = ref_aug(x, generator=cpu_generator(0))
    out = ker_aug(x, params=ref.params)
    assert bool(ref.params["positive.stretch_applied"].any())
    # the anchor: the kernels' own FFT (augcl.kernels.fft_cpu) rounds differently from MKL's, to float32 rounding of
    # the log-mel (the tolerance of test_every_preset_on_the_kernels_equals_the_reference)
    torch.testing.assert_close(out.anchor, ref.anchor, rtol=0, atol=1e-4)
    # log-mels of the same stretched segments; float32 phase rounding differs, mel bins above -10 agree closely
    loud = ref.positive > -10
    assert float((out.positive - ref.positive)[loud].abs().max()) < 0.05


def test_backend_names_and_errors(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        PairAugmenter.from_preset("ts", backend="numba")
    assert kernels.use_kernels("torch", "cpu") is False
    with pytest.raises(RuntimeError, match="no augcl kernel runs on meta"):
        kernels.use_kernels("kernels", "meta")
    monkeypatch.setattr(kernels, "_numba_cpu", lambda: False)
    assert kernels.available("cpu") is False and kernels.use_kernels("auto", "cpu") is False
    with pytest.raises(RuntimeError, match=r"pip install 'augcl\[kernels\]'"):
        kernels.use_kernels("kernels", "cpu")


def test_auto_without_numba_is_the_reference(monkeypatch):
    """Where Numba is missing, backend='auto' computes exactly what backend='torch' does."""
    x = _signal("noise", 3, SR, 1, torch.float32)
    irs = torch.zeros(1, 8)
    irs[0, 0] = 1
    bank = RIRBank(irs, torch.tensor([1]), SR)
    ref = PairAugmenter.from_preset("all", rir_bank=bank, backend="torch")(x, generator=cpu_generator(0))
    monkeypatch.setattr(kernels, "_numba_cpu", lambda: False)
    out = PairAugmenter.from_preset("all", rir_bank=bank, backend="auto")(x, params=ref.params)
    torch.testing.assert_close(out.positive, ref.positive, rtol=0, atol=0)


def test_cuda_kernels_are_unavailable_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kernels.unavailable("cuda") == "torch sees no CUDA GPU" and not kernels.available("cuda")
    assert kernels.use_kernels("auto", "cuda") is False
    with pytest.raises(RuntimeError, match="no augcl kernel runs on cuda: torch sees no CUDA GPU"):
        kernels.use_kernels("kernels", "cuda")


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch says it sees GPU 0 (there is none here); the cached build check is cleared before and after."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    kernels._cuda_build_failure.cache_clear()
    yield
    kernels._cuda_build_failure.cache_clear()


def test_cuda_kernels_need_numba_cuda(fake_gpu, monkeypatch):
    monkeypatch.setattr(kernels, "_numba_cuda", lambda: False)
    assert not kernels.available("cuda") and kernels.use_kernels("auto", "cuda") is False
    with pytest.raises(RuntimeError, match=r"numba-cuda .* is not installed: pip install 'augcl\[cuda\]'"):
        kernels.use_kernels("kernels", "cuda:0")


@needs_numba_cuda
def test_a_cuda_kernel_that_does_not_build_is_unavailable_with_its_reason(fake_gpu, monkeypatch):
    """The build check fails the way a kernel that numba cannot type fails (a real numba TypingError): the
    kernels are unavailable, "kernels" raises one RuntimeError naming the reason, "auto" is the reference."""
    import math

    import numba
    from numba import cuda

    from augcl.kernels import vocoder_cuda

    def broken(a):
        a[0] = math.atan2(a[0])  # one argument: numba finds no such atan2

    monkeypatch.setattr(vocoder_cuda, "compile_for_device",
                        lambda index: cuda.compile_ptx(broken, (numba.float32[::1],), cc=(9, 0)))
    why = kernels.unavailable("cuda:0")
    assert why is not None and why.startswith("the CUDA kernel does not build for GPU 0 (TypingError"), why
    assert not kernels.available("cuda") and kernels.use_kernels("auto", "cuda") is False
    with pytest.raises(RuntimeError, match=r"backend='kernels' but no augcl kernel runs on cuda:0: the CUDA kernel "
                                           r"does not build for GPU 0 \(TypingError"):
        kernels.use_kernels("kernels", "cuda:0")


@needs_numba_cuda
def test_auto_keeps_the_reference_on_cuda_until_a_gpu_benchmark_says_otherwise(fake_gpu, monkeypatch):
    """Where the CUDA kernel builds (here its real PTX for sm_90, which needs no GPU), "kernels" runs it and "auto"
    still does not: no GPU measurement has shown it faster than the reference (augcl.kernels.AUTO_DEVICES)."""
    import numba
    from numba import cuda

    from augcl.kernels import vocoder_cuda

    monkeypatch.setattr(vocoder_cuda, "compile_for_device", lambda index: cuda.compile_ptx(
        vocoder_cuda.phase_lock_float32, vocoder_cuda.signature(numba.float32), cc=(9, 0)))
    assert kernels.unavailable("cuda") is None
    assert kernels.use_kernels("kernels", "cuda") is True
    assert kernels.use_kernels("auto", "cuda") is False and "cuda" not in kernels.AUTO_DEVICES


#: float32 kernels' PTX may hold this many float64 instructions: libdevice's sinf/cosf reduce huge arguments
#: (|x| > ~1e5) in float64 (Payne-Hanek; 6 instructions with numba-cuda 0.30.4), a branch the kernel never takes
#: (its angles lie in [-2 pi, 2 pi]). Before issue 13 the float32 kernel had 147 (its phase math in float64).
MAX_F64_IN_FLOAT32_PTX = 8


@needs_numba_cuda
@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm_80", "sm_90"])
@pytest.mark.parametrize("name", ["phase_lock_float32", "phase_lock_float64"])
def test_every_cuda_kernel_compiles_to_ptx_without_a_gpu(name, cc):
    """numba.cuda.compile_ptx (NVVM only, no driver): the build CI can check on a machine without a GPU."""
    from numba import cuda
    from numba.cuda.dispatcher import CUDADispatcher

    from augcl.kernels import vocoder_cuda

    assert cuda.implementation == "NVIDIA"  # numba-cuda, not numba's deprecated built-in target
    dispatchers = {v for v in vars(vocoder_cuda).values() if isinstance(v, CUDADispatcher)}
    assert dispatchers == set(vocoder_cuda.KERNELS.values())  # every kernel of the module is in the tests' list
    assert {k.py_func for k in dispatchers} == {fn for fn, _ in vocoder_cuda.SOURCES.values()}
    fn, real = vocoder_cuda.SOURCES[name]
    ptx, _ = cuda.compile_ptx(fn, vocoder_cuda.signature(real), cc=cc)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx and ".entry" in ptx
    f64 = [line.strip() for line in ptx.splitlines() if re.search(r"\.f64", line) and ".reg" not in line]
    if real.bitwidth == 32:
        assert len(f64) <= MAX_F64_IN_FLOAT32_PTX, f64
    else:
        assert len(f64) > 100  # the float64 kernel computes in float64


SIMULATOR_CHECK = """
import torch
from hypothesis import given, settings, strategies as st
from augcl import functional as AF
from augcl.kernels import vocoder_cuda
from tests.test_kernels import _check_float32, _frame_errors, _tie_frames

worst = {"float64": 0.0, "float32": 0.0, "float32 reference": 0.0}

@settings(max_examples=4, deadline=None, derandomize=True)
@given(kind=st.sampled_from(["noise", "gaps"]), rate=st.floats(0.5, 2.0), start=st.integers(-300, 2000),
       length=st.integers(1, 400), seed=st.integers(0, 99))
def check(kind, rate, start, length, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3000, generator=g, dtype=torch.float64) * 0.1
    if kind == "gaps":
        x[:, 1000:2200] = 0
    r = torch.tensor([rate, 1.0], dtype=torch.float64)
    s0, s1 = AF._vocoder_analysis(x, r, torch.full((2,), start), length, 64, 16, None)
    truth = AF._vocoder_phase(s0, s1, 64, 16)
    out = torch.from_numpy(vocoder_cuda.run(s0.numpy(), s1.numpy(), 64, 16, threads=8))
    err = float(_frame_errors(out, truth, s0).masked_fill(_tie_frames(s0), 0).max())
    assert err <= 1e-10, err
    c0, c1 = s0.to(torch.complex64), s1.to(torch.complex64)
    out = torch.from_numpy(vocoder_cuda.run(c0.numpy(), c1.numpy(), 64, 16, threads=8))
    err32, err_ref = _check_float32(out, AF._vocoder_phase(c0, c1, 64, 16), truth, s0)
    for key, e in (("float64", err), ("float32", err32), ("float32 reference", err_ref)):
        worst[key] = max(worst[key], e)

check()
print("simulated CUDA kernel OK", worst)
"""


@needs_numba
@pytest.mark.slow
def test_cuda_kernels_in_the_simulator_equal_the_reference():
    """Both CUDA kernels run by numba's CUDA simulator (a thread per Python thread: small cases, 8 threads), in a
    subprocess (NUMBA_ENABLE_CUDASIM must be set before numba.cuda is imported).

    float64: within 1e-10 of the float64 reference, bin for bin relative to the bin's magnitude (seen: <= 4e-14),
    outside frames whose peaks tie at rounding (_tie_frames). float32: within ``2 * e_ref + 1e-5`` of the float64
    truth, ``e_ref`` the float32 reference's own error (_check_float32; seen: 1.5e-5 to 5e-5, at most 1.6 *
    e_ref). The
    simulator stores shared memory and outputs in float32 but does some of the arithmetic in between in Python
    floats, so it checks the float32 kernel's algorithm; its float32 rounding is what the PTX test and a GPU
    (``pytest -m cuda``) check."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    res = subprocess.run([sys.executable, "-c", SIMULATOR_CHECK], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "simulated CUDA kernel OK" in res.stdout


@pytest.mark.cuda
@needs_cuda
@given(**case)
def test_cuda_kernel_in_float32_is_as_accurate_as_the_reference(kind, batch, n_fft, hop_div, length, rate, start,
                                                                seed):
    x, r, s0, s1 = _spectra(kind, batch, n_fft, hop_div, length, rate, start, seed)
    hop = n_fft // hop_div
    truth = AF._vocoder_phase(s0, s1, n_fft, hop)
    c0, c1 = s0.to(torch.complex64).cuda(), s1.to(torch.complex64).cuda()
    out = kernels.vocoder_phase(c0, c1, n_fft, hop)
    assert out.device == c0.device and out.dtype == torch.complex64
    _check_float32(out, AF._vocoder_phase(c0, c1, n_fft, hop), truth, s0)


@pytest.mark.cuda
@needs_cuda
@given(**(case | dict(hop_div=st.just(4))))
def test_cuda_kernel_equals_the_reference_in_float64(kind, batch, n_fft, hop_div, length, rate, start, seed):
    """Bin for bin within 1e-10 of the bin's magnitude, outside tie frames; hop n_fft / 4 as in the CPU test."""
    _, _, s0, s1 = _spectra(kind, batch, n_fft, hop_div, length, rate, start, seed)
    hop = n_fft // hop_div
    truth = AF._vocoder_phase(s0, s1, n_fft, hop)
    out = kernels.vocoder_phase(s0.cuda(), s1.cuda(), n_fft, hop)
    assert out.dtype == torch.complex128
    err = _frame_errors(out, truth, s0)
    assert not bool(((err > 1e-10) & ~_tie_frames(s0)).any()), err.max()


@pytest.mark.cuda
@needs_cuda
def test_cuda_kernel_reads_and_writes_torch_memory_in_place():
    """One allocation per call, the output: the spectra are read where torch has them (no copy, no split)."""
    _, _, s0, s1 = _spectra("noise", 3, 512, 4, 4000, [0.8, 1.0, 1.25], 3000, 7)
    c0, c1 = s0.to(torch.complex64).cuda(), s1.to(torch.complex64).cuda()
    kernels.vocoder_phase(c0, c1, 512, 128)  # the first call may compile
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    kernels.vocoder_phase(c0, c1, 512, 128)
    assert torch.cuda.memory_stats()["allocation.all.allocated"] - before == 1


@pytest.mark.cuda
@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_cuda_kernel_runs_on_the_tensors_device():
    _, _, s0, s1 = _spectra("tones", 2, 256, 4, 2000, [0.9, 1.1, 1.0], 1000, 3)
    c0, c1 = s0.to(torch.complex64), s1.to(torch.complex64)
    ref = kernels.vocoder_phase(c0.to("cuda:0"), c1.to("cuda:0"), 256, 64)
    with torch.cuda.device(0):
        out = kernels.vocoder_phase(c0.to("cuda:1"), c1.to("cuda:1"), 256, 64)
    assert out.device == torch.device("cuda:1")
    torch.testing.assert_close(out.cpu(), ref.cpu())


@pytest.mark.cuda
@needs_cuda
def test_cuda_kernel_runs_on_the_current_stream():
    """Launched on a side stream with no host sync in between, the result is the one of the default stream."""
    x = _signal("tones", 8, 3 * SR, 2, torch.float32).cuda()
    r = torch.tensor([0.9, 1.1] * 4, dtype=torch.float64, device="cuda")
    start = torch.arange(8, device="cuda") * 1000
    ref = kernels.time_stretch_segment(x, r, start, 15600, max_rate=1.1)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        out = kernels.time_stretch_segment(x * 1.0, r, start, 15600, max_rate=1.1)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(out, ref)
