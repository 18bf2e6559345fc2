"""augcl: fast, batched audio augmentation for contrastive self-supervised learning.

``from augcl import PairAugmenter`` is the entry point; :mod:`augcl.functional` holds the pure reference ops,
:mod:`augcl.transforms` one module per block, :mod:`augcl.banks` the RIR and noise banks.
"""
from . import functional
from .banks import NoiseBank, RIRBank, RoomSimConfig
from .pair import PRESETS, BranchConfig, Pair, PairAugmenter, PairConfig
from .transforms import GainConfig, MaskConfig, MelConfig, NoiseConfig, RandomGain, RIRConfig, StretchConfig

__all__ = [
    "PairAugmenter", "Pair", "PairConfig", "BranchConfig", "PRESETS",
    "MelConfig", "StretchConfig", "NoiseConfig", "RIRConfig", "MaskConfig", "GainConfig", "RandomGain", "RoomSimConfig",
    "RIRBank", "NoiseBank", "functional",
]
__version__ = "0.1.0"
