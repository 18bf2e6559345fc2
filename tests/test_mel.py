"""augcl's log-mel (:class:`augcl.LogMel`) against nnAudio, a second reference beside librosa (tests/test_functional.py).

nnAudio shares no code with augcl's path: it computes the STFT as a ``conv1d`` with precomputed windowed Fourier
kernels instead of an FFT, and its mel filters are its own copy of librosa 0.7's. Its source (0.3.4) has the
convention we need when configured as in :func:`nnaudio_mel`: periodic Hann (``scipy.signal.get_window(...,
fftbins=True)``), a shorter window centred in the ``n_fft`` frame (``pad_center``), ``n_fft // 2`` zeros on each side
(``pad_mode="constant"``), ``sqrt(re² + im²) ** power`` (so ``power=2`` is the power spectrogram), ``norm=1`` for
Slaney area normalisation, ``htk`` for the mel scale. It returns mel energies; we take ``log(mel + 1e-6)``.

Tolerances, both float32 (eps 1.2e-7) against float32: a bin of a float32 STFT carries a rounding error proportional
to its frame's energy, not to its own (a sum of ``n_fft`` products; nnAudio's convolution and torch's FFT round
differently), so a band 60 dB under its frame's peak has a relative error ~1000 times the peak band's. Hence:

* :data:`LOG_ATOL` on the log-mel, in bands within :data:`STRONG_DB` of their frame's strongest band and far above
  the 1e-6 offset (1e-4): measured up to 4.1e-6 (relative error of the energy; about 30 float32 eps);
* :data:`ENERGY_RTOL_OF_FRAME` on the mel energies of every band, relative to the frame's strongest band: measured
  up to 2.1e-6; plus :data:`ENERGY_ATOL` for (near-)silent frames, the resolution of the energies read back from
  the float32 log.
"""
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from augcl import LogMel, MelConfig
from tests.conftest import SR, shared_data

nnaudio_features = pytest.importorskip("nnAudio.features")

#: log-mel tolerance in the strong bands (module docstring): measured <= 4.1e-6
LOG_ATOL = 2e-5
#: bands within this many dB of their frame's strongest band, and above STRONG_FLOOR, are "strong"
STRONG_DB = 30.0
STRONG_FLOOR = 1e-4
#: mel energy tolerance of every band, as a fraction of its frame's strongest band: measured <= 2.1e-6
ENERGY_RTOL_OF_FRAME = 1e-5
#: plus this absolute error: float32 resolves log(mel + 1e-6) near log(1e-6) to ~1e-6 (one ulp of 13.8), so mel
#: energies under ~1e-12 are read back from the log as ~1e-12 at best
ENERGY_ATOL = 1e-11
#: filterbank tolerance relative to its largest weight: both are float32 roundings of the same float64 formula
FILTERBANK_RTOL_OF_MAX = 1e-6


def non_default(sample_rate: int) -> MelConfig:
    """A config unlike the paper's in every field nnAudio reads: longer FFT with a shorter window, HTK mel, no norm."""
    return MelConfig(n_fft=1024, win_length=800, hop_length=256, n_mels=128, f_min=0.0, f_max=sample_rate / 2,
                     mel_scale="htk", norm=None)


CONFIGS = {"default": lambda sr: MelConfig(), "htk-1024": non_default}


def nnaudio_mel(config: MelConfig, sample_rate: int):
    """nnAudio's MelSpectrogram set to :class:`MelConfig`'s convention (module docstring); mel energies out."""
    assert config.center and config.power == 2.0 and config.log_mode == "offset"
    return nnaudio_features.MelSpectrogram(
        sr=sample_rate, n_fft=config.n_fft, win_length=config.win_length, hop_length=config.hop_length,
        n_mels=config.n_mels, fmin=config.f_min, fmax=config.f_max, window="hann", center=True, pad_mode="constant",
        power=2.0, htk=config.mel_scale == "htk", norm=1 if config.norm == "slaney" else None, trainable_mel=False,
        trainable_STFT=False, verbose=False)  # verbose=True (its default) prints timings on construction


def analytic_signals(seconds: float = 2.0) -> dict[str, np.ndarray]:
    """Tones (on and off an FFT bin, low and near the band's top), a linear chirp across the band, white noise; the
    length is no multiple of the hop, so the last frame is partial."""
    t = np.arange(int(seconds * SR) + 37) / SR
    return {
        "tone-440": 0.5 * np.sin(2 * np.pi * 440.0 * t),
        "tone-3000.3": 0.1 * np.sin(2 * np.pi * 3000.3 * t),
        "tone-7000": 0.3 * np.sin(2 * np.pi * 7000.0 * t + 0.4),
        "chirp-100-7000": 0.5 * np.sin(2 * np.pi * (100.0 * t + (7000.0 - 100.0) / (2 * seconds) * t**2)),
        "white-noise": 0.1 * np.random.default_rng(0).standard_normal(t.size),
    }


def esc50_clip() -> tuple[np.ndarray, int]:
    folder = shared_data() / "esc50-fold4" / "audio"
    files = sorted(folder.glob("*.flac")) if folder.is_dir() else []
    if not files:
        pytest.skip(f"no ESC-50 clips in {folder}")
    x, sr = sf.read(str(files[0]), dtype="float32", always_2d=True)
    return x.mean(axis=1), sr


def assert_matches_nnaudio(ours_log: torch.Tensor, ref_mel: torch.Tensor) -> None:
    """``ours_log`` (B, n_mels, frames) log(mel + 1e-6) against nnAudio's mel energies, with the module's tolerances."""
    assert ours_log.shape == ref_mel.shape and ours_log.dtype == torch.float32
    ref_mel = ref_mel.double()
    frame_peak = ref_mel.amax(dim=-2, keepdim=True)
    strong = (ref_mel >= frame_peak * 10 ** (-STRONG_DB / 10)) & (ref_mel >= STRONG_FLOOR)
    assert strong.sum() >= ref_mel.shape[-1], "too few strong bands to compare in the log domain"
    log_err = (ours_log.double() - torch.log(ref_mel + 1e-6)).abs()[strong]
    assert log_err.max() <= LOG_ATOL, f"log-mel off by {log_err.max():.2e} in a strong band"
    energy_err = (torch.exp(ours_log.double()) - 1e-6 - ref_mel).abs() - ENERGY_ATOL
    worst = (energy_err / frame_peak.clamp_min(1e-30)).max()
    assert (energy_err <= ENERGY_RTOL_OF_FRAME * frame_peak).all(), f"mel energy off by {worst:.2e} of its frame's peak"


@pytest.mark.parametrize("name", CONFIGS)
def test_filterbank_equals_nnaudio(name):
    config = CONFIGS[name](SR)
    ours = LogMel(config, SR).filterbank.T.double()
    ref = nnaudio_mel(config, SR).mel_basis.double()
    assert ours.shape == ref.shape == (config.n_mels, config.n_fft // 2 + 1)
    torch.testing.assert_close(ours, ref, rtol=0, atol=FILTERBANK_RTOL_OF_MAX * float(ref.max()))


@pytest.mark.parametrize("name", CONFIGS)
def test_log_mel_of_analytic_signals_equals_nnaudio(name):
    config = CONFIGS[name](SR)
    signals = analytic_signals()
    wave = torch.from_numpy(np.stack(list(signals.values())).astype(np.float32))  # (5, T): one batch
    ours = LogMel(config, SR)(wave)
    assert ours.shape == (len(signals), config.n_mels, 1 + wave.shape[-1] // config.hop_length)
    assert_matches_nnaudio(ours, nnaudio_mel(config, SR)(wave))


@pytest.mark.parametrize("name", CONFIGS)
def test_log_mel_of_a_real_clip_equals_nnaudio(name):
    x, sr = esc50_clip()
    config = CONFIGS[name](sr)
    config = replace(config, f_max=min(config.f_max, sr / 2))
    wave = torch.from_numpy(x)[None]
    assert_matches_nnaudio(LogMel(config, sr)(wave), nnaudio_mel(config, sr)(wave))


def test_log_mel_keeps_leading_dimensions():
    signals = analytic_signals(0.5)
    wave = torch.from_numpy(np.stack(list(signals.values())[:4]).astype(np.float32))
    mel = LogMel(MelConfig(), SR)
    torch.testing.assert_close(mel(wave.reshape(2, 2, -1)), mel(wave).reshape(2, 2, 64, -1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", CONFIGS)
def test_lengths_read_the_samples_past_them_as_zeros(name):
    """The log-mel with ``lengths`` is the log-mel of the clip zero-padded past them, bit for bit (same batch), and
    nnAudio's of that zero-padded clip; what lies past the lengths (here loud noise) changes nothing."""
    config = CONFIGS[name](SR)
    signals = analytic_signals()
    wave = torch.from_numpy(np.stack([signals["chirp-100-7000"], signals["tone-440"], signals["white-noise"]])
                            .astype(np.float32))
    T = wave.shape[-1]
    lengths = torch.tensor([T, T - 1000, 1234])
    inside = torch.arange(T) < lengths[:, None]
    padded = wave * inside
    garbage = torch.where(inside, wave, 10.0 * torch.randn(wave.shape, generator=torch.Generator().manual_seed(0)))
    mel = LogMel(config, SR)
    out = mel(garbage, lengths)
    assert torch.equal(out, mel(padded))
    assert_matches_nnaudio(out, nnaudio_mel(config, SR)(padded))


@pytest.mark.parametrize("name", CONFIGS)
def test_frames_counts_the_frames_centred_inside_the_clip(name):
    config = CONFIGS[name](SR)
    hop, T = config.hop_length, 3 * config.hop_length + 5
    lengths = torch.tensor([0, 1, hop - 1, hop, hop + 1, 2 * hop, T - 1, T])
    mel = LogMel(config, SR)
    n_frames = 1 + T // hop
    want = [sum(k * hop < length for k in range(n_frames)) for length in lengths.tolist()]
    assert mel.frames(lengths).tolist() == want
    # and the frames past them see only the zeros after the clip once the window has left it
    wave = torch.ones(len(lengths), T)
    out = mel(wave, lengths)
    silent = mel(torch.zeros(1, T))[0, 0, 0]  # log(0 + 1e-6), as float32 computes it
    for row, (length, k) in enumerate(zip(lengths.tolist(), mel.frames(lengths).tolist(), strict=True)):
        first_silent = -(-(length + config.win_length // 2) // hop)  # window [k*hop - win/2, k*hop + win/2) past
        assert (out[row, :, first_silent:] == silent).all()
        if k:
            assert (out[row, :, k - 1] > silent).any()
