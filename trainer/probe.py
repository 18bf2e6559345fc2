"""``python -m trainer.probe``: the downstream evaluation of the paper (section 3).

    python -m trainer.probe --checkpoint outputs/pretrain/checkpoints/last.pt               # linear, built-in data
    python -m trainer.probe --checkpoint ... --mode finetune
    python -m trainer.probe --mode supervised                                                # same net, random init
    python -m trainer.probe --checkpoint ... --data stores/desed-train --test-data stores/desed-val

Modes: ``linear`` (frozen encoder, a linear classifier on h), ``finetune`` (the whole network), ``supervised``
(the same network from random init). Training sees random 96-frame windows of the clips (fine-tune, supervised)
or every window's frozen h (linear). A clip's prediction is the mean of its windows' probabilities (softmax
for single-label, sigmoid for multi-label), windows tiling the clip without overlap. Writes ``OUT/metrics.json``
(macro F1, per-class F1, wAP, mAP, accuracy), ``OUT/per_class_f1.png`` and ``OUT/confusion.png``.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from augcl import PRESETS
from augcl.transforms import LogMel

from . import common, plots
from .builtin import BuiltinConfig
from .data import DistributedBatchSampler, PackedClips, PackedStore, to_float
from .metrics import clip_metrics
from .model import Classifier, ContrastiveModel, Encoder


@dataclass
class ProbeConfig:
    checkpoint: Optional[str] = None  # a pretrain checkpoint (last.pt); required unless --mode supervised
    mode: str = "linear"              # linear | finetune | supervised
    data: str = "builtin"             # "builtin" (its train split) or a labeled packed store
    test_data: Optional[str] = None   # a labeled packed store (default with builtin: its test split)
    out: str = "outputs/probe"
    epochs: int = 0                   # 0: the mode's default (linear 60, finetune / supervised 8)
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    builtin_train: int = 300
    builtin_test: int = 200


class Windows(nn.Module):
    """Clips ``(B, T)`` -> log-mel windows ``(B, W, 1, n_mels, frames)`` tiling each clip (the paper's front end)."""

    def __init__(self, preset: str, sample_rate: int):
        super().__init__()
        config = PRESETS[preset](sample_rate)
        self.mel = LogMel(config.mel, sample_rate)
        self.frames = config.segment_frames
        self.segment_input = config.mel.segment_samples(self.frames) + 2 * self.mel.context  # one window's samples

    def forward(self, wave: Tensor) -> Tensor:
        c = self.mel.context
        spec = self.mel(F.pad(wave, (c, c)))  # zeros only beyond the clip's two ends
        w = spec.shape[-1] // self.frames
        if w == 0:
            raise ValueError(f"clips of {wave.shape[-1]} samples are shorter than one {self.frames}-frame window")
        spec = spec[..., : w * self.frames].unflatten(-1, (w, self.frames))  # (B, 1, M, W, frames)
        return spec.permute(0, 3, 1, 2, 4)


def load_encoder(checkpoint: Optional[str]) -> tuple[Encoder, str]:
    """The pretrained encoder f and the preset it was trained with (its mel front end)."""
    if checkpoint is None:
        return Encoder(), "ts+mask"
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = ckpt["config"]
    model = ContrastiveModel(cfg["dim"], cfg["pooling"], cfg.get("bilinear_init", "identity"))
    model.load_state_dict(ckpt["model"])
    return model.encoder, cfg["preset"]


def _stores(cfg: ProbeConfig) -> tuple[PackedStore, PackedStore]:
    if cfg.data == "builtin":
        bcfg = BuiltinConfig(n_train=cfg.builtin_train, n_test=cfg.builtin_test)
        train = common.resolve_store("builtin", "train", Path(cfg.out), bcfg)
        test = common.resolve_store("builtin", "test", Path(cfg.out), bcfg) if cfg.test_data is None else cfg.test_data
    else:
        if cfg.test_data is None:
            raise ValueError("--test-data is required with --data (a labeled packed store held out for evaluation)")
        train, test = cfg.data, cfg.test_data
    train, test = PackedStore(train), PackedStore(test)
    if not train.classes:
        raise ValueError(f"data {cfg.data!r} is not labeled; pack it from a labeled layout (docs/data.md)")
    if train.classes != test.classes or train.multi_label != test.multi_label:
        raise ValueError("--data and --test-data must have the same classes and task type")
    return train, test


def _loss(logits: Tensor, target: Tensor, multi: bool) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, target) if multi else F.cross_entropy(logits, target)


def _probs(logits: Tensor, multi: bool) -> Tensor:
    return torch.sigmoid(logits) if multi else torch.softmax(logits, -1)


@torch.no_grad()
def window_features(encoder: Encoder, windows: Windows, store: PackedStore, device, batch: int, desc: str
                    ) -> tuple[Tensor, Tensor]:
    """h of every window of every clip: ``(N, W, 1280)`` and the clips' targets."""
    ds = PackedClips(store, crop="start", clip_seconds=float(store.length.max()) / store.sample_rate)
    encoder.eval()
    feats, targets = [], []
    for idx in tqdm(DistributedBatchSampler(len(ds), batch, shuffle=False, drop_last=False, rank=0, world_size=1),
                    desc=desc, leave=False):
        clips, _, y = ds.__getitems__(idx)
        win = windows(to_float(clips.to(device)))
        feats.append(encoder(win.flatten(0, 1)).unflatten(0, win.shape[:2]).float().cpu())
        targets.append(y)
    return torch.cat(feats), torch.cat(targets)


def train_linear(train_h: Tensor, train_y: Tensor, n_classes: int, multi: bool, cfg: ProbeConfig, epochs: int
                 ) -> nn.Module:
    """A linear classifier on standardised h (the affine standardisation folds into the linear layer)."""
    h = train_h.flatten(0, 1)
    y = train_y.repeat_interleave(train_h.shape[1], dim=0)
    mu, sd = h.mean(0), h.std(0) + 1e-6
    head = nn.Linear(h.shape[1], n_classes)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    for _ in tqdm(range(epochs), desc="linear probe", leave=False):
        for idx in torch.randperm(len(h), generator=g).split(256):
            loss = _loss(head((h[idx] - mu) / sd), y[idx], multi)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():  # fold the standardisation in: one plain linear layer on h
        folded = nn.Linear(h.shape[1], n_classes)
        folded.weight.copy_(head.weight / sd)
        folded.bias.copy_(head.bias - (head.weight * (mu / sd)).sum(1))
    return folded


def train_network(model: Classifier, windows: Windows, store: PackedStore, multi: bool, cfg: ProbeConfig,
                  epochs: int, device) -> None:
    """Fine-tune (or train from scratch) on one random window per clip per epoch."""
    seg_seconds = windows.segment_input / store.sample_rate
    ds = PackedClips(store, clip_seconds=seg_seconds, crop="random", seed=cfg.seed)
    sampler = DistributedBatchSampler(len(ds), min(cfg.batch_size, len(ds)), seed=cfg.seed, rank=0, world_size=1)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    bar = tqdm(total=epochs * len(sampler), desc=cfg.mode, leave=False)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        for idx in sampler:
            clips, _, y = ds.__getitems__(idx)
            spec = windows.mel(to_float(clips.to(device)))
            loss = _loss(model(spec), y.to(device), multi)
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()


def probe(cfg: ProbeConfig) -> dict:
    if cfg.mode not in ("linear", "finetune", "supervised"):
        raise ValueError(f"mode must be linear, finetune or supervised, got {cfg.mode!r}")
    if cfg.mode != "supervised" and cfg.checkpoint is None:
        raise ValueError(f"--mode {cfg.mode} needs --checkpoint (a pretrain last.pt); or use --mode supervised")
    t0 = time.perf_counter()
    device = common.pick_device(cfg.device)
    common.seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = _stores(cfg)
    encoder, preset = load_encoder(cfg.checkpoint if cfg.mode != "supervised" else None)
    encoder = encoder.to(device)
    windows = Windows(preset, train.sample_rate).to(device)
    multi, n_classes = train.multi_label, len(train.classes)
    epochs = cfg.epochs or (60 if cfg.mode == "linear" else 8)
    if cfg.mode == "linear":
        train_h, train_y = window_features(encoder, windows, train, device, cfg.batch_size, "features (train)")
        test_h, test_y = window_features(encoder, windows, test, device, cfg.batch_size, "features (test)")
        head = train_linear(train_h, train_y, n_classes, multi, cfg, epochs)
        with torch.no_grad():
            scores = _probs(head(test_h), multi).mean(1)
    else:
        model = Classifier(encoder, n_classes).to(device)
        train_network(model, windows, train, multi, cfg, epochs, device)
        test_h, test_y = window_features(model.encoder, windows, test, device, cfg.batch_size, "features (test)")
        with torch.no_grad():
            scores = _probs(model.head(test_h.to(device)), multi).mean(1).cpu()
    y_true = test_y.numpy() if multi else test_y.numpy().astype(np.int64)
    result = clip_metrics(y_true, scores.numpy(), train.classes)
    result |= {"mode": cfg.mode, "preset": preset if cfg.mode != "supervised" else None, "epochs": epochs,
               "config": asdict(cfg), "seconds": time.perf_counter() - t0}
    common.write_json(out / "metrics.json", result)
    label = f"{cfg.mode}" + (f" ({preset})" if cfg.mode != "supervised" else "")
    plots.per_class_f1({label: result["per_class_f1"]}, out / "per_class_f1.png", f"per-class F1, {label}")
    plots.confusion(result["confusion_normalized"], result["classes"], out / "confusion.png",
                    f"{label}: rows true class, normalised")
    summary = f"macro F1 {result['macro_f1']:.3f}, wAP {result['wAP']:.3f}, mAP {result['mAP']:.3f}"
    if "accuracy" in result:
        summary += f", accuracy {result['accuracy']:.3f}"
    print(f"{label}: {summary}. Wrote {out}/metrics.json, per_class_f1.png, confusion.png")
    return result


def parse_args(argv: Optional[Sequence[str]] = None) -> ProbeConfig:
    p = argparse.ArgumentParser(prog="python -m trainer.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(ProbeConfig):
        kind = {"int": int, "float": float, "str": str, "Optional[str]": str}[f.type]
        choices = ("linear", "finetune", "supervised") if f.name == "mode" else None
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, choices=choices)
    return ProbeConfig(**vars(p.parse_args(argv)))


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return probe(parse_args(argv))


if __name__ == "__main__":
    main()
