"""Augment a batch and plot anchor/positive log-mels to a PNG.

    python -m augcl.demo                      # ts+mask on four synthetic 10-s clips -> outputs/demo.png
    python -m augcl.demo --preset all --audio-dir my_clips/ --out pairs.png

Without ``--audio-dir`` the clips are synthesized (a chirp, tone bursts, an AM tone, noise bursts), so the demo
needs no files. With it, each file's digital silence at its ends is trimmed and its length travels with it
(``lengths=``), so the segments of a short clip hold its sound, not the zeros that pad it to the batch.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch

from .banks import list_audio_files, load_audio, trim_digital_silence
from .pair import PRESETS, PairAugmenter

log = logging.getLogger("augcl.demo")


def synthetic_clips(sample_rate: int = 16000, seconds: float = 10.0, seed: int = 0) -> torch.Tensor:
    """Four clips with distinct, easy-to-see time-frequency structure, ``(4, seconds * sample_rate)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    chirp = 0.3 * np.sin(2 * np.pi * (200 * t + 0.5 * 300 * t**2))
    bursts = 0.3 * np.sin(2 * np.pi * 1200 * t) * (np.sin(2 * np.pi * 0.8 * t) > 0.3)
    am = 0.3 * np.sin(2 * np.pi * 600 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    noise = 0.2 * rng.standard_normal(t.size) * ((t % 1.5) < 0.3)
    clips = np.stack([chirp, bursts, am, noise]) + 0.003 * rng.standard_normal((4, t.size))
    return torch.from_numpy(clips.astype(np.float32))


def load_clips(folder: Path, sample_rate: int, n: int, seconds: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` readable files of ``folder``, trimmed of digital silence and cut to ``seconds``, zero-padded
    to the longest: ``(n, T)`` and their lengths ``(n,)``. Unreadable or silent files are skipped with a warning."""
    clips = []
    for f in list_audio_files(folder):
        if len(clips) == n:
            break
        try:
            clips.append(trim_digital_silence(load_audio(f, sample_rate))[: int(seconds * sample_rate)])
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the demo
            log.warning("skipping %s: %s", f, e)
    if not clips:
        raise SystemExit(f"--audio-dir {folder}: no readable audio files found")
    lengths = torch.tensor([len(x) for x in clips])
    out = np.zeros((len(clips), int(lengths.max())), np.float32)
    for i, x in enumerate(clips):
        out[i, : len(x)] = x
    return torch.from_numpy(out), lengths


def plot_pairs(anchor: torch.Tensor, positive: torch.Tensor, params: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = anchor.shape[0]
    fig, axes = plt.subplots(n, 2, figsize=(9, 2.2 * n), squeeze=False, constrained_layout=True)
    lo = float(torch.quantile(torch.cat([anchor, positive]).float().flatten()[::7], 0.02))
    hi = float(torch.cat([anchor, positive]).max())
    for i in range(n):
        for j, (name, spec) in enumerate((("anchor", anchor), ("positive", positive))):
            ax = axes[i, j]
            im = ax.imshow(spec[i, 0].float().numpy(), origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma")
            desc = [f"start {int(params[f'{name}.start'][i])}"]
            if "lengths" in params:
                desc.append(f"of {float(params['lengths'][i]) / 16000:.2f} s")
            if f"{name}.stretch_rate" in params:
                desc.append(f"rate {float(params[f'{name}.stretch_rate'][i]):.2f}")
            if f"{name}.snr_db" in params:
                desc.append(f"snr {float(params[f'{name}.snr_db'][i]):.1f} dB")
            if f"{name}.rir_index" in params:
                desc.append(f"rir #{int(params[f'{name}.rir_index'][i])}")
            ax.set_title(f"clip {i} {name}: " + ", ".join(desc), fontsize=8)
            ax.set_ylabel("mel bin", fontsize=7)
            ax.tick_params(labelsize=6)
        axes[i, 1].figure.colorbar(im, ax=axes[i, 1], fraction=0.04)
    for ax in axes[-1]:
        ax.set_xlabel("frame (10 ms)", fontsize=7)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ts+mask", choices=sorted(PRESETS))
    p.add_argument("--audio-dir", type=Path, default=None, help="folder of audio files (default: synthetic clips)")
    p.add_argument("--n", type=int, default=4, help="clips to plot")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("outputs/demo.png"))
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n must be >= 1 (clips to plot), got {args.n}")
    if args.audio_dir is not None and not args.audio_dir.is_dir():
        p.error(f"--audio-dir {str(args.audio_dir)!r} is not a folder; pass a folder of audio files")
    if importlib.util.find_spec("matplotlib") is None:
        p.error("the demo draws its figure with matplotlib, which augcl's bare install leaves out: "
                "pip install 'augcl[demo]'")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sr = 16000
    if args.audio_dir:
        wave, lengths = load_clips(args.audio_dir, sr, args.n)
    else:
        wave, lengths = synthetic_clips(sr)[: args.n], None
    aug = PairAugmenter.from_preset(args.preset, sample_rate=sr)
    pair = aug(wave, generator=torch.Generator().manual_seed(args.seed), lengths=lengths)
    plot_pairs(pair.anchor, pair.positive, pair.params, args.out,
               f"augcl PairAugmenter preset '{args.preset}' (seed {args.seed})")
    log.info("augmented %d clips of %.1f s with preset %r: anchor/positive %s -> %s",
             wave.shape[0], wave.shape[1] / sr, args.preset, tuple(pair.anchor.shape), args.out)
    return args.out


if __name__ == "__main__":
    main()
