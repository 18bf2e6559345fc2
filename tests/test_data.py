"""The data layer: readers, packing (round trip, bad files, resume), the packed dataset, the sampler, built-in data."""
import json
import os
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

from tests.conftest import REPO, SR, peak_freq, rms_db, shared_data
from trainer import builtin, sources
from trainer.data import DistributedBatchSampler, PackedClips, PackedStore, crop_uniforms, make_loader, to_float
from trainer.pack import pack


def write_int16(path: Path, samples: np.ndarray, sr: int = SR, fmt: str = "WAV") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, sr, subtype="PCM_16", format=fmt)
    return samples


def random_int16(rng, n: int) -> np.ndarray:
    return rng.integers(-20000, 20000, size=n).astype(np.int16)


@pytest.fixture
def audio_tree(tmp_path, rng):
    """Nine readable mono int16 files of varied length (wav and flac, nested), a corrupt file and an empty file."""
    root = tmp_path / "audio"
    truth = {}
    for k in range(9):
        sub = root / ("a" if k % 2 else "b" / Path("deep"))
        ext = "flac" if k % 3 == 0 else "wav"
        path = sub / f"clip{k}.{ext}"
        truth[str(path.resolve())] = write_int16(path, random_int16(rng, int(rng.integers(800, 6000))),
                                                 fmt=ext.upper())
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage" + bytes(range(256)))
    (root / "empty.wav").write_bytes(b"")
    return root, truth


# --- packing ------------------------------------------------------------------------------------------------------

def test_pack_round_trip_is_sample_exact_and_skips_bad_files(audio_tree, tmp_path):
    root, truth = audio_tree
    res = pack(sources.audio_folder(root), tmp_path / "store", files_per_shard=4, jobs=2, progress=False)
    assert res.complete and res.n_packed == 9 and res.n_skipped == 2 and res.n_shards == 3
    store = PackedStore(tmp_path / "store")
    assert len(store) == 9 and store.sample_rate == SR and store.classes == ()
    for i, path in enumerate(store.paths()):
        np.testing.assert_array_equal(store.clip(i), truth[path])
    report = (tmp_path / "store" / "report.tsv").read_text().splitlines()
    assert report[0] == "path\treason"
    assert sorted(Path(line.split("\t")[0]).name for line in report[1:]) == ["corrupt.wav", "empty.wav"]
    assert all(line.split("\t")[1] for line in report[1:])
    meta = json.loads((tmp_path / "store" / "store.json").read_text())
    assert meta["n_clips"] == 9 and meta["n_skipped"] == 2 and meta["n_samples"] == sum(map(len, truth.values()))


def test_pack_resamples_with_a_real_resampler_and_mixes_to_mono(tmp_path):
    t = np.arange(44100) / 44100
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 1000 * t), 0.3 * np.sin(2 * np.pi * 1000 * t)], axis=1)
    (tmp_path / "src").mkdir()
    sf.write(str(tmp_path / "src" / "tone.wav"), stereo, 44100, subtype="FLOAT")
    pack(sources.audio_folder(tmp_path / "src"), tmp_path / "store", jobs=1, progress=False)
    x = PackedStore(tmp_path / "store").clip(0).astype(np.float64) / 32768
    assert len(x) == SR
    mid = x[2000:-2000]  # the resampler's edges aside
    assert abs(peak_freq(mid) - 1000) < 0.5
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.4 / np.sqrt(2), rel=2e-3)


def test_pack_scales_down_float_files_that_exceed_full_scale(tmp_path):
    (tmp_path / "src").mkdir()
    sf.write(str(tmp_path / "src" / "loud.wav"), np.array([0.25, 2.0, -1.0, 0.5], np.float32), SR, subtype="FLOAT")
    pack(sources.audio_folder(tmp_path / "src"), tmp_path / "store", jobs=1, progress=False)
    np.testing.assert_array_equal(PackedStore(tmp_path / "store").clip(0), [4096, 32767, -16384, 8192])


def test_interrupted_pack_resumes_without_redoing_finished_shards(audio_tree, tmp_path):
    root, _ = audio_tree
    source = sources.audio_folder(root)
    first = pack(source, tmp_path / "store", files_per_shard=3, jobs=1, progress=False, max_shards=2)
    assert not first.complete and first.n_shards_done == 2
    assert not (tmp_path / "store" / "store.json").exists()
    with pytest.raises(ValueError, match="not a complete packed store.*resume"):
        PackedStore(tmp_path / "store")
    done = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "store" / "shards").glob("*.npy")}
    (tmp_path / "store" / "shards" / "00003.npy.abc.tmp").write_bytes(b"half-written")  # a killed writer's leftover
    second = pack(source, tmp_path / "store", files_per_shard=3, jobs=2, progress=False)
    assert second.complete and second.files_this_run == len(source) - 6
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "store" / "shards").glob("*.npy")
            if p.name in done} == done
    assert not list((tmp_path / "store" / "shards").glob("*.tmp"))
    whole = pack(source, tmp_path / "whole", files_per_shard=3, jobs=1, progress=False)
    assert whole.complete
    a, b = PackedStore(tmp_path / "store"), PackedStore(tmp_path / "whole")
    assert a.paths() == b.paths()
    for i in range(len(a)):
        np.testing.assert_array_equal(a.clip(i), b.clip(i))


def test_pack_refuses_to_mix_two_sources_in_one_store(audio_tree, tmp_path):
    root, _ = audio_tree
    pack(sources.audio_folder(root), tmp_path / "store", jobs=1, progress=False, max_shards=1)
    with pytest.raises(ValueError, match="different source"):
        pack(sources.audio_folder(root), tmp_path / "store", sample_rate=8000, jobs=1, progress=False)


def test_pack_cli_killed_midway_then_rerun_completes(tmp_path, rng):
    src = tmp_path / "src"
    for k in range(40):
        write_int16(src / f"{k:02d}.wav", random_int16(rng, 4000))
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "trainer.pack", str(src), str(out), "--files-per-shard", "1", "--jobs", "1", "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "shards").glob("*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the pack finished before it could be killed"
    assert not (out / "store.json").exists()
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "complete; 40 clips packed, 0 skipped" in run.stdout and "files/s" in run.stdout
    store = PackedStore(out)
    assert len(store) == 40
    for i, p in enumerate(store.paths()):
        np.testing.assert_array_equal(store.clip(i), sf.read(p, dtype="int16")[0])


def test_pack_cli_names_a_missing_source(tmp_path):
    run = subprocess.run([sys.executable, "-m", "trainer.pack", str(tmp_path / "nope"), str(tmp_path / "out")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "src" in run.stderr and "does not exist" in run.stderr


# --- label formats ------------------------------------------------------------------------------------------------

def _files(root: Path, names, rng) -> None:
    for name in names:
        write_int16(root / name, random_int16(rng, 1600))


def test_csv_manifest_multi_label_relative_paths_and_missing_files(tmp_path, rng):
    _files(tmp_path / "wav", ["a.wav", "b.wav", "c.wav"], rng)
    (tmp_path / "m.csv").write_text("path,labels\nwav/a.wav,dog;bark\nwav/b.wav,cat\nwav/c.wav,\nwav/gone.wav,dog\n")
    src = sources.csv_manifest(tmp_path / "m.csv")
    assert src.classes == ("bark", "cat", "dog") and src.multi_label
    assert [(Path(it.path).name, it.labels) for it in src.items] == [("a.wav", (0, 2)), ("b.wav", (1,)), ("c.wav", ())]
    assert len(src.missing) == 1 and src.missing[0][0].endswith("gone.wav")
    res = pack(src, tmp_path / "store", jobs=1, progress=False)
    assert res.n_skipped == 1 and "gone.wav" in (tmp_path / "store" / "report.tsv").read_text()
    store = PackedStore(tmp_path / "store")
    assert store.multi_label and store.classes == ("bark", "cat", "dog")
    torch.testing.assert_close(store.targets(), torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 0]]))


def test_csv_manifest_single_label_and_unknown_class(tmp_path, rng):
    _files(tmp_path, ["x.wav", "y.wav"], rng)
    (tmp_path / "m.csv").write_text("x.wav,siren\ny.wav,alarm\n")
    src = sources.csv_manifest(tmp_path / "m.csv")
    assert not src.multi_label and src.classes == ("alarm", "siren")
    pack(src, tmp_path / "store", jobs=1, progress=False)
    assert PackedStore(tmp_path / "store").targets().tolist() == [1, 0]
    with pytest.raises(ValueError, match="not in `classes`"):
        sources.csv_manifest(tmp_path / "m.csv", classes=["siren"])


def test_class_folders(tmp_path, rng):
    _files(tmp_path, ["dog/1.wav", "dog/sub/2.flac", "cat/3.wav"], rng)
    src = sources.class_folders(tmp_path)
    assert src.classes == ("cat", "dog") and not src.multi_label
    assert sorted((Path(it.path).name, it.labels) for it in src.items) == [("1.wav", (1,)), ("2.flac", (1,)),
                                                                           ("3.wav", (0,))]
    with pytest.raises(ValueError, match="no sub-folders"):
        sources.class_folders(tmp_path / "cat")


def test_desed_weak_and_strong(tmp_path, rng):
    _files(tmp_path / "audio", ["y1.wav", "y2.wav", "y3.wav"], rng)
    (tmp_path / "weak.tsv").write_text("filename\tevent_labels\ny1.wav\tSpeech,Dog\ny2.wav\tFrying\n")
    weak = sources.desed(tmp_path / "weak.tsv", tmp_path / "audio")
    assert weak.multi_label and weak.classes == ("Dog", "Frying", "Speech")
    assert [it.labels for it in weak.items] == [(0, 2), (1,)]
    (tmp_path / "strong.tsv").write_text(
        "filename\tonset\toffset\tevent_label\n"
        "y1.wav\t0.1\t0.9\tSpeech\ny1.wav\t2.0\t3.5\tDog\ny1.wav\t4.0\t5.0\tSpeech\n"
        "y2.wav\t1.0\t9.0\tFrying\ny3.wav\t\t\t\nmissing.wav\t1\t2\tDog\n")
    strong = sources.desed(tmp_path / "strong.tsv", tmp_path / "audio")
    assert strong.classes == ("Dog", "Frying", "Speech")
    assert [(Path(it.path).name, it.labels) for it in strong.items] == [("y1.wav", (0, 2)), ("y2.wav", (1,)),
                                                                        ("y3.wav", ())]
    assert [Path(m[0]).name for m in strong.missing] == ["missing.wav"]
    (tmp_path / "bad.tsv").write_text("file\tlabel\n")
    with pytest.raises(ValueError, match="filename"):
        sources.desed(tmp_path / "bad.tsv", tmp_path / "audio")


def test_audioset_segments_csv_with_ontology_names_and_file_naming_variants(tmp_path, rng):
    _files(tmp_path / "audio", ["--PJHxphWEs.wav", "Y-0RWZT-miFs_30.000_40.000.flac", "ab_cd-ef_gh_10_20.wav"], rng)
    (tmp_path / "seg.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=5\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n'
        '-0RWZT-miFs, 30.000, 40.000, "/m/03fwl"\n'
        'ab_cd-ef_gh, 10.000, 20.000, "/m/09x0r"\n'
        'zzzzzzzzzzz, 0.000, 10.000, "/m/09x0r"\n')
    (tmp_path / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/03fwl,"Goat"\n2,/t/dd00088,"Gush"\n3,/m/0bt9lr,"Dog"\n')
    src = sources.audioset(tmp_path / "seg.csv", tmp_path / "audio", tmp_path / "class_labels_indices.csv")
    assert src.multi_label and src.classes == ("Speech", "Goat", "Gush", "Dog")
    assert [(Path(it.path).name, it.labels) for it in src.items] == [
        ("--PJHxphWEs.wav", (0, 2)), ("Y-0RWZT-miFs_30.000_40.000.flac", (1,)), ("ab_cd-ef_gh_10_20.wav", (0,))]
    assert [m[0] for m in src.missing] == ["zzzzzzzzzzz"]
    (tmp_path / "two.csv").write_text('index,mid,display_name\n0,/m/03fwl,"Goat"\n1,/t/dd00088,"Gush"\n')
    subset = sources.audioset(tmp_path / "seg.csv", tmp_path / "audio", tmp_path / "two.csv")
    assert subset.classes == ("Goat", "Gush")
    assert [(Path(it.path).name, it.labels) for it in subset.items] == [
        ("--PJHxphWEs.wav", (1,)), ("Y-0RWZT-miFs_30.000_40.000.flac", (0,))]
    plain = sources.audioset(tmp_path / "seg.csv", tmp_path / "audio")
    assert plain.classes == ("/m/03fwl", "/m/09x0r", "/t/dd00088")
    assert sources.open_source(tmp_path / "seg.csv", audio_dir=tmp_path / "audio").classes == plain.classes


def test_open_source_guesses_layouts_and_names_bad_arguments(tmp_path, rng):
    _files(tmp_path / "audio", ["a.wav"], rng)
    (tmp_path / "m.csv").write_text("path,labels\naudio/a.wav,x\n")
    assert sources.open_source(tmp_path / "audio").classes == ()
    assert sources.open_source(tmp_path / "m.csv").classes == ("x",)
    (tmp_path / "w.tsv").write_text("filename\tevent_labels\na.wav\tx\n")
    with pytest.raises(ValueError, match="audio_dir"):
        sources.open_source(tmp_path / "w.tsv")
    with pytest.raises(ValueError, match="labels must be one of"):
        sources.open_source(tmp_path / "audio", labels="yaml")


# --- the packed dataset -------------------------------------------------------------------------------------------

@pytest.fixture
def small_store(tmp_path, rng):
    """Clips of 0.5-3 s at 16 kHz, two classes, packed."""
    lengths = [8000, 48000, 16000, 30000, 12000, 40000, 16001, 9000]
    rows = []
    for k, n in enumerate(lengths):
        write_int16(tmp_path / "w" / f"{k}.wav", random_int16(rng, n))
        rows.append(f"w/{k}.wav,{'odd' if k % 2 else 'even'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    pack(sources.csv_manifest(tmp_path / "m.csv"), tmp_path / "store", files_per_shard=3, jobs=1, progress=False)
    return PackedStore(tmp_path / "store")


def test_packed_clips_random_crop_is_a_window_and_short_clips_are_zero_padded(small_store):
    ds = PackedClips(small_store, clip_seconds=1.0, seed=3)
    clips, lengths, targets, gains = ds.__getitems__(list(range(len(ds))))
    assert (gains == 1).all()  # normalize="none"
    assert clips.dtype == torch.int16 and clips.shape == (len(ds), min(SR, int(small_store.length.max())))
    assert targets.tolist() == [0, 1] * 4
    assert lengths.tolist() == np.minimum(small_store.length, SR).tolist()
    for i in range(len(ds)):
        full, got = small_store.clip(i), clips[i].numpy()
        if len(full) <= SR:
            np.testing.assert_array_equal(got[: len(full)], full)
            assert not got[len(full):].any()
        else:
            starts = [s for s in range(len(full) - SR + 1) if full[s] == got[0] and np.array_equal(full[s:s + SR], got)]
            assert starts, f"clip {i} is not a window of its source"


def test_packed_clips_crops_depend_on_seed_epoch_index_only(small_store):
    ds = PackedClips(small_store, clip_seconds=0.5, seed=7)
    together, lengths, _, _ = ds.__getitems__([5, 1, 3])
    for row, i in enumerate([5, 1, 3]):
        alone, n, _ = ds[i]
        assert n == lengths[row] == len(alone)
        torch.testing.assert_close(together[row, :n], alone, rtol=0, atol=0)
    ds.set_epoch(1)
    assert not torch.equal(ds.__getitems__([5, 1, 3])[0], together)
    start = PackedClips(small_store, clip_seconds=0.5, crop="start")
    np.testing.assert_array_equal(start[1][0].numpy(), small_store.clip(1)[:8000])


@given(st.integers(0, 2**63 - 1), st.integers(0, 1000))
def test_crop_uniforms_are_in_unit_interval_and_spread(seed, epoch):
    u = crop_uniforms(seed, epoch, np.arange(4096))
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.03  # 4096 uniforms: std of the mean is 0.0045
    assert np.histogram(u, bins=8, range=(0, 1))[0].min() > 400  # about 512 per bin


@pytest.mark.parametrize("mode", ["rms", "peak"])
def test_level_gains_equal_normalize_level_over_each_whole_clip(small_store, mode):
    """The store's per-clip gain (recorded at pack time, or measured for older stores) folded into to_float gives
    what augcl.functional.normalize_level gives on the zero-padded float batch with the clips' lengths."""
    from augcl.functional import normalize_level

    ds = PackedClips(small_store, clip_seconds=10.0, crop="start", normalize=mode)
    batch = ds.__getitems__(list(range(len(ds))))
    got = to_float(batch.clips, gains=batch.gains)
    want = normalize_level(to_float(batch.clips), batch.lengths, mode)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    small_store._levels = {}  # as a store packed before levels were recorded: measured clip by clip
    torch.testing.assert_close(torch.from_numpy(small_store.gains(mode)).float(), batch.gains, rtol=1e-6, atol=0)


def test_to_float_inverts_the_packer_scaling():
    x = torch.tensor([[-32768, 0, 16384, 32767]], dtype=torch.int16)
    torch.testing.assert_close(to_float(x), torch.tensor([[-1.0, 0.0, 0.5, 32767 / 32768]]))
    with pytest.raises(TypeError, match="int16"):
        to_float(x.float())


def test_loader_with_workers_reads_the_same_batches_as_without(small_store):
    ds = PackedClips(small_store, clip_seconds=0.5, seed=1)
    sampler = DistributedBatchSampler(len(ds), batch_size=2, seed=4)
    plain = list(make_loader(ds, sampler, num_workers=0))
    workers = list(make_loader(ds, sampler, num_workers=2))
    assert len(plain) == len(workers) == 4
    for a, b in zip(plain, workers, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_packed_store_rejects_a_folder_that_is_not_a_store(tmp_path):
    with pytest.raises(ValueError, match="trainer.pack"):
        PackedStore(tmp_path)


# --- the distributed sampler --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,drop_last", [(40, True), (40, False), (37, False)])
def test_two_ranks_cover_every_index_once_per_epoch(n, drop_last):
    seen_epochs = []
    for epoch in range(3):
        per_rank = []
        for rank in range(2):
            s = DistributedBatchSampler(n, batch_size=4, drop_last=drop_last, seed=11, rank=rank, world_size=2)
            s.set_epoch(epoch)
            batches = list(s)
            assert len(batches) == len(s)
            per_rank.append([i for b in batches for i in b])
        assert not set(per_rank[0]) & set(per_rank[1])
        everything = sorted(per_rank[0] + per_rank[1])
        assert everything == list(range(n))
        seen_epochs.append(per_rank[0])
    assert seen_epochs[0] != seen_epochs[1] != seen_epochs[2]


def test_sampler_drop_last_gives_equal_full_batches_and_is_seeded():
    a = [list(DistributedBatchSampler(50, 4, seed=2, rank=r, world_size=2)) for r in range(2)]
    assert len(a[0]) == len(a[1]) == 6 and all(len(b) == 4 for b in a[0] + a[1])
    flat = [i for b in a[0] + a[1] for i in b]
    assert len(set(flat)) == len(flat) == 48
    assert a[0] == list(DistributedBatchSampler(50, 4, seed=2, rank=0, world_size=2))
    assert a[0] != list(DistributedBatchSampler(50, 4, seed=3, rank=0, world_size=2))
    with pytest.raises(ValueError, match="batch_size"):
        DistributedBatchSampler(5, 4, world_size=2, rank=0)
    with pytest.raises(ValueError, match="rank"):
        DistributedBatchSampler(50, 4, world_size=2, rank=2)


# --- the built-in dataset -----------------------------------------------------------------------------------------

def test_builtin_clips_are_deterministic_bounded_and_split_specific():
    a = builtin.render_clip(0, "train", 3, seconds=2.0)
    assert a.dtype == np.float32 and a.shape == (2 * SR,) and np.abs(a).max() <= 0.99
    np.testing.assert_array_equal(a, builtin.render_clip(0, "train", 3, seconds=2.0))
    assert not np.array_equal(a, builtin.render_clip(0, "test", 3, seconds=2.0))
    assert not np.array_equal(a, builtin.render_clip(1, "train", 3, seconds=2.0))
    np.testing.assert_array_equal(builtin.render_uri(builtin.clip_uri(0, "train", 3, 2.0), SR), a)
    with pytest.raises(ValueError, match="builtin"):
        builtin.parse_uri("builtin:0:validation:1:2")


def _band_energy_features(clip: np.ndarray) -> np.ndarray:
    """Independent features for a separability check: mean and std over time of 1/3-octave band log-energies."""
    from scipy.signal import stft

    f, _, z = stft(clip, SR, nperseg=512, noverlap=256)
    edges = 62.5 * 2 ** (np.arange(0, 7.0, 1 / 3))
    bands = np.stack([np.sum(np.abs(z[(f >= lo) & (f < hi)]) ** 2, axis=0) for lo, hi in zip(edges[:-1], edges[1:], strict=True)])
    logb = np.log(bands + 1e-10)
    logb -= logb.mean()  # level is a nuisance
    return np.concatenate([logb.mean(axis=1), logb.std(axis=1)])


def test_builtin_lengths_and_levels_spread_like_real_collections():
    cfg = builtin.BuiltinConfig()
    seconds = np.array([cfg.seconds("unlabeled", i) for i in range(1000)])
    assert seconds.min() >= 0.5 and seconds.max() <= 10.0
    assert 0.4 < np.mean(seconds < 2.24) < 0.6  # log-uniform: the median is sqrt(0.5 * 10) = 2.24 s
    items = builtin.builtin_source(cfg, "train").items[:40]
    clips = [builtin.render_uri(it.path, SR) for it in items]
    assert [len(c) for c in clips] == [round(cfg.seconds("train", i) * SR) for i in range(40)]
    levels = np.array([rms_db(c) for c in clips])
    assert levels.min() < -35 and levels.max() > -15  # drawn in [-45, -5] dBFS (peaks limited at 0.99)


def test_builtin_classes_sound_different_and_splits_are_balanced():
    """An independent classifier (scikit-learn's logistic regression on scipy band energies, level removed)
    separates the classes far above chance (0.1), though 0.5-s clips hold only a piece of one event."""
    from sklearn.linear_model import LogisticRegression

    cfg = builtin.BuiltinConfig(n_train=300, n_test=100)
    assert np.bincount([it.labels[0] for it in builtin.builtin_source(builtin.BuiltinConfig(), "train").items]
                       ).tolist() == [10] * 10
    train = builtin.builtin_source(cfg, "train")
    assert train.classes == builtin.CLASSES and np.bincount([it.labels[0] for it in train.items]).tolist() == [30] * 10
    feats = {s: np.stack([_band_energy_features(builtin.render_uri(it.path, SR)) for it in
                          builtin.builtin_source(cfg, s).items]) for s in ("train", "test")}
    ytr = np.arange(cfg.n_train) % 10
    yte = np.arange(cfg.n_test) % 10
    mu, sd = feats["train"].mean(0), feats["train"].std(0) + 1e-6
    model = LogisticRegression(C=1.0, max_iter=5000).fit((feats["train"] - mu) / sd, ytr)
    accuracy = np.mean(model.predict((feats["test"] - mu) / sd) == yte)
    assert accuracy >= 0.6, accuracy


def test_builtin_store_is_packed_once_and_cached(tmp_path):
    cfg = builtin.BuiltinConfig(min_seconds=1.0, max_seconds=1.0, n_unlabeled=6, n_train=10, n_test=4)
    path = builtin.builtin_store("train", cfg, progress=False, jobs=1)
    store = PackedStore(path)
    assert len(store) == 10 and store.classes == builtin.CLASSES and store.targets().tolist() == list(range(10))
    np.testing.assert_array_equal(store.clip(4), np.round(builtin.render_clip(0, "train", 4, 1.0) * 32768))
    mtime = (path / "store.json").stat().st_mtime_ns
    assert builtin.builtin_store("train", cfg, progress=False) == path
    assert (path / "store.json").stat().st_mtime_ns == mtime


def test_pack_trims_digital_silence_at_the_ends_and_keeps_groups(tmp_path, rng):
    """ESC-50 pads short sounds with exact zeros; the store's lengths must be the sound's, not the padding's."""
    sound = random_int16(rng, 3000)
    sound[0] = sound[-1] = 7  # the sound's own first and last samples are non-zero
    padded = np.concatenate([np.zeros(500, np.int16), sound, np.zeros(20000, np.int16)])
    write_int16(tmp_path / "w" / "padded.wav", padded)
    write_int16(tmp_path / "w" / "silent.wav", np.zeros(4000, np.int16))
    write_int16(tmp_path / "w" / "plain.wav", sound)
    (tmp_path / "m.csv").write_text("path,labels,group\nw/padded.wav,a,rec1\nw/silent.wav,a,rec2\n"
                                    "w/plain.wav,b,rec1\n")
    res = pack(sources.csv_manifest(tmp_path / "m.csv"), tmp_path / "store", jobs=1, progress=False)
    assert res.n_packed == 2 and res.n_skipped == 1
    assert "digital silence only" in (tmp_path / "store" / "report.tsv").read_text()
    store = PackedStore(tmp_path / "store")
    np.testing.assert_array_equal(store.clip(0), sound)
    np.testing.assert_array_equal(store.clip(1), sound)
    assert store.groups() == ["rec1", "rec1"]
    kept = pack(sources.csv_manifest(tmp_path / "m.csv"), tmp_path / "kept", jobs=1, progress=False,
                trim_silence=False)
    assert kept.n_packed == 3 and PackedStore(tmp_path / "kept").length.tolist() == [len(padded), 4000, 3000]


def test_store_groups_default_to_paths(small_store):
    assert small_store.groups() == small_store.paths()


# --- grouped splits and ESC-50 --------------------------------------------------------------------------------------

def test_esc50_split_keeps_every_class_on_both_sides_of_the_real_metadata(tmp_path):
    """All 50 classes in training, and in the test split every class of two or more source recordings (one of fold 4's
    classes has a single recording): the manifests alone, no packing.
    The property over any groups and classes is tests/test_splits.py's."""
    src = shared_data() / "esc50-fold4"
    if not (src / "metadata.csv").is_file():
        pytest.skip("ESC-50 fold 4 not found beside the repository (../shared/data)")
    import csv

    from trainer import esc50

    train, test = (list(csv.DictReader(p.read_text().splitlines())) for p in esc50.write_split(src, tmp_path))
    assert len(train) + len(test) == 400
    assert not {r["group"] for r in train} & {r["group"] for r in test}
    assert len({r["labels"] for r in train}) == 50
    one_recording = {c for c in {r["labels"] for r in train + test}
                     if len({r["group"] for r in train + test if r["labels"] == c}) == 1}
    assert len({r["labels"] for r in test}) == 50 - len(one_recording)
    assert 0.25 < len(test) / 400 < 0.4


def test_esc50_split_is_grouped_and_stratified_on_the_real_metadata(tmp_path):
    src = shared_data() / "esc50-fold4"
    if not (src / "metadata.csv").is_file():
        pytest.skip("ESC-50 fold 4 not found beside the repository (../shared/data)")
    from trainer import esc50

    train, test = esc50.main([str(src), str(tmp_path / "esc10"), "--esc10", "--jobs", "1"])
    a, b = PackedStore(train), PackedStore(test)
    assert len(a) + len(b) == 80 and a.classes == b.classes and len(a.classes) == 10
    assert not set(a.groups()) & set(b.groups())
    assert 0.2 < len(b) / 80 < 0.4
    assert (np.bincount(a.targets().numpy(), minlength=10) >= 3).all()
    assert a.length.max() <= 5 * SR and a.length.min() < 5 * SR  # the packer trimmed ESC-50's digital silence
