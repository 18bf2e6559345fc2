"""The probe: window tiling, level normalisation, BatchNorm re-estimation, the converged linear solver and its
grouped CV, grouped validation splits and early stopping, on small synthetic stores and the "small" encoder."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from sklearn.linear_model import LogisticRegression

from augcl.functional import normalize_level
from tests.conftest import SR
from trainer import finetune as FT
from trainer import linear as L
from trainer import probe as P
from trainer import splits as S
from trainer import windows as W
from trainer.data import PackedStore, to_float
from trainer.model import Classifier, ContrastiveModel, build_encoder
from trainer.pack import pack
from trainer.sources import csv_manifest

FREQS = {"lo": 300.0, "mid": 1000.0, "hi": 3000.0}
SEG = 95 * 160  # the paper's window: 96 frames at hop 160


def clip_of(label: str, seconds: float, rng) -> np.ndarray:
    """A tone of the class's frequency (random phase, level and slight detune) in white noise, never silent."""
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    f = FREQS[label] * rng.uniform(0.97, 1.03)
    x = rng.uniform(0.05, 0.5) * (np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) + 0.3 * rng.standard_normal(n))
    return np.clip(x, -0.99, 0.99)


def make_store(root, clips) -> PackedStore:
    """``clips``: (name, samples, label, group) -> a labeled packed store with a group per clip."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,labels,group"]
    for name, x, label, group in clips:
        sf.write(str(root / f"{name}.wav"), x, SR, subtype="PCM_16")
        rows.append(f"{name}.wav,{label},{group}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    pack(csv_manifest(root / "m.csv"), root / "store", jobs=1, progress=False)
    return PackedStore(root / "store")


def synthetic(root, per_class: int, seconds, seed: int, prefix: str, group_size: int = 1) -> PackedStore:
    rng = np.random.default_rng(seed)
    clips = []
    for label in FREQS:
        for k in range(per_class):
            s = seconds if np.isscalar(seconds) else rng.uniform(*seconds)
            clips.append((f"{prefix}{label}{k}", clip_of(label, s, rng), label, f"{prefix}{label}{k // group_size}"))
    return make_store(root, clips)


def small_checkpoint(path, normalize: str = "rms") -> str:
    torch.manual_seed(0)
    model = ContrastiveModel(32, "avg", "identity", "small")
    config = {"preset": "ts+mask", "dim": 32, "pooling": "avg", "bilinear_init": "identity", "encoder": "small",
              "normalize": normalize}
    torch.save({"model": model.state_dict(), "config": config}, path)
    return str(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    train = synthetic(root / "train", 6, (0.6, 2.5), 1, "tr")
    test = synthetic(root / "test", 3, (0.6, 2.5), 2, "te")
    return root, train, test, small_checkpoint(root / "small.pt")


# --- windows --------------------------------------------------------------------------------------------------

def test_window_starts_against_a_hand_computed_reference():
    lengths = np.array([0, 8000, SEG, SEG + 1, 2 * SEG, 40000, 60 * SR])
    clip, start = W.window_starts(lengths, SEG)
    ref_clip, ref_start = [], []
    for i, n in enumerate(lengths.tolist()):
        k = max(1, math.ceil(n / SEG))
        span = max(n - SEG, 0)
        for j in range(k):
            ref_clip.append(i)
            ref_start.append(0 if k == 1 else math.floor(j * span / (k - 1) + 0.5))
    np.testing.assert_array_equal(clip, ref_clip)
    np.testing.assert_array_equal(start, ref_start)
    by_clip = {i: start[clip == i].tolist() for i in range(len(lengths))}
    assert by_clip[0] == [0] and by_clip[1] == [0] and by_clip[2] == [0]  # short or exact clips: one window
    assert by_clip[3] == [0, 1] and by_clip[4] == [0, SEG]
    assert by_clip[5] == [0, 12400, 24800]  # 40000 samples: 3 windows over [0, 24800]
    assert len(by_clip[6]) == math.ceil(60 * SR / SEG) == 64
    for i, n in enumerate(lengths.tolist()):
        s = np.asarray(by_clip[i])
        if n >= SEG:
            assert s.min() == 0 and s.max() + SEG == n  # first at the start, last ends at the clip's end
            assert np.all(np.diff(s) <= SEG)  # no gaps: the windows cover the clip
        covered = np.zeros(max(n, 1), bool)
        for a in s:
            covered[a:a + SEG] = True
        assert covered[:n].all()


def test_read_windows_is_the_normalised_clip_with_context_and_zeros_beyond_its_ends(stores, tmp_path):
    _, train, _, _ = stores
    windows = W.Windows("ts+mask", SR)
    c = windows.context
    for mode in ("rms", "peak", "none"):
        gains = train.gains(mode)
        for i in (0, 7, len(train) - 1):
            n = int(train.length[i])
            x = to_float(torch.from_numpy(train.clip(i).copy()))[None]
            ref = normalize_level(x, torch.tensor([n]), mode)[0].numpy()
            padded = np.concatenate([np.zeros(c, np.float32), ref, np.zeros(SEG + c, np.float32)])
            _, starts = W.window_starts([n], SEG)
            got = W.read_windows(train, np.full(len(starts), i), starts, gains, windows).numpy()
            for row, s in enumerate(starts.tolist()):
                np.testing.assert_allclose(got[row], padded[s:s + windows.width], rtol=2e-6, atol=1e-7)
    spec = windows(torch.randn(3, windows.width))
    assert spec.shape == (3, 1, 64, 96)


# --- the linear probe -----------------------------------------------------------------------------------------

def test_a_60_s_clip_in_the_test_store_changes_no_other_clip_and_gets_ceil_60s_windows(tmp_path):
    rng = np.random.default_rng(3)
    train = [(f"tr{k}", clip_of(lab, 1.0, rng), lab, f"g{k}") for k, lab in enumerate(list(FREQS) * 4)]
    test = [(f"te{k}", clip_of(lab, 1.0, rng), lab, f"t{k}") for k, lab in enumerate(list(FREQS) * 2)]
    make_store(tmp_path / "train", train)
    make_store(tmp_path / "a", test)
    longer = make_store(tmp_path / "b", test + [("long", clip_of("lo", 60.0, rng), "lo", "long")])
    ckpt = small_checkpoint(tmp_path / "small.pt")
    # one batch holds exactly the original clips' 12 windows (2 per 1-s clip), so they are computed alike
    base = dict(checkpoint=ckpt, data=str(tmp_path / "train" / "store"), device="cpu", seeds=1, window_batch=12)
    res_a = P.probe(P.ProbeConfig(test_data=str(tmp_path / "a" / "store"), out=str(tmp_path / "out_a"), **base))
    res_b = P.probe(P.ProbeConfig(test_data=str(tmp_path / "b" / "store"), out=str(tmp_path / "out_b"), **base))
    a = np.load(tmp_path / "out_a" / "scores.npz")
    b = np.load(tmp_path / "out_b" / "scores.npz")
    paths_b = [p.rsplit("/", 1)[-1] for p in longer.paths()]
    keep = [paths_b.index(p.rsplit("/", 1)[-1]) for p in PackedStore(tmp_path / "a" / "store").paths()]
    np.testing.assert_array_equal(b["scores"][keep], a["scores"])  # bit-identical
    from trainer.metrics import clip_metrics
    assert clip_metrics(b["targets"][keep], b["scores"][keep])["macro_f1"] == res_a["macro_f1"]
    assert res_b["test_windows"] - res_a["test_windows"] == math.ceil(60 * SR / SEG) == 64
    assert res_a["test_windows"] == 12 and res_a["n_clips"] == 6 and res_b["n_clips"] == 7


def test_probe_runs_when_every_clip_is_half_a_second(tmp_path):
    train = synthetic(tmp_path / "train", 4, 0.5, 4, "tr")
    test = synthetic(tmp_path / "test", 2, 0.5, 5, "te")
    res = P.probe(P.ProbeConfig(checkpoint=small_checkpoint(tmp_path / "s.pt"), data=str(train.root),
                                test_data=str(test.root), out=str(tmp_path / "out"), device="cpu", seeds=2))
    assert res["test_windows"] == len(test) == 6 and res["train_windows"] == len(train) == 12
    assert res["seeds"] == 2 and len(res["per_seed"]) == 2 and "macro_f1_std" in res and "wAP_std" in res
    assert 0 <= res["macro_f1"] <= 1 and (tmp_path / "out" / "confusion.png").is_file()


def blobs(n_per_class: int, rng, means) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(len(means)), n_per_class)
    return means[y] + rng.standard_normal((len(y), means.shape[1])), y


@pytest.mark.parametrize("dims", [200, 600])  # 600 > 400 examples: the solver's row-space path
def test_fit_linear_converges_and_matches_scikit_learn(dims):
    rng = np.random.default_rng(0)
    means = rng.standard_normal((10, dims)) * 0.25 * math.sqrt(200 / dims)  # overlapping: neither solver reaches 100 %
    x, y = blobs(40, rng, means)
    x_test, y_test = blobs(100, rng, means)
    mu, sd = x.mean(0), x.std(0, ddof=1)
    xs, xs_test = (x - mu) / sd, (x_test - mu) / sd
    lam = 1e-2
    w, b, info = L.fit_linear(torch.from_numpy(xs), torch.from_numpy(y), 10, False, lam)
    acc = np.mean((xs_test @ w.numpy().T + b.numpy()).argmax(1) == y_test)
    sk = LogisticRegression(C=1.0 / (lam * len(x)), max_iter=20000, tol=1e-10).fit(xs, y)
    assert 0.3 < acc < 0.99
    assert abs(acc - sk.score(xs_test, y_test)) <= 0.01
    np.testing.assert_allclose(w.numpy() - w.numpy().mean(0), sk.coef_ - sk.coef_.mean(0), atol=1e-4)
    # the objective's gradient at the returned solution, recomputed independently
    wt, bt = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    xt = torch.from_numpy(xs)
    obj = torch.nn.functional.cross_entropy(xt @ wt.T + bt, torch.from_numpy(y)) + 0.5 * lam * wt.square().sum()
    obj.backward()
    assert torch.cat([wt.grad.flatten(), bt.grad]).norm() < 1e-5 and info["grad_norm"] < 1e-5


def test_multi_label_fit_is_one_vs_rest_logistic_regression():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((150, 20))
    y = (x[:, :3] + 0.8 * rng.standard_normal((150, 3)) > 0).astype(np.float64)
    lam = 1e-2
    w, b, _ = L.fit_linear(torch.from_numpy(x), torch.from_numpy(y), 3, True, lam)
    for c in range(3):  # each class its own binary logistic regression with the same penalty
        sk = LogisticRegression(C=1.0 / (lam * len(x)), max_iter=20000, tol=1e-10).fit(x, y[:, c])
        np.testing.assert_allclose(w[c].numpy(), sk.coef_[0], atol=1e-4)
        assert b[c].item() == pytest.approx(sk.intercept_[0], abs=1e-4)


@pytest.mark.parametrize("name", ["small", "efficientnet_b0"])
def test_recompute_batchnorm_gives_frozen_random_features_a_between_clip_spread(name):
    torch.manual_seed(0)
    encoder = build_encoder(name).eval()
    windows = W.Windows("ts+mask", SR)
    rng = np.random.default_rng(0)
    waves = np.stack([clip_of(label, windows.width / SR, rng) for label in list(FREQS) * 3]).astype(np.float32)
    spec = windows(torch.from_numpy(waves))
    W.recompute_batchnorm(encoder, [spec[:5], spec[5:]])
    bns = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert not encoder.training and not any(m.training for m in bns)
    assert all(m.momentum is not None for m in bns)  # restored
    assert any((m.running_var - 1).abs().max() > 0.1 for m in bns)  # the statistics moved off their init
    with torch.no_grad():
        h = encoder(spec)
    spread = h.std(0).mean() / h.abs().mean().clamp_min(1e-12)
    assert spread > 1e-2, f"features collapsed: relative between-clip std {spread:.2e}"


def test_lambda_is_chosen_on_the_training_split_before_the_test_store_is_read(stores, monkeypatch, tmp_path):
    _, train, test, ckpt = stores
    events = []
    real_clip, real_head = PackedStore.clip, L.linear_head

    def clip(self, i):
        events.append(("read", str(self.root)))
        return real_clip(self, i)

    def head(*args, **kw):
        events.append(("fit", None))
        return real_head(*args, **kw)

    monkeypatch.setattr(PackedStore, "clip", clip)
    monkeypatch.setattr(L, "linear_head", head)  # the CV's fits
    monkeypatch.setattr(P, "linear_head", head)  # the refit on all training windows
    res = P.probe(P.ProbeConfig(checkpoint=ckpt, data=str(train.root), test_data=str(test.root),
                                out=str(tmp_path / "out"), device="cpu", seeds=2))
    first_test_read = events.index(("read", str(test.root)))
    assert all(e[0] != "fit" for e in events[first_test_read:]), "a fit ran after the test store was read"
    assert ("fit", None) in events[:first_test_read]
    for record in res["per_seed"]:
        folds = record["folds"]
        assert sorted(sum(folds, [])) == list(range(len(train)))  # every training clip once, nothing else
        assert record["lam"] in L.LAMBDAS and len(record["cv_macro_f1"]) == len(L.LAMBDAS)
        best = max(record["cv_macro_f1"])
        assert record["lam"] == max(lam for lam, f in zip(L.LAMBDAS, record["cv_macro_f1"]) if f == best)


# --- splits and early stopping --------------------------------------------------------------------------------

def test_group_folds_and_the_validation_split_keep_groups_on_one_side():
    rng = np.random.default_rng(0)
    classes = np.repeat(np.arange(4), 30)
    groups = [f"c{c}-g{k // 3}" for c, k in zip(classes, rng.permutation(120))]  # about 3 clips per group
    for seed in range(3):
        val = S.validation_split(groups, classes, seed)
        side = {}
        for g, v in zip(groups, val):
            assert side.setdefault(g, v) == v, f"group {g} on both sides"
        assert 0.1 < val.mean() < 0.3
        assert all(val[classes == c].any() and (~val[classes == c]).any() for c in range(4))  # stratified
        fold = S.group_folds(groups, classes, 5, seed)
        assert all(len(set(fold[np.asarray(groups) == g])) == 1 for g in set(groups))
    assert not np.array_equal(S.validation_split(groups, classes, 0), S.validation_split(groups, classes, 1))


def test_early_stopping_stops_before_max_epochs_and_restores_the_best_weights(stores):
    _, train, _, _ = stores
    cfg = P.ProbeConfig(mode="supervised", encoder="small", max_epochs=60, patience=3, batch_size=6, lr=3e-3)
    torch.manual_seed(0)
    model = Classifier(build_encoder("small"), len(train.classes))
    windows = W.Windows("ts+mask", SR)
    gains = train.gains("rms")
    val = S.validation_split(train.groups(), S.class_of(train.targets(), False), 0)
    train_clips, val_clips = np.flatnonzero(~val), np.flatnonzero(val)
    record = FT.train_network(model, windows, train, train_clips, val_clips, gains, False, cfg, 0, "cpu")
    assert record["stopped_epoch"] < cfg.max_epochs
    assert record["stopped_epoch"] == record["best_epoch"] + cfg.patience
    assert record["best_val_macro_f1"] == max(record["val_macro_f1"])
    scores = FT.predict_clips(model, train, val_clips, gains, windows, False, 256, "cpu")
    from trainer.metrics import clip_metrics
    again = clip_metrics(train.targets()[val_clips].numpy(), scores.numpy())["macro_f1"]
    assert again == record["best_val_macro_f1"]  # the model left behind is the best epoch's
    assert record["best_val_macro_f1"] > 0.6


def test_one_group_falls_back_to_no_early_stopping_and_says_so(tmp_path):
    rng = np.random.default_rng(6)
    clips = [(f"c{k}", clip_of(lab, 0.5, rng), lab, "one") for k, lab in enumerate(list(FREQS) * 2)]
    store = make_store(tmp_path / "s", clips)
    res = P.probe(P.ProbeConfig(mode="supervised", encoder="small", data=str(store.root), test_data=str(store.root),
                                out=str(tmp_path / "out"), device="cpu", seeds=1, max_epochs=2))
    assert res["early_stopping"] is False and "group" in res["why"] and res["stopped_epoch"] == 2
