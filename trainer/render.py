"""Rendering the built-in dataset's clips (:mod:`trainer.builtin`): the classes, the clip URIs, the synthesis.

Each clip is a sequence of events of one class over a background, with the nuisances the paper's augmentations
target: tempo (event durations and gaps scaled by 0.8-1.25), level (+-6 dB per event), pitch (+-2 semitones
per clip, +-0.3 per event), room (synthetic exponentially decaying reverberation, RT60 0.15-0.9 s, on 70 % of
clips) and background noise (white/pink/brown mixtures at 0-30 dB SNR). Up to two quieter events of other
classes (10-20 dB below) interfere, as in real recordings; the label is the class of the clip's main events.
The clip's level is drawn in -45 to -5 dBFS RMS.

A clip is named by a URI ``builtin:<seed>:<split>:<index>:<seconds>`` and rendered from a numpy generator seeded
with (seed, split, index), so any clip can be rendered alone, in any order, in any process, with the same result:
:func:`trainer.pack.decode` renders a URI like it decodes a file. Rendering costs about 30 ms per 10 s of audio on
one core. This module imports neither :mod:`trainer.pack` nor :mod:`trainer.builtin`; both import it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

CLASSES = (
    "beep_alarm",     # two-pitch square-ish beeps
    "vibrato_voice",  # harmonic stack with vibrato, voice-like
    "noise_burst",    # short band-passed noise bursts
    "click_train",    # buzz: trains of clicks at 15-60 Hz
    "chirp_up",       # exponential upward sweeps
    "chirp_down",     # exponential downward sweeps
    "am_tone",        # tone amplitude-modulated at 5-15 Hz
    "knock",          # groups of impulsive damped modal knocks
    "trill",          # high tone with fast frequency modulation, bird-like
    "engine_hum",     # long low harmonic drones with slow fluctuation
)
SPLITS = ("unlabeled", "train", "test")


def clip_uri(seed: int, split: str, index: int, seconds: float) -> str:
    return f"builtin:{seed}:{split}:{index}:{seconds:g}"


def parse_uri(uri: str) -> tuple[int, str, int, float]:
    parts = uri.split(":")
    try:
        if len(parts) == 5 and parts[0] == "builtin" and parts[2] in SPLITS:
            return int(parts[1]), parts[2], int(parts[3]), float(parts[4])
    except ValueError:
        pass
    raise ValueError(f"not a built-in clip URI: {uri!r} (expected builtin:<seed>:<split>:<index>:<seconds>)")


def label_of(split: str, index: int) -> int:
    """Classes cycle with the index, so every split is balanced."""
    return index % len(CLASSES)


def render_uri(uri: str, sample_rate: int) -> np.ndarray:
    seed, split, index, seconds = parse_uri(uri)
    return render_clip(seed, split, index, seconds, sample_rate)


def render_clip(seed: int, split: str, index: int, seconds: float = 10.0, sample_rate: int = 16000) -> np.ndarray:
    """One clip, float32 in [-1, 1]; deterministic in (seed, split, index, seconds, sample_rate)."""
    from scipy.signal import fftconvolve  # here, not at the top: scipy.signal costs ~1 s at each trainer start

    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    label = label_of(split, index)
    n = int(round(seconds * sample_rate))
    sr = sample_rate
    pitch = 2.0 ** (rng.uniform(-2, 2) / 12)
    tempo = rng.uniform(0.8, 1.25)
    events = np.zeros(n)
    t = rng.uniform(0, min(0.6, 0.3 * seconds)) * tempo  # the first event starts inside even a 0.5-s clip
    while t < seconds:
        ev = _EVENTS[label](rng, sr, pitch * 2.0 ** (rng.uniform(-0.3, 0.3) / 12), tempo)
        ev *= 10 ** (rng.uniform(-6, 6) / 20) / (np.sqrt(np.mean(ev**2)) + 1e-12)
        start = int(t * sr)
        stop = min(n, start + len(ev))
        events[start:stop] += ev[: stop - start]
        t += len(ev) / sr + tempo * rng.uniform(0.15, 1.2)
    for _ in range(int(rng.integers(0, 3))):  # a few quieter events of other classes, as in real recordings
        other = (label + int(rng.integers(1, len(CLASSES)))) % len(CLASSES)
        ev = _EVENTS[other](rng, sr, pitch, tempo)
        ev *= np.sqrt(np.mean(events**2)) * 10 ** (-rng.uniform(10, 20) / 20) / (np.sqrt(np.mean(ev**2)) + 1e-12)
        start = int(rng.integers(0, max(n - len(ev), 1)))
        events[start:start + len(ev)] += ev[: n - start]
    if rng.uniform() < 0.7:
        events = fftconvolve(events, _room(rng, sr))[:n]
    snr_db = rng.uniform(0, 30)
    background = _background(rng, n, sr)
    sig_rms = np.sqrt(np.mean(events**2)) + 1e-12
    background *= sig_rms / (np.sqrt(np.mean(background**2)) + 1e-12) * 10 ** (-snr_db / 20)
    clip = events + background
    clip *= 10 ** (rng.uniform(-45, -5) / 20) / (np.sqrt(np.mean(clip**2)) + 1e-12)
    peak = np.max(np.abs(clip))
    if peak > 0.99:
        clip *= 0.99 / peak
    return clip.astype(np.float32)


def _env(n: int, attack: int, release: int) -> np.ndarray:
    e = np.ones(n)
    a, r = max(min(attack, n // 2), 1), max(min(release, n // 2), 1)
    e[:a] = np.linspace(0, 1, a)
    e[n - r:] = np.linspace(1, 0, r)
    return e


def _beep_alarm(rng, sr, pitch, tempo):
    f = rng.uniform(800, 1800) * pitch
    ratio = rng.choice([1.25, 1.33, 1.5])
    beep = int(rng.uniform(0.1, 0.22) * tempo * sr)
    gap = int(0.05 * tempo * sr)
    out = []
    for k in range(int(rng.integers(2, 6))):
        fk = f * (ratio if k % 2 else 1.0)
        t = np.arange(beep) / sr
        x = sum(np.sin(2 * np.pi * (2 * h + 1) * fk * t) / (2 * h + 1) for h in range(3) if (2 * h + 1) * fk < sr / 2.2)
        out += [x * _env(beep, int(0.004 * sr), int(0.004 * sr)), np.zeros(gap)]
    return np.concatenate(out)


def _vibrato_voice(rng, sr, pitch, tempo):
    n = int(rng.uniform(0.5, 1.5) * tempo * sr)
    t = np.arange(n) / sr
    f0 = rng.uniform(120, 350) * pitch * (1 + rng.uniform(0.02, 0.04) * np.sin(2 * np.pi * rng.uniform(4, 7) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 9) if k * f0.max() < sr / 2.2)
    return x * _env(n, int(0.05 * sr), int(0.1 * sr))


def _noise_burst(rng, sr, pitch, tempo):
    from scipy.signal import butter, sosfilt  # here, not at the top: scipy.signal costs ~1 s at each trainer start

    n = int(rng.uniform(0.05, 0.3) * tempo * sr)
    fc = min(rng.uniform(1000, 4000) * pitch, sr / 2 / 1.6)
    sos = butter(2, [fc / 1.41, fc * 1.41], btype="band", fs=sr, output="sos")
    x = sosfilt(sos, rng.standard_normal(n + 256))[256:]
    return x * _env(n, int(0.002 * sr), n // 2)


def _click_train(rng, sr, pitch, tempo):
    n = int(rng.uniform(0.3, 1.0) * tempo * sr)
    period = sr / (rng.uniform(15, 60) * pitch)
    x = np.zeros(n)
    x[np.arange(0, n, period).astype(int)] = 1.0
    click = np.exp(-np.arange(int(0.003 * sr)) / (0.0005 * sr)) * np.sign(rng.standard_normal(int(0.003 * sr)))
    return np.convolve(x, click)[:n]


def _chirp(rng, sr, pitch, tempo, up: bool):
    n = int(rng.uniform(0.3, 0.8) * tempo * sr)
    f_lo = rng.uniform(300, 800) * pitch
    f_hi = min(f_lo * rng.uniform(4, 8), sr / 2.5)
    t = np.arange(n) / n
    f = f_lo * (f_hi / f_lo) ** (t if up else 1 - t)
    return np.sin(2 * np.pi * np.cumsum(f) / sr) * _env(n, int(0.01 * sr), int(0.02 * sr))


def _am_tone(rng, sr, pitch, tempo):
    n = int(rng.uniform(0.5, 1.5) * tempo * sr)
    t = np.arange(n) / sr
    depth = rng.uniform(0.8, 1.0)
    am = 1 - depth * 0.5 * (1 + np.cos(2 * np.pi * rng.uniform(5, 15) * t))
    return np.sin(2 * np.pi * rng.uniform(400, 1500) * pitch * t) * am * _env(n, int(0.01 * sr), int(0.01 * sr))


def _knock(rng, sr, pitch, tempo):
    modes = rng.uniform(200, 900, size=3) * pitch
    decays = rng.uniform(0.02, 0.06, size=3)
    m = int(0.25 * sr)
    t = np.arange(m) / sr
    one = sum(np.exp(-t / d) * np.sin(2 * np.pi * f * t) for f, d in zip(modes, decays, strict=True))
    hits = int(rng.integers(2, 5))
    spacing = int(rng.uniform(0.1, 0.2) * tempo * sr)
    out = np.zeros(spacing * (hits - 1) + m)
    for k in range(hits):
        out[k * spacing:k * spacing + m] += one * rng.uniform(0.6, 1.0)
    return out


def _trill(rng, sr, pitch, tempo):
    n = int(rng.uniform(0.2, 0.6) * tempo * sr)
    t = np.arange(n) / sr
    fc = min(rng.uniform(2000, 5000) * pitch, sr / 2.6)
    f = fc * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(20, 40) * t))
    return np.sin(2 * np.pi * np.cumsum(f) / sr) * _env(n, int(0.01 * sr), int(0.03 * sr))


def _engine_hum(rng, sr, pitch, tempo):
    n = int(rng.uniform(1.5, 4.0) * tempo * sr)
    t = np.arange(n) / sr
    f0 = rng.uniform(40, 90) * pitch * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(0.2, 1) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 30) if k * f0.max() < 3000)
    fluct = 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t + rng.uniform(0, 2 * np.pi))
    return x * fluct * _env(n, int(0.2 * sr), int(0.3 * sr))


_EVENTS: tuple[Callable, ...] = (
    _beep_alarm, _vibrato_voice, _noise_burst, _click_train,
    lambda rng, sr, p, tm: _chirp(rng, sr, p, tm, up=True),
    lambda rng, sr, p, tm: _chirp(rng, sr, p, tm, up=False),
    _am_tone, _knock, _trill, _engine_hum,
)
assert len(_EVENTS) == len(CLASSES)


def _room(rng, sr) -> np.ndarray:
    """Synthetic room: direct sound plus exponentially decaying noise with RT60 in [0.15, 0.9] s."""
    rt60 = rng.uniform(0.15, 0.9)
    m = int(min(rt60, 0.9) * sr)
    t = np.arange(m) / sr
    tail = rng.standard_normal(m) * np.exp(-6.91 * t / rt60)
    tail[: int(0.002 * sr)] = 0
    h = tail * 10 ** (rng.uniform(-12, 0) / 20) / (np.sqrt(np.sum(tail**2)) + 1e-12)
    h[0] = 1.0
    return h / np.sqrt(np.sum(h**2))


def _background(rng, n: int, sr: int) -> np.ndarray:
    """White, pink and brown noise in random proportions (1/f^alpha shaping in the frequency domain)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    f[0] = f[1]
    w = rng.dirichlet(np.ones(3))
    shaped = sum(wk * spec / f ** (alpha / 2) / np.sqrt(np.mean(np.abs(f ** (-alpha / 2)) ** 2))
                 for wk, alpha in zip(w, (0.0, 1.0, 2.0), strict=True))
    return np.fft.irfft(shaped, n)
