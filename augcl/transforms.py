"""augcl's transforms: one ``nn.Module`` per block, each beside its functional op in the file of its idea.

The public waveform transforms (:class:`TimeStretch`, :class:`ApplyImpulseResponse`, :class:`AddNoise`,
:class:`Gain`, :class:`RandomSegment`) and :class:`SpecAugment` share :class:`~augcl.core.Transform`'s call:
``t(samples, sample_rate=None, *, lengths=None, generator=None, params=None)`` on ``(B, C, T)`` or ``(B, T)``, with
``p`` and ``mode`` as torch-audiomentations has them; they draw every parameter of a batch at once from an explicit
generator and return them with ``output_type="dict"``. :class:`LogMel` is the deterministic front end.

Every transform separates *drawing* from *applying*: ``sample(batch, length, generator, device, lengths)`` returns a
dict of per-example tensors on the batch's device; ``transform``/``apply`` compute with them (vectorized, no host
sync). PairAugmenter calls those two directly; the frozen configs hold the paper's values as defaults.
"""
from __future__ import annotations

from .core import ObjectDict, Params, Transform
from .gain import Gain, GainConfig
from .masks import MaskConfig, SpecAugment
from .mel import LogMel, MelConfig
from .noise import AddNoise, NoiseConfig
from .room import ApplyImpulseResponse, RIRConfig
from .segment import RandomSegment
from .stretch import StretchConfig, TimeStretch

__all__ = [
    "Transform", "ObjectDict", "Params",
    "TimeStretch", "ApplyImpulseResponse", "AddNoise", "Gain", "RandomSegment", "SpecAugment", "LogMel",
    "StretchConfig", "RIRConfig", "NoiseConfig", "GainConfig", "MaskConfig", "MelConfig",
]
