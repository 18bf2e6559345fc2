"""The HEAR 2021 common API over a pretraining checkpoint (https://hearbenchmark.com/hear-api.html).

    import trainer.hear as hear
    model = hear.load_model("outputs/pretrain/checkpoints/last.pt")     # a torch Module, on the CPU, eval mode
    model.to(device)                                                    # audio must then be on ``device`` too
    h, t = hear.get_timestamp_embeddings(audio, model)   # (n_sounds, n_timestamps, D) float32, (n_sounds, n_timestamps) ms
    s = hear.get_scene_embeddings(audio, model)          # (n_sounds, D) float32

``audio`` is ``(n_sounds, n_samples)`` float32 mono at ``model.sample_rate``, on the model's device; outputs are on
that device. The embedding is the encoder's pooled feature h (``D = encoder.out_dim``: 1280 for EfficientNet-B0, 256
for the small encoder), the feature the linear probe (``trainer.probe``) trains on, not the projection z that the
contrastive loss sees.

Front end, exactly the probe's: each sound's level is normalised over its whole ``n_samples`` (the checkpoint's
``normalize``: one gain per sound, rms to -20 dBFS or peak to -1 dBFS, a silent sound keeps gain 1), then windows of
``segment + 2 * context`` samples (96 log-mel frames = 0.95 s, plus the mel's ``n_fft // 2`` samples of context on
each side) go through :class:`trainer.windows.Windows` and the encoder in eval mode. Samples outside the sound read as
zeros: padding happens only at the sound's two edges, never between windows.

Timestamp embeddings: one window centred at each timestamp ``t_j = j * hop`` for ``j = 0 .. n_samples // hop`` (the
first at 0 ms, the last at or before the sound's end), ``hop = floor(hop_ms * sample_rate / 1000)`` samples (50 ms by
default: 800 samples at 16 kHz; the floor keeps the hop at or under ``hop_ms``). Timestamps are returned in ms as
float32; at 16 kHz they are exact multiples of 50 ms. A window centred at ``t`` covers ``t - segment // 2`` to
``t - segment // 2 + segment`` (plus context), so the first and last windows are half zeros.

Scene embeddings: the mean of h over the probe's tiling of the sound (:func:`trainer.windows.window_starts`:
``k = max(1, ceil(n_samples / segment))`` windows spread evenly over the sound, never past its end when it is at
least a window long), i.e. the mean of the very features the probe classifies. Not the mean of the timestamp
embeddings: those overlap 19-fold and half of the edge windows is padding.

Memory. Windows are cut from one zero-padded, level-normalised copy of the batch (``n_sounds * (n_samples +
segment // 2 + context + width)`` float32; views from ``Tensor.unfold``, no copy) and run through the encoder
``window_batch`` (default 256) at a time; only each batch's windows, log-mels and activations exist at once. Peak
memory is therefore about ``2 * audio + outputs + window_batch * (width + n_mels * frames) * 4 bytes + the encoder's
activations for window_batch windows``: for one 20-minute sound at 16 kHz that is 2 * 77 MB of audio, 24,001
timestamp embeddings (24.6 MB at D = 256, 123 MB at D = 1280), 16 MB of windows and 6 MB of log-mels per batch,
plus the activations: measured (tests/test_hear.py, ``test_twenty_minutes_stays_within_the_documented_memory``, small
encoder, CPU) both calls raise the peak RSS by 254 MB, about 140 MB of it one batch's STFT, log-mels and activations.

BatchNorm: the checkpoint's running statistics are used as they are. The probe re-estimates them on the downstream
training windows first (:func:`trainer.windows.recompute_batchnorm`); HEAR's API gives no training data at embedding
time, so after a short pretraining these embeddings can differ from the probe's features (see docs/training.md,
"HEAR API").
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from augcl.functional import LEVEL_TARGET_DB

from . import common
from .data import NORMALIZE
from .model import load_encoder
from .windows import Windows, window_starts

HEAR_SAMPLE_RATES = (16000, 22050, 32000, 44100, 48000)  # the rates HEAR's tasks are distributed at
DEFAULT_SAMPLE_RATE = 16000  # trainer.pack's default, for checkpoints whose store cannot be found
HOP_MS = 50.0
WINDOW_BATCH = 256


class HearModel(nn.Module):
    """A pretrained encoder with the probe's front end, and the attributes HEAR asks for: ``sample_rate``,
    ``scene_embedding_size``, ``timestamp_embedding_size`` (both ``encoder.out_dim``)."""

    def __init__(self, encoder: nn.Module, preset: str, normalize: str, sample_rate: int, hop_ms: float = HOP_MS,
                 window_batch: int = WINDOW_BATCH):
        super().__init__()
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        if not (isinstance(window_batch, int) and window_batch >= 1):
            raise ValueError(f"window_batch must be an int >= 1, got {window_batch!r}")
        hop = int(hop_ms * sample_rate // 1000)
        if not (hop >= 1 and hop_ms <= 50.0):
            raise ValueError(f"hop_ms must be in [{1000 / sample_rate:.4g}, 50] (HEAR asks for a hop of at most 50 ms "
                             f"and one sample is {1000 / sample_rate:.4g} ms), got {hop_ms!r}")
        self.encoder = encoder.eval()
        self.windows = Windows(preset, sample_rate)
        self.preset, self.normalize = preset, normalize
        self.sample_rate = int(sample_rate)
        self.scene_embedding_size = int(encoder.out_dim)
        self.timestamp_embedding_size = int(encoder.out_dim)
        self.hop_samples = hop
        self.hop_ms = 1000.0 * hop / sample_rate
        self.window_batch = window_batch

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def gains(self, audio: Tensor) -> Tensor:
        """``(n_sounds,)`` float32: the factor bringing each whole sound to the probe's level (1 for a silent one)."""
        if self.normalize == "none":
            return torch.ones(audio.shape[0], dtype=torch.float32, device=audio.device)
        # reductions without a temporary the size of the audio; float32 accumulation, as the probe's levels
        if self.normalize == "rms":
            level = torch.linalg.vector_norm(audio, 2, dim=1) / audio.shape[1] ** 0.5
        else:
            level = torch.maximum(audio.amax(1), -audio.amin(1))
        target = 10 ** (LEVEL_TARGET_DB[self.normalize] / 20)
        return torch.where(level > 1e-10, target / level.clamp_min(1e-10), torch.ones_like(level)).float()

    def padded(self, audio: Tensor) -> tuple[Tensor, int]:
        """The level-normalised batch with ``segment // 2 + context`` zeros before it and a window's width after,
        and that left pad: window ``[a, a + width)`` of the sound is ``padded[:, a + pad : a + pad + width]``."""
        left = self.windows.segment // 2 + self.windows.context
        padded = torch.nn.functional.pad(audio, (left, self.windows.width))
        return padded.mul_(self.gains(audio)[:, None]), left  # in place: one copy of the audio, not two

    def embed_windows(self, padded: Tensor, offsets: Tensor) -> Tensor:
        """h of the windows starting at ``offsets`` ``(k,)`` (into ``padded``) of every sound: ``(n_sounds, k, D)``
        float32, encoded ``window_batch`` windows at a time (sound-major)."""
        n_sounds, k = padded.shape[0], offsets.shape[0]
        view = padded.unfold(1, self.windows.width, 1)  # (n_sounds, positions, width): a view, nothing copied
        out = torch.empty(n_sounds * k, self.scene_embedding_size, dtype=torch.float32, device=padded.device)
        for a in range(0, n_sounds * k, self.window_batch):
            w = torch.arange(a, min(a + self.window_batch, n_sounds * k), device=padded.device)
            out[a:a + len(w)] = self.encoder(self.windows(view[w // k, offsets[w % k]])).float()
        return out.view(n_sounds, k, self.scene_embedding_size)


def check_audio(audio, model: HearModel) -> None:
    """A clear error for anything but ``(n_sounds, n_samples)`` finite float32 audio on the model's device."""
    if not isinstance(model, HearModel):
        raise TypeError(f"model must be what trainer.hear.load_model returns, got {type(model).__name__}")
    if not isinstance(audio, Tensor):
        raise TypeError(f"audio must be a torch.Tensor (n_sounds, n_samples), got {type(audio).__name__}; "
                        "wrap it with torch.as_tensor(audio, dtype=torch.float32)")
    if audio.ndim != 2:
        raise ValueError(f"audio must be 2-D (n_sounds, n_samples) mono, got shape {tuple(audio.shape)}; "
                         "for one sound use audio[None], for multichannel audio mix it down first")
    if audio.dtype != torch.float32:
        raise TypeError(f"audio must be float32, got {audio.dtype}; convert with audio.float() "
                        "(integer PCM: divide by 32768 first)")
    if audio.device != model.device:
        raise ValueError(f"audio is on {audio.device} but the model is on {model.device}; move one of them "
                         f"(audio.to({str(model.device)!r}) or model.to({str(audio.device)!r}))")
    if audio.shape[1] < 1:
        raise ValueError("audio has 0 samples per sound; pass at least one sample")
    if not bool(torch.isfinite(audio).all()):  # one sync per call: a NaN would otherwise spread silently
        raise ValueError("audio holds NaN or infinite values; clean the input (e.g. torch.nan_to_num) first")


def find_sample_rate(ckpt: dict) -> int:
    """The pretraining audio's sample rate: the checkpoint's ``sample_rate`` if it records one, else the
    ``store.json`` of its pretraining store (``config["data"]``, or ``config["out"]/packed`` for a folder of audio)
    where that is still readable, else :data:`DEFAULT_SAMPLE_RATE`."""
    cfg = ckpt["config"]
    rate = ckpt.get("sample_rate", cfg.get("sample_rate"))
    if rate is not None:
        return int(rate)
    for root in (cfg.get("data"), Path(cfg["out"]) / "packed" if cfg.get("out") else None):
        meta = Path(root) / "store.json" if root else None
        if meta is not None and meta.is_file():
            try:
                return int(json.loads(meta.read_text())["sample_rate"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
    return DEFAULT_SAMPLE_RATE


def load_model(model_file_path: str = "", hop_ms: float = HOP_MS, window_batch: int = WINDOW_BATCH,
               sample_rate: Optional[int] = None) -> HearModel:
    """HEAR's ``load_model``: the encoder of a ``trainer.pretrain`` checkpoint (``OUT/checkpoints/last.pt``) as a
    :class:`HearModel` on the CPU in eval mode. ``hop_ms`` (<= 50), ``window_batch`` and ``sample_rate`` (default:
    :func:`find_sample_rate`) are extensions; HEAR's runner calls ``load_model(path)``."""
    common.require(bool(model_file_path), "model_file_path is required: pass the last.pt that "
                                          "`python -m trainer.pretrain` wrote (OUT/checkpoints/last.pt)")
    ckpt = common.read_checkpoint(model_file_path, "model_file_path")
    rate = find_sample_rate(ckpt) if sample_rate is None else int(sample_rate)
    common.require(rate in HEAR_SAMPLE_RATES, f"sample_rate {rate} is not one of HEAR's {HEAR_SAMPLE_RATES}; pass "
                                              "sample_rate= one of them (the rate the checkpoint was pretrained at)")
    del ckpt
    encoder, preset, normalize = load_encoder(model_file_path)
    return HearModel(encoder, preset, normalize, rate, hop_ms, window_batch).eval()


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """HEAR's timestamp embeddings: ``audio`` ``(n_sounds, n_samples)`` -> h of a window centred at each timestamp
    ``(n_sounds, n_timestamps, D)`` float32 and the timestamps ``(n_sounds, n_timestamps)`` float32 in ms, every
    ``model.hop_ms`` from 0 (``n_timestamps = 1 + n_samples // model.hop_samples``). Cost: that many windows per
    sound through the encoder (20 per second at the default 50 ms hop)."""
    check_audio(audio, model)
    model.eval()
    with torch.inference_mode():
        padded, _ = model.padded(audio)
        n_ts = audio.shape[1] // model.hop_samples + 1
        # window centred at j * hop starts (segment at j*hop - segment//2, context before it) at padded index j * hop
        offsets = torch.arange(n_ts, device=audio.device) * model.hop_samples
        emb = model.embed_windows(padded, offsets)
        ms = torch.arange(n_ts, dtype=torch.float64, device=audio.device if audio.device.type != "mps" else "cpu")
        ms = (ms * (1000.0 * model.hop_samples / model.sample_rate)).float().to(audio.device)
        return emb, ms.expand(audio.shape[0], n_ts).contiguous()


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """HEAR's scene embeddings: ``audio`` ``(n_sounds, n_samples)`` -> ``(n_sounds, D)`` float32, the mean h of the
    probe's tiling windows (``max(1, ceil(n_samples / segment))`` per sound)."""
    check_audio(audio, model)
    model.eval()
    with torch.inference_mode():
        padded, left = model.padded(audio)
        _, starts = window_starts(np.asarray([audio.shape[1]]), model.windows.segment)
        offsets = torch.from_numpy(starts - model.windows.context + left).to(audio.device)
        return model.embed_windows(padded, offsets).mean(1)
