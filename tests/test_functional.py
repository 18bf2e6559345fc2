"""augcl.functional against independent references: numpy/scipy/librosa and analytic signals."""
import math

import librosa
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from augcl import functional as AF

from .conftest import SR, peak_freq, rms_db, tone


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "bad, exc, words",
    [
        (np.zeros((2, 100), np.float32), TypeError, "torch.Tensor"),
        (torch.zeros(2, 100, dtype=torch.int16), TypeError, "32768"),
        (torch.zeros(2, 100, dtype=torch.complex64), TypeError, "real floating"),
        (torch.zeros(100), ValueError, "unsqueeze(0)"),
        (torch.zeros(2, 2, 100), ValueError, "downmix"),
        (torch.zeros(2, 1, 1, 100), ValueError, "(B, T)"),
        (torch.zeros(0, 100), ValueError, "empty"),
        (torch.zeros(2, 0), ValueError, "empty"),
    ],
)
def test_as_batch_rejects_bad_input_with_named_error(bad, exc, words):
    with pytest.raises(exc, match="wave") as info:
        AF.as_batch(bad)
    assert words in str(info.value)


def test_as_batch_accepts_channel_dim():
    x = torch.randn(3, 1, 50)
    assert torch.equal(AF.as_batch(x), x[:, 0])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_check_finite(value):
    x = torch.zeros(2, 10)
    x[1, 3] = value
    with pytest.raises(ValueError, match="NaN or Inf"):
        AF.check_finite(x)


def test_check_finite_sum_shortcut_is_exact():
    """The check sums first: +Inf and -Inf together (sum NaN) still raise; finite values whose sum
    overflows do not."""
    x = torch.zeros(2, 10)
    x[0, 1], x[1, 2] = float("inf"), -float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        AF.check_finite(x)
    big = torch.full((2, 10), torch.finfo(torch.float32).max)
    assert not torch.isfinite(big.sum())
    AF.check_finite(big)


# ---------------------------------------------------------------------------------------------- cropping
@given(B=st.integers(1, 4), T=st.integers(1, 300), L=st.integers(1, 200), seed=st.integers(0, 2**16))
def test_crop_segments_equals_numpy_slicing(B, T, L, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T)).astype(np.float32)
    start = rng.integers(-L - 5, T + 5, size=B)  # windows inside, across either end, and wholly outside
    out = AF.crop_segments(torch.from_numpy(x), torch.from_numpy(start), L).numpy()
    for b in range(B):
        np.testing.assert_array_equal(out[b], _numpy_window(x[b], start[b], L))


def _numpy_window(row: np.ndarray, start: int, width: int) -> np.ndarray:
    """``row[start : start + width]`` with zeros outside the row."""
    out = np.zeros(width, row.dtype)
    lo, hi = max(start, 0), min(start + width, len(row))
    if hi > lo:
        out[lo - start: hi - start] = row[lo:hi]
    return out


@given(B=st.integers(1, 4), K=st.integers(1, 6), T=st.integers(1, 120), width=st.integers(1, 60),
       seed=st.integers(0, 2**16))
def test_gather_windows_equals_numpy_on_every_path(B, K, T, width, seed):
    """Many windows per row: the CPU's whole-window path (with its redo of the windows that cross an end) and
    the per-sample path give numpy's windows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T)).astype(np.float32)
    start = rng.integers(-width - 3, T + 3, size=(B, K))
    ref = np.stack([np.stack([_numpy_window(x[b], start[b, k], width) for k in range(K)]) for b in range(B)])
    xt, st_ = torch.from_numpy(x), torch.from_numpy(start)
    np.testing.assert_array_equal(AF._gather_windows(xt, st_, width).numpy(), ref)
    np.testing.assert_array_equal(AF._gather_samples(xt, st_, width).numpy(), ref)
    rows = torch.from_numpy(rng.permutation(B)[: max(1, B - 1)])  # a reordered subset of the rows
    np.testing.assert_array_equal(AF._gather_windows(xt, st_[rows], width, rows).numpy(), ref[rows.numpy()])
    # frames within a span of their row's first window (the stretched frames' case): both frame readers
    first = np.sort(start, axis=1)
    span = int((first - first[:, :1]).max()) + width
    ref = np.stack([np.stack([_numpy_window(x[b], first[b, k], width) for k in range(K)]) for b in range(B)])
    for read in (AF._frames_at, AF._frames_in_region):
        np.testing.assert_array_equal(read(xt, torch.from_numpy(first), width, span).numpy(), ref)
        np.testing.assert_array_equal(read(xt, torch.from_numpy(first)[rows], width, span, rows).numpy(),
                                      ref[rows.numpy()])


# ---------------------------------------------------------------------------------------------- convolution
@given(B=st.integers(1, 3), T=st.integers(1, 400), N=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_fft_convolve_equals_numpy_convolve(B, T, N, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T))
    h = rng.standard_normal((B, N)) * np.exp(-np.arange(N) / 50.0)
    out = AF.fft_convolve(torch.from_numpy(x).float(), torch.from_numpy(h).float()).numpy()
    assert out.shape == (B, T)
    for b in range(B):
        ref = np.convolve(x[b], h[b])[:T]
        rel = np.linalg.norm(out[b] - ref) / max(np.linalg.norm(ref), 1e-12)
        assert rel < 1e-4  # float32 FFT round-off over sizes up to 1024


def test_fft_convolve_has_the_gradients_of_both_factors():
    """The spectra's product is taken in place only where no gradient needs its factors: gradients of the clip and of
    the IR are numerically right (float64 gradcheck), and a call without gradients gives the same values."""
    w = torch.randn(2, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    h = torch.randn(2, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    assert torch.autograd.gradcheck(AF.fft_convolve, (w, h))
    assert torch.autograd.gradcheck(lambda a: AF.fft_convolve(a, h.detach()), (w,))
    with torch.no_grad():  # in place here; out of place where autograd needs the factors (w and h require grad)
        in_place = AF.fft_convolve(w, h)
    assert torch.equal(in_place, AF.fft_convolve(w, h).detach())
    torch.testing.assert_close(AF.fft_convolve(w, h).detach(), AF.fft_convolve(w.detach(), h.detach()), rtol=0, atol=0)


def test_fft_convolve_broadcasts_the_irs_over_one_clip():
    """One clip against a batch of IRs (the product's shape is the IRs'): each row is that IR's convolution."""
    w = torch.randn(40, generator=torch.Generator().manual_seed(2))
    h = torch.randn(3, 9, generator=torch.Generator().manual_seed(3))
    got = AF.fft_convolve(w, h)
    assert got.shape == (3, 40)
    for i in range(3):
        np.testing.assert_allclose(got[i].numpy(), np.convolve(w.numpy(), h[i].numpy())[:40], rtol=1e-4, atol=1e-5)


def test_fft_convolve_unit_impulse_returns_input():
    x = torch.randn(4, 16000)
    ir = torch.zeros(4, 8000)
    ir[:, 0] = 1.0
    torch.testing.assert_close(AF.fft_convolve(x, ir), x, atol=1e-5, rtol=0)


def test_fft_convolve_delayed_impulse_delays():
    x = torch.randn(2, 1000, dtype=torch.float64)
    ir = torch.zeros(2, 64, dtype=torch.float64)
    ir[:, 10] = 1.0
    out = AF.fft_convolve(x, ir)
    torch.testing.assert_close(out[:, 10:], x[:, :-10], atol=1e-12, rtol=0)
    assert out[:, :10].abs().max() < 1e-12


# ---------------------------------------------------------------------------------------------- noise
@given(snr=st.floats(-10, 50), seed=st.integers(0, 2**16), colored=st.booleans())
def test_add_noise_measured_snr_matches_request(snr, seed, colored):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 8000, generator=g) * torch.tensor([[0.01], [0.3], [3.0]])
    noise = torch.randn(3, 8000, generator=g)
    if colored:
        noise = AF.colored_noise(noise, torch.tensor([1.0, 2.0, -1.0]))
    y = AF.add_noise(x, noise, torch.full((3,), snr))
    added = (y - x).double()
    measured = 10 * torch.log10(x.double().pow(2).mean(-1) / added.pow(2).mean(-1))
    assert torch.all((measured - snr).abs() < 0.2)


def test_add_noise_silent_signal_stays_silent_and_finite():
    y = AF.add_noise(torch.zeros(2, 100), torch.randn(2, 100), torch.tensor([10.0, 0.0]))
    assert torch.equal(y, torch.zeros(2, 100))
    y = AF.add_noise(torch.randn(2, 100), torch.zeros(2, 100), torch.tensor([10.0, 0.0]))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0, -1.0])
def test_colored_noise_spectral_slope(exponent):
    white = torch.randn(16, 2**14, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = AF.colored_noise(white, torch.full((16,), exponent)).numpy()
    np.testing.assert_allclose(np.sqrt(np.mean(y**2, axis=1)), 1.0, rtol=1e-6)
    f, pxx = __import__("scipy.signal", fromlist=["welch"]).welch(y, fs=SR, nperseg=1024)
    band = (f > 100) & (f < 6000)
    slope = np.polyfit(np.log10(f[band]), np.log10(pxx.mean(0)[band]), 1)[0]
    assert abs(slope + exponent) < 0.1


def test_gather_ring_wraps_like_numpy_take():
    clips = [np.arange(5.0), np.arange(100.0, 103.0), np.arange(200.0, 207.0)]
    flat = torch.tensor(np.concatenate(clips))
    lengths = torch.tensor([len(c) for c in clips])
    offsets = torch.cumsum(lengths, 0) - lengths
    index, start = torch.tensor([1, 0, 2, 1]), torch.tensor([2, 4, 6, 0])
    out = AF.gather_ring(flat, offsets, lengths, index, start, 11).numpy()
    for b in range(4):
        ref = np.take(clips[int(index[b])], np.arange(int(start[b]), int(start[b]) + 11), mode="wrap")
        np.testing.assert_array_equal(out[b], ref)


# ---------------------------------------------------------------------------------------------- log-mel
@pytest.mark.parametrize("mel_scale, norm, fmin, fmax, n_fft", [("slaney", "slaney", 60, 7800, 400),
                                                               ("htk", None, 0, 8000, 1024),
                                                               ("slaney", None, 125, 7500, 512)])
def test_mel_filterbank_equals_librosa(mel_scale, norm, fmin, fmax, n_fft):
    ours = AF.mel_filterbank(SR, n_fft, 64, fmin, fmax, mel_scale=mel_scale, norm=norm).numpy()
    ref = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=64, fmin=fmin, fmax=fmax, htk=mel_scale == "htk",
                              norm="slaney" if norm else None, dtype=np.float64)
    np.testing.assert_allclose(ours, ref.T, rtol=1e-6, atol=1e-9)


def test_mel_filterbank_rejects_bad_band():
    with pytest.raises(ValueError, match="f_max"):
        AF.mel_filterbank(SR, 400, 64, 100, 9000)


def test_log_mel_equals_librosa_and_has_96_frames(rng):
    x = rng.standard_normal((2, 15200)).astype(np.float32) * 0.1
    fb = AF.mel_filterbank(SR, 400, 64, 60, 7800)
    out = AF.log_mel(torch.from_numpy(x), fb, torch.hann_window(400), n_fft=400, hop_length=160).numpy()
    assert out.shape == (2, 64, 96)
    ref = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=400, hop_length=160, win_length=400, window="hann",
                                         center=True, pad_mode="constant", power=2.0, n_mels=64, fmin=60, fmax=7800)
    np.testing.assert_allclose(out, np.log(ref + 1e-6), atol=2e-4)


def test_log_mel_uncentred_matches_tf_style_framing(rng):
    """COLA's framing: frames of win_length from t*hop, zero-padded to n_fft, magnitude, log of clipped value."""
    x = rng.standard_normal((1, 16000))
    fb = AF.mel_filterbank(SR, 1024, 64, 60, 7800)
    out = AF.log_mel(torch.from_numpy(x), fb, torch.hann_window(400, dtype=torch.float64), n_fft=1024,
                     hop_length=160, center=False, power=1.0, log_eps=1e-5, log_mode="clamp").numpy()
    assert out.shape == (1, 64, 98)
    win = np.hanning(401)[:-1]  # periodic Hann
    frames = np.stack([x[0, i * 160 : i * 160 + 400] * win for i in range(98)])
    mag = np.abs(np.fft.rfft(frames, n=1024)).T
    np.testing.assert_allclose(out[0], np.log(np.maximum(fb.numpy().T @ mag, 1e-5)), rtol=1e-10, atol=1e-10)


def test_log_mel_of_tone_peaks_at_its_mel_band():
    x = torch.from_numpy(tone(1000.0, 0.95))[None]
    fb = AF.mel_filterbank(SR, 400, 64, 60, 7800)
    spec = AF.log_mel(x, fb, torch.hann_window(400), n_fft=400, hop_length=160)[0]
    band = int(spec[:, 48].argmax())
    assert band == int(fb[round(1000 * 400 / SR)].argmax())


@pytest.mark.parametrize("center, power, log_mode", [(True, 2.0, "offset"), (False, 1.0, "clamp"), (True, 2.0, "clamp")])
def test_log_gain_of_zero_is_exactly_the_plain_log_mel(center, power, log_mode, rng):
    x = torch.from_numpy(rng.standard_normal((3, 8000)).astype(np.float32))
    x[1, 2000:] = 0  # silent frames: mel 0
    fb = AF.mel_filterbank(SR, 400, 64, 60, 7800)
    kw = dict(n_fft=400, hop_length=160, center=center, power=power, log_mode=log_mode)
    plain = AF.log_mel(x, fb, torch.hann_window(400), **kw)
    assert torch.equal(AF.log_mel(x, fb, torch.hann_window(400), log_gain=torch.zeros(3), **kw), plain)
    # a row with a gain leaves the others bit for bit
    mixed = AF.log_mel(x, fb, torch.hann_window(400), log_gain=torch.tensor([0.0, 0.0, 90.0]), **kw)
    assert torch.equal(mixed[:2], plain[:2])


@pytest.mark.parametrize("log_mode, power", [("offset", 2.0), ("clamp", 1.0)])
def test_log_gain_equals_the_log_mel_of_the_scaled_input(log_mode, power, rng):
    """Oracle: float64 has the range to scale the input itself (2 ** 300 ** 2 = 2 ** 600); silent frames included."""
    x = torch.from_numpy(rng.standard_normal((3, 6000))) * 0.1
    x[:, 3000:] = 0
    k = torch.tensor([0.0, 30.0, 300.0], dtype=torch.float64)
    fb = AF.mel_filterbank(SR, 400, 64, 60, 7800, dtype=torch.float64)
    win = torch.hann_window(400, dtype=torch.float64)
    kw = dict(n_fft=400, hop_length=160, power=power, log_mode=log_mode)
    want = AF.log_mel(x * torch.pow(2.0, k)[:, None], fb, win, **kw)
    got = AF.log_mel(x, fb, win, log_gain=power * k * math.log(2.0), **kw)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[:, :, -5:], torch.full_like(got[:, :, -5:], math.log(1e-6)), rtol=0, atol=1e-12)


@given(exponents=st.lists(st.floats(-30, 38), min_size=1, max_size=4), T=st.integers(1, 2000), seed=st.integers(0, 2**16))
def test_power_of_two_scale_is_one_below_the_limit_and_brings_the_peak_into_one_two(exponents, T, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(exponents), T))
    x = (x / np.abs(x).max(axis=1, keepdims=True) * 10.0 ** np.array(exponents)[:, None]).astype(np.float32)
    limit = 2.0 ** 40
    scale = AF.power_of_two_scale(torch.from_numpy(x), limit).numpy()
    x64 = x.astype(np.float64)
    norm, peak = np.linalg.norm(x64, axis=1), np.abs(x64).max(axis=1)
    want = np.where(norm <= limit, 1.0, 2.0 ** (np.frexp(peak)[1] - 1))  # numpy's frexp as the oracle
    np.testing.assert_array_equal(scale, want.astype(np.float32))
    big = norm > limit
    assert np.all((peak[big] / scale[big] >= 1) & (peak[big] / scale[big] < 2))
    assert np.all(np.isfinite(x / scale[:, None]))


# ---------------------------------------------------------------------------------------------- masks
@given(B=st.integers(1, 4), n=st.integers(1, 3), seed=st.integers(0, 2**16), axis=st.sampled_from([-1, -2]))
def test_masks_cover_exactly_the_union_of_intervals(B, n, seed, axis):
    rng = np.random.default_rng(seed)
    spec = rng.standard_normal((B, 1, 64, 96)).astype(np.float32)
    size = spec.shape[axis]
    width = rng.integers(0, 20, size=(B, n))
    start = rng.integers(0, size, size=(B, n))
    fill = rng.standard_normal(B).astype(np.float32)
    out = AF.mask_along_axis(torch.from_numpy(spec), torch.from_numpy(start), torch.from_numpy(width), axis,
                             torch.from_numpy(fill)).numpy()
    for b in range(B):
        hit = np.zeros(size, bool)
        for j in range(n):
            hit[start[b, j] : start[b, j] + width[b, j]] = True
        sl = np.moveaxis(out[b, 0], axis, 0)
        orig = np.moveaxis(spec[b, 0], axis, 0)
        np.testing.assert_array_equal(sl[hit], np.full_like(sl[hit], fill[b]))
        np.testing.assert_array_equal(sl[~hit], orig[~hit])


# ---------------------------------------------------------------------------------------------- time stretch
@given(B=st.integers(1, 3), K=st.integers(1, 9), N=st.integers(1, 40), hop=st.integers(1, 40),
       seed=st.integers(0, 2**16))
def test_overlap_add_equals_a_numpy_loop(B, K, N, hop, seed):
    """The vocoder's overlap-add (shifted block adds when hop divides the frame, else fold) against a plain loop."""
    rng = np.random.default_rng(seed)
    frames = rng.standard_normal((B, K, N))
    ref = np.zeros((B, (K - 1) * hop + N))
    for k in range(K):
        ref[:, k * hop: k * hop + N] += frames[:, k]
    np.testing.assert_allclose(AF._overlap_add(torch.from_numpy(frames), hop).numpy(), ref, rtol=0, atol=1e-12)


@given(T=st.integers(2000, 12000), rates=st.lists(st.floats(0.5, 2.0), min_size=1, max_size=3))
def test_time_stretch_length_is_ceil_t_over_rate(T, rates):
    rate = torch.tensor(rates)
    out = AF.time_stretch(torch.randn(len(rates), T), rate)
    lengths = [math.ceil(T / r - 1e-9) for r in rate.double().tolist()]
    assert out.shape == (len(rates), max(lengths))
    for b, n in enumerate(lengths):
        assert torch.all(out[b, n:] == 0)


@pytest.mark.parametrize("rate", [0.8, 0.9, 1.1, 1.25])
@pytest.mark.parametrize("freq", [220.0, 1000.0, 3500.0])
def test_time_stretch_keeps_pitch_and_level_of_tone(rate, freq):
    x = tone(freq, 1.0, amp=0.3)
    y = AF.time_stretch(torch.from_numpy(x)[None], torch.tensor([rate]))[0].numpy()
    assert len(y) == math.ceil(len(x) / rate)
    inner = y[1000:-1000]
    assert abs(peak_freq(inner) / freq - 1) < 0.002
    assert abs(rms_db(inner) - rms_db(x[1000:-1000])) < 0.1


def test_time_stretch_moves_chirp_time_axis():
    """A linear chirp's instantaneous frequency at output time t is the input's at time t * rate."""
    t = np.arange(2 * SR) / SR
    f0, k = 300.0, 1500.0  # Hz, Hz/s
    x = (0.3 * np.sin(2 * np.pi * (f0 * t + 0.5 * k * t**2))).astype(np.float32)
    for rate in (0.9, 1.1):
        y = AF.time_stretch(torch.from_numpy(x)[None], torch.tensor([rate]))[0].numpy()
        for t_out in (0.4, 0.8, 1.2):
            n = int(t_out * SR)
            f = peak_freq(y[n - 400 : n + 400])
            assert abs(f - (f0 + k * t_out * rate)) < 15.0


def test_time_stretch_batch_equals_one_by_one(rng):
    x = torch.from_numpy(rng.standard_normal((3, 6000)).astype(np.float32))
    rate, start = torch.tensor([0.9, 1.0, 1.3]), torch.tensor([0, 500, 37])
    batch = AF.time_stretch_segment(x, rate, start, 3000)
    for b in range(3):
        one = AF.time_stretch_segment(x[b : b + 1], rate[b : b + 1], start[b : b + 1], 3000)
        torch.testing.assert_close(batch[b : b + 1], one, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rate", [0.9, 1.1])
def test_time_stretch_segment_matches_the_full_stretch_spectrally(rate):
    """The crop-aware form reads the same source region as a crop of the full stretch.

    Sample values differ (phase accumulation starts at the segment, not at the clip), so the comparison is
    per log-mel frame: frame energy and the dominant mel band. Signals: a chirp plus a late tone, and a
    tone gated on and off at 2 Hz (hard edges).
    """
    t = np.arange(4 * SR) / SR
    x = np.stack([0.2 * np.sin(2 * np.pi * (300 * t + 250 * t**2)) + 0.1 * np.sin(2 * np.pi * 1200 * t) * (t > 1.3),
                  0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 2 * t) > 0)]).astype(np.float32)
    x = torch.from_numpy(x)
    r, start = torch.full((2,), rate), torch.tensor([5000, 17000])
    crop = AF.crop_segments(AF.time_stretch(x, r), start, 15200)
    seg = AF.time_stretch_segment(x, r, start, 15200)
    fb = AF.mel_filterbank(SR, 400, 64, 60, 7800)
    m_seg, m_crop = (AF.log_mel(w, fb, torch.hann_window(400), n_fft=400, hop_length=160) for w in (seg, crop))
    e_seg, e_crop = m_seg.exp().sum(1).log(), m_crop.exp().sum(1).log()
    signal = e_crop > math.log(1e-2)
    diff = (e_seg - e_crop).abs()[signal]
    assert diff.median() < 0.02 and diff.max() < 0.5  # nats of frame energy (0.5 nats = 2.2 dB, at gate edges)
    assert (m_seg.argmax(1) == m_crop.argmax(1))[signal].float().mean() > 0.95


@pytest.mark.parametrize("rate", [0.9, 1.1])
def test_time_stretch_preserves_bursts_after_other_sounds(rate):
    """The issue's fidelity criterion: level within 1.5 dB, pitch within 2 %, onset at t/rate within 30 ms."""
    from benchmarks.stretch_fidelity import make_bursts, measure, stretch_augcl

    for burst in make_bursts(12, seed=7):
        m = measure(burst, stretch_augcl(burst.wave, rate), rate)
        assert abs(m["level_err_db"]) < 1.5, m
        assert abs(m["pitch_err_rel"]) < 0.02, m
        assert abs(m["onset_err_s"]) < 0.030, m


def test_plain_phase_vocoder_fails_the_burst_criterion():
    """The criterion is discriminative: torchaudio's phase vocoder loses level on the same signals."""
    from benchmarks.stretch_fidelity import make_bursts, measure, stretch_torchaudio

    losses = [abs(measure(b, stretch_torchaudio(b.wave, 1.1), 1.1)["level_err_db"]) for b in make_bursts(12, seed=7)]
    assert np.median(losses) > 1.5


@pytest.mark.parametrize("backend", ["torch", "kernels"])
def test_time_stretch_segment_of_some_rows_equals_stretching_their_copy(backend):
    """``rows=`` stretches a subset of the batch in place of ``wave[rows]`` (which copies whole clips): same output."""
    if backend == "kernels":
        pytest.importorskip("numba")
        from augcl.kernels import time_stretch_segment as stretch
    else:
        stretch = AF.time_stretch_segment
    x = torch.randn(6, 20000, generator=torch.Generator().manual_seed(6))
    rows = torch.tensor([4, 1, 2])
    rate, start = torch.tensor([0.9, 1.1, 1.25], dtype=torch.float64), torch.tensor([0, 3000, 9000])
    ref = stretch(x[rows], rate, start, 4000, max_rate=1.25)
    assert torch.equal(stretch(x, rate, start, 4000, max_rate=1.25, rows=rows), ref)


def test_time_stretch_of_silence_and_loud_input_is_finite():
    x = torch.zeros(2, 4000)
    x[1] = 1e4 * torch.randn(4000)
    y = AF.time_stretch(x, torch.tensor([0.9, 1.1]))
    assert torch.isfinite(y).all() and torch.equal(y[0], torch.zeros_like(y[0]))


# ---------------------------------------------------------------------------------------------- level
def test_gain_equals_numpy_scaling():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 300)).astype(np.float32)
    g = np.array([-6.0, 0.0, 3.5, 20.0], np.float32)
    out = AF.gain(torch.from_numpy(x), torch.from_numpy(g)).numpy()
    np.testing.assert_allclose(out, x * 10 ** (g[:, None] / 20), rtol=1e-6, atol=0)


@given(seed=st.integers(0, 2**16), mode=st.sampled_from(["rms", "peak"]), target=st.sampled_from([None, -30.0, -3.0]))
def test_normalize_level_equals_numpy_over_the_valid_samples(seed, mode, target):
    rng = np.random.default_rng(seed)
    B, T = 5, 2000
    lengths = rng.integers(1, T + 1, size=B)
    x = rng.standard_normal((B, T)) * rng.choice([1e-3, 0.1, 10.0], size=(B, 1))
    x[2] = 0.0  # a silent row
    out = AF.normalize_level(torch.from_numpy(x), torch.from_numpy(lengths), mode=mode, target_db=target).numpy()
    want_db = target if target is not None else (-20.0 if mode == "rms" else -1.0)
    for b in range(B):
        v = x[b, : lengths[b]]
        level = np.sqrt(np.mean(v**2)) if mode == "rms" else np.max(np.abs(v))
        want = v * (10 ** (want_db / 20) / level) if level > 0 else v
        np.testing.assert_allclose(out[b, : lengths[b]], want, rtol=1e-9, atol=1e-12)
        assert np.all(out[b, lengths[b]:] == 0)
    assert np.all(out[2] == 0) and np.isfinite(out).all()


def test_normalize_level_without_lengths_uses_the_whole_row_and_none_is_identity():
    x = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0)) * torch.tensor([[0.01], [1.0], [5.0]])
    out = AF.normalize_level(x)
    torch.testing.assert_close(out.pow(2).mean(-1).sqrt(), torch.full((3,), 0.1), rtol=1e-5, atol=0)
    peak = AF.normalize_level(x, mode="peak")
    torch.testing.assert_close(peak.abs().amax(-1), torch.full((3,), 10 ** (-1 / 20)), rtol=1e-6, atol=0)
    assert AF.normalize_level(x, mode="none") is x
    with pytest.raises(ValueError, match="mode"):
        AF.normalize_level(x, mode="lufs")
