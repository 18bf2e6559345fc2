"""Pretraining throughput by torch CPU thread count, on an idle CPU and beside a busy process: ``--threads``' default.

    python -m benchmarks.threads                          # small CNN, B=64 (the ablation's budget), threads 1 and 2
    python -m benchmarks.threads --encoder efficientnet_b0 --batch 16 --threads 1 2 4

Whole steps of ``trainer.pretrain.train_step`` (data, augmentation, forward/backward, Adam) in one process, the
thread counts interleaved round by round (``torch.set_num_threads`` between rounds) so that a change in the
machine's load hits every count alike. Two conditions: ``idle`` (no load from this command) and ``busy``: one
other process runs float32 matrix products on one thread the whole time (another user's job on a shared
machine). Reports clips/s (median over rounds) and each count's ratio to 1 thread.
Writes docs/benchmarks/threads.{json,md,png}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from benchmarks import report
from benchmarks.harness import time_settings
from trainer.model import ENCODERS
from trainer.pretrain import PretrainConfig, build, train_step

BUSY = ("import os, torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\n"
        "while True:\n    a = torch.tanh(a @ a * 1e-3)\n")


def _steps(state, cfg, device, steps: int) -> None:
    """``steps`` whole training steps (the loss read back each step, as the trainer logs it)."""
    _, loader, augment, model, optimizer, generator, it = state
    for _ in range(steps):
        try:
            batch = next(it[0])
        except StopIteration:
            it[0] = iter(loader)
            batch = next(it[0])
        train_step(model, augment, optimizer, batch, generator, cfg, device)["loss"].item()


def run(threads, encoder: str, batch: int, steps: int, rounds: int, work: Path, builtin_clips: int) -> dict:
    device = torch.device("cpu")
    cfg = PretrainConfig(preset="ts+mask", batch_size=batch, out=str(work), device="cpu", encoder=encoder,
                         builtin_clips=builtin_clips, clip_seconds=10.0)
    dataset, _, loader, augment, model, optimizer, generator = build(cfg, device, rank=0)
    state = (dataset, loader, augment, model, optimizer, generator, [iter(loader)])
    results = {}
    for condition in ("idle", "busy"):
        busy = None
        if condition == "busy":
            busy = subprocess.Popen([sys.executable, "-c", BUSY], env=dict(os.environ, OMP_NUM_THREADS="1"))
            time.sleep(2.0)  # let it start
        try:
            # a warm-up round at the most threads, then the counts in turn, round by round
            times = time_settings({"steps": lambda: _steps(state, cfg, device, steps)},
                                  {n: partial(torch.set_num_threads, n) for n in threads}, rounds, order="fixed")
            rates = {n: [steps * batch / t for t in times[n]["steps"]] for n in threads}
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        med = {n: statistics.median(r) for n, r in rates.items()}
        results[condition] = {str(n): {"clips_per_s": med[n], "ratio_to_1": med[n] / med[threads[0]],
                                       "rounds": rates[n]} for n in threads}
    return {"encoder": encoder, "batch": batch, "steps": steps, "rounds": rounds, "threads": list(threads),
            "load_before": os.getloadavg()[0], "machine": report.machine_info(device), "results": results}


def write(res: dict, out: Path, command: str) -> str:
    lines = ["# Pretraining throughput by CPU thread count (`--threads`)", "", f"`{command}`", "",
             (f"{report.machine_text(res['machine'])}. {res['encoder']}, B={res['batch']}, ts+mask, built-in store; "
              f"{res['steps']} whole steps per round, {res['rounds']} rounds, thread counts interleaved; median "
              f"clips/s. 1-min load average before the run: {res['load_before']:.2f}. busy: one other process "
              "multiplies matrices on one thread throughout."), ""]
    rows = [{"condition": condition, "threads": n, "clips/s": r["clips_per_s"], "ratio to 1 thread": r["ratio_to_1"]}
            for condition, by_count in res["results"].items() for n, r in by_count.items()]
    lines += report.table(rows, formats={"clips/s": "{:.1f}", "ratio to 1 thread": "{:.2f}"})
    return report.write(res, "\n".join(lines) + "\n", out, "threads", _plot, "clips/s by thread count")


def _plot(res: dict, png: Path) -> None:
    report.bar_chart(png, list(res["results"]), {f"{n} thread{'s' if n > 1 else ''}": [
        res["results"][c][str(n)]["clips_per_s"] for c in res["results"]] for n in res["threads"]},
        ylabel="clips/s", title=f"pretraining, {res['encoder']}, B={res['batch']}, CPU", figsize=(6, 3.2))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--encoder", choices=ENCODERS, default="small")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="whole steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--builtin-clips", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    p.add_argument("--quick", action="store_true", help="B=4, 1 step x 1 round, 16 clips; writes nothing")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.rounds, args.builtin_clips = 4, 1, 1, 16
    threads = sorted(set(args.threads))
    with tempfile.TemporaryDirectory(prefix="augcl-bench-threads-") as work:
        res = run(threads, args.encoder, args.batch, args.steps, args.rounds, Path(work), args.builtin_clips)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    if args.quick:
        print({c: {n: round(r["clips_per_s"], 1) for n, r in rows.items()} for c, rows in res["results"].items()})
    else:
        print(write(res, args.out, f"python -m benchmarks.threads {argv_text}".strip()))
    return res


if __name__ == "__main__":
    main()
