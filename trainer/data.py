"""Reading a packed store (see :mod:`trainer.pack`) for training: fixed-length int16 clips, batch by batch.

* :class:`PackedStore`: the index and the memory-mapped shards; ``clip(i)`` is a view, no decoding.
* :class:`PackedClips`: a map-style dataset of clips of at most ``clip_seconds`` (a random crop of longer
  clips; shorter ones are zero-padded and their valid length travels with them) as int16 tensors, so a batch
  crosses to the GPU at half the bytes of float32 and is converted there (:func:`to_float`). ``__getitems__``
  reads a whole batch into one array, a :class:`Batch` ``(clips, lengths, targets)``; the DataLoader hands it
  over as is (:func:`make_loader`).
* :class:`DistributedBatchSampler`: each rank gets its own batches of one seeded permutation per epoch; with
  ``drop_last`` every rank gets the same number of full batches (what DDP needs) and no index repeats.

Crop offsets depend only on (seed, epoch, index), never on the worker or the batch an index lands in, so a
run reads the same clips whatever ``num_workers`` is.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from augcl.functional import LEVEL_TARGET_DB

from .pack import FORMAT, INT16_SCALE, clip_levels

#: level normalisation modes of the data path (:meth:`PackedStore.gains`)
NORMALIZE = ("rms", "peak", "none")


class PackedStore:
    """The read side of a packed store: ``len``, ``classes``, ``multi_label``, ``sample_rate``, ``clip(i)``."""

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root)
        meta_path = self.root / "store.json"
        if not meta_path.is_file():
            hint = (" (packing did not finish: rerun the same `python -m trainer.pack` command to resume)"
                    if (self.root / "plan.json").is_file() else " (make one with `python -m trainer.pack SRC OUT`)")
            raise ValueError(f"root {str(self.root)!r} is not a complete packed store{hint}")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"root {str(self.root)!r} has format {self.meta.get('format')!r}, expected {FORMAT!r}")
        with np.load(self.root / "index.npz") as z:
            self.shard = z["shard"]
            self.offset = z["offset"]
            self.length = z["length"]
            self.label_ptr = z["label_ptr"]
            self.label_ids = z["label_ids"]
            self._levels = {k: z[k] for k in ("rms", "peak") if k in z}
        self.sample_rate: int = self.meta["sample_rate"]
        self.classes: tuple[str, ...] = tuple(self.meta["classes"])
        self.multi_label: bool = self.meta["multi_label"]
        self._shards: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.offset)

    def __getstate__(self):  # worker processes reopen the memory maps instead of pickling their contents
        state = self.__dict__.copy()
        state["_shards"] = {}
        return state

    def shard_array(self, shard: int) -> np.ndarray:
        arr = self._shards.get(shard)
        if arr is None:
            arr = self._shards[shard] = np.load(self.root / "shards" / f"{shard:05d}.npy", mmap_mode="r")
        return arr

    def clip(self, i: int) -> np.ndarray:
        """The whole clip ``i`` as an int16 view of the shard (no copy)."""
        off = int(self.offset[i])
        return self.shard_array(int(self.shard[i]))[off:off + int(self.length[i])]

    def levels(self, mode: str) -> np.ndarray:
        """Each clip's level over its whole valid length: ``"rms"`` or ``"peak"`` (full scale 1), from the index
        (computed once, clip by clip, for stores packed before the packer recorded them)."""
        if mode not in ("rms", "peak"):
            raise ValueError(f"mode must be 'rms' or 'peak', got {mode!r}")
        if mode not in self._levels:
            both = np.asarray([clip_levels(self.clip(i)) for i in range(len(self))], np.float64).reshape(-1, 2)
            self._levels = {"rms": both[:, 0], "peak": both[:, 1]}
        return self._levels[mode]

    def gains(self, normalize: str) -> np.ndarray:
        """Per-clip factors that bring each whole clip to the level of :func:`augcl.functional.normalize_level`
        (``"rms"``: -20 dBFS RMS; ``"peak"``: -1 dBFS peak; ``"none"``: 1). A silent clip keeps factor 1."""
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        if normalize == "none":
            return np.ones(len(self))
        level = self.levels(normalize)
        target = 10 ** (LEVEL_TARGET_DB[normalize] / 20)
        return np.where(level > 1e-10, target / np.maximum(level, 1e-10), 1.0)

    def labels(self, i: int) -> tuple[int, ...]:
        return tuple(int(k) for k in self.label_ids[self.label_ptr[i]:self.label_ptr[i + 1]])

    def paths(self) -> list[str]:
        """Each clip's source path, in index order."""
        paths = read_names(self.root, "paths")
        if paths is None:
            raise ValueError(f"root {str(self.root)!r} holds neither paths.json nor paths.txt; repack it with "
                             "`python -m trainer.pack`")
        return self._one_per_clip(paths, "paths")

    def groups(self) -> list[str]:
        """Each clip's group (its source recording, where the layout names one: ``groups.json``), else its path:
        splits that keep a group on one side then keep each file on one side."""
        groups = read_names(self.root, "groups")
        return self._one_per_clip(groups, "groups") if groups is not None else self.paths()

    def _one_per_clip(self, names: list[str], stem: str) -> list[str]:
        if len(names) != len(self):
            raise ValueError(f"root {str(self.root)!r}: {stem} lists {len(names)} names for {len(self)} clips (a name "
                             f"with a line break in an older store's {stem}.txt?); repack it with "
                             "`python -m trainer.pack`, which writes a JSON list")
        return names

    def targets(self) -> Tensor:
        """Every clip's target: class index (single-label, -1 if none) or a multi-hot row (multi-label)."""
        return self._targets(np.arange(len(self)))

    def _targets(self, idx: np.ndarray) -> Tensor:
        starts = self.label_ptr[idx]
        counts = self.label_ptr[idx + 1] - starts
        if not self.multi_label:
            first = self.label_ids[np.minimum(starts, len(self.label_ids) - 1)] if len(self.label_ids) else 0
            return torch.from_numpy(np.where(counts > 0, first, -1).astype(np.int64))
        # every label of every row in one gather: position = row start + rank within the row
        pos = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
        out = np.zeros((len(idx), len(self.classes)), np.float32)
        out[np.repeat(np.arange(len(idx)), counts), self.label_ids[pos]] = 1.0
        return torch.from_numpy(out)


def read_names(root: Union[str, Path], stem: str) -> Optional[list[str]]:
    """A store's ``stem.json`` (a JSON list), else an older store's ``stem.txt`` (one name per line), else None."""
    root = Path(root)
    if (root / f"{stem}.json").is_file():
        return json.loads((root / f"{stem}.json").read_bytes())
    if (root / f"{stem}.txt").is_file():
        return (root / f"{stem}.txt").read_bytes().decode().split("\n")[:-1]  # as written: name + "\n" each
    return None


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash (SplitMix64's finalizer), vectorized; numpy wraps uint64 arithmetic."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def crop_uniforms(seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """Uniform numbers in [0, 1), one per index, a function of (seed, epoch, index) only."""
    with np.errstate(over="ignore"):
        key = _splitmix64(np.asarray([seed & (2**64 - 1)], np.uint64)
                          + np.asarray([epoch], np.uint64) * np.uint64(0xD1B54A32D192ED03))
        h = _splitmix64(np.asarray(index, np.uint64) ^ key)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class Batch(NamedTuple):
    """``clips`` ``(B, T)`` int16, zero past each row's ``lengths`` ``(B,)`` (valid samples, int64); ``targets``;
    ``gains`` ``(B,)`` float32: each clip's level-normalisation factor (see :meth:`PackedStore.gains`), which
    :func:`to_float` folds into the int16 -> float conversion."""

    clips: Tensor
    lengths: Tensor
    targets: Tensor
    gains: Tensor


class PackedClips(Dataset):
    """Clips of at most ``clip_seconds`` from a packed store as int16 tensors, with their lengths and targets.

    ``crop``: ``"random"`` (a uniform window of clips longer than ``clip_seconds``, new each epoch; call
    :meth:`set_epoch`) or ``"start"`` (the first ``clip_seconds``). Shorter clips are zero-padded at the end and
    keep their own length: the padding is not signal, and the trainer never draws a segment from it. A batch is as
wide as its longest (cropped) clip. ``normalize`` (``"rms"``, ``"peak"``, ``"none"``): each clip's level over
its whole length is brought to the target by a per-clip gain (``Batch.gains``), measured once per store.
    ``__getitems__(indices)`` returns a :class:`Batch`.
    """

    def __init__(self, store: Union[PackedStore, str, Path], clip_seconds: float = 10.0, crop: str = "random",
                 seed: int = 0, normalize: str = "none"):
        self.store = store if isinstance(store, PackedStore) else PackedStore(store)
        self.gains = self.store.gains(normalize).astype(np.float32)
        if crop not in ("random", "start"):
            raise ValueError(f"crop must be 'random' or 'start', got {crop!r}")
        if not clip_seconds > 0:
            raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
        self.clip_samples = int(round(clip_seconds * self.store.sample_rate))
        self.crop, self.seed, self.epoch = crop, seed, 0

    def __len__(self) -> int:
        return len(self.store)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        clips, lengths, targets, _ = self.__getitems__([i])
        return clips[0, :lengths[0]], lengths[0], targets[0]

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for a store of {len(self)} clips")
        st = self.store
        n = self.clip_samples
        lengths = st.length[idx]
        slack = np.maximum(lengths - n, 0)
        if self.crop == "random":
            starts = np.floor(crop_uniforms(self.seed, self.epoch, idx) * (slack + 1)).astype(np.int64)
        else:
            starts = np.zeros_like(slack)
        take = np.minimum(lengths, n)
        # as wide as the batch's longest (cropped) clip: a batch of short clips is not padded to clip_seconds
        out = np.zeros((len(idx), int(take.max(initial=1))), np.int16)
        for row, (i, s, m) in enumerate(zip(idx.tolist(), starts.tolist(), take.tolist(), strict=True)):
            off = int(st.offset[i]) + s
            out[row, :m] = st.shard_array(int(st.shard[i]))[off:off + m]
        return Batch(torch.from_numpy(out), torch.from_numpy(take.astype(np.int64)), st._targets(idx),
                     torch.from_numpy(self.gains[idx]))


def to_float(clips: Tensor, dtype: torch.dtype = torch.float32, gains: Optional[Tensor] = None) -> Tensor:
    """int16 clips (on any device) to float in [-1, 1): the inverse of the packer's scaling; ``gains`` ``(B,)``
    (e.g. ``Batch.gains``) scale each row in the same pass."""
    if clips.dtype != torch.int16:
        raise TypeError(f"clips must be int16 (from PackedClips), got {clips.dtype}")
    if gains is None:
        return clips.to(dtype) * (1.0 / INT16_SCALE)
    return clips.to(dtype) * (gains.to(device=clips.device, dtype=dtype) * (1.0 / INT16_SCALE)).reshape(-1, 1)


def dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class DistributedBatchSampler(Sampler[list[int]]):
    """Batches of indices for this rank: one permutation per epoch from ``(seed, epoch)``, dealt round-robin.

    ``rank``/``world_size`` default to torch.distributed's (or 0/1 without a process group). With
    ``drop_last`` (training) the permutation is cut to a multiple of ``batch_size * world_size``, so every rank
    yields the same number of full batches and no index appears twice in an epoch. Without it (evaluation)
    every index appears exactly once over the ranks; ranks may then differ by one batch.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool = True, drop_last: bool = True, seed: int = 0,
                 rank: Optional[int] = None, world_size: Optional[int] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        r, w = dist_rank_world()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if drop_last and n < batch_size * self.world_size:
            raise ValueError(f"{n} clips cannot fill one batch of {batch_size} on each of {self.world_size} ranks; "
                             "lower batch_size or pass drop_last=False")
        self.n, self.batch_size, self.shuffle, self.drop_last, self.seed = n, batch_size, shuffle, drop_last, seed
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation; ``start_batch`` skips the batches a resumed run already trained on."""
        self.epoch, self.start_batch = epoch, start_batch

    def _mine(self) -> Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if self.drop_last:
            order = order[: self.n // (self.batch_size * self.world_size) * self.batch_size * self.world_size]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        mine = self._mine().tolist()
        for i in range(self.start_batch * self.batch_size, len(mine), self.batch_size):
            batch = mine[i:i + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.n // (self.batch_size * self.world_size)
        return math.ceil(len(range(self.rank, self.n, self.world_size)) / self.batch_size)

    def __len__(self) -> int:
        return max(self.batches_per_epoch() - self.start_batch, 0)


def _as_is(batch):
    return batch


def make_loader(dataset: PackedClips, batch_sampler: DistributedBatchSampler, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader that reads each batch with one ``__getitems__`` call and hands it over without collating."""
    # its own generator: a DataLoader draws a base seed for its workers whenever an iterator starts, and drawing it
    # from the global RNG would shift the training's random stream (stochastic depth) on resume
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=_as_is, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(0))
