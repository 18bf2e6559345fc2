"""Where a PairAugmenter call spends its time, op by op (torch.profiler): the tool behind the guide's profiles.

    python -m benchmarks.profile                              # ts+mask, B=128 x 10 s, CPU, default backend
    python -m benchmarks.profile --preset all --backend torch --chunk-size 128 --device cuda

Prints the ops sorted by their own time, totals over ``--calls`` calls after two warm-up calls, and the wall time
per call measured without the profiler. ``benchmarks.augment``'s stage breakdown says which block is slow; this
says which op inside it.
"""
from __future__ import annotations

import argparse
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

from augcl import PRESETS, PairAugmenter
from benchmarks.harness import sync, time_one


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ts+mask", choices=sorted(PRESETS))
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "kernels"])
    p.add_argument("--chunk-size", type=int, default=None, help="PairAugmenter(chunk_size=); default: the device's")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--rows", type=int, default=25, help="ops to list")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="B=4, 2-s clips, 1 call")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.seconds, args.calls = 4, 2.0, 1
    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    wave = (torch.randn(args.batch, int(args.seconds * 16000), generator=g, device=device) * 0.1).clamp(-1, 1)
    aug = PairAugmenter.from_preset(args.preset, backend=args.backend, chunk_size=args.chunk_size).to(device)
    walls = time_one(lambda: aug(wave, generator=g), args.calls, warmup=2, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(args.calls):
            aug(wave, generator=g)
        sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    text = (f"{args.preset} [{args.backend}], B={args.batch} x {args.seconds} s on {device}: "
            f"{statistics.median(walls) * 1e3:.1f} ms per call (median of {args.calls}, no profiler); "
            f"profiler totals over {args.calls} calls:\n" +
            prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=40))
    print(text)
    return text


if __name__ == "__main__":
    main()
