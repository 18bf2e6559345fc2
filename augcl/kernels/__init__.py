"""Fused kernels for the hot spots of :mod:`augcl.functional`, and the dispatcher that picks them.

What the stage breakdown of ``python -m benchmarks.augment`` (docs/benchmarks/augment.md) and the op profile of
``python -m benchmarks.profile --preset all --backend torch`` show, and what is here:

* The phase-locked vocoder's phase step (:func:`augcl.functional._vocoder_phase`: magnitudes, phases,
  instantaneous frequencies, the scan over frames, the peak search and the locking) is ~15 small tensor ops over
  ``(B, K, F)``, most of a vocoder time stretch in the reference. One Numba kernel on the CPU
  (:mod:`.vocoder_cpu`, parallel over examples) and one CUDA kernel (:mod:`.vocoder_cuda`, one block per
  example, numba-cuda on torch's memory and current stream) do it in one pass. The FFTs, the frame gather and the
  overlap-add stay in torch (MKL / cuFFT do them well).
* The log-mel front end: torch's FFT + matmul is already near the machine's limit on the CPU, so there is no
  log-mel kernel (a fused log-mel + mask kernel would save the mask pass, ~1 % of a batch).

Backends (``PairAugmenter(backend=...)``): ``"torch"`` the reference; ``"kernels"`` the kernels, an error naming
the reason if none runs on the device (:func:`unavailable`); ``"auto"`` the kernels where they run *and* were
measured faster than the reference on that device type (:data:`AUTO_DEVICES`), else the reference. Under
``torch.compile`` every backend traces the reference (:func:`use_kernels`; docs/guide.md, "torch.compile").

``"auto"`` on CUDA is the reference: the CUDA kernel has never been timed on a GPU, so it is not in
:data:`AUTO_DEVICES` until ``python -m benchmarks.gpu`` measures it faster than the reference there (and the
measurement is recorded in docs/benchmarks/). Until then it runs only when asked for (``backend="kernels"``).

A kernel is available on a CUDA device when torch sees the GPU, numba-cuda (NVIDIA's CUDA target for Numba,
``pip install 'augcl[cuda]'``; numba's built-in target is deprecated and is not used) is installed, and the
float32 kernel compiles for that GPU: the first ``available("cuda")`` compiles it (a few seconds; launches on
the analysis' contiguous spectra then reuse it) and a failure makes it unavailable, its reason kept for the
error ``"kernels"`` raises. The tests compile every CUDA kernel to PTX for sm_80 and sm_90 without a GPU
(``numba.cuda.compile_ptx``). ``time_stretch_segment`` runs float32 in the kernels and float64 in the reference
on every backend (the kernels take float64 too: tested, not dispatched). Install the CPU kernels with
``pip install augcl[kernels]`` (Numba).
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Optional

import torch
from torch import Tensor

from .. import vocoder as AF

BACKENDS = ("auto", "torch", "kernels")
#: device types where ``"auto"`` uses the kernels: those where a benchmark measured them faster than the reference
#: (the CPU: docs/benchmarks/augment.md). Not CUDA: no GPU measurement yet (``python -m benchmarks.gpu``).
AUTO_DEVICES = ("cpu",)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


@functools.lru_cache(maxsize=None)
def _numba_cpu() -> bool:
    return importlib.util.find_spec("numba") is not None


@functools.lru_cache(maxsize=None)
def _numba_cuda() -> bool:
    """numba-cuda is installed (``numba.cuda`` is then NVIDIA's target, not numba's deprecated built-in one)."""
    return importlib.util.find_spec("numba_cuda") is not None


@functools.lru_cache(maxsize=None)
def _cuda_build_failure(index: int) -> Optional[str]:
    """None where the CUDA kernel compiles for GPU ``index``, else what went wrong (once per process and GPU)."""
    try:
        from . import vocoder_cuda

        vocoder_cuda.compile_for_device(index)
    except Exception as e:  # whatever numba, NVVM or the driver raise: the kernel does not run here
        first = (str(e).strip().splitlines() or [""])[0]
        return f"the CUDA kernel does not build for GPU {index} ({type(e).__name__}: {first})"
    return None


def unavailable(device="cpu") -> Optional[str]:
    """Why no kernel runs on ``device`` here, or None where one does (the reason ``backend="kernels"`` raises).

    CPU: Numba installed. CUDA: torch sees the GPU, numba-cuda installed and the kernel compiles for that GPU
    (compiled on the first call, a few seconds)."""
    device = torch.device(device)
    if device.type == "cpu":
        return None if _numba_cpu() else "Numba is not installed: pip install 'augcl[kernels]'"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "torch sees no CUDA GPU"
        if not (_numba_cpu() and _numba_cuda()):
            return ("numba-cuda (NVIDIA's CUDA target for Numba) is not installed: pip install 'augcl[cuda]'")
        return _cuda_build_failure(device.index if device.index is not None else torch.cuda.current_device())
    return f"there are no kernels for {device.type}"


def available(device="cpu") -> bool:
    """Whether a kernel runs on ``device`` here (:func:`unavailable` says why not)."""
    return unavailable(device) is None


def use_kernels(backend: str, device) -> bool:
    """Whether ``backend`` runs the kernels on ``device``; ``"kernels"`` where none runs raises, naming the reason.

    False on every backend while ``torch.compile`` traces: the kernels read their inputs on the host (Numba, via
    ``.numpy()``) or launch outside torch (numba-cuda), which breaks the graph; the traced reference is fused by
    inductor instead."""
    check_backend(backend)
    if backend == "torch" or torch.compiler.is_compiling():
        return False
    device = torch.device(device)
    if backend == "kernels":
        why = unavailable(device)
        if why is not None:
            raise RuntimeError(f"backend='kernels' but no augcl kernel runs on {device}: {why}; "
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
