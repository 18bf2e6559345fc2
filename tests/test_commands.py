"""The commands the README names run end to end (tiny sizes), so they cannot rot."""
import json
import math

import pytest
import torch

from augcl import demo
from benchmarks import stretch_fidelity, throughput


def test_demo_writes_a_png(tmp_path):
    out = demo.main(["--out", str(tmp_path / "demo.png"), "--n", "2"])
    assert out.stat().st_size > 10_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_on_short_padded_files_draws_segments_from_their_sound(tmp_path):
    """Files of 0.3-2 s padded with digital silence (as ESC-50's): the demo trims it, passes the lengths, and every
    segment of every clip starts inside the clip's sound."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    (tmp_path / "clips").mkdir()
    for k, seconds in enumerate((0.3, 0.8, 2.0)):
        sound = 0.3 * rng.standard_normal(int(seconds * 16000))
        sf.write(str(tmp_path / "clips" / f"{k}.wav"), np.concatenate([sound, np.zeros(3 * 16000)]), 16000,
                 subtype="PCM_16")
    seen = {}
    real_plot = demo.plot_pairs
    demo.plot_pairs = lambda a, p, params, path, title: (seen.update(params), real_plot(a, p, params, path, title))
    try:
        demo.main(["--audio-dir", str(tmp_path / "clips"), "--n", "3", "--out", str(tmp_path / "d.png")])
    finally:
        demo.plot_pairs = real_plot
    lengths = seen["lengths"]
    assert torch.allclose(lengths.double(), torch.tensor([0.3, 0.8, 2.0], dtype=torch.float64) * 16000, atol=2)
    for branch in ("anchor", "positive"):
        rate = seen.get(f"{branch}.stretch_rate", torch.ones(3, dtype=torch.float64))
        assert (seen[f"{branch}.start"] < torch.ceil(lengths / rate)).all()


def test_throughput_quick_reports_every_requested_preset():
    res = throughput.main(["--quick", "--presets", "noise", "ts+mask", "--lengths"])
    assert set(res["results"]) == {"noise", "ts+mask", "noise [lengths]", "ts+mask [lengths]"}
    assert all(r["clips_per_s"] > 0 for r in res["results"].values())


def test_throughput_vocoder_chunk_sweep_sets_the_chunk_and_puts_it_back(tmp_path, monkeypatch):
    from augcl import kernels

    seen = []
    real = kernels._time_stretch_cpu
    monkeypatch.setattr(kernels, "_time_stretch_cpu",
                        lambda *a, **k: seen.append(kernels.VOCODER_CHUNK_FRAMES) or real(*a, **k))
    before = kernels.VOCODER_CHUNK_FRAMES
    res = throughput.main(["--quick", "--presets", "all", "--vocoder-chunks", "64", "4096", "--out", str(tmp_path)])
    assert set(res["results"]) == {"all [vocoder chunk 64]", "all [vocoder chunk 4096]"}
    assert {64, 4096} <= set(seen) and kernels.VOCODER_CHUNK_FRAMES == before


def test_throughput_chunk_sweep_writes_chunks_table(tmp_path):
    res = throughput.main(["--quick", "--presets", "ts+mask", "--chunk-sizes", "1", "3", "--out", str(tmp_path)])
    assert set(res["results"]) == {"ts+mask [chunk 1]", "ts+mask [chunk 3]"}
    assert not (tmp_path / "chunks.md").exists()  # --quick writes nothing
    res = throughput.main(["--presets", "ts+mask", "--chunk-sizes", "2", "--batch", "4", "--seconds", "2",
                           "--repeats", "1", "--out", str(tmp_path)])
    assert "| ts+mask [chunk 2] |" in (tmp_path / "chunks.md").read_text()
    assert json.loads((tmp_path / "chunks.json").read_text())["results"]["ts+mask [chunk 2]"]["clips_per_s"] > 0


def test_profile_lists_the_ops_of_a_call():
    from benchmarks import profile

    text = profile.main(["--quick", "--preset", "all", "--backend", "torch"])
    assert "ms per call" in text and "aten::" in text


def test_stretch_fidelity_writes_its_tables(tmp_path):
    stretch_fidelity.main(["--n", "2", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "stretch_fidelity.json").read_text())
    assert res["results"]["augcl"]["level_loss_db_max"] < 1.5
    assert "| augcl |" in (tmp_path / "stretch_fidelity.md").read_text()


def test_data_benchmark_quick_measures_pack_and_read():
    from benchmarks import data

    res = data.main(["--quick"])
    assert all(r["files_per_s"] > 0 and r["files"] == 8 for r in res["pack"].values())
    assert all(r["clips_per_s"] > 0 and r["clips"] == 32 for r in res["read"].values())


def test_builtin_gallery_png(tmp_path):
    from trainer import builtin

    out = builtin.plot_classes(tmp_path / "g.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000


def test_augment_benchmark_quick_runs_every_chain(tmp_path):
    from benchmarks import augment

    res = augment.main(["--quick"])
    augcl = {f"augcl[{b}]" for b in augment.backends(torch.device("cpu"))}
    assert {"augcl[auto]", "augcl[torch]", "augcl[kernels]"} <= augcl  # numba is in the dev extra
    for preset in ("ts+mask", "all"):
        chains = res["results"][preset]
        assert set(chains) == augcl | {"torchaudio", augment.WHOLE_CLIP, "torch-audiomentations", "audiomentations"}
        assert all(r["clips_per_s"] > 0 and r["ratio_to_augcl"] > 0 for r in chains.values())
        assert chains["augcl[auto]"]["ratio_to_augcl"] == 1.0
        best = res["headline"][preset]
        assert set(best) == set(augment.LIBRARIES)
        assert best["torchaudio"]["median_s"] == min(chains[c]["median_s"] for c in ("torchaudio", augment.WHOLE_CLIP))
        for stages in res["stages"][preset].values():
            assert set(stages) == {"sample", "anchor", "positive", "positive masks", "whole pipeline"}
            assert all(v > 0 for v in stages.values())
    assert res["roofline"]["work"]["total_flops"] > 0 and res["roofline"]["augcl_s"] > 0
    text = augment.write(res, tmp_path, "cpu")
    assert (tmp_path / "augment.json").exists() and (tmp_path / "augment.png").stat().st_size > 0
    assert "Where augcl's time goes" in text and "| torchaudio |" in text and "| torchaudio[whole clip] |" in text
    assert "strongest chain" in text and "GFLOP" in text


def test_augment_crop_first_torchaudio_chain_equals_the_whole_clip_chain_where_they_align(tmp_path):
    """The careful torchaudio chain's positive is the whole-clip chain's where both read the same source frames: a
    crop starting at source frame ``first * rate`` (an integer) against the window at stretched frame ``first``. The
    phases differ (the vocoder accumulates from the crop's start); the magnitudes the log-mel reads do not."""
    from benchmarks import augment

    T = 2 * augment.SR
    wave = torch.randn(1, T, generator=torch.Generator().manual_seed(0)) * 0.1
    chain = augment.TorchaudioChain("cpu", augment.write_irs(tmp_path / "irs", 2), rir=False, use_tam=False)
    idx = torch.tensor([0])
    first = 10  # stretched frame: source frame 10 * rate is an integer (9, 10, 11)
    for rate in (1.0,) + augment.RATES:
        n = math.ceil((1 + T // augment.HOP) / rate)  # frames of the stretched whole-clip STFT
        whole = {"u": torch.tensor([(first + 0.5) / (n - augment.FRAMES)])}
        source_first = round(first * rate)
        width = (augment.source_frames(rate) - 1) * augment.HOP + augment.N_FFT
        crop = {"u": torch.tensor([(source_first * augment.HOP - augment.N_FFT // 2 + 0.5) / (T - width)])}
        a = chain._whole_clip(wave, idx, whole, rate)
        b = chain._crop_first(wave, idx, crop, rate)
        assert a.shape == b.shape == (1, augment.N_MELS, augment.FRAMES)
        torch.testing.assert_close(b, a, atol=2e-4, rtol=0)  # float32 STFTs of the same samples, log domain


@pytest.mark.parametrize("preset", ["noise", "ts+mask", "all"])
def test_augment_breakdown_times_the_calls_the_forward_makes(preset, impulse_bank):
    """The breakdown's stages are the forward pass's own calls (``_mel_energies`` per branch, the log inside it,
    ``mask.apply``) on the
    arguments it gave them: replayed, they return the pipeline's anchor and positive exactly; the augmenter is left
    as it was (no recording attribute stays on it)."""
    from benchmarks import augment

    from .conftest import cpu_generator, make

    aug = make(preset, impulse_bank)
    x = torch.randn(4, 32000, generator=cpu_generator(0)) * 0.1
    params = aug.sample(4, 32000, cpu_generator(1))
    ref = aug(x, params=params)
    calls = augment.pipeline_calls(aug, x, params)
    assert list(calls) == ["anchor", "positive"] + (["positive masks"] if aug.positive.mask is not None else [])
    assert torch.equal(calls["anchor"](), ref.anchor)
    assert torch.equal(calls["positive masks"]() if "positive masks" in calls else calls["positive"](), ref.positive)
    assert "_mel_energies" not in vars(aug) and "log" not in vars(aug.anchor.mel) and all(
        "apply" not in vars(b.mask) for b in (aug.anchor, aug.positive) if b.mask is not None)
    assert torch.equal(aug(x, params=params).positive, ref.positive)


def test_augment_breakdown_replays_the_overflow_rescues_log_too(impulse_bank):
    """A batch with a row too loud for float32 powers takes the log after the branches (with the rescue's gain): the
    breakdown replays that log with each branch's energies and still returns the pipeline's pair exactly."""
    from benchmarks import augment

    from .conftest import cpu_generator, make

    aug = make("ts+mask", impulse_bank)
    x = torch.randn(3, 32000, generator=cpu_generator(0)) * torch.tensor([[2.0 ** 35], [0.1], [0.1]])
    params = aug.sample(3, 32000, cpu_generator(1))
    ref = aug(x, params=params)
    calls = augment.pipeline_calls(aug, x, params)
    assert torch.equal(calls["anchor"](), ref.anchor) and torch.equal(calls["positive masks"](), ref.positive)


def test_train_benchmark_quick_splits_the_step(tmp_path):
    from benchmarks import train

    res = train.main(["--quick", "--presets", "ts+mask"])
    assert set(res["results"]) == {"ts+mask [auto]", "ts+mask [torch]"}
    for r in res["results"].values():
        assert set(r["median_s"]) == set(train.PARTS) and all(v > 0 for v in r["median_s"].values())
        assert 0 < r["augment_share"] < 1
        assert abs(r["step_s"] - sum(r["median_s"].values())) < 1e-12
    text = train.write(res, tmp_path, "cpu")
    assert (tmp_path / "train.png").stat().st_size > 0 and "augment share" in text


def test_threads_benchmark_quick_measures_each_count_in_both_conditions(tmp_path):
    from benchmarks import threads

    res = threads.run([1], "small", 4, 1, 1, tmp_path / "work", 16)
    assert set(res["results"]) == {"idle", "busy"}
    for rows in res["results"].values():
        assert rows["1"]["clips_per_s"] > 0 and rows["1"]["ratio_to_1"] == 1.0
    text = threads.write(res, tmp_path, "python -m benchmarks.threads")
    assert (tmp_path / "threads.png").stat().st_size > 0 and "| busy | 1 |" in text


@pytest.mark.slow
def test_gpu_dry_run_runs_every_part_on_the_cpu(tmp_path):
    """``python -m benchmarks.gpu --dry-run``: every part's code in its own process, tiny sizes; the CUDA graph is
    skipped (no GPU) after its timing code ran; the cuda tests are run and every one recorded (skipped here)."""
    from benchmarks import gpu

    res = gpu.main(["--dry-run", "--out", str(tmp_path)])
    assert res["failures"] == []
    assert {n: r["status"] for n, r in res["parts"].items()} == {
        "tests": "ok", "kernels": "ok", "graph": "skipped", "compile": "ok", "augment": "ok", "train": "ok",
        "stretch": "ok"}
    assert res["parts"]["graph"]["reason"].startswith("no GPU")
    for preset in ("ts+mask", "all"):  # the timing code ran, eager calls in place of the replay
        assert set(res["parts"]["graph"]["details"][preset]) == {"eager_s", "replay_s"}
        compiled = res["parts"]["compile"]["details"][preset]
        assert {k for k, v in compiled.items() if isinstance(v, dict)} == {"graph breaks allowed (CPU), backend eager"}
    tests = res["parts"]["tests"]["details"]  # every test recorded: on a CPU every cuda test skips
    assert tests["passed"] == 0 and tests["failed"] == [] and len(tests["skipped"]) > 0
    assert any("test_cuda.py" in t["test"] or "test_cuda::" in t["test"] for t in tests["skipped"])
    kernels = json.loads((tmp_path / "kernels_cpu.json").read_text())
    assert kernels["faster"] in ("kernels", "torch", "tie") and kernels["phase_step"]["kernels_s"] > 0
    assert kernels["pipeline_all"]["max_abs_diff_log_mel"] > 0  # stretched rows: the kernel ran
    assert kernels["kernel_tests"] == {"passed": [], "failed": []} and not kernels["auto_should_use_kernels"]
    assert kernels["action"].startswith(("add", "remove", "none"))
    assert all(t["measured"] is not None for t in res["targets"].values())
    stretch = res["parts"]["stretch"]["details"]  # the device run's rows, on the CPU
    assert stretch["anchor"] == "augcl[torch]" and stretch["files"] == ["stretch.json", "stretch.md", "stretch.png"]
    for rows in stretch["rows"].values():
        assert rows["augcl[torch]"]["ratio_to_anchor"] == 1.0 and rows["torchaudio"]["ms"] > 0
    for name in ("gpu_dryrun.json", "gpu_dryrun.md", "augment.md", "train.md"):
        assert (tmp_path / name).stat().st_size > 0
    summary = (tmp_path / "gpu_dryrun.md").read_text()
    assert "## Failures\n\nNone." in summary and "| stretch | ok |" in summary and "torchaudio" in summary
    again = gpu.main(["--dry-run", "--out", str(tmp_path), "--parts", "tests"])  # a run split over commands
    assert list(again["parts"]) == list(gpu.PARTS) and again["failed_now"] == []
    assert [n for n, r in again["parts"].items() if not r.get("earlier_run")] == ["tests"]


def test_gpu_kernel_verdict_needs_the_kernel_faster_and_its_tests_passed():
    """``auto`` should use the kernels on a device only where they were faster and the kernel's cuda tests passed in
    the same results; a failed kernel test takes a device back out of ``AUTO_DEVICES``."""
    from benchmarks import gpu

    def verdict(faster, now, passed=(), failed=()):
        tests = {"passed_tests": ["tests.test_pair::test_cuda_equals_cpu", *passed],
                 "failed": [{"test": t, "message": "x"} for t in failed]}
        return gpu.settle_kernels({"device": "cuda", "faster": faster, "auto_uses_kernels_now": now}, tests)

    ok = verdict("kernels", False, passed=["tests.test_cuda::test_cuda_kernel_phase_step"])
    assert ok["auto_should_use_kernels"] and ok["action"] == "add 'cuda' to augcl.kernels.AUTO_DEVICES"
    assert ok["kernel_tests"] == {"passed": ["tests.test_cuda::test_cuda_kernel_phase_step"], "failed": []}
    untested = verdict("kernels", False)
    assert not untested["auto_should_use_kernels"] and "tests did not pass" in untested["action"]
    assert gpu.settle_kernels({"device": "cuda", "faster": "kernels", "auto_uses_kernels_now": False}, None)[
        "auto_should_use_kernels"] is False
    broken = verdict("kernels", True, passed=["a::test_cuda_kernel_x"], failed=["b::test_cuda_kernel_y"])
    assert broken["action"] == "remove 'cuda' from augcl.kernels.AUTO_DEVICES"
    assert verdict("torch", True)["action"].startswith("remove") and verdict("tie", False)["action"].startswith(
        "none: within")
    assert verdict("torch", False)["action"] == "none: AUTO_DEVICES agrees with this measurement"


def test_gpu_failures_are_recorded_listed_and_make_the_exit_status_nonzero(tmp_path, monkeypatch):
    import subprocess
    import sys
    import time
    from pathlib import Path

    from benchmarks import gpu

    crash = gpu.run_part_process([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], 60, tmp_path / "c.log")
    assert crash["status"] == "failed" and "exited 3" in crash["error"] and "boom" in crash["output_tail"]
    so_far = ("import json, subprocess, sys, time; open(sys.argv[2], 'w').write(json.dumps({'status': 'running', "
              "'details': {'ts+mask': 1}})); p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
              " print('grandchild', p.pid, flush=True); time.sleep(60)")  # sys.argv: -c --result FILE
    hang = gpu.run_part_process([sys.executable, "-c", so_far], 3, tmp_path / "h.log")
    assert hang["status"] == "failed" and "timed out" in hang["error"] and hang["details"] == {"ts+mask": 1}
    status = Path(f"/proc/{hang['output_tail'].split()[1]}/status")  # the part's own child went with it
    for _ in range(50):
        if not status.exists() or "\tZ" in status.read_text():
            break
        time.sleep(0.1)
    assert not status.exists() or "\tZ" in status.read_text()
    monkeypatch.setitem(gpu.PART_FUNCTIONS, "tests", lambda dry, out: 1 / 0)
    raised = gpu.run_one("tests", True, tmp_path)
    assert raised["status"] == "failed" and "ZeroDivisionError" in raised["error"] and "traceback" in raised
    res = gpu.summarize({"tests": raised, "kernels": crash, "graph": {"status": "skipped", "reason": "no GPU",
                                                                      "details": {}}}, True, "cmd")
    assert res["failures"] == ["tests", "kernels"]
    text = gpu.write(res, tmp_path)
    assert "* `tests`: ZeroDivisionError" in text and "* `kernels`: the part's process exited 3" in text
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--dry-run", "--parts", "tests", "--budget-s", "0",
                           "--out", str(tmp_path / "spent")], check=False, capture_output=True, text=True,
                          cwd=gpu.REPO)
    assert proc.returncode == 1 and "this run: FAILED: tests" in proc.stdout


def test_roofline_counts_the_mel_matmul_flops_augcl_runs():
    """The roofline's dense mel-matmul count, from the preset's shapes, is what torch's own FLOP counter sees the
    reference run; the CPU kernels run no matmul, and their sparse count is 2 flops per nonzero of librosa's
    filterbank per frame (an independent count of the triangles' spans)."""
    import librosa
    import numpy as np
    from torch.utils.flop_counter import FlopCounterMode

    from augcl import PairAugmenter
    from benchmarks import roofline

    for backend, dense in (("torch", True), ("auto", False)):
        with FlopCounterMode(display=False) as counter:
            PairAugmenter.from_preset("ts+mask", backend=backend)(torch.randn(4, 32000),
                                                                  generator=torch.Generator().manual_seed(0))
        assert counter.get_total_flops() == (roofline.work(4)["flops"]["mel matmul"] if dense else 0), backend
    nonzero = int(np.count_nonzero(librosa.filters.mel(sr=16000, n_fft=400, n_mels=64, fmin=60, fmax=7800)))
    assert roofline.work(4)["flops_sparse_mel"]["mel matmul"] == 4 * 2 * 96 * 2 * nonzero
    r = roofline.main(["--quick"])
    assert 0 < r["fraction_of_peak_flops"] and r["bound_s"] > 0 and "GFLOP" in roofline.text(r)
