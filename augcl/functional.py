"""augcl's pure, batched torch ops: the reference every kernel is tested against.

Every op works on a batch ``(B, T)`` of mono clips and takes every random quantity as an argument (per-example
tensors of shape ``(B,)`` or ``(B, n)``); nothing here draws random numbers. The transforms (:mod:`augcl.transforms`)
draw the parameters and call these functions. This module is the import face; each op lives in the small file of
its idea, beside its module: :mod:`augcl.core` (devices, checks, dtypes), :mod:`augcl.segment`,
:mod:`augcl.vocoder`, :mod:`augcl.stretch`, :mod:`augcl.room`, :mod:`augcl.noise`, :mod:`augcl.gain`, :mod:`augcl.mel`, :mod:`augcl.masks`.

Conventions
-----------
* Waveforms are float tensors ``(B, T)``; :func:`as_batch` also accepts ``(B, 1, T)``.
* Computation runs in float32 (float64 stays float64; bfloat16/float16 are upcast, because FFTs need it);
  callers cast back.
* Sample positions are integer tensors (``torch.long``) in samples; rates and fractional positions are float64
  (float32 on a device without float64: :func:`position_dtype`).
* Devices: a few ops take a CPU-only branch where reading tensor values on the host is free (host-side row
  selection, ``unfold`` reads); every other device takes a branch that never reads device data on the host.
  :func:`cpu_branch` decides (the tests patch it to run the accelerator branches on a CPU).
"""
from __future__ import annotations

from .core import (NO_FLOAT64, _gather_samples, _gather_windows, as_batch, check_finite,
                   check_lengths, cpu_branch, pad_to_length, position_dtype, power_of_two_scale, valid_mask, work_dtype)
from .gain import LEVEL_TARGET_DB, gain, normalize_level
from .masks import freq_mask, mask_along_axis, time_mask
from .mel import _mel_windowed, log_mel, log_mel_frames, log_of_mel, mel_energy, mel_energy_frames, mel_filterbank
from .banks import gather_ring
from .noise import add_noise, colored_noise, noise_gain
from .room import fft_convolve
from .segment import crop_segments
from .stretch import time_stretch
from .vocoder import (_frames_at, _frames_in_region, _nearest_peak, _overlap_add, _vocoder_analysis, _vocoder_phase,
                      _vocoder_synthesis, stretched_frames, stretched_length, time_stretch_segment)

__all__ = [
    "as_batch",
    "cpu_branch",
    "position_dtype",
    "check_finite",
    "check_lengths",
    "valid_mask",
    "work_dtype",
    "pad_to_length",
    "power_of_two_scale",
    "crop_segments",
    "stretched_length",
    "time_stretch",
    "time_stretch_segment",
    "stretched_frames",
    "fft_convolve",
    "add_noise",
    "noise_gain",
    "gain",
    "normalize_level",
    "colored_noise",
    "gather_ring",
    "mel_filterbank",
    "log_mel",
    "log_mel_frames",
    "log_of_mel",
    "mel_energy",
    "mel_energy_frames",
    "mask_along_axis",
    "time_mask",
    "freq_mask",
]

#: private helpers re-exported for the kernels' and the tests' use (not part of the public API)
_PRIVATE = (NO_FLOAT64, LEVEL_TARGET_DB, _gather_samples, _gather_windows, _mel_windowed,
            _frames_at, _frames_in_region, _nearest_peak, _overlap_add, _vocoder_analysis, _vocoder_phase,
            _vocoder_synthesis)
