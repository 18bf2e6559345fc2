"""``python -m trainer.esc50 SRC OUT``: ESC-50 (or its ESC-10 subset) as packed stores with a grouped split.

    python -m trainer.esc50 ../shared/data/esc50-fold4 stores/esc50          # all 50 classes
    python -m trainer.esc50 ../shared/data/esc50-fold4 stores/esc10 --esc10  # the 10-class subset

SRC holds ESC-50's ``metadata.csv`` (``filename, category, target, esc10, src_file``; the official file names
it ``esc50.csv`` and keeps a ``fold`` column: pass ``--metadata``) and the audio under ``SRC/audio``. Writes
``OUT/train.csv`` and ``OUT/test.csv`` (manifests ``path,labels,group``) and packs them into ``OUT/train`` and
``OUT/test``: one fold of ``k = round(1 / --test-fraction)`` held out for testing, i.e. about ``1 / k`` of each
class's source recordings, whole recordings at a time (``src_file``: clips cut from one recording never straddle
the split), every class keeping a recording on the training side (:func:`trainer.splits.held_out`).
The packer trims the digital silence ESC-50 pads short sounds with, so a clip's length is its sound's.
Pretrain on ``OUT/train`` (its labels are not read by pretraining), probe with ``--data OUT/train --test-data
OUT/test``; docs/training.md (section 6) gives the commands and the results.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import cli
from .pack import pack
from .sources import csv_manifest
from .splits import held_out


def write_split(src: Path, out: Path, metadata: Optional[Path] = None, esc10: bool = False,
                test_fraction: float = 0.3, seed: int = 0) -> tuple[Path, Path]:
    """The two manifests ``OUT/train.csv`` and ``OUT/test.csv``; returns their paths."""
    metadata = metadata or src / "metadata.csv"
    if not metadata.is_file():
        raise ValueError(f"metadata {str(metadata)!r} not found; pass --metadata (ESC-50's esc50.csv)")
    rows = list(csv.DictReader(open(metadata, newline="")))
    need = {"filename", "category", "src_file"} | ({"esc10"} if esc10 else set())
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"metadata {str(metadata)!r} must have the columns {sorted(need)}")
    if esc10:
        rows = [r for r in rows if r["esc10"].strip().lower() == "true"]
    classes = sorted({r["category"] for r in rows})
    labels = np.array([classes.index(r["category"]) for r in rows])
    held = held_out([r["src_file"] for r in rows], labels, test_fraction, seed, keep_every_class=True)
    keep, held = np.flatnonzero(~held), np.flatnonzero(held)
    out.mkdir(parents=True, exist_ok=True)
    audio = (src / "audio").resolve()
    paths = []
    for name, idx in (("train", keep), ("test", held)):
        path = out / f"{name}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "labels", "group"])
            w.writerows([str(audio / rows[i]["filename"]), rows[i]["category"], rows[i]["src_file"]] for i in idx)
        paths.append(path)
    return paths[0], paths[1]


@dataclass(frozen=True)
class Esc50Config:
    """``python -m trainer.esc50``'s arguments (``SRC OUT`` positional)."""

    src: Path
    out: Path
    metadata: Optional[Path] = None
    esc10: bool = False
    test_fraction: float = 0.3
    seed: int = 0
    jobs: Optional[int] = None


HELP = {"src": "folder with metadata.csv and audio/", "out": "folder for the manifests and the two packed stores",
        "metadata": "the metadata CSV (default SRC/metadata.csv)", "esc10": "only the ESC-10 subset (10 classes)",
        "seed": "seed of the grouped split"}


def main(argv: Optional[Sequence[str]] = None) -> tuple[Path, Path]:
    p = cli.parser(Esc50Config, "python -m trainer.esc50", __doc__, help=HELP, switches={"esc10": "store_true"})
    args, _ = cli.parse(p, Esc50Config, argv)
    if not args.src.is_dir():
        p.error(f"src {str(args.src)!r} is not a folder; pass ESC-50's folder (metadata.csv and audio/)")
    if not 0 < args.test_fraction < 1:
        p.error(f"--test-fraction must be between 0 and 1 (the share of sources held out), got {args.test_fraction}")
    if args.jobs is not None and args.jobs < 1:
        p.error(f"--jobs must be >= 1 (decoding processes), got {args.jobs}")
    try:
        manifests = write_split(args.src, args.out, args.metadata, args.esc10, args.test_fraction, args.seed)
    except ValueError as e:
        p.error(str(e))
    classes = None
    stores = []
    for manifest in manifests:
        source = csv_manifest(manifest, classes=classes)
        classes = source.classes  # the test store takes the training store's class list and order
        res = pack(source, args.out / manifest.stem, jobs=args.jobs, desc=f"packing {manifest.stem}")
        print(res.summary())
        stores.append(args.out / manifest.stem)
    return stores[0], stores[1]


if __name__ == "__main__":
    main()
