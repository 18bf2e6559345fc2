"""The paper's network: EfficientNet-B0 encoder f, projection g, bilinear similarity.

h = f(x): torchvision EfficientNet-B0 (random init), stem taking 1 channel (a log-mel), global pooling: (B, 1280).
z = g(h): Linear(1280 -> 512), LayerNorm, tanh. That is COLA's code (``cola/network.py``: Dense, then
LayerNormalization and tanh when the similarity is bilinear). The LayerNorm matters: without it a linear layer
followed by tanh saturates early in training and the bilinear logits stop moving.
s(z, z') = z^T W z' / sqrt(d) with W learned (d x d, d = 512), W initialised to the identity.

The bilinear similarity's parametrisation is ours, not the paper's; the set of functions is the same (W/sqrt(d) is
just another W). COLA's code starts from W ~ N(0, 0.05^2) with no scale (``bilinear_init="cola"``). Then the
initial logits have a std of about 10, and one Adam step at lr 1e-3 moves all 262,144 entries of W coherently,
so the logits jump by tens. Measured on one fixed batch of 32 pairs over 15 Adam steps: with COLA's start the
loss went 15.9 -> 120 -> 11.9 and retrieval stayed at chance; with the identity start and the 1/sqrt(d) scale it
went 3.9 -> 1.0 and retrieval reached 69 %, as fast as a cosine similarity. The scale slows W's updates in logit
space by sqrt(d), and the identity start makes s a scaled dot product until W has learned something better.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from . import common


ENCODERS = ("efficientnet_b0", "small")
POOLINGS = ("avg", "max")              # the encoders' global pooling: the paper's, COLA's code's
BILINEAR_INITS = ("identity", "cola")  # Bilinear's start (module docstring)


def _check_input(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"x must be (B, 1, n_mels, frames) log-mels, got shape {tuple(x.shape)}")


class Encoder(nn.Module):
    """f: log-mel ``(B, 1, n_mels, frames)`` -> h ``(B, 1280)``; ``pooling`` "avg" (paper) or "max" (COLA)."""

    out_dim = 1280

    def __init__(self, pooling: str = "avg"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        import torchvision  # here, not at the top: importing it costs seconds that a small-encoder run need not pay

        features = torchvision.models.efficientnet_b0(weights=None).features
        stem = features[0][0]
        features[0][0] = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
        nn.init.kaiming_normal_(features[0][0].weight, mode="fan_out")  # torchvision's init for its convs
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1) if pooling == "avg" else nn.AdaptiveMaxPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x)
        return self.pool(self.features(x)).flatten(1)


class SmallEncoder(nn.Module):
    """A small CNN f for CPU studies: a stride-2 3x3 conv stem (16 channels), three 3x3 conv -> BatchNorm -> ReLU
    -> 2x2 max-pool blocks (32, 64, 128 channels), a 1x1 conv to 256 channels, global pooling: h ``(B, 256)``.

    0.13 M parameters against EfficientNet-B0's 4.0 M; ``python -m benchmarks.train --encoder small`` measures its
    step. Not the paper's encoder: it is for seeds-and-thousands-of-steps ablations on a CPU.
    """

    out_dim = 256

    def __init__(self, pooling: str = "avg", channels: tuple = (16, 32, 64, 128)):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        layers = [nn.Conv2d(1, channels[0], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels[0]),
                  nn.ReLU(inplace=True)]
        for c_in, c in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
        layers += [nn.Conv2d(channels[-1], self.out_dim, 1, bias=False), nn.BatchNorm2d(self.out_dim),
                   nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if pooling == "avg" else nn.AdaptiveMaxPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x)
        return self.pool(self.features(x)).flatten(1)


def build_encoder(name: str = "efficientnet_b0", pooling: str = "avg") -> nn.Module:
    """The encoder f by name: ``"efficientnet_b0"`` (the paper's) or ``"small"`` (:class:`SmallEncoder`)."""
    if name == "efficientnet_b0":
        return Encoder(pooling)
    if name == "small":
        return SmallEncoder(pooling)
    raise ValueError(f"encoder must be one of {ENCODERS}, got {name!r}")


class Projection(nn.Module):
    """g: h ``(B, 1280)`` -> z ``(B, 512)`` in (-1, 1)."""

    def __init__(self, in_dim: int = 1280, dim: int = 512):
        super().__init__()
        self.linear = nn.Linear(in_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(self.norm(self.linear(h)))


class Bilinear(nn.Module):
    """s(a, p) = scale * a W p^T for every pair: anchors ``(B, d)``, positives ``(N, d)`` -> logits ``(B, N)``.

    ``init="identity"``: W = I, scale 1/sqrt(d) (default, see the module docstring); ``init="cola"``: W ~ N(0, 0.05^2),
    scale 1, as COLA's code.
    """

    def __init__(self, dim: int = 512, init: str = "identity"):
        super().__init__()
        if init == "identity":
            self.weight, self.scale = nn.Parameter(torch.eye(dim)), 1.0 / math.sqrt(dim)
        elif init == "cola":
            self.weight, self.scale = nn.Parameter(torch.randn(dim, dim) * 0.05), 1.0
        else:
            raise ValueError(f"init must be one of {BILINEAR_INITS}, got {init!r}")

    def forward(self, anchor: Tensor, positive: Tensor) -> Tensor:
        """Logits in float32, under autocast too (bfloat16 keeps 8 mantissa bits: logits off by several 1e-3 at init
        with d = 512, noise in every logit the loss sees); the inputs may be bfloat16."""
        device = anchor.device.type
        with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext():
            return (anchor.float() @ self.weight.float() @ positive.float().T) * self.scale


class ContrastiveModel(nn.Module):
    """f, g and s together. ``embed(x)`` is z; the trainer computes logits from the two branches' z."""

    def __init__(self, dim: int = 512, pooling: str = "avg", bilinear_init: str = "identity",
                 encoder: str = "efficientnet_b0"):
        super().__init__()
        self.encoder = build_encoder(encoder, pooling)
        self.projection = Projection(self.encoder.out_dim, dim)
        self.similarity = Bilinear(dim, bilinear_init)

    def embed(self, x: Tensor) -> Tensor:
        return self.projection(self.encoder(x))

    def forward(self, anchor: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
        """Both branches through f and g in one batch (one set of BatchNorm statistics, as COLA does)."""
        z = self.embed(torch.cat([anchor, positive]))
        return z[: anchor.shape[0]], z[anchor.shape[0]:]


class Classifier(nn.Module):
    """Downstream: the encoder f and a linear layer on h (linear probe, fine-tuning, supervised baseline)."""

    def __init__(self, encoder: nn.Module, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def load_encoder(checkpoint: str) -> tuple[nn.Module, str, str]:
    """The pretrained encoder f (the one the checkpoint names), its preset (mel front end) and its level
    normalisation (``"none"`` for checkpoints from before ``normalize`` existed)."""
    ckpt = common.read_checkpoint(checkpoint, "--checkpoint")
    cfg = ckpt["config"]
    model = ContrastiveModel(cfg["dim"], cfg["pooling"], cfg.get("bilinear_init", "identity"),
                             cfg.get("encoder", "efficientnet_b0"))
    model.load_state_dict(ckpt["model"])
    return model.encoder, cfg["preset"], cfg.get("normalize", "none")
