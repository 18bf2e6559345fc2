"""One pretraining step split into data, augmentation and forward/backward: augmentation's share of the step.

    python -m benchmarks.train                      # CPU, B=128, ts+mask, backends auto and torch
    python -m benchmarks.train --device cuda        # the same on a GPU (bf16 autocast, channels_last)
    python -m benchmarks.train --quick              # B=4, 2 steps: checks that it runs (writes nothing)
    python -m benchmarks.train --encoders efficientnet_b0 small --presets ts+mask --backends auto

The step is ``trainer.pretrain.train_step`` cut at its seams, each part synchronised and timed alone:
``data`` (the next batch from the packed built-in store through the training loader), ``augment`` (to the device,
int16 to float with the clips' level gains, ``PairAugmenter`` with the clips' lengths: ``augment_batch``),
``forward/backward`` (the encoder + projection on anchor and positive, bilinear InfoNCE, backward, Adam step). Warm-up steps excluded; medians over the measured steps.
Writes docs/benchmarks/train[_cuda].{json,md,png}.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks import report
from benchmarks.harness import time_calls
from trainer import common
from trainer.model import ENCODERS
from trainer.pretrain import PretrainConfig, augment_batch, build, forward_backward

PARTS = ("data", "augment", "forward/backward")


def measure(cfg: PretrainConfig, steps: int, warmup: int, device: torch.device) -> dict:
    """Seconds per step of each part, medians over ``steps`` after ``warmup`` steps."""
    _, _, loader, augment, model, optimizer, generator = build(cfg, device, rank=0)
    batches, step = iter(loader), {}

    def data():
        nonlocal batches
        try:
            step["batch"] = next(batches)
        except StopIteration:
            batches = iter(loader)
            step["batch"] = next(batches)

    def augment_part():
        step["pair"] = augment_batch(augment, step["batch"], generator, device)

    # whole steps, the parts in the step's order, each between two syncs; the first ``warmup`` steps untimed
    times = time_calls(dict(zip(PARTS, (data, augment_part,
                                        lambda: forward_backward(model, optimizer, step["pair"], cfg, device)))),
                       steps, warmup=warmup, device=device, order="fixed")
    med = {p: statistics.median(ts) for p, ts in times.items()}
    total = sum(med.values())
    return {"median_s": med, "step_s": total, "clips_per_s": cfg.batch_size / total,
            "augment_share": med["augment"] / total, "times_s": times}


def run(presets, backends, batch: int, steps: int, warmup: int, device: torch.device, work: Path,
        builtin_clips: int, encoders: Sequence[str] = ("efficientnet_b0",)) -> dict:
    results = {}
    for encoder in encoders:
        for preset in presets:
            for backend in backends:
                cfg = PretrainConfig(preset=preset, backend=backend, batch_size=batch, out=str(work),
                                     device=str(device), builtin_clips=builtin_clips, encoder=encoder)
                name = f"{preset} [{backend}]" + ("" if encoder == "efficientnet_b0" else f" {encoder}")
                results[name] = measure(cfg, steps, warmup, device)
    return {"batch": batch, "steps": steps, "warmup": warmup, "machine": report.machine_info(device), "results": results}


def write(res: dict, out: Path, device: str) -> str:
    m = res["machine"]
    lines = ["# A pretraining step: data, augmentation, forward/backward", "",
             f"`python -m benchmarks.train --batch {res['batch']} --steps {res['steps']} --device {device}`", "",
             (f"{report.machine_text(m)}. B={res['batch']} clips from the packed built-in store (0.5-10 s, a batch "
              "padded to its longest), EfficientNet-B0 (rows marked `small`: the small CNN) + 512-d projection, "
              "bilinear InfoNCE, Adam. Medians over the measured steps (warm-up excluded), each part synchronised."),
             ""]
    ms = "{:.1f}"
    rows = [{"preset [backend]": name, "data (ms)": 1e3 * r["median_s"]["data"],
             "augment (ms)": 1e3 * r["median_s"]["augment"],
             "forward/backward (ms)": 1e3 * r["median_s"]["forward/backward"], "step (ms)": 1e3 * r["step_s"],
             "clips/s": r["clips_per_s"], "augment share": 100 * r["augment_share"]}
            for name, r in res["results"].items()]
    lines += report.table(rows, formats={"data (ms)": ms, "augment (ms)": ms, "forward/backward (ms)": ms,
                                         "step (ms)": ms, "clips/s": ms, "augment share": "{:.1f} %"})
    return report.write(res, "\n".join(lines) + "\n", out, report.page_name("train", device), _plot, "step split")


def _plot(res: dict, png: Path) -> None:
    names = list(res["results"])
    with report.figure(png, (8, 1.2 + 0.5 * len(names))) as ax:
        left = [0.0] * len(names)
        for part in PARTS:
            vals = [res["results"][n]["median_s"][part] * 1e3 for n in names]
            ax.barh(names, vals, left=left, label=part)
            left = [a + b for a, b in zip(left, vals)]
        for i, n in enumerate(names):
            ax.text(left[i], i, f" aug {100 * res['results'][n]['augment_share']:.1f} %", va="center", fontsize=8)
        ax.set_xlabel("ms per step")
        ax.set_title(f"pretraining step, B={res['batch']}, {res['machine']['device']}")
        ax.legend(fontsize=8, loc="lower right")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["ts+mask", "all"])
    p.add_argument("--backends", nargs="+", default=["auto", "torch"], choices=["auto", "torch", "kernels"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--builtin-clips", type=int, default=1000)
    p.add_argument("--encoders", nargs="+", default=["efficientnet_b0"], choices=list(ENCODERS))
    p.add_argument("--quick", action="store_true", help="B=4, 1 warm-up + 2 steps, 16 built-in clips; writes nothing")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup, args.builtin_clips = 4, 2, 1, 16
    device = common.pick_device(args.device)
    with tempfile.TemporaryDirectory(prefix="augcl-bench-train-") as work:
        res = run(args.presets, args.backends, args.batch, args.steps, args.warmup, device, Path(work),
                  args.builtin_clips, args.encoders)
    if args.quick:
        for name, r in res["results"].items():
            print(name, {k: round(v * 1e3, 1) for k, v in r["median_s"].items()}, f"aug {r['augment_share']:.1%}")
    else:
        print(write(res, args.out, str(device)))
    return res


if __name__ == "__main__":
    main()
