"""augcl: fast, batched audio augmentation for contrastive self-supervised learning.

``from augcl import PairAugmenter`` is the entry point; :mod:`augcl.functional` holds the pure reference ops,
:mod:`augcl.transforms` one module per block (usable alone, in any pipeline), :mod:`augcl.banks` the RIR and noise banks.
"""
from . import functional, transforms
from .banks import NoiseBank, RIRBank, RoomSimConfig
from .pair import PRESETS, BranchConfig, Pair, PairAugmenter, PairConfig
from .transforms import (AddNoise, ApplyImpulseResponse, Gain, GainConfig, LogMel, MaskConfig, MelConfig, NoiseConfig,
                         RandomSegment, RIRConfig, SpecAugment, StretchConfig, TimeStretch)

__all__ = [
    "PairAugmenter", "Pair", "PairConfig", "BranchConfig", "PRESETS",
    "TimeStretch", "ApplyImpulseResponse", "AddNoise", "Gain", "RandomSegment", "SpecAugment", "LogMel",
    "MelConfig", "StretchConfig", "NoiseConfig", "RIRConfig", "MaskConfig", "GainConfig", "RoomSimConfig",
    "RIRBank", "NoiseBank", "functional", "transforms",
]
__version__ = "0.1.0"
