"""PairAugmenter throughput on the paper's workload: B clips of 10 s at 16 kHz -> anchor/positive log-mels.

    python -m benchmarks.throughput                        # every preset on the CPU, B=128
    python -m benchmarks.throughput --presets ts+mask --repeats 7 --device cuda
    python -m benchmarks.throughput --presets ts+mask --chunk-sizes 8 16 32 64 128   # choosing CPU_CHUNK

Warm-up excluded, runs interleaved in a random order each round, medians (clips/s). Writes
docs/benchmarks/throughput.{json,md}, or chunks.{json,md} with ``--chunk-sizes``. The comparison with other
libraries is ``python -m benchmarks.augment``; this file measures augcl alone, so that its figures can be tracked
over time.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from augcl import PRESETS, PairAugmenter
from benchmarks.harness import stats, time_calls


def machine_info(device: torch.device) -> dict:
    info = {"cpu": _cpu_model(), "cores": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_text(m: dict) -> str:
    """``Machine: <cpu>, <n> threads[, <gpu>]; torch <version>`` for a results page."""
    return f"Machine: {m['cpu']}, {m['cores']} threads" + (f", {m['gpu']}" if "gpu" in m else "") + f"; torch {m['torch']}"


def save(res: dict, text: str, out: Path, stem: str, device: str, plot=None, caption: str = "") -> None:
    """Write ``<stem>[_<device type>].json`` and ``.md`` (and ``.png`` through ``plot(res, path)``) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    name = stem + ("" if device == "cpu" else f"_{device.split(':')[0]}")
    (out / f"{name}.json").write_text(json.dumps(res, indent=2))
    if plot is not None:
        plot(res, out / f"{name}.png")
        text += f"\n![{caption}]({name}.png)\n"
    (out / f"{name}.md").write_text(text)


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


def grouped_bars(ax, groups, series: dict, labels: bool = False) -> None:
    """Bars of each ``series`` (name -> one value per group) side by side within each group on ``ax``; absent values
    are 0. ``labels``: the value on each bar."""
    width = 0.8 / len(series)
    for k, (name, vals) in enumerate(series.items()):
        bars = ax.bar([i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))], vals, width, label=name)
        if labels:
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(groups)), list(groups))


def run(presets, batch: int, seconds: float, repeats: int, device: torch.device, seed: int = 0,
        chunk_sizes=(None,), lengths: bool = False) -> dict:
    """Seconds per batch of every preset (and chunk size: ``None`` is the device's default), interleaved.
    ``lengths``: also each preset with ``lengths=`` (uniform in [0.5 s, seconds], zeros past them), row ``[lengths]``."""
    g = torch.Generator(device=device).manual_seed(seed)
    T = int(seconds * 16000)
    wave = torch.randn(batch, T, generator=g, device=device) * 0.1
    valid = torch.randint(min(8000, T), T + 1, (batch,), generator=g, device=device)
    short = wave * (torch.arange(T, device=device) < valid[:, None])
    augs = {name if chunk is None else f"{name} [chunk {chunk}]":
            PairAugmenter.from_preset(name, chunk_size=chunk).to(device)
            for name in presets for chunk in chunk_sizes}
    calls = {name: (lambda a=aug: a(wave, generator=g)) for name, aug in augs.items()}
    if lengths:
        calls |= {f"{name} [lengths]": (lambda a=aug: a(short, generator=g, lengths=valid)) for name, aug in augs.items()}
    # warm-up (allocator, FFT plans, cached banks); rounds in a new random order each (drifts of the machine hit all
    # alike), each timed call right after an untimed one of its own (its steady state)
    times = time_calls(calls, repeats, device=device, seed=seed, steady=True)
    results = {name: (st := stats(ts)) | {"clips_per_s": batch / st["median_s"]} for name, ts in times.items()}
    return {"batch": batch, "seconds": seconds, "repeats": repeats, "machine": machine_info(device), "results": results}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=[n for n in PRESETS], choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk-sizes", nargs="+", type=int, default=None,
                   help="measure PairAugmenter(chunk_size=N) for each N instead (writes chunks[_cuda].*)")
    p.add_argument("--lengths", action="store_true",
                   help="also every preset with lengths= (uniform in [0.5 s, --seconds]; writes lengths[_cuda].*)")
    p.add_argument("--quick", action="store_true", help="tiny run (B=4, 2 s, 2 repeats) so the benchmark cannot rot")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.seconds, args.repeats = 4, 2.0, 2
    chunks = tuple(args.chunk_sizes) if args.chunk_sizes else (None,)
    res = run(args.presets, args.batch, args.seconds, args.repeats, torch.device(args.device), chunk_sizes=chunks,
              lengths=args.lengths)
    command = (f"python -m benchmarks.throughput --presets {' '.join(args.presets)} --batch {args.batch} "
               f"--seconds {args.seconds} --repeats {args.repeats} --device {args.device}" +
               (f" --chunk-sizes {' '.join(map(str, chunks))}" if args.chunk_sizes else "") +
               (" --lengths" if args.lengths else ""))
    lines = ["# PairAugmenter throughput" + (" by chunk size" if args.chunk_sizes else ""), "", f"`{command}`", "",
             f"{machine_text(res['machine'])}. Input ({args.batch}, {int(args.seconds * 16000)}) float32 on "
             f"{args.device}; output anchor + positive (B, 1, 64, 96). Median of the repetitions, interleaved in a "
             "new random order each round, each timed call right after an untimed one of its own, warm-up "
             "excluded." + (" Rows `[lengths]`: the same clips zero past random lengths uniform in [0.5 s, "
             f"{args.seconds:g} s], passed as `lengths=`." if args.lengths else ""), "",
             "| preset | median (s/batch) | clips/s |", "| --- | --- | --- |"]
    for name, r in res["results"].items():
        lines.append(f"| {name} | {r['median_s']:.3f} | {r['clips_per_s']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        stem = "chunks" if args.chunk_sizes else "lengths" if args.lengths else "throughput"
        save(res, text, args.out, stem, args.device)
    return res


if __name__ == "__main__":
    main()
