"""Data-layer throughput: packing (files/s) and reading random 10-s clips from a packed store (clips/s).

    python -m benchmarks.data            # 256 built-in clips; writes docs/benchmarks/data.{json,md}
    python -m benchmarks.data --quick    # tiny, checks that the benchmark runs (writes nothing)

Pack: the same 10-s clips as FLAC at 44.1 kHz (decode + resample to 16 kHz, the usual case for downloaded
audio) and as 16-bit WAV at 16 kHz (decode only), ``python -m trainer.pack``'s code path with all cores.
Read: a store of ``4 x n`` clips (the WAV files packed four times over, 328 MB at n=256), page cache warmed by
one pass, then random batches of 128 through :func:`trainer.data.make_loader` and
:class:`trainer.data.DistributedBatchSampler`, as the trainer reads them; median clips/s over the repetitions.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import soundfile as sf
from scipy.signal import resample_poly

from benchmarks import report
from benchmarks.harness import time_one
from trainer import builtin
from trainer.data import DistributedBatchSampler, PackedClips, make_loader
from trainer.pack import pack
from trainer.sources import Item, Source, audio_folder


def write_files(n: int, root: Path) -> tuple[Path, Path]:
    """The first n built-in unlabeled clips as FLAC at 44.1 kHz and as WAV at 16 kHz."""
    flac, wav = root / "flac44k", root / "wav16k"
    flac.mkdir(parents=True)
    wav.mkdir(parents=True)
    for i in range(n):
        x = builtin.render_clip(0, "unlabeled", i)
        sf.write(str(wav / f"{i:05d}.wav"), x, 16000, subtype="PCM_16")
        sf.write(str(flac / f"{i:05d}.flac"), resample_poly(x, 441, 160).clip(-1, 1), 44100, subtype="PCM_16")
    return flac, wav


def bench_pack(src: Path, out: Path, jobs: int) -> dict:
    source = audio_folder(src)
    res = pack(source, out, jobs=jobs, progress=False, files_per_shard=32)
    assert res.complete and res.n_packed == len(source), res.summary()
    return {"files": len(source), "seconds": res.seconds, "files_per_s": res.files_per_s, "jobs": jobs}


def bench_read(store: Path, batch: int, batches: int, repeats: int, num_workers: int) -> dict:
    ds = PackedClips(store, clip_seconds=10.0, seed=0)
    sampler = DistributedBatchSampler(len(ds), batch_size=batch, seed=0)
    loader = make_loader(ds, sampler, num_workers=num_workers)
    for i in range(len(ds)):  # warm the page cache: one pass over every clip
        ds.store.clip(i).sum()
    epoch, counts = 0, []

    def read() -> None:  # ``batches`` batches or a few clips more, epoch after epoch of the sampler, as the trainer reads
        nonlocal epoch
        n = 0
        while n < batches * batch:
            epoch += 1
            sampler.set_epoch(epoch)
            ds.set_epoch(epoch)
            for clips, *_ in loader:
                n += clips.shape[0]
                if n >= batches * batch:
                    break
        counts.append(n)

    times = time_one(read, repeats, warmup=0)  # the warm-up is the pass over the page cache above
    rates = [n / t for n, t in zip(counts, times)]
    return {"clips": len(ds), "batch": batch, "num_workers": num_workers, "clips_per_s": statistics.median(rates),
            "min_clips_per_s": min(rates), "max_clips_per_s": max(rates), "repeats": repeats}


def run(n: int, repeats: int, batches: int, jobs: int, workdir: Path) -> dict:
    flac, wav = write_files(n, workdir)
    packs = {"flac 44.1 kHz": bench_pack(flac, workdir / "p-flac", jobs),
             "wav 16 kHz": bench_pack(wav, workdir / "p-wav", jobs)}
    files = audio_folder(wav).items
    many = Source(tuple(Item(it.path) for _ in range(4) for it in files))
    pack(many, workdir / "store", jobs=jobs, progress=False, files_per_shard=64)
    batch = min(128, len(many))
    reads = {f"{w} workers": bench_read(workdir / "store", batch, batches, repeats, w) for w in (0, 2)}
    return {"n_files": n, "machine": report.machine_info("cpu"), "pack": packs, "read": reads}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=256, help="distinct 10-s clips")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", type=int, default=40, help="batches of 128 per repetition")
    p.add_argument("--jobs", type=int, default=os.cpu_count())
    p.add_argument("--quick", action="store_true", help="tiny run that checks the benchmark works; writes nothing")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.batches = 8, 1, 2
    workdir = Path(tempfile.mkdtemp(prefix="augcl-bench-data-"))
    try:
        res = run(args.n, args.repeats, args.batches, args.jobs, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    cmd = "python -m benchmarks.data" + ("" if args.n == 256 else f" --n {args.n}")
    text = page(res, cmd)
    print(text)
    if not args.quick:
        report.write(res, text, args.out, "data")
    return res


def page(res: dict, command: str) -> str:
    """The results page of :func:`run`'s ``res``, run by ``command``."""
    m = res["machine"]
    lines = ["# Data-layer throughput", "", f"`{command}`", "",
             f"Machine: {m['cpu']}, {os.cpu_count()} cores; torch {m['torch']}.", "",
             "## Packing (`python -m trainer.pack`), 10-s clips", ""]
    lines += report.table([{"source": name, "files": r["files"], "decoding processes": r["jobs"],
                            "seconds": r["seconds"], "files/s": r["files_per_s"]} for name, r in res["pack"].items()],
                          formats={"seconds": "{:.1f}", "files/s": "{:.1f}"})
    batch = next(iter(res["read"].values()))["batch"]
    lines += ["", f"## Reading random 10-s clips (int16), batches of {batch}, page cache warm", ""]
    lines += report.table([{"DataLoader": name, "store clips": r["clips"], "clips/s (median)": r["clips_per_s"],
                            "min": r["min_clips_per_s"], "max": r["max_clips_per_s"]}
                           for name, r in res["read"].items()],
                          formats=dict.fromkeys(("clips/s (median)", "min", "max"), "{:.0f}"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
