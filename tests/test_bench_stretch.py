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
