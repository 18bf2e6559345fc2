"""Time-stretch fidelity on tone bursts: augcl's phase-locked vocoder against torchaudio's phase vocoder.

The signal (ground truth known analytically): light white background noise, a preceding sound (a noise burst
or a different tone), then a steady tone burst of known level, frequency and onset. A faithful stretch by
``rate`` keeps the burst's level and pitch and moves its onset to ``onset / rate``. A plain phase vocoder
enters the burst with bin phases accumulated during the preceding sound, so the partial's main lobe adds
incoherently and the burst loses level; phase locking fixes that.

    python -m benchmarks.stretch_fidelity            # writes docs/benchmarks/stretch_fidelity.{json,md}
"""
from __future__ import annotations

import argparse
import math
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks import report

SR = 16000


@dataclass(frozen=True)
class Burst:
    """One test signal: ``wave`` and the burst's true onset (s), duration (s), frequency (Hz), RMS level (dB)."""

    wave: np.ndarray
    onset_s: float
    duration_s: float
    freq_hz: float
    level_db: float
    preceding_end_s: float


def make_bursts(n: int = 24, seed: int = 0, seconds: float = 3.0) -> list[Burst]:
    """Tone bursts after another sound in light background noise; parameters drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    out = []
    for i in range(n):
        x = 10 ** (-50 / 20) * rng.standard_normal(t.size)  # light background, -50 dBFS RMS
        freq = rng.uniform(300, 3000)
        pre_on, pre_dur = rng.uniform(0.2, 0.5), rng.uniform(0.4, 0.7)
        pre = (t >= pre_on) & (t < pre_on + pre_dur)
        if i % 2 == 0:  # preceding sound: a noise burst
            x[pre] += 0.1 * rng.standard_normal(pre.sum())
        else:  # preceding sound: a tone at least half an octave away from the burst
            pre_freq = freq * 2.0 ** (rng.choice([-1, 1]) * rng.uniform(0.5, 1.5))
            x[pre] += 0.2 * np.sin(2 * np.pi * pre_freq * t[pre] + rng.uniform(0, 2 * np.pi))
        onset = pre_on + pre_dur + rng.uniform(0.0, 0.05)
        dur = rng.uniform(0.6, 1.0)
        amp = 10 ** (rng.uniform(-26, -10) / 20)
        burst = (t >= onset) & (t < onset + dur)
        x[burst] += amp * np.sin(2 * np.pi * freq * (t[burst] - onset) + rng.uniform(0, 2 * np.pi))
        out.append(Burst(x.astype(np.float32), onset, dur, freq, 20 * np.log10(amp / np.sqrt(2)), pre_on + pre_dur))
    return out


def _rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-20)


def _peak_freq(x: np.ndarray) -> float:
    n = 1 << (len(x) * 4 - 1).bit_length()
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-30)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / n


def _onset_s(y: np.ndarray, freq_hz: float, level_db: float, search_from_s: float) -> float:
    """First time (s) after ``search_from_s`` where the amplitude at ``freq_hz`` reaches half the burst's.

    The search starts where the analysis window no longer overlaps the preceding sound.

    The amplitude is demodulated with an 8-ms Hann window every 1 ms; for a step onset the half-amplitude
    crossing of a symmetric window falls on the onset itself.
    """
    width, step = SR // 125, SR // 1000
    start = int(search_from_s * SR)
    seg = y[start:].astype(np.float64)
    n = (len(seg) - width) // step
    frames = np.lib.stride_tricks.sliding_window_view(seg, width)[: n * step : step]
    w = np.hanning(width)
    carrier = np.exp(-2j * np.pi * freq_hz * np.arange(width) / SR) * w
    amp = 2 * np.abs(frames @ carrier) / w.sum()
    target = 0.5 * np.sqrt(2) * 10 ** (level_db / 20)
    hit = np.nonzero(amp >= target)[0]
    return (start + width / 2 + (hit[0] * step if hit.size else len(seg))) / SR


def measure(burst: Burst, stretched: np.ndarray, rate: float) -> dict:
    """Level error (dB), pitch error (relative) and onset error (s) of the burst in ``stretched``."""
    on, dur = burst.onset_s / rate, burst.duration_s / rate
    margin = 0.06  # skip the windows straddling the onset and offset
    inner = stretched[int((on + margin) * SR) : int((on + dur - margin) * SR)]
    return {
        "level_err_db": _rms_db(inner) - burst.level_db,
        "pitch_err_rel": _peak_freq(inner) / burst.freq_hz - 1.0,
        "onset_err_s": _onset_s(stretched, burst.freq_hz, burst.level_db, burst.preceding_end_s / rate) - on,
    }


def stretch_augcl(x: np.ndarray, rate: float) -> np.ndarray:
    from augcl.functional import time_stretch

    return time_stretch(torch.from_numpy(x)[None], torch.tensor([rate]))[0].numpy()


def stretch_torchaudio(x: np.ndarray, rate: float, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """torchaudio.functional.phase_vocoder on an STFT with the same window and hop as augcl's default."""
    import torchaudio.functional as AF

    win = torch.hann_window(n_fft)
    spec = torch.stft(torch.from_numpy(x), n_fft, hop, window=win, return_complex=True)
    phase_advance = torch.linspace(0, math.pi * hop, n_fft // 2 + 1)[..., None]
    out = AF.phase_vocoder(spec, rate, phase_advance)
    return torch.istft(out, n_fft, hop, window=win, length=math.ceil(len(x) / rate)).numpy()


METHODS = {"augcl": stretch_augcl, "torchaudio": stretch_torchaudio}


def run(n: int = 24, rates=(0.9, 1.1), seed: int = 0) -> dict:
    bursts = make_bursts(n, seed)
    results = {}
    for name, fn in METHODS.items():
        rows = [measure(b, fn(b.wave, r), r) for b in bursts for r in rates]
        lvl = np.array([abs(r["level_err_db"]) for r in rows])
        pitch = np.array([abs(r["pitch_err_rel"]) for r in rows])
        onset = np.array([abs(r["onset_err_s"]) for r in rows])
        results[name] = {
            "level_loss_db_median": float(np.median(lvl)),
            "level_loss_db_max": float(lvl.max()),
            "pitch_err_pct_max": float(100 * pitch.max()),
            "onset_err_ms_max": float(1000 * onset.max()),
            "n_signals": len(rows),
        }
    return {"rates": list(rates), "n_bursts": n, "seed": seed, "results": results,
            "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=24, help="number of burst signals (each stretched at 0.9 and 1.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = p.parse_args(argv)
    res = run(args.n, seed=args.seed)
    print(report.write(res, page(res), args.out, "stretch_fidelity"))


def page(res: dict) -> str:
    """The results page of :func:`run`'s ``res``."""
    lines = ["# Time-stretch fidelity on tone bursts", "",
             (f"`python -m benchmarks.stretch_fidelity --n {res['n_bursts']} --seed {res['seed']}`: "
              f"{res['results']['augcl']['n_signals']} signals (tone burst after a noise burst or another tone, in "
              "-50 dBFS noise), rates 0.9 and 1.1, n_fft 512, hop 128 for both methods."), ""]
    cols = {"level loss median (dB)": ("level_loss_db_median", "{:.2f}"),
            "level loss max (dB)": ("level_loss_db_max", "{:.2f}"),
            "pitch error max (%)": ("pitch_err_pct_max", "{:.3f}"), "onset error max (ms)": ("onset_err_ms_max", "{:.1f}")}
    rows = [{"method": name} | {c: r[k] for c, (k, _) in cols.items()} for name, r in res["results"].items()]
    return "\n".join(lines + report.table(rows, ["method", *cols], {c: f for c, (_, f) in cols.items()})) + "\n"


if __name__ == "__main__":
    main()
