"""Packing robustness (issue 12): every format soundfile decodes, every skipped path reported, any file name,
workers that die with the packer, the user's umask, unlabeled rows reported, a packed folder re-planned."""
import csv
import os
import signal
import time

import numpy as np
import pytest
import scipy.signal  # noqa: F401 - the decoder's resampler, imported once here rather than in each forked packer
import soundfile as sf

from augcl.audiofiles import AUDIO_EXTENSIONS, scan_audio_files
from tests.conftest import SR
from trainer import run, sources
from trainer.data import PackedStore
from trainer.pack import pack


def write_wav(path, n=1600, seed=0):
    """A 16-bit wav of ``n`` random samples; returns them."""
    x = np.random.default_rng(seed).integers(-20000, 20000, size=n).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(os.fsencode(path), x, SR, subtype="PCM_16", format="WAV")
    return x


def read_report(store):
    with open(store / "report.tsv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.reader(f, dialect="excel-tab"))
    assert rows[0] == ["path", "reason"]
    return {path: reason for path, reason in rows[1:]}


# --- 1. every format soundfile decodes ----------------------------------------------------------------------------

def needs_mp3():
    if "MP3" not in sf.available_formats():
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) has no MP3 codec (MP3 needs libsndfile >= 1.1)")


def test_extensions_come_from_soundfile_formats():
    assert {".wav", ".flac", ".ogg", ".aiff", ".aif"} <= set(AUDIO_EXTENSIONS)
    assert (".mp3" in AUDIO_EXTENSIONS) == ("MP3" in sf.available_formats())
    assert (".opus" in AUDIO_EXTENSIONS) == ("OPUS" in sf.available_subtypes("OGG"))
    assert not {".raw", ".mat", ".txt"} & set(AUDIO_EXTENSIONS)


def test_mp3_files_are_packed_and_decoded_by_content(tmp_path):
    needs_mp3()
    t = np.arange(SR) / SR
    (tmp_path / "src").mkdir()
    sf.write(str(tmp_path / "src" / "tone.mp3"), (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR,
             format="MP3")
    (tmp_path / "src" / "notes.txt").write_text("not audio: ignored")
    wav = write_wav(tmp_path / "wav" / "x.wav")
    (tmp_path / "src" / "mislabeled.mp3").write_bytes((tmp_path / "wav" / "x.wav").read_bytes())  # a wav inside
    res = pack(sources.audio_folder(tmp_path / "src"), tmp_path / "store", jobs=1, progress=False)
    assert res.complete and res.n_packed == 2 and res.n_skipped == 0
    store = PackedStore(tmp_path / "store")
    assert [os.path.basename(p) for p in store.paths()] == ["mislabeled.mp3", "tone.mp3"]
    np.testing.assert_array_equal(store.clip(0), wav)
    x = store.clip(1).astype(np.float64) / 32768
    assert abs(len(x) - SR) < 0.1 * SR  # the encoder's delay and padding aside
    assert np.sqrt(np.mean(x[2000:-2000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_pack_cli_packs_an_mp3_only_folder(tmp_path):
    needs_mp3()
    from trainer.pack import main

    (tmp_path / "src").mkdir()
    sf.write(str(tmp_path / "src" / "a.mp3"), np.full(SR, 0.1, np.float32) * np.sin(np.arange(SR)), SR, format="MP3")
    assert main([str(tmp_path / "src"), str(tmp_path / "store"), "--quiet", "--jobs", "1"]) == 0
    assert len(PackedStore(tmp_path / "store")) == 1


def test_an_audio_file_that_fails_to_decode_and_an_unsupported_format_are_reported(tmp_path):
    write_wav(tmp_path / "src" / "ok.wav")
    (tmp_path / "src" / "broken.flac").write_bytes(b"fLaC" + bytes(100))
    (tmp_path / "src" / "song.m4a").write_bytes(bytes(100))
    (tmp_path / "src" / "take.raw").write_bytes(bytes(100))
    res = pack(sources.audio_folder(tmp_path / "src"), tmp_path / "store", jobs=1, progress=False)
    assert res.n_packed == 1 and res.n_skipped == 3
    report = {os.path.basename(p): r for p, r in read_report(tmp_path / "store").items()}
    assert set(report) == {"broken.flac", "song.m4a", "take.raw"}
    assert report["broken.flac"].startswith("LibsndfileError: Error opening")
    assert "not decoded by this soundfile" in report["song.m4a"] and "headerless" in report["take.raw"]


# --- 2. every skipped path is reported, links included --------------------------------------------------------------

def test_folder_walk_reports_broken_links_loops_and_follows_each_real_folder_once(tmp_path):
    root = tmp_path / "src"
    write_wav(root / "a.wav")
    write_wav(root / "sub" / "b.wav")
    write_wav(tmp_path / "outside" / "c.wav")
    (root / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    (root / "loop1.wav").symlink_to("loop2.wav")
    (root / "loop2.wav").symlink_to("loop1.wav")
    (root / "sub" / "up").symlink_to("..")  # a directory loop
    (root / "again").symlink_to("sub")  # a second path to a folder listed already
    (root / "ext").symlink_to(tmp_path / "outside")  # a folder outside the tree: walked once
    (root / "z_link.wav").symlink_to("a.wav")  # a second path to a file listed already
    (root / "y_link.wav").symlink_to(tmp_path / "outside" / "c.wav")  # c.wav again, through ext/
    (tmp_path / "only_here.wav").write_bytes((root / "a.wav").read_bytes())
    (root / "sub" / "lone.wav").symlink_to(tmp_path / "only_here.wav")  # a valid link to a file: packed

    files, skipped = scan_audio_files(root)
    assert [str(p.relative_to(root)) for p in files] == ["a.wav", "ext/c.wav", "sub/b.wav", "sub/lone.wav"]
    reasons = {os.path.relpath(p, root): r for p, r in skipped}
    assert reasons == {
        "dangling.wav": f"broken symbolic link -> {tmp_path / 'gone.wav'}",
        "loop1.wav": "symbolic link loop", "loop2.wav": "symbolic link loop",
        "sub/up": f"symbolic link to a folder listed already ({root}); not followed again",
        "again": f"symbolic link to a folder listed already ({root / 'sub'}); not followed again",
        "z_link.wav": f"symbolic link to a file listed already ({root / 'a.wav'})",
        "y_link.wav": f"symbolic link to a file listed already ({root / 'ext' / 'c.wav'})",
    }

    res = pack(sources.audio_folder(root), tmp_path / "store", jobs=1, progress=False)
    assert res.n_packed == 4 and res.n_skipped == 7
    store = PackedStore(tmp_path / "store")
    assert sorted(store.paths()) == sorted(str(p.resolve()) for p in files)
    assert set(read_report(tmp_path / "store")) == {str(root / p) for p in reasons}


def test_folder_walk_reports_a_folder_it_cannot_list(tmp_path, monkeypatch):
    root = tmp_path / "src"
    write_wav(root / "a.wav")
    write_wav(root / "locked" / "b.wav")
    (root / "locked").chmod(0)
    try:
        if os.geteuid() == 0:  # root lists any folder: make listing this one fail as it does for other users
            real_scandir = os.scandir

            def scandir(path):
                if os.fspath(path) == str(root / "locked"):
                    raise PermissionError(13, "Permission denied", os.fspath(path))
                return real_scandir(path)
            monkeypatch.setattr(os, "scandir", scandir)
        files, skipped = scan_audio_files(root)
    finally:
        (root / "locked").chmod(0o755)
    assert files == [root / "a.wav"]
    assert skipped == [(str(root / "locked"), "cannot list this folder: Permission denied")]


def test_manifest_entries_that_are_broken_links_say_so(tmp_path):
    write_wav(tmp_path / "a.wav")
    (tmp_path / "b.wav").symlink_to("nowhere.wav")
    (tmp_path / "m.csv").write_text("path,labels\na.wav,x\nb.wav,y\nc.wav,y\n")
    src = sources.csv_manifest(tmp_path / "m.csv")
    assert dict((os.path.basename(p), r) for p, r in src.missing) == {
        "b.wav": "broken symbolic link -> nowhere.wav", "c.wav": "file not found"}


# --- 3. paths survive any file name -------------------------------------------------------------------------------

ODD_NAMES = ["a\nb.wav", "c\td.wav", "e\rf.wav", 'g"h.wav', os.fsdecode(b"i\xffj.wav"), "plain.wav"]


def test_paths_groups_and_report_survive_any_file_name(tmp_path):
    truth = {str((tmp_path / "src" / n).resolve()): write_wav(tmp_path / "src" / n, seed=k)
             for k, n in enumerate(ODD_NAMES)}
    (tmp_path / "src" / "x\ty\nz.wav").symlink_to("nowhere\n.wav")
    res = pack(sources.audio_folder(tmp_path / "src"), tmp_path / "store", files_per_shard=2, jobs=1, progress=False)
    assert res.n_packed == len(ODD_NAMES) and res.n_skipped == 1
    store = PackedStore(tmp_path / "store")
    assert sorted(store.paths()) == sorted(truth) and len(store.paths()) == len(store)
    for i, path in enumerate(store.paths()):
        np.testing.assert_array_equal(store.clip(i), truth[path])
    assert read_report(tmp_path / "store") == {str(tmp_path / "src" / "x\ty\nz.wav"):
                                               "broken symbolic link -> nowhere\n.wav"}
    assert not (tmp_path / "store" / "paths.txt").exists()

    with open(tmp_path / "src" / "m.csv", "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        csv.writer(f).writerows([("path", "labels", "group")] + [
            (n, str(k % 2), f"rec\n{k // 2}") for k, n in enumerate(ODD_NAMES)])
    labeled = pack(sources.csv_manifest(tmp_path / "src" / "m.csv"), tmp_path / "grouped", jobs=1, progress=False)
    assert labeled.n_packed == len(ODD_NAMES)
    grouped = PackedStore(tmp_path / "grouped")
    assert grouped.groups() == [f"rec\n{k // 2}" for k in range(len(ODD_NAMES))]
    assert [os.path.basename(p) for p in grouped.paths()] == ODD_NAMES
    assert run.store_fingerprint(tmp_path / "grouped") != run.store_fingerprint(tmp_path / "store")


def test_stores_with_paths_txt_are_still_read_and_fingerprint_the_same(tmp_path):
    """A store as the packer wrote it before paths.json: paths.txt and groups.txt, one name per line."""
    for k in range(3):
        write_wav(tmp_path / "w" / f"{k}.wav", seed=k)
    (tmp_path / "m.csv").write_text("path,labels,group\nw/0.wav,a,r1\nw/1.wav,b,r1\nw/2.wav,a,r2\n")
    pack(sources.csv_manifest(tmp_path / "m.csv"), tmp_path / "store", jobs=1, progress=False)
    store = PackedStore(tmp_path / "store")
    paths, groups, fingerprint = store.paths(), store.groups(), run.store_fingerprint(store.root)
    (store.root / "paths.txt").write_text("".join(p + "\n" for p in paths))
    (store.root / "groups.txt").write_text("".join(g + "\n" for g in groups))
    (store.root / "paths.json").unlink()
    (store.root / "groups.json").unlink()
    assert store.paths() == paths and store.groups() == groups == ["r1", "r1", "r2"]
    assert run.store_fingerprint(store.root) == fingerprint
    (store.root / "paths.txt").write_text("".join(p + "\n" for p in paths) + "extra\n")  # a name with a line break
    with pytest.raises(ValueError, match="paths lists 4 names for 3 clips.*repack"):
        store.paths()


# --- 5. files respect the user's umask ----------------------------------------------------------------------------

@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_store_and_checkpoint_files_get_the_mode_the_umask_gives(tmp_path, mask, mode):
    import torch

    from trainer import common

    write_wav(tmp_path / "src" / "a.wav")
    write_wav(tmp_path / "src" / "b.wav", seed=1)
    old = os.umask(mask)
    try:
        pack(sources.audio_folder(tmp_path / "src"), tmp_path / "store", files_per_shard=1, jobs=2, progress=False)
        common.atomic_save({"step": torch.tensor(3)}, tmp_path / "run" / "last.pt")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()] + [tmp_path / "run" / "last.pt"]
    names = {p.name for p in files}
    assert {"plan.json", "00000.npy", "00001.json", "index.npz", "paths.json", "report.tsv", "store.json",
            "last.pt"} <= names
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(mode) for p in files}


# --- 4. workers stop when the packer dies -------------------------------------------------------------------------

linux_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="finds processes through /proc (Linux)")


def _state(pid):
    """A process's state letter from /proc (``Z``: a zombie, dead but not reaped), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def _alive(pid):
    return _state(pid) not in (None, "Z")


def _children(pid):
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _alive(int(name)):
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                kids.append(int(name))
    return kids


def _wait_until(cond, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


@linux_proc
def test_workers_die_with_a_killed_packer_and_a_rerun_completes(tmp_path):
    """``python -m trainer.pack SRC OUT --jobs 2`` run in a forked process (the interpreter's start, seconds of
    importing torch, spared; test_data's CLI test starts the real command), killed by SIGKILL once its two workers
    exist: they die with it, and the same command run again completes the store."""
    from trainer.pack import main

    src, out = tmp_path / "src", tmp_path / "store"
    for k in range(60):  # 60 shards of one file: about a second of work for two workers (an fsync per file)
        write_wav(src / f"{k:02d}.wav", n=4000, seed=k)
    argv = [str(src), str(out), "--files-per-shard", "1", "--jobs", "2", "--quiet"]

    def packer():
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        main(argv)

    pid = _forked(packer)
    try:
        assert _wait_until(lambda: len(_children(pid)) == 2 or not _alive(pid), 30)
        workers = _children(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert len(workers) == 2 and not (out / "store.json").exists(), "the pack finished before it could be killed"
    gone = _wait_until(lambda: not any(map(_alive, workers)), 3)
    for w in filter(_alive, workers):  # a failing test leaves no orphans behind
        os.kill(w, signal.SIGKILL)
    assert gone, "workers outlived the packer"
    assert main(argv) == 0
    assert len(PackedStore(out)) == 60


def _forked(child):
    """Run ``child()`` in a forked process that never returns into pytest; its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(0)
    return pid


@linux_proc
@pytest.mark.parametrize("use_prctl", [True, False])
def test_die_with_parent_by_prctl_and_by_watchdog(use_prctl):
    """A process between this one and a worker is killed; the worker follows (the watchdog polls every 50 ms)."""
    from trainer.pack import die_with_parent

    r, w = os.pipe()

    def worker():
        how = die_with_parent(os.getppid(), use_prctl=use_prctl, poll_s=0.05)
        os.write(w, f"{os.getpid()} {how}\n".encode())
        time.sleep(30)

    middle = _forked(lambda: (_forked(worker), time.sleep(30)))
    line = b""
    while not line.endswith(b"\n"):
        line += os.read(r, 64)
    os.close(r)
    os.close(w)
    pid, how = line.decode().split()
    assert how == ("prctl" if use_prctl else "watchdog") and _alive(int(pid))
    os.kill(middle, signal.SIGKILL)
    os.waitpid(middle, 0)
    assert _wait_until(lambda: not _alive(int(pid)), 3)


@linux_proc
def test_die_with_parent_when_the_parent_is_already_gone():
    from trainer.pack import die_with_parent

    pid = _forked(lambda: (die_with_parent(os.getppid() + 1), time.sleep(30)))  # not its parent: gone already
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


# --- 6. unlabeled rows of a single-label source are reported ------------------------------------------------------

def test_clips_without_a_label_are_reported_in_a_single_label_source_only(tmp_path):
    from trainer.pack import UNLABELED

    for name in ("x.wav", "y.wav", "z.wav"):
        write_wav(tmp_path / name)
    (tmp_path / "single.csv").write_text("path,labels\nx.wav,siren\ny.wav,\nz.wav,alarm\n")
    src = sources.csv_manifest(tmp_path / "single.csv")
    assert src.classes == ("alarm", "siren") and not src.multi_label
    res = pack(src, tmp_path / "single", jobs=1, progress=False)
    assert res.n_packed == 3 and res.n_skipped == 0 and res.n_unlabeled == 1
    assert "warning: 1 clips packed without a label in a single-label source" in res.summary()
    assert read_report(tmp_path / "single") == {str((tmp_path / "y.wav").resolve()): UNLABELED}
    assert PackedStore(tmp_path / "single").targets().tolist() == [1, -1, 0]

    (tmp_path / "multi.csv").write_text("path,labels\nx.wav,siren;alarm\ny.wav,\nz.wav,alarm\n")
    res = pack(sources.csv_manifest(tmp_path / "multi.csv"), tmp_path / "multi", jobs=1, progress=False)
    assert res.n_packed == 3 and res.n_unlabeled == 0 and "warning" not in res.summary()
    assert read_report(tmp_path / "multi") == {}  # a clip without events is a multi-label clip like any other


# --- 7. a packed folder is packed again when its files change -----------------------------------------------------

def test_resolve_store_packs_a_folder_again_when_its_files_change(tmp_path, capsys):
    from trainer.common import resolve_store

    data, work = tmp_path / "audio", tmp_path / "run"
    write_wav(data / "a.wav", seed=0)
    write_wav(data / "b.wav", seed=1)
    out = resolve_store(str(data), "unlabeled", work, jobs=1)
    assert out == work / "packed" and len(PackedStore(out)) == 2
    mtime = (out / "store.json").stat().st_mtime_ns
    capsys.readouterr()

    assert resolve_store(str(data), "unlabeled", work, jobs=1) == out  # unchanged: reused, nothing decoded
    assert (out / "store.json").stat().st_mtime_ns == mtime and capsys.readouterr().out == ""

    write_wav(data / "sub" / "c.wav", seed=2)
    resolve_store(str(data), "unlabeled", work, jobs=1)
    assert "(1 files added, 0 removed); packing it again" in capsys.readouterr().out
    assert sorted(os.path.basename(p) for p in PackedStore(out).paths()) == ["a.wav", "b.wav", "c.wav"]

    (data / "a.wav").unlink()
    resolve_store(str(data), "unlabeled", work, jobs=1)
    assert "(0 files added, 1 removed); packing it again" in capsys.readouterr().out
    assert sorted(os.path.basename(p) for p in PackedStore(out).paths()) == ["b.wav", "c.wav"]


def test_resolve_store_names_an_empty_folder_and_one_with_nothing_decodable(tmp_path):
    from trainer.common import resolve_store

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    with pytest.raises(ValueError, match="data folder .*empty.* holds no audio files; put audio files in it"):
        resolve_store(str(tmp_path / "empty"), "unlabeled", tmp_path / "run", jobs=1)
    assert not (tmp_path / "run" / "packed").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"RIFF garbage")
    with pytest.raises(ValueError, match="none of its audio files could be decoded .*report.tsv"):
        resolve_store(str(tmp_path / "bad"), "unlabeled", tmp_path / "run2", jobs=1)
