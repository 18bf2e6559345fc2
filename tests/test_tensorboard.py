"""TensorBoard events of pretrain and probe (trainer/tb.py), read back with TensorBoard's own loader."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import tb
from trainer.pretrain import PretrainConfig, parse_cli, pretrain
from trainer.probe import ProbeConfig, probe
from trainer.probe import parse_cli as probe_parse_cli

TINY = dict(builtin_clips=16, clip_seconds=2.0, batch_size=4, device="cpu", checkpoint_every=2, encoder="small",
            dim=32, threads=1)
SCALARS = ("loss", "acc", "clips_per_s", "lr")  # metrics.jsonl's names, as train/<name>


def _events(out: Path):
    """TensorBoard's loader on OUT/tensorboard (it applies the purge markers a resumed run writes)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / tb.SUBDIR), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A run that logged steps 3 and 4 and then lost them: checkpoint at step 2, steps 3-4 written (events flushed at
    the step-4 checkpoint), then the step-2 checkpoint put back, as if a kill had struck just before the step-4
    checkpoint landed; resumed to step 4."""
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("tb") / "run"
    pretrain(PretrainConfig(out=str(out), steps=2, **TINY), progress=False)
    at_2 = out.parent / "last-step2.pt"
    shutil.copy(out / "checkpoints" / "last.pt", at_2)
    pretrain(PretrainConfig(out=str(out), steps=4, resume=True, **TINY), progress=False)
    first = {e.step: e.value for e in _events(out).Scalars("train/clips_per_s")}
    shutil.copy(at_2, out / "checkpoints" / "last.pt")
    pretrain(PretrainConfig(out=str(out), steps=4, resume=True, **TINY), progress=False)
    return out, first


def test_pretrain_logs_the_jsonl_scalars_at_every_step_and_pairs_at_step_0(resumed):
    out, _ = resumed
    events = _events(out)
    assert {f"train/{k}" for k in SCALARS} <= set(events.Tags()["scalars"])
    assert {"pairs/anchor", "pairs/positive"} <= set(events.Tags()["images"])
    for tag in ("pairs/anchor", "pairs/positive"):
        images = events.Images(tag)
        assert [i.step for i in images] == [0]  # the first batch only: the resumed runs drew none
        assert images[0].height == 64  # mel bins; the 4 images side by side
    assert [r["lr"] for r in _rows(out)] == [1e-3] * 4


def test_a_resumed_run_logs_each_step_once_with_its_own_values(resumed):
    out, first = resumed
    rows = {r["step"]: r for r in _rows(out)}
    assert sorted(rows) == [1, 2, 3, 4]
    events = _events(out)
    for name in SCALARS:
        logged = events.Scalars(f"train/{name}")
        assert [e.step for e in logged] == [1, 2, 3, 4], name  # no step twice, none missing
        np.testing.assert_allclose([e.value for e in logged], [rows[s][name] for s in (1, 2, 3, 4)], rtol=1e-6)
    # steps 3 and 4 were logged by the lost run too, with other clips/s (timings): the resumed run's values won
    assert sorted(first) == [1, 2, 3, 4]
    redone = {e.step: e.value for e in events.Scalars("train/clips_per_s")}
    assert redone[1] == first[1] and redone[2] == first[2]
    assert (redone[3], redone[4]) != (first[3], first[4])


def test_mel_images_are_normalised_per_image_with_low_frequencies_at_the_bottom():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 1, 3, 5)  # mel bin 0 holds the smallest values
    x[1] = 7.0  # a constant image
    img = tb.mel_images(torch.cat([x, x]), n=2)
    assert img.shape == (2, 1, 3, 5)
    assert img[0].min() == 0 and img[0].max() == 1
    torch.testing.assert_close(img[0, 0, -1], torch.arange(5) / 14.0)  # bottom row = mel bin 0: values 0..4 of 0..14
    torch.testing.assert_close(img[0, 0, 0], (torch.arange(5) + 10) / 14.0)  # top row = the highest bin
    assert torch.equal(img[1], torch.zeros(1, 3, 5))


def test_probe_writes_its_curves_and_test_metrics(resumed, tmp_path):
    out, _ = resumed
    ckpt = str(out / "checkpoints" / "last.pt")
    base = dict(checkpoint=ckpt, seeds=1, builtin_train=20, builtin_test=10, device="cpu", threads=1)
    res = probe(ProbeConfig(out=str(tmp_path / "lin"), **base))
    events = _events(tmp_path / "lin")
    for name in ("macro_f1", "wAP", "mAP", "accuracy"):
        (e,) = events.Scalars(f"test/{name}")
        assert e.value == pytest.approx(res[name], rel=1e-6)
    cv = events.Scalars("linear/seed0/cv_macro_f1")
    assert [e.step for e in cv] == list(range(12))
    np.testing.assert_allclose([e.value for e in cv], res["per_seed"][0]["cv_macro_f1"], rtol=1e-6)
    # a second probe into the same folder replaces the first one's events, as it replaces metrics.json
    res = probe(ProbeConfig(out=str(tmp_path / "lin"), mode="finetune", max_epochs=2, patience=1, batch_size=4,
                            **base))
    events = _events(tmp_path / "lin")
    assert "linear/seed0/cv_macro_f1" not in events.Tags()["scalars"]
    assert len(list((tmp_path / "lin" / tb.SUBDIR).iterdir())) == 1
    curve = events.Scalars("finetune/seed0/val_macro_f1")
    assert [e.step for e in curve] == list(range(1, res["per_seed"][0]["stopped_epoch"] + 1))
    np.testing.assert_allclose([e.value for e in curve], res["per_seed"][0]["val_macro_f1"], rtol=1e-6)
    assert [e.step for e in events.Scalars("finetune/seed0/train_loss")] == [e.step for e in curve]


def test_without_tensorboard_the_run_completes_and_says_how_to_turn_it_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    out = pretrain(PretrainConfig(out=str(tmp_path / "run"), steps=1, **TINY), progress=False)
    err = capsys.readouterr().err
    assert "TensorBoard logging is off" in err and "pip install 'augcl[tensorboard]'" in err
    assert len(_rows(out)) == 1 and (out / "checkpoints" / "last.pt").is_file()
    assert not (out / tb.SUBDIR).exists()


def test_the_flag_turns_events_off_and_is_not_part_of_the_configuration(tmp_path):
    cfg, on = parse_cli(["--out", str(tmp_path / "run"), "--steps", "1"])
    assert on and "tensorboard" not in vars(cfg)  # a run's fingerprint and --resume checks ignore it
    cfg, on = parse_cli(["--no-tensorboard"])
    assert not on
    assert probe_parse_cli(["--no-tensorboard"])[1] is False and probe_parse_cli([])[1] is True
    out = pretrain(PretrainConfig(out=str(tmp_path / "off"), steps=1, **TINY), progress=False, tensorboard=False)
    assert not (out / tb.SUBDIR).exists()
