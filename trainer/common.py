"""What the trainer's commands share: devices, torch.distributed setup, atomic checkpoints, data resolution."""
from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.distributed as dist

from .data import PackedStore, dist_rank_world
from .pack import atomic_write, write_json  # noqa: F401 - write_json is used through common


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU; pass --device cpu")
    return device


def run_device(name: str) -> torch.device:
    """:func:`pick_device` for a command's ``--device``: a device that cannot be used is a :class:`UsageError`."""
    try:
        return pick_device(name)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"--device: {e}") from None


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (RANK/WORLD_SIZE in the environment); (0, 1) without it."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    return dist_rank_world()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on one (so all ranks stop at the same step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([float(flag)], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def atomic_save(obj, path: Union[str, Path]) -> None:
    """torch.save to a temporary file in the same folder, then rename: a checkpoint is whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f))
    fsync_dir(path.parent)


def rng_state() -> dict:
    """This process's global RNG states (torch, numpy, python, CUDA), as tensors and plain values only."""
    state = {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    set_numpy_rng_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_store(data: str, split: str, work_dir: Path, builtin_config=None, jobs: Optional[int] = None) -> Path:
    """``data`` as a packed store: "builtin" (the split of the built-in dataset, packed into the cache on first
    use), a packed store, or a folder of audio files (packed into ``work_dir/packed`` first, resumably).

    A folder is listed on every call (no file is opened) and its plan compared with the pack's: when files were
    added or removed since, the pack is deleted (it is derived data, ours) and the folder packed again. Rank 0
    packs; the other ranks wait for it."""
    import json
    import shutil

    from .builtin import builtin_store
    from .pack import FORMAT, make_plan, pack
    from .sources import audio_folder

    rank, _ = dist_rank_world()
    if data == "builtin":
        if rank == 0:
            builtin_store(split, builtin_config, jobs=jobs)
        barrier()
        return builtin_store(split, builtin_config, progress=False)
    path = Path(data)
    if (path / "store.json").is_file():
        return path
    if not path.is_dir():
        raise ValueError(f"data {data!r} is neither 'builtin', a packed store, nor a folder of audio files")
    if (path / "plan.json").is_file():
        raise ValueError(f"data {data!r} is an unfinished packed store; rerun its `python -m trainer.pack` to finish")
    out = work_dir / "packed"
    if rank == 0:
        source = audio_folder(path)
        if not source.items:
            why = f" ({len(source.missing)} paths passed over, e.g. {source.missing[0][0]!r}: {source.missing[0][1]})" \
                if source.missing else ""
            raise ValueError(f"data folder {data!r} holds no audio files{why}; put audio files in it (soundfile's "
                             "formats: wav, flac, ogg, mp3, ...) or pass another --data")
        plan_path = out / "plan.json"
        if plan_path.is_file():
            old = json.loads(plan_path.read_text())
            if old.get("format") != FORMAT or "shards" not in old:
                raise ValueError(f"{str(out)!r} holds something that is not a pack of {data!r}; move it away or "
                                 "pass another --out")
            if old != make_plan(source):
                before = {it[0] for shard in old["shards"] for it in shard}
                now = {it.path for it in source.items}
                change = (f"{len(now - before)} files added, {len(before - now)} removed" if now != before
                          else "other paths passed over")
                print(f"data folder {path} changed since it was packed into {out} ({change}); packing it again")
                shutil.rmtree(out)
        if not (out / "store.json").is_file():
            print(f"packing the audio files under {path} into {out} (later runs reuse it while the folder's files "
                  "stay the same)")
            print(pack(source, out, jobs=jobs).summary())
    barrier()
    if len(PackedStore(out)) == 0:  # every rank: a clear error, not an empty epoch
        raise ValueError(f"data folder {data!r}: none of its audio files could be decoded (reasons in "
                         f"{out / 'report.tsv'}); fix or replace them, or pass another --data")
    return out


# --- argument errors, threads, checkpoints, run folders -------------------------------------------------------------

class UsageError(ValueError):
    """A mistake in a command's arguments or in the files it names. The CLIs print it as one line (``error: ...``)
    and exit with status 2, without a traceback; the message names the argument or file and the fix."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def resolve_threads(threads: int) -> int:
    """``threads`` >= 1 as given; 0 (the CLIs' default) is 1 thread per process: measured best on a shared CPU
    (docs/training.md, "Threads"), and what a GPU run needs (the device does the work)."""
    require(isinstance(threads, int) and threads >= 0,
            f"--threads must be >= 1 (or 0 for the default, 1), got {threads!r}")
    return threads or 1


def set_threads(threads: int) -> int:
    """Set torch's intra-op threads (``resolve_threads``); returns the number set. Inter-op threads are set too
    when torch still allows it (only before its first parallel work)."""
    n = resolve_threads(threads)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already set, or parallel work already ran in this process: intra-op is what matters
        pass
    return n


#: the format tag of a pretraining checkpoint: one file holding model, optimizer, position and every RNG state
CHECKPOINT_FORMAT = "augcl-pretrain-v2"


def read_checkpoint(path: Union[str, Path], arg: str = "--checkpoint", for_resume: bool = False) -> dict:
    """The one loader of pretraining checkpoints: a :class:`UsageError` that names the file and what is wrong
    with it (missing, truncated, not a torch file, not a pretraining checkpoint, too old to resume).

    Loaded with ``weights_only=True``: a checkpoint holds tensors and plain values only, so a foreign pickle
    cannot run code. ``for_resume``: also require what resuming needs (optimizer, position, RNG states)."""
    path = Path(path)
    require(path.is_file(), f"{arg} {str(path)!r} does not exist or is not a file; pass the last.pt that "
                            "`python -m trainer.pretrain` wrote (OUT/checkpoints/last.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every way a file can fail to load is reported the same way
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UsageError(f"{arg} {str(path)!r} cannot be read as a torch checkpoint ({type(e).__name__}: "
                         f"{detail[:200]}); it is truncated or not a file written by trainer.pretrain") from None
    missing = [k for k in ("model", "config") if not isinstance(ckpt, dict) or k not in ckpt]
    require(not missing, f"{arg} {str(path)!r} is not an augcl pretraining checkpoint (no {', '.join(missing)}); "
                         "pass the last.pt that `python -m trainer.pretrain` wrote")
    if for_resume:
        require(ckpt.get("format") == CHECKPOINT_FORMAT,
                f"{arg} {str(path)!r} was written by an older augcl (format {ckpt.get('format', 'v1')!r}, RNG "
                f"states in separate files); it can be probed but not resumed: start the run over with --overwrite")
        missing = [k for k in ("step", "optimizer", "epoch", "batch", "rng", "device_type", "store") if k not in ckpt]
        require(not missing, f"{arg} {str(path)!r} lacks {', '.join(missing)}; it cannot be resumed: start the "
                             "run over with --overwrite")
    return ckpt


def numpy_rng_state() -> tuple:
    """``np.random.get_state()`` with its key array as a tensor (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached


def set_numpy_rng_state(state: tuple) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def fsync_dir(folder: Union[str, Path]) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def start_command(threads: int, device: str, out: str) -> tuple[torch.device, Path, float]:
    """A command's start, once its arguments are checked: torch threads set, the clock started, the device
    (a :class:`UsageError` if unusable) and the output folder (created)."""
    set_threads(threads)
    t0 = time.perf_counter()
    dev = run_device(device)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    return dev, folder, t0


def run_cli(fn, argv=None, prog: str = ""):
    """Call ``fn(argv)``; a :class:`UsageError` becomes one line on stderr and exit status 2."""
    import sys

    try:
        return fn(argv)
    except UsageError as e:
        print(f"{prog + ': ' if prog else ''}error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
