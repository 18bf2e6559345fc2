"""Banks of room impulse responses and background noises, loaded once and kept on the device.

A bank is an ``nn.Module`` whose audio lives in registered buffers, so ``.to(device)`` moves it and sampling
an entry per example is a gather, never a loop or a disk read:

* :class:`RIRBank`: ``irs`` ``(N, L_max)`` zero-padded, ``lengths`` ``(N,)``. From a folder of audio files
  (the DNS-challenge layout is just files) or simulated shoebox rooms (pyroomacoustics), cached on disk.
* :class:`NoiseBank`: all recordings concatenated in one flat buffer with ``offsets`` and ``lengths``; a
  segment of any length is read with wrap-around (:func:`gather_ring`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from math import gcd
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from .audiofiles import AUDIO_EXTENSIONS, scan_audio_files  # noqa: F401 - AUDIO_EXTENSIONS is used through banks

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where simulated banks are cached: ``$AUGCL_CACHE`` or ``~/.cache/augcl``."""
    return Path(os.environ.get("AUGCL_CACHE", Path.home() / ".cache" / "augcl"))


def load_audio(path: Union[str, Path], sample_rate: int) -> np.ndarray:
    """Read a file with soundfile as mono float32 at ``sample_rate`` (polyphase resampling if needed)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    # bytes on POSIX: a name that is not valid UTF-8 (held as surrogates in str) opens as it is on disk
    data, sr = sf.read(os.fsencode(path) if os.name == "posix" else str(path), dtype="float32", always_2d=True)
    x = data.mean(axis=1)
    if sr != sample_rate:
        g = gcd(int(sr), int(sample_rate))
        x = resample_poly(x, sample_rate // g, int(sr) // g).astype(np.float32)
    return x


def trim_digital_silence(x: np.ndarray) -> np.ndarray:
    """``x`` without the runs of exact zeros at its two ends (the padding collections such as ESC-50 add after a
    short sound); a ValueError if nothing else is left."""
    nz = np.flatnonzero(x)
    if nz.size == 0:
        raise ValueError("digital silence only")
    return x[nz[0]:nz[-1] + 1]


def list_audio_files(folder: Union[str, Path]) -> list[Path]:
    """Audio files under ``folder`` (recursive), sorted, so that a bank's order is stable; each path passed over
    (broken links, unreadable folders, formats soundfile cannot decode: :func:`scan_audio_files`) is logged."""
    files, skipped = scan_audio_files(folder)
    for path, reason in skipped:
        log.warning("skipping %s: %s", path, reason)
    return files


def _load_many(files: Sequence[Path], sample_rate: int) -> tuple[list[np.ndarray], list[str]]:
    """Load what can be loaded; unreadable or empty files are skipped with a warning, never fatal."""
    clips, names = [], []
    for f in files:
        try:
            x = load_audio(f, sample_rate)
        except Exception as e:  # noqa: BLE001 - a corrupt file must not stop the load
            log.warning("skipping unreadable audio file %s: %s", f, e)
            continue
        if x.size == 0 or not np.isfinite(x).all() or not np.any(x):
            log.warning("skipping empty, silent or non-finite audio file %s", f)
            continue
        clips.append(x)
        names.append(str(f))
    return clips, names


def _load_folder(folder: Union[str, Path], sample_rate: int) -> tuple[list[np.ndarray], list[str]]:
    """Every readable audio file under ``folder``; a ValueError naming the folder if there is none."""
    clips, names = _load_many(list_audio_files(folder), sample_rate)
    if not clips:
        raise ValueError(f"folder {str(folder)!r} holds no readable audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return clips, names


def _pad_stack(clips: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    n_max = max(len(c) for c in clips)
    out = np.zeros((len(clips), n_max), dtype=np.float32)
    for i, c in enumerate(clips):
        out[i, : len(c)] = c
    return torch.from_numpy(out), torch.tensor([len(c) for c in clips], dtype=torch.long)


def prepare_ir(h: np.ndarray, sample_rate: int, max_seconds: float, align: bool = True) -> np.ndarray:
    """Align an IR (direct sound, its absolute maximum, at index 0), cut it to ``max_seconds``, unit energy.

    Alignment keeps the reverberant output time-aligned with the dry input (the crop position keeps its
    meaning); unit energy keeps the output level near the input's.
    """
    h = np.asarray(h, dtype=np.float64)
    if align:
        h = h[int(np.argmax(np.abs(h))) :]
    h = h[: max(int(round(max_seconds * sample_rate)), 1)]
    energy = np.sqrt(np.sum(h**2))
    if not np.isfinite(energy) or energy == 0:
        raise ValueError("impulse response is silent or non-finite")
    return (h / energy).astype(np.float32)


def gather_ring(flat: Tensor, offsets: Tensor, lengths: Tensor, index: Tensor, start: Tensor, length: int) -> Tensor:
    """Read ``length`` samples per row from a bank stored as one flat tensor, looping each entry.

    Entry ``i`` of the bank is ``flat[offsets[i] : offsets[i] + lengths[i]]``. Row ``b`` reads entry
    ``index[b]`` from ``start[b]`` on, wrapping around at the entry's end. Returns ``(B, length)``.
    """
    n = lengths[index].unsqueeze(-1)
    pos = (start.unsqueeze(-1) + torch.arange(length, device=flat.device)) % n
    return flat[offsets[index].unsqueeze(-1) + pos]


class RIRBank(nn.Module):
    """Room impulse responses ``irs`` ``(N, L_max)`` (aligned, unit energy) and ``lengths`` ``(N,)`` as buffers."""

    def __init__(self, irs: Tensor, lengths: Tensor, sample_rate: int, names: Optional[Sequence[str]] = None):
        super().__init__()
        if irs.ndim != 2 or irs.shape[0] == 0:
            raise ValueError(f"irs must be a non-empty (N, L) tensor, got shape {tuple(irs.shape)}")
        self.sample_rate = int(sample_rate)
        self.names = list(names) if names is not None else [f"ir{i}" for i in range(irs.shape[0])]
        self.register_buffer("irs", irs.float().contiguous())
        self.register_buffer("lengths", lengths.long())

    def __len__(self) -> int:
        return self.irs.shape[0]

    def extra_repr(self) -> str:
        return f"n={len(self)}, max_len={self.irs.shape[1]}, sample_rate={self.sample_rate}"

    def gather(self, index: Tensor) -> Tensor:
        """IRs for a batch: ``(B, L_max)`` rows ``irs[index]``."""
        return self.irs[index]

    @classmethod
    def from_folder(cls, folder: Union[str, Path], sample_rate: int = 16000, max_seconds: float = 1.0,
                    align: bool = True) -> "RIRBank":
        """Every audio file under ``folder`` is one IR (multi-channel files are downmixed)."""
        clips, names = _load_folder(folder, sample_rate)
        irs, lengths = _pad_stack([prepare_ir(c, sample_rate, max_seconds, align) for c in clips])
        return cls(irs, lengths, sample_rate, names)

    @classmethod
    def simulated(cls, config: Optional["RoomSimConfig"] = None, sample_rate: int = 16000,
                  cache: Union[bool, str, Path] = True) -> "RIRBank":
        """Shoebox rooms simulated with pyroomacoustics (image source method); cached on disk by config."""
        config = config or RoomSimConfig()
        key = hashlib.sha1(json.dumps({**asdict(config), "sr": sample_rate}, sort_keys=True).encode()).hexdigest()[:12]
        path = None
        if cache:
            base = cache_dir() if cache is True else Path(cache)
            path = base / f"rirs-sim-{key}.npz"
            if path.exists():
                try:
                    data = np.load(path)
                    return cls(torch.from_numpy(data["irs"]), torch.from_numpy(data["lengths"]), sample_rate,
                               [f"sim{i}" for i in range(len(data["lengths"]))])
                except Exception as e:  # noqa: BLE001 - a broken cache is rebuilt, not fatal
                    log.warning("rebuilding unreadable RIR cache %s: %s", path, e)
        clips, rt60 = simulate_rooms(config, sample_rate)
        irs, lengths = _pad_stack([prepare_ir(c, sample_rate, config.max_seconds) for c in clips])
        if path is not None:
            _atomic_savez(path, irs=irs.numpy(), lengths=lengths.numpy(), rt60_s=np.asarray(rt60))
        return cls(irs, lengths, sample_rate, [f"sim{i}" for i in range(len(clips))])


@dataclass(frozen=True)
class RoomSimConfig:
    """Random shoebox rooms: size (m), target RT60 (s, log-uniform like a mix of real rooms), positions."""

    n_rooms: int = 64
    seed: int = 0
    length_m: tuple = (3.0, 12.0)
    width_m: tuple = (2.5, 9.0)
    height_m: tuple = (2.4, 4.0)
    rt60_s: tuple = (0.15, 1.0)
    min_wall_distance_m: float = 0.5
    max_seconds: float = 1.0


def simulate_rooms(config: RoomSimConfig, sample_rate: int) -> tuple[list[np.ndarray], list[float]]:
    """Simulate ``config.n_rooms`` IRs (one source, one microphone per room); returns IRs and target RT60s."""
    import pyroomacoustics as pra

    rng = np.random.default_rng(config.seed)
    irs, rt60s = [], []
    while len(irs) < config.n_rooms:
        dims = np.array([rng.uniform(*config.length_m), rng.uniform(*config.width_m), rng.uniform(*config.height_m)])
        rt60 = float(np.exp(rng.uniform(np.log(config.rt60_s[0]), np.log(config.rt60_s[1]))))
        m = config.min_wall_distance_m
        src, mic = (rng.uniform(m, dims - m) for _ in range(2))
        try:
            e_abs, max_order = pra.inverse_sabine(rt60, dims)
        except ValueError:  # RT60 unreachable in this room (absorption > 1): draw another room
            continue
        room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(e_abs), max_order=max_order)
        room.add_source(src)
        room.add_microphone(mic)
        room.compute_rir()
        irs.append(np.asarray(room.rir[0][0], dtype=np.float64))
        rt60s.append(rt60)
    return irs, rt60s


def _atomic_savez(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class NoiseBank(nn.Module):
    """Background recordings concatenated in ``audio`` (flat) with ``offsets`` and ``lengths`` buffers."""

    def __init__(self, clips: Sequence[Tensor], sample_rate: int, names: Optional[Sequence[str]] = None):
        super().__init__()
        if len(clips) == 0:
            raise ValueError("a NoiseBank needs at least one recording")
        lengths = torch.tensor([len(c) for c in clips], dtype=torch.long)
        if bool((lengths == 0).any()):
            raise ValueError("NoiseBank recordings must not be empty")
        self.sample_rate = int(sample_rate)
        self.names = list(names) if names is not None else [f"noise{i}" for i in range(len(clips))]
        self.register_buffer("audio", torch.cat([torch.as_tensor(c, dtype=torch.float32).reshape(-1) for c in clips]))
        self.register_buffer("offsets", torch.cumsum(lengths, 0) - lengths)
        self.register_buffer("lengths", lengths)

    def __len__(self) -> int:
        return self.lengths.shape[0]

    def extra_repr(self) -> str:
        return f"n={len(self)}, total_s={self.audio.shape[0] / self.sample_rate:.1f}, sample_rate={self.sample_rate}"

    def read(self, index: Tensor, start: Tensor, length: int) -> Tensor:
        """``(B, length)`` samples of recording ``index[b]`` from ``start[b]`` on, looping at its end."""
        return gather_ring(self.audio, self.offsets, self.lengths, index, start, length)

    @classmethod
    def from_folder(cls, folder: Union[str, Path], sample_rate: int = 16000) -> "NoiseBank":
        clips, names = _load_folder(folder, sample_rate)
        return cls([torch.from_numpy(c) for c in clips], sample_rate, names)
