"""What ``pip install augcl`` (no extras) gives: the engine alone, and every preset running on it.

The bare install is checked by what it would leave out: a child process whose imports are limited to the standard
library and the distributions the declared dependencies (pyproject's ``dependencies``) pull in, transitively. Any
other module is not found there, as it would in a fresh venv with the bare install, so a module of the
engine that needs an undeclared package (or an optional one, such as Numba, without falling back) fails the test.
The wheel itself is built too: it holds ``augcl`` and ``trainer`` and no top-level ``benchmarks``.
"""
import json
import re
import subprocess
import sys
import textwrap
import zipfile
from importlib import metadata

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from .conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

# limits the child's imports to sys.argv[1] (a JSON list of top-level names) and the standard library
BARE = textwrap.dedent('''
    import json, sys
    ALLOWED = set(json.loads(sys.argv.pop(1)))

    class BareInstall:
        """Wraps a finder: a name outside ALLOWED and the standard library is not found, as where not installed."""
        def __init__(self, inner):
            self.inner = inner

        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in ALLOWED or top in sys.stdlib_module_names or top in sys.builtin_module_names:
                return self.inner.find_spec(name, path, target)
            return None

        def __getattr__(self, attr):
            return getattr(self.inner, attr)

    sys.meta_path[:] = [BareInstall(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
''')


def declared() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[str]) -> set[str]:
    """The installed distributions ``requirements`` pull in, transitively (markers evaluated here, no extras)."""
    env = {**default_environment(), "extra": ""}
    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        try:
            todo += [Requirement(r) for r in metadata.requires(req.name) or ()]
        except metadata.PackageNotFoundError:
            continue  # declared but not installed here (a platform-specific wheel): nothing it could provide
        seen.add(name)
    return seen


def allowed_modules() -> list[str]:
    dists = closure(declared()) | {"augcl"}
    tops = {top for top, owners in metadata.packages_distributions().items()
            if any(canonical(d) in dists for d in owners)}
    return sorted(tops | {"augcl"})


def run_bare(code: str, tmp_path) -> subprocess.CompletedProcess:
    script = tmp_path / "bare.py"
    script.write_text(BARE + textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script), json.dumps(allowed_modules())], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


def test_the_closure_is_what_a_bare_install_holds():
    """The allowed set is the engine's deps and theirs, not what this dev venv happens to hold."""
    tops = set(allowed_modules())
    assert {"torch", "numpy", "scipy", "soundfile", "pyroomacoustics", "augcl"} <= tops
    assert not tops & {"torchvision", "matplotlib", "tqdm", "numba", "torchaudio", "librosa", "tensorboard",
                       "sklearn", "benchmarks"}


@pytest.mark.slow
def test_every_preset_and_transform_runs_on_the_bare_install(tmp_path):
    done = run_bare('''
        import sys
        import torch
        import augcl
        from augcl import (PRESETS, AddNoise, ApplyImpulseResponse, Gain, LogMel, PairAugmenter, RandomSegment,
                           SpecAugment, TimeStretch)
        from augcl.kernels import available

        assert not available("cpu"), "Numba is not a dependency: the kernels must be off here"
        g = torch.Generator().manual_seed(0)
        wave = torch.randn(3, 32000, generator=g) * 0.1
        lengths = torch.tensor([32000, 20000, 9000])
        for name in sorted(PRESETS):
            pair = PairAugmenter.from_preset(name, sample_rate=16000)(wave, generator=g, lengths=lengths)
            assert pair.anchor.shape == pair.positive.shape and pair.anchor.shape[:3] == (3, 1, 64), name
            assert torch.isfinite(pair.anchor).all() and torch.isfinite(pair.positive).all(), name
        x = wave[:, None]
        for t in (TimeStretch(0.8, 1.25, p=1.0), ApplyImpulseResponse(p=1.0, sample_rate=16000),
                  AddNoise(p=1.0, sample_rate=16000), Gain(p=1.0), RandomSegment(16000)):
            y = t(x, generator=g, lengths=lengths)
            assert torch.isfinite(y).all(), type(t).__name__
        spec = LogMel(sample_rate=16000)(x)
        assert torch.isfinite(SpecAugment(p=1.0)(spec, generator=g)).all()
        print(" ".join(sorted({m.partition(".")[0] for m in sys.modules})))
    ''', tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    imported = set(done.stdout.split())
    assert "augcl" in imported and not imported & {"numba", "torchvision", "matplotlib", "tqdm", "torchaudio"}


def test_trainer_and_demo_name_the_extra_they_need(tmp_path):
    """Without the train extra the trainer says which extra to install, and the demo fails before any work."""
    done = run_bare('''
        import runpy, sys
        try:
            import trainer.pretrain
        except ImportError as e:
            print("trainer:", e)
        sys.argv = ["augcl.demo", "--out", "demo.png"]
        runpy.run_module("augcl.demo", run_name="__main__")
    ''', tmp_path)
    assert "trainer: trainer needs torchvision, matplotlib, tqdm" in done.stdout and "augcl[train]" in done.stdout
    assert done.returncode == 2 and "pip install 'augcl[demo]'" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "demo.png").exists()


@pytest.mark.slow
def test_the_wheel_holds_the_engine_and_trainer_and_its_bare_requirements(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "augcl", "trainer", "benchmarks"):
        subprocess.run(["cp", "-r", str(REPO / name), str(src / name)], check=True)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("augcl-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"augcl", "trainer"}
    bare = [r.split(":", 1)[1].strip() for r in meta.splitlines() if r.startswith("Requires-Dist:")]
    assert sorted(r for r in bare if "extra ==" not in r) == sorted(declared())
