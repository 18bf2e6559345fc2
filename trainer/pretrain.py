"""``python -m trainer.pretrain``: contrastive pretraining (the paper's section 2), one screen of loop.

    python -m trainer.pretrain                                   # short run on the built-in dataset (CPU: minutes)
    python -m trainer.pretrain --data stores/audioset --preset ts+mask --steps 200000 --out runs/as-tsmask
    torchrun --nproc-per-node 8 -m trainer.pretrain --data stores/audioset --gather-negatives ...

Each step: read B int16 clips (packed store; a clip longer than ``--clip-seconds`` is randomly cropped, a shorter
one keeps its own length), convert on the device, normalise each clip's level over its valid samples
(``--normalize``), make anchor/positive log-mels with ``PairAugmenter`` on the device (inside the step, not in
DataLoader workers; segments are drawn inside each clip's valid part), embed both with the encoder and
projection, bilinear InfoNCE, Adam. Writes ``OUT/config.json``, ``OUT/metrics.jsonl`` (one line per step),
``OUT/checkpoints/last.pt`` (atomic: model, optimizer, step, data position, every RNG state) and ``OUT/loss.png``.
``--resume`` continues from ``last.pt``; SIGTERM or Ctrl-C writes it before exiting.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from augcl import PRESETS, PairAugmenter
from augcl.kernels import BACKENDS

from . import common
from .builtin import BuiltinConfig
from .data import NORMALIZE, DistributedBatchSampler, PackedClips, make_loader, to_float
from .loss import contrastive_loss
from .model import ENCODERS, ContrastiveModel


@dataclass
class PretrainConfig:
    data: str = "builtin"          # "builtin", a packed store, or a folder of audio files (packed on first use)
    preset: str = "ts+mask"        # any PairAugmenter preset
    backend: str = "auto"          # PairAugmenter backend: auto (kernels where measured faster), torch, kernels
    out: str = "outputs/pretrain"
    steps: int = 30                # optimizer steps in all (a resumed run continues up to this)
    batch_size: int = 128          # clips per rank per step (the paper: 128)
    lr: float = 1e-3               # Adam (the paper)
    clip_seconds: float = 10.0     # longest clip a batch holds: longer clips are randomly cropped to it
    normalize: str = "rms"         # each clip's level over its whole length: rms (-20 dBFS), peak (-1 dBFS) or none
    encoder: str = "efficientnet_b0"  # the paper's; "small" is a 0.13 M-parameter CNN for CPU studies (model.py)
    dim: int = 512
    pooling: str = "avg"           # "avg" (the paper) or "max" (COLA's code)
    bilinear_init: str = "identity"  # "identity" (W = I, logits / sqrt(dim)) or "cola" (COLA's N(0, 0.05^2)); model.py
    seed: int = 0
    device: str = "auto"
    gather_negatives: bool = False  # under DDP: every rank's positives are negatives of every anchor
    checkpoint_every: int = 100
    num_workers: int = 0           # packed reads are fastest in the main process (docs/data.md)
    builtin_clips: int = 1000      # size of the built-in unlabeled split
    bf16: bool = True              # autocast on CUDA (ignored on the CPU)
    resume: bool = False


def build(cfg: PretrainConfig, device: torch.device, rank: int):
    """Data, augmenter, model and optimizer, as the config says."""
    store = common.resolve_store(cfg.data, "unlabeled", Path(cfg.out), BuiltinConfig(n_unlabeled=cfg.builtin_clips))
    dataset = PackedClips(store, clip_seconds=cfg.clip_seconds, seed=cfg.seed, normalize=cfg.normalize)
    sampler = DistributedBatchSampler(len(dataset), cfg.batch_size, seed=cfg.seed)
    loader = make_loader(dataset, sampler, num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    augment = PairAugmenter.from_preset(cfg.preset, sample_rate=dataset.store.sample_rate, backend=cfg.backend).to(device)
    common.seed_everything(cfg.seed)  # the same initial weights on every rank
    model = ContrastiveModel(cfg.dim, cfg.pooling, cfg.bilinear_init, cfg.encoder).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)  # each rank its own draws
    return dataset, sampler, loader, augment, model, optimizer, generator


def augment_batch(augment, batch, generator, device):
    """A :class:`~trainer.data.Batch` (int16 clips, valid lengths, level gains) -> the anchor/positive pair, on
    ``device``: the level normalisation rides on the int16 -> float conversion (one pass over the batch)."""
    wave = to_float(batch.clips.to(device, non_blocking=True), gains=batch.gains.to(device, non_blocking=True))
    with torch.no_grad():
        return augment(wave, generator=generator, lengths=batch.lengths.to(device, non_blocking=True))


def train_step(model, augment, optimizer, batch, generator, cfg: PretrainConfig, device) -> dict:
    """One step; ``model`` may be DDP-wrapped. Returns loss and positive-retrieval accuracy (tensors)."""
    pair = augment_batch(augment, batch, generator, device)
    return forward_backward(model, optimizer, pair, cfg, device)


def forward_backward(model, optimizer, pair, cfg: PretrainConfig, device) -> dict:
    """The model's part of a step on an augmented pair: forward, bilinear InfoNCE, backward, optimizer step."""
    anchor, positive = pair.anchor, pair.positive
    if device.type == "cuda":
        anchor, positive = (x.contiguous(memory_format=torch.channels_last) for x in (anchor, positive))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda"):
        z_anchor, z_positive = model(anchor, positive)
        similarity = model.module.similarity if isinstance(model, DistributedDataParallel) else model.similarity
        loss, acc = contrastive_loss(similarity, z_anchor, z_positive, cfg.gather_negatives)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.detach(), "acc": acc}


class _StopFlag:
    """SIGTERM / Ctrl-C ask the loop to checkpoint and stop at the end of the current step."""

    def __init__(self):
        self.raised = False
        self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handler(self, signum, frame):
        self.raised = True
        signal.signal(signum, self._old[signum])  # a second signal acts as usual

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


def save_checkpoint(path: Path, model, optimizer, generator, step: int, epoch: int, batch: int,
                    cfg: PretrainConfig, rank: int) -> None:
    """Rank 0 writes the model and optimizer; every rank writes its own RNG states (its own augmentations)."""
    module = model.module if isinstance(model, DistributedDataParallel) else model
    if rank == 0:
        common.atomic_save({"model": module.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                            "epoch": epoch, "batch": batch, "config": asdict(cfg)}, path / "last.pt")
    common.atomic_save({"rng": common.rng_state(), "augment": generator.get_state(), "step": step},
                       path / f"rng-rank{rank}.pt")


def load_checkpoint(path: Path, model, optimizer, generator, rank: int, device) -> tuple[int, int, int]:
    ckpt = torch.load(path / "last.pt", map_location=device, weights_only=False)
    rng = torch.load(path / f"rng-rank{rank}.pt", map_location="cpu", weights_only=False)
    if rng["step"] != ckpt["step"]:
        raise ValueError(f"{path}: rng-rank{rank}.pt is from step {rng['step']} but last.pt from {ckpt['step']}; "
                         "the run was killed between the two writes; resume from an earlier copy or start over")
    module = model.module if isinstance(model, DistributedDataParallel) else model
    module.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    common.set_rng_state(rng["rng"])
    generator.set_state(rng["augment"])  # a CPU ByteTensor for CPU and CUDA generators alike
    return ckpt["step"], ckpt["epoch"], ckpt["batch"]


def pretrain(cfg: PretrainConfig, progress: bool = True) -> Path:
    """Run (or resume) pretraining; returns the output folder."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {cfg.preset!r}")
    if cfg.normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {cfg.normalize!r}")
    if cfg.encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {cfg.encoder!r}")
    device = common.pick_device(cfg.device)
    rank, world = common.init_distributed(device)
    out, ckpt_dir = Path(cfg.out), Path(cfg.out) / "checkpoints"
    dataset, sampler, loader, augment, model, optimizer, generator = build(cfg, device, rank)
    step, epoch, batch = 0, 0, 0
    if cfg.resume and (ckpt_dir / "last.pt").is_file():
        step, epoch, batch = load_checkpoint(ckpt_dir, model, optimizer, generator, rank, device)
    elif cfg.resume:
        print(f"--resume: no checkpoint in {ckpt_dir}, starting from step 0")
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if rank == 0:
        common.write_json(out / "config.json", asdict(cfg) | {"world_size": world, "device": str(device)})
    metrics = open(out / "metrics.jsonl", "a") if rank == 0 else None
    stop = _StopFlag()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"pretrain {cfg.preset}", disable=not progress or rank != 0,
               dynamic_ncols=True)
    try:
        while step < cfg.steps and not stop.raised:
            sampler.set_epoch(epoch, start_batch=batch)
            dataset.set_epoch(epoch)
            t_last = time.perf_counter()
            for batch_data in loader:
                stats = train_step(model, augment, optimizer, batch_data, generator, cfg, device)
                step, batch = step + 1, batch + 1
                loss, acc = stats["loss"].item(), stats["acc"].item()  # one sync per step, for the log
                now = time.perf_counter()
                rate = len(batch_data.clips) * world / (now - t_last)
                t_last = now
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.2f}", clips_s=f"{rate:.1f}")
                if metrics:
                    metrics.write(json.dumps({"step": step, "epoch": epoch, "loss": loss, "acc": acc,
                                              "clips_per_s": rate, "time": time.time()}) + "\n")
                    metrics.flush()
                stopping = common.any_rank(stop.raised, device) if world > 1 else stop.raised
                if stopping or step % cfg.checkpoint_every == 0 or step >= cfg.steps:
                    save_checkpoint(ckpt_dir, model, optimizer, generator, step, epoch, batch, cfg, rank)
                if stopping:
                    stop.raised = True
                    break
                if step >= cfg.steps:
                    break
            else:
                epoch, batch = epoch + 1, 0
    finally:
        bar.close()
        stop.restore()
        if metrics:
            metrics.close()
    if rank == 0:
        if stop.raised:
            print(f"stopped at step {step}; checkpoint in {ckpt_dir / 'last.pt'}. Continue with the same command "
                  "and --resume.", file=sys.stderr)
        else:
            plot_loss(out / "metrics.jsonl", out / "loss.png")
            print(f"pretraining done: {step} steps. Outputs in {out}/: config.json, metrics.jsonl, loss.png, "
                  f"checkpoints/last.pt\nNext: python -m trainer.probe --checkpoint {ckpt_dir / 'last.pt'}")
    return out


def plot_loss(metrics_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    last = {r["step"]: r for r in rows}  # a resumed run may have logged a step twice; the later one counts
    steps = sorted(last)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(steps, [last[s]["loss"] for s in steps])
    ax[0].set(xlabel="step", ylabel="InfoNCE loss", title="pretraining loss")
    ax[1].plot(steps, [last[s]["acc"] for s in steps])
    ax[1].set(xlabel="step", ylabel="accuracy", title="anchor -> positive retrieval in the batch")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def parse_args(argv: Optional[Sequence[str]] = None) -> PretrainConfig:
    p = argparse.ArgumentParser(prog="python -m trainer.pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(PretrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            choices = {"preset": sorted(PRESETS), "backend": BACKENDS, "normalize": NORMALIZE, "encoder": ENCODERS}
            p.add_argument(flag, type=kind, default=f.default, choices=choices.get(f.name))
    return PretrainConfig(**vars(p.parse_args(argv)))


def main(argv: Optional[Sequence[str]] = None) -> Path:
    return pretrain(parse_args(argv))


if __name__ == "__main__":
    main()
