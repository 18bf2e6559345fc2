"""Fine-tuning (and supervised training from random init): one random window per clip per epoch, early stopping.

Adam on one random window per training clip per epoch; with a validation split, stop after ``patience`` epochs
without a better validation clip macro F1 and keep the best epoch's weights (:func:`train_network`). Clip
scores from a classifier in eval mode over the clips' tiled windows (:func:`predict_clips`). Cost per epoch: one
forward/backward per training clip and one forward per validation window.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from .data import PackedStore
from .metrics import clip_metrics
from .model import Classifier
from .windows import (
    Windows,
    class_probs,
    clip_scores,
    read_windows,
    window_batches,
    window_starts,
)


def _loss(logits: Tensor, target: Tensor, multi: bool) -> Tensor:
    """Mean over examples; multi-label sums the classes' binary losses (one-vs-rest logistic regressions)."""
    if multi:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / logits.shape[0]
    return F.cross_entropy(logits, target)


@torch.no_grad()
def predict_clips(model: Classifier, store, clips, gains, windows, multi, window_batch, device) -> Tensor:
    """Clip scores ``(len(clips), C)`` of a classifier in eval mode, from the clips' tiled windows."""
    model.eval()
    clips = np.asarray(clips, np.int64)
    local, starts = window_starts(store.length[clips], windows.segment)
    probs = [class_probs(model(x), multi).double().cpu()
             for x in window_batches(store, clips[local], starts, gains, windows, window_batch, device)]
    return clip_scores(torch.cat(probs), local, len(clips))


def train_network(model: Classifier, windows: Windows, store: PackedStore, train_clips: np.ndarray,
                  val_clips: np.ndarray | None, gains: np.ndarray, multi: bool, cfg, seed: int,
                  device, writer=None) -> dict:
    """Adam on one random window per training clip per epoch; with ``val_clips``, stop after ``patience`` epochs
    without a better validation clip macro F1 and restore the best epoch's weights. Returns the record. ``writer``
    (TensorBoard, optional) gets ``<mode>/seed<seed>/train_loss`` (the epoch's mean batch loss) and
    ``.../val_macro_f1`` at step = epoch (1-based). ``cfg``: a :class:`~trainer.probe.ProbeConfig` (read: ``lr``,
    ``batch_size``, ``max_epochs``, ``patience``, ``window_batch``, ``mode``)."""
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
