"""The CPU kernels of the log-mel, the anchor's noise and the vocoder's framing (augcl.kernels: mel_cpu, noise_cpu,
frames_cpu) against the functional reference and against independent truth (Python integers, scipy's normal)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from augcl import PRESETS, LogMel, MelConfig, PairAugmenter, kernels
from augcl import functional as AF
from augcl.kernels import fft_cpu
from augcl.masks import SpecAugment, mask_along_axis
from augcl.mel import _mel_windowed, _spectrum_mel, log_of_mel
from augcl.noise import AddNoise, white_noise
from augcl.stretch import StretchConfig, stretch_rows

from .conftest import cpu_generator

pytestmark = pytest.mark.skipif(not kernels.available("cpu"), reason="Numba is not installed")

MASK64 = (1 << 64) - 1


def _splitmix_reference(seed: int, n: int) -> list:
    """White noise's uniforms ``2 u - 1`` from Python integers (SplitMix64 written out: independent of torch's int64
    arithmetic and of Numba's uint64)."""
    out = []
    for j in range(n):
        z = (seed + (j // 2 + 1) * 0x9E3779B97F4A7C15) & MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z ^= z >> 31
        v = z >> 40 if j % 2 == 0 else (z >> 8) & 0xFFFFFF
        out.append((2 * v + 1) / 2 ** 24 - 1)
    return out


@pytest.mark.parametrize("seed", [0, 1, -1, 2 ** 62 - 1, -(2 ** 62), 123456789])
def test_white_noise_is_splitmix64_then_the_normal_quantile(seed):
    from scipy.special import erfinv

    n = 37
    x = np.array(_splitmix_reference(seed % (1 << 64), n))
    truth = math.sqrt(2) * erfinv(x)
    ref = white_noise(torch.tensor([seed]), n)[0].double().numpy()
    ker = kernels.white_noise(torch.tensor([seed]), n)[0].double().numpy()
    np.testing.assert_allclose(ref, truth, rtol=2e-6, atol=2e-6)  # float32 erfinv of the exact float32 argument
    np.testing.assert_allclose(ker, truth, rtol=2e-6, atol=2e-6)  # Giles' approximation and a series log


def _unmix(h: int) -> int:
    """The SplitMix64 state whose output is ``h`` (each step of the mixer is invertible)."""
    def unshift(y, s):
        x = y
        for _ in range(64 // s + 1):
            x = y ^ (x >> s)
        return x
    z = unshift(h, 31)
    z = (z * pow(0x94D049BB133111EB, -1, 1 << 64)) & MASK64
    z = unshift(z, 27)
    z = (z * pow(0xBF58476D1CE4E5B9, -1, 1 << 64)) & MASK64
    return unshift(z, 30)


@pytest.mark.parametrize("top", [0, 1, (1 << 24) - 2, (1 << 24) - 1])
def test_white_noise_is_finite_and_right_at_the_extreme_uniforms(top):
    """Seeds built backwards through the mixer so that value 0 of the row is the smallest or largest 24-bit uniform:
    2 u - 1 is then +-(1 - 2 ** -24) (a float32 of 2 v + 1 would round to 2 ** 25, i.e. erfinv(1) = inf)."""
    from scipy.special import erfinv

    h = (top << 40) | 0x123456789A
    seed = (_unmix(h) - 0x9E3779B97F4A7C15) & MASK64
    assert (_splitmix_reference(seed, 1)[0] + 1) * 2 ** 24 == 2 * top + 1  # the construction is right
    signed = seed - (1 << 64) if seed >= 1 << 63 else seed
    truth = math.sqrt(2) * erfinv((2 * top + 1) / 2 ** 24 - 1)
    for got in (white_noise(torch.tensor([signed]), 2)[0, 0], kernels.white_noise(torch.tensor([signed]), 2)[0, 0]):
        assert math.isfinite(float(got)) and abs(float(got) - truth) <= 2e-6 * abs(truth) + 1e-6, (float(got), truth)


def test_white_noise_kernel_equals_the_reference_over_many_values():
    seeds = torch.randint(-(2 ** 62), 2 ** 62, (16,), generator=cpu_generator(0))
    ref, ker = white_noise(seeds, 20001), kernels.white_noise(seeds, 20001)
    assert ker.dtype == ref.dtype == torch.float32 and ker.shape == ref.shape == (16, 20001)
    err = (ker - ref).abs()
    assert float(err.max()) <= 2e-6 * (1 + float(ref.abs().max())), float(err.max())


def test_white_noise_is_standard_normal_white_and_independent_between_rows():
    from scipy import stats

    seeds = torch.randint(-(2 ** 62), 2 ** 62, (8,), generator=cpu_generator(1))
    x = kernels.white_noise(seeds, 50000).double().numpy()
    flat = x.ravel()
    assert abs(flat.mean()) < 4 / math.sqrt(flat.size) and abs(flat.std() - 1) < 0.005
    assert stats.kstest(flat[:100000], "norm").pvalue > 1e-3
    lag1 = np.mean([np.corrcoef(r[:-1], r[1:])[0, 1] for r in x])  # even/odd halves of one 64-bit output
    lag2 = np.mean([np.corrcoef(r[:-2], r[2:])[0, 1] for r in x])
    rows = np.corrcoef(x)[np.triu_indices(8, 1)]
    bound = 5 / math.sqrt(x.shape[1])
    assert abs(lag1) < bound and abs(lag2) < bound and np.abs(rows).max() < bound


def test_white_noise_of_a_prefix_is_the_prefix_and_a_replay_is_exact():
    seeds = torch.tensor([5, 6, 7])
    long, short = white_noise(seeds, 1000), white_noise(seeds, 333)
    assert torch.equal(long[:, :333], short)
    assert torch.equal(kernels.white_noise(seeds, 1000)[:, :333], kernels.white_noise(seeds, 333))
    t = AddNoise(p=1.0, output_type="dict")
    x = torch.randn(3, 1, 4000, generator=cpu_generator(2))
    out = t(x, generator=cpu_generator(3))
    assert out.params["noise_seed"].dtype == torch.long and out.params["noise_seed"].shape == (3,)
    assert torch.equal(t(x, params=out.params).samples, out.samples)


@given(power=st.sampled_from([1.0, 2.0, 1.5]), n_fft=st.sampled_from([256, 400, 512]),
       n_mels=st.sampled_from([16, 64, 80]), scale=st.sampled_from(["slaney", "htk"]), seed=st.integers(0, 2 ** 16))
def test_mel_kernel_equals_the_dense_matmul(power, n_fft, n_mels, scale, seed):
    """The sparse sum over each band's span against the reference's dense (n_mels, F) matmul: the same nonzero terms,
    summed in another order (float32: relative to each band's energy)."""
    lm = LogMel(MelConfig(n_fft=n_fft, win_length=n_fft, n_mels=n_mels, mel_scale=scale, power=power))
    frames = torch.randn(3, 7, n_fft, generator=cpu_generator(seed))
    spec = torch.fft.rfft(frames)
    sparse = kernels.sparse_filterbank(lm.filterbank)
    ref = torch.matmul(lm.filterbank.T, spec.transpose(-1, -2).abs() ** power)
    got = kernels.mel_energy(spec, sparse, power)
    assert got.shape == ref.shape == (3, n_mels, 7)
    torch.testing.assert_close(got, ref, rtol=2e-5, atol=1e-6 * float(ref.abs().max()))
    # and in float64, the bins and weights in the same order as the matmul reads them: equal to rounding
    got64 = kernels.mel_energy(spec.to(torch.complex128), sparse, power)
    ref64 = torch.matmul(lm.filterbank.double().T, spec.to(torch.complex128).transpose(-1, -2).abs() ** power)
    torch.testing.assert_close(got64, ref64, rtol=1e-12, atol=1e-12 * float(ref64.abs().max()))


def test_log_mel_with_the_kernel_equals_the_reference_with_gain_and_both_log_modes():
    lm = LogMel()
    frames = torch.randn(4, 9, 400, generator=cpu_generator(4)) * lm.window
    sparse = kernels.sparse_filterbank(lm.filterbank)
    gain = torch.tensor([0.0, 3.0, -2.0, 80.0])
    for mode in ("offset", "clamp"):
        ref = log_of_mel(_spectrum_mel(torch.fft.rfft(frames).transpose(-1, -2), lm.filterbank, 2.0), 1e-6, mode, gain)
        got = log_of_mel(_mel_windowed(frames, lm.filterbank, 400, 2.0, sparse), 1e-6, mode, gain, inplace=True)
        torch.testing.assert_close(got, ref, rtol=0, atol=2e-5)


@given(B=st.integers(1, 4), T=st.integers(1, 3000), K=st.integers(1, 12), width=st.sampled_from([7, 64, 400]),
       lo=st.integers(-900, 3000), step=st.integers(0, 300), seed=st.integers(0, 2 ** 16), limited=st.booleans())
def test_frames_kernel_equals_the_gather_and_window(B, T, K, width, lo, step, seed, limited):
    """Windows at any starts (before the clip, across its end, past a row's length) against the reference's gather
    (an index per sample, :func:`augcl.core._gather_samples`) times the window."""
    g = cpu_generator(seed)
    x = torch.randn(B, T, generator=g)
    first = lo + torch.arange(K) * step + torch.randint(-5, 6, (B, K), generator=g)
    limit = torch.randint(1, T + 1, (B,), generator=g) if limited else None
    window = torch.rand(width, generator=g)
    ref = AF._gather_samples(x, first, width, limit) * window
    got = kernels.frames_at(x, first, window, limit)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("start", [-200, 0, 3000, 9000])
def test_vocoder_analysis_frames_kernel_equals_the_reference_frames(start):
    """The CPU vocoder's two analysis frames per synthesis frame (:func:`augcl.kernels.frames_cpu.analysis_frames`:
    a subset of rows, frames before the clip, across a row's length and wholly past it) against the reference's
    (:func:`augcl.vocoder.stretched_frames` of width ``n_fft + d``, then the window), +0.0 wherever the clip is not
    read."""
    from augcl.kernels import frames_cpu
    from augcl.vocoder import stretched_starts

    n_fft, hop, length = 512, 128, 4000
    x = torch.randn(5, 12000, generator=cpu_generator(11)) * 0.1
    rows = torch.tensor([4, 1, 2])
    rate = torch.tensor([1.1, 0.8, 1.7], dtype=torch.float64)
    lengths = torch.tensor([12000, 5000, 300])  # indexed like rate: lengths of rows 4, 1, 2
    pad = n_fft // hop
    n_frames = -(-length // hop) + 2 * pad + 1
    d = n_fft // 8
    first = torch.full((3,), start) - pad * hop - n_fft // 2
    ref = AF.stretched_frames(x, rate, first, n_frames, hop, n_fft + d, None, n_fft // 2, rows, lengths)
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64).float()
    src = stretched_starts(rate, first, n_frames, hop, n_fft // 2)
    f0, f1 = torch.empty(3, n_frames, n_fft), torch.empty(3, n_frames, n_fft)
    frames_cpu.analysis_frames(x.numpy(), rows.numpy(), src.numpy(), lengths.numpy(), window.numpy(), d, f0.numpy(),
                               f1.numpy())
    for got, want in ((f0, ref[..., :n_fft] * window), (f1, ref[..., d:] * window)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        unread = ref[..., :n_fft] == 0 if got is f0 else ref[..., d:] == 0
        assert not bool(torch.signbit(got[unread]).any())  # +0.0 (the signs of zeros are no signal: vocoder._angle)


@pytest.mark.parametrize("rate", [0.9, 1.1])
def test_cpu_vocoder_on_rows_that_start_in_silence_equals_the_reference(rate):
    """Rows whose first analysis frames read nothing (a segment from -200, short ``lengths``: the ``all`` preset's
    positive), through the whole CPU vocoder against the reference: log-power within 0.05 on bins within 30 dB of
    their frame's loudest. Their silent frames' spectra are zeros whose signs are the FFT's (MKL's AVX-512 path gives
    -0.0 real parts): the reference took ``angle(-0 + 0i) = pi`` as the first frame's phase, the kernel 0, and the
    rows differed by up to 2.6 in the preset's log-mels (vocoder._angle: 0 at a zero, whatever its signs)."""
    x = torch.randn(4, 24000, generator=cpu_generator(12)) * 0.1
    lengths = torch.tensor([24000, 16000, 9000, 500])
    r = torch.full((4,), rate, dtype=torch.float64)
    start = torch.tensor([-200, -200, -200, -1000])
    ref = AF.time_stretch_segment(x, r, start, 15600, lengths=lengths)
    got = kernels.time_stretch_segment(x, r, start, 15600, lengths=lengths)
    window = torch.hann_window(400)

    def log_power(y):
        return torch.log(torch.stft(y, 400, 160, window=window, return_complex=True).abs() ** 2 + 1e-6)

    lr, lg = log_power(ref), log_power(got)
    loud = lr > lr.amax(dim=1, keepdim=True) - math.log(1e3)
    assert float((lg - lr)[loud].abs().max()) < 0.05


@pytest.mark.parametrize("with_lengths", [False, True])
def test_noisy_frames_kernel_equals_crop_noise_and_frames(with_lengths):
    """The fused anchor (crop, white noise at an SNR over the valid samples, windowed frames) against the reference
    blocks one after the other."""
    B, T, K, hop = 6, 30000, 96, 160
    mel = LogMel()
    noise = AddNoise(p=1.0, backend="torch")
    x = torch.randn(B, T, generator=cpu_generator(5)) * 0.1
    n = (K - 1) * hop + 400
    start = torch.tensor([-200, 0, 5000, T - n, T - 100, 14000])
    lengths = torch.tensor([T, 9000, 20000, 1, T, 14500]) if with_lengths else None
    params = noise.sample(B, n, cpu_generator(6))
    params["noise_applied"][1] = False
    seg = AF.crop_segments(x, start, n, lengths)
    pos = start[:, None] + torch.arange(n)
    valid = (pos >= 0) & (pos < (T if lengths is None else lengths[:, None]))
    y = noise.apply(seg, params, valid)
    ref = y.unfold(-1, 400, hop) * mel.window
    got = kernels.noisy_frames(x, start, K, hop, mel.window, params["noise_seed"], params["snr_db"],
                               params["noise_applied"], lengths)
    assert got.shape == (B, K, 400)
    # the noise's erfinv differs by up to 2e-6 of a value (|n| <= 5.4) times its gain (<= 0.6 here: 5-30 dB under a
    # 0.1-std clip): 1e-5 at most, plus float32 rounding of the sums
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=2e-5)


def _bins(n_fft: int) -> tuple:
    """A sparse 'filterbank' whose band ``m`` is bin ``m`` alone, weight 1: the fused kernel then returns the power
    spectrum itself."""
    F = n_fft // 2 + 1
    return np.arange(F, dtype=np.int64), np.arange(F + 1, dtype=np.int64), np.ones(F, np.float32)


@pytest.mark.parametrize("n_fft", [400, 512, 256, 1024, 320, 96, 30, 6, 2])
@pytest.mark.parametrize("width_less", [0, 2, 3])
@pytest.mark.parametrize("power", [2.0, 1.0, 1.5])
def test_fused_fft_is_numpys_float64_power_spectrum(n_fft, width_less, power):
    """The kernel's own real FFT (radix 4/2/3/5 Stockham across a tile's frames, then the real-FFT split) against
    numpy's float64 rfft of the same zero-padded frames, bin by bin, with windows shorter than n_fft (odd too) and a
    frame count that is not a multiple of the tile."""
    width = max(n_fft - width_less, 1)
    assert fft_cpu.plan(n_fft) is not None
    g = cpu_generator(n_fft + width_less)
    x = torch.randn(3, 5000, generator=g)
    K = 21
    first = torch.randint(0, 5000 - width, (3, K), generator=g)
    window = torch.rand(width, generator=g)
    got = kernels.mel_at(x, first, window, n_fft, _bins(n_fft), power).numpy()  # (B, F, K)
    frames = (AF._gather_samples(x, first, width) * window).double().numpy()
    truth = (np.abs(np.fft.rfft(frames, n=n_fft)) ** power).transpose(0, 2, 1)
    scale = truth.max(axis=1, keepdims=True)  # float32 rounding relative to each frame's loudest bin
    err = np.abs(got - truth) / scale
    assert float(err.max()) <= 3e-6, float(err.max())


@pytest.mark.parametrize("n_fft", [14, 401, 22, 0, 1])
def test_sizes_without_butterflies_keep_the_torch_fft(n_fft):
    """An n_fft whose half has a prime factor above 5 (or an odd one) has no plan: the kernels take the FFT in torch
    (MKL), and the result is the same log-mel."""
    assert fft_cpu.plan(n_fft) is None and not kernels.fused_mel(n_fft, torch.float32)
    if n_fft >= 14:
        cfg = MelConfig(n_fft=n_fft, win_length=n_fft, hop_length=n_fft // 2, n_mels=4, f_min=0.0, f_max=4000.0)
        x = torch.randn(2, 3000, generator=cpu_generator(1))
        ref = LogMel(cfg, backend="torch")(x)
        torch.testing.assert_close(LogMel(cfg, backend="kernels")(x), ref, rtol=0, atol=1e-4)
    assert not kernels.fused_mel(400, torch.float64)  # float64 frames keep the float64 torch FFT too


@given(B=st.integers(1, 3), T=st.integers(1, 3000), K=st.integers(1, 40), lo=st.integers(-900, 3000),
       step=st.integers(0, 300), seed=st.integers(0, 2 ** 16), limited=st.booleans())
def test_fused_mel_at_equals_the_gather_window_fft_and_mel(B, T, K, lo, step, seed, limited):
    """Frames at any starts (before the clip, across its end, past a row's length) through the fused kernel against
    the reference's gather, window, torch's rfft and the dense mel matmul."""
    g = cpu_generator(seed)
    lm = LogMel()
    x = torch.randn(B, T, generator=g)
    first = lo + torch.arange(K) * step + torch.randint(-5, 6, (B, K), generator=g)
    limit = torch.randint(1, T + 50, (B,), generator=g) if limited else None  # past T too: clipped to T
    frames = AF._gather_samples(x, first, 400, None if limit is None else limit.clamp_max(T)) * lm.window
    ref = _spectrum_mel(torch.fft.rfft(frames).transpose(-1, -2), lm.filterbank, 2.0)
    got = kernels.mel_at(x, first, lm.window, 400, kernels.sparse_filterbank(lm.filterbank), 2.0, limit)
    assert got.shape == ref.shape == (B, 64, K)
    bound = 2e-6 * ref.amax(dim=1, keepdim=True) + 1e-12  # float32 rounding relative to each frame's loudest band
    assert bool(((got - ref).abs() <= bound + 2e-5 * ref.abs()).all())


def test_fused_mel_writes_into_out_and_agrees_with_the_frames_path():
    """``out`` is written in place; the fused path equals the materialised-frames path (MKL + the mel kernel) to
    float32 rounding."""
    lm = LogMel()
    x = torch.randn(4, 20000, generator=cpu_generator(3))
    first = torch.arange(96) * 160 + torch.tensor([[0], [100], [3000], [4000]])
    sparse = kernels.sparse_filterbank(lm.filterbank)
    out = torch.full((4, 64, 96), float("nan"))
    got = kernels.mel_at(x, first, lm.window, 400, sparse, 2.0, out=out)
    assert got.data_ptr() == out.data_ptr() and bool(torch.isfinite(out).all())
    ref = _mel_windowed(kernels.frames_at(x, first, lm.window), lm.filterbank, 400, 2.0, sparse)
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=1e-6 * float(ref.max()))


def test_fused_mel_reads_rows_of_a_wider_tensor_in_place_and_nothing_past_them():
    """A ``(B, T)`` view of wider rows (the RIR's ``full[:, :T]``) is read where it lies, not copied: the same bits as
    its contiguous copy, with NaN in the storage past each row's ``T`` samples (read, they would show), frames up to
    the row's end and a limit past ``T``; other layouts are left to the contiguous copy."""
    lm = LogMel()
    sparse = kernels.sparse_filterbank(lm.filterbank)
    wide = torch.full((3, 9000), float("nan"))
    wide[:, :6000] = torch.randn(3, 6000, generator=cpu_generator(4))
    view = wide[:, :6000]
    assert kernels._rows_in_place(view).shape == (3, 9000)
    first = (torch.arange(36) * 160).expand(3, 36)  # the last frame ends at sample 6000
    for limit in (None, torch.tensor([6000, 9000, 4000])):
        got = kernels.mel_at(view, first, lm.window, 400, sparse, 2.0, limit=limit)
        assert torch.equal(got, kernels.mel_at(view.contiguous(), first, lm.window, 400, sparse, 2.0, limit=limit))
        assert bool(torch.isfinite(got).all())
    assert kernels._rows_in_place(wide[:, 100:6100][:2]).shape == (2, 9000)
    for other in (wide[1:, ::2], wide[1:, 3000:], view.contiguous()):  # strided samples; rows whose storage would
        assert kernels._rows_in_place(other) is other  # run past the tensor's end; contiguous: as they are


def test_the_slp_switch_is_put_back_and_the_kernel_has_one_signature():
    import numba

    before = numba.config.SLP_VECTORIZE
    with pytest.raises(RuntimeError):
        with fft_cpu._slp():
            assert numba.config.SLP_VECTORIZE == 1
            raise RuntimeError
    assert numba.config.SLP_VECTORIZE == before
    lm = LogMel()
    sparse = kernels.sparse_filterbank(lm.filterbank)
    x = torch.randn(2, 3000, generator=cpu_generator(0))
    first = torch.arange(5).expand(2, 5) * 160  # not contiguous, and float64 clips below: brought to the one signature
    kernels.mel_at(x, first, lm.window, 400, sparse, 2.0)
    fft_cpu.run(x.double().numpy(), first.numpy(), np.array([3000, 3000]), lm.window.double().numpy(), 400, sparse, 2.0,
                log=(1e-6, "clamp"))
    assert numba.config.SLP_VECTORIZE == before and len(fft_cpu.mel_at.signatures) == 1


def test_fused_mel_refuses_an_out_of_another_shape_and_mel_from_context_makes_its_own():
    """The kernel never writes past ``out``: a wrong shape is refused (it once wrote 5 floats past a view); callers that
    hold a buffer of another shape or layout get a new tensor."""
    lm = LogMel()
    sparse = kernels.sparse_filterbank(lm.filterbank)
    x = torch.randn(2, 16400, generator=cpu_generator(1))
    first = torch.arange(101).expand(2, 101) * 160
    with pytest.raises(ValueError, match="out must be"):
        kernels.mel_at(x, first, lm.window, 400, sparse, 2.0, out=torch.empty(2, 64, 96))
    buf = torch.full((2 * 64 * 96 + 8,), 7.0)
    got = lm.mel_from_context(x, out=buf[:2 * 64 * 96].view(2, 64, 96))  # 101 frames: the buffer is not used
    assert got.shape == (2, 64, 101) and bool((buf == 7.0).all())
    strided = torch.empty(2, 101, 64).transpose(1, 2)
    ref = LogMel(backend="torch").mel_from_context(x)
    torch.testing.assert_close(lm.mel_from_context(x, out=strided), ref, rtol=2e-5, atol=1e-6 * float(ref.max()))


def test_inputs_that_need_gradients_keep_them_on_the_kernel_backends():
    x = torch.randn(2, 8000, generator=cpu_generator(2), requires_grad=True)
    out = LogMel()(x)
    assert out.requires_grad
    out.sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    spec = torch.randn(2, 1, 64, 96, requires_grad=True)
    aug = SpecAugment()
    masked = aug.apply(spec, aug.sample(2, 64, 96, cpu_generator(3)), inplace=True)
    assert masked.requires_grad and masked.data_ptr() != spec.data_ptr()


def test_the_torch_backend_runs_no_kernel(monkeypatch, impulse_bank):
    def refuse(*args, **kwargs):
        raise AssertionError("a kernel ran on backend='torch'")

    for name in ("mel_at", "noisy_segments", "noisy_mel", "log_mel_", "row_norms", "fill_masks", "mul_rows_", "mel_energy",
                 "frames_at", "noisy_frames", "white_noise", "time_stretch_segment", "vocoder_phase"):
        monkeypatch.setattr(kernels, name, refuse)
    x = torch.randn(3, 24000, generator=cpu_generator(4)) * 0.1
    for preset in PRESETS:
        kw = {"rir_bank": impulse_bank} if PRESETS[preset](16000).positive.rir is not None else {}
        PairAugmenter.from_preset(preset, backend="torch", **kw)(x, generator=cpu_generator(5))
    LogMel(backend="torch")(x)


@pytest.mark.parametrize("with_lengths", [False, True])
def test_noisy_segments_kernel_equals_crop_and_noise(with_lengths):
    """The fused anchor's segments (crop, white noise at an SNR over the valid samples) against the reference blocks
    one after the other; its frames equal :func:`kernels.noisy_frames`'."""
    B, T, n = 6, 30000, 15600
    noise = AddNoise(p=1.0, backend="torch")
    x = torch.randn(B, T, generator=cpu_generator(5)) * 0.1
    start = torch.tensor([-200, 0, 5000, T - n, T - 100, 14000])
    lengths = torch.tensor([T, 9000, 20000, 1, T, 14500]) if with_lengths else None
    params = noise.sample(B, n, cpu_generator(6))
    params["noise_applied"][1] = False
    pos = start[:, None] + torch.arange(n)
    valid = (pos >= 0) & (pos < (T if lengths is None else lengths[:, None]))
    ref = noise.apply(AF.crop_segments(x, start, n, lengths), params, valid)
    args = (params["noise_seed"], params["snr_db"], params["noise_applied"], lengths)
    got = kernels.noisy_segments(x, start, n, *args)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=2e-5)  # the erfinv's 2e-6 times the gain, as below
    window = LogMel().window
    assert torch.equal(got.unfold(-1, 400, 160) * window, kernels.noisy_frames(x, start, 96, 160, window, *args))


@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("log", [None, (1e-6, "offset"), (1e-3, "clamp")])
def test_noisy_mel_is_the_noisy_segments_then_the_fused_log_mel(with_lengths, log):
    """The anchor's one kernel (segment and noise in the cache, then the log-mel) gives the very numbers of its two
    kernels one after the other, into ``out`` where given."""
    B, T, K = 5, 30000, 96
    lm = LogMel()
    sparse = kernels.sparse_filterbank(lm.filterbank)
    noise = AddNoise(p=1.0, backend="torch")
    x = torch.randn(B, T, generator=cpu_generator(7)) * 0.1
    start = torch.tensor([-200, 0, 5000, T - 15600, T - 100])
    lengths = torch.tensor([T, 9000, 20000, 1, T]) if with_lengths else None
    params = noise.sample(B, 15600, cpu_generator(8))
    params["noise_applied"][2] = False
    args = (params["noise_seed"], params["snr_db"], params["noise_applied"])
    seg = kernels.noisy_segments(x, start, (K - 1) * 160 + 400, *args, lengths)
    ref = kernels.mel_at(seg, (torch.arange(K) * 160).expand(B, K), lm.window, 400, sparse, 2.0, log=log)
    out = torch.full((B, 64, K), float("nan"))
    got = kernels.noisy_mel(x, start, K, 160, lm.window, *args, 400, sparse, 2.0, lengths, out=out, log=log)
    assert got.data_ptr() == out.data_ptr() and torch.equal(got, ref)
    with pytest.raises(ValueError, match="out must be"):
        kernels.noisy_mel(x, start, K, 160, lm.window, *args, 400, sparse, 2.0, out=torch.empty(B, 64, K - 1))


def _ulps(got: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|got - exact| in units of float32's spacing at the exact value."""
    return np.abs(got.astype(np.float64) - exact) / np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)


@pytest.mark.parametrize("mode", ["offset", "clamp"])
def test_the_kernels_log_is_within_one_ulp_of_the_exact_log(mode):
    """The fused log-mel's own log (vectorised: exponent, then the atanh series of the mantissa) against float64's log
    of the same float32 argument, over float32's whole normal range; the arguments it cannot split (0, subnormal,
    inf, NaN, negative) give libm's values."""
    rng = np.random.default_rng(0)
    v = np.concatenate([10.0 ** rng.uniform(-37, 38, 200_000), rng.uniform(0.5, 2.0, 100_000),
                        1.0 + rng.uniform(-1e-6, 1e-6, 1000)]).astype(np.float32)
    eps = np.float32(1e-6)
    got = kernels.log_mel_(torch.from_numpy(v.copy())[None], 1e-6, mode).numpy()[0]
    arg = (v + eps) if mode == "offset" else np.maximum(v, eps)
    assert _ulps(got, np.log(arg.astype(np.float64))).max() < 1.0  # torch.log: 0.86 here
    special = np.array([0.0, 1e-45, 1e-39, np.inf, np.nan, -1.0, 2.0], np.float32)
    got = kernels.log_mel_(torch.from_numpy(special.copy())[None], 0.0, mode).numpy()[0]
    arg = special if mode == "offset" else np.where(special < 0, np.float32(0.0), special)  # max(v, 0), NaN kept
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.log(arg.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(got, want)  # -inf, the subnormals' logs, inf, NaN, NaN or -inf (and log 2)
    nan_clamped = kernels.log_mel_(torch.tensor([[float("nan"), 0.0]]), 1e-6, "clamp")
    assert bool(torch.isnan(nan_clamped[0, 0])) and float(nan_clamped[0, 1]) == pytest.approx(math.log(1e-6))


def test_logmel_log_on_the_kernels_equals_the_reference_with_gain():
    """``LogMel.log`` takes the kernels' log on the CPU (the fused log-mel's, so a row's values are the same bits on
    every route): the reference's values to float32 rounding, with and without the overflow rescue's gain."""
    mel = torch.rand(4, 1, 64, 96, generator=cpu_generator(9)) * torch.tensor([1e-9, 1.0, 1e6, 3e30]).reshape(4, 1, 1, 1)
    gain = torch.tensor([0.0, 3.0, 0.0, 80.0])
    for mode in ("offset", "clamp"):
        lm = LogMel(MelConfig(log_mode=mode))
        for g in (None, gain):
            ref = log_of_mel(mel.clone(), 1e-6, mode, g)
            got = lm.log(mel.clone(), g)
            torch.testing.assert_close(got, ref, rtol=0, atol=2 * float(torch.finfo(torch.float32).eps) * 80)
            assert torch.equal(lm.log(mel.clone(), g), got)
    plain = lm.log(mel.clone())
    assert torch.equal(lm.log(mel.clone(), gain)[[0, 2]], plain[[0, 2]])  # rows without gain: the plain log's bits
    # the fused log-mel's log (compiled inside mel_at, with SLP) and LogMel.log's (log_rows) are the same bits
    x = torch.randn(3, 16000, generator=cpu_generator(10))
    first = (torch.arange(96) * 160).expand(3, 96)
    sparse = kernels.sparse_filterbank(lm.filterbank)
    for log in ((1e-6, "offset"), (1e-6, "clamp")):
        fused = kernels.mel_at(x, first, lm.window, 400, sparse, 2.0, log=log)
        assert torch.equal(fused, kernels.log_mel_(kernels.mel_at(x, first, lm.window, 400, sparse, 2.0), *log))
    # written through NumPy, the log still tells autograd: a tensor saved for backward is not silently changed
    a = torch.rand(2, 64, 96, requires_grad=True)
    mel = torch.rand(2, 64, 96)
    y = a * mel
    LogMel().log(mel)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_row_norms_equal_float64_norms_and_carry_nan_and_inf():
    x = torch.randn(5, 9001, generator=cpu_generator(2))
    x[1] *= 1e25  # squares past float32's range: the float64 sums still hold them
    x[2, 17] = float("nan")
    x[3, 4] = float("inf")
    x[4] = 0.0
    got = kernels.row_norms(x)
    truth = np.linalg.norm(x.double().numpy(), axis=1)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy()[[0, 1, 4]], truth[[0, 1, 4]].astype(np.float32), rtol=1e-6)
    assert math.isnan(float(got[2])) and float(got[3]) == math.inf


@given(B=st.integers(1, 4), C=st.integers(1, 2), F=st.integers(1, 20), K=st.integers(1, 30),
       seed=st.integers(0, 2 ** 16), fill=st.sampled_from(["mean", -3.5]))
def test_masks_in_place_are_the_references_values(B, C, F, K, seed, fill):
    """SpecAugment with ``inplace=True`` (the CPU kernel writes only the masked cells) gives the same bits as its
    ``torch.where`` over both axes, and without ``inplace`` the input is left as it was."""
    g = cpu_generator(seed)
    aug = SpecAugment(2, 12, 2, 8, fill=fill)
    spec = torch.randn(B, C, F, K, generator=g)
    params = aug.sample(B, F, K, g)
    keep = spec.clone()
    ref = aug.apply(spec, params)
    assert torch.equal(spec, keep)
    value = spec.mean(dim=(1, 2, 3)) if fill == "mean" else torch.full((B,), fill)
    by_axis = mask_along_axis(mask_along_axis(spec, params["time_mask_start"], params["time_mask_width"], -1, value),
                              params["freq_mask_start"], params["freq_mask_width"], -2, value)
    assert torch.equal(ref, by_axis)
    got = aug.apply(spec, params, inplace=True)
    assert got.data_ptr() == spec.data_ptr() and torch.equal(got, ref)


@pytest.mark.parametrize("preset", [p for p in PRESETS])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_every_preset_on_the_kernels_equals_the_reference(preset, with_lengths, impulse_bank):
    """``backend="auto"`` (every CPU kernel) against ``"torch"`` on the same params: the log-mels agree to float32
    rounding, except the vocoder's float32 phases in ``all`` (bins within 30 dB of their frame's loudest)."""
    x = torch.randn(5, 24000, generator=cpu_generator(7)) * 0.1
    lengths = torch.tensor([24000, 16000, 9000, 24000, 500]) if with_lengths else None
    kw = {"rir_bank": impulse_bank} if PRESETS[preset](16000).positive.rir is not None else {}
    ref = PairAugmenter.from_preset(preset, backend="torch", **kw)(x, generator=cpu_generator(8), lengths=lengths)
    got = PairAugmenter.from_preset(preset, backend="auto", **kw)(x, params=ref.params, lengths=lengths)
    torch.testing.assert_close(got.anchor, ref.anchor, rtol=0, atol=1e-4)
    if preset != "all":
        torch.testing.assert_close(got.positive, ref.positive, rtol=0, atol=1e-4)
    else:
        loud = ref.positive > ref.positive.amax(dim=2, keepdim=True) - math.log(1e3)
        assert float((got.positive - ref.positive)[loud].abs().max()) < 0.05


@pytest.mark.parametrize("rates", [(0.8, 1.25), (0.5, 2.0)])
def test_vocoder_out_lengths_skip_only_frames_past_them(rates):
    """The CPU vocoder with ``out_lengths`` (rows grouped by the frames they need) equals the whole-length run on
    every sample a row keeps."""
    x = torch.randn(7, 20000, generator=cpu_generator(9)) * 0.1
    rate = torch.empty(7, dtype=torch.float64).uniform_(*rates, generator=cpu_generator(10))
    start = torch.zeros(7, dtype=torch.long)
    L = math.ceil(20000 / rates[0])
    keep = AF.stretched_length(20000, rate).clamp_max(L)
    full = kernels.time_stretch_segment(x, rate, start, L)
    part = kernels.time_stretch_segment(x, rate, start, L, out_lengths=keep)
    inside = torch.arange(L) < keep[:, None]
    assert torch.equal(full[inside], part[inside])
    none = torch.zeros(0, dtype=torch.long)  # no row to stretch: an empty batch, not an error
    assert kernels.time_stretch_segment(x, rate[:0], none, L, rows=none).shape == (0, L)
    # without out_lengths a row computes only the frames that reach its L samples: the same bits as every frame (an
    # out_lengths past L keeps them all)
    every = kernels.time_stretch_segment(x, rate, start, L, out_lengths=torch.full((7,), L + 10 * 512))
    assert torch.equal(full, every)


@pytest.mark.parametrize("applied", ["some", "all", "none"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_crop_and_stretch_is_the_crop_beside_the_stretched_rows(applied, with_lengths, monkeypatch):
    """``kernels.crop_and_stretch``: the unstretched rows are the reference's crop (starts before the clip, past its
    end and past ``lengths`` included), the stretched rows the vocoder's, the same bits each; and ``stretch_rows``
    (RandomSegment's positive) takes it on the CPU kernels and the reference's crop on the torch backend."""
    B, T, L = 9, 12000, 3000
    g = cpu_generator(11)
    x = torch.randn(B, T, generator=g) * 0.1
    rate = torch.where(torch.rand(B, generator=g) < 0.5, torch.tensor(0.9, dtype=torch.float64),
                       torch.tensor(1.1, dtype=torch.float64))
    start = torch.tensor([-500, 0, 2000, T - 1000, T + 10, 4000, 7000, -L - 5, 100])
    on = {"some": torch.rand(B, generator=g) < 0.5, "all": torch.ones(B, dtype=torch.bool),
          "none": torch.zeros(B, dtype=torch.bool)}[applied]
    if applied == "some":
        on[:2] = torch.tensor([True, False])
    rate = torch.where(on, rate, torch.ones_like(rate))
    lengths = torch.randint(1000, T + 1, (B,), generator=g) if with_lengths else None
    got = kernels.crop_and_stretch(x, rate, on, start, L, max_rate=1.1, lengths=lengths)
    want = AF.crop_segments(x, start, L, lengths=lengths)
    rows = on.nonzero().flatten()
    if len(rows):
        want[rows] = kernels.time_stretch_segment(x, rate[rows], start[rows], L, max_rate=1.1, rows=rows,
                                                  lengths=None if lengths is None else lengths[rows])
    assert torch.equal(got, want)
    config = StretchConfig(p=0.5)
    calls = []
    real = kernels.crop_and_stretch
    monkeypatch.setattr(kernels, "crop_and_stretch", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert torch.equal(stretch_rows(x, rate, on, start, L, None, config, "kernels", lengths), got) and calls
    calls.clear()
    out = stretch_rows(x, rate, on, start, L, None, config, "torch", lengths)  # the reference: crop, then stretch
    assert not calls and torch.equal(out[~on], want[~on])
    if len(rows):
        ref = AF.time_stretch_segment(x, rate[rows], start[rows], L, max_rate=1.1, rows=rows,
                                      lengths=None if lengths is None else lengths[rows])
        assert torch.equal(out[rows], ref)


def test_the_kernels_leave_torchs_thread_count_as_set():
    """Numba's OpenMP pool, started by the first kernel call, resets the OpenMP thread count torch shares: the
    kernels put torch's back (else a run with --threads 1 trained on 2, and two runs in one process differed). A
    fresh process, so that the pool starts inside the check."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(1); from augcl import kernels, PairAugmenter; "
            "kernels.white_noise(torch.tensor([1, 2]), 10); assert torch.get_num_threads() == 1, 'white_noise'; "
            "PairAugmenter.from_preset('all')(torch.randn(2, 20000), generator=torch.Generator().manual_seed(0)); "
            "assert torch.get_num_threads() == 1, 'all'; import numba; assert numba.get_num_threads() == 1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("F", [1, 7, 16385])
def test_mul_rows_is_the_gathered_product_correctly_rounded(dtype, F):
    """The RIR's spectral product in place against the exact product (float64 of float32 factors, or exact rationals
    for float64 through ``fractions``): each part ``ac - bd``, ``ad + bc`` with every operation rounded once, within
    an ulp of the parts' magnitudes; and within that of torch's ``spec.mul_(table[index])`` (whose elements outside
    its vector loop round through fused multiply-adds). Repeated and out-of-order rows, an uneven split over threads."""
    g = cpu_generator(11)
    table = torch.randn(5, F, dtype=dtype, generator=g)
    spec = torch.randn(9, F, dtype=dtype, generator=g)
    index = torch.tensor([4, 0, 0, 3, 1, 4, 2, 2, 0])
    a, b = spec.clone(), table[index]
    got = kernels.mul_rows_(spec, table, index)
    assert got is spec
    eps = torch.finfo(got.real.dtype).eps
    scale = (a.real.abs() * b.real.abs() + a.imag.abs() * b.imag.abs()).double()
    scale_i = (a.real.abs() * b.imag.abs() + a.imag.abs() * b.real.abs()).double()
    if dtype == torch.complex64:  # float32 factors: their products and sums are exact in float64 to 2^-48
        ar, ai, br, bi = (t.double() for t in (a.real, a.imag, b.real, b.imag))
        exact_r, exact_i = ar * br - ai * bi, ar * bi + ai * br
    else:  # float64: rounded to float64 once, from exact rationals (a sample of rows: Fractions are slow)
        from fractions import Fraction
        rows = slice(0, 2) if F > 100 else slice(None)
        a, b, got, scale, scale_i = a[rows], b[rows], got[rows], scale[rows], scale_i[rows]
        fr = lambda t: [[Fraction(float(v)) for v in row] for row in t.tolist()]
        ar, ai, br, bi = fr(a.real), fr(a.imag), fr(b.real), fr(b.imag)
        exact_r = torch.tensor([[float(p * q - r * s) for p, q, r, s in zip(*c)] for c in zip(ar, br, ai, bi)],
                               dtype=torch.float64)
        exact_i = torch.tensor([[float(p * s + r * q) for p, q, r, s in zip(*c)] for c in zip(ar, br, ai, bi)],
                               dtype=torch.float64)
    assert bool(((got.real.double() - exact_r).abs() <= 1.5 * eps * scale).all())
    assert bool(((got.imag.double() - exact_i).abs() <= 1.5 * eps * scale_i).all())
    want = a.clone().mul_(b)
    assert bool(((got - want).abs().double() <= 3 * eps * (scale + scale_i)).all())
    with pytest.raises(ValueError, match="contiguous"):
        kernels.mul_rows_(torch.randn(9, 2 * F, dtype=dtype)[:, ::2], table, index)
    with pytest.raises(ValueError, match="one dtype"):
        kernels.mul_rows_(spec.to(torch.complex128 if dtype == torch.complex64 else torch.complex64), table, index)


@pytest.mark.parametrize("compensate", [False, True])
def test_rir_kernel_product_equals_the_reference_and_keeps_the_dry_rows(compensate, impulse_bank):
    """ApplyImpulseResponse on the kernels (the product without the gather, the dry rows written into the wet
    output) against backend='torch' on the same draws: to float32 rounding (the product's rounding differs by an ulp
    at most: test above); rows not applied are the input exactly; with a gradient the reference's route runs."""
    from augcl import ApplyImpulseResponse

    x = torch.randn(6, 3000, generator=cpu_generator(12)) * 0.1
    ref = ApplyImpulseResponse(impulse_bank, p=0.5, compensate_for_propagation_delay=compensate, backend="torch")
    ker = ApplyImpulseResponse(impulse_bank, p=0.5, compensate_for_propagation_delay=compensate, backend="kernels")
    params = ref.sample(6, 3000, cpu_generator(13))
    params["rir_applied"] = torch.tensor([True, False, True, True, False, True])
    want = ref.apply(x, params)
    got = ker.apply(x, params)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * float(want.abs().max()))
    assert torch.equal(got[~params["rir_applied"]], x[~params["rir_applied"]])
    xg = x.clone().requires_grad_(True)
    out = ker.apply(xg, params)
    out.sum().backward()
    assert torch.equal(out.detach(), want) and xg.grad is not None



def test_kernel_caches_are_stamped_with_every_kernel_source_and_only_kernels(tmp_path):
    """Every function of augcl/kernels carries one stamp of all the folder's sources (kernels._numba_cache); a
    function elsewhere keeps Numba's own locator; the stamp changes with any file of the folder."""
    from numba.core import caching

    from augcl.kernels import _numba_cache, frames_cpu, noise_cpu

    for kernel in (frames_cpu._noisy_segment, noise_cpu.white_noise, fft_cpu.mel_at):
        locator = kernel._cache._impl._locator
        assert isinstance(locator, _numba_cache.LOCATORS)
        assert locator.get_source_stamp() == _numba_cache.STAMP == _numba_cache.sources_stamp()

    def elsewhere():
        return 1

    assert not isinstance(caching.CompileResultCacheImpl(elsewhere)._locator, _numba_cache.LOCATORS)
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 1\n")
    before = _numba_cache.sources_stamp(str(tmp_path))
    (tmp_path / "b.py").write_text("y = 2\n")
    assert _numba_cache.sources_stamp(str(tmp_path)) != before

_STALE_CHECK = """
import sys, torch
from augcl import kernels
x = torch.linspace(-0.5, 0.5, 4000).reshape(2, 2000)
seg = kernels.noisy_segments(x, torch.tensor([0, 100]), 1000, torch.tensor([7, 8]), torch.tensor([0.0, 10.0]),
                             torch.tensor([True, True]))
import augcl
print(augcl.__file__)
print(repr(float(seg.abs().sum())))
"""


@pytest.mark.slow
def test_a_kernel_recompiles_when_a_kernel_file_it_calls_into_changes(tmp_path):
    """Numba keys a cached function on its own file only: ``frames_cpu._noisy_segment`` inlines ``noise_cpu``'s
    ``noise_row``, so an edit of noise_cpu.py alone (a pull, an upgrade that leaves __pycache__ behind) left the cached
    segment kernel running the old noise. On a copy of the package: run, change noise_row's scale in noise_cpu.py
    only, run again in a new process: the new noise (kernels._numba_cache keys every kernel on all their sources)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from .conftest import REPO

    pkg = tmp_path / "augcl"
    shutil.copytree(Path(REPO) / "augcl", pkg, ignore=shutil.ignore_patterns("__pycache__"))

    # the copy's own __pycache__ and locators, whatever this process's Numba settings
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "NUMBA_CACHE_LOCATOR_CLASSES", "NUMBA_DISABLE_JIT")}
    env["PYTHONPATH"] = str(tmp_path)

    def run() -> float:
        res = subprocess.run([sys.executable, "-c", _STALE_CHECK], cwd=tmp_path, capture_output=True, text=True,
                             env=env, timeout=600)
        assert res.returncode == 0, res.stderr
        *_, where, total = res.stdout.strip().splitlines()
        assert Path(where).is_relative_to(pkg), where  # the copy, not the checkout
        return float(total)

    before = run()
    noise = pkg / "kernels" / "noise_cpu.py"
    old = "out[j0 + t] = SQRT2 * (p if w < np.float32(5.0) else q) * x[t]"
    assert old in noise.read_text()
    noise.write_text(noise.read_text().replace(old, old.replace("SQRT2 *", "np.float32(0.0) * SQRT2 *")))
    assert any((pkg / "kernels" / "__pycache__").glob("frames_cpu._noisy_segment*.nbi"))  # it was cached
    after = run()
    x = torch.linspace(-0.5, 0.5, 4000).reshape(2, 2000)
    clean = float(x[0, 0:1000].abs().sum() + x[1, 100:1100].abs().sum())  # the segments without their noise
    assert before != clean and after == pytest.approx(clean, rel=1e-6)
