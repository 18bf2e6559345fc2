"""``python -m trainer.pretrain``: contrastive pretraining (the paper's section 2), one screen of loop.

    python -m trainer.pretrain                                   # short run on the built-in dataset (CPU: minutes)
    python -m trainer.pretrain --data stores/audioset --preset ts+mask --steps 200000 --out runs/as-tsmask
    torchrun --nproc-per-node 8 -m trainer.pretrain --data stores/audioset --gather-negatives ...

Each step: read B int16 clips (packed store; a clip longer than ``--clip-seconds`` is randomly cropped, a shorter
one keeps its own length), convert on the device, normalise each clip's level over its valid samples
(``--normalize``), make anchor/positive log-mels with ``PairAugmenter`` on the device (inside the step, not in
DataLoader workers; segments are drawn inside each clip's valid part), embed both with the encoder and
projection, bilinear InfoNCE, Adam. Writes ``OUT/config.json``, ``OUT/metrics.jsonl`` (one line per step),
``OUT/checkpoints/last.pt`` (atomic: model, optimizer, step, data position, every RNG state) and ``OUT/loss.png``;
with the ``tensorboard`` package (``pip install 'augcl[tensorboard]'``; ``--no-tensorboard`` turns it off), the same
scalars and the first batch's anchor/positive log-mels as TensorBoard events in ``OUT/tensorboard``.
``--resume`` continues from ``last.pt``; SIGTERM or Ctrl-C writes it before exiting.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from augcl import PRESETS, PairAugmenter
from augcl import functional as AF
from augcl.kernels import BACKENDS

from . import cli, common, tb
from .builtin import BuiltinConfig
from .data import NORMALIZE, DistributedBatchSampler, PackedClips, make_loader, to_float
from .loss import contrastive_loss
from .model import BILINEAR_INITS, ENCODERS, POOLINGS, ContrastiveModel
from .run import (
    check_resumable,
    check_same_data,
    clear_run,
    holds_run,
    lock_run_dir,
    remove_stale_temporaries,
    store_fingerprint,
    truncate_metrics,
)


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
    threads: int = 0               # torch CPU threads of each process; 0: the default, 1 (docs/training.md, "Threads")
    resume: bool = False           # continue OUT's run from checkpoints/last.pt (the configuration must match)
    overwrite: bool = False        # start over in an OUT that holds a run (its checkpoint and metrics are deleted)


def build(cfg: PretrainConfig, device: torch.device, rank: int):
    """Data, augmenter, model and optimizer, as the config says."""
    store = common.resolve_store(cfg.data, "unlabeled", Path(cfg.out), BuiltinConfig(n_unlabeled=cfg.builtin_clips))
    dataset = PackedClips(store, clip_seconds=cfg.clip_seconds, seed=cfg.seed, normalize=cfg.normalize)
    world = common.dist_rank_world()[1]
    common.require(len(dataset) >= cfg.batch_size * world,
                   f"--data {cfg.data!r} holds {len(dataset)} clips, fewer than one batch (--batch-size "
                   f"{cfg.batch_size} x {world} process(es)); lower --batch-size or add clips")
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
    """One step; ``model`` may be DDP-wrapped. Returns loss, positive-retrieval accuracy and ``finite`` (which clips
    of the batch were free of NaN/Inf: ``pair.finite``), as tensors: no host sync; and the augmented
    ``pair`` itself (the first one is drawn in TensorBoard)."""
    pair = augment_batch(augment, batch, generator, device)
    return forward_backward(model, optimizer, pair, cfg, device) | {"finite": pair.finite, "pair": pair}


def forward_loss(model, pair, cfg: PretrainConfig, device):
    """Forward and bilinear InfoNCE on an augmented pair (channels_last and bf16 autocast on CUDA): loss, accuracy."""
    anchor, positive = pair.anchor, pair.positive
    recipe = cuda_recipe(device)
    if recipe:
        anchor, positive = (x.contiguous(memory_format=torch.channels_last) for x in (anchor, positive))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and recipe):
        z_anchor, z_positive = model(anchor, positive)
        similarity = model.module.similarity if isinstance(model, DistributedDataParallel) else model.similarity
        return contrastive_loss(similarity, z_anchor, z_positive, cfg.gather_negatives)


def forward_backward(model, optimizer, pair, cfg: PretrainConfig, device) -> dict:
    """The model's part of a step on an augmented pair: forward, bilinear InfoNCE, backward, optimizer step."""
    loss, acc = forward_loss(model, pair, cfg, device)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.detach(), "acc": acc}


def cuda_recipe(device) -> bool:
    """channels_last and bf16 autocast: on CUDA, and on a CPU where the tests send CPU tensors down the accelerator
    branches (tests/conftest.py's ``device_branches``), where the tests run the recipe's backward and Adam step (a backward
    on FakeTensorMode's CUDA tensors needs a CUDA driver)."""
    return device.type == "cuda" or (device.type == "cpu" and not AF.cpu_branch(device))


def nonfinite_error(finite, step: int, epoch: int, batch: int) -> ValueError:
    """The error naming the clips of a step's batch that held NaN/Inf (``finite``: ``train_step``'s flags)."""
    rows = (~finite).nonzero().flatten().tolist()
    return ValueError(f"step {step} (epoch {epoch}, batch {batch}): clip(s) at row(s) {rows} of the batch hold NaN or "
                      f"Inf samples, so their log-mels and this step's loss are NaN; the run stops before writing a "
                      f"checkpoint. Find the clips (non-finite audio, or non-finite level gains in the store) and fix "
                      f"or drop them")


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


def validate(cfg: PretrainConfig) -> None:
    """Every argument checked before anything runs: a :class:`~trainer.common.UsageError` naming the argument and
    the fix."""
    req = common.require
    req(cfg.preset in PRESETS, f"--preset must be one of {sorted(PRESETS)}, got {cfg.preset!r}")
    req(cfg.backend in BACKENDS, f"--backend must be one of {BACKENDS}, got {cfg.backend!r}")
    req(cfg.normalize in NORMALIZE, f"--normalize must be one of {NORMALIZE}, got {cfg.normalize!r}")
    req(cfg.encoder in ENCODERS, f"--encoder must be one of {ENCODERS}, got {cfg.encoder!r}")
    req(cfg.pooling in POOLINGS, f"--pooling must be one of {POOLINGS}, got {cfg.pooling!r}")
    req(cfg.bilinear_init in BILINEAR_INITS,
        f"--bilinear-init must be one of {BILINEAR_INITS}, got {cfg.bilinear_init!r}")
    req(cfg.steps >= 1, f"--steps must be >= 1 (optimizer steps in all), got {cfg.steps}")
    req(cfg.checkpoint_every >= 1,
        f"--checkpoint-every must be >= 1 (steps between checkpoints), got {cfg.checkpoint_every}")
    world = int(os.environ.get("WORLD_SIZE", 1))
    req(cfg.batch_size >= 2 or (cfg.batch_size == 1 and cfg.gather_negatives and world > 1),
        f"--batch-size must be >= 2: the other clips of a batch are the negatives (with 1 the loss is 0 and there is "
        f"nothing to learn), got {cfg.batch_size}")
    req(math.isfinite(cfg.lr) and cfg.lr > 0, f"--lr must be a positive number, got {cfg.lr}")
    req(math.isfinite(cfg.clip_seconds) and cfg.clip_seconds > 0, f"--clip-seconds must be > 0, got {cfg.clip_seconds}")
    req(cfg.dim >= 1, f"--dim must be >= 1 (the projection's size; the paper: 512), got {cfg.dim}")
    req(cfg.num_workers >= 0, f"--num-workers must be >= 0, got {cfg.num_workers}")
    req(cfg.builtin_clips >= 2, f"--builtin-clips must be >= 2, got {cfg.builtin_clips}")
    req(cfg.seed >= 0, f"--seed must be >= 0, got {cfg.seed}")
    common.resolve_threads(cfg.threads)
    req(not (cfg.resume and cfg.overwrite), "--resume and --overwrite contradict each other; pass one of them")
    if cfg.data != "builtin":
        path = Path(cfg.data)
        req(path.is_dir(), f"--data {cfg.data!r} is neither 'builtin', a packed store nor a folder of audio files; "
                           "pass an existing folder")


def save_checkpoint(path: Path, model, optimizer, generator, step: int, epoch: int, batch: int,
                    cfg: PretrainConfig, rank: int, world: int, device: torch.device, store: str) -> None:
    """One file, ``path/last.pt``, written atomically by rank 0: model, optimizer, position, configuration, the
    store's fingerprint and every rank's RNG states (gathered). The previous ``last.pt`` stays in place until
    the new one is complete (rename), so a kill at any instant leaves one whole checkpoint."""
    rng = {"rng": common.rng_state(), "augment": generator.get_state()}
    if world > 1:
        states = [None] * world if rank == 0 else None
        torch.distributed.gather_object(rng, states, dst=0)
    else:
        states = [rng]
    if rank == 0:
        module = model.module if isinstance(model, DistributedDataParallel) else model
        common.atomic_save({"format": common.CHECKPOINT_FORMAT, "model": module.state_dict(),
                            "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch, "batch": batch,
                            "config": asdict(cfg), "store": store, "device_type": device.type, "rng": states},
                           path / "last.pt")


def load_checkpoint(ckpt: dict, model, optimizer, generator, rank: int) -> tuple[int, int, int]:
    """Restore what :func:`save_checkpoint` wrote (``ckpt`` from :func:`trainer.common.read_checkpoint`)."""
    module = model.module if isinstance(model, DistributedDataParallel) else model
    module.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    common.set_rng_state(ckpt["rng"][rank]["rng"])
    generator.set_state(ckpt["rng"][rank]["augment"])  # a CPU ByteTensor for CPU and CUDA generators alike
    return ckpt["step"], ckpt["epoch"], ckpt["batch"]


def pretrain(cfg: PretrainConfig, progress: bool = True, tensorboard: bool = True) -> Path:
    """Run (or resume) pretraining; returns the output folder. Argument and file errors raise
    :class:`~trainer.common.UsageError` before any work. ``tensorboard``: also write TensorBoard events (rank 0,
    ``OUT/tensorboard``) when the package is installed; not a configuration field, so it may differ on resume and
    changes no run's fingerprint."""
    validate(cfg)
    common.set_threads(cfg.threads)
    device = common.run_device(cfg.device)
    rank, world = common.init_distributed(device)
    out = Path(cfg.out)
    lock = lock_run_dir(out) if rank == 0 else None
    try:
        return _pretrain(cfg, progress, device, rank, world, tensorboard)
    finally:
        if lock is not None:
            lock.close()


def _pretrain(cfg: PretrainConfig, progress: bool, device: torch.device, rank: int, world: int,
              tensorboard: bool) -> Path:
    out, ckpt_dir = Path(cfg.out), Path(cfg.out) / "checkpoints"
    ckpt = _resume_point(cfg, rank, world, device)
    common.barrier()
    try:
        dataset, sampler, loader, augment, model, optimizer, generator = build(cfg, device, rank)
    except common.UsageError:
        raise
    except ValueError as e:  # the store: not a packed store, unfinished, empty
        raise common.UsageError(f"--data: {e}") from None
    fingerprint = store_fingerprint(dataset.store.root)
    step, epoch, batch = 0, 0, 0
    if ckpt is not None:
        check_same_data(ckpt, cfg.data, fingerprint)
        step, epoch, batch = load_checkpoint(ckpt, model, optimizer, generator, rank)
        del ckpt
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if rank == 0:
        common.write_json(out / "config.json", asdict(cfg) | {"world_size": world, "device": str(device),
                                                              "store": fingerprint})
        truncate_metrics(out / "metrics.jsonl", step)
    metrics = open(out / "metrics.jsonl", "a") if rank == 0 else None
    # a resumed run redoes the steps after the checkpoint: TensorBoard drops the earlier files' events from step + 1 on
    # (from 0 when no checkpoint was reached: the run starts over)
    writer = tb.open_writer(out, purge_step=step + 1 if step else 0) if rank == 0 and tensorboard else None
    stop = _StopFlag()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"pretrain {cfg.preset}", disable=not progress or rank != 0,
               dynamic_ncols=True)
    save = dict(cfg=cfg, rank=rank, world=world, device=device, store=fingerprint)
    try:
        while step < cfg.steps and not stop.raised:
            sampler.set_epoch(epoch, start_batch=batch)
            dataset.set_epoch(epoch)
            t_last = time.perf_counter()
            for batch_data in loader:
                stats = train_step(model, augment, optimizer, batch_data, generator, cfg, device)
                if writer and step == 0:
                    tb.log_pairs(writer, stats["pair"].anchor, stats["pair"].positive, step=0)
                del stats["pair"]
                step, batch = step + 1, batch + 1
                t_last = _log_step(stats, step, epoch, batch, len(batch_data.clips) * world, t_last, bar, metrics,
                                   writer, optimizer.param_groups[0]["lr"])
                stopping = common.any_rank(stop.raised, device) if world > 1 else stop.raised
                if stopping or step % cfg.checkpoint_every == 0 or step >= cfg.steps:
                    save_checkpoint(ckpt_dir, model, optimizer, generator, step, epoch, batch, **save)
                    if writer:  # every event the checkpoint covers is on disk before a kill can strike
                        writer.flush()
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
        if writer:
            writer.close()
    if rank == 0:
        _report(out, step, stop.raised, writer is not None)
    return out


def _resume_point(cfg: PretrainConfig, rank: int, world: int, device: torch.device) -> Optional[dict]:
    """The run folder made ready: temporaries of a killed run removed, an old run cleared (``--overwrite``) or
    refused (neither flag); returns the checkpoint to resume (``--resume``, checked against ``cfg``) or None."""
    out, ckpt_dir = Path(cfg.out), Path(cfg.out) / "checkpoints"
    if rank == 0:
        removed = remove_stale_temporaries(ckpt_dir) + remove_stale_temporaries(out)
        if removed:
            names = ", ".join(p.name for p in removed)
            print(f"removed {len(removed)} temporary file(s) left by a killed run: {names}")
    if not holds_run(out):
        return None
    if cfg.overwrite:
        if rank == 0:
            clear_run(out)
        return None
    if not cfg.resume:
        at = ""
        if (ckpt_dir / "last.pt").is_file():
            try:
                old = common.read_checkpoint(ckpt_dir / "last.pt", "--out")
                at = f" (checkpoint at step {old.get('step', '?')})"
            except common.UsageError:
                at = " (its checkpoint is unreadable)"
        raise common.UsageError(f"--out {str(out)!r} holds a run{at}; pass --resume to continue it, --overwrite to "
                                "start over, or another --out")
    if not (ckpt_dir / "last.pt").is_file():
        if rank == 0:
            print(f"--resume: no checkpoint in {ckpt_dir} (killed before the first one), starting from step 0")
        return None
    ckpt = common.read_checkpoint(ckpt_dir / "last.pt", "--resume", for_resume=True)
    check_resumable(ckpt, asdict(cfg), asdict(PretrainConfig()), world, device)
    if ckpt["config"]["data"] != cfg.data and not (Path(cfg.data) / "store.json").is_file():
        raise common.UsageError(
            f"--resume: --data {cfg.data!r} is not the checkpoint's {ckpt['config']['data']!r}; a folder "
            "of audio would be packed anew: pass the checkpoint's --data (or a packed store of the same "
            "clips), or start a new run (--overwrite)")
    return ckpt


def _log_step(stats: dict, step: int, epoch: int, batch: int, clips: int, t_last: float, bar, metrics, writer,
              lr: float) -> float:
    """A step's one host sync (loss, accuracy and whether every clip was finite, in one transfer), its progress bar,
    metrics row and TensorBoard scalars; a non-finite batch stops the run. Returns the time the step ended."""
    loss, acc, finite = torch.stack([stats["loss"].float(), stats["acc"].float(),
                                     stats["finite"].all().float()]).tolist()
    if not finite:
        raise nonfinite_error(stats["finite"], step, epoch, batch)
    now = time.perf_counter()
    rate = clips / (now - t_last)
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.2f}", clips_s=f"{rate:.1f}")
    if metrics:
        row = {"loss": loss, "acc": acc, "clips_per_s": rate, "lr": lr}
        metrics.write(json.dumps({"step": step, "epoch": epoch} | row | {"time": time.time()}) + "\n")
        metrics.flush()
        if writer:
            tb.log_scalars(writer, "train", row, step)
    return now


def _report(out: Path, step: int, stopped: bool, events: bool) -> None:
    """Rank 0's last words: how to resume a stopped run, or the loss plot and what was written."""
    ckpt = out / "checkpoints" / "last.pt"
    if stopped:
        print(f"stopped at step {step}; checkpoint in {ckpt}. Continue with the same command and --resume.",
              file=sys.stderr)
        return
    plot_loss(out / "metrics.jsonl", out / "loss.png")
    written = f", {tb.SUBDIR}/ (tensorboard --logdir {out})" if events else ""
    print(f"pretraining done: {step} steps. Outputs in {out}/: config.json, metrics.jsonl, loss.png, "
          f"checkpoints/last.pt{written}\nNext: python -m trainer.probe --checkpoint {ckpt}")


def plot_loss(metrics_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for line in metrics_path.read_text().splitlines() if metrics_path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
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
    common.atomic_write(png, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)


def parse_cli(argv: Optional[Sequence[str]] = None) -> tuple[PretrainConfig, bool]:
    """The configuration and ``--tensorboard/--no-tensorboard`` (how the run is logged, not what it computes)."""
    return cli.parse_with_tensorboard(PretrainConfig, "python -m trainer.pretrain", __doc__, argv, choices={
        "preset": sorted(PRESETS), "backend": BACKENDS, "normalize": NORMALIZE, "encoder": ENCODERS,
        "pooling": POOLINGS, "bilinear_init": BILINEAR_INITS})


def main(argv: Optional[Sequence[str]] = None) -> Path:
    def run(a):
        cfg, tensorboard = parse_cli(a)
        return pretrain(cfg, tensorboard=tensorboard)  # checks every argument, runs, reports

    return common.run_cli(run, argv, "trainer.pretrain")


if __name__ == "__main__":
    main()
