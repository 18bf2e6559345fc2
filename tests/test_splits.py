"""trainer.splits: the one grouped splitter, pinned to the draws the published tables were computed with."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainer import splits


def _case1():
    rng = np.random.default_rng(7)
    classes = np.repeat(np.arange(3), 8)
    return [f"c{c}-g{k // 2}" for c, k in zip(classes, rng.permutation(24))], classes


def _case2():  # mixed-class groups and an unlabeled clip (-1)
    return ["a", "a", "b", "c", "c", "d", "e", "f", "f", "g"], np.array([0, 1, 1, -1, 0, 2, 2, 0, 0, 1])


def _case3():
    rng = np.random.default_rng(3)
    classes = rng.integers(0, 5, 60)
    return [f"r{g}" for g in rng.integers(0, 25, 60)], classes


CASES = {"1": _case1, "2": _case2, "3": _case3}

# computed at ba874d8 with trainer.probe.group_folds / validation_split (the draws behind docs/ablation_*.md)
FOLDS = {
    ("1", 2, 0): "110010101011001101101000", ("1", 2, 1): "010001011100011001011100",
    ("1", 3, 0): "212020012211010102021221", ("1", 3, 1): "110010221010221022001012",
    ("1", 5, 0): "012100341323204332004041", ("1", 5, 1): "411043203402312242304010",
    ("2", 2, 0): "0000001111", ("2", 2, 1): "0010001110", ("2", 3, 0): "2210002110",
    ("2", 3, 1): "2200002111", ("2", 5, 0): "2240010113", ("2", 5, 1): "2230010114",
    ("3", 2, 0): "110010011011001101001110010101110110110100100110110001110110",
    ("3", 2, 1): "001101111100100101110001101000111001101001001000000111000010",
    ("3", 3, 0): "121201011000111111102001020002112022001202220211002100222011",
    ("3", 3, 1): "201001022200112010120211102212200100211011002021010102000021",
    ("3", 5, 0): "404332333033404202200412210412324103012012000110310430000331",
    ("3", 5, 1): "002414111011200303400324320344130204224041030220123212003111",
}
VALIDATION = {
    ("1", 0): "100011000000010000110100", ("1", 1): "000100010010000000010101", ("1", 2): "001001001000000001001000",
    ("2", 0): "0001101000", ("2", 1): "0001101000", ("2", 2): "0001110000",
    ("3", 0): "010000000100010010011000001000000010100100111001001001111000",
    ("3", 1): "110000000100011010011000001000001010000100101001000000110000",
    ("3", 2): "001000000000100000000010100000000100010001000000010100000001",
}


@pytest.mark.parametrize("case, k, seed", sorted(FOLDS))
def test_group_folds_draws_are_pinned(case, k, seed):
    groups, classes = CASES[case]()
    assert "".join(map(str, splits.group_folds(groups, classes, k, seed))) == FOLDS[case, k, seed]


@pytest.mark.parametrize("case, seed", sorted(VALIDATION))
def test_validation_split_draws_are_pinned(case, seed):
    groups, classes = CASES[case]()
    assert "".join(str(int(v)) for v in splits.validation_split(groups, classes, seed)) == VALIDATION[case, seed]


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 5)), min_size=1, max_size=30),
       st.floats(0.1, 0.6), st.integers(0, 3))
def test_held_out_keeps_groups_whole_and_every_class_on_both_sides_where_it_can(spec, fraction, seed):
    """spec: (class, clips) per group (one class a group). With keep_every_class: every class keeps a clip, and every
    class of two or more groups has one held out; the mask is fold 0 but for one group per class that needed it."""
    groups = [f"g{k}" for k, (_, n) in enumerate(spec) for _ in range(n)]
    labels = np.asarray([c for c, n in spec for _ in range(n)])
    held = splits.held_out(groups, labels, fraction, seed, keep_every_class=True)
    keep = np.flatnonzero(~held)
    assert not {groups[i] for i in keep} & {groups[i] for i in np.flatnonzero(held)}
    k = min(max(2, round(1 / fraction)), len(spec))
    plain = splits.held_out(groups, labels, fraction, seed)  # without the flag: fold 0 of the same folds
    assert (plain == (splits.group_folds(groups, labels, k, seed) == 0)).all()
    for c in set(labels.tolist()):
        assert np.sum(labels[keep] == c) >= 1
        n_groups = sum(1 for cls, _ in spec if cls == c)
        if n_groups >= 2:
            assert np.sum(labels[held] == c) >= 1
        held_groups = len({groups[i] for i in np.flatnonzero(plain & (labels == c))})
        assert abs(held_groups - n_groups / k) < 1  # dealt round-robin: floor or ceil of the class's share
        moved = {groups[i] for i in np.flatnonzero((plain != held) & (labels == c))}
        assert len(moved) <= 1  # one group moved per class at most, and only where the class needed it
        assert not moved or plain[labels == c].all() or not plain[labels == c].any()


def test_held_out_tries_each_group_of_a_class_until_one_takes_no_class_s_last_kept_clip(monkeypatch):
    """Class 0 has groups a, b, c, none in fold 0; its last clip's group (c) also holds the only clip of class 1, so
    holding c out would empty class 1's training side: the next one (b) is held out instead."""
    groups = np.array(["a", "b", "c", "c", "d"])
    classes = np.array([0, 0, 1, 0, 2])
    monkeypatch.setattr(splits, "group_folds", lambda g, c, k, seed: np.array([1, 1, 1, 1, 0]))
    held = splits.held_out(groups, classes, 0.5, 0, keep_every_class=True)
    assert held.tolist() == [False, True, False, False, False]  # d went back: class 2 had no other clip


def test_held_out_checks_its_arguments():
    with pytest.raises(ValueError, match="fraction"):
        splits.held_out(["a", "b"], np.array([0, 1]), 1.0, 0)
    with pytest.raises(ValueError, match="one entry per clip"):
        splits.held_out(["a", "b"], np.array([0]), 0.3, 0)
