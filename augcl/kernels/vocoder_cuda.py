"""The phase-locked vocoder's phase step as a CUDA kernel (numba-cuda): one thread block per example.

The same computation as :mod:`augcl.kernels.vocoder_cpu` and :func:`augcl.functional._vocoder_phase` (the
reference). A block walks its example's frames in order (the phase accumulation is a scan over frames); its
threads own bins (``f = threadIdx.x + j * blockDim.x``) and keep each bin's synthesis phase and previous
instantaneous frequency in shared memory; per frame, a shared-memory max reduction gives the peak floor and
each thread finds its bins' nearest peaks by scanning the shared peak flags, then rotates each bin by its peak's
phase (sin/cos per bin: a GPU has the arithmetic to spare, and sharing per-peak rotors would cost a sync).

One kernel per real type (:data:`KERNELS`): the float32 kernel does all its arithmetic in float32 (no float64
instruction in its PTX), as the float32 reference does; the float64 kernel in float64. Unlike the reference,
which sums the phase advances unwrapped (float32 loses ~1e-5 rad over a second of frames), the synthesis phase
is kept wrapped to ``[-pi, pi)`` (2 pi subtracted in two parts, so wrapping adds no error of its own).

:func:`run` reads and writes torch's memory in place: ``torch.view_as_real`` of the complex spectra, passed
through ``__cuda_array_interface__`` without a copy or a host sync, and the output is the only allocation. It
launches on the tensors' device and on torch's current stream there (``cuda.external_stream``), so it orders
with the surrounding torch ops like any torch op. The kernels compile on first use (a few seconds each);
:func:`compile_for_device` compiles the float32 one ahead, which is how :func:`augcl.kernels.available` checks
that it builds here. numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) runs the same kernels on numpy arrays
on the CPU, which is how the tests run them on machines without a GPU; ``numba.cuda.compile_ptx`` builds their
PTX there too (tests/test_kernels.py).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64, int32, int64

#: the largest ``n_fft // 2 + 1`` the kernel takes (shared memory is sized for it): ``n_fft <= 2048``
MAX_BINS = 1025
#: threads per block (a power of two, at most 256): one block per example, threads over bins
THREADS = 256
#: 2 pi minus its float64 rounding: with it, a subtraction of 2 pi in two steps is exact to float64 rounding
_TWO_PI_REST = 2.4492935982947064e-16


def _phase_lock_for(real):
    """The phase-lock kernel and its pure-Python function for ``real`` (numba's float32 or float64).

    Every constant is typed ``real`` and every integer converted before it meets a float, so that no arithmetic
    is promoted to float64 in the float32 kernel (numba types ``int64 * float32`` as float64). The two-argument
    ``max``/``min`` builtins are not used: some numba CUDA targets fail to type them (issue 13)."""
    exact = real == float64
    PI = real(math.pi)
    TWO_PI = real(2 * math.pi)
    TWO_PI_LO = real(2 * math.pi - float(TWO_PI) + (_TWO_PI_REST if exact else 0.0))
    INV_TWO_PI = real(0.5 / math.pi)
    ZERO, HALF, FLOOR = real(0.0), real(0.5), real(1e-6)

    @cuda.jit(device=True, inline="always")
    def wrap(x):
        """``torch.remainder(x + pi, 2 pi) - pi`` (the reference's ``_wrap``): fmod in float64, as torch; a floor
        in float32 (equal up to rounding, and fmodf is a loop on a GPU)."""
        y = x + PI
        if exact:
            m = math.fmod(y, TWO_PI)
        else:
            m = y - TWO_PI * real(math.floor(y * INV_TWO_PI))
            if m >= TWO_PI:
                m -= TWO_PI
        if m < ZERO:
            m += TWO_PI
        return m - PI

    @cuda.jit(device=True, inline="always")
    def angle(y, x):
        """``atan2(y, x)``, but 0 at ``x = y = 0`` whatever the zeros' signs (the reference's ``_angle``)."""
        if x == ZERO and y == ZERO:
            return ZERO
        return math.atan2(y, x)

    def phase_lock(spec0, spec1, n_fft, hop, out):
        """``spec0``, ``spec1``, ``out``: ``(B, K, F, 2)`` real views of complex spectra (``torch.view_as_real``);
        grid: ``B`` blocks of a power of two (<= 256) threads."""
        b = cuda.blockIdx.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        K = spec0.shape[1]
        nb = spec0.shape[2]
        d = n_fft // 8
        if d < 1:
            d = 1
        rd = real(d)
        w_bin = TWO_PI / real(n_fft)
        half_hop = real(hop) * HALF
        mag = cuda.shared.array(MAX_BINS, real)
        pha = cuda.shared.array(MAX_BINS, real)
        ph_s = cuda.shared.array(MAX_BINS, real)  # synthesis phase, wrapped to [-pi, pi)
        om_prev = cuda.shared.array(MAX_BINS, real)
        is_peak = cuda.shared.array(MAX_BINS, int32)
        red = cuda.shared.array(THREADS, real)
        for k in range(K):
            local = ZERO
            f = t
            while f < nb:
                x, y = spec0[b, k, f, 0], spec0[b, k, f, 1]
                m = math.hypot(x, y)  # as torch's abs: equal magnitudes (a flat spectrum) tie as in the reference
                mag[f] = m
                if m > local:
                    local = m
                pa = angle(y, x)
                pha[f] = pa
                w = w_bin * real(f)
                if f == 0 or 2 * f == n_fft:  # real bins (DC, Nyquist) advance at their bin frequency, as the reference
                    om = w
                else:
                    om = w + wrap(angle(spec1[b, k, f, 1], spec1[b, k, f, 0]) - pa - w * rd) / rd
                if k == 0:
                    ph_s[f] = pa
                else:
                    ps = ph_s[f] + wrap(half_hop * (om + om_prev[f]))  # in [-2 pi, 2 pi)
                    if ps >= PI:
                        ps = (ps - TWO_PI) - TWO_PI_LO
                    elif ps < -PI:
                        ps = (ps + TWO_PI) + TWO_PI_LO
                    ph_s[f] = ps
                om_prev[f] = om
                f += nt
            red[t] = local
            cuda.syncthreads()
            s = nt // 2
            while s > 0:
                if t < s and red[t + s] > red[t]:
                    red[t] = red[t + s]
                cuda.syncthreads()
                s //= 2
            floor = red[0] * FLOOR
            f = t
            while f < nb:
                m = mag[f]
                p = 1 if m > floor else 0
                lo = f - 2 if f >= 2 else 0
                hi = f + 3 if f + 3 < nb else nb
                for g in range(lo, hi):
                    if mag[g] > m:
                        p = 0
                is_peak[f] = p
                f += nt
            cuda.syncthreads()
            f = t
            while f < nb:
                left = f
                while left >= 0 and is_peak[left] == 0:
                    left -= 1
                right = f
                while right < nb and is_peak[right] == 0:
                    right += 1
                if left < 0 and right >= nb:
                    p = f
                elif left < 0 or (right < nb and right - f < f - left):
                    p = right
                else:
                    p = left
                th = ph_s[p] - pha[p]
                c, sn = math.cos(th), math.sin(th)
                x, y = spec0[b, k, f, 0], spec0[b, k, f, 1]
                out[b, k, f, 0] = x * c - y * sn
                out[b, k, f, 1] = x * sn + y * c
                f += nt
            cuda.syncthreads()  # the next frame overwrites the shared magnitudes and peaks

    return cuda.jit(phase_lock), phase_lock


_kernel32, phase_lock_float32 = _phase_lock_for(float32)
_kernel64, phase_lock_float64 = _phase_lock_for(float64)
#: the kernels by the spectra's real numpy dtype
KERNELS = {np.dtype(np.float32): _kernel32, np.dtype(np.float64): _kernel64}
#: ``(pure function, numba real type)`` of every CUDA kernel here, for ``numba.cuda.compile_ptx`` in the tests
SOURCES = {"phase_lock_float32": (phase_lock_float32, float32), "phase_lock_float64": (phase_lock_float64, float64)}


def signature(real):
    """The launch signature of the phase-lock kernel for ``real``: C-contiguous ``(B, K, F, 2)`` arrays, ints."""
    spectra = real[:, :, :, ::1]
    return (spectra, spectra, int64, int64, spectra)


def compile_for_device(index: int = 0) -> None:
    """Compile the float32 kernel for GPU ``index`` (what the first launch would do); raises what numba raises."""
    with cuda.gpus[index]:
        _kernel32.compile(signature(float32))


def _check(spec0, spec1, n_fft: int, threads: int) -> None:
    if threads < 1 or threads > THREADS or threads & (threads - 1):
        raise ValueError(f"threads must be a power of two in [1, {THREADS}], got {threads}")
    if spec0.ndim != 3 or tuple(spec0.shape) != tuple(spec1.shape):
        raise ValueError(f"spectra must be two (B, K, F) of one shape, got {tuple(spec0.shape)} and "
                         f"{tuple(spec1.shape)}")
    if spec0.dtype != spec1.dtype:
        raise TypeError(f"spectra of one dtype, got {spec0.dtype} and {spec1.dtype}")
    if spec0.shape[-1] > MAX_BINS:
        raise ValueError(f"the CUDA vocoder kernel takes n_fft <= {2 * (MAX_BINS - 1)}, got n_fft={n_fft}; "
                         "use backend='torch' for larger windows")
    if spec0.shape[-1] != n_fft // 2 + 1:
        raise ValueError(f"spectra of n_fft={n_fft} have {n_fft // 2 + 1} bins, got {spec0.shape[-1]}")


def run(spec0, spec1, n_fft: int, hop: int, threads: int = THREADS):
    """The synthesis spectra from complex64/complex128 ``(B, K, F)`` spectra: torch CUDA tensors (on their device
    and torch's current stream, no copy of contiguous spectra) or, in the simulator, numpy arrays.
    ``threads``: per block, a power of two <= 256 (the simulator runs each as a Python thread: tests use few)."""
    _check(spec0, spec1, n_fft, threads)
    if isinstance(spec0, np.ndarray):  # the simulator
        if spec0.dtype not in (np.complex64, np.complex128):
            raise TypeError(f"the CUDA kernel takes complex64 or complex128 spectra, got {spec0.dtype}")
        s0, s1 = np.ascontiguousarray(spec0), np.ascontiguousarray(spec1)
        out = np.empty_like(s0)
        real = [a.view(a.real.dtype).reshape(*a.shape, 2) for a in (s0, s1, out)]
        if s0.shape[0] and s0.shape[1]:
            KERNELS[real[0].dtype][s0.shape[0], threads](real[0], real[1], n_fft, hop, real[2])
        return out
    import torch

    if spec0.dtype not in (torch.complex64, torch.complex128):
        raise TypeError(f"the CUDA kernel takes complex64 or complex128 spectra, got {spec0.dtype}")
    dev = spec0.device
    if dev.type != "cuda" or spec1.device != dev:
        raise ValueError(f"the CUDA kernel takes spectra on one CUDA device, got {dev} and {spec1.device}")
    s0, s1 = spec0.contiguous(), spec1.contiguous()  # the analysis gives contiguous spectra: no copy
    out = torch.empty_like(s0)
    if s0.shape[0] == 0 or s0.shape[1] == 0:
        return out
    kernel = KERNELS[np.dtype(np.float32 if s0.dtype == torch.complex64 else np.float64)]
    with cuda.gpus[dev.index]:
        stream = cuda.external_stream(torch.cuda.current_stream(dev).cuda_stream)
        # sync=False: torch's stream orders the producers before this launch, no host sync needed
        args = [cuda.as_cuda_array(torch.view_as_real(a), sync=False) for a in (s0, s1, out)]
        kernel[s0.shape[0], threads, stream](args[0], args[1], n_fft, hop, args[2])
    return out
