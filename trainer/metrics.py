"""Clip-level metrics of the paper, for single-label and multi-label tasks (numpy; checked against scikit-learn).

* macro F1: the paper's "average F1", the unweighted mean of per-class F1 over all classes;
* wAP: the paper's weighted precision, per-class precision weighted by the true instances of each class
  (scikit-learn's ``precision_score(average="weighted")``);
* mAP: mean over classes with at least one positive of the average precision of the scores (AudioSet's mAP);
* accuracy (single-label);
* confusion matrix normalised over the true labels (the paper's Fig. 4): row i is how clips of class i were
  predicted. For multi-label tasks, row i counts the predicted labels of clips that carry label i.

A class never predicted has precision 0, and a class with no true instance has F1 0 (scikit-learn's
``zero_division=0``).
"""
from __future__ import annotations

import numpy as np


def _as_arrays(y_true, scores) -> tuple[np.ndarray, np.ndarray, bool]:
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, C), got shape {scores.shape}")
    multi = y_true.ndim == 2
    if multi and y_true.shape != scores.shape:
        raise ValueError(f"multi-label y_true {y_true.shape} and scores {scores.shape} must have the same shape")
    if not multi and (y_true.shape != (scores.shape[0],) or y_true.min(initial=0) < 0
                      or y_true.max(initial=0) >= scores.shape[1]):
        raise ValueError("single-label y_true must be (N,) class indices in [0, C)")
    return y_true, scores, multi


def predictions(scores: np.ndarray, multi_label: bool, threshold: float = 0.5) -> np.ndarray:
    """One-hot (single-label: argmax) or thresholded (multi-label) predictions, (N, C) booleans."""
    if multi_label:
        return scores >= threshold
    return np.eye(scores.shape[1], dtype=bool)[scores.argmax(1)]


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """AP of one class: mean precision at the rank of each positive (ties broken as scikit-learn does)."""
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    # precision/recall at each distinct threshold, as sklearn.metrics.average_precision_score
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall_step = np.diff(np.r_[0, tp]) / max(tp[-1], 1)
    return float(np.sum(recall_step * precision))


def clip_metrics(y_true, scores, class_names=None, threshold: float = 0.5) -> dict:
    """Every metric above from true labels and per-class scores (probabilities)."""
    y_true, scores, multi = _as_arrays(y_true, scores)
    n, c = scores.shape
    truth = y_true.astype(bool) if multi else np.eye(c, dtype=bool)[y_true]
    pred = predictions(scores, multi, threshold)
    tp = (truth & pred).sum(0).astype(np.float64)
    fp = (~truth & pred).sum(0).astype(np.float64)
    fn = (truth & ~pred).sum(0).astype(np.float64)
    support = truth.sum(0).astype(np.float64)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(c), where=(2 * tp + fp + fn) > 0)
    precision = np.divide(tp, tp + fp, out=np.zeros(c), where=(tp + fp) > 0)
    ap = np.array([average_precision(truth[:, k], scores[:, k]) if support[k] > 0 else np.nan for k in range(c)])
    confusion = truth.T.astype(np.float64) @ pred.astype(np.float64)
    confusion = np.divide(confusion, support[:, None], out=np.zeros((c, c)), where=support[:, None] > 0)
    names = list(class_names) if class_names is not None else [str(k) for k in range(c)]
    out = {
        "n_clips": int(n),
        "multi_label": bool(multi),
        "macro_f1": float(f1.mean()),
        "wAP": float(np.sum(precision * support) / support.sum()) if support.sum() > 0 else 0.0,
        "mAP": float(np.nanmean(ap)) if np.any(support > 0) else 0.0,
        "per_class_f1": dict(zip(names, f1.tolist(), strict=True)),
        "per_class_precision": dict(zip(names, precision.tolist(), strict=True)),
        "per_class_support": dict(zip(names, support.astype(int).tolist(), strict=True)),
        "confusion_normalized": confusion.tolist(),
        "classes": names,
    }
    if not multi:
        out["accuracy"] = float(np.mean(scores.argmax(1) == y_true))
    return out
