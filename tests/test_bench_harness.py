"""benchmarks.harness, the one timing loop, on fake callables that log their calls: warm-up, interleaving, syncs, one
time per round per callable (no wall-clock value is asserted)."""
import pytest

from benchmarks import harness


def _logged(names, events):
    return {n: (lambda n=n: events.append(n) or n) for n in names}


def test_warm_up_rounds_come_first_in_order_then_every_callable_once_a_round():
    events = []
    times = harness.time_calls(_logged("abc", events), 4, warmup=2, order="fixed",
                               sync_fn=lambda: events.append("sync"))
    warm, timed = events[:12], events[12:]
    assert warm == ["a", "sync", "b", "sync", "c", "sync"] * 2
    assert timed == ["sync", "a", "sync", "sync", "b", "sync", "sync", "c", "sync"] * 4
    assert list(times) == ["a", "b", "c"] and all(len(ts) == 4 for ts in times.values())
    assert all(t >= 0 for ts in times.values() for t in ts)


def test_random_order_is_seeded_and_visits_every_callable_once_a_round():
    def rounds(seed):
        events = []
        harness.time_calls(_logged("abcde", events), 6, warmup=0, seed=seed)
        return [events[k:k + 5] for k in range(0, 30, 5)]

    r = rounds(3)
    assert all(sorted(one) == list("abcde") for one in r)
    assert rounds(3) == r and len({tuple(one) for one in r}) > 1  # seeded, and not the same order every round


def test_rotate_starts_each_round_one_callable_later():
    events = []
    harness.time_calls(_logged("abc", events), 4, warmup=0, order="rotate")
    assert events == list("abc" "bca" "cab" "abc")


def test_steady_calls_each_callable_untimed_right_before_its_timed_call():
    events = []
    harness.time_calls(_logged("ab", events), 2, warmup=1, order="fixed", steady=True,
                       sync_fn=lambda: events.append("sync"))
    assert events[4:] == ["a", "sync", "a", "sync", "b", "sync", "b", "sync"] * 2


def test_check_sees_the_last_warm_up_output_of_each_callable_and_can_stop_the_run():
    seen = []
    counter = {"a": 0}

    def a():
        counter["a"] += 1
        return counter["a"]

    harness.time_calls({"a": a, "b": lambda: "b"}, 1, warmup=3, check=lambda n, out: seen.append((n, out)))
    assert seen == [("a", 3), ("b", "b")]

    def refuse(name, out):
        raise RuntimeError(f"{name} is wrong")

    with pytest.raises(RuntimeError, match="a is wrong"):
        harness.time_calls({"a": a}, 1, check=refuse)


def test_settings_are_applied_outside_the_timed_calls_and_the_warm_up_runs_at_the_last():
    events = []
    settings = {n: (lambda n=n: events.append(f"set {n}")) for n in ("1", "2")}
    times = harness.time_settings(_logged("ab", events), settings, 2, warmup=1, order="fixed")
    assert events == ["set 2", "a", "b"] + ["set 1", "a", "b", "set 2", "a", "b"] * 2
    assert set(times) == {"1", "2"} and all(len(ts) == 2 for by in times.values() for ts in by.values())


def test_one_callable_timed_consecutively_and_its_stats():
    events = []
    ts = harness.time_one(lambda: events.append("x"), 5, warmup=2)
    assert events == ["x"] * 7 and len(ts) == 5
    s = harness.stats([3.0, 1.0, 2.0])
    assert s == {"median_s": 2.0, "min_s": 1.0, "max_s": 3.0}
    with pytest.raises(ValueError, match="order"):
        harness.time_calls({"a": lambda: None}, 1, order="sorted")


def test_sync_is_a_no_op_on_the_cpu_and_cuda_synchronize_on_a_cuda_device(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    harness.sync("cpu")
    assert calls == []
    harness.time_one(lambda: None, 2, warmup=1, device="cuda")
    assert calls == [torch.device("cuda")] * (1 + 2 * 2)
