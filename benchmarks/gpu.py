"""Everything a GPU can show about augcl, in one command (under 23 minutes on an H100): run it first on a lent GPU.

    python -m benchmarks.gpu                   # needs a CUDA GPU; writes docs/benchmarks/*_cuda.* and kernels_cuda.json
    python -m benchmarks.gpu --parts kernels graph     # some parts only
    python -m benchmarks.gpu --dry-run         # every part's code path on the CPU, tiny sizes, into a temporary folder

Parts, in this order, each in a process of its own (a crash, a hung kernel or a poisoned CUDA context costs that
part only; each has a time limit, all of them ``--budget-s``):

* ``tests``: ``pytest -m cuda`` (the CUDA kernel against the reference and on a side stream, CUDA against CPU).
* ``kernels``: augcl's ``kernels`` backend against ``torch`` on the device: the vocoder's phase step alone (checked
  against a float64 truth as in tests/test_kernels.py) and the ``all`` pipeline; writes ``kernels_<device>.json``
  saying which is faster and whether ``auto`` should use the kernels there (``augcl.kernels.AUTO_DEVICES``).
* ``graph``: ``torch.cuda.CUDAGraph`` capture of ``aug(wave, params=params)`` on static inputs; replay equals eager,
  on the captured batch and on a new one copied into the static inputs; eager vs replay times.
* ``compile``: ``torch.compile(fullgraph=True)`` of the same forward (default mode and ``reduce-overhead``); equal to
  eager within ``COMPILE_ATOL``; compile time, eager vs compiled times.
* ``augment``: ``benchmarks.augment --device cuda`` (every preset; augcl against each library's strongest chain,
  the roofline); writes augment_cuda.*.
* ``train``: ``benchmarks.train --device cuda`` (augmentation's share of a bf16 EfficientNet-B0 step, B=128);
  writes train_cuda.*.
* ``stretch``: ``benchmarks.stretch --device cuda`` (whole-clip ``TimeStretch``, one rate per example, B=64 x 4 s:
  augcl[torch] and augcl[kernels] against torchaudio on the device, audiomentations on the CPU; burst fidelity);
  writes stretch_cuda.*.

Writes ``gpu_cuda.{json,md}``: every part's status (``ok``, ``failed`` with its error, ``skipped`` with why), its
numbers, the targets (reported, not asserted) and the GPU's name. A failed part does not stop the others, and every
failure is listed in the summary; the exit status is 1 if any part failed.

``--dry-run`` runs each part's code on the CPU with tiny sizes and writes ``gpu_dryrun.*`` (and the parts' files)
into a temporary folder: ``tests`` runs ``pytest -m cuda`` (every test skips); ``graph`` checks on fake CUDA
(``FakeTensorMode``) that the forward with params makes no host sync (what capture needs), then runs the refill,
comparison and timing code with eager calls in place of the replay, and records ``skipped: no GPU``; ``compile``
traces ``fullgraph=True`` on fake CUDA (backend ``eager``), then compares and times a CPU compile with graph breaks
allowed (the CPU forward's finite and level checks are host syncs by design); ``stretch`` runs the device run's
rows and timing (``--device-run``) on the CPU.
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
from pathlib import Path

import torch

from benchmarks import report
from benchmarks.harness import median_s, time_calls, time_one

REPO = Path(__file__).resolve().parents[1]
PARTS = ("tests", "kernels", "graph", "compile", "augment", "train", "stretch")
#: seconds each part may run on a GPU (together 23 minutes; the dry run's parts take a few seconds each). stretch:
#: its device rows take milliseconds; audiomentations' CPU rows ~2.3 s a round x 8 rounds x 2 scenarios, its
#: fidelity batch ~5 s, imports and the CUDA kernel's build ~30 s: ~80 s, limit about twice that
PART_LIMIT_S = {"tests": 200, "kernels": 90, "graph": 90, "compile": 240, "augment": 330, "train": 250,
                "stretch": 180}
#: the forward's log-mels compiled vs eager: float32 reassociation moves a value by ~1e-6 relative (~1e-5 nepers);
#: 1e-3 nepers (0.004 dB) leaves room for that and catches any real difference
COMPILE_ATOL = 1e-3
#: replaying a captured graph runs the same kernels on the same inputs: equal to eager up to float32 rounding
GRAPH_ATOL = 1e-5
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


def _batch(aug, device: torch.device, dry: bool, seed: int):
    batch, length = _sizes(dry)
    g = torch.Generator(device=device).manual_seed(seed)
    wave = torch.randn(batch, length, generator=g, device=device) * 0.1
    return wave, aug.sample(batch, length, g, device)


def _max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip((a.anchor, a.positive), (b.anchor, b.positive)))


def fake_cuda_forward(preset: str, dry: bool) -> dict:
    """The forward with params on fake CUDA (``FakeTensorMode``): a host sync or a CPU tensor in a CUDA op raises.
    Returns the anchor's shape and the host-to-device copies the forward makes (op and augcl source line): capture
    fails on those in torch versions that sync the stream for them (pytorch/pytorch#168991)."""
    import traceback as tb

    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    copies = []

    class HostToDevice(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            if any(t.device.type == "cpu" for t in ins) and any(
                    isinstance(o, torch.Tensor) and o.device.type == "cuda" for o in tree_flatten(out)[0]):
                where = [f"{Path(f.filename).name}:{f.lineno}" for f in tb.extract_stack() if "/augcl/" in f.filename]
                copies.append(f"{func} at {where[-1] if where else '?'}")
            return out

    aug = _augmenter(preset, torch.device("cpu"))
    batch, length = _sizes(dry)
    with FakeTensorMode(allow_non_fake_inputs=True):
        aug = aug.to("cuda")
        x = torch.randn(batch, length, device="cuda")
        params = aug.sample(batch, length, None, x.device)
        with HostToDevice():
            out = aug(x, params=params)
        return {"anchor_shape": list(out.anchor.shape), "host_to_device_copies": copies}


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
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
                               f"--junitxml={xml}", "tests"], cwd=REPO, capture_output=True, text=True)
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
    result = {"returncode": proc.returncode, "passed": len(rows["passed"]), "failed": rows["failed"],
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
    g = torch.Generator(device=device).manual_seed(0)
    wave = torch.randn(batch, length, generator=g, device=device, dtype=torch.float64) * 0.1
    rates = torch.tensor([0.9, 1.1], dtype=torch.float64, device=device)  # exact float64 rates (max_rate 1.1)
    rate = rates[torch.randint(0, 2, (batch,), generator=g, device=device)]
    seg = 15600  # the positive's segment with its context (15,200 + 2 * 200 samples)
    start = torch.randint(0, int((length - 2000) / 1.1) - seg, (batch,), generator=g, device=device)
    s0, s1 = AF._vocoder_analysis(wave, rate, start, seg, 512, 128, 1.1)
    truth = AF._vocoder_phase(s0, s1, 512, 128)
    c0, c1 = s0.to(torch.complex64), s1.to(torch.complex64)
    ref32 = AF._vocoder_phase(c0, c1, 512, 128)
    out_k = kernels.vocoder_phase(c0, c1, 512, 128).to(device)
    den = s0.abs().clamp_min(1e-30)
    err = float(((out_k.to(truth.dtype) - truth).abs() / den).max())
    err_ref = float(((ref32.to(truth.dtype) - truth).abs() / den).max())
    phase = {"shape": list(c0.shape), "kernel_rel_err": err, "torch_float32_rel_err": err_ref,
             "correct": err <= 2 * err_ref + 1e-5,  # tests/test_kernels.py's criterion
             "torch_s": median_s(lambda: AF._vocoder_phase(c0, c1, 512, 128), repeats, warmup=0, device=device),
             "kernels_s": median_s(lambda: kernels.vocoder_phase(c0, c1, 512, 128), repeats, warmup=0,
                                   device=device)}
    checkpoint({"phase_step": phase})
    augs = {b: _augmenter("all", device, backend=b) for b in ("torch", "kernels")}
    for seed in range(1, 100):  # a batch with stretched rows (4 clips may have none): the kernel's work
        x, params = _batch(augs["torch"], device, dry, seed)
        if bool(params["positive.stretch_applied"].any()):
            break
    outs = {b: a(x, params=params) for b, a in augs.items()}
    times = time_calls({b: (lambda a=a: a(x, params=params)) for b, a in augs.items()}, repeats, warmup=0,
                       device=device, order="fixed")  # interleaved
    pipeline = {f"{b}_s": statistics.median(t) for b, t in times.items()}
    pipeline["max_abs_diff_log_mel"] = _max_diff(outs["kernels"], outs["torch"])
    speedup = pipeline["torch_s"] / pipeline["kernels_s"]
    faster = "kernels" if speedup > 1 + KERNEL_MARGIN else "torch" if speedup < 1 / (1 + KERNEL_MARGIN) else "tie"
    use = faster == "kernels" and phase["correct"]
    result = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": torch.__version__, "commit": _git_commit(), "batch": batch, "samples": length,
              "faster": faster, "margin": KERNEL_MARGIN, "speedup_pipeline": speedup,
              "speedup_phase_step": phase["torch_s"] / phase["kernels_s"], "phase_step": phase,
              "pipeline_all": pipeline, "auto_should_use_kernels": use,
              "auto_uses_kernels_now": device.type in kernels.AUTO_DEVICES,
              "action": (f"add '{device.type}' to augcl.kernels.AUTO_DEVICES" if use and device.type not in
                         kernels.AUTO_DEVICES else
                         f"remove '{device.type}' from augcl.kernels.AUTO_DEVICES" if faster == "torch" and
                         device.type in kernels.AUTO_DEVICES else
                         f"none: within {KERNEL_MARGIN:.0%} of each other, keep AUTO_DEVICES" if faster == "tie" else
                         "none: AUTO_DEVICES agrees with this measurement")}
    (out / f"kernels_{device.type}.json").write_text(json.dumps(result, indent=2))
    if not phase["correct"]:
        raise PartFailure(f"the {device.type} kernel's phase step is off: relative error {err:.2e} > 2 x the float32 "
                          f"reference's {err_ref:.2e} + 1e-5", result)
    return result


def _capture(aug, wave, params, device: torch.device, dry: bool):
    """``(replay, output)``: a captured CUDA graph of the forward on these static tensors, or on a dry run an eager call
    writing into the same output holder (the capture itself needs a GPU)."""
    if dry:
        holder = [aug(wave, params=params)]
        return (lambda: holder.__setitem__(0, aug(wave, params=params))), (lambda: holder[0])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (allocator, cuFFT plans), as the PyTorch docs do
        for _ in range(3):
            aug(wave, params=params)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = aug(wave, params=params)
    return graph.replay, (lambda: static_out)


def _graph_one(preset: str, dry: bool, r: dict) -> None:
    """Capture, replay and time one preset's forward into the record ``r``."""
    device = _device(dry)
    aug = _augmenter(preset, device)
    wave, params = _batch(aug, device, dry, 0)
    eager = aug(wave, params=params)
    try:
        replay, output = _capture(aug, wave, params, device, dry)
    except Exception as e:
        copies = r["fake_cuda_forward"]["host_to_device_copies"]
        raise RuntimeError(f"capture failed: {type(e).__name__}: {e}" + (
            f" (the forward's host-to-device copies, a likely cause: {copies})" if copies else "")) from e
    replay()
    r["max_abs_diff_captured_batch"] = _max_diff(output(), eager)
    wave2, params2 = _batch(aug, device, dry, 1)  # a new batch through the same graph
    wave.copy_(wave2)
    for k in params:
        params[k].copy_(params2[k])
    replay()
    r["max_abs_diff_new_batch"] = _max_diff(output(), aug(wave2, params=params2))
    r["eager_s"] = median_s(lambda: aug(wave, params=params), 2 if dry else 20, warmup=0, device=device)
    r["replay_s"] = median_s(replay, 2 if dry else 20, warmup=0, device=device)
    r["equal"] = max(r["max_abs_diff_captured_batch"], r["max_abs_diff_new_batch"]) <= GRAPH_ATOL


def part_graph(dry: bool, out: Path) -> dict:
    """CUDA-graph capture of ``aug(wave, params=params)`` per preset: replay == eager, then on a new batch copied in.
    A preset that fails is recorded (``error``) and the next one still runs."""
    result = {}
    for preset in ("ts+mask", "all"):
        r = result[preset] = {"fake_cuda_forward": fake_cuda_forward(preset, dry)}
        try:
            _graph_one(preset, dry, r)
        except Exception as e:  # noqa: BLE001 - recorded and failed below
            r["error"] = f"{type(e).__name__}: {e}"
        checkpoint(result)
    copies = sorted({c for r in result.values() for c in r["fake_cuda_forward"]["host_to_device_copies"]})
    if copies:
        result["warning"] = (f"the forward with params makes host-to-device copies ({'; '.join(copies)}): capture "
                             "fails on them where torch syncs the stream for such a copy (pytorch/pytorch#168991)")
    errors = [f"{p}: {r['error']}" for p, r in result.items() if isinstance(r, dict) and "error" in r]
    if errors:
        raise PartFailure("; ".join(errors), result)
    if dry:
        raise PartSkipped("no GPU: torch.cuda.CUDAGraph capture and replay not run; ran the forward with params on "
                          "fake CUDA (no host sync: capturable) and the refill, comparison and timing code with eager "
                          "calls in place of the replay", result)
    bad = [p for p, r in result.items() if isinstance(r, dict) and not r["equal"]]
    if bad:
        raise PartFailure(f"graph replay differs from eager by more than {GRAPH_ATOL} for {bad}", result)
    return result


def _compile_fake_cuda(preset: str, dry: bool) -> None:
    """``torch.compile(fullgraph=True, backend="eager")`` of the forward with params on fake CUDA: raises on a graph
    break of the CUDA path (the dry run's stand-in for compiling on a GPU)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    aug = _augmenter(preset, torch.device("cpu"))
    batch, length = _sizes(dry)
    torch._dynamo.reset()
    with FakeTensorMode(allow_non_fake_inputs=True):
        aug = aug.to("cuda")
        x = torch.randn(batch, length, device="cuda")
        torch.compile(lambda w, p: aug(w, params=p), fullgraph=True, backend="eager")(
            x, aug.sample(batch, length, None, x.device))


def _compile_one(aug, wave, params, eager, device: torch.device, repeats: int, **kw) -> dict:
    """Compile the forward with ``kw``, check it against ``eager``, time it."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda w, p: aug(w, params=p), **kw)

    def call():
        if device.type == "cuda":  # reduce-overhead: each call a new step (its outputs are overwritten)
            torch.compiler.cudagraph_mark_step_begin()
        return compiled(wave, params)

    first = []
    v = {"compile_and_first_call_s": time_one(lambda: first.append(call()), 1, warmup=0, device=device)[0]}
    v["max_abs_diff_first_call"] = _max_diff(first[0], eager)
    call()  # reduce-overhead records its graph on a later call
    v["max_abs_diff"] = _max_diff(call(), eager)
    v["compiled_s"] = median_s(call, repeats, warmup=0, device=device)
    v["equal"] = max(v["max_abs_diff"], v["max_abs_diff_first_call"]) <= COMPILE_ATOL
    return v


def part_compile(dry: bool, out: Path) -> dict:
    """``torch.compile(fullgraph=True)`` of the forward with params: equal to eager, compile time, eager vs compiled.
    A variant that fails is recorded (``error``) and the next one still runs."""
    device = _device(dry)
    repeats = 2 if dry else 20
    variants = {"fullgraph": dict(fullgraph=True),
                "fullgraph, reduce-overhead": dict(fullgraph=True, mode="reduce-overhead")}
    if dry:  # fullgraph on fake CUDA (the CUDA path), then the compare/timing code on a CPU compile with breaks
        variants = {"graph breaks allowed (CPU), backend eager": dict(backend="eager")}
    result = {}
    for preset in ("ts+mask", "all"):
        # a traced call runs the pure-torch reference on every backend (augcl.kernels.use_kernels); on the CPU of a dry
        # run eager would run the CPU kernels, whose float32 vocoder phases differ from the reference's beyond the
        # tolerance, so eager runs the reference there too (on a GPU auto is the reference already)
        aug = _augmenter(preset, device, **({"backend": "torch"} if dry else {}))
        wave, params = _batch(aug, device, dry, 0)
        eager = aug(wave, params=params)
        r = result[preset] = {"eager_s": median_s(lambda: aug(wave, params=params), repeats, warmup=0, device=device)}
        if dry:
            try:
                _compile_fake_cuda(preset, dry)
                r["fullgraph on fake CUDA"] = "traced"
            except Exception as e:  # noqa: BLE001 - recorded and failed below
                r["error"] = f"fullgraph on fake CUDA: {type(e).__name__}: {e}"
        for name, kw in variants.items():
            try:
                r[name] = _compile_one(aug, wave, params, eager, device, repeats, **kw)
            except Exception as e:  # noqa: BLE001 - recorded and failed below
                r[name] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
            checkpoint(result)
    errors = [f"{p}: {r['error']}" for p, r in result.items() if "error" in r]
    errors += [f"{p} [{n}]: {v['error']}" for p, r in result.items() for n, v in r.items()
               if isinstance(v, dict) and "error" in v]
    if errors:
        raise PartFailure("; ".join(errors), result)
    bad = [f"{p} [{n}]" for p, r in result.items() for n, v in r.items() if isinstance(v, dict) and not v["equal"]]
    if bad:
        raise PartFailure(f"compiled forward differs from eager by more than {COMPILE_ATOL} for {bad}", result)
    if dry:
        result["note"] = ("dry run: fullgraph=True traced on fake CUDA (backend eager); compared and timed on the CPU "
                          "with graph breaks allowed (the CPU forward's finite and level checks are host syncs)")
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
             f"{m['gpu']}; CPU {m['cpu']} ({m['cores']} threads); torch {m['torch']}; commit {m['commit']}; "
             f"{m['date']}. "
             "What each part runs: [gpu.md](gpu.md).", ""]
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
        return "; ".join(f"{p}: eager {v['eager_s'] * 1e3:.2f} ms, replay {v['replay_s'] * 1e3:.2f} ms, "
                         f"equal {v['equal']}" if "replay_s" in v else f"{p}: error"
                         for p, v in d.items() if isinstance(v, dict))
    if name == "compile":
        return "; ".join(f"{p} [{n}]: {v['compiled_s'] * 1e3:.2f} ms (eager {d[p]['eager_s'] * 1e3:.2f}), "
                         f"equal {v['equal']}" if "compiled_s" in v else f"{p} [{n}]: error"
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
