"""trainer.hear, the HEAR 2021 API: shapes, dtypes and timestamps of the contract, windows checked against a
window cut by hand (numpy) and against the probe's own window reader, batch consistency, chunking, level
normalisation, input validation, memory, and HEAR's own validator (hearvalidator) where it is installed."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import types
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import REPO, SR
from trainer import hear
from trainer import windows as P
from trainer.common import UsageError
from trainer.model import ContrastiveModel
from trainer.pack import INT16_SCALE

SEG, CONTEXT = 95 * 160, 200  # the paper's window: 96 frames at hop 160; n_fft // 2 samples of context
HOP = 800                     # 50 ms at 16 kHz
TOL = 1e-5                    # float32 encoder on the same windows, batched differently


def tiny_checkpoint(path, normalize: str = "rms", **extra) -> str:
    """A small-encoder pretraining checkpoint in trainer.pretrain's format, with BatchNorm statistics moved off
    their init so eval mode is not an identity."""
    torch.manual_seed(0)
    model = ContrastiveModel(32, "avg", "identity", "small")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    config = {"preset": "ts+mask", "dim": 32, "pooling": "avg", "bilinear_init": "identity", "encoder": "small",
              "normalize": normalize} | extra
    torch.save({"model": model.state_dict(), "config": config}, path)
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("hear") / "last.pt")


@pytest.fixture(scope="module")
def model(ckpt):
    return hear.load_model(ckpt)


def noise(n_sounds: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    level = torch.rand(n_sounds, 1, generator=g) * 0.5 + 0.05
    return ((torch.rand(n_sounds, n, generator=g) * 2 - 1) * level).float()


def rms_gain(x: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    return 0.1 / rms if rms > 1e-10 else 1.0  # -20 dBFS


def hand_window(x: np.ndarray, first: int, width: int) -> np.ndarray:
    """Samples ``first .. first + width`` of ``x``, zeros outside it (numpy, one window)."""
    out = np.zeros(width, np.float32)
    a, b = max(first, 0), min(first + width, len(x))
    if b > a:
        out[a - first:b - first] = x[a:b]
    return out


def h_of(model, windows: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model.encoder.eval()(model.windows(torch.from_numpy(windows)))


# --- the contract -----------------------------------------------------------------------------------------------

def test_load_model_gives_a_module_with_hears_attributes(model):
    assert isinstance(model, torch.nn.Module) and not model.training
    assert model.sample_rate == SR
    assert isinstance(model.scene_embedding_size, int) and model.scene_embedding_size == 256  # small encoder's h
    assert isinstance(model.timestamp_embedding_size, int) and model.timestamp_embedding_size == 256
    assert model.hop_samples == HOP and model.hop_ms == 50.0
    assert model.windows.segment == SEG and model.windows.context == CONTEXT


@pytest.mark.parametrize("n", [1, 1600, HOP, SEG - 1, SEG, 2 * SEG + 1, 33_333])
def test_shapes_dtypes_and_timestamps(model, n):
    audio = noise(2, n)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    n_ts = 1 + n // HOP
    assert emb.shape == (2, n_ts, 256) and emb.dtype == torch.float32
    assert ts.shape == (2, n_ts) and ts.dtype == torch.float32
    expected = np.arange(n_ts) * 50.0
    np.testing.assert_array_equal(ts.numpy(), np.broadcast_to(expected, (2, n_ts)))  # regular, exact, from 0 ms
    assert ts[0, -1] <= 1000 * n / SR  # the last centre lies inside the sound
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (2, 256) and scene.dtype == torch.float32
    assert torch.isfinite(emb).all() and torch.isfinite(scene).all()


@given(n_sounds=st.integers(1, 3), n=st.integers(1, 40_000), hop_ms=st.sampled_from([50.0, 40.0, 25.0, 33.3]))
def test_timestamps_are_regular_and_at_most_50_ms_apart(ckpt, n_sounds, n, hop_ms):
    model = hear.load_model(ckpt, hop_ms=hop_ms)
    emb, ts = hear.get_timestamp_embeddings(noise(n_sounds, n), model)
    hop = int(hop_ms * SR // 1000)
    assert emb.shape == (n_sounds, 1 + n // hop, 256)
    assert ts.shape == emb.shape[:2]
    d = np.diff(ts.numpy().astype(np.float64), axis=1)
    assert np.all(np.abs(d - 1000 * hop / SR) < 1e-3) and np.all(d <= 50.0)  # hearvalidator's 1e-3 ms check
    assert ts[0, 0] == 0


def test_timestamp_embeddings_are_windows_centred_on_the_timestamps_cut_by_hand(model):
    n = 3 * SR + 123
    audio = noise(2, n, seed=3)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    for i in range(2):
        x = audio[i].numpy() * rms_gain(audio[i].numpy())
        for j in (0, 1, 9, 30, emb.shape[1] - 1):
            centre = int(round(float(ts[i, j]) * SR / 1000))
            assert centre == j * HOP
            win = hand_window(x, centre - SEG // 2 - CONTEXT, SEG + 2 * CONTEXT)
            torch.testing.assert_close(emb[i, j], h_of(model, win[None])[0], atol=TOL, rtol=0)


class FloatStore:
    """What trainer.windows.read_windows reads from a store: ``clip(i)``, here float samples instead of int16."""

    def __init__(self, sounds):
        self.sounds = sounds

    def clip(self, i):
        return self.sounds[i]


@pytest.mark.parametrize("n", [1600, SEG, 4 * SR + 7, 10 * SR])
def test_scene_embedding_is_the_mean_of_the_probes_features_over_its_tiling(model, n):
    audio = noise(3, n, seed=n)
    sounds = [a.numpy() for a in audio]
    gains = np.asarray([rms_gain(x) for x in sounds]) * INT16_SCALE  # read_windows divides by INT16_SCALE
    clip, start = P.window_starts(np.full(3, n), SEG)
    wave = P.read_windows(FloatStore(sounds), clip, start, gains, model.windows)
    h = P.window_features(model.encoder, [model.windows(wave)])
    expected = torch.stack([h[torch.from_numpy(clip == i)].mean(0) for i in range(3)])
    assert (np.bincount(clip) == max(1, -(-n // SEG))).all()
    torch.testing.assert_close(hear.get_scene_embeddings(audio, model), expected, atol=TOL, rtol=0)


# --- determinism, batches, chunks -------------------------------------------------------------------------------

def test_an_empty_batch_gives_empty_outputs(model):
    emb, ts = hear.get_timestamp_embeddings(torch.zeros(0, SR), model)
    assert emb.shape == (0, 1 + SR // HOP, 256) and ts.shape == (0, 1 + SR // HOP)
    assert hear.get_scene_embeddings(torch.zeros(0, SR), model).shape == (0, 256)


def test_deterministic(model):
    audio = noise(2, 2 * SR + 5, seed=9)
    a, ta = hear.get_timestamp_embeddings(audio, model)
    b, tb = hear.get_timestamp_embeddings(audio, model)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert torch.equal(hear.get_scene_embeddings(audio, model), hear.get_scene_embeddings(audio, model))


def test_a_batch_gives_each_sounds_embeddings_alone(model):
    audio = noise(4, 2 * SR + 321, seed=4)
    audio[2] = 0  # a silent sound keeps gain 1 and changes nothing about the others
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    scene = hear.get_scene_embeddings(audio, model)
    for i in range(4):
        e1, t1 = hear.get_timestamp_embeddings(audio[i:i + 1], model)
        torch.testing.assert_close(emb[i:i + 1], e1, atol=TOL, rtol=0)
        assert torch.equal(ts[i:i + 1], t1)
        torch.testing.assert_close(scene[i:i + 1], hear.get_scene_embeddings(audio[i:i + 1], model), atol=TOL, rtol=0)


def test_window_batch_changes_nothing_and_bounds_the_windows_encoded_at_once(ckpt, monkeypatch):
    audio = noise(3, 5 * SR + 17, seed=5)
    ref = hear.get_timestamp_embeddings(audio, hear.load_model(ckpt))[0]
    small = hear.load_model(ckpt, window_batch=7)
    seen = []
    forward = small.windows.forward
    monkeypatch.setattr(small.windows, "forward", lambda w: seen.append(w.shape[0]) or forward(w))
    torch.testing.assert_close(hear.get_timestamp_embeddings(audio, small)[0], ref, atol=TOL, rtol=0)
    assert max(seen) == 7 and sum(seen) == 3 * (1 + audio.shape[1] // HOP)


def test_rms_normalisation_makes_the_embeddings_level_invariant(ckpt, tmp_path):
    audio = noise(2, 2 * SR, seed=6)
    model = hear.load_model(ckpt)
    torch.testing.assert_close(hear.get_scene_embeddings(0.01 * audio, model),
                               hear.get_scene_embeddings(audio, model), atol=1e-4, rtol=0)
    raw = hear.load_model(tiny_checkpoint(tmp_path / "none.pt", normalize="none"))
    assert raw.normalize == "none"
    diff = (hear.get_scene_embeddings(0.01 * audio, raw) - hear.get_scene_embeddings(audio, raw)).abs().max()
    assert diff > 1e-2  # without normalisation the level shows: the test above is not vacuous


def test_half_a_minute_in_one_call_spans_several_window_batches(model):
    n = 30 * SR + 1
    audio = noise(1, n, seed=7)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.shape == (1, 601, 256) and float(ts[0, -1]) == 30_000.0
    x = audio[0].numpy() * rms_gain(audio[0].numpy())
    for j in (300, 600):  # in the second and third chunks of 256 windows, the last one at the sound's end
        win = hand_window(x, j * HOP - SEG // 2 - CONTEXT, SEG + 2 * CONTEXT)
        torch.testing.assert_close(emb[0, j], h_of(model, win[None])[0], atol=TOL, rtol=0)
    assert hear.get_scene_embeddings(audio, model).shape == (1, 256)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, torch
    torch.set_num_threads(1)
    from trainer import hear
    model = hear.load_model(sys.argv[1])
    short, long = (torch.rand(1, minutes * 60 * 16000) * 0.2 - 0.1 for minutes in (1, 4))
    hear.get_scene_embeddings(short[:, :16000], model)  # warm up the allocator and kernels
    peak = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]
    for audio in (short, long):
        emb, ts = hear.get_timestamp_embeddings(audio, model)
        hear.get_scene_embeddings(audio, model)
        peak.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    print(json.dumps({"shape": list(emb.shape), "peak_kb": peak}))
""")


@pytest.mark.slow
def test_memory_does_not_grow_with_the_windows_of_a_longer_sound(ckpt):
    """Peak RSS (the audio itself allocated first) over a 1-minute sound, then a 4-minute one. The windows are encoded
    256 at a time, so 3 more minutes add only what grows with length: a few float32 copies of the sound (level
    normalisation, the padded copy: 11.5 MB each) and the embeddings (3.7 MB); measured 67 MB. Materialising the extra
    windows at once would add 3,600 x 15,600 x 4 bytes = 225 MB: the bound is half of that. A 20-minute sound
    measured 254 MB above the audio (docs/training.md, "HEAR API")."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, ckpt], env=env, capture_output=True, text=True,
                         timeout=900, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shape"] == [1, 4801, 256]
    before, one, four = (kb * 1024 for kb in result["peak_kb"])
    assert one - before < 320e6, result
    assert four - one < 225e6 / 2, result


# --- input validation -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, error, words", [
    (torch.zeros(SR), ValueError, "2-D (n_sounds, n_samples)"),
    (torch.zeros(1, 2, SR), ValueError, "2-D (n_sounds, n_samples)"),
    (torch.zeros(1, SR, dtype=torch.float64), TypeError, "audio.float()"),
    (torch.zeros(1, SR, dtype=torch.int16), TypeError, "divide by 32768"),
    (np.zeros((1, SR), np.float32), TypeError, "torch.as_tensor"),
    (torch.zeros(1, 0), ValueError, "0 samples"),
    (torch.full((1, SR), float("nan")), ValueError, "NaN"),
    (torch.zeros(1, SR, device="meta"), ValueError, "audio.to('cpu')"),
])
def test_bad_audio_gets_an_error_naming_it_and_the_fix(model, bad, error, words):
    for call in (hear.get_timestamp_embeddings, hear.get_scene_embeddings):
        with pytest.raises(error, match="audio") as e:
            call(bad, model)
        assert words in str(e.value)


def test_bad_model_arguments_get_clear_errors(ckpt, tmp_path):
    with pytest.raises(UsageError, match="model_file_path is required"):
        hear.load_model()
    with pytest.raises(UsageError, match="does not exist"):
        hear.load_model(str(tmp_path / "missing.pt"))
    with pytest.raises(UsageError, match="sample_rate 8000 is not one of HEAR's"):
        hear.load_model(ckpt, sample_rate=8000)
    with pytest.raises(ValueError, match="hop_ms must be in"):
        hear.load_model(ckpt, hop_ms=60.0)
    with pytest.raises(ValueError, match="window_batch must be"):
        hear.load_model(ckpt, window_batch=0)
    with pytest.raises(TypeError, match="load_model returns"):
        hear.get_scene_embeddings(torch.zeros(1, SR), torch.nn.Linear(1, 1))


def test_the_sample_rate_comes_from_the_checkpoint_or_its_store(tmp_path):
    assert hear.load_model(tiny_checkpoint(tmp_path / "a.pt", sample_rate=22050)).sample_rate == 22050
    store = tmp_path / "store"
    store.mkdir()
    (store / "store.json").write_text(json.dumps({"sample_rate": 48000}))
    assert hear.load_model(tiny_checkpoint(tmp_path / "b.pt", data=str(store))).sample_rate == 48000
    gone = tiny_checkpoint(tmp_path / "c.pt", data=str(tmp_path / "gone"), out=str(tmp_path / "gone-out"))
    assert hear.load_model(gone).sample_rate == hear.DEFAULT_SAMPLE_RATE


# --- devices and HEAR's validator -------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_outputs_stay_there_and_match_the_cpu(ckpt):
    audio = noise(2, 3 * SR, seed=8)
    cpu = hear.get_timestamp_embeddings(audio, hear.load_model(ckpt))
    model = hear.load_model(ckpt).to("cuda")
    emb, ts = hear.get_timestamp_embeddings(audio.cuda(), model)
    scene = hear.get_scene_embeddings(audio.cuda(), model)
    assert emb.device.type == ts.device.type == scene.device.type == "cuda"
    torch.testing.assert_close(emb.cpu(), cpu[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(ts.cpu(), cpu[1])


@pytest.mark.skipif(importlib.util.find_spec("hearvalidator") is None,
                    reason="hearvalidator is not installed (pip install --no-deps hearvalidator)")
def test_hearvalidator_accepts_the_module(ckpt, monkeypatch, capsys):
    """HEAR 2021's own validator (torch path). It imports tensorflow at the top for its TF path only; where
    tensorflow is absent a stand-in with the two names it touches (``Module`` for an isinstance check, ``device``)
    takes its place."""
    if importlib.util.find_spec("tensorflow") is None:
        monkeypatch.setitem(sys.modules, "tensorflow", types.SimpleNamespace(Module=type("Module", (), {}),
                                                                            device=None))
    monkeypatch.delitem(sys.modules, "hearvalidator.validate", raising=False)
    from hearvalidator.validate import ValidateModel

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # it warns when the hop exceeds 50 ms
        ValidateModel("trainer.hear", ckpt, device="cpu")()
    printed = capsys.readouterr().out
    assert "Interval between timestamps is 50.0ms" in printed and "Received embedding of shape" in printed
