"""PairAugmenter throughput on the paper's workload: B clips of 10 s at 16 kHz -> anchor/positive log-mels.

    python -m benchmarks.throughput                        # every preset on the CPU, B=128
    python -m benchmarks.throughput --presets ts+mask --repeats 7 --device cuda
    python -m benchmarks.throughput --presets ts+mask --chunk-sizes 8 16 32 64 128   # choosing CPU_CHUNK
    python -m benchmarks.throughput --presets all --vocoder-chunks 1024 1536 2048   # choosing VOCODER_CHUNK_FRAMES

Warm-up excluded, runs interleaved in a random order each round, medians (clips/s). Writes
docs/benchmarks/throughput.{json,md}, or chunks.{json,md} with ``--chunk-sizes`` (vocoder_chunks.{json,md} with
``--vocoder-chunks``: the CPU vocoder's frames a chunk, ``augcl.kernels.VOCODER_CHUNK_FRAMES``). The comparison with other
libraries is ``python -m benchmarks.augment``; this file measures augcl alone, so that its figures can be tracked
over time.
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch

from augcl import PRESETS, PairAugmenter, kernels
from benchmarks import report
from benchmarks.harness import stats, time_calls


def workload_args(p: argparse.ArgumentParser, quick_help: str) -> None:
    """The options every batch benchmark shares: ``--batch``, ``--seconds``, ``--repeats``, ``--device``, ``--threads``,
    ``--quick`` (help ``quick_help``) and ``--out``; :func:`apply_workload_args` acts on them once parsed."""
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's); recorded")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))


def apply_workload_args(args: argparse.Namespace) -> None:
    """Set ``--threads``; ``--quick`` shrinks the workload to B=4 clips of 2 s, one repetition."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batch, args.seconds, args.repeats = 4, 2.0, 1


def run(presets, batch: int, seconds: float, repeats: int, device: torch.device, seed: int = 0,
        chunk_sizes=(None,), lengths: bool = False, vocoder_chunks=(None,)) -> dict:
    """Seconds per batch of every preset (and chunk size: ``None`` is the device's default), interleaved.
    ``lengths``: also each preset with ``lengths=`` (uniform in [0.5 s, seconds], zeros past them), row ``[lengths]``.
    ``vocoder_chunks``: each preset with ``augcl.kernels.VOCODER_CHUNK_FRAMES`` set to each value during its calls
    (``None``: as it is), row ``[vocoder chunk N]``."""
    g = torch.Generator(device=device).manual_seed(seed)
    T = int(seconds * 16000)
    wave = torch.randn(batch, T, generator=g, device=device) * 0.1
    valid = torch.randint(min(8000, T), T + 1, (batch,), generator=g, device=device)
    short = wave * (torch.arange(T, device=device) < valid[:, None])
    augs = {name if chunk is None else f"{name} [chunk {chunk}]":
            PairAugmenter.from_preset(name, chunk_size=chunk).to(device)
            for name in presets for chunk in chunk_sizes}
    calls = {name: (lambda a=aug: a(wave, generator=g)) for name, aug in augs.items()}
    if vocoder_chunks != (None,):
        calls = {f"{name} [vocoder chunk {n}]": partial(_with_vocoder_chunk, n, call)
                 for name, call in calls.items() for n in vocoder_chunks}
    if lengths:
        calls |= {f"{name} [lengths]": (lambda a=aug: a(short, generator=g, lengths=valid)) for name, aug in augs.items()}
    # warm-up (allocator, FFT plans, cached banks); rounds in a new random order each (drifts of the machine hit all
    # alike), each timed call right after an untimed one of its own (its steady state)
    times = time_calls(calls, repeats, device=device, seed=seed, steady=True)
    results = {name: (st := stats(ts)) | {"clips_per_s": batch / st["median_s"]} for name, ts in times.items()}
    return {"batch": batch, "seconds": seconds, "repeats": repeats, "machine": report.machine_info(device),
            "results": results}


def _with_vocoder_chunk(frames: int, call):
    """``call()`` with the CPU vocoder's chunk set to ``frames`` frames, put back after."""
    before = kernels.VOCODER_CHUNK_FRAMES
    kernels.VOCODER_CHUNK_FRAMES = frames
    try:
        return call()
    finally:
        kernels.VOCODER_CHUNK_FRAMES = before


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=[n for n in PRESETS], choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk-sizes", nargs="+", type=int, default=None,
                   help="measure PairAugmenter(chunk_size=N) for each N instead (writes chunks[_cuda].*)")
    p.add_argument("--vocoder-chunks", nargs="+", type=int, default=None,
                   help="measure augcl.kernels.VOCODER_CHUNK_FRAMES = N (the CPU vocoder's frames a chunk) for each N "
                        "instead (writes vocoder_chunks[_cuda].*)")
    p.add_argument("--lengths", action="store_true",
                   help="also every preset with lengths= (uniform in [0.5 s, --seconds]; writes lengths[_cuda].*)")
    p.add_argument("--quick", action="store_true", help="tiny run (B=4, 2 s, 2 repeats) so the benchmark cannot rot")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.seconds, args.repeats = 4, 2.0, 2
    chunks = tuple(args.chunk_sizes) if args.chunk_sizes else (None,)
    vocoder = tuple(args.vocoder_chunks) if args.vocoder_chunks else (None,)
    res = run(args.presets, args.batch, args.seconds, args.repeats, torch.device(args.device), chunk_sizes=chunks,
              lengths=args.lengths, vocoder_chunks=vocoder)
    command = (f"python -m benchmarks.throughput --presets {' '.join(args.presets)} --batch {args.batch} "
               f"--seconds {args.seconds} --repeats {args.repeats} --device {args.device}" +
               (f" --chunk-sizes {' '.join(map(str, chunks))}" if args.chunk_sizes else "") +
               (f" --vocoder-chunks {' '.join(map(str, vocoder))}" if args.vocoder_chunks else "") +
               (" --lengths" if args.lengths else ""))
    text = page(res, command, args.device, chunks=bool(args.chunk_sizes), lengths=args.lengths,
                vocoder=bool(args.vocoder_chunks))
    print(text)
    if not args.quick:
        stem = ("vocoder_chunks" if args.vocoder_chunks else "chunks" if args.chunk_sizes else "lengths" if args.lengths
                else "throughput")
        report.write(res, text, args.out, report.page_name(stem, args.device))
    return res


def page(res: dict, command: str, device: str, chunks: bool = False, lengths: bool = False,
         vocoder: bool = False) -> str:
    """The results page of :func:`run`'s ``res``, run by ``command``."""
    T = int(res["seconds"] * 16000)
    title = " by chunk size" if chunks else " by the CPU vocoder's chunk (frames)" if vocoder else ""
    lines = ["# PairAugmenter throughput" + title, "", f"`{command}`", "",
             f"{report.machine_text(res['machine'])}. Input ({res['batch']}, {T}) float32 on "
             f"{device}; output anchor + positive (B, 1, 64, 96). Median of the repetitions, interleaved in a "
             "new random order each round, each timed call right after an untimed one of its own, warm-up "
             "excluded." + (" Rows `[lengths]`: the same clips zero past random lengths uniform in [0.5 s, "
                            f"{res['seconds']:g} s], passed as `lengths=`." if lengths else ""), ""]
    rows = [{"preset": name, "median (s/batch)": r["median_s"], "clips/s": r["clips_per_s"]}
            for name, r in res["results"].items()]
    lines += report.table(rows, formats={"median (s/batch)": "{:.3f}", "clips/s": "{:.1f}"})
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
