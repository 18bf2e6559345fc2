"""Fused kernels for the hot spots of :mod:`augcl.functional`, and the dispatcher that picks them.

What the stage breakdown of ``python -m benchmarks.augment`` (docs/benchmarks/augment.md) and the op profile of
``python -m benchmarks.profile --preset all --backend torch`` show, and what is here:

* The phase-locked vocoder's phase step (:func:`augcl.functional._vocoder_phase`: magnitudes, phases,
  instantaneous frequencies, the scan over frames, the peak search and the locking) is ~15 small tensor ops over
  ``(B, K, F)``, most of a vocoder time stretch in the reference. One Numba kernel on the CPU
  (:mod:`.vocoder_cpu`, parallel over examples) and one CUDA kernel (:mod:`.vocoder_cuda`, one block per
  example, numba.cuda on torch's current stream) do it in one pass. The FFTs, the frame gather and the
  overlap-add stay in torch (MKL / cuFFT do them well).
* The log-mel front end: torch's FFT + matmul is already near the machine's limit on the CPU, so there is no
  log-mel kernel (a fused log-mel + mask kernel would save the mask pass, ~1 % of a batch).

Backends (``PairAugmenter(backend=...)``): ``"torch"`` the reference; ``"kernels"`` the kernels, an error if
none runs on the device (Numba missing, or numba.cuda without a usable GPU); ``"auto"`` the kernels where they
are installed *and* measured faster than the reference on that device (the CPU), else the reference. The CUDA
kernel is not in ``"auto"`` until a GPU benchmark shows it faster (``python -m benchmarks.augment --device
cuda``; see docs/benchmarks/). Kernels run in float32; float64 input runs the reference on every backend.
Install the kernels with ``pip install augcl[kernels]`` (Numba).
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Optional

import torch
from torch import Tensor

from .. import functional as AF

BACKENDS = ("auto", "torch", "kernels")
#: devices where ``"auto"`` uses the kernels: those where the benchmark measured them faster than the reference
AUTO_DEVICES = ("cpu",)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


@functools.lru_cache(maxsize=None)
def _numba_cpu() -> bool:
    return importlib.util.find_spec("numba") is not None


@functools.lru_cache(maxsize=None)
def _numba_cuda() -> bool:
    if not _numba_cpu():
        return False
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return True
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # a broken CUDA driver/toolkit means: no CUDA kernels here
        return False


def available(device="cpu") -> bool:
    """Whether a kernel runs on ``device`` here (Numba installed; for CUDA also a usable GPU for numba.cuda)."""
    kind = torch.device(device).type
    if kind == "cpu":
        return _numba_cpu()
    if kind == "cuda":
        return torch.cuda.is_available() and _numba_cuda()
    return False


def use_kernels(backend: str, device) -> bool:
    """Whether ``backend`` runs the kernels on ``device``; ``"kernels"`` where none runs raises, naming the fix."""
    check_backend(backend)
    if backend == "torch":
        return False
    device = torch.device(device)
    if backend == "kernels":
        if not available(device):
            hint = ("pip install 'augcl[kernels]' (Numba)" if device.type in ("cpu", "cuda") and not _numba_cpu()
                    else "numba.cuda finds no usable GPU/driver" if device.type == "cuda"
                    else f"there are no kernels for {device.type}")
            raise RuntimeError(f"backend='kernels' but no augcl kernel runs on {device}: {hint}; "
                               "or use backend='auto' / 'torch'")
        return True
    return device.type in AUTO_DEVICES and available(device)


def vocoder_phase(spec0: Tensor, spec1: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """Kernel version of :func:`augcl.functional._vocoder_phase` on the spectra's device (complex ``(B, K, F)``)."""
    if spec0.device.type == "cpu":
        from . import vocoder_cpu

        out = vocoder_cpu.run(spec0.contiguous().numpy(), spec1.contiguous().numpy(), n_fft, hop_length)
        return torch.from_numpy(out)
    if spec0.device.type == "cuda":
        from . import vocoder_cuda

        return vocoder_cuda.run(spec0, spec1, n_fft, hop_length)
    raise RuntimeError(f"no augcl kernel for {spec0.device}")


def time_stretch_segment(wave: Tensor, rate: Tensor, start: Tensor, length: int, *, n_fft: int = 512,
                         hop_length: int = 128, max_rate: Optional[float] = None,
                         rows: Optional[Tensor] = None, lengths: Optional[Tensor] = None) -> Tensor:
    """:func:`augcl.functional.time_stretch_segment` with the phase step in a kernel (same arguments, same result
    to float32 rounding). float64 input, or a device without a kernel, runs the reference."""
    if wave.dtype == torch.float64 or not available(wave.device):
        return AF.time_stretch_segment(wave, rate, start, length, n_fft=n_fft, hop_length=hop_length,
                                       max_rate=max_rate, rows=rows, lengths=lengths)
    spec0, spec1 = AF._vocoder_analysis(wave, rate, start, length, n_fft, hop_length, max_rate, rows, lengths)
    return AF._vocoder_synthesis(vocoder_phase(spec0, spec1, n_fft, hop_length), length, n_fft, hop_length)
