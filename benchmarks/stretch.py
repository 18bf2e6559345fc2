"""Whole-clip time stretch, one rate per example: augcl against torchaudio and audiomentations, speed and fidelity.

    python -m benchmarks.stretch                  # B=64 clips x 4 s, 1 and 2 threads; writes docs/benchmarks/stretch.*
    python -m benchmarks.stretch --device cuda    # the device run (below); writes docs/benchmarks/stretch_cuda.*
    python -m benchmarks.stretch --quick          # tiny, checks that the benchmark runs (writes only where --out is given)

Input: the tone bursts of :func:`benchmarks.stretch_fidelity.make_bursts` (a tone after a noise burst or another
tone, in light noise), 4 s at 16 kHz. Two scenarios of per-example rates, the same rates for every chain (augcl's
own draw from a seeded generator, handed to the others):

* ``uniform``: each example's rate uniform in [0.8, 1.25] (64 distinct rates a batch);
* ``5 rates``: each example's rate one of 0.8, 0.9, 1.1, 1.2, 1.25, so torchaudio can stretch a group of rows
  per call (its ``TimeStretch`` takes one rate a call).

Chains (``CHAINS`` says the same on the results page), each returning the padded batch ``(B, ceil(T / 0.8))`` and
every row's length ``ceil(T / rate)``:

* ``augcl[auto]`` / ``augcl[torch]``: ``augcl.TimeStretch(min_rate=0.8, max_rate=1.25, p=1.0,
  leave_length_unchanged=False, backend=...)`` (``rates=`` for ``5 rates``), called with a seeded generator.
* ``torchaudio``: one ``torch.stft`` of the batch (n_fft 512, hop 128, Hann), ``torchaudio.transforms.TimeStretch``
  (hop 128, 257 bins) on the rows of each distinct rate (``overriding_rate``: one call per rate, one per row for
  ``uniform``), the stretched spectrograms zero-padded to the longest, one ``torch.istft``, each row zeroed past its
  length.
* ``audiomentations[signalsmith|librosa]``: ``audiomentations.TimeStretch(leave_length_unchanged=False, p=1.0,
  method=...)`` clip by clip (its way), its rate set to the example's (``freeze_parameters``); the clips packed
  into the padded batch. ``signalsmith_stretch`` (its default, Signalsmith Stretch) and ``librosa_phase_vocoder``.

Timing: the thread counts (``torch.set_num_threads`` and, for augcl's Numba kernels, ``numba.set_num_threads``)
and the chains interleaved, every round in a new random order, warm-up excluded; medians. The ratio is each chain's
time over augcl[auto]'s at the same thread count. audiomentations runs on one core whatever the setting.

Fidelity: :func:`benchmarks.stretch_fidelity.measure` (burst level error, pitch error, onset error) on its bursts
stretched by each chain at 0.8, 0.9, 1.1 and 1.25, all rates in one batch per chain.

The device run (``--device cuda``; ``--device-run`` gives its layout on a CPU, for the GPU dry run and the tests):

* augcl's rows are ``augcl[torch]`` and ``augcl[kernels]`` (the numba-cuda phase step; left out, with the reason
  recorded, where :func:`augcl.kernels.available` is False), called with a generator on the device. ``auto`` uses
  the kernels only on the device types of ``augcl.kernels.AUTO_DEVICES`` (the CPU only today), so on CUDA it is
  ``augcl[torch]``: that row is the ratio's anchor.
* torchaudio's chain runs on the device; its grouping by rate reads the rates on the host (a sync), inside the timed
  call, as that chain must.
* audiomentations has no device code: its rows run on the CPU of the same machine, on a host copy of the batch made
  before timing, named ``... (CPU)``: the reference a GPU user would otherwise run in data-loader workers.
* One setting, no thread sweep (torch's CPU threads as they are); ``sync()`` (``torch.cuda.synchronize``) right
  before and after every timed call; the fidelity batch goes through the same device chains, measured on the host.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
from collections.abc import Callable
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import augcl
from augcl.stretch import stretched_length
from benchmarks import report
from benchmarks.harness import sync as device_sync
from benchmarks.harness import time_settings
from benchmarks.stretch_fidelity import SR, make_bursts, measure

N_FFT, HOP = 512, 128
MIN_RATE, MAX_RATE = 0.8, 1.25
RATE_SET = (0.8, 0.9, 1.1, 1.2, 1.25)
QUALITY_RATES = (0.8, 0.9, 1.1, 1.25)
SCENARIOS = {"uniform": None, "5 rates": RATE_SET}  # None: uniform in [MIN_RATE, MAX_RATE]
AUDIOMENTATIONS_METHODS = {"signalsmith": "signalsmith_stretch", "librosa": "librosa_phase_vocoder"}
CPU_ROW = " (CPU)"  # the suffix of a row that runs on the CPU in a device run (audiomentations)


def out_samples(T: int) -> int:
    """Samples of every chain's padded output for inputs of ``T``: the longest a clip can become."""
    return math.ceil(T / MIN_RATE - 1e-9)


class AugclChain:
    """``augcl.TimeStretch`` of the scenario; :meth:`draw` is the timed call, :meth:`replay` the fidelity one."""

    def __init__(self, backend: str, rate_set=None, device="cpu"):
        self.device = torch.device(device)
        kw = {"rates": rate_set} if rate_set else {"min_rate": MIN_RATE, "max_rate": MAX_RATE}
        self.stretch = augcl.TimeStretch(**kw, p=1.0, leave_length_unchanged=False, backend=backend)
        self.record = augcl.TimeStretch(**kw, p=1.0, leave_length_unchanged=False, backend=backend,
                                        output_type="dict")

    def draw(self, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stretch(x, generator=self._generator(seed))

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def rates(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """The rates :meth:`draw` applies with ``seed`` (the ``params`` of the same draw)."""
        return self.record(x, generator=self._generator(seed)).params["stretch_rate"]

    def replay(self, x: torch.Tensor, rates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stretch at given ``rates``: the params of a recorded call with its rates replaced (augcl's replay)."""
        params = dict(self.record(x, generator=self._generator(0)).params)
        params["stretch_rate"] = rates.to(params["stretch_rate"])  # its device and dtype
        return self.stretch(x, params=params)


class TorchaudioChain:
    """One STFT of the batch, ``TimeStretch`` per distinct rate on its rows, one inverse STFT of the padded result."""

    def __init__(self, device="cpu"):
        import torchaudio

        self.window = torch.hann_window(N_FFT, device=device)
        self.vocoder = torchaudio.transforms.TimeStretch(hop_length=HOP, n_freq=N_FFT // 2 + 1).to(device)

    def __call__(self, x: torch.Tensor, rates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = x.shape
        L = out_samples(T)
        spec = torch.stft(x, N_FFT, HOP, window=self.window, return_complex=True)  # (B, F, K)
        values, group = torch.unique(rates, return_inverse=True)
        out = spec.new_zeros(B, spec.shape[1], math.ceil(spec.shape[-1] / MIN_RATE))
        for i, rate in enumerate(values.tolist()):  # TimeStretch takes one rate a call (on a device: a host sync)
            rows = (group == i).nonzero().flatten()
            stretched = self.vocoder(spec[rows], overriding_rate=rate)
            out[rows, :, : stretched.shape[-1]] = stretched
        lengths = stretched_length(T, rates).clamp_max(L)
        y = torch.istft(out, N_FFT, HOP, window=self.window, length=L)
        return y * (torch.arange(L, device=y.device) < lengths[:, None]), lengths


class AudiomentationsChain:
    """``audiomentations.TimeStretch`` clip by clip at each example's rate, packed into the padded batch."""

    def __init__(self, method: str):
        from audiomentations import TimeStretch

        self.stretch = TimeStretch(min_rate=MIN_RATE, max_rate=MAX_RATE, leave_length_unchanged=False,
                                   method=method, p=1.0)
        self.stretch.freeze_parameters()  # the rates are the example's, set below, not its own draw

    def __call__(self, x: torch.Tensor, rates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wave, L = x.cpu().numpy(), out_samples(x.shape[-1])
        out = np.zeros((len(wave), L), dtype=np.float32)
        lengths = torch.empty(len(wave), dtype=torch.long)
        for b, rate in enumerate(rates.tolist()):
            self.stretch.parameters = {"should_apply": True, "rate": rate}
            y = self.stretch(wave[b], SR)[:L]
            out[b, : len(y)], lengths[b] = y, len(y)
        return torch.from_numpy(out), lengths


class Row(NamedTuple):
    """One chain: ``call(x, rates, seed)`` the timed call, ``stretch(x, rates)`` the fidelity one, both on ``device``
    (the inputs are moved there before timing)."""

    call: Callable
    stretch: Callable
    device: torch.device


def augcl_rows(device, device_run: bool) -> tuple[dict, dict, str]:
    """augcl's rows as ``name -> backend``, the rows left out (``name -> why``) and the ratio's anchor row.

    A CPU run: ``auto`` (the kernels where Numba is installed) and ``torch``; the anchor ``augcl[auto]``. A device run:
    ``torch`` and ``kernels`` where :func:`augcl.kernels.available`; ``auto`` is one of them there (the kernels only on
    ``AUTO_DEVICES``), so the anchor is ``augcl[torch]``, the row every device has."""
    if not device_run:
        return {"augcl[auto]": "auto", "augcl[torch]": "torch"}, {}, "augcl[auto]"
    why = augcl.kernels.unavailable(device)
    rows = {"augcl[torch]": "torch"} | ({} if why else {"augcl[kernels]": "kernels"})
    return rows, ({} if why is None else {"augcl[kernels]": why}), "augcl[torch]"


def chains(rate_set, device="cpu", device_run: bool = False) -> dict:
    """Every chain for a scenario, as ``name -> Row``: augcl's and torchaudio's on ``device``, audiomentations' on the
    CPU (named ``... (CPU)`` in a device run)."""
    device, cpu = torch.device(device), torch.device("cpu")
    out = {}
    for name, backend in augcl_rows(device, device_run)[0].items():
        c = AugclChain(backend, rate_set, device)
        out[name] = Row(lambda x, rates, seed, c=c: c.draw(x, seed), c.replay, device)
    ta = TorchaudioChain(device)
    out["torchaudio"] = Row(lambda x, rates, seed: ta(x, rates), ta, device)
    for name, method in AUDIOMENTATIONS_METHODS.items():
        am = AudiomentationsChain(method)
        out[f"audiomentations[{name}]" + (CPU_ROW if device_run else "")] = Row(
            lambda x, rates, seed, am=am: am(x, rates), am, cpu)
    return out


def set_threads(n: int) -> None:
    """``n`` threads for torch and for Numba's parallel loops (augcl's kernels), where Numba is installed."""
    torch.set_num_threads(n)
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def time_scenario(rate_set, x: torch.Tensor, settings: dict, repeats: int, seed: int, device="cpu",
                  device_run: bool = False, sync: Callable[[], None] | None = None) -> dict:
    """Seconds per batch of every chain at every setting, interleaved; the same rates for every chain.

    ``settings``: label -> a function that applies it (a CPU run: ``{"1": set_threads(1), ...}``; a device run: one
    setting). ``sync()`` runs right before and after every timed call (default: ``torch.cuda.synchronize`` on a CUDA
    ``device``, nothing on a CPU). ``x`` (on any device) is copied to each chain's device before timing."""
    device = torch.device(device)
    sync = sync or partial(device_sync, device)
    rows = chains(rate_set, device, device_run)
    backends, _, anchor = augcl_rows(device, device_run)
    rates = AugclChain(backends[anchor], rate_set, device).rates(x.to(device), seed)
    inputs = {d: (x.to(d), rates.to(d)) for d in {r.device for r in rows.values()}}
    L = out_samples(x.shape[-1])
    want = stretched_length(x.shape[-1], rates.cpu()).clamp_max(L)
    calls = {name: partial(row.call, *inputs[row.device], seed) for name, row in rows.items()}

    def check(name, out):  # the warm-up's outputs (allocator, FFT plans, Numba's cache and CUDA build), checked
        y, lengths = out
        if (tuple(y.shape) != (len(x), L) or not bool(torch.isfinite(y).all())
                or int((lengths.cpu() - want).abs().max()) > 2):
            raise RuntimeError(f"{name} made {tuple(y.shape)} (or non-finite samples, or lengths other than "
                               f"ceil(T / rate)), expected ({len(x)}, {L})")

    # the warm-up at the last setting (a CPU run: the most threads); then every setting and chain once per round, in a
    # new random order each round, the device idle before the clock starts and done with the call when it stops
    times = time_settings(calls, settings, repeats, sync_fn=sync, seed=seed, check=check)
    out = {}
    for label, by_chain in times.items():
        anchor_s = statistics.median(by_chain[anchor])
        out[label] = {name: {"median_s": (med := statistics.median(ts)), "clips_per_s": len(x) / med,
                             "ratio_to_augcl": med / anchor_s, "times_s": ts}
                      for name, ts in by_chain.items()}
    return {"rates": rates.tolist(), "threads": out}


def fidelity(n_bursts: int, seed: int, device="cpu", device_run: bool = False) -> dict:
    """:func:`benchmarks.stretch_fidelity.measure` over ``n_bursts`` bursts x ``QUALITY_RATES`` for every chain (each
    on its device, measured on the host): mean and max of the absolute level error (dB), pitch error (%) and onset
    error (ms)."""
    bursts = make_bursts(n_bursts, seed)
    x = torch.from_numpy(np.stack([b.wave for b in bursts])).repeat(len(QUALITY_RATES), 1)
    rates = torch.tensor(QUALITY_RATES, dtype=torch.float64).repeat_interleave(n_bursts)
    out = {}
    for name, row in chains(RATE_SET, device, device_run).items():
        y, lengths = row.stretch(x.to(row.device), rates.to(row.device))
        y, lengths = y.cpu(), lengths.cpu()
        rows = [measure(bursts[i % n_bursts], y[i, : int(lengths[i])].numpy(), float(rates[i])) for i in range(len(x))]
        errors = {"level_err_db": np.array([abs(r["level_err_db"]) for r in rows]),
                  "pitch_err_pct": 100 * np.array([abs(r["pitch_err_rel"]) for r in rows]),
                  "onset_err_ms": 1000 * np.array([abs(r["onset_err_s"]) for r in rows])}
        out[name] = {f"{k}_{stat}": float(getattr(v, stat)()) for k, v in errors.items() for stat in ("mean", "max")}
        out[name]["n_signals"] = len(rows)
    return out


def run(batch: int, seconds: float, threads, repeats: int, n_bursts: int, seed: int = 0, device="cpu",
        device_run: bool | None = None, sync: Callable[[], None] | None = None) -> dict:
    """The whole benchmark. ``device_run`` (default: ``device`` is not the CPU) picks the device run's rows and its one
    setting; ``threads`` is the CPU run's sweep (unused in a device run); ``sync`` as in :func:`time_scenario`."""
    device = torch.device(device)
    device_run = device.type != "cpu" if device_run is None else device_run
    load_before = os.getloadavg()[0]
    x = torch.from_numpy(np.stack([b.wave for b in make_bursts(batch, seed + 1, seconds)]))
    settings = ({device.type: lambda: None} if device_run else
                {str(n): partial(set_threads, n) for n in sorted(threads)})
    results = {name: time_scenario(rate_set, x, settings, repeats, seed, device, device_run, sync)
               for name, rate_set in SCENARIOS.items()}
    if not device_run:
        set_threads(max(threads))
    quality = fidelity(n_bursts, seed, device, device_run)
    packages = ("torchaudio", "audiomentations", "librosa", "python-stretch", "numba") + (
        ("numba-cuda",) if device.type == "cuda" else ())
    info = report.machine_info(device) | {"versions": {k: _version(k) for k in packages}}
    res = {"batch": batch, "seconds": seconds, "repeats": repeats, "threads": list(threads), "n_bursts": n_bursts,
           "seed": seed, "rate_range": [MIN_RATE, MAX_RATE], "rate_set": list(RATE_SET),
           "quality_rates": list(QUALITY_RATES), "kernels": augcl.kernels.available(device), "machine": info,
           "load_before": load_before, "load_after": os.getloadavg()[0], "results": results, "quality": quality,
           "chains": CHAINS}
    if device_run:
        backends, skipped, anchor = augcl_rows(device, True)
        res |= {"device": str(device), "device_run": True, "threads": [], "settings": list(settings),
                "anchor": anchor, "skipped": skipped, "auto_backend": _auto_backend(device),
                "auto_devices": list(augcl.kernels.AUTO_DEVICES), "cpu_threads": torch.get_num_threads(),
                "chains": device_chains(device, backends)}
    return res


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _auto_backend(device: torch.device) -> str:
    """What augcl's default backend ``auto`` runs on ``device`` here."""
    return "kernels" if device.type in augcl.kernels.AUTO_DEVICES and augcl.kernels.available(device) else "torch"


CHAINS = {  # what each chain computes, for the results page (the module docstring says the same)
    "augcl[auto]": "`augcl.TimeStretch(min_rate=0.8, max_rate=1.25, p=1.0, leave_length_unchanged=False)` "
    "(`rates=(0.8, 0.9, 1.1, 1.2, 1.25)` for `5 rates`), called with `generator=torch.Generator().manual_seed(0)`: "
    "the phase-locked vocoder on the CPU kernels (the default backend on a CPU with Numba): chunks of "
    f"~{augcl.kernels.VOCODER_CHUNK_FRAMES} frames, "
    "windowed analysis frames, phase step and overlap-add in Numba, the FFTs in torch; each row computes only the "
    "frames its own length needs.",
    "augcl[torch]": "the same with `backend=\"torch\"`: the pure-torch reference (float64 phases).",
    "torchaudio": "one `torch.stft` of the batch (n_fft 512, hop 128, Hann, centred), "
    "`torchaudio.transforms.TimeStretch(hop_length=128, n_freq=257)` called with `overriding_rate=r` on the rows of "
    "each distinct rate `r` (one call per rate: 5 for `5 rates`, one per row for `uniform`), the stretched "
    "spectrograms zero-padded to the longest, one `torch.istft` of the batch to `ceil(T / 0.8)` samples, each row "
    "zeroed past `ceil(T / r)`.",
    "audiomentations[signalsmith]": "`audiomentations.TimeStretch(min_rate=0.8, max_rate=1.25, "
    "leave_length_unchanged=False, method=\"signalsmith_stretch\", p=1.0)` (its default method, python-stretch's "
    "Signalsmith Stretch) clip by clip in numpy, its rate set to the example's (`freeze_parameters`, "
    "`parameters[\"rate\"]`), each output copied into the padded batch.",
    "audiomentations[librosa]": "the same with `method=\"librosa_phase_vocoder\"` (`librosa.effects.time_stretch`: "
    "STFT n_fft 2048, hop 512, phase vocoder, inverse STFT).",
}


def device_chains(device: torch.device, backends: dict) -> dict:
    """What each chain of a device run computes, for its results page."""
    on = f"on `{device.type}`"
    gen = f"`generator=torch.Generator(device=\"{device.type}\").manual_seed(0)`"
    notes = {"torch": "the pure-torch vocoder (float64 phases)",
             "kernels": "its phase step in augcl's kernel for the device (numba-cuda on CUDA)"}
    out = {name: f"`augcl.TimeStretch(min_rate=0.8, max_rate=1.25, p=1.0, leave_length_unchanged=False, "
                 f"backend=\"{b}\")` (`rates=(0.8, 0.9, 1.1, 1.2, 1.25)` for `5 rates`) {on}, called with {gen}: "
                 f"{notes[b]}." for name, b in backends.items()}
    out["torchaudio"] = (CHAINS["torchaudio"][:-1] + f", {on}. The grouping by rate reads the distinct rates on the "
                         "host (`torch.unique(...).tolist()`, a sync) inside the timed call: the chain cannot run "
                         "without it.")
    for name in AUDIOMENTATIONS_METHODS:
        key = f"audiomentations[{name}]"
        out[key + CPU_ROW] = (CHAINS[key][:-1] + "; on the CPU (audiomentations has no device code), on a host copy of "
                              "the batch made before timing.")
    return out


def write(res: dict, out: Path, command: str) -> str:
    if res.get("device_run"):
        return write_device_run(res, out, command)
    m, threads = res["machine"], res["threads"]
    machine = report.machine_text(m).replace(f", {m['cores']} threads", "")
    lines = ["# Whole-clip time stretch, one rate per example: augcl, torchaudio, audiomentations", "",
             f"`{command}`", "",
             f"{machine}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f"; augcl's Numba kernels "
             f"{'available' if res['kernels'] else 'not installed'}. Input ({res['batch']}, "
             f"{int(res['seconds'] * SR)}) float32: tone bursts (`benchmarks.stretch_fidelity.make_bursts`), output "
             f"(B, ceil(T / 0.8)) and each row's length ceil(T / rate). Thread counts {', '.join(map(str, threads))} "
             "(torch and Numba), interleaved with the chains in a new random order every round; "
             f"median of {res['repeats']} rounds, warm-up excluded. "
             f"Load: 1-min load average {res['load_before']:.2f} before the run, {res['load_after']:.2f} after, on "
             "a machine shared with other processes: the absolute times are not a quiet machine's; the ratios are "
             "of chains measured side by side. audiomentations runs on one core whatever the setting. Ratio: the "
             "chain's time over augcl[auto]'s at the same thread count (above 1: slower than augcl).", "",
             "## The chains", ""] + [f"* `{name}`: {what}" for name, what in res["chains"].items()] + [""]
    for scenario, r in res["results"].items():
        cols = [(str(n), k) for n in threads for k in ("median_s", "ratio_to_augcl")]
        rows = [{"chain": name} | {(n, k): r["threads"][n][name][k] for n, k in cols}
                for name in r["threads"][str(threads[0])]]
        lines += _speed_heading(res, scenario) + report.table(
            rows, ["chain", *cols], {c: "{:.3f}" if c[1] == "median_s" else "{:.2f}x" for c in cols},
            headers=["chain"] + [h for n in threads for h in (f"{n} thread{'s' * (n > 1)}: s/batch", "x augcl")]) + [""]
    lines += _fidelity_lines(res) + ["", "## Reading", ""] + reading(res)
    return report.write(res, "\n".join(lines) + "\n", out, "stretch", _plot,
                        "clips/s by chain, scenario and thread count")


def write_device_run(res: dict, out: Path, command: str) -> str:
    """The device run's page: one setting, the ratio to ``res["anchor"]``, audiomentations' rows on the CPU."""
    m, anchor, label = res["machine"], res["anchor"], res["settings"][0]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v is not None)
    kernels = ("available" if res["kernels"] else f"not run ({res['skipped'].get('augcl[kernels]', 'unavailable')})")
    lines = ["# Whole-clip time stretch on the device, one rate per example: augcl, torchaudio, audiomentations (CPU)",
             "", f"`{command}`", "",
             (f"{report.machine_text(m)}, {versions}; augcl's kernels on `{res['device']}` {kernels}. Input ({res['batch']}, "
             f"{int(res['seconds'] * SR)}) float32: tone bursts (`benchmarks.stretch_fidelity.make_bursts`), output "
             "(B, ceil(T / 0.8)) and each row's length ceil(T / rate), the CPU run's workload "
             "([stretch.md](stretch.md)). "
             f"augcl's and torchaudio's chains run on `{res['device']}`, the device synchronised right before and after "
             "every timed call; one setting, no thread sweep (the device chains use the CPU only to launch work; "
             f"torch's CPU threads: {res['cpu_threads']}). Chains interleaved in a new random order every round; median "
             f"of {res['repeats']} rounds, warm-up excluded (the kernel's build, FFT plans). "
             f"Load: 1-min load average {res['load_before']:.2f} before the run, {res['load_after']:.2f} after. "
             f"Ratio: the chain's time over {anchor}'s (above 1: slower). The anchor is augcl's pure-torch chain on "
             f"the device: augcl's default backend `auto` runs `{res['auto_backend']}` here (it uses the kernels only "
             f"on {', '.join(res['auto_devices'])}: `augcl.kernels.AUTO_DEVICES`), so `auto` is the "
             f"augcl[{res['auto_backend']}] row."), "",
             ("audiomentations has no device code. Its rows, marked (CPU), run in the same process on one core of this "
             "machine's CPU, on a host copy of the batch made before timing: kept as the reference a GPU user would "
             "otherwise run in data-loader workers, so the ratio says roughly how many such cores (at perfect "
             "scaling) one device call replaces. They cost the run its most time; the CPU run's page has them on "
             "the repository's CPU."), "", "## The chains", ""]
    lines += [f"* `{name}`: {what}" for name, what in res["chains"].items()]
    lines += [f"* `{name}`: not run: {why}" for name, why in res["skipped"].items()] + [""]
    for scenario, r in res["results"].items():
        rows = [{"chain": name, "ms/batch": 1e3 * t["median_s"], "clips/s": t["clips_per_s"],
                 f"x {anchor}": t["ratio_to_augcl"]} for name, t in r["threads"][label].items()]
        lines += _speed_heading(res, scenario) + report.table(
            rows, formats={"ms/batch": "{:.2f}", "clips/s": "{:.0f}", f"x {anchor}": "{:.2f}x"}) + [""]
    lines += _fidelity_lines(res) + ["", "## Reading", ""] + reading(res)
    return report.write(res, "\n".join(lines) + "\n", out, report.page_name("stretch", res["device"]), _plot,
                        f"clips/s by chain and scenario, {res['device']}")


def _speed_heading(res: dict, scenario: str) -> list[str]:
    what = ("each example's rate uniform in [0.8, 1.25]: torchaudio makes one call per row" if scenario == "uniform"
            else f"each example's rate one of {', '.join(map(str, res['rate_set']))}: torchaudio makes one call "
                 "per rate")
    return [f"## Speed: `{scenario}` ({what})", ""]


def _fidelity_lines(res: dict) -> list[str]:
    lines = ["## Fidelity on tone bursts", "",
             (f"`benchmarks.stretch_fidelity.measure` on {res['n_bursts']} bursts (3 s) stretched at "
             f"{', '.join(map(str, res['quality_rates']))} by each chain "
             f"({next(iter(res['quality'].values()))['n_signals']} signals): absolute errors of the burst's level, "
             "pitch and onset (the onset is where the burst's partial first reaches half its level; a burst that "
             "never does counts from the end of the clip, so a few such misses make most of a mean onset error)."),
             ""]
    cols = {"level err mean (dB)": ("level_err_db_mean", "{:.2f}"), "level err max (dB)": ("level_err_db_max", "{:.2f}"),
            "pitch err mean (%)": ("pitch_err_pct_mean", "{:.3f}"), "pitch err max (%)": ("pitch_err_pct_max", "{:.3f}"),
            "onset err mean (ms)": ("onset_err_ms_mean", "{:.1f}"), "onset err max (ms)": ("onset_err_ms_max", "{:.1f}")}
    rows = [{"chain": name} | {c: q[k] for c, (k, _) in cols.items()} for name, q in res["quality"].items()]
    lines += report.table(rows, ["chain", *cols], {c: f for c, (_, f) in cols.items()})
    return lines


def reading(res: dict) -> list[str]:
    """What the tables say, in words, from this run's figures (nothing here is typed in by hand)."""
    out = []
    device_run = res.get("device_run", False)
    for scenario, r in res["results"].items():
        for n in res.get("settings", res["threads"]):
            rows = r["threads"][str(n)]
            others = {k: v for k, v in rows.items() if not k.startswith("augcl")}
            fastest = min(others, key=lambda k: others[k]["median_s"])
            ratio = others[fastest]["ratio_to_augcl"]
            ref = res["anchor"] if device_run else "augcl"
            verdict = (f"{1 / ratio:.2f}x {ref}'s speed" if ratio < 1 else f"{ratio:.2f}x {ref}'s time")
            if not device_run:
                out.append(f"* `{scenario}`, {n} thread{'s' * (n > 1)}: the fastest other chain is {fastest}, at "
                           f"{verdict}.")
                continue
            ta = rows["torchaudio"]["ratio_to_augcl"]
            kern = (f"; augcl[kernels] at {rows['augcl[kernels]']['ratio_to_augcl']:.2f}x {res['anchor']}'s time"
                    if "augcl[kernels]" in rows else "")
            out.append(f"* `{scenario}` on `{n}`: torchaudio on the device takes {ta:.2f}x {res['anchor']}'s time"
                       f"{kern}; the fastest other chain is {fastest}, at {verdict}.")
    q = res["quality"]
    faithful = [k for k, v in q.items() if v["level_err_db_max"] < 1.5 and v["onset_err_ms_max"] < 30]
    out += ["", (f"Chains that keep every burst's level within 1.5 dB and its onset within 30 ms: "
            f"{', '.join(faithful)}. A plain phase vocoder (torchaudio's, librosa's) enters a burst with the phases of "
            "the sound before it and loses level there; phase locking (augcl) and Signalsmith Stretch do not."),
            ""]
    slower = any(v["ratio_to_augcl"] < 1 for r in res["results"].values() for rows in r["threads"].values()
                 for k, v in rows.items() if not k.startswith("augcl"))
    tail = ("What augcl adds is the batch form: per-example rates in one call on any device, lengths-aware, with no "
            "host sync (tests/test_devices.py), where audiomentations loops over clips in numpy and torchaudio needs a "
            "call per distinct rate. This page is the CPU run (`--device cuda` writes stretch_cuda.md).")
    if device_run:
        tail = ("The device rows time the whole call, host syncs included (torchaudio's grouping by rate; augcl's "
                "call makes none). The CPU run's page ([stretch.md](stretch.md)) has the thread sweep.")
    elif slower:
        tail = ("On a CPU augcl's stretch is not the fastest here: it reads two analysis frames per synthesis frame "
                "(the second for the instantaneous frequency), and the batch is stretched to the longest length any "
                "rate can give. " + tail)
    out.append(tail)
    return out


def _plot(res: dict, png: Path) -> None:
    device_run = res.get("device_run", False)
    groups = [(s, str(n)) for s in res["results"] for n in res.get("settings", res["threads"])]
    names = list(res["results"][groups[0][0]]["threads"][groups[0][1]])
    where = f"{res['device']} (audiomentations on the CPU)" if device_run else "CPU"
    report.bar_chart(png, [f"{s}\n{n}" if device_run else f"{s}\n{n} thread{'s' * (n != '1')}" for s, n in groups],
                     {name: [res["results"][s]["threads"][n][name]["clips_per_s"] for s, n in groups]
                      for name in names},
                     ylabel="clips/s (log)" if device_run else "clips/s", log=device_run, figsize=(8, 4.2),
                     title=f"whole-clip time stretch, B={res['batch']} x {res['seconds']:g} s, {where}",
                     legend={"fontsize": 7, "ncol": 3, "loc": "upper center", "bbox_to_anchor": (0.5, -0.18)})


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (the thread sweep) or a device such as cuda (the device run)")
    p.add_argument("--device-run", action="store_true", help="the device run's rows and single setting on --device "
                   "even where it is the CPU (the GPU dry run's check of that path; needs --out or --quick)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch (and Numba) thread counts "
                   "(CPU run only)")
    p.add_argument("--repeats", type=int, default=None, help="rounds (default 3 on a CPU, 7 in a device run: the "
                   "device rows are cheap, audiomentations' CPU rows cost ~2 s a round)")
    p.add_argument("--n-bursts", type=int, default=24, help="bursts for the fidelity figures (each at 4 rates)")
    p.add_argument("--quick", action="store_true", help="B=4, 1-s clips, 1 thread, 1 round, 2 bursts; writes only "
                   "where --out is given")
    p.add_argument("--out", type=Path, default=None, help="default docs/benchmarks (with --quick: write nothing)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    device_run = args.device_run or device.type != "cpu"
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA GPU here (--device-run checks the device run's path on the CPU)")
    if device.type == "cpu" and device_run and args.out is None and not args.quick:
        p.error("--device-run on the CPU needs --out (docs/benchmarks/stretch.* is the CPU run's page)")
    if args.repeats is None:
        args.repeats = 7 if device_run else 3
    if args.quick:
        args.batch, args.seconds, args.threads, args.repeats, args.n_bursts = 4, 1.0, [1], 1, 2
    res = run(args.batch, args.seconds, args.threads, args.repeats, args.n_bursts, device=device,
              device_run=device_run)
    if device_run:
        command = (f"python -m benchmarks.stretch --device {args.device}{' --device-run' * args.device_run} --batch "
                   f"{args.batch} --seconds {args.seconds:g} --repeats {args.repeats} --n-bursts {args.n_bursts}")
    else:
        command = (f"python -m benchmarks.stretch --batch {args.batch} --seconds {args.seconds:g} --threads "
                   f"{' '.join(map(str, args.threads))} --repeats {args.repeats} --n-bursts {args.n_bursts}")
    if args.quick and args.out is None:
        for scenario, r in res["results"].items():
            print(scenario, {k: round(v["median_s"], 3) for k, v in next(iter(r["threads"].values())).items()})
    else:
        print(write(res, args.out or Path("docs/benchmarks"), command))
    return res


if __name__ == "__main__":
    main()
