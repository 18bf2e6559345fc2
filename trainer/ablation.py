"""``python -m trainer.ablation``: the paper's Tables 1 and 2 (and Fig. 3) for any data, one command.

    python -m trainer.ablation                      # --budget small: built-in dataset, small CNN, 3 seeds, CPU
    python -m trainer.ablation --budget paper --data stores/audioset-unlabeled \\
        --train-data stores/desed-val --test-data stores/desed-eval --out runs/ablation-desed

For each pretraining seed and each preset (noise, ts, rir, mask, ts+mask) it pretrains with that seed and budget,
then probes the encoder frozen (linear) and fine-tuned (``trainer.probe``: converged linear probe with its L2
strength cross-validated on the training split, early-stopped fine-tuning, each over ``--probe-seeds`` seeds).
It adds the supervised row (same network, random init, early-stopped) and, as a floor, the frozen random-init
encoder (BatchNorm statistics re-estimated on the training data, weights untouched), each over ``--seeds`` seeds.

Tables give mean +- std over the pretraining seeds (each seed's figure is the mean over its probe seeds) and,
for every preset, the difference to the noise-only baseline with the seeds paired, marked "within the spread"
when it is no larger than the seed-to-seed std of either row. Writes ``OUT/ablation.md``,
``OUT/ablation.json`` and ``OUT/per_class_f1.png``.

Then (unless ``--no-invariance``) ``trainer.invariance`` per pretraining seed: every preset's encoder, a random-init
one (seeded by the pretraining seed) and the time-averaged log-mel, all on the same altered copies of the test clips
(``OUT/invariance/seed<k>``); the report gains each preset's mean top-1 retrieval beside its F1 and wAP and
per-nuisance tables, and ``--invariance-report`` writes the full tables with their seed-paired differences to
noise-only (``OUT/invariance/invariance.md`` always).

Every run lives in its own folder under OUT with a ``fingerprint.json`` of its configuration and data; a finished
run is reused only when the fingerprint matches (otherwise the command stops and says which settings differ),
and an interrupted one resumes, so an interrupted ablation continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from augcl import PRESETS

from . import cli, common, plots
from .builtin import BuiltinConfig
from .model import ENCODERS
from .data import NORMALIZE
from .pretrain import PretrainConfig, pretrain
from .pretrain import validate as pretrain_validate
from .probe import ProbeConfig, probe
from .probe import check as probe_check
from .probe import stores as probe_stores
from .run import claim_run_dir, pretrain_record, store_fingerprint
from .invariance import InvarianceConfig, invariance, plot_top1

PAPER_PRESETS = ("noise", "ts", "rir", "mask", "ts+mask")
ROW_NAMES = {"noise": "Noise only (COLA baseline)", "ts": "Time stretching", "rir": "RIR filtering",
             "mask": "Time/freq masking", "ts+mask": "Time stretching + time/freq masking",
             "all": "Time stretching + RIR + time/freq masking", "supervised": "Supervised",
             "random_init": "Random-init encoder, frozen (BN statistics from the data)"}
BUDGETS = {  # pretraining steps and batch size, encoder
    "small": dict(steps=300, batch_size=64, encoder="small"),
    "paper": dict(steps=100_000, batch_size=128, encoder="efficientnet_b0"),
}
def _steps_done(out: Path) -> int:
    ckpt = out / "checkpoints" / "last.pt"
    return common.read_checkpoint(ckpt, "checkpoint").get("step", 0) if ckpt.is_file() else 0


def _pretrained(cfg: PretrainConfig, store: Path) -> str:
    """The checkpoint of ``cfg``'s run: reused if its fingerprint matches, resumed if unfinished."""
    out = Path(cfg.out)
    claim_run_dir(out, pretrain_record(asdict(cfg), store))
    if _steps_done(out) < cfg.steps:
        pretrain(cfg)
        if _steps_done(out) < cfg.steps:  # SIGTERM / Ctrl-C: checkpointed, not finished
            raise SystemExit(f"ablation interrupted during {cfg.preset!r} pretraining; rerun the same command to resume")
    return str(out / "checkpoints" / "last.pt")


def _probed(base: ProbeConfig, out: Path, stores: dict, **kw) -> dict:
    cfg = replace(base, out=str(out), **kw)
    # threads change no number (and fingerprints written before the setting existed lack it)
    record = {k: v for k, v in asdict(cfg).items() if k not in ("out", "device", "checkpoint", "threads")}
    if cfg.checkpoint is not None:
        record["checkpoint"] = json.loads((Path(cfg.checkpoint).parents[1] / "fingerprint.json").read_text())
        record["checkpoint_step"] = _steps_done(Path(cfg.checkpoint).parents[1])
    claim_run_dir(out, record | stores)
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    return probe(cfg)


def _invariance(args, out: Path, checkpoints: dict, seed: int, stores: dict) -> dict:
    """Every preset's pretrained encoder of one seed, its random-init twin and the log-mel baseline, measured on the
    same altered copies of the probe's test clips (``trainer.invariance``); reused when finished."""
    cfg = InvarianceConfig(checkpoint=next(iter(checkpoints.values())), data=args.test_data or "builtin",
                           out=str(out), seed=seed, device=args.device, threads=args.threads,
                           builtin_test=args.builtin_test, normalize=args.normalize)
    record = {k: v for k, v in asdict(cfg).items() if k not in ("out", "device", "threads", "checkpoint")}
    record["checkpoints"] = {p: json.loads((Path(c).parents[1] / "fingerprint.json").read_text()) |
                             {"step": _steps_done(Path(c).parents[1])} for p, c in checkpoints.items()}
    claim_run_dir(out, record | {"test_fingerprint": stores["test_fingerprint"]})  # claim_run_dir stores it as JSON
    if (out / "invariance.json").is_file():
        return json.loads((out / "invariance.json").read_text())
    return invariance(cfg, checkpoints)


def _probe_stores(probe_base: ProbeConfig) -> dict:
    """Fingerprints of the probe's training and test stores (the built-in ones are rendered on first use)."""
    train, test = probe_stores(probe_base)
    return {"train_fingerprint": store_fingerprint(train.root),
            "test_fingerprint": store_fingerprint(test.root)}


def check(args) -> None:
    """The ablation's own arguments checked (the runs' are checked by pretrain and probe before the first run)."""
    req = common.require
    req(not (args.budget == "paper" and args.data == "builtin"),
        "--budget paper needs --data (unlabeled audio or a packed store) and labeled --train-data/--test-data; the "
        "built-in dataset is for --budget small")
    req(args.seeds >= 1 and args.probe_seeds >= 1,
        f"--seeds and --probe-seeds must be >= 1, got {args.seeds} and {args.probe_seeds}")
    req(args.steps >= 0 and args.batch_size >= 0,
        f"--steps and --batch-size must be >= 1 (or 0: the budget's), got {args.steps} and {args.batch_size}")
    req(min(args.builtin_clips, args.builtin_train, args.builtin_test) >= 2,
        "--builtin-clips, --builtin-train and --builtin-test must be >= 2")
    unknown = sorted(set(args.presets) - set(PRESETS))
    req(not unknown, f"--presets: unknown {unknown}; choose from {sorted(PRESETS)}")


def run(args, command: str = "python -m trainer.ablation") -> dict:
    """Pretrain, probe and measure every (seed, preset) and the baselines; write the tables. ``args``: an
    :class:`AblationConfig` (or the ``argparse`` namespace of :func:`parser`, the same attributes)."""
    check(args)
    budget = BUDGETS[args.budget]
    steps = args.steps or budget["steps"]
    batch = args.batch_size or budget["batch_size"]
    encoder = args.encoder or budget["encoder"]
    out = Path(args.out)
    seeds = [args.seed + k for k in range(args.seeds)]
    probe_base = ProbeConfig(data=args.train_data, test_data=args.test_data, device=args.device,
                             seeds=args.probe_seeds, normalize=args.normalize, encoder=encoder,
                             builtin_train=args.builtin_train, builtin_test=args.builtin_test,
                             max_epochs=args.max_epochs, patience=args.patience, out=str(out), threads=args.threads)

    def pretrain_config(preset: str, seed: int, data: str) -> PretrainConfig:
        run_dir = out / preset.replace("+", "_") / f"seed{seed}"
        return PretrainConfig(data=data, preset=preset, out=str(run_dir / "pretrain"), steps=steps,
                              batch_size=batch, seed=seed, device=args.device, resume=True, encoder=encoder,
                              clip_seconds=args.clip_seconds, normalize=args.normalize, threads=args.threads,
                              checkpoint_every=max(steps // 4, 1))

    # every argument checked before the first run starts (a bad one must not surface hours in)
    for preset in args.presets:
        pretrain_validate(pretrain_config(preset, args.seed, args.data))
    probe_check(replace(probe_base, mode="supervised"))
    common.set_threads(args.threads)
    try:
        pretrain_store = common.resolve_store(args.data, "unlabeled", out, BuiltinConfig(n_unlabeled=args.builtin_clips))
    except ValueError as e:  # the data: not a store or a folder, an unfinished pack, nothing decodable
        raise common.UsageError(f"--data: {e}") from None
    stores = _probe_stores(probe_base)
    runs: dict[str, dict] = {}
    for seed in seeds:
        for preset in args.presets:
            run_dir = out / preset.replace("+", "_") / f"seed{seed}"
            cfg = pretrain_config(preset, seed, str(pretrain_store))
            ckpt = _pretrained(cfg, pretrain_store)
            if args.pretrain_only:
                continue
            runs.setdefault(preset, {})[seed] = {
                mode: _probed(probe_base, run_dir / mode, stores, checkpoint=ckpt, mode=mode, seed=seed)
                for mode in ("linear", "finetune")}
    if args.pretrain_only:
        print(f"pretrained every (seed, preset) under {out}; the same command without --pretrain-only probes them")
        return {}
    # the baselines draw their own seeds inside one probe call: each seed a new initialisation and split
    for key, mode in (("supervised", "supervised"), ("random_init", "random")):
        res = _probed(probe_base, out / key, stores, mode=mode, seed=args.seed, seeds=args.seeds * args.probe_seeds)
        runs[key] = {s["seed"]: {mode: s} for s in res["per_seed"]}
    inv = {}
    if args.invariance:  # after the probes: their numbers are never held up by it
        for seed in seeds:
            ckpts = {p: str(out / p.replace("+", "_") / f"seed{seed}" / "pretrain" / "checkpoints" / "last.pt")
                     for p in args.presets}
            inv[seed] = _invariance(args, out / "invariance" / f"seed{seed}", ckpts, seed, stores)
    result = {"command": command, "budget": args.budget, "steps": steps, "batch_size": batch, "encoder": encoder,
              "clip_seconds": args.clip_seconds, "normalize": args.normalize, "data": args.data,
              "train_data": args.train_data, "test_data": args.test_data, "seeds": seeds,
              "probe_seeds": args.probe_seeds, "presets": list(args.presets), "runs": runs,
              "summary": summarize(runs, list(args.presets))}
    if inv:
        result["invariance"] = summarize_invariance(inv)
    common.write_json(out / "ablation.json", result)
    _report(args, result, out, runs, bool(inv))
    return result


def _report(args, result: dict, out: Path, runs: dict, invariance_measured: bool) -> None:
    """``OUT/ablation.md``, the per-class plot, the invariance report and the copies ``--report`` and
    ``--invariance-report`` ask for; the table printed."""
    text = table(result)
    (out / "ablation.md").write_text(text)
    series = {p: _mean_per_class(runs[p], "linear") for p in args.presets}
    series["supervised"] = _mean_per_class(runs["supervised"], "supervised")
    title = "per-class F1: frozen encoders (linear probe) by preset, mean over seeds"
    plots.per_class_f1(series, out / "per_class_f1.png", title)
    if args.report:
        report = Path(args.report)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(text.replace("](per_class_f1.png)", f"]({report.stem}_per_class_f1.png)"))
        plots.per_class_f1(series, report.with_name(report.stem + "_per_class_f1.png"), title)
    if invariance_measured:
        write_invariance_report(result, out / "invariance")
        if args.invariance_report:
            write_invariance_report(result, Path(args.invariance_report))
    print(text)
    print(f"wrote {out / 'ablation.md'}, {out / 'ablation.json'}, {out / 'per_class_f1.png'}")


INVARIANCE_METRICS = ("top1", "top5", "cos_same", "cos_diff", "score")


def summarize_invariance(by_seed: dict) -> dict:
    """``{representation: {nuisance: {metric: stats over seeds}}}`` from each seed's ``invariance.json``, plus the
    rir bank and clip count (the same in every seed)."""
    first = next(iter(by_seed.values()))
    out = {}
    for rep, nuisances in first["results"].items():
        out[rep] = {nu: {m: _stats([r["results"][rep][nu][m] for r in by_seed.values()]) for m in INVARIANCE_METRICS}
                    for nu in nuisances}
    return {"n_clips": first["n_clips"], "rir_bank": first["rir_bank"], "chance": first["chance"],
            "seeds": list(by_seed), "results": out}


def _inv_columns(presets: list, what: str) -> list[tuple[str, str]]:
    return [(p, f"{p}:{what}") for p in presets] + [("random init", f"random_{what}"), ("log-mel", "logmel")]


def invariance_tables(result: dict, metrics: Sequence[tuple[str, str]]) -> list[str]:
    """Markdown tables (rows: nuisance levels; columns: presets, random init, log-mel; cells mean ± std over seeds)."""
    inv = result["invariance"]
    res, presets = inv["results"], result["presets"]
    out = []
    for metric, what in metrics:
        cols = _inv_columns(presets, what)
        out += [f"### {INVARIANCE_TITLES[metric]}, {what} (log-mel: its 64-d time average)", "",
                "| nuisance | " + " | ".join(c for c, _ in cols) + " |", "| --- |" + " --- |" * len(cols)]
        for nu in res["logmel"]:
            cells = [f"{res[k][nu][metric]['mean']:.3f} ± {res[k][nu][metric]['std']:.3f}" if k in res else ""
                     for _, k in cols]
            out.append(f"| {nu} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def invariance_deltas(result: dict, metric: str = "top1") -> list[str]:
    """Each preset's seed-paired difference to noise-only per nuisance level (h and z), marked "(within)" when no
    larger than either row's seed-to-seed std, as the F1 tables do."""
    res, presets = result["invariance"]["results"], [p for p in result["presets"] if p != "noise"]
    if "noise:h" not in res or not presets:
        return []
    out = []
    for what in ("h", "z"):
        out += [f"### Δ {INVARIANCE_TITLES[metric].lower()} vs noise-only, {what} (seeds paired; \"(within)\": no "
                "larger than either row's seed-to-seed std)", "",
                "| nuisance | " + " | ".join(presets) + " |", "| --- |" + " --- |" * len(presets)]
        for nu, base in res[f"noise:{what}"].items():
            cells = []
            for p in presets:
                mine = res[f"{p}:{what}"][nu][metric]
                d = np.subtract(mine["values"], base[metric]["values"])
                within = abs(d.mean()) <= max(mine["std"], base[metric]["std"])
                cells.append(f"{d.mean():+.3f} ± {d.std(ddof=1) if len(d) > 1 else 0.0:.3f}" + (" (within)" if within else ""))
            out.append(f"| {nu} | " + " | ".join(cells) + " |")
        out.append("")
    return out


INVARIANCE_TITLES = {"top1": "Top-1 retrieval of the altered copy", "top5": "Top-5 retrieval",
                     "cos_same": "cos(clip, altered clip)", "cos_diff": "cos between different clips",
                     "score": "Normalised similarity (cos same - cos diff) / (1 - cos diff)"}


def _invariance_intro(result: dict) -> list[str]:
    inv = result["invariance"]
    return [f"Each of the {inv['n_clips']} test clips altered whole by one nuisance at one level (`trainer.invariance`: "
            f"time stretch, one room IR per clip from the bank ({inv['rir_bank']['source']}, {inv['rir_bank'].get('n_irs', 0)} "
            "IRs), white noise at an SNR, gain, SpecAugment time or frequency masks on the log-mel windows); its "
            "embedding (the mean over the windows tiling its own length) compared with every original's. Top-1/top-5: "
            "fraction of altered copies whose own original is among the 1/5 originals of highest cosine (chance "
            f"{inv['chance']['top1']:.3f} / {inv['chance']['top5']:.3f}). Cells: mean ± std over the "
            f"{len(inv['seeds'])} pretraining seeds (the random-init encoder: one fresh initialisation per seed; every "
            "seed its own nuisance draws, shared by all its columns).", ""]


def write_invariance_report(result: dict, path: Path) -> None:
    """The full invariance report: ``path.md`` (or ``path/invariance.md``), its JSON and PNG beside it."""
    md = path / "invariance.md" if path.suffix != ".md" else path
    md.parent.mkdir(parents=True, exist_ok=True)
    png, js = md.with_suffix(".png"), md.with_suffix(".json")
    text = ["# Invariance of the ablation's encoders", "", f"Written by `{result['command']}`.", ""]
    text += _invariance_intro(result)
    text += [f"![top-1 retrieval, h]({png.name})", ""]
    text += invariance_deltas(result)
    text += invariance_tables(result, [(m, w) for m in ("top1", "score", "cos_same", "cos_diff", "top5")
                                       for w in ("h", "z")])
    md.write_text("\n".join(text))
    common.write_json(js, {"command": result["command"], "presets": result["presets"]} | result["invariance"])
    res = result["invariance"]["results"]
    cols = _inv_columns(result["presets"], "h")
    plot_top1({c: {nu: v["top1"]["mean"] for nu, v in res[k].items()} for c, k in cols},
              result["invariance"]["chance"]["top1"], png,
              f"top-1 retrieval of the altered copy (h; log-mel baseline), mean ± std over "
              f"{len(result['invariance']['seeds'])} seeds",
              {c: {nu: v["top1"]["std"] for nu, v in res[k].items()} for c, k in cols})


def _mean_per_class(by_seed: dict, mode: str) -> dict:
    per = [r[mode]["per_class_f1"] for r in by_seed.values()]
    return {c: float(np.mean([p[c] for p in per])) for c in per[0]}


def _stats(values: Sequence[float]) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v),
            "values": v.tolist()}


def summarize(runs: dict, presets: list) -> dict:
    """Per row and mode, mean +- std over seeds of each metric; per preset, the seed-paired difference to ``noise``."""
    out = {}
    for key, by_seed in runs.items():
        modes = next(iter(by_seed.values())).keys()
        out[key] = {m: {metric: _stats([r[m][metric] for r in by_seed.values()]) for metric in ("macro_f1", "wAP")}
                    for m in modes}
    if "noise" in runs:
        for preset in presets:
            if preset == "noise":
                continue
            for m in ("linear", "finetune"):
                for metric in ("macro_f1", "wAP"):
                    seeds = sorted(set(runs[preset]) & set(runs["noise"]))
                    diff = _stats([runs[preset][s][m][metric] - runs["noise"][s][m][metric] for s in seeds])
                    spread = max(out[preset][m][metric]["std"], out["noise"][m][metric]["std"])
                    diff["within_spread"] = bool(abs(diff["mean"]) <= spread)
                    out[preset][m][metric]["vs_noise"] = diff
    return out


def table(result: dict) -> str:
    summary = result["summary"]
    n = len(result["seeds"])

    def cell(key: str, mode: str, metric: str) -> str:
        s = summary.get(key, {}).get(mode, {}).get(metric)
        return f"{s['mean']:.3f} ± {s['std']:.3f}" if s else ""

    def delta(key: str, mode: str, metric: str) -> str:
        d = summary.get(key, {}).get(mode, {}).get(metric, {}).get("vs_noise")
        if not d:
            return ""
        return f"{d['mean']:+.3f} ± {d['std']:.3f}" + (" (within the spread)" if d["within_spread"] else "")

    data = "the built-in dataset" if result["data"] == "builtin" else f"`{result['data']}`"
    head = [f"# Ablation: {result['steps']} pretraining steps of {result['batch_size']} clips on {data}",
            "",
            f"Written by `{result.get('command', 'python -m trainer.ablation')}`.",
            "",
            f"Encoder `{result['encoder']}`, clips of at most {result['clip_seconds']:g} s, level normalisation "
            f"`{result['normalize']}`; {n} pretraining seed{'s' if n > 1 else ''} ({', '.join(map(str, result['seeds']))}), "
            f"each probed with {result['probe_seeds']} probe seed{'s' if result['probe_seeds'] > 1 else ''}. "
            "Cells: mean ± std over the pretraining seeds. Supervised and random-init rows: mean ± std over "
            f"{n * result['probe_seeds']} seeds of their own. Δ: difference to the noise-only row, seeds paired; "
            "\"within the spread\" when it is no larger than either row's seed-to-seed std.",
            "",
            "Linear: frozen encoder, L2-regularised logistic regression solved to convergence (L2 strength by "
            "grouped cross-validation on the training split). Finetune: the whole network, early-stopped on a "
            "validation split of the training data. Clip predictions average the clip's 96-frame windows, which tile "
            "its own length.", ""]
    out = list(head)
    for metric, title in (("macro_f1", "Macro F1 (the paper's Table 1 metric)"),
                          ("wAP", "wAP, weighted average precision (the paper's Table 2 metric)")):
        out += [f"## {title}", "", "| augmentation | freeze encoder | Δ vs noise | finetune | Δ vs noise |",
                "| --- | --- | --- | --- | --- |"]
        for key in result["presets"]:
            out.append(f"| {ROW_NAMES.get(key, key)} | {cell(key, 'linear', metric)} | {delta(key, 'linear', metric)} | "
                       f"{cell(key, 'finetune', metric)} | {delta(key, 'finetune', metric)} |")
        out.append(f"| {ROW_NAMES['supervised']} | | | {cell('supervised', 'supervised', metric)} | |")
        out.append(f"| {ROW_NAMES['random_init']} | {cell('random_init', 'random', metric)} | | | |")
        out.append("")
    out += ["![per-class F1](per_class_f1.png)", ""]
    if "invariance" in result:
        res = result["invariance"]["results"]
        out += ["## Invariance (`trainer.invariance`)", ""] + _invariance_intro(result)
        out += ["Beside F1 and wAP: each preset's top-1 retrieval averaged over the nuisance levels (mean ± std over "
                "seeds of the per-seed average).", "",
                "| augmentation | freeze encoder F1 | wAP | mean top-1, h | mean top-1, z |", "| --- | --- | --- | --- | --- |"]

        def avg(key: str) -> str:
            if key not in res:
                return ""
            per_seed = np.mean([v["top1"]["values"] for v in res[key].values()], axis=0)
            return f"{per_seed.mean():.3f} ± {per_seed.std(ddof=1) if len(per_seed) > 1 else 0.0:.3f}"

        for key in result["presets"]:
            out.append(f"| {ROW_NAMES.get(key, key)} | {cell(key, 'linear', 'macro_f1')} | {cell(key, 'linear', 'wAP')} | "
                       f"{avg(key + ':h')} | {avg(key + ':z')} |")
        out.append(f"| {ROW_NAMES['random_init']} | {cell('random_init', 'random', 'macro_f1')} | "
                   f"{cell('random_init', 'random', 'wAP')} | {avg('random_h')} | {avg('random_z')} |")
        out.append(f"| Time-averaged log-mel (no learning) | | | {avg('logmel')} | |")
        out.append("")
        out += invariance_tables(result, [("top1", "h"), ("top1", "z"), ("score", "h"), ("score", "z")])
    return "\n".join(out)


@dataclass
class AblationConfig:
    budget: str = "small"                   # small | paper (BUDGETS)
    data: str = "builtin"                   # pretraining audio
    train_data: str = "builtin"             # the probes' labeled training store
    test_data: str | None = None            # the probes' labeled test store (builtin: its test split)
    presets: tuple = PAPER_PRESETS
    steps: int = 0                          # 0: the budget's
    batch_size: int = 0                     # 0: the budget's
    encoder: str | None = None              # None: the budget's
    clip_seconds: float = 10.0
    normalize: str = "rms"
    seeds: int = 3
    probe_seeds: int = 3
    seed: int = 0
    max_epochs: int = ProbeConfig.max_epochs
    patience: int = ProbeConfig.patience
    device: str = "auto"
    threads: int = 0
    builtin_clips: int = 1000
    builtin_train: int = 100
    builtin_test: int = 200
    out: str = "outputs/ablation"
    pretrain_only: bool = False
    invariance: bool = True
    invariance_report: str | None = None
    report: str | None = None


#: the flags' help texts
HELP = {
    "budget": "small: small CNN, 300 steps of 64 (CPU); paper: EfficientNet-B0, 100,000 steps of 128",
    "data": "pretraining audio: builtin, a packed store or a folder",
    "train_data": "labeled packed store for the probes (builtin: its train split)",
    "test_data": "labeled packed store to score on (builtin: its test split)",
    "steps": "override the budget's pretraining steps", "batch_size": "override the budget's batch size",
    "encoder": "override the budget's encoder", "clip_seconds": "longest clip of a pretraining batch (random crop)",
    "normalize": "per-clip level normalisation", "seeds": "pretraining seeds (seed, seed+1, ...)",
    "probe_seeds": "probe seeds per pretrained encoder", "seed": "the first seed",
    "max_epochs": "fine-tuning / supervised: most epochs (they stop early on a validation split)",
    "patience": "fine-tuning / supervised: epochs without a better validation macro F1 before stopping",
    "threads": "torch CPU threads; 0: the default, 1 (measured best on a shared CPU: docs/training.md)",
    "builtin_clips": "built-in unlabeled clips (pretraining)", "builtin_train": "built-in labeled clips for the probes",
    "builtin_test": "built-in clips the probes are scored on",
    "pretrain_only": "only pretrain every (seed, preset), e.g. on a GPU machine; probe later without this flag",
    "invariance": "skip the invariance measurements (trainer.invariance; a few minutes per seed on a CPU)",
    "invariance_report": "also write the full invariance report here (e.g. docs/invariance_builtin.md; .json, .png "
                         "beside)",
    "report": "also write the table (and plot beside it) here, e.g. docs/...",
}


def parser() -> argparse.ArgumentParser:
    return cli.parser(AblationConfig, "python -m trainer.ablation", __doc__, help=HELP, nargs={"presets": "+"},
                      choices={"budget": sorted(BUDGETS), "encoder": ENCODERS, "normalize": NORMALIZE},
                      switches={"pretrain_only": "store_true", "invariance": "no"})


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, _ = cli.parse(p, AblationConfig, argv)
    try:
        return run(cfg, " ".join(["python -m trainer.ablation", *argv]))
    except common.UsageError as e:
        p.error(str(e))


if __name__ == "__main__":
    main()
