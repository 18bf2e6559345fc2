"""benchmarks.report, the one renderer, on hand-made rows (exact table text, JSON round trip, a nonblank PNG), and every
committed results page re-rendered from its committed JSON: the page its recorded command writes."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from benchmarks import report

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
ROWS = [{"chain": "augcl", "median (s/batch)": 0.0312, "ratio": 1.0},
        {"chain": "torchaudio", "median (s/batch)": 0.08162, "ratio": 2.6137, "note": "crop first"}]


def test_table_text_is_exact():
    assert report.table(ROWS, formats={"median (s/batch)": "{:.3f}", "ratio": "{:.2f}x"}) == [
        "| chain | median (s/batch) | ratio |",
        "| --- | --- | --- |",
        "| augcl | 0.031 | 1.00x |",
        "| torchaudio | 0.082 | 2.61x |"]


def test_table_columns_headers_missing_cells_and_function_formats():
    lines = report.table(ROWS, ["chain", "note", "median (s/batch)"], {"median (s/batch)": lambda s: f"{s * 1e3:.1f}"},
                         headers=["chain", "note", "ms"])
    assert lines == ["| chain | note | ms |", "| --- | --- | --- |", "| augcl | - | 31.2 |",
                     "| torchaudio | crop first | 81.6 |"]


def test_write_round_trips_the_json_and_links_a_nonblank_png(tmp_path):
    res = {"batch": 4, "machine": {"cpu": "x"}, "results": {r["chain"]: r for r in ROWS}}

    def plot(r, png):
        report.bar_chart(png, ["a", "b"], {name: [row["ratio"], 2 * row["ratio"]] for name, row in r["results"].items()},
                         ylabel="ratio", title="hand-made")

    text = report.write(res, "# page\n", tmp_path / "out", "page", plot, "ratios")
    assert text == "# page\n\n![ratios](page.png)\n" == (tmp_path / "out" / "page.md").read_text()
    assert json.loads((tmp_path / "out" / "page.json").read_text()) == res
    import matplotlib.image

    png = tmp_path / "out" / "page.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and float(np.std(pixels[..., :3])) > 0.01  # not blank
    report.write(res, "# no plot\n", tmp_path / "bare", "bare")
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == ["bare.json", "bare.md"]


def test_page_names_and_the_machine_line():
    assert report.page_name("augment", "cpu") == "augment" and report.page_name("augment", "cuda:1") == "augment_cuda"
    m = report.machine_info("cpu")
    assert set(m) >= {"cpu", "cores", "torch", "python", "device"} and "gpu" not in m
    assert report.machine_text({"cpu": "C", "cores": 2, "torch": "2.x"}) == "Machine: C, 2 threads; torch 2.x"
    assert report.machine_text({"cpu": "C", "cores": 2, "torch": "2.x", "gpu": "G"}) == "Machine: C, 2 threads, G; torch 2.x"


def _command(stem: str) -> str:
    return re.search(r"^`(.*)`$", (DOCS / f"{stem}.md").read_text(), re.MULTILINE).group(1)


def _res(stem: str) -> dict:
    return json.loads((DOCS / f"{stem}.json").read_text())


@pytest.mark.parametrize("stem", ["augment", "stretch", "threads", "train", "throughput", "chunks", "lengths", "data",
                                  "roofline", "stretch_fidelity", "vocoder_chunks"])
def test_committed_pages_are_what_the_renderer_writes_from_their_json(stem, tmp_path):
    """Each page in docs/benchmarks/ is, to the byte, what its benchmark renders from the JSON written beside it."""
    from benchmarks import (
        augment,
        data,
        roofline,
        stretch,
        stretch_fidelity,
        threads,
        throughput,
        train,
    )

    if not (DOCS / f"{stem}.json").exists():
        pytest.skip(f"no committed {stem}.json")
    res = _res(stem)
    command = None if stem == "stretch_fidelity" else _command(stem)
    text = {"augment": lambda: augment.write(res, tmp_path, "cpu"),
            "stretch": lambda: stretch.write(res, tmp_path, command),
            "threads": lambda: threads.write(res, tmp_path, command),
            "train": lambda: train.write(res, tmp_path, "cpu"),
            "throughput": lambda: throughput.page(res, command, "cpu"),
            "chunks": lambda: throughput.page(res, command, "cpu", chunks=True),
            "lengths": lambda: throughput.page(res, command, "cpu", lengths=True),
            "vocoder_chunks": lambda: throughput.page(res, command, "cpu", vocoder=True),
            "data": lambda: data.page(res, command),
            "roofline": lambda: roofline.page(res, command),
            "stretch_fidelity": lambda: stretch_fidelity.page(res)}[stem]()
    assert text == (DOCS / f"{stem}.md").read_text()
