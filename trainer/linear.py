"""The linear probe: logistic regression on frozen window features, its L2 weight chosen by grouped K-fold CV.

Multinomial (one-vs-rest for multi-label) logistic regression solved to convergence by full-batch L-BFGS in
float64 on standardised features (:func:`fit_linear`, :func:`linear_head`); ``lam`` is chosen over
:data:`LAMBDAS` by grouped, stratified K-fold cross-validation on the training split only, scored by the
pooled out-of-fold clip macro F1 (:func:`select_lambda`). Cost: K x 12 fits per seed, warm-started down the
``lam`` path; each fit is O(iterations x N x D x C) (solved in ``min(N, D)`` dimensions).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .metrics import clip_metrics
from .splits import class_of, group_folds
from .windows import class_probs, clip_scores

LAMBDAS = tuple(np.logspace(-5, 1, 12).tolist())  # the L2 grid the linear probe's CV searches


def fit_linear(x: Tensor, y: Tensor, n_classes: int, multi: bool, lam: float, init: tuple | None = None,
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
                p = class_probs(head(h[held_idx].double()), multi).cpu()
            scores[j] += clip_scores(p, clip[held_idx.numpy()], n_clips)  # each clip is held out once
    y_true = targets.numpy() if multi else targets.numpy().astype(np.int64)
    f1 = [clip_metrics(y_true, scores[j].numpy())["macro_f1"] for j in range(len(lams))]  # pooled out-of-fold
    best = max(range(len(lams)), key=lambda j: (f1[j], lams[j]))
    return {"lam": float(lams[best]), "k": k, "lams": list(map(float, lams)), "cv_macro_f1": f1,
            "folds": [np.flatnonzero(fold == f).tolist() for f in range(k)]}
