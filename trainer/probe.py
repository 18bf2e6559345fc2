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

import argparse
import copy
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from augcl import PRESETS
from augcl.transforms import LogMel

from . import common, plots, tb
from .builtin import BuiltinConfig
from .data import NORMALIZE, PackedStore
from .metrics import clip_metrics
from .model import ENCODERS, Classifier, ContrastiveModel, build_encoder
from .pack import INT16_SCALE
from .splits import class_of, group_folds, validation_split

MODES = ("linear", "finetune", "supervised", "random")
LAMBDAS = tuple(np.logspace(-5, 1, 12).tolist())  # the L2 grid the linear probe's CV searches


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


# --- windows --------------------------------------------------------------------------------------------------

class Windows(nn.Module):
    """The paper's front end: ``(B, segment + 2 * context)`` samples -> ``(B, 1, n_mels, frames)`` log-mel."""

    def __init__(self, preset: str, sample_rate: int):
        super().__init__()
        config = PRESETS[preset](sample_rate)
        self.mel = LogMel(config.mel, sample_rate)
        self.frames = config.segment_frames
        self.segment = config.mel.segment_samples(self.frames)  # samples a window covers
        self.context = self.mel.context                          # extra samples each side
        self.width = self.segment + 2 * self.context

    def forward(self, wave: Tensor) -> Tensor:
        if wave.shape[-1] != self.width:
            raise ValueError(f"windows must be {self.width} samples wide, got {wave.shape[-1]}")
        return self.mel.from_context(wave).unsqueeze(1)


def window_starts(lengths: np.ndarray, segment: int) -> tuple[np.ndarray, np.ndarray]:
    """Every window of every clip: ``(clip index, start sample)``, both ``(W,)`` int64, clip by clip.

    ``k = max(1, ceil(n / segment))`` windows per clip of ``n`` samples, starts evenly spread over
    ``[0, max(n - segment, 0)]`` and rounded half up.
    """
    n = np.asarray(lengths, np.int64)
    k = np.maximum(1, -(-n // segment))
    clip = np.repeat(np.arange(len(n)), k)
    j = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)  # rank of the window within its clip
    span, kc = np.maximum(n - segment, 0)[clip], k[clip]
    start = np.where(kc > 1, (2 * j * span + (kc - 1)) // np.maximum(2 * (kc - 1), 1), 0)
    return clip, start.astype(np.int64)


def read_windows(store: PackedStore, clips: np.ndarray, starts: np.ndarray, gains: np.ndarray,
                 windows: Windows) -> Tensor:
    """Windows ``(B, width)`` float32 of the store's clips at ``starts`` (window sample 0 of the segment), with
    ``context`` samples each side, zeros beyond the clip's ends, scaled by each clip's gain."""
    c, width = windows.context, windows.width
    out = np.zeros((len(clips), width), np.float32)
    for row, (i, s) in enumerate(zip(clips.tolist(), starts.tolist(), strict=True)):
        x = store.clip(i)
        a, b = max(s - c, 0), min(s - c + width, len(x))
        if b > a:
            out[row, a - (s - c):b - (s - c)] = x[a:b]
    scale = (gains[clips] / INT16_SCALE).astype(np.float32)
    return torch.from_numpy(out * scale[:, None])


def tiles(store: PackedStore, windows: Windows, clips: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """The windows of ``clips`` (default all) of a store, as :func:`window_starts` (clip indices into the store)."""
    clips = np.arange(len(store)) if clips is None else np.asarray(clips, np.int64)
    which, starts = window_starts(store.length[clips], windows.segment)
    return clips[which], starts


def window_batches(store, clip, start, gains, windows, window_batch: int, device) -> Iterable[Tensor]:
    """Log-mels of the listed windows, at most ``window_batch`` at a time."""
    for a in range(0, len(clip), window_batch):
        wave = read_windows(store, clip[a:a + window_batch], start[a:a + window_batch], gains, windows)
        yield windows(wave.to(device))


@torch.no_grad()
def window_features(encoder: nn.Module, batches: Iterable[Tensor], desc: str = "features") -> Tensor:
    """h of every window, ``(W, out_dim)`` float32 on the CPU (eval mode)."""
    encoder.eval()
    return torch.cat([encoder(x).float().cpu() for x in tqdm(batches, desc=desc, leave=False)])


def clip_scores(window_probs: Tensor, clip: np.ndarray, n_clips: int) -> Tensor:
    """Mean of each clip's window probabilities: ``(W, C)`` and the windows' clip indices -> ``(n_clips, C)``."""
    index = torch.from_numpy(np.asarray(clip, np.int64))
    total = torch.zeros(n_clips, window_probs.shape[1], dtype=window_probs.dtype).index_add_(0, index, window_probs)
    count = torch.bincount(index, minlength=n_clips).clamp_min(1).to(window_probs.dtype)
    return total / count[:, None]


@torch.no_grad()
def recompute_batchnorm(encoder: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """Re-estimate every BatchNorm layer's running mean and variance on ``batches`` (a cumulative average over
    the batches), then put the encoder in eval mode. Only the BatchNorm layers run in train mode: dropout and
    stochastic depth stay off, so the statistics are those of the network used at evaluation."""
    bns = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    encoder.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for x in batches:
        encoder(x)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    return encoder.eval()


# --- the linear probe -----------------------------------------------------------------------------------------

def _loss(logits: Tensor, target: Tensor, multi: bool) -> Tensor:
    """Mean over examples; multi-label sums the classes' binary losses (one-vs-rest logistic regressions)."""
    if multi:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / logits.shape[0]
    return F.cross_entropy(logits, target)


def _probs(logits: Tensor, multi: bool) -> Tensor:
    return torch.sigmoid(logits) if multi else torch.softmax(logits, -1)


def fit_linear(x: Tensor, y: Tensor, n_classes: int, multi: bool, lam: float, init: Optional[tuple] = None,
               tol: float = 1e-6, max_iter: int = 1000) -> tuple[Tensor, Tensor, dict]:
    """Logistic regression on ``x`` ``(N, D)``: minimises ``mean loss + lam / 2 * ||W||^2`` (bias unpenalised) by
    full-batch L-BFGS (strong Wolfe) in float64 until the largest gradient entry is below ``tol`` or ``max_iter``.
    Returns ``W (C, D)``, ``b (C,)`` and ``{"iterations", "grad_norm", "objective"}``."""
    x = x.double()
    y = y.double() if multi else F.one_hot(y.long(), n_classes).double()
    n = x.shape[0]
    basis = None
    if n < x.shape[1]:  # the optimal W lies in x's row space (lam W = -residual^T x): solve in n dimensions, exactly
        _, _, basis = torch.linalg.svd(x, full_matrices=False)  # (n, D), orthonormal rows
        x = x @ basis.T
    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, device=x.device) if init is None else init[0].clone()
    if basis is not None and init is not None:
        w = w @ basis.T
    b = torch.zeros(n_classes, dtype=torch.float64, device=x.device) if init is None else init[1].clone()
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, history_size=20,
                            tolerance_grad=tol, tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure() -> Tensor:  # objective and its analytic gradient (no autograd: this runs ~10^5 times in a CV)
        logits = x @ w.T + b
        if multi:
            loss = F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / n
            residual = (torch.sigmoid(logits) - y) / n
        else:
            logp = torch.log_softmax(logits, 1)
            loss = -(logp * y).sum() / n
            residual = (logp.exp() - y) / n
        w.grad, b.grad = residual.T @ x + lam * w, residual.sum(0)
        return loss + 0.5 * lam * w.square().sum()

    with torch.no_grad():
        opt.step(closure)
        value = closure()
    grad_norm = torch.cat([w.grad.flatten(), b.grad]).norm().item()  # the same in D dimensions: W is in the span
    info = {"iterations": opt.state[opt._params[0]].get("n_iter", 0), "grad_norm": grad_norm,
            "objective": value.item()}
    return (w if basis is None else w @ basis), b, info


def standardise(h: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std (float64) of window features, std floored so constant features stay finite."""
    h = h.double()
    return h.mean(0), h.std(0).clamp_min(1e-6)


def linear_head(h: Tensor, y: Tensor, n_classes: int, multi: bool, lam: float, init=None) -> tuple[nn.Linear, dict]:
    """Fit on standardised ``h`` and fold the standardisation in: one plain float64 linear layer on h."""
    mu, sd = standardise(h)
    w, b, info = fit_linear((h.double() - mu) / sd, y, n_classes, multi, lam, init)
    head = nn.Linear(h.shape[1], n_classes, dtype=torch.float64, device=h.device)
    with torch.no_grad():
        head.weight.copy_(w / sd)
        head.bias.copy_(b - (w * (mu / sd)).sum(1))
    return head, info | {"w": w, "b": b}


def n_folds(groups: Sequence[str], classes: np.ndarray) -> int:
    """K = min(5, smallest class count, number of groups), at least 2."""
    counts = np.bincount(classes[classes >= 0]) if (classes >= 0).any() else np.array([0])
    smallest = counts[counts > 0].min(initial=len(classes))
    return max(2, min(5, int(smallest), len(set(groups))))


def select_lambda(h: Tensor, clip: np.ndarray, targets: Tensor, groups: Sequence[str], n_classes: int, multi: bool,
                  seed: int, lams: Sequence[float] = LAMBDAS) -> dict:
    """Grouped K-fold CV over ``lams`` on the training windows ``h`` (their clip indices ``clip``; per-clip
    ``targets`` and ``groups``): the lam with the best out-of-fold clip macro F1 (ties: the larger).
    Returns ``{"lam", "k", "cv_macro_f1" (per lam), "lams", "folds" (clip indices per fold)}``."""
    n_clips = len(targets)
    classes = class_of(targets, multi)
    k = n_folds(groups, classes)
    fold = group_folds(groups, classes, k, seed)
    y_win = targets[torch.from_numpy(clip)].to(h.device)
    scores = torch.zeros(len(lams), n_clips, n_classes, dtype=torch.float64)
    for f in range(k):
        held = fold[clip] == f
        fit_idx, held_idx = torch.from_numpy(np.flatnonzero(~held)), torch.from_numpy(np.flatnonzero(held))
        init = None
        for j in sorted(range(len(lams)), key=lambda j: -lams[j]):  # large lam first: warm starts down the path
            head, info = linear_head(h[fit_idx], y_win[fit_idx], n_classes, multi, lams[j], init)
            init = (info["w"], info["b"])
            with torch.no_grad():
                p = _probs(head(h[held_idx].double()), multi).cpu()
            scores[j] += clip_scores(p, clip[held_idx.numpy()], n_clips)  # each clip is held out once
    y_true = targets.numpy() if multi else targets.numpy().astype(np.int64)
    f1 = [clip_metrics(y_true, scores[j].numpy())["macro_f1"] for j in range(len(lams))]  # pooled out-of-fold
    best = max(range(len(lams)), key=lambda j: (f1[j], lams[j]))
    return {"lam": float(lams[best]), "k": k, "lams": list(map(float, lams)), "cv_macro_f1": f1,
            "folds": [np.flatnonzero(fold == f).tolist() for f in range(k)]}


# --- fine-tuning and supervised -------------------------------------------------------------------------------

@torch.no_grad()
def predict_clips(model: Classifier, store, clips, gains, windows, multi, window_batch, device) -> Tensor:
    """Clip scores ``(len(clips), C)`` of a classifier in eval mode, from the clips' tiled windows."""
    model.eval()
    clips = np.asarray(clips, np.int64)
    local, starts = window_starts(store.length[clips], windows.segment)
    probs = [_probs(model(x), multi).double().cpu()
             for x in window_batches(store, clips[local], starts, gains, windows, window_batch, device)]
    return clip_scores(torch.cat(probs), local, len(clips))


def train_network(model: Classifier, windows: Windows, store: PackedStore, train_clips: np.ndarray,
                  val_clips: Optional[np.ndarray], gains: np.ndarray, multi: bool, cfg: ProbeConfig, seed: int,
                  device, writer=None) -> dict:
    """Adam on one random window per training clip per epoch; with ``val_clips``, stop after ``patience`` epochs
    without a better validation clip macro F1 and restore the best epoch's weights. Returns the record. ``writer``
    (TensorBoard, optional) gets ``<mode>/seed<seed>/train_loss`` (the epoch's mean batch loss) and
    ``.../val_macro_f1`` at step = epoch (1-based)."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    targets = store.targets()
    y_val = None if val_clips is None else targets[val_clips].numpy()
    best = {"f1": -1.0, "epoch": 0, "state": None}
    curve = []
    bar = tqdm(range(cfg.max_epochs), desc=cfg.mode, leave=False)
    for epoch in bar:
        model.train()
        loss_sum, n_batches = 0.0, 0
        for batch in np.array_split(rng.permutation(train_clips), max(1, math.ceil(len(train_clips) / cfg.batch_size))):
            starts = np.floor(rng.random(len(batch)) * (np.maximum(store.length[batch] - windows.segment, 0) + 1))
            x = windows(read_windows(store, batch, starts.astype(np.int64), gains, windows).to(device))
            loss = _loss(model(x), targets[batch].to(device), multi)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum, n_batches = loss.detach() + loss_sum, n_batches + 1
        tag = f"{cfg.mode}/seed{seed}"
        if writer:
            writer.add_scalar(f"{tag}/train_loss", float(loss_sum) / n_batches, epoch + 1)
        if val_clips is None:
            continue
        scores = predict_clips(model, store, val_clips, gains, windows, multi, cfg.window_batch, device)
        f1 = clip_metrics(y_val if multi else y_val.astype(np.int64), scores.numpy())["macro_f1"]
        curve.append(f1)
        if writer:
            writer.add_scalar(f"{tag}/val_macro_f1", f1, epoch + 1)
        bar.set_postfix(loss=f"{loss.item():.3f}", val_f1=f"{f1:.3f}")
        if f1 > best["f1"]:
            best = {"f1": f1, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
        elif epoch + 1 - best["epoch"] >= cfg.patience:
            break
    bar.close()
    stopped = epoch + 1 if cfg.max_epochs else 0
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return {"stopped_epoch": stopped, "best_epoch": best["epoch"] if val_clips is not None else stopped,
            "best_val_macro_f1": best["f1"] if val_clips is not None else None, "val_macro_f1": curve}


# --- the run --------------------------------------------------------------------------------------------------

def load_encoder(checkpoint: str) -> tuple[nn.Module, str, str]:
    """The pretrained encoder f (the one the checkpoint names), its preset (mel front end) and its level
    normalisation (``"none"`` for checkpoints from before ``normalize`` existed)."""
    ckpt = common.read_checkpoint(checkpoint, "--checkpoint")
    cfg = ckpt["config"]
    model = ContrastiveModel(cfg["dim"], cfg["pooling"], cfg.get("bilinear_init", "identity"),
                             cfg.get("encoder", "efficientnet_b0"))
    model.load_state_dict(ckpt["model"])
    return model.encoder, cfg["preset"], cfg.get("normalize", "none")


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
            scores = clip_scores(_probs(head(test_h.double()), multi), test_clip, len(test))
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
    common.set_threads(cfg.threads)
    t0 = time.perf_counter()
    device = common.run_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
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


def parse_args(argv: Optional[Sequence[str]] = None) -> ProbeConfig:
    return parse_cli(argv)[0]


def parse_cli(argv: Optional[Sequence[str]] = None) -> tuple[ProbeConfig, bool]:
    """The configuration and ``--tensorboard/--no-tensorboard`` (how the run is logged, not what it computes)."""
    p = argparse.ArgumentParser(prog="python -m trainer.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(ProbeConfig):
        kind = {"int": int, "float": float, "str": str, "Optional[str]": str}[f.type]
        choices = {"mode": MODES, "normalize": NORMALIZE, "encoder": ENCODERS}.get(f.name)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, choices=choices)
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="also write TensorBoard events to OUT/tensorboard (needs: pip install 'augcl[tensorboard]')")
    args = vars(p.parse_args(argv))
    tensorboard = args.pop("tensorboard")
    return ProbeConfig(**args), tensorboard


def main(argv: Optional[Sequence[str]] = None) -> dict:
    def run(a):
        cfg, tensorboard = parse_cli(a)
        return probe(cfg, tensorboard=tensorboard)

    return common.run_cli(run, argv, "trainer.probe")


if __name__ == "__main__":
    main()
