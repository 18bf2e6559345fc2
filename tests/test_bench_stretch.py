"""``python -m benchmarks.stretch`` runs end to end at tiny sizes and writes every contender's figures
(no timing is asserted)."""
import json
import math

import pytest

pytest.importorskip("audiomentations")
pytest.importorskip("torchaudio")

from benchmarks import stretch  # noqa: E402


def test_quick_run_writes_every_contender_with_positive_times_and_finite_fidelity(tmp_path):
    stretch.main(["--quick", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "stretch.json").read_text())
    contenders = set(stretch.CHAINS)
    assert set(res["results"]) == set(stretch.SCENARIOS)
    for scenario in res["results"].values():
        assert set(scenario["threads"]) == {"1"}
        times = scenario["threads"]["1"]
        assert set(times) == contenders
        assert all(r["median_s"] > 0 and math.isfinite(r["ratio_to_augcl"]) for r in times.values())
        assert times["augcl[auto]"]["ratio_to_augcl"] == 1.0
    assert set(res["quality"]) == contenders
    assert all(math.isfinite(v) for q in res["quality"].values() for v in q.values())
    text = (tmp_path / "stretch.md").read_text()
    assert "`python -m benchmarks.stretch --batch 4" in text and "| audiomentations[signalsmith] |" in text
    assert (tmp_path / "stretch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


DEVICE_ROWS = {"augcl[torch]", "augcl[kernels]", "torchaudio", "audiomentations[signalsmith] (CPU)",
               "audiomentations[librosa] (CPU)"}


def test_device_run_on_the_cpu_writes_its_rows_against_augcl_torch(tmp_path):
    """``--device-run``: the rows, anchor, single setting and page of ``--device cuda``, run on the CPU (no GPU here);
    augcl[kernels] is the CPU's Numba kernel, the dry run's stand-in for numba-cuda."""
    stretch.main(["--device-run", "--quick", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "stretch.json").read_text())
    assert res["device_run"] and res["device"] == "cpu" and res["anchor"] == "augcl[torch]"
    assert res["settings"] == ["cpu"] and res["skipped"] == {}
    for scenario in res["results"].values():
        assert set(scenario["threads"]) == {"cpu"}
        times = scenario["threads"]["cpu"]
        assert set(times) == DEVICE_ROWS
        assert times["augcl[torch]"]["ratio_to_augcl"] == 1.0
        assert all(r["median_s"] > 0 and math.isfinite(r["ratio_to_augcl"]) for r in times.values())
    assert set(res["quality"]) == DEVICE_ROWS and set(res["chains"]) == DEVICE_ROWS
    assert res["quality"]["augcl[torch]"]["level_err_db_max"] < 1.5  # the device chain's output, measured on the host
    text = (tmp_path / "stretch.md").read_text()
    assert "| chain | ms/batch | clips/s | x augcl[torch] |" in text and "| audiomentations[librosa] (CPU) |" in text
    assert "--device cpu --device-run --batch 4" in text and "`auto` is the augcl[kernels] row" in text
    res["skipped"] = {"augcl[kernels]": "no kernel here"}  # a device where the kernel does not run: said, not hidden
    for scenario in res["results"].values():
        del scenario["threads"]["cpu"]["augcl[kernels]"]
    del res["quality"]["augcl[kernels]"], res["chains"]["augcl[kernels]"]
    text = stretch.write(res, tmp_path / "skipped", "cmd")
    assert "* `augcl[kernels]`: not run: no kernel here" in text and "augcl[kernels] at" not in text


def test_timed_calls_are_synchronized_at_both_ends(tmp_path, monkeypatch):
    """The device run's timing loop on the CPU with ``sync`` injected: every timed call sits between two syncs, each
    warm-up call is followed by one; every chain gets its inputs on its own device."""
    import numpy as np
    import torch

    events = []
    real_chains = stretch.chains

    def logged_chains(*args):
        rows = real_chains(*args)
        return {name: row._replace(call=lambda x, rates, seed, row=row, name=name: (
            events.append((name, x.device.type, rates.device.type)), row.call(x, rates, seed))[1])
            for name, row in rows.items()}

    monkeypatch.setattr(stretch, "chains", logged_chains)
    x = torch.from_numpy(np.stack([b.wave for b in stretch.make_bursts(2, 1, 0.5)]))
    repeats = 2
    r = stretch.time_scenario(stretch.RATE_SET, x, {"cpu": lambda: None}, repeats, 0, "cpu", True,
                              sync=lambda: events.append("sync"))
    names = set(r["threads"]["cpu"])
    assert names == DEVICE_ROWS
    n = len(names)
    warm, timed = events[: 2 * n], events[2 * n:]
    assert warm[1::2] == ["sync"] * n and {e[0] for e in warm[::2]} == names
    assert len(timed) == 3 * n * repeats
    for k in range(0, len(timed), 3):
        assert timed[k] == timed[k + 2] == "sync" and timed[k + 1][0] in names
    assert all(e[1:] == ("cpu", "cpu") for e in events if e != "sync")
    assert all(len(v["times_s"]) == repeats for v in r["threads"]["cpu"].values())


def test_cuda_rows_anchor_on_augcl_torch_and_name_why_the_kernels_are_left_out():
    """On CUDA ``auto`` runs the kernels only where ``AUTO_DEVICES`` says so; the rows are torch and, where it runs,
    kernels; without a GPU (CI) the kernels row is left out with augcl's own reason."""
    import torch

    from augcl import kernels

    rows, skipped, anchor = stretch.augcl_rows(torch.device("cuda"), True)
    assert anchor == "augcl[torch]" and rows["augcl[torch]"] == "torch"
    why = kernels.unavailable("cuda")
    assert (skipped == {"augcl[kernels]": why} and "augcl[kernels]" not in rows) if why else (
        skipped == {} and rows["augcl[kernels]"] == "kernels")
    assert stretch._auto_backend(torch.device("cuda")) == ("kernels" if "cuda" in kernels.AUTO_DEVICES and not why
                                                          else "torch")
    assert stretch.augcl_rows(torch.device("cpu"), False) == ({"augcl[auto]": "auto", "augcl[torch]": "torch"}, {},
                                                              "augcl[auto]")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            stretch.main(["--device", "cuda", "--quick"])
