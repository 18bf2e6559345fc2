"""Everything a GPU can show about augcl, in one command (under 27 minutes on an H100): run it first on a lent GPU.

    python -m benchmarks.gpu                   # needs a CUDA GPU; writes docs/benchmarks/*_cuda.* and kernels_cuda.json
    python -m benchmarks.gpu --parts kernels graph     # some parts only
    python -m benchmarks.gpu --dry-run         # every part's code path on the CPU, tiny sizes, into a temporary folder

Parts, in this order, each in a process of its own (a crash, a hung kernel or a poisoned CUDA context costs that
part only; each has a time limit, all of them ``--budget-s``):

* ``tests``: ``pytest -m cuda``, every test's pass, failure or skip recorded: the CUDA kernel against the reference
  (tests/test_kernels.py, and on the paper's batch), a captured CUDA graph and ``torch.compile(fullgraph=True)``
  (default mode and ``reduce-overhead``) equal to eager (tests/test_cuda.py), CUDA against CPU.
* ``kernels``: augcl's ``kernels`` backend against ``torch`` on the device, timed: the vocoder's phase step alone and
  the ``all`` pipeline; writes ``kernels_<device>.json`` saying which is faster and whether ``auto`` should use the
  kernels there (faster, and the kernel's tests passed in ``tests``: ``augcl.kernels.AUTO_DEVICES``).
* ``graph``: ``torch.cuda.CUDAGraph`` capture of ``aug(wave, params=params)`` on static inputs; eager vs replay times.
* ``compile``: ``torch.compile(fullgraph=True)`` of the same forward (default mode and ``reduce-overhead``); compile
  time, eager vs compiled times.
* ``augment``: ``benchmarks.augment --device cuda`` (every preset; augcl against each library's strongest chain,
  the roofline); writes augment_cuda.*.
* ``train``: ``benchmarks.train --device cuda`` (augmentation's share of a bf16 EfficientNet-B0 step, B=128);
  writes train_cuda.*.
* ``stretch``: ``benchmarks.stretch --device cuda`` (whole-clip ``TimeStretch``, one rate per example, B=64 x 4 s:
  augcl[torch] and augcl[kernels] against torchaudio on the device, audiomentations on the CPU; burst fidelity);
  writes stretch_cuda.*.

Every timing goes through :mod:`benchmarks.harness`; every check of a result is a test (``tests``). Writes
``gpu_cuda.{json,md}``: every part's status (``ok``, ``failed`` with its error, ``skipped`` with why), its numbers,
the targets (reported, not asserted) and the GPU's name. A failed part does not stop the others, and every failure
is listed in the summary; the exit status is 1 if any part failed.

``--dry-run`` runs each part's code on the CPU with tiny sizes and writes ``gpu_dryrun.*`` (and the parts' files)
into a temporary folder: ``tests`` runs ``pytest -m cuda`` (every test skips); ``graph`` times eager calls in place
of the replay and records ``skipped: no GPU``; ``compile`` compiles and times on the CPU with graph breaks allowed
(the CPU forward's finite and level checks are host syncs by design; tests/test_cuda.py traces ``fullgraph=True`` on
fake CUDA without a GPU); ``stretch`` runs the device run's rows and timing (``--device-run``) on the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch

from benchmarks import report
from benchmarks.harness import median_s, time_calls, time_one

REPO = Path(__file__).resolve().parents[1]
PARTS = ("tests", "kernels", "graph", "compile", "augment", "train", "stretch")
#: seconds each part may run on a GPU (together 27 minutes; the dry run's parts take a few seconds each). tests: the
#: kernel's hypothesis cases, plus tests/test_cuda.py's compiles of the two presets in two modes, as many as the
#: compile part's (estimated, not yet measured on a GPU: 200 s before those tests, plus the compile part's 200).
#: stretch: its device rows take milliseconds; audiomentations' CPU rows ~2.3 s a round x 8 rounds x 2 scenarios, its
#: fidelity batch ~5 s, imports and the CUDA kernel's build ~30 s: ~80 s, limit about twice that
PART_LIMIT_S = {"tests": 400, "kernels": 90, "graph": 90, "compile": 240, "augment": 330, "train": 250,
                "stretch": 180}
#: the kernels backend is called faster (or slower) than torch only beyond this relative margin, else a tie
KERNEL_MARGIN = 0.05
#: the issue's targets on an H100, B=128 x 10 s (reported, not asserted)
TARGETS = {"augcl ts+mask ms a batch": ("<=", 2.0), "strongest torchaudio / augcl, ts+mask": (">=", 10.0),
           "augmentation % of a bf16 EfficientNet-B0 step": ("<=", 2.0)}


# ------------------------------------------------------------------------------------------------------ helpers
def _sizes(dry: bool) -> tuple[int, int]:
    """(batch, samples): the paper's B=128 clips of 10 s, or a dry run's 4 clips of 2 s."""
    return (4, 32000) if dry else (128, 160000)


def _device(dry: bool) -> torch.device:
    return torch.device("cpu" if dry else "cuda")




def _augmenter(preset: str, device: torch.device, **kw):
    """A preset's PairAugmenter; ``all`` with a small simulated RIR bank (its size does not change the work)."""
    from augcl import PairAugmenter
    from augcl.banks import RIRBank, RoomSimConfig

    if preset in ("rir", "all"):
        kw.setdefault("rir_bank", RIRBank.simulated(RoomSimConfig(n_rooms=8), 16000))
    return PairAugmenter.from_preset(preset, **kw).to(device)


def batch(aug, device: torch.device, seed: int, size: tuple[int, int] = (128, 160000)):
    """``(wave, params)``: a ``size`` batch of noise (default the paper's, B=128 x 10 s) and ``aug``'s draw for it."""
    b, length = size
    g = torch.Generator(device=device).manual_seed(seed)
    wave = torch.randn(b, length, generator=g, device=device) * 0.1
    return wave, aug.sample(b, length, g, device)


def _batch(aug, device: torch.device, dry: bool, seed: int):
    return batch(aug, device, seed, _sizes(dry))


def _max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip((a.anchor, a.positive), (b.anchor, b.positive)))


def phase_step_case(device: torch.device, batch: int, length: int, seed: int = 0):
    """The vocoder's two float64 analysis spectra for the ``all`` positive's segments (15,600 samples with their
    context, rates 0.9 or 1.1 per row) of a ``(batch, length)`` noise batch: the phase step's input."""
    from augcl import functional as AF

    g = torch.Generator(device=device).manual_seed(seed)
    wave = torch.randn(batch, length, generator=g, device=device, dtype=torch.float64) * 0.1
    rates = torch.tensor([0.9, 1.1], dtype=torch.float64, device=device)  # exact float64 rates (max_rate 1.1)
    rate = rates[torch.randint(0, 2, (batch,), generator=g, device=device)]
    seg = 15600  # the positive's segment with its context (15,200 + 2 * 200 samples)
    start = torch.randint(0, int((length - 2000) / 1.1) - seg, (batch,), generator=g, device=device)
    return AF._vocoder_analysis(wave, rate, start, seg, 512, 128, 1.1)


def capture_graph(aug, wave, params):
    """``(replay, output)``: a ``torch.cuda.CUDAGraph`` of ``aug(wave, params=params)`` captured on these static tensors
    after a warm-up on a side stream (the allocator, cuFFT plans), as the PyTorch docs do; ``output()`` is the captured
    output, rewritten by each ``replay()``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            aug(wave, params=params)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = aug(wave, params=params)
    return graph.replay, (lambda: static_out)


def refill(wave, params, new_wave, new_params) -> None:
    """Copy a new batch into a captured graph's static inputs."""
    wave.copy_(new_wave)
    for k in params:
        params[k].copy_(new_params[k])


def compiled_call(aug, wave, params, device: torch.device, **kw):
    """A call of ``torch.compile(**kw)`` of ``aug(wave, params=params)`` (dynamo reset first); on CUDA each call marks a
    new step (``reduce-overhead`` overwrites the previous call's outputs)."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda w, p: aug(w, params=p), **kw)

    def call():
        if device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        return compiled(wave, params)

    return call


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10,
                              check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine(dry: bool) -> dict:
    info = report.machine_info(_device(dry))
    info["gpu"] = info.get("gpu", "none (dry run on the CPU)")
    info["commit"] = _git_commit()
    info["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return info


# -------------------------------------------------------------------------------------------------------- parts
def part_tests(dry: bool, out: Path) -> dict:
    """``pytest -m cuda``; counts and the names of failed and skipped tests (from its JUnit XML)."""
    with tempfile.TemporaryDirectory(prefix="augcl-gpu-tests-") as tmp:
        xml = Path(tmp) / "junit.xml"
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                               f"--junitxml={xml}", "tests"], cwd=REPO, capture_output=True, text=True, check=False)
        if not xml.exists():
            output = (proc.stdout + proc.stderr)[-3000:]
            raise RuntimeError(f"pytest exited {proc.returncode} without a report:\n{output}")
        cases = ET.parse(xml).getroot().iter("testcase")
        rows = {"passed": [], "failed": [], "skipped": []}
        for case in cases:
            name = f"{case.get('classname')}::{case.get('name')}"
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                rows["failed"].append({"test": name, "message": (bad.get("message") or "")[:500]})
            elif case.find("skipped") is not None:
                rows["skipped"].append({"test": name, "reason": (case.find("skipped").get("message") or "")[:300]})
            else:
                rows["passed"].append(name)
    result = {"returncode": proc.returncode, "passed": len(rows["passed"]), "passed_tests": rows["passed"],
              "failed": rows["failed"],
              "skipped": rows["skipped"], "summary": proc.stdout.strip().splitlines()[-1:]}
    total = len(rows["passed"]) + len(rows["failed"]) + len(rows["skipped"])
    if total == 0:
        raise PartFailure(f"pytest -m cuda ran no test (exit {proc.returncode})", result)
    if rows["failed"] or proc.returncode != 0:
        raise PartFailure(f"{len(rows['failed'])} of {total} cuda tests failed (pytest exit {proc.returncode}): "
                          + "; ".join(f["test"] for f in rows["failed"]), result)
    if rows["skipped"] and not dry:
        result["warning"] = f"{len(rows['skipped'])} of {total} cuda tests skipped on the GPU (see skipped)"
    return result


def part_kernels(dry: bool, out: Path) -> dict:
    """``kernels`` against ``torch`` on the device, phase step and ``all`` pipeline: kernels_<device>.json."""
    from augcl import functional as AF
    from augcl import kernels

    device = _device(dry)
    if not kernels.available(device):
        why = getattr(kernels, "unavailable", lambda d: None)(device)  # the reason, where augcl.kernels gives one
        raise RuntimeError(f"no augcl kernel runs on {device} here: {why or 'kernels.available is False'}")
    repeats = 2 if dry else 20
    batch, length = _sizes(dry)
    s0, s1 = phase_step_case(device, batch, length)
    c0, c1 = s0.to(torch.complex64), s1.to(torch.complex64)
    phase = {"shape": list(c0.shape),  # each timed after a warm-up call (the kernel's build on its first)
             "torch_s": median_s(lambda: AF._vocoder_phase(c0, c1, 512, 128), repeats, device=device),
             "kernels_s": median_s(lambda: kernels.vocoder_phase(c0, c1, 512, 128), repeats, device=device)}
    checkpoint({"phase_step": phase})
    augs = {b: _augmenter("all", device, backend=b) for b in ("torch", "kernels")}
    for seed in range(1, 100):  # a batch with stretched rows (4 clips may have none): the kernel's work
        x, params = _batch(augs["torch"], device, dry, seed)
        if bool(params["positive.stretch_applied"].any()):
            break
    outs = {b: a(x, params=params) for b, a in augs.items()}  # also the warm-up
    times = time_calls({b: (lambda a=a: a(x, params=params)) for b, a in augs.items()}, repeats, warmup=0,
                       device=device, order="fixed")  # interleaved
    pipeline = {f"{b}_s": statistics.median(t) for b, t in times.items()}
    pipeline["max_abs_diff_log_mel"] = _max_diff(outs["kernels"], outs["torch"])
    speedup = pipeline["torch_s"] / pipeline["kernels_s"]
    faster = "kernels" if speedup > 1 + KERNEL_MARGIN else "torch" if speedup < 1 / (1 + KERNEL_MARGIN) else "tie"
    result = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": torch.__version__, "commit": _git_commit(), "batch": batch, "samples": length,
              "faster": faster, "margin": KERNEL_MARGIN, "speedup_pipeline": speedup,
              "speedup_phase_step": phase["torch_s"] / phase["kernels_s"], "phase_step": phase,
              "pipeline_all": pipeline, "auto_uses_kernels_now": device.type in kernels.AUTO_DEVICES}
    (out / f"kernels_{device.type}.json").write_text(json.dumps(settle_kernels(result, None), indent=2))
    return result


def settle_kernels(result: dict, tests: dict | None) -> dict:
    """The ``kernels`` part's verdict: ``auto`` should use the kernels on its device where they are faster and the
    kernel's tests passed in the ``tests`` part (``tests``: its details; None: not run), and the ``action`` on
    ``augcl.kernels.AUTO_DEVICES`` that follows. Returns ``result`` with ``kernel_tests``, ``auto_should_use_kernels``
    and ``action`` set."""
    kind = torch.device(result["device"]).type
    tests = tests or {}
    passed = [n for n in tests.get("passed_tests", []) if "kernel" in n]
    failed = [f["test"] for f in tests.get("failed", []) if "kernel" in f["test"]]
    correct = bool(passed) and not failed
    use = result["faster"] == "kernels" and correct
    now = result["auto_uses_kernels_now"]
    action = (f"add '{kind}' to augcl.kernels.AUTO_DEVICES" if use and not now else
              f"remove '{kind}' from augcl.kernels.AUTO_DEVICES" if now and (result["faster"] == "torch" or failed) else
              f"none: within {KERNEL_MARGIN:.0%} of each other, keep AUTO_DEVICES" if result["faster"] == "tie" else
              f"none: the kernel is faster but its tests did not pass here ({len(passed)} kernel tests passed in the "
              f"tests part, failed: {failed or 'none'})" if result["faster"] == "kernels" and not correct else
              "none: AUTO_DEVICES agrees with this measurement")
    return result | {"kernel_tests": {"passed": passed, "failed": failed}, "auto_should_use_kernels": use,
                     "action": action}


def _graph_one(preset: str, dry: bool) -> dict:
    """Eager and replay times of one preset's forward with params: ``capture_graph`` on a GPU; on a dry run an eager
    call stands in for the replay (the capture needs a GPU)."""
    device = _device(dry)
    aug = _augmenter(preset, device)
    wave, params = _batch(aug, device, dry, 0)
    if dry:
        replay = partial(aug, wave, params=params)
    else:
        try:
            replay, _ = capture_graph(aug, wave, params)
        except Exception as e:
            raise RuntimeError(f"capture failed: {type(e).__name__}: {e} (tests/test_devices.py's fake-CUDA forward "
                               "checks the forward makes no host sync or host-to-device copy)") from e
    repeats = 2 if dry else 20
    return {"eager_s": median_s(partial(aug, wave, params=params), repeats, device=device),  # each after a warm-up
            "replay_s": median_s(replay, repeats, device=device)}


def part_graph(dry: bool, out: Path) -> dict:
    """CUDA-graph capture of ``aug(wave, params=params)`` per preset: eager vs replay times (that replay equals eager is
    tests/test_cuda.py's, in the ``tests`` part). A preset that fails is recorded (``error``), the next one still runs."""
    result = {}
    for preset in ("ts+mask", "all"):
        try:
            result[preset] = _graph_one(preset, dry)
        except Exception as e:  # noqa: BLE001 - recorded and failed below
            result[preset] = {"error": f"{type(e).__name__}: {e}"}
        checkpoint(result)
    errors = [f"{p}: {r['error']}" for p, r in result.items() if "error" in r]
    if errors:
        raise PartFailure("; ".join(errors), result)
    if dry:
        raise PartSkipped("no GPU: torch.cuda.CUDAGraph capture and replay not run; timed eager calls in place of the "
                          "replay", result)
    return result


def _compile_one(aug, wave, params, device: torch.device, repeats: int, **kw) -> dict:
    """Compile the forward with ``kw`` and time it: the compile with the first call, then compiled calls."""
    call = compiled_call(aug, wave, params, device, **kw)
    v = {"compile_and_first_call_s": time_one(call, 1, warmup=0, device=device)[0]}
    v["compiled_s"] = median_s(call, repeats, device=device)  # after a call: reduce-overhead records its graph there
    return v


def part_compile(dry: bool, out: Path) -> dict:
    """``torch.compile(fullgraph=True)`` of the forward with params: compile time, eager vs compiled (that it equals
    eager is tests/test_cuda.py's, in the ``tests`` part). A variant that fails is recorded (``error``) and the next
    one still runs."""
    device = _device(dry)
    repeats = 2 if dry else 20
    variants = {"fullgraph": {"fullgraph": True},
                "fullgraph, reduce-overhead": {"fullgraph": True, "mode": "reduce-overhead"}}
    if dry:  # on a CPU the forward's finite and level checks are host syncs by design: graph breaks allowed
        variants = {"graph breaks allowed (CPU), backend eager": {"backend": "eager"}}
    result = {}
    for preset in ("ts+mask", "all"):
        # a traced call runs the pure-torch reference on every backend (augcl.kernels.use_kernels); on the CPU of a dry
        # run eager would run the CPU kernels, so eager runs the reference there too (on a GPU auto is the reference)
        aug = _augmenter(preset, device, **({"backend": "torch"} if dry else {}))
        wave, params = _batch(aug, device, dry, 0)
        r = result[preset] = {"eager_s": median_s(partial(aug, wave, params=params), repeats, device=device)}
        for name, kw in variants.items():
            try:
                r[name] = _compile_one(aug, wave, params, device, repeats, **kw)
            except Exception as e:  # noqa: BLE001 - recorded and failed below
                r[name] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
            checkpoint(result)
    errors = [f"{p} [{n}]: {v['error']}" for p, r in result.items() for n, v in r.items()
              if isinstance(v, dict) and "error" in v]
    if errors:
        raise PartFailure("; ".join(errors), result)
    if dry:
        result["note"] = ("dry run: compiled and timed on the CPU with graph breaks allowed (backend eager); "
                          "tests/test_cuda.py traces fullgraph=True on fake CUDA")
    return result


def part_augment(dry: bool, out: Path) -> dict:
    """``benchmarks.augment`` on the device (writes augment_<device>.*): augcl against each library's strongest."""
    from benchmarks import augment

    args = ["--device", str(_device(dry)), "--out", str(out)]
    if dry:
        args += ["--batch", "4", "--seconds", "2", "--repeats", "1", "--presets", "ts+mask"]
    res = augment.main(args)
    ts = res["results"].get("ts+mask", {})
    return {"headline": res.get("headline", {}),
            "augcl_ts_mask_ms": 1e3 * ts["augcl[auto]"]["median_s"] if ts else None,
            "roofline": {k: v for k, v in res.get("roofline", {}).items() if k != "work"},
            "files": sorted(p.name for p in out.glob("augment*"))}


def part_train(dry: bool, out: Path) -> dict:
    """``benchmarks.train`` on the device (writes train_<device>.*): augmentation's share of a bf16 step."""
    from benchmarks import train

    args = ["--device", str(_device(dry)), "--out", str(out)]
    if dry:
        args += ["--batch", "4", "--steps", "1", "--warmup", "1", "--builtin-clips", "16", "--presets", "ts+mask",
                 "--backends", "auto", "--encoders", "small"]
    res = train.main(args)
    return {"rows": {name: {"step_ms": 1e3 * r["step_s"], "augment_ms": 1e3 * r["median_s"]["augment"],
                            "augment_share": r["augment_share"]} for name, r in res["results"].items()},
            "files": sorted(p.name for p in out.glob("train*"))}


def part_stretch(dry: bool, out: Path) -> dict:
    """``benchmarks.stretch`` on the device (writes stretch_<device>.*; the dry run: its device-run rows on the CPU):
    augcl against torchaudio on the device, per scenario, with the ratio to augcl's anchor row."""
    from benchmarks import stretch

    device = _device(dry)
    args = ["--device", str(device), "--out", str(out)]
    if dry:
        args += ["--device-run", "--batch", "4", "--seconds", "1", "--repeats", "1", "--n-bursts", "2"]
    res = stretch.main(args)
    name = "stretch" + ("" if device.type == "cpu" else f"_{device.type}")
    return {"anchor": res["anchor"], "auto_backend": res["auto_backend"], "skipped": res["skipped"],
            "rows": {scenario: {chain: {"ms": 1e3 * t["median_s"], "ratio_to_anchor": t["ratio_to_augcl"]}
                                for chain, t in next(iter(r["threads"].values())).items()}
                     for scenario, r in res["results"].items()},
            "files": sorted(p.name for p in out.glob(f"{name}.*"))}


PART_FUNCTIONS = {"tests": part_tests, "kernels": part_kernels, "graph": part_graph, "compile": part_compile,
                  "augment": part_augment, "train": part_train, "stretch": part_stretch}


class PartFailure(Exception):
    """A part ran but its check failed; ``details`` are its numbers, kept in the results."""

    def __init__(self, message: str, details: dict):
        super().__init__(message)
        self.details = details


class PartSkipped(PartFailure):
    """A part that cannot run here (the dry run's CUDA graph); ``details``: what of it did run."""


_RESULT_FILE: Path | None = None  # set in a part's child process: where its record goes


def checkpoint(details: dict) -> None:
    """Save a part's results so far (a part killed at its time limit keeps them)."""
    if _RESULT_FILE is not None:
        _RESULT_FILE.write_text(json.dumps({"status": "running", "details": details}, indent=2, default=str))


def run_one(name: str, dry: bool, out: Path) -> dict:
    """Run part ``name`` in this process and return its record (an exception becomes a ``failed`` record)."""
    t0 = time.perf_counter()
    try:
        record = {"status": "ok", "details": PART_FUNCTIONS[name](dry, out)}
    except PartSkipped as e:
        record = {"status": "skipped", "reason": str(e), "details": e.details}
    except PartFailure as e:
        record = {"status": "failed", "error": str(e), "details": e.details}
    except Exception as e:  # noqa: BLE001 - recorded, listed in the summary, and the exit status says so
        record = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    record["seconds"] = time.perf_counter() - t0
    return record


def run_part_process(command: list, limit_s: float, log: Path) -> dict:
    """Run a part's command (``--part NAME --result FILE``) in a child process, with a time limit; its record, or a
    ``failed`` one naming the exit status or the timeout and the end of its output."""
    result = log.with_suffix(".json")
    t0 = time.perf_counter()
    with log.open("w") as f:
        # a session of its own: at the limit the whole group goes (pytest, inductor's compile workers), not the child
        proc = subprocess.Popen(command + ["--result", str(result)], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            rc = None
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    tail = log.read_text(errors="replace")[-3000:]
    wall = time.perf_counter() - t0
    if rc is None:
        partial = json.loads(result.read_text()).get("details") if result.exists() else None
        return {"status": "failed", "error": f"timed out after {limit_s:.0f} s" + (
            " (its results so far are in details)" if partial else ""), "details": partial or {}, "output_tail": tail,
            "seconds": wall}
    if not result.exists():
        return {"status": "failed", "error": f"the part's process exited {rc} without a result", "output_tail": tail,
                "seconds": wall}
    record = json.loads(result.read_text())
    if rc != 0 and record.get("status") == "ok":
        record.update(status="failed", error=f"the part's process exited {rc} after reporting ok", output_tail=tail)
    if record["status"] == "running":
        record.update(status="failed", error=f"the part's process exited {rc} before it finished", output_tail=tail)
    if record["status"] == "failed":
        record.setdefault("output_tail", tail)
    return record


def targets(parts: dict) -> dict:
    """The issue's targets against this run's numbers: measured, target, met (None where the part gave no number)."""
    aug = parts.get("augment", {}).get("details", {})
    train = parts.get("train", {}).get("details", {}).get("rows", {})
    torchaudio = aug.get("headline", {}).get("ts+mask", {}).get("torchaudio", {})
    share = next((r["augment_share"] for n, r in train.items() if n.startswith("ts+mask [auto]")), None)
    measured = {"augcl ts+mask ms a batch": aug.get("augcl_ts_mask_ms"),
                "strongest torchaudio / augcl, ts+mask": torchaudio.get("ratio_to_augcl"),
                "augmentation % of a bf16 EfficientNet-B0 step": None if share is None else 100 * share}
    out = {}
    for name, (op, goal) in TARGETS.items():
        m = measured[name]
        out[name] = {"measured": m, "target": f"{op} {goal:g}",
                     "met": None if m is None else (m <= goal if op == "<=" else m >= goal)}
    return out


def summarize(parts: dict, dry: bool, command: str) -> dict:
    """The run's results: the parts' records, the targets, and ``failures``, every part whose status is ``failed``."""
    return {"command": command, "dry_run": dry, "machine": machine(dry), "parts": parts, "targets": targets(parts),
            "failures": [n for n, r in parts.items() if r["status"] == "failed"]}


def write(res: dict, out: Path) -> str:
    m = res["machine"]
    lines = [f"# GPU run: {m['gpu']}", "", f"`{res['command']}`", "",
             (f"{m['gpu']}; CPU {m['cpu']} ({m['cores']} threads); torch {m['torch']}; commit {m['commit']}; "
              f"{m['date']}. What each part runs: [gpu.md](gpu.md)."), ""]
    lines += report.table([{"part": name, "status": r["status"] + (
        f" (earlier run: commit {str(r.get('commit'))[:10]}, {r.get('date')})" if r.get("earlier_run") else ""),
        "seconds": r.get("seconds", 0), "result": _one_line(name, r)} for name, r in res["parts"].items()],
        formats={"seconds": "{:.0f}"})
    lines += ["", "## Failures", ""]
    lines += [f"* `{name}`: {r['error']}" for name, r in res["parts"].items() if r["status"] == "failed"] or ["None."]
    warnings = [f"* `{n}`: {r['details']['warning']}" for n, r in res["parts"].items()
                if isinstance(r.get("details"), dict) and r["details"].get("warning")]
    skipped = [f"* `{n}`: {r['reason']}" for n, r in res["parts"].items() if r["status"] == "skipped"]
    if warnings or skipped:
        lines += ["", "## Skipped and warnings", ""] + skipped + warnings
    lines += ["", "## Targets (H100, B=128 x 10 s; reported, not asserted)", ""] + (
        ["Dry run: CPU numbers at tiny sizes, not comparable with the targets.", ""] if res["dry_run"] else [])
    lines += report.table([{"target": name, "measured": t["measured"], "goal": t["target"],
                            "met": None if t["met"] is None else "yes" if t["met"] else "no"}
                           for name, t in res["targets"].items()], formats={"measured": "{:.2f}"})
    return report.write(res, "\n".join(lines) + "\n", out, "gpu_dryrun" if res["dry_run"] else "gpu_cuda")


def _one_line(name: str, r: dict) -> str:
    d = r.get("details") or {}
    if r["status"] == "failed" and not d:
        return r["error"].splitlines()[0][:160]
    if name == "tests":
        return f"{d.get('passed', 0)} passed, {len(d.get('failed', []))} failed, {len(d.get('skipped', []))} skipped"
    if name == "kernels":
        return (f"faster: {d.get('faster')} (pipeline x{d.get('speedup_pipeline', 0):.2f}, phase step "
                f"x{d.get('speedup_phase_step', 0):.2f}); auto should use kernels: {d.get('auto_should_use_kernels')}")
    if name == "graph":
        return "; ".join(f"{p}: eager {v['eager_s'] * 1e3:.2f} ms, replay {v['replay_s'] * 1e3:.2f} ms"
                         if "replay_s" in v else f"{p}: error" for p, v in d.items() if isinstance(v, dict))
    if name == "compile":
        return "; ".join(f"{p} [{n}]: {v['compiled_s'] * 1e3:.2f} ms (eager {d[p]['eager_s'] * 1e3:.2f})"
                         if "compiled_s" in v else f"{p} [{n}]: error"
                         for p in d if isinstance(d[p], dict) for n, v in d[p].items() if isinstance(v, dict))
    if name == "augment":
        best = d.get("headline", {}).get("ts+mask", {})
        return (f"ts+mask {d.get('augcl_ts_mask_ms') or 0:.2f} ms; " +
                ", ".join(f"{lib} {b['ratio_to_augcl']:.1f}x" for lib, b in best.items()))
    if name == "train":
        return "; ".join(f"{n}: step {v['step_ms']:.1f} ms, augment {100 * v['augment_share']:.1f} %"
                         for n, v in d.get("rows", {}).items())
    if name == "stretch":
        anchor = d.get("anchor")

        def one(scenario: str, rows: dict) -> str:
            ta = rows.get("torchaudio", {})
            kern = rows.get("augcl[kernels]")
            return (f"{scenario}: {anchor} {rows.get(anchor, {}).get('ms', 0):.2f} ms, torchaudio "
                    f"{ta.get('ms', 0):.2f} ms ({ta.get('ratio_to_anchor', 0):.2f}x)"
                    + (f", augcl[kernels] {kern['ratio_to_anchor']:.2f}x" if kern else ""))

        return "; ".join(one(s, rows) for s, rows in d.get("rows", {}).items()) + (
            f"; kernels not run: {d['skipped']['augcl[kernels]']}" if d.get("skipped") else "")
    return ""


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every part's code path on the CPU, tiny sizes, temp folder")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--out", type=Path, default=None,
                   help="default: docs/benchmarks (a temporary folder with --dry-run)")
    p.add_argument("--budget-s", type=float, default=sum(PART_LIMIT_S.values()), help="all parts together")
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # a child process: run this part only
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="augcl-gpu-dryrun-")) if args.dry_run else REPO / "docs" / "benchmarks"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.part:
        global _RESULT_FILE
        _RESULT_FILE = args.result
        record = run_one(args.part, args.dry_run, out)
        args.result.write_text(json.dumps(record, indent=2, default=str))
        return record
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA GPU here: run on a GPU machine, or check the code paths with --dry-run")
    deadline = time.monotonic() + args.budget_s
    parts = {}
    with tempfile.TemporaryDirectory(prefix="augcl-gpu-logs-") as logs:
        for name in args.parts:
            left = deadline - time.monotonic()
            if left <= 1:
                parts[name] = {"status": "failed", "error": f"not run: the {args.budget_s:.0f}-s budget was spent",
                               "seconds": 0.0}
            else:
                command = [sys.executable, "-m", "benchmarks.gpu", "--part", name, "--out", str(out)] + (
                    ["--dry-run"] if args.dry_run else [])
                parts[name] = run_part_process(command, min(PART_LIMIT_S[name], left), Path(logs) / f"{name}.log")
            print(f"[benchmarks.gpu] {name}: {parts[name]['status']} in {parts[name].get('seconds', 0):.0f} s"
                  + (f" -- {parts[name]['error'].splitlines()[0]}" if parts[name]["status"] == "failed" else ""),
                  flush=True)
    now = machine(args.dry_run)
    for r in parts.values():
        r.update(commit=now["commit"], date=now["date"])
    failed_now = [n for n, r in parts.items() if r["status"] == "failed"]
    command = "python -m benchmarks.gpu" + (" --dry-run" if args.dry_run else "") + (
        "" if list(args.parts) == list(PARTS) else " --parts " + " ".join(args.parts))
    merged = earlier_parts(out, args.dry_run, args.parts) | parts
    kern = merged.get("kernels", {})
    if kern.get("status") == "ok":  # the verdict needs the kernel's tests (the tests part, of this run or an earlier)
        kern["details"] = settle_kernels(kern["details"], merged.get("tests", {}).get("details"))
        (out / f"kernels_{torch.device(kern['details']['device']).type}.json").write_text(
            json.dumps(kern["details"], indent=2))
    res = summarize({n: merged[n] for n in PARTS if n in merged}, args.dry_run, command)
    res["failed_now"] = failed_now
    print(write(res, out))
    failed = f"FAILED: {', '.join(failed_now)}" if failed_now else "no failures"
    print(f"[benchmarks.gpu] wrote {out}; this run: {failed}")
    return res


def earlier_parts(out: Path, dry: bool, running) -> dict:
    """With ``--parts``, the other parts' records from the results file already in ``out`` (a run split over several
    commands: each record keeps its own commit and date)."""
    path = out / f"{'gpu_dryrun' if dry else 'gpu_cuda'}.json"
    if set(running) == set(PARTS) or not path.exists():
        return {}
    old = json.loads(path.read_text()).get("parts", {})
    return {n: old[n] | {"earlier_run": True} for n in PARTS if n in old and n not in running}


if __name__ == "__main__":
    # exit 1 if a part of this run failed; a part's child process always exits 0 once it wrote its record
    sys.exit(1 if main().get("failed_now") else 0)
