"""``python -m trainer.probe``: the downstream evaluation of the paper (section 3).

    python -m trainer.probe --checkpoint outputs/pretrain/checkpoints/last.pt               # linear, built-in data
    python -m trainer.probe --checkpoint ... --mode finetune
    python -m trainer.probe --mode supervised --encoder small                                # random init, trained
    python -m trainer.probe --mode random                                                    # frozen random init
    python -m trainer.probe --checkpoint ... --data stores/desed-train --test-data stores/desed-val

Modes: ``linear`` (frozen pretrained encoder, a linear classifier on h), ``finetune`` (the whole network),
``supervised`` (the same network from random init), ``random`` (a frozen random-init encoder with a linear
classifier: the floor).

Windows. A window is the paper's front end: ``segment_frames`` (96) log-mel frames of the checkpoint preset's
``MelConfig``, i.e. ``seg = mel.segment_samples(96)`` samples plus ``mel.context`` samples of context on each
side (zeros only beyond the clip's ends). A clip of ``n`` valid samples gets ``k = max(1, ceil(n / seg))``
windows whose starts are spread evenly over ``[0, max(n - seg, 0)]`` (rounded half up): they cover the whole
clip, never reach past it when ``n >= seg``, and a clip shorter than a window gives one zero-padded window.
Padding is never a window, so a long clip elsewhere in a store changes nothing about the other clips. A
clip's score is the mean of its windows' probabilities (softmax single-label, sigmoid multi-label).

Cost. All windows of a store are listed as (clip, start) and read in batches of at most ``--window-batch``
windows (a clip's windows may span batches); memory is that budget plus one float32 h per window.

Each clip's level is normalised over its whole valid length as in pretraining (the checkpoint's ``normalize``;
``rms`` for supervised/random; ``--normalize`` overrides): one gain per clip applied to its windows.

Frozen encoders (linear, random) first get their BatchNorm statistics re-estimated on the training windows
(:func:`recompute_batchnorm`): after short pretraining the running variances are still near their init and
eval-mode features collapse. The linear classifier (multinomial logistic regression; one-vs-rest for multi-label)
is solved to convergence by full-batch L-BFGS in float64 on standardised window features, with an L2 weight
``lam`` chosen by grouped K-fold cross-validation on the training split only (clip-level macro F1).
Fine-tuning and supervised training see one random window per training clip per epoch and stop early on the
clip-level macro F1 of a grouped validation split carved from the training store; the best epoch's weights
are kept. Every mode runs ``--seeds`` seeds; ``OUT/metrics.json`` holds the mean of each metric, its std
(``<metric>_std``) and every seed's metrics (``per_seed``). Also writes ``OUT/scores.npz`` (seed-mean clip
scores on the test store), ``OUT/per_class_f1.png`` and ``OUT/confusion.png``; with the ``tensorboard`` package
(``--no-tensorboard`` turns it off), TensorBoard events in ``OUT/tensorboard``: each seed's training curves (loss and
validation macro F1 per epoch; the linear probe's CV macro F1 per lam) and the test metrics.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from . import cli, common, plots, tb
from .builtin import BuiltinConfig
from .data import NORMALIZE, PackedStore
from .finetune import predict_clips, train_network
from .linear import linear_head, select_lambda
from .metrics import clip_metrics
from .model import ENCODERS, Classifier, build_encoder, load_encoder
from .splits import class_of, validation_split
from .windows import (
    Windows,
    class_probs,
    clip_scores,
    recompute_batchnorm,
    tiles,
    window_batches,
    window_features,
)

MODES = ("linear", "finetune", "supervised", "random")


@dataclass
class ProbeConfig:
    checkpoint: Optional[str] = None  # a pretrain checkpoint (last.pt); required for linear and finetune
    mode: str = "linear"              # linear | finetune | supervised | random
    data: str = "builtin"             # "builtin" (its train split) or a labeled packed store
    test_data: Optional[str] = None   # a labeled packed store (default with builtin: its test split)
    out: str = "outputs/probe"
    encoder: str = "efficientnet_b0"  # supervised / random only (linear, finetune: the checkpoint's)
    normalize: Optional[str] = None   # clip level: rms | peak | none; None: the checkpoint's (supervised/random: rms)
    seeds: int = 3                    # probe seeds seed, seed + 1, ...: metrics are their mean and std
    seed: int = 0
    window_batch: int = 256           # windows per forward pass when tiling a store (memory bound)
    batch_size: int = 32              # clips per fine-tuning / supervised step
    lr: float = 1e-3                  # Adam, fine-tuning / supervised
    max_epochs: int = 200             # fine-tuning / supervised
    patience: int = 15                # epochs without a better validation macro F1 before stopping
    device: str = "auto"
    threads: int = 0                  # torch CPU threads; 0: the default, 1 (docs/training.md, "Threads")
    builtin_train: int = 100
    builtin_test: int = 200


# --- the run --------------------------------------------------------------------------------------------------

def stores(cfg: ProbeConfig) -> tuple[PackedStore, PackedStore]:
    """The training and test stores ``cfg`` names (the built-in splits are rendered on first use), checked: both
    labeled, the same classes and task, and in a single-label task every clip labeled."""
    if cfg.data == "builtin":
        bcfg = BuiltinConfig(n_train=cfg.builtin_train, n_test=cfg.builtin_test)
        train = common.resolve_store("builtin", "train", Path(cfg.out), bcfg)
        test = common.resolve_store("builtin", "test", Path(cfg.out), bcfg) if cfg.test_data is None else cfg.test_data
    else:
        common.require(cfg.test_data is not None,
                       "--test-data is required with --data (a labeled packed store held out for evaluation)")
        train, test = cfg.data, cfg.test_data
    opened = []
    for arg, root in (("--data", train), ("--test-data", test)):
        try:
            opened.append(PackedStore(root))
        except ValueError as e:
            raise common.UsageError(f"{arg}: {e}") from None
    train, test = opened
    common.require(bool(train.classes), f"--data {cfg.data!r} is not labeled; pack it from a labeled layout "
                                        "(docs/data.md)")
    if train.classes != test.classes:
        missing = [c for c in train.classes if c not in test.classes]
        extra = [c for c in test.classes if c not in train.classes]
        what = (f"--test-data lacks {missing} and has {extra} that --data lacks" if missing or extra else
                "they list the same classes in another order (class indices differ)")
        raise common.UsageError(f"--data and --test-data must have the same classes: {what}; pack both with the "
                                "same class list (a manifest's classes, or the same class folders)")
    common.require(train.multi_label == test.multi_label,
                   f"--data is {'multi' if train.multi_label else 'single'}-label but --test-data is "
                   f"{'multi' if test.multi_label else 'single'}-label; pack both from the same layout")
    for arg, store in (("--data", train), ("--test-data", test)):
        if not store.multi_label:
            unlabeled = np.flatnonzero(store.targets().numpy() < 0)
            if len(unlabeled):
                names = [store.paths()[i] for i in unlabeled[:3]]
                raise common.UsageError(
                    f"{arg} {str(store.root)!r}: {len(unlabeled)} clip(s) have no label in a single-label task "
                    f"(e.g. {names}; the pack's report.tsv lists them); label them or drop them from the source "
                    "and pack again")
    return train, test


def check(cfg: ProbeConfig) -> None:
    """Every argument checked before any work: a :class:`~trainer.common.UsageError` naming it and the fix."""
    req = common.require
    req(cfg.mode in MODES, f"--mode must be one of {MODES}, got {cfg.mode!r}")
    req(cfg.mode not in ("linear", "finetune") or cfg.checkpoint is not None,
        f"--mode {cfg.mode} needs --checkpoint (a pretrain last.pt); or use --mode supervised/random")
    if cfg.mode in ("linear", "finetune"):
        common.read_checkpoint(cfg.checkpoint, "--checkpoint")  # missing, truncated or foreign: said now
    req(cfg.encoder in ENCODERS, f"--encoder must be one of {ENCODERS}, got {cfg.encoder!r}")
    req(cfg.normalize is None or cfg.normalize in NORMALIZE,
        f"--normalize must be one of {NORMALIZE}, got {cfg.normalize!r}")
    for name in ("seeds", "window_batch", "batch_size", "max_epochs", "patience", "builtin_train", "builtin_test"):
        value = getattr(cfg, name)
        req(value >= 1, f"--{name.replace('_', '-')} must be >= 1, got {value}")
    req(cfg.seed >= 0, f"--seed must be >= 0, got {cfg.seed}")
    req(math.isfinite(cfg.lr) and cfg.lr > 0, f"--lr must be a positive number, got {cfg.lr}")
    common.resolve_threads(cfg.threads)
    for arg, path in (("--data", cfg.data), ("--test-data", cfg.test_data)):
        if path not in (None, "builtin"):
            req(Path(path).is_dir(), f"{arg} {path!r} does not exist; pass a labeled packed store "
                                     "(python -m trainer.pack) or 'builtin'")


def _encoder(cfg: ProbeConfig, seed: int) -> tuple[nn.Module, str, str]:
    """Encoder, preset and level normalisation for the mode (a fresh copy each call; random init from ``seed``)."""
    if cfg.mode in ("linear", "finetune"):
        encoder, preset, normalize = load_encoder(cfg.checkpoint)
    else:
        common.seed_everything(seed)
        encoder, preset, normalize = build_encoder(cfg.encoder), "ts+mask", "rms"
    return encoder, preset, cfg.normalize or normalize


def run_linear(cfg: ProbeConfig, train: PackedStore, test: PackedStore, device, writer=None) -> tuple[list, dict]:
    """Frozen encoder (BN re-estimated on the training windows), features once, then per seed: CV for lam,
    refit, test scores. ``writer`` (TensorBoard, optional) gets each seed's CV curve, ``<mode>/seed<s>/cv_macro_f1``
    at step j for lam ``LAMBDAS[j]`` (the grid, smallest first, is in the text ``<mode>/lams``)."""
    encoder, preset, normalize = _encoder(cfg, cfg.seed)
    encoder = encoder.to(device)
    windows = Windows(preset, train.sample_rate).to(device)
    gains = train.gains(normalize)
    clip, start = tiles(train, windows)
    recompute_batchnorm(encoder, window_batches(train, clip, start, gains, windows, cfg.window_batch, device))
    h = window_features(encoder, window_batches(train, clip, start, gains, windows, cfg.window_batch, device),
                        "features (train)")
    targets, groups, multi = train.targets(), train.groups(), train.multi_label
    h = h.double().to(device if device.type == "cuda" else "cpu")  # the solver runs in float64
    fits = []
    for s in range(cfg.seeds):
        cv = select_lambda(h, clip, targets, groups, len(train.classes), multi, cfg.seed + s)
        if writer:
            for j, f1 in enumerate(cv["cv_macro_f1"]):
                writer.add_scalar(f"{cfg.mode}/seed{cfg.seed + s}/cv_macro_f1", f1, j)
            grid = ", ".join(f"{j}: {lam:.3g}" for j, lam in enumerate(cv["lams"]))
            writer.add_text(f"{cfg.mode}/lams", f"cv_macro_f1 step j is lam j of the grid ({grid}); seed "
                            f"{cfg.seed + s} chose lam {cv['lam']:.3g}", s)
        head, info = linear_head(h, targets[torch.from_numpy(clip)].to(h.device), len(train.classes), multi, cv["lam"])
        fits.append((head.cpu(), cv | {k: info[k] for k in ("iterations", "grad_norm", "objective")}))
    # the test store is read only now, after every fit
    test_gains = test.gains(normalize)
    test_clip, test_start = tiles(test, windows)
    test_h = window_features(encoder, window_batches(test, test_clip, test_start, test_gains, windows,
                                                     cfg.window_batch, device), "features (test)")
    runs = []
    for head, record in fits:
        with torch.no_grad():
            scores = clip_scores(class_probs(head(test_h.double()), multi), test_clip, len(test))
        runs.append((scores, record))
    extra = {"preset": preset, "normalize": normalize, "train_windows": len(clip), "test_windows": len(test_clip)}
    return runs, extra


def run_network(cfg: ProbeConfig, train: PackedStore, test: PackedStore, device, writer=None) -> tuple[list, dict]:
    """Per seed: a grouped validation split, training with early stopping, test scores from the best weights."""
    targets, groups, multi = train.targets(), train.groups(), train.multi_label
    n_groups = len(set(groups))
    runs = []
    for s in range(cfg.seeds):
        seed = cfg.seed + s
        encoder, preset, normalize = _encoder(cfg, seed)
        common.seed_everything(seed)
        model = Classifier(encoder, len(train.classes)).to(device)
        windows = Windows(preset, train.sample_rate).to(device)
        gains = train.gains(normalize)
        if n_groups >= 2:
            val = validation_split(groups, class_of(targets, multi), seed)
            train_clips, val_clips = np.flatnonzero(~val), np.flatnonzero(val)
            stopping = {"early_stopping": True, "n_val_clips": len(val_clips)}
        else:
            train_clips, val_clips = np.arange(len(train)), None
            stopping = {"early_stopping": False, "why": f"the training store has {n_groups} group(s): no grouped "
                        f"validation split; trained the full max_epochs={cfg.max_epochs}"}
        record = train_network(model, windows, train, train_clips, val_clips, gains, multi, cfg, seed, device, writer)
        test_gains = test.gains(normalize)
        scores = predict_clips(model, test, np.arange(len(test)), test_gains, windows, multi, cfg.window_batch, device)
        runs.append((scores, stopping | record))
    extra = {"preset": preset, "normalize": normalize, "train_windows": None,
             "test_windows": len(tiles(test, windows)[0])}
    return runs, extra


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None


def seed_summary(per_seed: list[dict]) -> dict:
    """The mean of every scalar (and every per-class dict, and the confusion matrix) over seeds, ``<key>_std``
    (sample std; 0 for one seed) beside each scalar, and ``per_seed``."""
    first, n = per_seed[0], len(per_seed)
    out = {}
    for key, value in first.items():
        values = [r.get(key) for r in per_seed]
        if _is_number(value) and all(_is_number(v) for v in values):
            arr = np.asarray(values, np.float64)
            out[key] = float(arr.mean())
            out[key + "_std"] = float(arr.std(ddof=1)) if n > 1 else 0.0
        elif isinstance(value, dict) and all(_is_number(v) for v in value.values()):
            out[key] = {k: float(np.mean([r[key][k] for r in per_seed])) for k in value}
        elif key == "confusion_normalized":
            out[key] = np.mean([r[key] for r in per_seed], axis=0).tolist()
        elif all(v == value for v in values):  # classes, multi_label, early_stopping, why, lams
            out[key] = value
    return out | {"seeds": n, "per_seed": per_seed}


#: the test metrics written to TensorBoard as scalars ``test/<name>`` (seed means; ``accuracy``: single-label only)
TB_METRICS = ("macro_f1", "wAP", "mAP", "accuracy")


def probe(cfg: ProbeConfig, tensorboard: bool = True) -> dict:
    """Run the mode over ``cfg.seeds`` seeds; write metrics.json, scores.npz and both plots; return the metrics.
    ``tensorboard``: also write TensorBoard events to ``OUT/tensorboard`` when the package is installed (not a
    configuration field: it changes nothing the probe computes)."""
    check(cfg)
    device, out, t0 = common.start_command(cfg.threads, cfg.device, cfg.out)
    train, test = stores(cfg)
    writer = None
    if tensorboard:
        # the probe rewrites metrics.json each run: the events of an earlier probe in this folder go with it
        for old in (out / tb.SUBDIR).glob("events.out.tfevents.*"):
            old.unlink()
        writer = tb.open_writer(out)
    try:
        runs, extra = (run_linear if cfg.mode in ("linear", "random") else run_network)(cfg, train, test, device,
                                                                                         writer)
        result = _finish(cfg, train, test, runs, extra, out, t0, writer)
    finally:
        if writer:
            writer.close()
    return result


def _finish(cfg: ProbeConfig, train: PackedStore, test: PackedStore, runs: list, extra: dict, out: Path, t0: float,
            writer) -> dict:
    """Metrics over seeds from the test scores; metrics.json, scores.npz, both plots and the TensorBoard summary."""
    y_true = test.targets().numpy()
    y_true = y_true if test.multi_label else y_true.astype(np.int64)
    per_seed = [clip_metrics(y_true, scores.numpy(), train.classes) | {"seed": cfg.seed + s} | record
                for s, (scores, record) in enumerate(runs)]
    result = seed_summary(per_seed)
    result |= extra | {"mode": cfg.mode, "config": asdict(cfg), "seconds": time.perf_counter() - t0}
    result["n_clips"] = len(test)
    common.write_json(out / "metrics.json", result)
    np.savez(out / "scores.npz", scores=torch.stack([r[0] for r in runs]).mean(0).numpy(), targets=y_true)
    label = cfg.mode + (f" ({extra['preset']})" if cfg.mode in ("linear", "finetune") else f" ({cfg.encoder})")
    n = f"mean of {cfg.seeds} seed{'s' if cfg.seeds > 1 else ''}"
    plots.per_class_f1({label: result["per_class_f1"]}, out / "per_class_f1.png", f"per-class F1, {label}, {n}")
    plots.confusion(result["confusion_normalized"], result["classes"], out / "confusion.png",
                    f"{label}: rows true class, normalised, {n}")
    summary = f"macro F1 {result['macro_f1']:.3f} +- {result['macro_f1_std']:.3f} ({cfg.seeds} seeds)"
    summary += f", wAP {result['wAP']:.3f}, mAP {result['mAP']:.3f}"
    if "accuracy" in result:
        summary += f", accuracy {result['accuracy']:.3f}"
    if writer:
        tb.log_scalars(writer, "test", {k: result[k] for k in TB_METRICS if k in result}, 0)
        writer.add_text("test/summary", f"{label}: {summary}", 0)
    events = f", {tb.SUBDIR}/ (tensorboard --logdir {out})" if writer else ""
    print(f"{label}: {summary}. Wrote {out}/metrics.json, scores.npz, per_class_f1.png, confusion.png{events}")
    return result


def parse_cli(argv: Optional[Sequence[str]] = None) -> tuple[ProbeConfig, bool]:
    """The configuration and ``--tensorboard/--no-tensorboard`` (how the run is logged, not what it computes)."""
    return cli.parse_with_tensorboard(ProbeConfig, "python -m trainer.probe", __doc__, argv,
                                      choices={"mode": MODES, "normalize": NORMALIZE, "encoder": ENCODERS})


def main(argv: Optional[Sequence[str]] = None) -> dict:
    def run(a):
        cfg, tensorboard = parse_cli(a)
        return probe(cfg, tensorboard=tensorboard)

    return common.run_cli(run, argv, "trainer.probe")


if __name__ == "__main__":
    main()
