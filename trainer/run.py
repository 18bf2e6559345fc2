"""A run folder: one process at a time, bound to one configuration and one data set, resumable.

- :func:`lock_run_dir`: an exclusive lock for the process's lifetime (flock, released even by kill -9).
- :func:`remove_stale_temporaries`: the ``*.tmp`` an atomic write leaves when its process is killed.
- :func:`store_fingerprint` and :func:`claim_run_dir`: ``fingerprint.json`` binds a folder to what it computes.
- Pretraining's run: :data:`SAME_RUN`, the one list of :class:`~trainer.pretrain.PretrainConfig` fields that do not
  change what a run computes (a resume may change them; the ablation's fingerprint leaves them out:
  :func:`pretrain_record`), the resume checks against a checkpoint, and the run files (:func:`holds_run`,
  :func:`clear_run`, :func:`truncate_metrics`).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import shutil
from pathlib import Path

import torch

from . import tb
from .common import UsageError, require
from .data import read_names
from .pack import atomic_write, write_json

#: PretrainConfig fields that do not change what a run computes. A resume may change them (every other field must
#: equal the checkpoint's: :func:`check_resumable`), and the ablation leaves them out of a run's fingerprint, so it
#: reuses a run that differs only in them (:func:`pretrain_record`). "The same run" is within rounding: a resume with
#: other ``threads`` or ``backend`` continues bit-for-bit only where the numbers round alike (a parallel sum, the
#: kernels' float32 tolerances); every other field on the list changes nothing at all. Per field, why:
SAME_RUN = (
    "out",               # where the run is written, not what it computes
    "resume",            # how the folder is treated (continue) ...
    "overwrite",         # ... or start over: the run itself is the same
    "device",            # where it runs; a resume also needs the checkpoint's device type (its RNG), checked apart
    "threads",           # torch CPU threads: speed only (docs/training.md, "Threads"); a parallel sum may round apart
    "num_workers",       # DataLoader processes: the same clips whatever their number (trainer/data.py)
    "checkpoint_every",  # how often a checkpoint is written; resume is bit-for-bit from any of them
    "steps",             # a longer run is this run continued: resume up to the new steps (never below the checkpoint)
    "backend",           # auto / torch / kernels compute the same augmentations within the tolerances tests/ pin
)


def pretrain_record(config: dict, store: str | Path) -> dict:
    """What a pretraining run is, for :func:`claim_run_dir`: ``config`` (``asdict(PretrainConfig)``) less
    :data:`SAME_RUN`, plus the fingerprint of the store it reads."""
    return {k: v for k, v in config.items() if k not in SAME_RUN} | {"data_fingerprint": store_fingerprint(store)}


def store_fingerprint(root: str | Path) -> str:
    """A hash of a packed store's contents as the trainer sees them: its metadata, index (lengths, labels) and
    groups. Two stores with the same fingerprint give the same clips to every command."""
    root = Path(root)
    h = hashlib.sha256()
    for name in ("store.json", "index.npz"):
        if (root / name).is_file():
            h.update(name.encode())
            h.update((root / name).read_bytes())
    groups, paths = read_names(root, "groups"), read_names(root, "paths")
    if groups is not None:
        # the bytes of groups.txt where it could hold them, so a store's fingerprint does not depend on which
        # packer wrote it; names with line breaks hash as JSON
        if any("\n" in g for g in groups):
            h.update(b"groups.json" + json.dumps(groups).encode())
        else:
            h.update(b"groups.txt" + "".join(g + "\n" for g in groups).encode("utf-8", "surrogateescape"))
    if paths is not None:
        h.update(b"paths.txt%d" % len(paths))
    return h.hexdigest()[:16]


def claim_run_dir(folder: str | Path, record: dict) -> None:
    """Bind ``folder`` to the run that ``record`` describes (configuration and data fingerprints).

    The first call writes ``folder/fingerprint.json``; a later call with another record raises a ValueError that
    names the differing keys, so a finished run of other data or settings is never reused as if it were this one.
    """
    folder = Path(folder)
    path = folder / "fingerprint.json"
    record = json.loads(json.dumps(record))  # tuples -> lists, as stored
    if not path.is_file() and folder.is_dir() and any(folder.iterdir()):
        raise UsageError(f"out folder {str(folder)!r} holds files but no fingerprint.json, so nothing says what "
                         "they were computed from; pass a new --out, or delete that folder")
    if path.is_file():
        old = json.loads(path.read_text())
        if old != record:
            diff = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
            raise UsageError(f"out folder {str(folder)!r} holds a run of other data or settings (differs in "
                             f"{', '.join(diff)}); pass a new --out, or delete that folder to redo it")
        return
    write_json(path, record)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``*.tmp`` files an atomic write leaves when its process is killed mid-write; returns them.
    Safe only while no other process writes ``folder``: callers hold :func:`lock_run_dir`."""
    folder = Path(folder)
    stale = sorted(folder.glob("*.tmp")) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def lock_run_dir(folder: str | Path):
    """An exclusive lock on ``folder`` for this process's lifetime (``folder/.lock``, flock: released by the
    kernel when the process dies, even by kill -9). A second run in the same folder is refused."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / ".lock", "a+")  # noqa: SIM115 - held open: the lock lives as long as the file
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UsageError(f"out folder {str(folder)!r} is in use by another running process; wait for it, stop it, "
                         "or pass another --out") from None
    return f


# --- pretraining's run ----------------------------------------------------------------------------------------------

def check_resumable(ckpt: dict, config: dict, defaults: dict, world: int, device: torch.device) -> None:
    """Refuse to resume a checkpoint under another configuration: every field but :data:`SAME_RUN` must be equal
    (``data`` may name another path to a store with the same contents; :func:`check_same_data`, once the store is
    open). ``config``: the run's ``asdict(PretrainConfig)``; ``defaults``: the defaults, for a field the checkpoint
    predates."""
    old, new = ckpt["config"], config
    diff = [k for k in new if k not in SAME_RUN and k != "data" and old.get(k, defaults[k]) != new[k]]
    if diff:
        what = ", ".join(f"--{k.replace('_', '-')} ({old.get(k, defaults[k])!r} in the checkpoint, {new[k]!r} now)"
                         for k in diff)
        raise UsageError(f"--resume: the checkpoint's run differs in {what}; pass the checkpoint's values, or "
                                "start a new run (--overwrite, or another --out)")
    require(new["steps"] >= ckpt["step"], f"--steps {new['steps']} is below the checkpoint's step {ckpt['step']}; "
                                              f"pass --steps >= {ckpt['step']}")
    require(len(ckpt["rng"]) == world, f"--resume: the checkpoint was written by {len(ckpt['rng'])} "
                                              f"process(es), this run has {world}; resume with the same process count")
    require(ckpt["device_type"] == device.type,
                   f"--resume: the checkpoint's augmentation RNG is a {ckpt['device_type']} generator but --device is "
                   f"{device.type}; resume on a {ckpt['device_type']} device")


def check_same_data(ckpt: dict, data: str, fingerprint: str) -> None:
    """Refuse to resume on a store whose contents differ from the checkpoint's (its path may differ)."""
    old = ckpt["config"]["data"]
    if fingerprint != ckpt["store"]:
        how = "" if old == data else f" (the checkpoint's run read --data {old!r})"
        raise UsageError(f"--resume: --data {data!r} is not the data the checkpoint was trained on{how}: "
                                f"store fingerprint {ckpt['store']} in the checkpoint, {fingerprint} now (files were "
                                "added, removed or changed); restore that data, or start a new run (--overwrite)")


#: what a pretraining run writes in its folder (``--overwrite`` removes them; the packed copy of a folder stays)
RUN_FILES = ("config.json", "metrics.jsonl", "loss.png")
RUN_DIRS = ("checkpoints", tb.SUBDIR)


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds (part of) a pretraining run: a checkpoint, its run files or TensorBoard events."""
    return ((out / "checkpoints" / "last.pt").is_file() or any((out / f).is_file() for f in RUN_FILES)
            or any((out / tb.SUBDIR).glob("events.out.tfevents.*")))


def clear_run(out: Path) -> None:
    """--overwrite: remove the run's files (the packed copy of a --data folder, a cache, is kept)."""
    for d in RUN_DIRS:
        shutil.rmtree(out / d, ignore_errors=True)
    for f in RUN_FILES:
        (out / f).unlink(missing_ok=True)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metric rows of steps <= ``step`` (the checkpoint's): rows logged after it are redone on resume,
    and a row cut short by a kill is dropped."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("step", math.inf) <= step:
            keep.append(line + "\n")
    atomic_write(path, lambda f: f.write("".join(keep).encode()))
