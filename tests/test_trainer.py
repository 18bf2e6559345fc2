"""The reference trainer: model, loss, metrics, pretraining (resume, SIGTERM, DDP), probes."""
import json
import math
import os
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
from hypothesis import given
from hypothesis import strategies as st
from sklearn import metrics as skm

from tests.conftest import REPO, SR
from trainer import builtin
from trainer.loss import contrastive_loss, info_nce
from trainer.metrics import clip_metrics
from trainer.model import Bilinear, ContrastiveModel, Encoder, Projection
from trainer.pack import pack
from trainer.pretrain import PretrainConfig, pretrain
from trainer.probe import ProbeConfig, probe
from trainer.sources import csv_manifest
from trainer.windows import Windows, window_starts

TINY = dict(builtin_clips=16, clip_seconds=2.0, batch_size=4, device="cpu", checkpoint_every=2)


# --- loss ---------------------------------------------------------------------------------------------------------

def test_info_nce_equals_hand_computed_cross_entropy():
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    by_hand = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(math.exp(3) / (math.exp(1) + math.exp(3)))) / 2
    assert info_nce(logits).item() == pytest.approx(by_hand, rel=1e-6)
    # with an offset (negatives gathered from other ranks), row i's target is column offset + i
    wide = torch.tensor([[0.0, 0.0, 5.0, 1.0], [0.0, 0.0, 1.0, 5.0]])
    assert info_nce(wide, offset=2).item() == pytest.approx(-math.log(math.exp(5) / (math.exp(5) + math.exp(1) + 2)), abs=2e-6)  # float32 log-sum-exp of values near 5


@given(st.integers(1, 6), st.integers(1, 8), st.sampled_from(["identity", "cola"]), st.integers(0, 2**31 - 1))
def test_bilinear_info_nce_against_a_naive_oracle(batch, dim, init, seed):
    g = torch.Generator().manual_seed(seed)
    a, p = torch.rand(batch, dim, generator=g) * 2 - 1, torch.rand(batch, dim, generator=g) * 2 - 1
    sim = Bilinear(dim, init)
    with torch.no_grad():
        sim.weight.copy_(torch.randn(dim, dim, generator=g))
    loss, acc = contrastive_loss(sim, a, p)
    a64, p64, w = a.double().numpy(), p.double().numpy(), sim.weight.detach().double().numpy()
    scale = 1 / math.sqrt(dim) if init == "identity" else 1.0
    s = [[scale * sum(a64[i, k] * w[k, m] * p64[j, m] for k in range(dim) for m in range(dim)) for j in range(batch)]
         for i in range(batch)]
    oracle = np.mean([-s[i][i] + math.log(sum(math.exp(v) for v in s[i])) for i in range(batch)])
    assert loss.item() == pytest.approx(oracle, rel=1e-4, abs=1e-5)
    assert acc.item() == pytest.approx(np.mean([int(np.argmax(s[i]) == i) for i in range(batch)]))


@pytest.mark.parametrize("init", ["identity", "cola"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # the projection's output may stay bfloat16
def test_logits_and_loss_are_float32_under_bf16_autocast(init, dtype):
    """CPU autocast stands in for CUDA's: the bilinear similarity and the loss leave it and compute in float32."""
    g = torch.Generator().manual_seed(0)
    a, p = ((torch.rand(32, 512, generator=g) * 2 - 1).to(dtype) for _ in range(2))
    sim = Bilinear(512, init)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = sim(a, p)
        loss, acc = contrastive_loss(sim, a, p)
    want = sim(a.float(), p.float())  # float32, no autocast
    assert logits.dtype == loss.dtype == torch.float32
    torch.testing.assert_close(logits, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, info_nce(want), rtol=1e-6, atol=1e-6)
    loss.backward()
    assert sim.weight.grad.dtype == torch.float32


def test_model_and_loss_run_on_fake_cuda():
    """The model, the float32 similarity (its autocast-off block on a CUDA device) and the loss on (fake) CUDA tensors:
    no device mix, no host sync. (The backward pass needs a real CUDA context: FakeTensorMode cannot run it.)"""
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = ContrastiveModel(dim=64, encoder="small")
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to("cuda")
        anchor, positive = torch.randn(4, 1, 64, 96, device="cuda"), torch.randn(4, 1, 64, 96, device="cuda")
        loss, acc = contrastive_loss(model.similarity, *model(anchor, positive))
        assert loss.device.type == acc.device.type == "cuda" and loss.dtype == torch.float32 and loss.requires_grad


def test_model_shapes_and_ranges():
    enc = Encoder()
    h = enc(torch.randn(2, 1, 64, 96))
    assert h.shape == (2, 1280)
    z = Projection()(h)
    assert z.shape == (2, 512) and z.abs().max() < 1
    with pytest.raises(ValueError, match="n_mels"):
        enc(torch.randn(2, 64, 96))
    assert torch.equal(Bilinear(4).weight, torch.eye(4))


def test_pretrain_steps_change_weights_and_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = ContrastiveModel()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(8, 1, 64, 96, generator=g)
    anchor, positive = base + 0.3 * torch.randn(base.shape, generator=g), base + 0.3 * torch.randn(base.shape, generator=g)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = []
    for _ in range(8):
        loss, _ = contrastive_loss(model.similarity, *model(anchor, positive))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    changed = [k for k, v in model.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert "similarity.weight" in changed and "encoder.features.0.0.weight" in changed and "projection.linear.weight" in changed
    assert np.mean(losses[-2:]) < 0.6 * losses[0], losses  # observed: 2.5 -> about 0.1


# --- metrics ------------------------------------------------------------------------------------------------------

@given(st.integers(2, 6), st.integers(5, 60), st.integers(0, 2**31 - 1))
def test_single_label_metrics_match_scikit_learn(n_classes, n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    scores = rng.dirichlet(np.ones(n_classes), n)
    m = clip_metrics(y, scores)
    pred = scores.argmax(1)
    labels = list(range(n_classes))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0))
    assert m["wAP"] == pytest.approx(skm.precision_score(y, pred, labels=labels, average="weighted", zero_division=0))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert list(m["per_class_f1"].values()) == pytest.approx(
        skm.f1_score(y, pred, labels=labels, average=None, zero_division=0).tolist())
    onehot = np.eye(n_classes)[y]
    present = onehot.sum(0) > 0
    ap = [skm.average_precision_score(onehot[:, k], scores[:, k]) for k in range(n_classes) if present[k]]
    assert m["mAP"] == pytest.approx(np.mean(ap))
    cm = skm.confusion_matrix(y, pred, labels=labels, normalize="true")
    np.testing.assert_allclose(np.asarray(m["confusion_normalized"])[present], cm[present], atol=1e-12)


@given(st.integers(2, 6), st.integers(5, 60), st.integers(0, 2**31 - 1))
def test_multi_label_metrics_match_scikit_learn(n_classes, n, seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_classes)) < 0.3).astype(int)
    scores = np.round(rng.random((n, n_classes)), 1)  # ties on purpose: AP must break them as scikit-learn does
    m = clip_metrics(y, scores)
    pred = (scores >= 0.5).astype(int)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    if y.sum() > 0:
        assert m["wAP"] == pytest.approx(skm.precision_score(y, pred, average="weighted", zero_division=0))
    present = y.sum(0) > 0
    if present.any():
        ap = [skm.average_precision_score(y[:, k], scores[:, k]) for k in range(n_classes) if present[k]]
        assert m["mAP"] == pytest.approx(np.mean(ap))
    assert "accuracy" not in m


def test_metrics_name_bad_shapes():
    with pytest.raises(ValueError, match="scores"):
        clip_metrics([0, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="single-label"):
        clip_metrics([0, 3], np.ones((2, 2)))


# --- pretraining: checkpoints, resume, SIGTERM, DDP ---------------------------------------------------------------

def _weights(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("pt") / "whole"
    pretrain(PretrainConfig(out=str(out), steps=6, **TINY), progress=False)
    return out


def test_pretrain_writes_config_metrics_checkpoint_and_plot(uninterrupted):
    cfg = json.loads((uninterrupted / "config.json").read_text())
    assert cfg["preset"] == "ts+mask" and cfg["steps"] == 6 and cfg["world_size"] == 1
    rows = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) and r["clips_per_s"] > 0 for r in rows)
    ckpt = torch.load(uninterrupted / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 6 and {"model", "optimizer", "epoch", "batch", "config", "rng", "store"} <= set(ckpt)
    assert len(ckpt["rng"]) == 1 and {"rng", "augment"} <= set(ckpt["rng"][0])  # RNG states inside: one file
    assert sorted(p.name for p in (uninterrupted / "checkpoints").iterdir()) == ["last.pt"]
    assert (uninterrupted / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_bit_for_bit(uninterrupted, tmp_path):
    out = tmp_path / "split"
    pretrain(PretrainConfig(out=str(out), steps=3, **TINY), progress=False)
    pretrain(PretrainConfig(out=str(out), steps=6, resume=True, **TINY), progress=False)
    _assert_same_weights(_weights(out), _weights(uninterrupted))


def test_sigterm_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "trainer.pretrain", "--out", str(out), "--steps", "6", "--builtin-clips", "16",
           "--clip-seconds", "2", "--batch-size", "4", "--device", "cpu", "--checkpoint-every", "100"]
    for _ in range(3):  # on a starved machine the 6 steps may end before the signal lands: then run again
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
        metrics, deadline = out / "metrics.jsonl", time.time() + 120
        while (time.time() < deadline and proc.poll() is None
               and not (metrics.is_file() and metrics.read_text().count("\n") >= 2)):
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        step = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["step"]
        if step < 6:
            break
        shutil.rmtree(out)
    assert 2 <= step < 6, "SIGTERM should stop the run early, after a checkpoint"
    assert "--resume" in err
    pretrain(PretrainConfig(out=str(out), steps=6, resume=True, checkpoint_every=100,
                            **{k: v for k, v in TINY.items() if k != "checkpoint_every"}), progress=False)
    _assert_same_weights(_weights(out), _weights(uninterrupted))


@pytest.mark.slow
def test_torchrun_two_cpu_processes_with_gathered_negatives(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "trainer.pretrain", "--out", str(out), "--steps", "2", "--builtin-clips", "16", "--clip-seconds", "2",
           "--batch-size", "2", "--device", "cpu", "--gather-negatives"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["gather_negatives"]
    ckpt = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["augment"], ckpt["rng"][1]["augment"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    # resumed by both ranks, each from its own RNG states; by one process: refused (the RNG states are per rank)
    more = cmd[:cmd.index("--steps")] + ["--steps", "3"] + cmd[cmd.index("--steps") + 2:] + ["--resume"]
    run = subprocess.run(more, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["step"] == 3
    single = [sys.executable, "-m", "trainer.pretrain", *cmd[cmd.index("--out"):]] + ["--steps", "4", "--resume"]
    run = subprocess.run(single, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    assert run.returncode == 2 and "written by 2 process(es), this run has 1" in run.stderr, run.stderr[-2000:]


# --- probes -------------------------------------------------------------------------------------------------------

def test_windows_tile_the_clip_with_the_pair_front_end():
    win = Windows("ts+mask", SR)
    wave = torch.randn(3 * SR)
    clip, starts = window_starts([3 * SR], win.segment)
    assert win.segment == 95 * 160 and len(starts) == 4  # ceil(48000 / 15200) windows spread over [0, 32800]
    assert starts.tolist() == [0, 10933, 21867, 32800]
    padded = torch.nn.functional.pad(wave, (win.mel.context, win.mel.context))
    batch = torch.stack([padded[s:s + win.width] for s in starts.tolist()])
    w = win(batch)
    assert w.shape == (4, 1, 64, 96)
    # the window's frames are those of the whole clip's log-mel at the window's start (hop-aligned start: 0); the
    # public LogMel's centred frames (zero padding) are the front end's frames of the zero-padded clip
    whole = win.mel(wave[None])
    torch.testing.assert_close(w[0, 0], whole[0, :, :96], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(whole, win.mel.from_context(padded[None]))


def test_linear_probe_on_a_tiny_run_writes_every_metric_and_both_pngs(uninterrupted, tmp_path):
    res = probe(ProbeConfig(checkpoint=str(uninterrupted / "checkpoints" / "last.pt"), out=str(tmp_path / "lin"),
                            seeds=2, builtin_train=20, builtin_test=10, device="cpu"))
    saved = json.loads((tmp_path / "lin" / "metrics.json").read_text())
    for key in ("macro_f1", "wAP", "mAP", "accuracy", "per_class_f1", "confusion_normalized"):
        assert key in saved and key in res
    assert set(saved["per_class_f1"]) == set(builtin.CLASSES) and saved["n_clips"] == 10
    assert saved["seeds"] == 2 and len(saved["per_seed"]) == 2 and "macro_f1_std" in saved and "lam" in saved
    assert np.allclose(np.asarray(saved["confusion_normalized"]).sum(1), 1.0)
    for png in ("per_class_f1.png", "confusion.png"):
        assert (tmp_path / "lin" / png).read_bytes()[:4] == b"\x89PNG"


def test_finetune_and_supervised_on_a_multi_label_store(uninterrupted, tmp_path):
    rows = []
    for k in range(12):
        x = builtin.render_clip(0, "train", k, seconds=2.0)
        sf.write(str(tmp_path / f"{k}.wav"), x, SR, subtype="PCM_16")
        rows.append(f"{k}.wav,{'a;b' if k % 3 == 0 else 'a' if k % 3 == 1 else 'c'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    store = tmp_path / "store"
    pack(csv_manifest(tmp_path / "m.csv"), store, jobs=1, progress=False)
    for mode, ckpt in (("finetune", str(uninterrupted / "checkpoints" / "last.pt")), ("supervised", None)):
        res = probe(ProbeConfig(checkpoint=ckpt, mode=mode, data=str(store), test_data=str(store),
                                out=str(tmp_path / mode), max_epochs=2, patience=1, seeds=1, batch_size=4,
                                encoder="small", device="cpu"))
        assert res["multi_label"] and set(res["per_class_f1"]) == {"a", "b", "c"} and "accuracy" not in res
        assert 0 <= res["mAP"] <= 1 and (tmp_path / mode / "confusion.png").is_file()
        assert res["early_stopping"] and 1 <= res["best_epoch"] <= res["stopped_epoch"] <= 2
    with pytest.raises(ValueError, match="--checkpoint"):
        probe(ProbeConfig(mode="linear", data=str(store), test_data=str(store)))


@pytest.mark.slow
def test_ablation_tiny_writes_both_tables_and_refuses_a_mismatched_reuse(tmp_path):
    from trainer import ablation

    tiny = ["--presets", "noise", "ts+mask", "--steps", "1", "--batch-size", "4", "--builtin-clips", "16",
            "--builtin-train", "20", "--builtin-test", "10", "--device", "cpu", "--seeds", "2", "--probe-seeds", "1",
            "--max-epochs", "2", "--patience", "1", "--out", str(tmp_path / "abl")]
    res = ablation.main(tiny + ["--report", str(tmp_path / "docs" / "abl.md")])
    assert set(res["runs"]) == {"noise", "ts+mask", "supervised", "random_init"}
    assert set(res["runs"]["ts+mask"]) == {0, 1} and len(res["runs"]["supervised"]) == 2
    cell = res["summary"]["ts+mask"]["linear"]["macro_f1"]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(np.mean(cell["values"]))
    assert cell["std"] == pytest.approx(np.std(cell["values"], ddof=1))
    diff = cell["vs_noise"]
    noise = res["summary"]["noise"]["linear"]["macro_f1"]["values"]
    assert diff["mean"] == pytest.approx(np.mean(np.subtract(cell["values"], noise)))
    text = (tmp_path / "abl" / "ablation.md").read_text()
    assert "## Macro F1" in text and "## wAP" in text and "| Time stretching + time/freq masking |" in text
    assert " ± " in text and "2 pretraining seeds" in text
    assert (tmp_path / "abl" / "per_class_f1.png").is_file() and (tmp_path / "docs" / "abl_per_class_f1.png").is_file()
    assert "abl_per_class_f1.png" in (tmp_path / "docs" / "abl.md").read_text()
    again = ablation.main(tiny)
    assert again["summary"] == res["summary"]  # finished runs are reused, not redone
    with pytest.raises(SystemExit):  # other settings into the same folder: refused, not silently reused
        ablation.main(tiny + ["--normalize", "none"])
    with pytest.raises(ValueError, match="differs in normalize"):
        ablation.run(ablation.parser().parse_args(tiny + ["--normalize", "none"]))
