"""``python -m trainer.pack SRC OUT``: decode audio once into int16 memory-mapped shards plus an index.

Layout of a packed store ``OUT/``::

    plan.json            the source's files cut into shards; written first, so a rerun knows the work
    shards/00000.npy     int16 samples of the shard's clips, end to end (np.load(..., mmap_mode="r"))
    shards/00000.json    the shard's entries [path, offset, length, labels] and its failures [path, reason]
    index.npz            all entries: shard, offset, length, label_ptr/label_ids (CSR), rms and peak level -- last
    paths.json           the source path of each entry, in index order: a JSON list, so any file name survives
    groups.json          each entry's group (source recording), likewise; only when the source names groups
    report.tsv           every path skipped, with the reason (csv's excel-tab dialect: odd names are quoted), and
                         each clip packed without a label in a single-label source
    store.json           format, sample rate, classes, counts; its presence marks the store complete

Decoding runs in worker processes, one shard per task; a worker dies with the packer, even after ``kill -9``.
Each shard's ``.npy`` and then its ``.json`` are written to a temporary name and renamed (with the mode the umask
gives a new file), so a finished shard is complete and an interrupted one is invisible; a second run with the same
SRC and OUT skips finished shards. An unreadable, empty or non-finite file is skipped, listed in ``report.tsv``
and counted; so is every path the source passed over (missing entries, broken or looping links, folders it could
not list: :func:`augcl.audiofiles.scan_audio_files`); none of it stops the run. A clip without a label in a
single-label source is packed, listed and counted in a warning. Samples are stored as ``round(x * 32768)`` clipped
to int16, so 16-bit sources round-trip exactly; a float clip that exceeds full scale is scaled down to peak 1.
Stores packed before paths.json had ``paths.txt`` and ``groups.txt`` (one name per line); they are still read.

Digital silence at a clip's two ends (samples that are exactly zero in int16) is trimmed by default
(``--keep-silence`` keeps it): collections pad short sounds with it (ESC-50 pads most of its 5-s clips), and a
store's lengths are what the trainer treats as real signal. A file of digital silence alone is skipped.
"""
from __future__ import annotations

import csv
import ctypes
import io
import json
import logging
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from augcl.audiofiles import AUDIO_EXTENSIONS
from augcl.banks import load_audio, trim_digital_silence

from . import cli
from .render import render_uri
from .sources import LAYOUTS, Source, open_source

log = logging.getLogger(__name__)

FORMAT = "augcl-packed-v1"
#: report.tsv's reason for a clip packed without a label in a single-label source
UNLABELED = "packed, but has no label in a single-label source: a probe cannot use it"
INT16_SCALE = 32768.0


@dataclass
class PackResult:
    out: Path
    complete: bool
    n_files: int          # files in the source (and missing entries)
    n_packed: int
    n_skipped: int
    n_shards_done: int
    n_shards: int
    seconds: float
    files_this_run: int = 0  # files decoded by this call (a resumed run skips finished shards)
    n_unlabeled: int = 0  # clips packed without a label in a single-label source (listed in report.tsv)

    @property
    def files_per_s(self) -> float:
        return self.files_this_run / max(self.seconds, 1e-9)

    def summary(self) -> str:
        state = "complete" if self.complete else f"partial ({self.n_shards_done}/{self.n_shards} shards)"
        unlabeled = (f"; warning: {self.n_unlabeled} clips packed without a label in a single-label source (listed "
                     "there too): label them, or drop them from the metadata, before a probe uses this store"
                     if self.n_unlabeled else "")
        return (f"{self.out}: {state}; {self.n_packed} clips packed, {self.n_skipped} skipped "
                f"(listed in {self.out / 'report.tsv'}), {self.seconds:.1f} s{unlabeled}")


def decode(path: str, sample_rate: int) -> np.ndarray:
    """A file (or built-in clip URI) as mono float32 at ``sample_rate``; ValueError if empty or non-finite."""
    x = render_uri(path, sample_rate) if path.startswith("builtin:") else load_audio(path, sample_rate)
    if x.size == 0:
        raise ValueError("no samples")
    if not np.isfinite(x).all():
        raise ValueError("NaN or Inf samples")
    return x


def to_int16(x: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(x)))
    if peak > 1.0:
        x = x / peak
    return np.clip(np.round(x * INT16_SCALE), -32768, 32767).astype(np.int16)


def clip_levels(x: np.ndarray) -> list[float]:
    """``[rms, peak]`` of an int16 clip on the float scale (full scale 1): what level normalisation divides by."""
    f = x.astype(np.float32) / INT16_SCALE
    return [float(np.sqrt(np.dot(f, f) / max(f.size, 1))), float(np.max(np.abs(f), initial=0.0))]


_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``); elsewhere set
    to 0o077 and back under a lock, so a file another thread creates meanwhile is private, never world-writable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """``write(f)`` into a temporary file beside ``path``, fsync, rename: ``path`` is whole or absent, with the
    mode a new file gets (0o666 less the umask; ``mkstemp`` alone would leave it 0o600, unreadable to others)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON at ``path`` (folders made), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def write_names(path: Path, names: Sequence[str]) -> None:
    """``names`` as a JSON list, one per line, atomically: any file name survives (line breaks, tabs, and bytes
    that are not UTF-8, which Python holds as surrogates and JSON escapes as ``\\udcXX``)."""
    atomic_write(path, lambda f: f.write(json.dumps(list(names), indent=0).encode()))


def tsv(rows: Sequence[Sequence[str]]) -> bytes:
    """Rows as tab-separated text (csv's ``excel-tab`` dialect: a field holding a tab, line break or quote is
    quoted, lines end in CRLF); names that are not UTF-8 are written as their bytes on disk."""
    buf = io.StringIO()
    csv.writer(buf, dialect="excel-tab").writerows(rows)
    return buf.getvalue().encode("utf-8", "surrogateescape")


def _pack_shard(shard_dir: str, shard: int, items: Sequence[list], sample_rate: int, trim_silence: bool = True
                ) -> tuple[int, int, int]:
    """Decode one shard's files and write it (runs in a worker). Returns (shard, packed, skipped).

    ``items``: ``[path, labels]`` or ``[path, labels, group]``; entries keep the group as a fifth field."""
    clips, entries, failed, offset, levels = [], [], [], 0, []
    for path, labels, *group in items:
        try:
            x = to_int16(decode(path, sample_rate))
            if trim_silence:
                x = trim_digital_silence(x)
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the run; it is reported
            failed.append([path, f"{type(e).__name__}: {e}".replace("\t", " ").replace("\n", " ")])
            continue
        clips.append(x)
        entries.append([path, offset, int(x.size), list(labels), *group])
        levels.append(clip_levels(x))
        offset += x.size
    data = np.concatenate(clips) if clips else np.zeros(0, np.int16)
    base = Path(shard_dir) / f"{shard:05d}"
    atomic_write(base.with_suffix(".npy"), lambda f: np.save(f, data))
    write_json(base.with_suffix(".json"), {"entries": entries, "failed": failed, "levels": levels})
    return shard, len(entries), len(failed)


def make_plan(source: Source, sample_rate: int = 16000, files_per_shard: int = 256, trim_silence: bool = True
              ) -> dict:
    """What :func:`pack` writes to ``plan.json`` for ``source`` and these settings (the defaults are pack's): the
    files cut into shards, and the entries passed over. Two equal plans pack the same store."""
    items = [[it.path, list(it.labels)] + ([it.group] if it.group else []) for it in source.items]
    return {
        "format": FORMAT,
        "sample_rate": sample_rate,
        "trim_silence": trim_silence,
        "classes": list(source.classes),
        "multi_label": source.multi_label,
        "missing": [list(m) for m in source.missing],
        "shards": [items[i:i + files_per_shard] for i in range(0, len(items), files_per_shard)],
    }


def pack(source: Source, out: Union[str, Path], sample_rate: int = 16000, files_per_shard: int = 256,
         jobs: Optional[int] = None, progress: bool = True, max_shards: Optional[int] = None,
         desc: str = "packing", trim_silence: bool = True) -> PackResult:
    """Decode ``source`` into a packed store at ``out``; resumes a previous run on the same source.

    ``jobs``: decoding processes (default: all cores; 1 decodes in this process). ``max_shards`` stops after
    that many new shards (an interrupt on purpose, for tests and for packing in slices). ``trim_silence``:
    drop the digital silence at each clip's ends (module docstring).
    """
    if files_per_shard < 1:
        raise ValueError(f"files_per_shard must be >= 1, got {files_per_shard}")
    out = Path(out)
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    plan = make_plan(source, sample_rate, files_per_shard, trim_silence)
    plan_path = out / "plan.json"
    if plan_path.is_file():
        old = json.loads(plan_path.read_text())
        if old != plan:
            raise ValueError(f"out {str(out)!r} already holds a pack of a different source or settings; "
                             "pass a new OUT, or delete it to start over")
    else:
        write_json(plan_path, plan)
    for stale in shard_dir.glob("*.tmp"):  # left by a run that was killed mid-write
        stale.unlink()

    t0 = time.perf_counter()
    n_shards = len(plan["shards"])
    finished = {i for i in range(n_shards) if (shard_dir / f"{i:05d}.json").is_file()}
    todo = [i for i in range(n_shards) if i not in finished][:max_shards]
    new_files = sum(len(plan["shards"][i]) for i in todo)
    done_files = sum(len(plan["shards"][i]) for i in finished)
    bar = tqdm(total=len(source.items), initial=done_files, desc=desc, unit="file", disable=not progress,
               dynamic_ncols=True)
    jobs = min(jobs or os.cpu_count() or 1, max(len(todo), 1))
    try:
        if jobs == 1:
            for i in todo:
                _pack_shard(str(shard_dir), i, plan["shards"][i], sample_rate, trim_silence)
                bar.update(len(plan["shards"][i]))
        else:
            _run_parallel(todo, plan, shard_dir, sample_rate, jobs, bar, trim_silence)
    finally:
        bar.close()
    result = finalize(out, time.perf_counter() - t0)
    result.files_this_run = new_files
    return result


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int, use_prctl: bool = True, poll_s: float = 1.0) -> str:
    """Make this process (a decoding worker) die as soon as ``parent_pid``, its parent, dies, by SIGKILL too, which
    no cleanup in the parent survives. On Linux the kernel sends SIGKILL (``prctl(PR_SET_PDEATHSIG)``); elsewhere,
    or with ``use_prctl=False``, a daemon thread polls ``os.getppid()`` every ``poll_s`` seconds. Returns the
    mechanism: ``"prctl"`` or ``"watchdog"``.

    The kernel signal follows the thread that forked this process: :func:`pack` forks its fork-context workers
    from the calling thread (ProcessPoolExecutor starts them all in ``submit``), which outlives the pool."""
    how = "watchdog"
    if use_prctl and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0),
                          ctypes.c_ulong(0)) == 0:
                how = "prctl"
        except (OSError, AttributeError):  # no libc prctl: the watchdog below does the same, a poll later
            pass
    if how == "watchdog":
        threading.Thread(target=_watch_parent, args=(parent_pid, poll_s), name="die-with-parent", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)
    return how


def _watch_parent(parent_pid: int, poll_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os.kill(os.getpid(), signal.SIGKILL)


def _run_parallel(todo, plan, shard_dir, sample_rate, jobs, bar, trim_silence) -> None:
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    from scipy.signal import resample_poly  # noqa: F401 - imported once here, not again in each forked worker
    # workers die with this process, even by kill -9: orphans would decode on and hold the store's files
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        pending = {pool.submit(_pack_shard, str(shard_dir), i, plan["shards"][i], sample_rate, trim_silence): i for i in todo}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = pending.pop(fut)
                    fut.result()  # a worker crash (not a bad file: those are caught) is an error
                    bar.update(len(plan["shards"][i]))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def finalize(out: Union[str, Path], seconds: float = 0.0) -> PackResult:
    """Write the index, report and ``store.json`` if every shard is finished; report progress otherwise."""
    out = Path(out)
    plan = json.loads((out / "plan.json").read_text())
    shard_dir = out / "shards"
    n_shards = len(plan["shards"])
    done = [i for i in range(n_shards) if (shard_dir / f"{i:05d}.json").is_file()]
    n_files = sum(len(s) for s in plan["shards"]) + len(plan["missing"])
    shards = [json.loads((shard_dir / f"{i:05d}.json").read_text()) for i in done]
    n_packed = sum(len(s["entries"]) for s in shards)
    failed = [tuple(m) for m in plan["missing"]] + [tuple(f) for s in shards for f in s["failed"]]
    # a single-label task has a class for every clip; a multi-label clip without labels is a clip without events
    single_label = bool(plan["classes"]) and not plan["multi_label"]
    unlabeled = [(e[0], UNLABELED) for s in shards for e in s["entries"] if single_label and not e[3]]
    complete = len(done) == n_shards
    if complete:
        shard_of, offset, length, label_ptr, label_ids, paths, groups = [], [], [], [0], [], [], []
        for i, s in zip(done, shards, strict=True):
            for path, off, n, labels, *group in s["entries"]:
                groups.append(group[0] if group else "")
                shard_of.append(i)
                offset.append(off)
                length.append(n)
                label_ids.extend(labels)
                label_ptr.append(len(label_ids))
                paths.append(path)
        index = dict(shard=np.asarray(shard_of, np.int32), offset=np.asarray(offset, np.int64),
                     length=np.asarray(length, np.int64), label_ptr=np.asarray(label_ptr, np.int64),
                     label_ids=np.asarray(label_ids, np.int32))
        if all("levels" in s for s in shards):  # shards packed before levels were recorded have none
            levels = np.asarray([lv for s in shards for lv in s["levels"]], np.float64).reshape(-1, 2)
            index.update(rms=levels[:, 0], peak=levels[:, 1])
        atomic_write(out / "index.npz", lambda f: np.savez(f, **index))
        write_names(out / "paths.json", paths)
        if any(groups):
            write_names(out / "groups.json", groups)
        for stale in ("paths.txt", "groups.txt") + (() if any(groups) else ("groups.json",)):
            (out / stale).unlink(missing_ok=True)  # an older packer's, if it began this store
        atomic_write(out / "report.tsv", lambda f: f.write(tsv([("path", "reason"), *failed, *unlabeled])))
        write_json(out / "store.json", {
            "format": FORMAT, "sample_rate": plan["sample_rate"], "classes": plan["classes"],
            "multi_label": plan["multi_label"], "n_clips": n_packed, "n_skipped": len(failed),
            "n_samples": int(np.sum(index["length"])), "n_shards": n_shards,
        })
    return PackResult(out, complete, n_files, n_packed, len(failed), len(done), n_shards, seconds,
                      n_unlabeled=len(unlabeled))


@dataclass(frozen=True)
class PackConfig:
    """``python -m trainer.pack``'s arguments (``SRC OUT`` positional)."""

    src: str
    out: str
    labels: str = "auto"
    audio_dir: Optional[str] = None
    class_index: Optional[str] = None
    sample_rate: int = 16000
    files_per_shard: int = 256
    jobs: Optional[int] = None
    quiet: bool = False
    keep_silence: bool = False


HELP = {
    "src": "a folder of audio files (recursive), a CSV manifest, a DESED TSV or an AudioSet CSV",
    "out": "the packed store to write (a folder); rerun the same command to resume",
    "labels": "layout of SRC: none (unlabeled folder), folders (one folder per class), csv (path,labels), desed, "
              "audioset; auto guesses from SRC (default)",
    "audio_dir": "folder holding the clips named by a DESED TSV / AudioSet CSV (manifests: root for relative paths)",
    "class_index": "AudioSet class_labels_indices.csv (class names and order)",
    "jobs": "decoding processes (default: all cores)",
    "quiet": "no progress bar",
    "keep_silence": "keep the digital silence (exact zeros) at clips' ends; trimmed by default",
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = cli.parser(PackConfig, "python -m trainer.pack", __doc__.split("\n\n")[0], choices={"labels": LAYOUTS},
                   help=HELP, switches={"quiet": "store_true", "keep_silence": "store_true"})
    args, _ = cli.parse(p, PackConfig, argv)
    if args.sample_rate < 1000:
        p.error(f"--sample-rate must be >= 1000 (Hz; the trainer's is 16000), got {args.sample_rate}")
    if args.files_per_shard < 1:
        p.error(f"--files-per-shard must be >= 1, got {args.files_per_shard}")
    if args.jobs is not None and args.jobs < 1:
        p.error(f"--jobs must be >= 1 (decoding processes; leave it out for all cores), got {args.jobs}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        source = open_source(args.src, args.labels, args.audio_dir, args.class_index)
        if not source.items:
            why = f" ({len(source.missing)} passed over, e.g. {source.missing[0][0]!r}: {source.missing[0][1]})" \
                if source.missing else ""
            raise ValueError(f"src {args.src!r} names no audio files that exist{why}; "
                             f"audio files are named {', '.join(AUDIO_EXTENSIONS)}")
        res = pack(source, args.out, sample_rate=args.sample_rate, files_per_shard=args.files_per_shard,
                   jobs=args.jobs, progress=not args.quiet, trim_silence=not args.keep_silence)
    except ValueError as e:
        p.error(str(e))
    except KeyboardInterrupt:
        print("interrupted; finished shards are kept. Rerun the same command to resume.", file=sys.stderr)
        return 130
    print(res.summary())
    if res.complete:
        print(f"{res.files_this_run} files decoded in this run: {res.files_per_s:.1f} files/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
