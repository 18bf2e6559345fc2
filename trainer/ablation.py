"""``python -m trainer.ablation``: the paper's Tables 1 and 2 (and Fig. 3) for any data, one command.

    python -m trainer.ablation                      # --budget small: built-in dataset, CPU, under an hour
    python -m trainer.ablation --budget paper --data stores/audioset-unlabeled \\
        --train-data stores/desed-val --test-data stores/desed-eval --out runs/ablation-desed

For each preset (noise, ts, rir, mask, ts+mask) it pretrains with the same seed and budget, then probes the
encoder frozen (linear) and fine-tuned; it adds the supervised row (same network, random init) and, as a
floor, the frozen random-init encoder (BatchNorm statistics estimated on the data, weights untouched). Writes ``OUT/ablation.md`` (both tables), ``OUT/ablation.json``,
``OUT/per_class_f1.png`` (frozen encoders, per class, one bar per preset). Every run lives in its own folder
under OUT and is skipped when already finished, so an interrupted ablation resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import common, plots
from .pretrain import PretrainConfig, pretrain
from .probe import ProbeConfig, probe

PAPER_PRESETS = ("noise", "ts", "rir", "mask", "ts+mask")
ROW_NAMES = {"noise": "Noise only (COLA baseline)", "ts": "Time stretching", "rir": "RIR filtering",
             "mask": "Time/freq masking", "ts+mask": "Time stretching + time/freq masking"}
BUDGETS = {  # pretraining steps, batch size (the probes solve / stop early by themselves: trainer/probe.py)
    "small": dict(steps=100, batch_size=32),
    "paper": dict(steps=100_000, batch_size=128),
}


def _done_pretrain(out: Path, steps: int) -> bool:
    ckpt = out / "checkpoints" / "last.pt"
    return ckpt.is_file() and torch.load(ckpt, map_location="cpu", weights_only=False)["step"] >= steps


def _probe(base: ProbeConfig, out: Path, **kw) -> dict:
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    return probe(replace(base, out=str(out), **kw))


def run(args) -> dict:
    budget = BUDGETS[args.budget]
    steps = args.steps or budget["steps"]
    batch = args.batch_size or budget["batch_size"]
    if args.budget == "paper" and args.data == "builtin":
        raise ValueError("--budget paper needs --data (unlabeled audio or a packed store) and labeled "
                         "--train-data/--test-data; the built-in dataset is for --budget small")
    out = Path(args.out)
    probe_base = ProbeConfig(data=args.train_data, test_data=args.test_data, seed=args.seed, device=args.device,
                             batch_size=32, builtin_train=args.builtin_train, builtin_test=args.builtin_test)
    rows = {}
    for preset in args.presets:
        run_dir = out / preset.replace("+", "_")
        cfg = PretrainConfig(data=args.data, preset=preset, out=str(run_dir / "pretrain"), steps=steps,
                             batch_size=batch, seed=args.seed, device=args.device, resume=True,
                             builtin_clips=args.builtin_clips,
                             checkpoint_every=max(steps // 4, 1))
        if not _done_pretrain(run_dir / "pretrain", steps):
            pretrain(cfg)
            if not _done_pretrain(run_dir / "pretrain", steps):  # SIGTERM / Ctrl-C: checkpointed, not finished
                raise SystemExit(f"ablation interrupted during {preset!r} pretraining; rerun the same command to resume")
        ckpt = str(run_dir / "pretrain" / "checkpoints" / "last.pt")
        rows[preset] = {
            "linear": _probe(probe_base, run_dir / "linear", checkpoint=ckpt, mode="linear"),
            "finetune": _probe(probe_base, run_dir / "finetune", checkpoint=ckpt, mode="finetune"),
        }
    rows["supervised"] = {"supervised": _probe(probe_base, out / "supervised", mode="supervised")}
    # the floor: a frozen random-init encoder whose BatchNorm statistics the probe re-estimates on the training data
    rows["random_init"] = {"linear": _probe(probe_base, out / "random_init" / "linear", mode="random")}
    result = {"budget": args.budget, "steps": steps, "batch_size": batch, "data": args.data,
              "train_data": args.train_data, "test_data": args.test_data, "seed": args.seed, "rows": rows}
    common.write_json(out / "ablation.json", result)
    text = table(result)
    (out / "ablation.md").write_text(text)
    series = {p: rows[p]["linear"]["per_class_f1"] for p in args.presets}
    series["supervised"] = rows["supervised"]["supervised"]["per_class_f1"]
    plots.per_class_f1(series, out / "per_class_f1.png", "per-class F1: frozen encoders (linear probe) by preset")
    if args.report:
        report = Path(args.report)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(text.replace("](per_class_f1.png)", f"]({report.stem}_per_class_f1.png)"))
        plots.per_class_f1(series, report.with_name(report.stem + "_per_class_f1.png"),
                           "per-class F1: frozen encoders (linear probe) by preset")
    print(text)
    print(f"wrote {out / 'ablation.md'}, {out / 'ablation.json'}, {out / 'per_class_f1.png'}")
    return result


def table(result: dict) -> str:
    rows = result["rows"]

    def cell(row: dict, mode: str, key: str) -> str:
        return f"{row[mode][key]:.3f}" if mode in row else ""

    data = "the built-in dataset" if result["data"] == "builtin" else f"`{result['data']}`"
    head = [f"# Ablation: {result['steps']} pretraining steps of {result['batch_size']} clips on {data}, seed "
            f"{result['seed']}", "",
            "Written by `python -m trainer.ablation" + ("" if result["budget"] == "small" else " --budget paper ...") +
            "`. Linear: frozen encoder + linear classifier; finetune: whole network; clip predictions average the "
            "clip's 96-frame windows.", ""]
    out = head + ["## Macro F1 (the paper's Table 1 metric)", "", "| augmentation | freeze encoder | finetune |",
                  "| --- | --- | --- |"]
    names = dict(ROW_NAMES, supervised="Supervised",
                 random_init="Random-init encoder, frozen (BN statistics from the data)")
    for key, row in rows.items():
        if key == "supervised":
            out.append(f"| {names[key]} | {cell(row, 'supervised', 'macro_f1')} | |")
        else:
            out.append(f"| {names.get(key, key)} | {cell(row, 'linear', 'macro_f1')} | "
                       f"{cell(row, 'finetune', 'macro_f1')} |")
    out += ["", "## wAP, weighted average precision (the paper's Table 2 metric)", "",
            "| augmentation | freeze encoder | finetune |", "| --- | --- | --- |"]
    for key, row in rows.items():
        if key == "supervised":
            out.append(f"| {names[key]} | {cell(row, 'supervised', 'wAP')} | |")
        else:
            out.append(f"| {names.get(key, key)} | {cell(row, 'linear', 'wAP')} | {cell(row, 'finetune', 'wAP')} |")
    out += ["", "![per-class F1](per_class_f1.png)", ""]
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m trainer.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    p.add_argument("--data", default="builtin", help="pretraining audio: builtin, a packed store or a folder")
    p.add_argument("--train-data", default="builtin", help="labeled packed store for the probes (builtin: its train split)")
    p.add_argument("--test-data", default=None, help="labeled packed store to score on (builtin: its test split)")
    p.add_argument("--presets", nargs="+", default=list(PAPER_PRESETS))
    p.add_argument("--steps", type=int, default=0, help="override the budget's pretraining steps")
    p.add_argument("--batch-size", type=int, default=0, help="override the budget's batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--builtin-clips", type=int, default=1000, help="built-in unlabeled clips (pretraining)")
    p.add_argument("--builtin-train", type=int, default=300, help="built-in labeled clips for the probes")
    p.add_argument("--builtin-test", type=int, default=200, help="built-in clips the probes are scored on")
    p.add_argument("--out", default="outputs/ablation")
    p.add_argument("--report", default=None, help="also write the table (and plot beside it) here, e.g. docs/...")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
