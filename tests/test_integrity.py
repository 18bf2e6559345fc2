"""Run integrity: a pretraining run survives kill -9 at any instant, is never resumed under another configuration
or other data, never overwritten by accident, and every CLI refuses bad arguments with one line that names them."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import REPO, SR
from trainer import ablation, common, probe as probe_cli, pretrain as pretrain_cli, run
from trainer.pack import pack
from trainer.pretrain import PretrainConfig, pretrain
from trainer.sources import audio_folder, csv_manifest

#: a tiny CPU run: 8 clips of 1.5 s, the small encoder, batches of 4
RUN = ["--encoder", "small", "--dim", "32", "--batch-size", "4", "--clip-seconds", "1.5", "--device", "cpu",
       "--threads", "1"]


def _write_clips(folder: Path, n: int, seconds: float = 1.5, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    for k in range(n):
        x = 0.3 * np.sin(2 * np.pi * (200 + 100 * k) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(str(folder / f"{k}.wav"), x.astype(np.float32), SR, subtype="PCM_16")
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    out = root / "store"
    pack(audio_folder(_write_clips(root / "wav", 8)), out, jobs=1, progress=False)
    return out


def _cfg(store: Path, out: Path, **kw) -> PretrainConfig:
    base = dict(data=str(store), out=str(out), encoder="small", dim=32, batch_size=4, clip_seconds=1.5,
                device="cpu", threads=1, steps=4, checkpoint_every=2)
    return PretrainConfig(**(base | kw))


def _cli_error(main, argv, capsys) -> str:
    """Run a CLI's ``main``; it must exit with status 2 and one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# --- kill -9 at any instant -----------------------------------------------------------------------------------------

def _losses(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), f"a step logged twice or out of order: {steps}"
    return {r["step"]: r["loss"] for r in rows}


@pytest.mark.slow
def test_kill_9_at_random_instants_then_resume_gives_the_uninterrupted_weights(store, tmp_path):
    """20 kill -9 (half at a random instant of the process's life, startup included; half while a checkpoint is
    being written, seen by its temporary file), each followed by --resume; then the run is finished. Weights,
    optimizer state and every logged loss equal those of an uninterrupted run."""
    steps = 40
    args = [sys.executable, "-m", "trainer.pretrain", "--data", str(store), *RUN, "--steps", str(steps),
            "--checkpoint-every", "2"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    whole = tmp_path / "whole"
    t0 = time.perf_counter()
    subprocess.run(args + ["--out", str(whole)], cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    lifetime = time.perf_counter() - t0

    out, ckpt_dir = tmp_path / "killed", tmp_path / "killed" / "checkpoints"
    rnd = random.Random(0)
    kills, during_write, finished_early = 0, 0, 0
    while kills < 20:
        proc = subprocess.Popen(args + ["--out", str(out), "--resume"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills % 2 == 0:  # a random instant of the whole life: imports, store, model, steps, writes
            deadline = time.perf_counter() + rnd.uniform(0, lifetime)
            while time.perf_counter() < deadline and proc.poll() is None:
                time.sleep(0.002)
        else:  # the moment a checkpoint's temporary file exists: the write is under way
            deadline = time.perf_counter() + 120
            while proc.poll() is None and time.perf_counter() < deadline:
                if ckpt_dir.is_dir() and any(n.endswith(".tmp") for n in os.listdir(ckpt_dir)):
                    during_write += 1
                    break
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        else:
            finished_early += 1
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
            shutil.rmtree(out)  # the run finished before the kill: start over to keep killing mid-run
        proc.wait()
        proc.stderr.close()
    assert during_write >= 5, f"only {during_write} kills landed during a checkpoint write"
    done = subprocess.run(args + ["--out", str(out), "--resume"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _load(out / "checkpoints" / "last.pt"), _load(whole / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == steps
    _assert_same_tensors(a["model"], b["model"], "model")
    _assert_same_tensors(a["optimizer"], b["optimizer"], "optimizer")
    assert _losses(out) == _losses(whole)  # every step logged once, with the uninterrupted run's loss
    assert not list(out.rglob("*.tmp"))
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.pt"]


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_and_its_temporary_is_removed(store, tmp_path):
    out = tmp_path / "run"
    pretrain(_cfg(store, out, steps=2), progress=False)
    before = _load(out / "checkpoints" / "last.pt")
    stale = out / "checkpoints" / "last.pt.abc123.tmp"  # what a kill mid-write leaves
    stale.write_bytes(b"\x00" * 1000)
    (out / "metrics.jsonl").open("a").write('{"step": 3, "loss": 1.0')  # a line cut short by the kill
    pretrain(_cfg(store, out, steps=4, resume=True), progress=False)
    assert not stale.exists()
    after = _load(out / "checkpoints" / "last.pt")
    assert before["step"] == 2 and after["step"] == 4
    assert sorted(_losses(out)) == [1, 2, 3, 4]


def test_a_sigterm_mid_run_and_resume_equal_an_uninterrupted_run_in_process(store, tmp_path):
    whole = tmp_path / "whole"
    pretrain(_cfg(store, whole, steps=6), progress=False)
    split = tmp_path / "split"
    pretrain(_cfg(store, split, steps=3), progress=False)
    pretrain(_cfg(store, split, steps=6, resume=True, checkpoint_every=5), progress=False)  # may change
    _assert_same_tensors(_load(split / "checkpoints" / "last.pt")["model"],
                         _load(whole / "checkpoints" / "last.pt")["model"])
    assert _losses(split) == _losses(whole)


# --- resume: the same run or nothing --------------------------------------------------------------------------------

@pytest.fixture
def done_run(store, tmp_path) -> Path:
    out = tmp_path / "run"
    pretrain(_cfg(store, out), progress=False)
    return out


@pytest.mark.parametrize("change, names", [
    (dict(preset="noise"), ["--preset ('ts+mask' in the checkpoint, 'noise' now)"]),
    (dict(batch_size=8), ["--batch-size (4 in the checkpoint, 8 now)"]),
    (dict(pooling="max"), ["--pooling ('avg' in the checkpoint, 'max' now)"]),
    (dict(dim=64, lr=1e-4), ["--dim (32 in the checkpoint, 64 now)", "--lr (0.001 in the checkpoint, 0.0001 now)"]),
])
def test_resume_under_another_configuration_is_refused_naming_fields_and_values(store, done_run, change, names,
                                                                                   capsys):
    before = (done_run / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(common.UsageError) as e:
        pretrain(_cfg(store, done_run, steps=6, resume=True, **change), progress=False)
    for name in names:
        assert name in str(e.value)
    assert (done_run / "checkpoints" / "last.pt").read_bytes() == before  # untouched
    assert json.loads((done_run / "config.json").read_text())["preset"] == "ts+mask"


def test_resume_may_raise_steps_and_change_checkpointing_threads_and_backend_but_not_lower_steps(store, done_run):
    with pytest.raises(common.UsageError, match="--steps 2 is below the checkpoint's step 4"):
        pretrain(_cfg(store, done_run, steps=2, resume=True), progress=False)
    pretrain(_cfg(store, done_run, steps=5, resume=True, checkpoint_every=7, threads=2, backend="torch"),
             progress=False)  # trainer.run.SAME_RUN
    assert _load(done_run / "checkpoints" / "last.pt")["step"] == 5


def test_resume_on_other_data_is_refused_and_on_a_copy_of_the_same_store_accepted(store, done_run, tmp_path):
    other = tmp_path / "other"
    pack(audio_folder(_write_clips(tmp_path / "wav2", 8, seed=1)), other, jobs=1, progress=False)
    with pytest.raises(common.UsageError, match="not the data the checkpoint was trained on"):
        pretrain(_cfg(other, done_run, steps=6, resume=True), progress=False)
    folder = _write_clips(tmp_path / "wav3", 8)
    with pytest.raises(common.UsageError, match="a folder of audio would be packed anew"):
        pretrain(_cfg(folder, done_run, steps=6, resume=True), progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    pretrain(_cfg(copy, done_run, steps=6, resume=True), progress=False)  # moved store, same clips
    assert _load(done_run / "checkpoints" / "last.pt")["step"] == 6


def test_a_new_run_into_a_folder_holding_one_needs_resume_or_overwrite(store, done_run, capsys):
    metrics = (done_run / "metrics.jsonl").read_text()
    err = _cli_error(pretrain_cli.main, ["--data", str(store), *RUN, "--out", str(done_run), "--steps", "4"], capsys)
    assert "holds a run (checkpoint at step 4)" in err and "--resume" in err and "--overwrite" in err
    assert (done_run / "metrics.jsonl").read_text() == metrics
    pretrain(_cfg(store, done_run, steps=2, overwrite=True, preset="noise"), progress=False)
    assert sorted(_losses(done_run)) == [1, 2]
    assert _load(done_run / "checkpoints" / "last.pt")["config"]["preset"] == "noise"


def test_a_second_process_in_the_same_folder_is_refused(store, tmp_path):
    out = tmp_path / "busy"
    lock = run.lock_run_dir(out)
    try:
        with pytest.raises(common.UsageError, match="in use by another running process"):
            pretrain(_cfg(store, out), progress=False)
    finally:
        lock.close()
    pretrain(_cfg(store, out, steps=1), progress=False)


# --- checkpoints through one loader ---------------------------------------------------------------------------------

def test_truncated_foreign_and_missing_checkpoints_are_named(store, done_run, tmp_path, capsys):
    ckpt = done_run / "checkpoints" / "last.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    err = _cli_error(pretrain_cli.main, ["--data", str(store), *RUN, "--out", str(done_run), "--resume",
                                         "--steps", "6"], capsys)
    assert str(ckpt) in err and "cannot be read" in err and "truncated" in err
    err = _cli_error(probe_cli.main, ["--checkpoint", str(ckpt), "--data", str(store), "--test-data", str(store)],
                     capsys)
    assert str(ckpt) in err and "cannot be read" in err
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(common.UsageError, match="not an augcl pretraining checkpoint .no model, config."):
        common.read_checkpoint(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": {}, "config": {}, "step": 0, "obj": np.random.default_rng(0)}, pickled)
    with pytest.raises(common.UsageError, match="cannot be read"):  # weights_only: no arbitrary objects
        common.read_checkpoint(pickled)
    with pytest.raises(common.UsageError, match="does not exist"):
        common.read_checkpoint(tmp_path / "nope.pt")
    old = tmp_path / "v1.pt"  # before this format: RNG states in separate files; probe-able, not resumable
    torch.save({"model": {}, "config": {}, "step": 3, "optimizer": {}, "epoch": 0, "batch": 3}, old)
    assert common.read_checkpoint(old)["step"] == 3
    with pytest.raises(common.UsageError, match="older augcl"):
        common.read_checkpoint(old, for_resume=True)


# --- arguments ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, names", [
    (["--batch-size", "1"], "--batch-size must be >= 2"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
    (["--lr", "-0.001"], "--lr must be a positive number"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--clip-seconds", "0"], "--clip-seconds must be > 0"),
    (["--dim", "0"], "--dim must be >= 1"),
    (["--threads", "-1"], "--threads must be >= 1"),
    (["--data", "/no/such/folder"], "--data '/no/such/folder' is neither"),
    (["--resume", "--overwrite"], "--resume and --overwrite contradict"),
])
def test_pretrain_refuses_bad_arguments_in_one_line_before_any_work(argv, names, tmp_path, capsys):
    out = tmp_path / "never"
    err = _cli_error(pretrain_cli.main, ["--out", str(out), "--device", "cpu", *argv], capsys)
    assert names in err
    assert not out.exists()  # nothing written, nothing claimed


def test_pretrain_refuses_a_store_smaller_than_one_batch(store, tmp_path, capsys):
    err = _cli_error(pretrain_cli.main, ["--data", str(store), *RUN[:-6], "--batch-size", "16", "--device", "cpu",
                                         "--out", str(tmp_path / "o")], capsys)
    assert "holds 8 clips, fewer than one batch (--batch-size 16" in err


def _labeled_store(folder: Path, out: Path, rows: list[str]) -> Path:
    _write_clips(folder, len(rows))
    (folder / "m.csv").write_text("path,labels\n" + "".join(f"{k}.wav,{lab}\n" for k, lab in enumerate(rows)))
    pack(csv_manifest(folder / "m.csv", classes=sorted({r for r in rows if r})), out, jobs=1, progress=False)
    return out


def test_probe_names_missing_and_extra_classes_and_refuses_unlabeled_rows(tmp_path, capsys):
    a = _labeled_store(tmp_path / "a", tmp_path / "sa", ["dog", "cat", "dog", "cat"])
    b = _labeled_store(tmp_path / "b", tmp_path / "sb", ["dog", "bird", "dog", "bird"])
    err = _cli_error(probe_cli.main, ["--mode", "random", "--data", str(a), "--test-data", str(b), "--encoder",
                                      "small", "--device", "cpu"], capsys)
    assert "--test-data lacks ['cat'] and has ['bird'] that --data lacks" in err
    c = _labeled_store(tmp_path / "c", tmp_path / "sc", ["dog", "", "cat", "dog"])
    err = _cli_error(probe_cli.main, ["--mode", "random", "--data", str(c), "--test-data", str(a), "--encoder",
                                      "small", "--device", "cpu"], capsys)
    assert "1 clip(s) have no label in a single-label task" in err and "1.wav" in err


@pytest.mark.parametrize("argv, names", [
    (["--mode", "linear"], "--mode linear needs --checkpoint"),
    (["--mode", "random", "--seeds", "0"], "--seeds must be >= 1"),
    (["--mode", "random", "--lr", "0"], "--lr must be a positive number"),
    (["--mode", "random", "--max-epochs", "0"], "--max-epochs must be >= 1"),
    (["--mode", "random", "--data", "/no/store", "--test-data", "/no/store"], "--data '/no/store' does not exist"),
    (["--checkpoint", "/no/ckpt.pt"], "--checkpoint '/no/ckpt.pt' does not exist"),
])
def test_probe_refuses_bad_arguments_in_one_line(argv, names, capsys):
    assert names in _cli_error(probe_cli.main, ["--device", "cpu", *argv], capsys)


@pytest.mark.parametrize("argv, names", [
    (["--seeds", "0"], "--seeds and --probe-seeds must be >= 1"),
    (["--presets", "nope"], "--presets: unknown ['nope']"),
    (["--batch-size", "1"], "--batch-size must be >= 2"),
    (["--steps", "-3"], "--steps and --batch-size must be >= 1"),
    (["--threads", "-2"], "--threads must be >= 1"),
])
def test_ablation_refuses_bad_arguments_before_any_run(argv, names, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        ablation.main(["--out", str(tmp_path / "abl"), "--device", "cpu", *argv])
    assert exc.value.code == 2
    assert names in capsys.readouterr().err
    assert not (tmp_path / "abl").exists()


@pytest.mark.parametrize("module, argv, names", [
    ("trainer.esc50", ["/no/esc50", "/tmp/x"], "src '/no/esc50' is not a folder"),
    ("trainer.esc50", [".", "/tmp/x", "--test-fraction", "1.5"], "--test-fraction must be between 0 and 1"),
    ("trainer.esc50", [".", "/tmp/x", "--jobs", "0"], "--jobs must be >= 1"),
    ("augcl.demo", ["--n", "0"], "--n must be >= 1"),
    ("trainer.pack", [".", "/tmp/x", "--jobs", "0"], "--jobs must be >= 1"),
    ("trainer.pack", [".", "/tmp/x", "--sample-rate", "0"], "--sample-rate must be >= 1000"),
    ("trainer.pack", [".", "/tmp/x", "--files-per-shard", "0"], "--files-per-shard must be >= 1"),
    ("augcl.demo", ["--audio-dir", "/no/audio"], "--audio-dir '/no/audio' is not a folder"),
])
def test_the_other_clis_refuse_bad_arguments_in_one_line(module, argv, names, capsys):
    import importlib

    with pytest.raises(SystemExit) as exc:
        importlib.import_module(module).main(argv)
    assert exc.value.code == 2
    assert names in capsys.readouterr().err
