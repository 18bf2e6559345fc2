"""The built-in procedural dataset: 10 sound-event classes, deterministic from a seed, no downloads.

What it is for: every command and test runs end to end on it, on a CPU, in minutes, and the numbers it gives
move the right way when something breaks (a contrastive encoder that learns nothing probes near chance; one
that learns separates the classes). It is built like real collections, not like the paper's 10-s AudioSet clips:

* lengths: each clip lasts 0.5 to 10 s (log-uniform, so half the clips are under about 2.2 s);
* level: each clip's level is drawn in -45 to -5 dBFS RMS (about +-20 dB around -25), as recordings from
  different devices and distances differ;
* label scarcity: 10 labeled clips per class in the probe's training split (``n_train = 100``), the paper's
  regime of little labeled data, so that a supervised network from scratch is far from perfect and
  pretraining has room to matter.

Each clip is a sequence of events of one class over a background, with the nuisances the paper's augmentations
target (tempo, level, pitch, room, background noise) and quieter events of other classes; :mod:`trainer.render`
says how a clip is synthesised.

What it is not: a benchmark. It does not stand in for AudioSet or DESED numbers, and a result on it says
nothing about real recordings; the reproduction guide gives the commands for the real datasets.

A clip is named by a URI ``builtin:<seed>:<split>:<index>:<seconds>`` (its length drawn from (seed, split,
index) too), which :func:`trainer.render.render_uri` renders alone, in any order, in any process, with the same
result (about 30 ms per 10 s of audio on one core). :func:`builtin_store` packs a split once into the cache
(``$AUGCL_CACHE/builtin``) and returns the path of the packed store. The names this module takes from
:mod:`trainer.render` (``CLASSES``, ``render_clip``, ...) are its own API too.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from augcl.banks import cache_dir

from . import cli
from .pack import pack
from .render import CLASSES, SPLITS, clip_uri, label_of, parse_uri, render_clip, render_uri
from .sources import Item, Source

__all__ = ["CLASSES", "SPLITS", "BuiltinConfig", "builtin_source", "builtin_store", "clip_uri", "label_of",
           "parse_uri", "plot_classes", "render_clip", "render_uri"]


@dataclass(frozen=True)
class BuiltinConfig:
    """Sizes of the splits and the clip-length range; ``seed`` selects a different but equally distributed dataset."""

    seed: int = 0
    sample_rate: int = 16000
    min_seconds: float = 0.5
    max_seconds: float = 10.0
    n_unlabeled: int = 1000
    n_train: int = 100
    n_test: int = 200

    def __post_init__(self):
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError(f"need 0 < min_seconds <= max_seconds, got {self.min_seconds}, {self.max_seconds}")

    def seconds(self, split: str, index: int) -> float:
        """Clip ``index``'s length: log-uniform in [min_seconds, max_seconds], a function of (seed, split, index)."""
        u = np.random.default_rng([self.seed, SPLITS.index(split), index, 1]).uniform()
        return round(float(self.min_seconds * (self.max_seconds / self.min_seconds) ** u), 3)

    def size(self, split: str) -> int:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, f"n_{split}")


def builtin_source(config: BuiltinConfig, split: str) -> Source:
    """A :class:`trainer.sources.Source` naming the split's clips by URI (labeled: the class list)."""
    items = tuple(Item(clip_uri(config.seed, split, i, config.seconds(split, i)), (label_of(split, i),))
                  for i in range(config.size(split)))
    return Source(items, CLASSES, multi_label=False)


def builtin_store(split: str = "unlabeled", config: Optional[BuiltinConfig] = None, root: Optional[Path] = None,
                  jobs: Optional[int] = None, progress: bool = True) -> Path:
    """Pack the split once (parallel, resumable) into ``root`` (default the cache) and return the store's path."""
    config = config or BuiltinConfig()
    config.size(split)
    name = (f"v2-seed{config.seed}-sr{config.sample_rate}-{config.min_seconds:g}-{config.max_seconds:g}s-"
            f"{config.n_unlabeled}-{config.n_train}-{config.n_test}")
    out = Path(root) if root is not None else cache_dir() / "builtin" / name / split
    if not (out / "store.json").is_file():
        pack(builtin_source(config, split), out, sample_rate=config.sample_rate, jobs=jobs, progress=progress,
             desc=f"rendering built-in {split}")
    return out


def plot_classes(out: Path, seed: int = 0, sample_rate: int = 16000) -> Path:
    """One test clip per class as a log-mel image (the paper's front end), to see and hear what the classes are."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from augcl.transforms import LogMel, MelConfig

    mel = LogMel(MelConfig(), sample_rate)
    fig, axes = plt.subplots(5, 2, figsize=(13, 11), sharex=True, sharey=True)
    for k, ax in enumerate(axes.T.flat):
        x = torch.from_numpy(render_clip(seed, "test", k, 10.0, sample_rate))[None]
        ax.imshow(mel(x)[0].numpy(), origin="lower", aspect="auto", cmap="magma",
                  extent=(0, 10, 0, mel.config.n_mels))
        ax.set_title(f"{k}: {CLASSES[k]}", fontsize=10)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    for ax in axes[:, 0]:
        ax.set_ylabel("mel bin")
    fig.suptitle(f"built-in dataset: one test clip per class (seed {seed}), 64-bin log-mel")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=55)
    plt.close(fig)
    return out


@dataclass(frozen=True)
class GalleryConfig:
    """``python -m trainer.builtin``'s arguments."""

    plot: Path = Path("outputs/builtin_classes.png")
    seed: int = 0
    pack: tuple = ()


def main(argv=None) -> None:
    p = cli.parser(GalleryConfig, "python -m trainer.builtin", "The built-in procedural dataset.",
                   choices={"pack": SPLITS}, help={"plot": "gallery PNG to write", "pack": "also pack these splits "
                                                   "into the cache (done on first use otherwise)"})
    args, _ = cli.parse(p, GalleryConfig, argv)
    print(f"wrote {plot_classes(args.plot, args.seed)}")
    for split in args.pack:
        print(f"{split}: {builtin_store(split, BuiltinConfig(seed=args.seed))}")


if __name__ == "__main__":
    main()
