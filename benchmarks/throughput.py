"""PairAugmenter throughput on the paper's workload: B clips of 10 s at 16 kHz -> anchor/positive log-mels.

    python -m benchmarks.throughput                        # every preset on the CPU, B=128
    python -m benchmarks.throughput --presets ts+mask --repeats 7 --device cuda

Warm-up excluded, presets interleaved across repetitions, median of the repetitions (clips/s). Writes
docs/benchmarks/throughput.{json,md}. The comparison with other libraries is ``python -m benchmarks.augment``
(issue 5); this file measures augcl alone, so that its figures can be tracked over time.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from augcl import PRESETS, PairAugmenter


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


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(presets, batch: int, seconds: float, repeats: int, device: torch.device, seed: int = 0) -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    wave = torch.randn(batch, int(seconds * 16000), generator=g, device=device) * 0.1
    augs = {name: PairAugmenter.from_preset(name).to(device) for name in presets}
    for aug in augs.values():  # warm-up (allocator, FFT plans, cached banks)
        aug(wave, generator=g)
    times = {name: [] for name in presets}
    for _ in range(repeats):  # interleaved: slow drifts of the machine hit every preset alike
        for name, aug in augs.items():
            sync(device)
            t0 = time.perf_counter()
            aug(wave, generator=g)
            sync(device)
            times[name].append(time.perf_counter() - t0)
    results = {name: {"median_s": statistics.median(ts), "clips_per_s": batch / statistics.median(ts),
                      "min_s": min(ts), "max_s": max(ts)} for name, ts in times.items()}
    return {"batch": batch, "seconds": seconds, "repeats": repeats, "machine": machine_info(device), "results": results}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=[n for n in PRESETS], choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny run (B=4, 2 s, 2 repeats) so the benchmark cannot rot")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.seconds, args.repeats = 4, 2.0, 2
    res = run(args.presets, args.batch, args.seconds, args.repeats, torch.device(args.device))
    m = res["machine"]
    lines = ["# PairAugmenter throughput", "",
             f"`python -m benchmarks.throughput --batch {args.batch} --seconds {args.seconds} --repeats {args.repeats} "
             f"--device {args.device}`", "",
             f"Machine: {m['cpu']}, {m['cores']} threads" + (f", {m['gpu']}" if "gpu" in m else "") +
             f"; torch {m['torch']}. Input ({args.batch}, {int(args.seconds * 16000)}) float32 on {args.device}; "
             "output anchor + positive (B, 1, 64, 96). Median of the repetitions, warm-up excluded.", "",
             "| preset | median (s/batch) | clips/s |", "| --- | --- | --- |"]
    for name, r in res["results"].items():
        lines.append(f"| {name} | {r['median_s']:.3f} | {r['clips_per_s']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        suffix = "" if args.device == "cpu" else f"_{args.device.split(':')[0]}"
        (args.out / f"throughput{suffix}.json").write_text(json.dumps(res, indent=2))
        (args.out / f"throughput{suffix}.md").write_text(text)
    return res


if __name__ == "__main__":
    main()
