"""Fused kernels for the hot spots of :mod:`augcl.functional`, and the dispatcher that picks them.

What the profiles (``python -m benchmarks.profile``) showed, and what is here:

* The phase-locked vocoder's phase step (:func:`augcl.vocoder._vocoder_phase`: magnitudes, phases,
  instantaneous frequencies, the scan over frames, the peak search and the locking) is ~15 small tensor ops over
  ``(B, K, F)``. One Numba kernel on the CPU (:mod:`.vocoder_cpu`, parallel over examples; its float32 version's
  per-bin loops vectorise) and one CUDA kernel (:mod:`.vocoder_cuda`, one block per example, numba-cuda on torch's
  memory and current stream) do it in one pass. On the CPU the whole vocoder runs in chunks of ~2048 frames that
  stay in the caches (:func:`time_stretch_segment`): windowed analysis frames and the overlap-add in Numba
  (:mod:`.frames_cpu`), the FFTs in torch (MKL).
* The log-mel: framing, window, real FFT, power and mel projection in one Numba kernel (:func:`mel_at`,
  :mod:`.fft_cpu`: its own FFT across a tile of 8 frames held in the L1 cache, and each band summed over its
  nonzero span only, 378 products a frame instead of 12,864): the frames and the complex spectrum, two ~40 MB round
  trips through memory per B=128 batch with MKL's rfft between them, are never written.
  Where the kernel has no plan (an ``n_fft`` whose half has a prime factor above 5, or float64), the FFTs stay in
  torch and the power and mel projection are :mod:`.mel_cpu`.
* The anchor: crop and white noise at an SNR over the valid samples (the noise from each row's seed:
  :mod:`.noise_cpu`, the counter-based generator of :func:`augcl.noise.white_noise`), then the fused log-mel, all in
  one kernel (:func:`noisy_mel`; the segment lives in the cache; :func:`noisy_segments` gives the segments alone);
  the positive's stretched frames read straight from the clip by the fused log-mel (or gathered and
  windowed in one pass, :func:`frames_at`, where it has no plan).
* The input check's row norms (:func:`row_norms`), SpecAugment's masks written in place (:func:`fill_masks`) and the
  RIR's spectral product in place, without gathering the bank's rows (:func:`mul_rows_`).

The CPU kernels are host code (NumPy views of CPU tensors): the accelerator branches (also where the tests run them
on a CPU) run the reference.

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

import numpy as np
import torch
from torch import Tensor

from .. import vocoder as AF
from ..core import cpu_branch

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
    if device.type == "cpu" and not cpu_branch(device):  # the CPU kernels are host code: the accelerator branch
        return False  # (taken on a CPU where the tests force it) runs the reference, as on a GPU
    if backend == "kernels":
        why = unavailable(device)
        if why is not None:
            raise RuntimeError(f"backend='kernels' but no augcl kernel runs on {device}: {why}; "
                               "or use backend='auto' / 'torch'")
        return True
    return device.type in AUTO_DEVICES and available(device)


def vocoder_phase(spec0: Tensor, spec1: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """Kernel version of :func:`augcl.functional._vocoder_phase` on the spectra's device (complex ``(B, K, F)``)."""
    _follow_torch_threads()
    if spec0.device.type == "cpu":
        from . import vocoder_cpu

        out = vocoder_cpu.run(spec0.contiguous().numpy(), spec1.contiguous().numpy(), n_fft, hop_length)
        return torch.from_numpy(out)
    if spec0.device.type == "cuda":
        from . import vocoder_cuda

        return vocoder_cuda.run(spec0, spec1, n_fft, hop_length)
    raise RuntimeError(f"no augcl kernel for {spec0.device}")


def sparse_filterbank(filterbank: Tensor) -> tuple:
    """The nonzero span of each band of a dense filterbank ``(F, M)`` (:func:`.mel_cpu.sparse_filterbank`), for
    :func:`mel_energy`."""
    from . import mel_cpu

    return mel_cpu.sparse_filterbank(filterbank.detach().cpu().numpy())


def mel_energy(spec: Tensor, sparse: tuple, power: float, out: Optional[Tensor] = None) -> Tensor:
    """Kernel version of the power + mel projection of :func:`augcl.mel._spectrum_mel`: complex ``(B, K, F)`` on the CPU
    -> mel energies ``(B, M, K)``, summing only the bins each band covers (``sparse``: :func:`sparse_filterbank`);
    written into ``out`` (contiguous) if given."""
    _follow_torch_threads()
    from . import mel_cpu

    res = mel_cpu.run(spec.contiguous().numpy(), sparse, power, None if out is None else out.numpy())
    return out if out is not None else torch.from_numpy(res)


def fused_mel(n_fft: int, dtype: torch.dtype) -> bool:
    """Whether :func:`mel_at` runs for frames of ``n_fft`` samples in ``dtype``: float32, and an ``n_fft`` whose half
    factors into 2, 3 and 5 (:func:`.fft_cpu.plan`)."""
    from . import fft_cpu

    return dtype == torch.float32 and fft_cpu.plan(n_fft) is not None


def mel_at(wave: Tensor, first: Tensor, window: Tensor, n_fft: int, sparse: tuple, power: float,
           limit: Optional[Tensor] = None, out: Optional[Tensor] = None, log: Optional[tuple] = None) -> Tensor:
    """The mel energies ``(B, M, K)`` of the windowed frames ``wave[b, first[b, k] + i] * window[i]`` (zeros outside
    ``[0, min(T, limit[b]))``, zero-padded to ``n_fft``): framing, real FFT, power and mel projection in one CPU kernel
    (:func:`.fft_cpu.mel_at`), nothing of the frames' or the spectrum's size written. The reference:
    :func:`augcl.core._gather_windows` times the window, then :func:`augcl.mel._mel_windowed`. float32 ``wave``
    ``(B, T)`` where :func:`fused_mel`; ``out`` (contiguous float32 ``(B, M, K)``): where to write them. ``log``
    ``(log_eps, log_mode)``: their log instead, as :func:`augcl.functional.log_of_mel` (without ``log_gain``)."""
    _follow_torch_threads()
    from . import fft_cpu

    B, T = wave.shape
    lim = torch.full((B,), T, dtype=torch.long) if limit is None else limit.clamp_max(T)
    res = fft_cpu.run(_np(_rows_in_place(wave)), _np(first, torch.long), _np(lim, torch.long),
                      _np(window, torch.float32), n_fft, sparse, power, None if out is None else out.numpy(), log)
    return out if out is not None else torch.from_numpy(res)


def _rows_in_place(wave: Tensor) -> Tensor:
    """A float32 ``(B, T)`` view whose rows are contiguous but lie further apart (``full[:, :T]`` of the RIR's padded
    inverse FFT): the ``(B, stride)`` rows of storage it starts, so that a kernel reads it in place, not through a
    contiguous copy. The caller must keep the kernel to the first ``T`` samples of each row (a limit of at most
    ``T``: the kernels read nothing at or past it). Any other tensor is returned as it is."""
    if wave.ndim != 2 or wave.dtype != torch.float32 or wave.is_contiguous() or wave.stride(1) != 1:
        return wave
    B, stride = wave.shape[0], wave.stride(0)
    if stride < wave.shape[1] or wave.storage_offset() + B * stride > wave.untyped_storage().nbytes() // 4:
        return wave
    return wave.as_strided((B, stride), (stride, 1))


def log_mel_(mel: Tensor, log_eps: float, log_mode: str) -> Tensor:
    """In place on contiguous float32 CPU ``mel`` ``(B, ...)``: ``log(mel + log_eps)`` (``log_mode="offset"``) or
    ``log(max(mel, log_eps))`` (``"clamp"``), the log of the fused log-mel (:func:`.fft_cpu.log_inplace`: within 1 ulp
    of the exact log), parallel over rows; returns ``mel``. The reference:
    :func:`augcl.functional.log_of_mel` (without ``log_gain``)."""
    _follow_torch_threads()
    from . import fft_cpu

    fft_cpu.log_rows(mel.detach().numpy().reshape(mel.shape[0], -1), fft_cpu.LOG_MODES[log_mode], np.float32(log_eps))
    return mel


def white_noise(seed: Tensor, length: int) -> Tensor:
    """Kernel version of :func:`augcl.noise.white_noise` on the CPU: the same integers and uniforms, ``erfinv`` to
    2e-6."""
    _follow_torch_threads()
    from . import noise_cpu

    return torch.from_numpy(noise_cpu.run(seed.to(torch.long).contiguous().numpy(), length))


def _follow_torch_threads() -> int:
    """Run the CPU kernels on as many threads as torch's intra-op pool (``torch.set_num_threads``, the trainer's
    ``--threads``): one setting for the whole pipeline. Numba's count is per calling thread and cheap to set.

    The first call starts Numba's thread pool; with its OpenMP layer that resets the process's OpenMP thread count,
    which torch shares (torch.get_num_threads() went from 1 to 2 on this machine: a run's convolutions then used
    another thread count than the user set, and two runs in one process differed), so torch's count is put back.
    Returns the kernels' thread count."""
    import numba

    n_torch = torch.get_num_threads()
    current = numba.get_num_threads()  # starts the pool on the first call
    if torch.get_num_threads() != n_torch:
        torch.set_num_threads(n_torch)
    n = min(n_torch, numba.config.NUMBA_NUM_THREADS)
    if current != n:
        numba.set_num_threads(n)
    return n


def _np(t: Tensor, dtype=None):
    t = t.detach() if dtype is None else t.detach().to(dtype)
    return t.contiguous().numpy()


def frames_at(wave: Tensor, first: Tensor, window: Tensor, limit: Optional[Tensor] = None) -> Tensor:
    """Windowed frames ``(B, K, W)``: ``wave[b, first[b, k] + i] * window[i]``, zeros outside ``[0,
    min(T, limit[b]))`` (:func:`.frames_cpu.windows`; the reference: :func:`augcl.core._gather_windows`, then the
    window product). CPU, float32/float64 ``wave`` ``(B, T)``."""
    _follow_torch_threads()
    from . import frames_cpu

    B, T = wave.shape
    K, W = first.shape[1], window.shape[-1]
    out = torch.empty(B, K, W, dtype=wave.dtype)
    lim = torch.full((B,), T, dtype=torch.long) if limit is None else limit
    frames_cpu.windows(_np(wave), _np(first, torch.long), _np(lim, torch.long), _np(window, wave.dtype), out.numpy())
    return out


def noisy_frames(wave: Tensor, start: Tensor, frames: int, hop_length: int, window: Tensor, seed: Tensor,
                 snr_db: Tensor, applied: Tensor, limit: Optional[Tensor] = None) -> Tensor:
    """The windowed frames ``(B, frames, W)`` of the segments ``wave[b, start[b]:]`` plus white noise of
    :func:`augcl.noise.white_noise` at ``snr_db`` where ``applied`` (:func:`.frames_cpu.noisy_frames`; the reference:
    :func:`augcl.segment.crop_segments`, :meth:`augcl.noise.AddNoise.add`, the frames of
    :func:`augcl.mel.log_mel`). CPU, float32 ``wave`` ``(B, T)``."""
    _follow_torch_threads()
    from . import frames_cpu

    B, T = wave.shape
    out = torch.empty(B, frames, window.shape[-1], dtype=torch.float32)
    lim = torch.full((B,), T, dtype=torch.long) if limit is None else limit
    frames_cpu.noisy_frames(_np(wave, torch.float32), _np(start, torch.long), _np(lim, torch.long),
                            _np(seed, torch.long).view(np.uint64), _np(snr_db, torch.float64), _np(applied, torch.bool),
                            _np(window, torch.float32), hop_length, out.numpy())
    return out


def noisy_segments(wave: Tensor, start: Tensor, length: int, seed: Tensor, snr_db: Tensor, applied: Tensor,
                   limit: Optional[Tensor] = None) -> Tensor:
    """The segments ``(B, length)`` ``wave[b, start[b]:]`` plus white noise of :func:`augcl.noise.white_noise` at
    ``snr_db`` where ``applied`` (:func:`.frames_cpu.noisy_segments`; the reference: :func:`augcl.segment.crop_segments`,
    :meth:`augcl.noise.AddNoise.add`). CPU, float32 ``wave`` ``(B, T)``."""
    _follow_torch_threads()
    from . import frames_cpu

    B, T = wave.shape
    out = torch.empty(B, length, dtype=torch.float32)
    lim = torch.full((B,), T, dtype=torch.long) if limit is None else limit
    frames_cpu.noisy_segments(_np(wave, torch.float32), _np(start, torch.long), _np(lim, torch.long),
                              _np(seed, torch.long).view(np.uint64), _np(snr_db, torch.float64),
                              _np(applied, torch.bool), out.numpy())
    return out


def noisy_mel(wave: Tensor, start: Tensor, frames: int, hop_length: int, window: Tensor, seed: Tensor, snr_db: Tensor,
              applied: Tensor, n_fft: int, sparse: tuple, power: float, limit: Optional[Tensor] = None,
              out: Optional[Tensor] = None, log: Optional[tuple] = None) -> Tensor:
    """The mel energies ``(B, M, frames)`` (``log`` ``(log_eps, log_mode)``: their log) of :func:`noisy_segments`'
    segments of ``(frames - 1) * hop_length + len(window)`` samples, framed at ``hop_length``, in one CPU kernel
    (:func:`.fft_cpu.noisy_mel`): each segment is made in the cache and goes straight to the fused log-mel; the same
    numbers as :func:`noisy_segments` then :func:`mel_at`. CPU, float32 ``wave`` ``(B, T)``, where :func:`fused_mel`;
    ``out`` (contiguous float32 ``(B, M, frames)``): where to write them."""
    _follow_torch_threads()
    from . import fft_cpu

    B, T = wave.shape
    lim = torch.full((B,), T, dtype=torch.long) if limit is None else limit
    res = fft_cpu.run_noisy(_np(wave, torch.float32), _np(start, torch.long), _np(lim, torch.long),
                            _np(seed, torch.long).view(np.uint64), _np(snr_db, torch.float64), _np(applied, torch.bool),
                            hop_length, _np(window, torch.float32), n_fft, sparse, power, frames,
                            None if out is None else out.numpy(), log)
    return out if out is not None else torch.from_numpy(res)


def row_norms(wave: Tensor) -> Tensor:
    """``torch.linalg.vector_norm(wave, dim=-1)`` of float32 ``(B, T)`` CPU clips in one parallel pass
    (:func:`.rows_cpu.row_norms`: float64 sums, so within float32 rounding of torch's)."""
    _follow_torch_threads()
    from . import rows_cpu

    out = np.empty(wave.shape[0], np.float64)
    rows_cpu.row_norms(_np(wave), out)
    return torch.from_numpy(out).to(torch.float32)


def mul_rows_(spec: Tensor, table: Tensor, index: Tensor) -> Tensor:
    """``spec.mul_(table[index])`` without the gathered copy, for contiguous complex CPU ``spec`` ``(B, F)`` and
    ``table`` ``(N, F)`` of one dtype, ``index`` ``(B,)`` in ``[0, N)`` (:func:`.rows_cpu.mul_rows`; each part rounded
    once: within an ulp of torch's product). Returns ``spec``."""
    _follow_torch_threads()
    from . import rows_cpu

    if spec.ndim != 2 or table.ndim != 2 or spec.shape[1] != table.shape[1] or spec.dtype != table.dtype:
        raise ValueError(f"mul_rows_ needs spec (B, F) and table (N, F) of one dtype, got {tuple(spec.shape)} "
                         f"{spec.dtype} and {tuple(table.shape)} {table.dtype}")
    if not spec.is_contiguous():
        raise ValueError("mul_rows_ writes spec in place: it must be contiguous")
    rows_cpu.mul_rows(spec.numpy(), _np(table), _np(index, torch.long))
    return spec


def fill_masks(spec: Tensor, params: dict, fill: Tensor) -> Tensor:
    """SpecAugment's masks (``params``: :meth:`augcl.masks.SpecAugment.sample`'s) written into contiguous CPU ``spec``
    ``(B, ..., F, K)`` in place, the masked cells set to ``fill`` ``(B,)`` (:func:`.rows_cpu.fill_masks`); returns
    ``spec``. The same values as :func:`augcl.masks.mask_along_axis` on both axes."""
    _follow_torch_threads()
    from . import rows_cpu

    B, F, K = spec.shape[0], spec.shape[-2], spec.shape[-1]
    rows_cpu.fill_masks(spec.numpy().reshape(B, -1, F, K), _np(params["time_mask_start"], torch.long),
                        _np(params["time_mask_width"], torch.long), _np(params["freq_mask_start"], torch.long),
                        _np(params["freq_mask_width"], torch.long), _np(fill, spec.dtype))
    return spec


#: frames of one chunk of the CPU vocoder: its spectra (4 x 2048 x 257 complex64, 17 MB) stay in the caches. 1024,
#: 1536 and 2048 give `all` within 1 ms of each other (docs/benchmarks/vocoder_chunks.md: ``python -m
#: benchmarks.throughput --presets all --vocoder-chunks 1024 1536 2048``)
VOCODER_CHUNK_FRAMES = 2048


def time_stretch_segment(wave: Tensor, rate: Tensor, start: Tensor, length: int, *, n_fft: int = 512,
                         hop_length: int = 128, max_rate: Optional[float] = None,
                         rows: Optional[Tensor] = None, lengths: Optional[Tensor] = None,
                         out_lengths: Optional[Tensor] = None) -> Tensor:
    """:func:`augcl.functional.time_stretch_segment` with the phase step in a kernel (same arguments, same result
    to float32 rounding). float64 input, or a device without a kernel, runs the reference.

    On the CPU the whole vocoder runs chunk by chunk (:func:`_time_stretch_cpu`); ``out_lengths`` ``(B,)``: samples of
    each output row that are needed (the rest may be anything: the caller zeroes it), so frames past them are skipped.
    """
    if wave.dtype == torch.float64 or not available(wave.device):
        return AF.time_stretch_segment(wave, rate, start, length, n_fft=n_fft, hop_length=hop_length,
                                       max_rate=max_rate, rows=rows, lengths=lengths)
    if wave.device.type == "cpu":
        return _time_stretch_cpu(wave, rate, start, length, n_fft, hop_length, max_rate, rows, lengths, out_lengths)
    spec0, spec1 = AF._vocoder_analysis(wave, rate, start, length, n_fft, hop_length, max_rate, rows, lengths)
    return AF._vocoder_synthesis(vocoder_phase(spec0, spec1, n_fft, hop_length), length, n_fft, hop_length)


@functools.lru_cache(maxsize=16)
def _synthesis_tables(n_fft: int, hop: int, n_frames: int) -> tuple:
    """The Hann window and the reciprocal of its squared overlap-add over ``n_frames`` frames (float32)."""
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    env = AF._overlap_add((window ** 2).expand(1, n_frames, n_fft), hop)[0]
    inv = torch.where(env > 0, 1.0 / env, torch.zeros_like(env))
    return window.float().numpy(), inv.float().numpy()


def crop_and_stretch(wave: Tensor, rate: Tensor, applied: Tensor, start: Tensor, length: int, *, n_fft: int = 512,
                     hop_length: int = 128, max_rate: Optional[float] = None, lengths: Optional[Tensor] = None,
                     out_lengths: Optional[Tensor] = None) -> Tensor:
    """``(B, length)``: row ``b`` is :func:`time_stretch_segment` of ``wave[b]`` where ``applied[b]``, else its crop
    ``wave[b, start[b] : start[b] + length]`` (:func:`augcl.segment.crop_segments`), both into one new tensor on the
    CPU: the unstretched rows are copied in by :func:`.frames_cpu.crop_rows`, the vocoder's overlap-add writes the
    stretched ones (no crop of every row, copy and overwrite). float32 CPU ``wave`` ``(B, T)``; ``lengths``,
    ``out_lengths`` ``(B,)`` as there (``lengths`` masks both kinds of row)."""
    _follow_torch_threads()
    from . import frames_cpu

    x = wave.detach().contiguous()
    B, T = x.shape
    out = torch.empty(B, length, dtype=torch.float32)
    start = start.to(torch.long)
    limit = torch.full((B,), T, dtype=torch.long) if lengths is None else lengths.to(torch.long)
    rows, keep = applied.nonzero().flatten(), (~applied).nonzero().flatten()  # host-side selections: free on a CPU
    if len(keep):
        frames_cpu.crop_rows(x.numpy(), _np(keep), _np(start[keep]), _np(limit[keep]), out.numpy())
    if len(rows):
        _time_stretch_cpu(x, rate[rows], start[rows], length, n_fft, hop_length, max_rate, rows, limit[rows],
                          None if out_lengths is None else out_lengths[rows], out=out)
    return out


def _time_stretch_cpu(wave: Tensor, rate: Tensor, start: Tensor, length: int, n_fft: int, hop: int,
                      max_rate: Optional[float], rows: Optional[Tensor], lengths: Optional[Tensor],
                      out_lengths: Optional[Tensor], out: Optional[Tensor] = None) -> Tensor:
    """The vocoder on the CPU in chunks of about :data:`VOCODER_CHUNK_FRAMES` frames, each one's frames, spectra and
    synthesis in the caches: windowed analysis frames (Numba), two real FFTs (torch), the phase kernel, the inverse
    FFT (torch) and the overlap-add (Numba). Rows are grouped by the frames their ``out_lengths`` need, so a chunk
    computes only as many frames as its longest row needs (same arithmetic as the reference, frame by frame); without
    ``out_lengths`` a row needs the frames that reach its ``length`` samples (the reference's last frames start past
    them: 3 of 131 for n_fft 512, hop 128 and the presets' 15,600 samples). The analysis frames of every chunk go into
    one buffer, allocated once.
    ``out`` (float32 ``(R, length)``, contiguous; with ``rows``): where to write the output, row ``rows[i]`` for the
    ``i``-th rate (returned); default: a new ``(len(rate), length)``."""
    threads = _follow_torch_threads()
    from . import frames_cpu, vocoder_cpu

    x = wave.detach().to(torch.float32).contiguous()
    B = rate.shape[0]
    T = x.shape[-1]
    rate = rate.to(torch.float64)
    if max_rate is not None:
        AF._check_rate_bound(rate, max_rate)
    pad = n_fft // hop
    n_frames = -(-length // hop) + 2 * pad + 1
    d = max(n_fft // 8, 1)
    offset = pad * hop + n_fft // 2  # where the segment's first sample lies in the overlap-add
    first = AF.stretched_starts(rate, start.to(torch.long) - pad * hop - n_fft // 2, n_frames, hop, n_fft // 2)
    # frame k covers overlap-add samples [k * hop, k * hop + n_fft): a row needs the frames that start before its last
    # kept sample (the later ones add nothing to it, and the phase scan runs forward)
    kept = torch.full((B,), length, dtype=torch.long) if out_lengths is None else out_lengths.to(torch.long)
    need = (-(-(offset + kept) // hop)).clamp(1, n_frames)
    order = torch.argsort(need, stable=True)
    src_rows = torch.arange(B) if rows is None else rows.to(torch.long)
    limit = torch.full((B,), T, dtype=torch.long) if lengths is None else lengths.to(torch.long)
    window, inv_env = _synthesis_tables(n_fft, hop, n_frames)
    if out is None:
        out, dst_rows = torch.empty(B, length, dtype=torch.float32), torch.arange(B)
    else:
        dst_rows = src_rows
    if B == 0:
        return out
    xn, outn = x.numpy(), out.numpy()
    most = int(need.max())
    # rows a chunk takes (a host-side split: free on a CPU), a multiple of the kernels' threads where more than one
    # fits: the Numba stages split a chunk's rows over the threads, and 3 rows on 2 threads leave one idle a third
    per_chunk = max(1, VOCODER_CHUNK_FRAMES // most)
    if per_chunk > threads:
        per_chunk -= per_chunk % threads
    # every chunk's two analysis frames in one buffer (contiguous views of its start): allocated and mapped once, not
    # once a chunk
    frames = torch.empty(2 * min(per_chunk, B) * most * n_fft)
    for idx in order.split(per_chunk):
        k_max = int(need[idx[-1]])  # rows sorted by need: the chunk's last needs the most
        f0, f1 = frames[:2 * len(idx) * k_max * n_fft].view(2, len(idx), k_max, n_fft)
        frames_cpu.analysis_frames(xn, _np(src_rows[idx]), _np(first[idx, :k_max]), _np(limit[idx]), window, d,
                                   f0.numpy(), f1.numpy())
        spec = vocoder_cpu.run(torch.fft.rfft(f0).numpy(), torch.fft.rfft(f1).numpy(), n_fft, hop)
        synth = torch.fft.irfft(torch.from_numpy(spec), n=n_fft)
        frames_cpu.overlap_add(synth.numpy(), window, inv_env, hop, offset, _np(dst_rows[idx]), outn)
    return out
