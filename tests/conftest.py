import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

from augcl import PairAugmenter, RIRBank

settings.register_profile("ci", max_examples=25, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=15, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

SR = 16000
REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """Real recordings shipped beside the repository (../shared/data); tests using them skip without it."""
    return Path(os.environ.get("AUGCL_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache(tmp_path_factory):
    """Simulated banks are cached in a per-session folder, never in the user's home."""
    old = os.environ.get("AUGCL_CACHE")
    os.environ["AUGCL_CACHE"] = str(tmp_path_factory.mktemp("augcl-cache"))
    yield
    if old is None:
        os.environ.pop("AUGCL_CACHE", None)
    else:
        os.environ["AUGCL_CACHE"] = old


@contextlib.contextmanager
def device_branches():
    """CPU tensors take the branches written for accelerators (no host-side row selection, region reads, the whole
    batch at once, the NaN/Inf flag instead of the error, the trainer's CUDA recipe), so that tests compare them with
    the CPU branches on the same machine: ``augcl.core.cpu_branch`` answers False for a CPU device, as it does under
    ``torch.compile``, in every module of augcl and trainer that calls it (patched where each looks the name up; the
    production code reads no test switch). Not thread-safe."""
    from augcl import core

    real = core.cpu_branch
    holders = [m for name, m in list(sys.modules.items())
               if name.split(".")[0] in ("augcl", "trainer") and getattr(m, "cpu_branch", None) is real]
    for m in holders:
        m.cpu_branch = lambda device: False
    try:
        yield
    finally:
        for m in holders:
            m.cpu_branch = real


@pytest.fixture
def one_thread():
    """torch on one CPU thread for the test. Bit-for-bit comparisons of batches split differently (whole batch against
    chunks) hold only where MKL's FFTs and matmuls split their work the same way, which at two threads on a loaded
    machine they need not. And under torch.compile inductor then writes no OpenMP region, so a failing device-side
    assert raises: in a kernel it parallelises, the assert's throw cannot leave the region and the process aborts, its
    message on stderr (pytorch/pytorch#195402, open in torch 2.14; docs/guide.md, "torch.compile")."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def tone(freq_hz: float, seconds: float, amp: float = 0.5, sr: int = SR, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq_hz * t + phase)).astype(np.float32)


def peak_freq(x: np.ndarray, sr: int = SR) -> float:
    """Frequency of the strongest partial (zero-padded FFT + parabolic interpolation): an independent estimate."""
    n = 1 << (len(x) * 4 - 1).bit_length()
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-30)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sr / n


def rms_db(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return 10 * np.log10(np.mean(x**2) + 1e-30)


def cpu_generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def impulse_bank():
    """A tiny RIR bank: a unit impulse and a decaying one, so the RIR presets need no simulation in tests."""
    irs = torch.zeros(2, 800)
    irs[0, 0] = 1.0
    irs[1] = torch.exp(-torch.arange(800) / 200.0) * torch.randn(800, generator=cpu_generator(1))
    irs[1] /= irs[1].norm()
    return RIRBank(irs, torch.tensor([1, 800]), SR)


def make(preset, impulse_bank=None, **kw):
    """A preset's PairAugmenter at 16 kHz; the RIR presets get ``impulse_bank`` (the fixture) as their bank."""
    if preset in ("rir", "all"):
        kw.setdefault("rir_bank", impulse_bank)
    return PairAugmenter.from_preset(preset, sample_rate=SR, **kw)
