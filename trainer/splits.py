"""Grouped, stratified splits: one algorithm for the probe's CV folds, its validation split and ESC-50's test split.

A *group* is a source recording: clips cut from one recording share a group and always land on the same side.
:func:`group_folds` deals the groups into ``k`` folds, stratified by class; :func:`held_out` holds out one fold
(about ``fraction`` of each class's groups). Cost: one sort of the groups, O(n log n) in the clips; held_out's
``keep_every_class`` repair adds passes over the clips per class, O(classes x clips) (400 clips: negligible).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor


def class_of(targets: Tensor, multi: bool) -> np.ndarray:
    """One class per clip for stratifying (multi-label: its first label, -1 if none)."""
    if not multi:
        return targets.numpy().astype(np.int64)
    t = targets.numpy()
    return np.where(t.any(1), t.argmax(1), -1)


def group_folds(groups: Sequence[str], classes: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold in ``[0, k)`` per clip; a group's clips share a fold. Groups are shuffled (``seed``), ordered by
    their first clip's class and dealt round-robin, so each fold gets about 1/k of each class's groups."""
    names, gid = np.unique(np.asarray(groups), return_inverse=True)
    gclass = np.full(len(names), -1, np.int64)
    gclass[gid[::-1]] = classes[::-1]  # a group's first clip's class
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(gclass[order], kind="stable")]
    gfold = np.empty(len(names), np.int64)
    gfold[order] = np.arange(len(names)) % k
    return gfold[gid]


def held_out(groups: Sequence[str], classes: np.ndarray, fraction: float, seed: int,
             keep_every_class: bool = False) -> np.ndarray:
    """A boolean mask of held-out clips: fold 0 of :func:`group_folds` with ``k = round(1 / fraction)`` (at least
    2, at most the number of groups), i.e. about ``1 / k`` of each class's groups.

    ``keep_every_class`` (a test split): every class on both sides where its groups allow. A class of two or more
    groups none of which fell in fold 0 (the round-robin deal can skip a class of few groups) has one of them held
    out: the group of its last clip, else of the clip before, ..., the first that takes no class's last kept clip.
    Then a class whose every clip is held out (a class of one group, or one whose clips sit in groups of other
    classes) gets the group of its first clip back, so every class keeps at least one clip for training. The folds themselves are never redrawn: without the
    flag the mask is fold 0.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    groups, classes = np.asarray(groups), np.asarray(classes, np.int64)
    if len(groups) != len(classes):
        raise ValueError(f"groups ({len(groups)}) and classes ({len(classes)}) must have one entry per clip")
    k = min(max(2, round(1 / fraction)), len(set(groups.tolist())))
    held = group_folds(groups, classes, k, seed) == 0
    if keep_every_class:
        labelled = np.unique(classes[classes >= 0])
        for c in labelled:
            members = np.flatnonzero(classes == c)
            if held[members].any() or len(set(groups[members].tolist())) < 2:
                continue
            for name in dict.fromkeys(groups[members[::-1]].tolist()):  # its groups, from its last clip's back
                group = groups == name
                trial = held | group
                if all((~trial[classes == d]).any() for d in np.unique(classes[group & (classes >= 0)])):
                    held = trial
                    break
        for c in labelled:
            members = np.flatnonzero(classes == c)
            if held[members].all():  # giving a group back only adds clips to the other side: earlier classes stay
                held[groups == groups[members[0]]] = False
    return held


def validation_split(groups: Sequence[str], classes: np.ndarray, seed: int, fraction: float = 0.2) -> np.ndarray:
    """A boolean mask of validation clips (about ``fraction``, grouped, stratified where possible)."""
    return held_out(groups, classes, fraction, seed)
