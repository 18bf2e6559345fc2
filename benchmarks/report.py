"""The one renderer of ``benchmarks/``: rows (lists of dicts) into markdown tables, the results into JSON, bar charts.

A benchmark measures and returns its results (a dict: metadata plus results); its page is a few lines of its own
words around :func:`table` of its rows; :func:`write` puts ``<name>.json``, ``<name>.md`` and, given a plot,
``<name>.png`` (linked at the end of the page) into the results folder. :func:`bar_chart` draws grouped bars (one
group per x tick, one bar per series), :func:`figure` any other chart with the same size, resolution and backend.
:func:`machine_info` and :func:`machine_text` record the machine, as every page does.
"""
from __future__ import annotations

import json
import platform
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

DPI = 90


def machine_info(device) -> dict:
    """The CPU's model, torch's thread count, torch's and Python's versions, the device (and the GPU's name)."""
    device = torch.device(device)
    info = {"cpu": _cpu_model(), "cores": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_text(m: dict) -> str:
    """``Machine: <cpu>, <n> threads[, <gpu>]; torch <version>`` for a results page."""
    return f"Machine: {m['cpu']}, {m['cores']} threads" + (f", {m['gpu']}" if "gpu" in m else "") + f"; torch {m['torch']}"


def cell(value, fmt: str | Callable | None = None) -> str:
    """One table cell: ``fmt`` a format string with one ``{}`` field (``"{:.2f}x"``), a function, or None (str)."""
    if value is None:
        return "-"
    if fmt is None:
        return str(value)
    return fmt(value) if callable(fmt) else fmt.format(value)


def table(rows: Sequence[Mapping], columns: Sequence[str] | None = None,
          formats: Mapping[str, str | Callable] | None = None, headers: Sequence[str] | None = None) -> list[str]:
    """A markdown table of ``rows``, one a line: the header (``headers``, default the ``columns``, default the first
    row's keys), the ``---`` line, then each row's cells through :func:`cell` with ``formats[column]`` (a missing
    value is ``-``)."""
    columns = list(columns if columns is not None else rows[0])
    formats = formats or {}
    lines = ["| " + " | ".join(headers or columns) + " |", "| --- " * len(columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c), formats.get(c)) for c in columns) + " |")
    return lines


def page_name(stem: str, device) -> str:
    """``stem`` on the CPU, ``stem_<device type>`` elsewhere (``throughput_cuda``)."""
    kind = torch.device(device).type
    return stem if kind == "cpu" else f"{stem}_{kind}"


def write(res: dict, text: str, out: Path, name: str, plot: Callable[[dict, Path], None] | None = None,
          caption: str = "") -> str:
    """Write ``name.json`` (``res``), ``name.png`` (``plot(res, path)``, linked below ``text`` with ``caption``) and
    ``name.md`` into ``out``; returns the page's text."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=2, default=str))
    if plot is not None:
        plot(res, out / f"{name}.png")
        text += f"\n![{caption}]({name}.png)\n"
    (out / f"{name}.md").write_text(text)
    return text


@contextmanager
def figure(png: Path, figsize: tuple):
    """``with figure(path, (w, h)) as ax:`` draw on ``ax``; on leaving, laid out tight and saved at :data:`DPI`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(png, dpi=DPI)
    finally:
        plt.close(fig)


def grouped_bars(ax, groups: Sequence[str], series: Mapping[str, Sequence[float]], labels: bool = False) -> None:
    """Bars of each ``series`` (name -> one value per group: callers put 0 where a chain has none) side by side within each group
    on ``ax``. ``labels``: the value on each bar."""
    width = 0.8 / len(series)
    for k, (name, vals) in enumerate(series.items()):
        bars = ax.bar([i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))], vals, width, label=name)
        if labels:
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(groups)), list(groups))


def bar_chart(png: Path, groups: Sequence[str], series: Mapping[str, Sequence[float]], *, ylabel: str, title: str,
              figsize: tuple = (8, 3.8), log: bool = False, legend: Mapping | None = None) -> None:
    """Grouped bars (:func:`grouped_bars`, values labelled) with a y label, a title, a legend (``legend``: its
    keywords, default fontsize 8) and optionally a log y axis, saved to ``png``."""
    with figure(png, figsize) as ax:
        grouped_bars(ax, groups, series, labels=True)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(**(legend or {"fontsize": 8}))
