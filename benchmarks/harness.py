"""The one timing loop of ``benchmarks/``: named callables timed in interleaved rounds, after warm-up, between syncs.

Every benchmark that times something calls :func:`time_calls` (or :func:`time_settings`, when the rounds also sweep a
setting such as a thread count), so that warm-up, ordering and synchronisation are written once:

* warm-up: ``warmup`` untimed rounds first, each callable once a round in the dict's order (then, after each call, a
  sync); ``check(name, output)`` sees each callable's output of the last warm-up round;
* rounds: every callable once a round, in a new seeded random order each round (``order="random"``: a drift of the
  machine hits all alike), in the dict's order (``"fixed"``: steps that feed each other) or in the dict's order
  rotated by one each round (``"rotate"``: no callable always first);
* ``steady``: an untimed call of the same callable right before each timed one, so each is timed in its own steady
  state (the allocator's, the caches'), not in the state the previous callable left;
* each timed call sits between two syncs (``torch.cuda.synchronize`` on a CUDA device, nothing on a CPU), so the
  clock reads finished work and the device is idle when it starts.

The results are seconds per call, one per round per callable; :func:`stats` gives their median and spread.
Costs: the loop adds two ``perf_counter`` reads and two syncs a call.
"""
from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping
from functools import partial

import torch

ORDERS = ("random", "fixed", "rotate")


def sync(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a timer reads finished work."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _round_order(names: list, order: str, k: int, rng: random.Random) -> list:
    if order == "random":
        return rng.sample(names, len(names))
    if order == "rotate":
        k %= len(names)
        return names[k:] + names[:k]
    return names


def time_settings(calls: Mapping[str, Callable[[], object]], settings: Mapping[str, Callable[[], None]],
                  repeats: int, *, warmup: int = 1, device="cpu", sync_fn: Callable[[], None] | None = None,
                  order: str = "random", seed: int = 0, steady: bool = False,
                  check: Callable[[str, object], None] | None = None) -> dict:
    """Seconds of every call of ``calls`` at every setting, ``{setting: {name: [one per round]}}``.

    ``settings``: label -> a function that applies it (e.g. a thread count), outside the timed region. Each round
    visits every setting once and, within it, every callable once, both in the round's ``order``. The warm-up runs at
    the last setting. ``sync_fn`` (default: :func:`sync` of ``device``) runs right before and after every timed call
    and after every warm-up call. See the module docstring for ``warmup``, ``steady`` and ``check``."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if not calls or not settings:
        raise ValueError("time_settings needs at least one callable and one setting")
    sync_fn = sync_fn or partial(sync, device)
    list(settings.values())[-1]()
    for k in range(warmup):
        for name, fn in calls.items():
            out = fn()
            sync_fn()
            if check is not None and k == warmup - 1:
                check(name, out)
    times = {label: {name: [] for name in calls} for label in settings}
    rng = random.Random(seed)
    for k in range(repeats):
        for label in _round_order(list(settings), order, k, rng):
            settings[label]()
            for name in _round_order(list(calls), order, k, rng):
                fn = calls[name]
                if steady:
                    fn()
                sync_fn()
                t0 = time.perf_counter()
                fn()
                sync_fn()
                times[label][name].append(time.perf_counter() - t0)
    return times


def time_calls(calls: Mapping[str, Callable[[], object]], repeats: int, **kw) -> dict:
    """Seconds of every call of ``calls``, ``{name: [one per round]}``: :func:`time_settings` with no setting."""
    return time_settings(calls, {"": lambda: None}, repeats, **kw)[""]


def time_one(fn: Callable[[], object], repeats: int, **kw) -> list:
    """Seconds of ``repeats`` consecutive calls of ``fn`` (after ``warmup`` ones, default 1)."""
    return time_calls({"call": fn}, repeats, **kw)["call"]


def median_s(fn: Callable[[], object], repeats: int, **kw) -> float:
    """The median of :func:`time_one`."""
    return statistics.median(time_one(fn, repeats, **kw))


def stats(times_s: list) -> dict:
    """``median_s``, ``min_s`` and ``max_s`` of one callable's times."""
    return {"median_s": statistics.median(times_s), "min_s": min(times_s), "max_s": max(times_s)}
