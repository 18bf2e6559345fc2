"""The figures people look at: per-class F1 bars (the paper's Fig. 3) and the confusion matrix (Fig. 4)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def per_class_f1(series: Mapping[str, Mapping[str, float]], png: Path, title: str = "per-class F1") -> Path:
    """Grouped bars: one group per class, one bar per series (a run, a preset)."""
    plt = _plt()
    names = list(series)
    classes = list(next(iter(series.values())))
    x = np.arange(len(classes))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6.0, min(15.0, 1.0 + 0.2 * len(classes) * (len(names) + 1))), 4.5))
    for k, name in enumerate(names):
        ax.bar(x + (k - (len(names) - 1) / 2) * width, [series[name][c] for c in classes], width, label=name)
    ax.set_xticks(x, classes, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title(title)
    if len(names) > 1:
        ax.legend(fontsize=8, ncol=min(len(names), 3))
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def confusion(matrix: Sequence[Sequence[float]], classes: Sequence[str], png: Path,
              title: str = "confusion matrix (rows: true class, normalised)") -> Path:
    plt = _plt()
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(classes), 0.6 + 0.5 * len(classes)))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png
