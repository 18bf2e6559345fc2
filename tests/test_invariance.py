"""trainer.invariance: the metrics against a naive oracle, the windows against the probe's, padding never read, the
log-mel baseline's exact gain shift, the CLI's outputs and errors, and the ablation's reuse of finished runs."""
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given
from hypothesis import strategies as st

from augcl import Gain
from tests.conftest import SR
from tests.test_probe import small_checkpoint, synthetic
from trainer import ablation
from trainer import invariance as I
from trainer import windows as P


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A labeled store of 9 noisy tones of 0.6-2.5 s (never silent) and a small-encoder checkpoint."""
    root = tmp_path_factory.mktemp("inv")
    store = synthetic(root / "s", 3, (0.6, 2.5), 3, "c")
    return root, store, small_checkpoint(root / "small.pt")


def cfg_for(tiny, **kw) -> I.InvarianceConfig:
    root, store, ckpt = tiny
    base = dict(checkpoint=ckpt, data=str(store.root), out=str(root / "out"), threads=1, rir="none")
    return I.InvarianceConfig(**(base | kw))


# --- metrics ---------------------------------------------------------------------------------------------------

def naive(original: np.ndarray, altered: np.ndarray) -> dict:
    """Straight from the definitions, with loops."""
    n = len(original)
    cos = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    same = [cos(original[i], altered[i]) for i in range(n)]
    diff = [cos(original[i], original[j]) for i in range(n) for j in range(n) if i != j]
    hits = {1: 0, 5: 0}
    for i in range(n):
        rank = sum(cos(altered[i], original[j]) >= same[i] for j in range(n) if j != i)
        for k in hits:
            hits[k] += rank < k
    cs, cd = np.mean(same), np.mean(diff)
    return {"cos_same": cs, "cos_diff": cd, "score": (cs - cd) / (1 - cd), "top1": hits[1] / n, "top5": hits[5] / n}


@given(n=st.integers(2, 12), d=st.integers(2, 6), seed=st.integers(0, 10_000), noise=st.floats(0, 2))
def test_retrieval_metrics_match_a_naive_oracle(n, d, seed, noise):
    rng = np.random.default_rng(seed)
    original = rng.standard_normal((n, d))
    altered = original + noise * rng.standard_normal((n, d))
    got = I.retrieval_metrics(torch.from_numpy(original), torch.from_numpy(altered))
    want = naive(original, altered)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_identical_copies_score_one_and_independent_copies_sit_at_chance():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((200, 32)))
    same = I.retrieval_metrics(x, 3.0 * x)  # cosine ignores scale
    assert same["cos_same"] == pytest.approx(1.0) and same["top1"] == 1.0 and same["top5"] == 1.0
    assert same["score"] == pytest.approx(1.0)
    other = I.retrieval_metrics(x, torch.from_numpy(rng.standard_normal((200, 32))))
    # each copy's own original is uniformly ranked among 200: expected top-1 0.005, top-5 0.025 (binomial tails)
    assert other["top1"] <= 0.03 and other["top5"] <= 0.07
    assert abs(other["cos_same"]) < 0.05 and abs(other["score"]) < 0.05


# --- windows and padding --------------------------------------------------------------------------------------

def test_clip_windows_equal_the_probes_windows_and_never_read_padding(tiny):
    _, store, _ = tiny
    windows = P.Windows("ts+mask", SR)
    gains = store.gains("rms")
    idx = np.arange(len(store))
    wave, lengths = I.read_clips(store, idx, gains)
    garbage = wave.clone()
    garbage[torch.arange(wave.shape[1]) >= lengths[:, None]] = 1e3  # padding that must never be read
    x, clip, frames = I.clip_windows(garbage, lengths, windows)
    pclip, pstart = P.tiles(store, windows)
    np.testing.assert_array_equal(clip.numpy(), pclip)
    ref = P.read_windows(store, pclip, pstart, gains, windows)
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    n = store.length[pclip]
    assert frames.tolist() == np.clip(-(-(n - pstart) // 160), 1, 96).tolist()


def test_a_clips_embedding_does_not_depend_on_the_clips_beside_it(tiny):
    root, store, ckpt = tiny
    cfg = cfg_for(tiny, models=("pretrained", "logmel"), clip_batch=4)
    models, preset, normalize = I._models(cfg)
    windows = P.Windows(preset, SR)
    reps = I.Reps(models, True)
    gains = store.gains(normalize)
    longest = int(np.argmax(store.length))
    short = int(np.argmin(store.length))
    together = I.embed(store, np.array([short, longest]), gains, windows, reps, "cpu", cfg)
    alone = I.embed(store, np.array([short]), gains, windows, reps, "cpu", cfg)
    for name in alone:
        torch.testing.assert_close(together[name][:1], alone[name], rtol=1e-5, atol=1e-6)


def test_the_log_mel_baseline_of_a_gained_clip_is_the_original_shifted_by_the_gain(tiny):
    """A gain g > 1 turns each bin's log(mel + e) into log(g^2 mel + e) (e = 1e-6): a shift of at most 2 ln g, and
    short of it by log((mel + e) / (mel + e / g^2)) < e / mel, under 2e-3 for these clips (tones in noise at
    -20 dBFS RMS, every band's mel energy above 5e-4). The time-averaged log-mel moves by that in every band."""
    _, store, ckpt = tiny
    cfg = cfg_for(tiny, models=("logmel",))
    models, preset, normalize = I._models(cfg)
    windows, reps, gains = P.Windows(preset, SR), I.Reps(models, True), store.gains(normalize)
    idx = np.arange(len(store))
    original = I.embed(store, idx, gains, windows, reps, "cpu", cfg)["logmel"]
    gained = I.embed(store, idx, gains, windows, reps, "cpu", cfg, wave_t=Gain((12.0, 12.0), p=1.0),
                     generator=torch.Generator().manual_seed(0))["logmel"]
    full = 12.0 * math.log(10) / 10  # 2 ln g
    short = full - (gained - original)
    assert short.min() > -1e-5 and short.max() < 2e-3  # float32 log-mels: -1e-5 of rounding
    # so the copy's cosine to its original is the closed form cos(v, v + d) with the measured shift d ~ 2 ln g
    v, w = original, original + full
    closed = ((v * w).sum(1) / (v.norm(dim=1) * w.norm(dim=1))).mean()
    assert I.retrieval_metrics(original, gained)["cos_same"] == pytest.approx(float(closed), abs=1e-4)


# --- the command ----------------------------------------------------------------------------------------------

def test_cli_writes_json_markdown_and_png_with_every_nuisance(tiny, tmp_path):
    root, store, ckpt = tiny
    irs = tmp_path / "irs"
    irs.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        ir = np.exp(-np.arange(1600) / 300.0) * rng.standard_normal(1600)
        ir[0] = 1.0
        sf.write(str(irs / f"room{k}.wav"), (0.5 * ir / np.abs(ir).max()).astype(np.float32), SR)
    out = tmp_path / "out"
    result = I.main(["--checkpoint", ckpt, "--data", str(store.root), "--out", str(out), "--threads", "1",
                     "--stretch-rates", "0.8", "1.25", "--snr-db", "0", "--gain-db", "-6", "--rir", str(irs),
                     "--max-clips", "6"])
    for name in ("invariance.json", "invariance.md", "invariance.png"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "invariance.json").read_text())
    assert saved["n_clips"] == 6 and saved["rir_bank"]["n_irs"] == 2
    assert saved["representations"] == ["h", "z", "random_h", "random_z", "logmel"]
    assert list(saved["results"]["h"]) == ["stretch@0.8", "stretch@1.25", "rir@bank", "noise@0 dB", "gain@-6 dB",
                                           "mask@time", "mask@freq"]
    for rep in saved["results"].values():
        for m in rep.values():
            assert 0 <= m["top1"] <= m["top5"] <= 1 and -1 <= m["cos_diff"] <= 1
    assert "| stretch@0.8 |" in (out / "invariance.md").read_text()
    assert result["results"] == saved["results"]


@pytest.mark.parametrize("args, words", [
    ([], "--checkpoint is required"),
    (["--checkpoint", "/nope/last.pt"], "--checkpoint"),
    (["--data", "/nope/store"], "--data '/nope/store' does not exist"),
    (["--stretch-rates", "0"], "--stretch-rates must lie in"),
    (["--snr-db", "nan"], "--snr-db must be finite"),
    (["--gain-db", "99"], "--gain-db must be"),
    (["--models", "h"], "--models must be some of"),
    (["--masks", "both"], "--masks must be some of"),
    (["--rir", "/nope/irs"], "--rir must be auto, simulated, none or a folder"),
    (["--max-clips", "-1"], "--max-clips must be >= 0"),
])
def test_bad_arguments_give_one_line_naming_the_argument(tiny, capsys, args, words):
    _, store, ckpt = tiny
    base = [] if args == [] or args[0] == "--checkpoint" else ["--checkpoint", ckpt]
    base += [] if "--data" in args else ["--data", str(store.root)]
    with pytest.raises(SystemExit) as e:
        I.main(base + args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


# --- the ablation ---------------------------------------------------------------------------------------------

def test_ablation_reuses_a_finished_invariance_run_and_redoes_none(tiny, tmp_path, monkeypatch):
    root, store, ckpt = tiny
    runs = {}
    for preset in ("noise", "ts"):
        d = tmp_path / preset / "seed0" / "pretrain"
        (d / "checkpoints").mkdir(parents=True)
        (d / "checkpoints" / "last.pt").write_bytes(open(ckpt, "rb").read())
        (d / "fingerprint.json").write_text(json.dumps({"preset": preset}))
        runs[preset] = str(d / "checkpoints" / "last.pt")
    calls = []

    def fake(cfg, checkpoints):
        calls.append(cfg)
        result = {"n_clips": 9, "results": {}}
        (tmp_path / "inv" / "invariance.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(ablation, "invariance", fake)
    args = ablation.parser().parse_args(["--test-data", str(store.root), "--threads", "1"])
    stores = {"test_fingerprint": "abc"}
    first = ablation._invariance(args, tmp_path / "inv", runs, 0, stores)
    again = ablation._invariance(args, tmp_path / "inv", runs, 0, stores)
    assert len(calls) == 1 and first == again
    with pytest.raises(ValueError, match="differs in seed"):  # another seed's run is never reused
        ablation._invariance(args, tmp_path / "inv", runs, 1, stores)


def test_ablation_invariance_summary_is_mean_and_std_over_seeds():
    def one(top1: float) -> dict:
        m = {"top1": top1, "top5": 1.0, "cos_same": 0.9, "cos_diff": 0.5, "score": 0.8}
        return {"n_clips": 10, "rir_bank": {"source": "x"}, "chance": {"top1": 0.1, "top5": 0.5},
                "results": {rep: {"gain@+6 dB": m} for rep in ("noise:h", "logmel")}}

    s = ablation.summarize_invariance({0: one(0.5), 1: one(0.7), 2: one(0.9)})
    cell = s["results"]["noise:h"]["gain@+6 dB"]["top1"]
    assert cell["mean"] == pytest.approx(0.7) and cell["std"] == pytest.approx(0.2) and s["seeds"] == [0, 1, 2]


def test_a_stretched_copy_is_tiled_over_its_new_length(tiny):
    """TimeStretch(leave_length_unchanged=False) makes a clip of n samples ceil(n / rate) long; the copy gets the
    probe's windows for that length (k = ceil(length / segment)), not the original's."""
    _, store, _ = tiny
    cfg = cfg_for(tiny)
    windows, gains = P.Windows("ts+mask", SR), store.gains("rms")
    idx = np.arange(len(store))
    rate = 0.8
    t = I.TimeStretch(rates=(rate,), p=1.0, leave_length_unchanged=False)
    clips = torch.cat([c for _, _, c in I.altered_windows(store, idx, gains, windows, "cpu", cfg, wave_t=t,
                                                          generator=torch.Generator().manual_seed(0))])
    stretched = np.ceil(store.length / rate).astype(np.int64)
    want = np.maximum(1, -(-stretched // windows.segment))
    np.testing.assert_array_equal(torch.bincount(clips, minlength=len(store)).numpy(), want)
    assert (want > np.maximum(1, -(-store.length // windows.segment))).any()  # the test can tell them apart
