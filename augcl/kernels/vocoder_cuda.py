"""The phase-locked vocoder's phase step as a CUDA kernel (numba.cuda): one thread block per example.

The same computation as :mod:`augcl.kernels.vocoder_cpu` and :func:`augcl.functional._vocoder_phase` (the
reference). A block walks its example's frames in order (the phase accumulation is a scan over frames); its
threads own bins (``f = threadIdx.x + j * blockDim.x``) and keep each bin's accumulated phase and previous
instantaneous frequency in shared memory; per frame, a shared-memory max reduction gives the peak floor and
each thread finds its bins' nearest peaks by scanning the shared magnitudes, then rotates each bin by its peak's
phase (sin/cos per bin: a GPU has the arithmetic to spare, and sharing per-peak rotors would cost a sync).

It is launched on torch's current CUDA stream (``cuda.external_stream``) on views of torch's own memory
(``__cuda_array_interface__``, no copy, no producer sync), so it orders with the surrounding torch ops without
a host sync. numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) runs the same kernel on the CPU, which is how
the tests check it on machines without a GPU.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64, int32

#: the largest ``n_fft // 2 + 1`` the kernel takes (shared memory is sized for it): ``n_fft <= 2048``
MAX_BINS = 1025
#: threads per block (a power of two, at most 256): one block per example, threads over bins
THREADS = 256


@cuda.jit(device=True, inline=True)
def _wrap(x):
    """``torch.remainder(x + pi, 2 pi) - pi`` as torch computes it (fmod, then shift)."""
    m = math.fmod(x + math.pi, 2.0 * math.pi)
    if m < 0:
        m += 2.0 * math.pi
    return m - math.pi


@cuda.jit
def phase_lock(re0, im0, re1, im1, n_fft, hop, out_re, out_im):
    """Inputs and outputs: float32 ``(B, K, F)`` real and imaginary parts; grid: ``B`` blocks of a power of two
    (<= 256) threads."""
    b = cuda.blockIdx.x
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    K = re0.shape[1]
    nb = re0.shape[2]
    d = max(n_fft // 8, 1)
    mag = cuda.shared.array(MAX_BINS, float32)
    pha = cuda.shared.array(MAX_BINS, float32)
    pa0 = cuda.shared.array(MAX_BINS, float32)
    om_prev = cuda.shared.array(MAX_BINS, float32)
    acc = cuda.shared.array(MAX_BINS, float64)
    is_peak = cuda.shared.array(MAX_BINS, int32)
    red = cuda.shared.array(THREADS, float32)
    for k in range(K):
        local = float32(0.0)
        f = t
        while f < nb:
            x, y = re0[b, k, f], im0[b, k, f]
            m = math.sqrt(x * x + y * y)
            mag[f] = m
            local = max(local, m)
            pa = math.atan2(y, x)
            pha[f] = pa
            w = 2.0 * math.pi * f / n_fft
            if f == 0 or 2 * f == n_fft:  # real bins (DC, Nyquist) advance at their bin frequency, as the reference
                om = w
            else:
                om = w + _wrap(math.atan2(im1[b, k, f], re1[b, k, f]) - pa - w * d) / d
            if k == 0:
                acc[f] = 0.0
                pa0[f] = pa
            else:
                acc[f] += _wrap(hop * 0.5 * (om + om_prev[f]))
            om_prev[f] = om
            f += nt
        red[t] = local
        cuda.syncthreads()
        s = nt // 2
        while s > 0:
            if t < s:
                red[t] = max(red[t], red[t + s])
            cuda.syncthreads()
            s //= 2
        floor = red[0] * 1e-6
        f = t
        while f < nb:
            m = mag[f]
            p = 1 if m > floor else 0
            for g in range(max(f - 2, 0), min(f + 3, nb)):
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
            th = pa0[p] + acc[p] - pha[p]
            c, sn = math.cos(th), math.sin(th)
            x, y = re0[b, k, f], im0[b, k, f]
            out_re[b, k, f] = x * c - y * sn
            out_im[b, k, f] = x * sn + y * c
            f += nt
        cuda.syncthreads()  # the next frame overwrites the shared magnitudes and peaks


def run(spec0, spec1, n_fft: int, hop: int, stream=None, threads: int = THREADS):
    """Launch on complex64 ``(B, K, F)`` spectra; torch CUDA tensors (zero-copy) or, in the simulator, numpy.
    ``threads``: per block, a power of two <= 256 (the simulator runs each as a Python thread: tests use few)."""
    if threads < 1 or threads > THREADS or threads & (threads - 1):
        raise ValueError(f"threads must be a power of two in [1, {THREADS}], got {threads}")
    nb = spec0.shape[-1]
    if nb > MAX_BINS:
        raise ValueError(f"the CUDA vocoder kernel takes n_fft <= {2 * (MAX_BINS - 1)}, got n_fft={n_fft}; "
                         "use backend='torch' for larger windows")
    if isinstance(spec0, np.ndarray):  # the simulator
        parts = [np.ascontiguousarray(p, dtype=np.float32) for p in (spec0.real, spec0.imag, spec1.real, spec1.imag)]
        out = np.empty(spec0.shape, np.complex64)
        o_re, o_im = np.empty(spec0.shape, np.float32), np.empty(spec0.shape, np.float32)
        phase_lock[spec0.shape[0], threads](*parts, n_fft, hop, o_re, o_im)
        out.real, out.imag = o_re, o_im
        return out
    import torch

    parts = [p.contiguous() for p in (spec0.real, spec0.imag, spec1.real, spec1.imag)]
    o_re, o_im = torch.empty_like(parts[0]), torch.empty_like(parts[0])
    stream = stream if stream is not None else cuda.external_stream(torch.cuda.current_stream(spec0.device).cuda_stream)
    views = [cuda.as_cuda_array(p, sync=False) for p in (*parts, o_re, o_im)]
    phase_lock[spec0.shape[0], threads, stream](*views[:4], n_fft, hop, *views[4:])
    return torch.complex(o_re, o_im)
