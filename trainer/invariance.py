"""``python -m trainer.invariance``: how invariant a pretrained encoder is to each nuisance, measured directly.

    python -m trainer.invariance --checkpoint outputs/pretrain/checkpoints/last.pt          # built-in test split
    python -m trainer.invariance --checkpoint ... --data stores/esc50-fold4 --max-clips 200 --out outputs/inv

Every clip of the store (``--data``: a packed store, or ``builtin``: the built-in dataset's test split) is altered
whole, at its own length, by one nuisance at one level at a time, with augcl's standalone transforms (``p=1``, the
level fixed, draws from a seeded generator, so every checkpoint sees the same altered copies):
time stretch (``TimeStretch(rates=(r,), leave_length_unchanged=False)``: the copy is ``ceil(n / r)`` samples long),
room (``ApplyImpulseResponse``: one IR per clip drawn from the bank: ``--rir auto`` takes the measured rooms of
``../shared/data/rirs/audio`` when present, else the simulated bank that the ``rir`` preset pretrains with; the
JSON records which), white noise at an SNR (``AddNoise``), gain (``Gain``) and SpecAugment's time or frequency
masks (``SpecAugment`` on each window's log-mel; its default widths; masks stay inside the window's valid frames).

Embedding. As the probe does (``trainer.probe``): each clip's level is normalised over its whole length (the
checkpoint's ``normalize``) before the nuisance, which is then applied as pretraining applies it (a gained copy is
not normalised again); the clip (original or copy) is tiled by 96-frame windows over its own length (padding is
never a window) and the encoder's BatchNorm statistics are re-estimated on the originals' windows (as the probe
does for frozen encoders). Representations, per clip:
    h           the mean over the clip's windows of the encoder's pooled features f(window);
    z           the mean over its windows of g(f(window)), the projection applied per window as in pretraining
                (g was trained on one window's h, never on a clip mean);
    random_*    the same for the checkpoint's architecture with fresh weights (``--seed``), BN statistics from the
                originals' windows: the floor a pretrained encoder must beat;
    logmel      no learning: each window's log-mel averaged over its valid frames (64-d), then over the windows.

Metrics, per (nuisance, level) and representation, from cosines: ``cos_same`` mean cos(original_i, copy_i);
``cos_diff`` mean cos(original_i, original_j) over i != j; ``score`` (cos_same - cos_diff) / (1 - cos_diff) (1:
the copy is as close as itself, 0: as close as another clip; cos_same alone says little when every pair of clips
has cosine 0.9); ``top1``/``top5``: the fraction of copies whose own original is among the k originals most cosine-
similar to them (ties counted against; chance is k / N).

Cost: one encoder pass over all windows per nuisance level (12 with the defaults) and one for the originals, per
model. Writes ``OUT/invariance.json``, ``OUT/invariance.md`` and ``OUT/invariance.png``.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from augcl import PRESETS, AddNoise, ApplyImpulseResponse, Gain, RIRBank, SpecAugment, TimeStretch

from . import cli, common
from .builtin import BuiltinConfig
from .data import NORMALIZE, PackedStore
from .model import ContrastiveModel
from .pack import INT16_SCALE
from .windows import Windows, recompute_batchnorm, window_starts

MODELS = ("pretrained", "random_init", "logmel")
MASKS = ("time", "freq")
MEASURED_RIRS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rirs" / "audio"
REP_NAMES = {"h": "h (pretrained encoder)", "z": "z (pretrained projection)", "random_h": "h, random-init encoder",
             "random_z": "z, random-init encoder + projection", "logmel": "time-averaged log-mel (no learning)"}


@dataclass
class InvarianceConfig:
    checkpoint: Optional[str] = None   # a pretrain checkpoint (last.pt); its architecture, preset, normalisation
    data: str = "builtin"              # a packed store, or "builtin": the built-in dataset's test split
    out: str = "outputs/invariance"
    models: tuple = MODELS             # which of pretrained, random_init, logmel to measure
    stretch_rates: tuple = (0.8, 0.9, 1.1, 1.25)
    rir: str = "auto"                  # auto | simulated | none | a folder of IR audio files
    snr_db: tuple = (0.0, 10.0, 20.0)  # white noise
    gain_db: tuple = (-12.0, 6.0)
    masks: tuple = MASKS               # SpecAugment's time and/or frequency masks
    max_clips: int = 0                 # the first N clips of the store; 0: all
    normalize: Optional[str] = None    # clip level: rms | peak | none; None: the checkpoint's
    window_batch: int = 256            # windows per encoder pass
    clip_batch: int = 16               # clips altered together
    seed: int = 0                      # nuisance draws (noise, IR choice, masks) and the random-init weights
    device: str = "auto"
    threads: int = 0                   # torch CPU threads; 0: the default, 1
    builtin_test: int = 200


# --- nuisances ------------------------------------------------------------------------------------------------

def nuisances(cfg: InvarianceConfig, sample_rate: int) -> tuple[list[tuple[str, str, nn.Module]], dict]:
    """``(name, level, transform)`` per nuisance level, and a record of the RIR bank used. Waveform transforms take
    ``(B, T)`` and ``lengths``; the mask transforms act on log-mel windows."""
    out = [("stretch", f"{r:g}", TimeStretch(rates=(float(r),), p=1.0, leave_length_unchanged=False))
           for r in cfg.stretch_rates]
    bank_record = {"source": "none"}
    if cfg.rir != "none":
        if cfg.rir == "simulated" or (cfg.rir == "auto" and not MEASURED_RIRS.is_dir()):
            bank, source = RIRBank.simulated(sample_rate=sample_rate), "simulated (augcl's RoomSimConfig defaults)"
        else:
            folder = MEASURED_RIRS if cfg.rir == "auto" else Path(cfg.rir)
            shown = "../shared/data/rirs/audio" if cfg.rir == "auto" else str(folder)  # no machine's absolute path
            bank, source = RIRBank.from_folder(folder, sample_rate), f"measured rooms: {shown}"
        bank_record = {"source": source, "n_irs": len(bank)}
        out.append(("rir", "bank", ApplyImpulseResponse(bank, p=1.0)))
    out += [("noise", f"{s:g} dB", AddNoise((float(s), float(s)), kind="white", p=1.0)) for s in cfg.snr_db]
    out += [("gain", f"{g:+g} dB", Gain((float(g), float(g)), p=1.0)) for g in cfg.gain_db]
    d = SpecAugment()
    for m in cfg.masks:
        c = d.config
        out.append(("mask", m, SpecAugment(c.n_time_masks, c.max_time_frames, 0, c.max_freq_bins) if m == "time"
                    else SpecAugment(0, c.max_time_frames, c.n_freq_masks, c.max_freq_bins)))
    for _, _, t in out:
        t.train()  # in eval mode augcl's transforms pass the input through
    return out, bank_record


# --- windows of in-memory clips -------------------------------------------------------------------------------

def clip_windows(wave: Tensor, lengths: Tensor, windows: Windows) -> tuple[Tensor, Tensor, Tensor]:
    """The probe's windows of zero-padded clips ``(N, T)`` with ``lengths`` ``(N,)`` valid samples: the windows
    ``(W, width)`` (zeros beyond each clip's ends: padding past ``lengths`` is never read), the clip of each ``(W,)``
    and its valid frames ``(W,)`` (frames whose centre lies inside the clip, at least 1)."""
    n = lengths.to(torch.long).cpu()
    clip, start = (torch.from_numpy(a) for a in window_starts(n.numpy(), windows.segment))
    pos = start[:, None] - windows.context + torch.arange(windows.width)   # sample index in the clip
    inside = (pos >= 0) & (pos < n[clip][:, None])
    clip_d, pos_d = clip.to(wave.device), pos.clamp(0, wave.shape[-1] - 1).to(wave.device)
    x = wave[clip_d[:, None], pos_d] * inside.to(wave.device, wave.dtype)
    hop = windows.mel.config.hop_length
    frames = ((n[clip] - start + hop - 1) // hop).clamp(1, windows.frames)
    return x, clip, frames


class Reps(nn.Module):
    """Every representation of a batch of log-mel windows: ``{name: (W, D)}`` per window (means come later)."""

    def __init__(self, models: dict[str, ContrastiveModel], logmel: bool):
        super().__init__()
        self.models = nn.ModuleDict(models)
        self.logmel = logmel

    @torch.no_grad()
    def forward(self, x: Tensor, frames: Tensor) -> dict[str, Tensor]:
        out = {}
        for key, model in self.models.items():
            prefix = {"pretrained": "", "random_init": "random_"}.get(key, key + ":")
            h = model.encoder(x).float()
            out[prefix + "h"], out[prefix + "z"] = h, model.projection(h).float()
        if self.logmel:  # mean over the window's valid frames only
            valid = (torch.arange(x.shape[-1], device=x.device) < frames.to(x.device)[:, None]).to(x.dtype)
            out["logmel"] = (x[:, 0] * valid[:, None]).sum(-1) / valid.sum(-1, keepdim=True)
        return out


def clip_means(per_window: Tensor, clip: Tensor, n_clips: int) -> Tensor:
    """``(W, D)`` window values and their clips -> ``(n_clips, D)`` float64 means."""
    total = torch.zeros(n_clips, per_window.shape[1], dtype=torch.float64).index_add_(
        0, clip, per_window.double().cpu())
    return total / torch.bincount(clip, minlength=n_clips).clamp_min(1).double()[:, None]


def read_clips(store: PackedStore, idx: np.ndarray, gains: np.ndarray) -> tuple[Tensor, Tensor]:
    """Clips ``idx`` as float32 ``(N, max length)`` zero-padded, level-normalised by ``gains``, and their lengths."""
    lengths = store.length[idx].astype(np.int64)
    out = np.zeros((len(idx), int(lengths.max())), np.float32)
    for row, i in enumerate(idx.tolist()):
        out[row, :lengths[row]] = store.clip(i) * np.float32(gains[i] / INT16_SCALE)
    return torch.from_numpy(out), torch.from_numpy(lengths)


def altered_windows(store: PackedStore, idx: np.ndarray, gains: np.ndarray, windows: Windows, device,
                    cfg: InvarianceConfig, wave_t: Optional[nn.Module] = None, mask_t: Optional[nn.Module] = None,
                    generator: Optional[torch.Generator] = None):
    """Yield ``(log-mels (w, 1, n_mels, frames), valid frames (w,), clip positions in idx (w,))``, at most
    ``window_batch`` windows at a time, of the clips ``idx`` altered by ``wave_t`` (a waveform transform, on each
    whole clip) or ``mask_t`` (on each window's log-mel), or neither. ``clip_batch`` clips are read at a time."""
    for a in range(0, len(idx), cfg.clip_batch):
        wave, lengths = read_clips(store, idx[a:a + cfg.clip_batch], gains)
        wave, lengths = wave.to(device), lengths.to(device)
        if wave_t is not None:
            out = wave_t(wave, lengths=lengths, generator=generator)
            wave, lengths = out if isinstance(out, tuple) else (out, lengths)
        x, clip, frames = clip_windows(wave, lengths, windows)
        for b in range(0, len(x), cfg.window_batch):
            spec = windows(x[b:b + cfg.window_batch])
            fr = frames[b:b + cfg.window_batch]
            if mask_t is not None:
                spec = mask_t(spec, lengths=fr.to(device), generator=generator)
            yield spec, fr, clip[b:b + cfg.window_batch] + a


@torch.no_grad()
def embed(store: PackedStore, idx: np.ndarray, gains: np.ndarray, windows: Windows, reps: Reps, device,
          cfg: InvarianceConfig, wave_t: Optional[nn.Module] = None, mask_t: Optional[nn.Module] = None,
          generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
    """Clip-level representations ``{name: (N, D)}`` float64 of the clips ``idx``, altered as
    :func:`altered_windows` says; memory: one window batch plus one vector per window and representation."""
    parts: dict[str, list] = {}
    for spec, frames, clip in altered_windows(store, idx, gains, windows, device, cfg, wave_t, mask_t, generator):
        for name, v in reps(spec, frames).items():
            parts.setdefault(name, []).append((v.cpu(), clip))
    return {name: clip_means(torch.cat([v for v, _ in p]), torch.cat([c for _, c in p]), len(idx))
            for name, p in parts.items()}


# --- metrics --------------------------------------------------------------------------------------------------

def retrieval_metrics(original: Tensor, altered: Tensor, ks: Sequence[int] = (1, 5)) -> dict:
    """Invariance of one representation to one nuisance, from ``original`` and ``altered`` ``(N, D)`` clips (row i
    of each is clip i): mean cos(original_i, altered_i) (``cos_same``), mean cos(original_i, original_j), i != j
    (``cos_diff``), ``score`` = (cos_same - cos_diff) / (1 - cos_diff), and ``top{k}``: the fraction of altered
    copies whose own original ranks among the k originals of highest cosine to them (ties counted against).
    Float64; an all-zero vector has cosine 0 to everything."""
    o = F.normalize(original.double(), dim=1, eps=1e-300)
    a = F.normalize(altered.double(), dim=1, eps=1e-300)
    n = o.shape[0]
    sim = a @ o.T
    same = sim.diagonal()
    gram = o @ o.T
    cos_diff = float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1))) if n > 1 else float("nan")
    cos_same = float(same.mean())
    others = sim.masked_fill(torch.eye(n, dtype=torch.bool), -math.inf)
    rank = (others >= same[:, None]).sum(1)  # originals at least as close as the copy's own
    out = {"cos_same": cos_same, "cos_diff": cos_diff,
           "score": (cos_same - cos_diff) / (1 - cos_diff) if n > 1 and cos_diff < 1 else float("nan")}
    return out | {f"top{k}": float((rank < k).double().mean()) for k in ks}


# --- the run --------------------------------------------------------------------------------------------------

def _models(cfg: InvarianceConfig, checkpoints: Optional[dict] = None) -> tuple[dict, str, str]:
    """The models to measure (``pretrained``, or one per label of ``checkpoints``; ``random_init``: the
    architecture of ``cfg.checkpoint`` with fresh weights), the preset and the normalisation."""
    ckpt = common.read_checkpoint(cfg.checkpoint, "--checkpoint")
    c = ckpt["config"]

    def build(config: dict) -> ContrastiveModel:
        return ContrastiveModel(config["dim"], config["pooling"], config.get("bilinear_init", "identity"),
                                config.get("encoder", "efficientnet_b0"))

    models = {}
    if "pretrained" in cfg.models:
        for label, path in (checkpoints or {"pretrained": cfg.checkpoint}).items():
            other = common.read_checkpoint(path, "--checkpoint")
            common.require(other["config"]["preset"] == c["preset"] or
                           PRESETS[other["config"]["preset"]](16000).mel == PRESETS[c["preset"]](16000).mel,
                           f"checkpoint {path} has another front end than {cfg.checkpoint}")
            models[label] = build(other["config"])
            models[label].load_state_dict(other["model"])
    if "random_init" in cfg.models:
        common.seed_everything(cfg.seed)
        models["random_init"] = build(c)
    for m in models.values():
        m.eval()
    return models, c["preset"], cfg.normalize or c.get("normalize", "none")


def check(cfg: InvarianceConfig) -> None:
    """Every argument checked before any work: a :class:`~trainer.common.UsageError` naming it and the fix."""
    req = common.require
    req(cfg.checkpoint is not None, "--checkpoint is required (a pretrain last.pt; random_init and logmel take its "
                                    "architecture and front end)")
    common.read_checkpoint(cfg.checkpoint, "--checkpoint")
    bad = sorted(set(cfg.models) - set(MODELS))
    req(not bad and len(cfg.models) > 0, f"--models must be some of {MODELS}, got {list(cfg.models)}")
    for r in cfg.stretch_rates:
        req(math.isfinite(r) and 0.5 <= r <= 2.0, f"--stretch-rates must lie in [0.5, 2] (the vocoder's range), got {r}")
    for s in cfg.snr_db:
        req(math.isfinite(s) and -30 <= s <= 100, f"--snr-db must be finite numbers in [-30, 100] dB, got {s}")
    for g in cfg.gain_db:
        req(math.isfinite(g) and abs(g) <= 40, f"--gain-db must be finite numbers in [-40, 40] dB, got {g}")
    bad = sorted(set(cfg.masks) - set(MASKS))
    req(not bad, f"--masks must be some of {MASKS}, got {list(cfg.masks)}")
    req(cfg.rir in ("auto", "simulated", "none") or Path(cfg.rir).is_dir(),
        f"--rir must be auto, simulated, none or a folder of IR audio files; {cfg.rir!r} is none of these")
    req(cfg.normalize is None or cfg.normalize in NORMALIZE,
        f"--normalize must be one of {NORMALIZE}, got {cfg.normalize!r}")
    req(cfg.max_clips >= 0, f"--max-clips must be >= 0 (0: all), got {cfg.max_clips}")
    for name in ("window_batch", "clip_batch", "builtin_test"):
        req(getattr(cfg, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    req(cfg.seed >= 0, f"--seed must be >= 0, got {cfg.seed}")
    common.resolve_threads(cfg.threads)
    if cfg.data != "builtin":
        req(Path(cfg.data).is_dir(), f"--data {cfg.data!r} does not exist; pass a packed store "
                                     "(python -m trainer.pack) or 'builtin'")


def open_store(cfg: InvarianceConfig) -> PackedStore:
    root = cfg.data
    if cfg.data == "builtin":
        root = common.resolve_store("builtin", "test", Path(cfg.out), BuiltinConfig(n_test=cfg.builtin_test))
    try:
        store = PackedStore(root)
    except ValueError as e:
        raise common.UsageError(f"--data: {e}") from None
    common.require(len(store) >= 2, f"--data {str(root)!r} holds {len(store)} clip(s); retrieval needs at least 2")
    return store


def invariance(cfg: InvarianceConfig, checkpoints: Optional[dict[str, str]] = None) -> dict:
    """Measure every representation's invariance to every nuisance level; write JSON, markdown and PNG.

    ``checkpoints`` ``{label: path}``: measure several pretrained models on the same altered copies in one pass
    (their representations are named ``label:h``, ``label:z``); they must share ``cfg.checkpoint``'s front end."""
    check(cfg)
    device, out, t0 = common.start_command(cfg.threads, cfg.device, cfg.out)
    store = open_store(cfg)
    n = len(store) if cfg.max_clips == 0 else min(cfg.max_clips, len(store))
    common.require(n >= 2, f"--max-clips {cfg.max_clips} leaves {n} clip; retrieval needs at least 2")
    idx = np.arange(n)
    models, preset, normalize = _models(cfg, checkpoints)
    windows = Windows(preset, store.sample_rate).to(device)
    reps = Reps(models, "logmel" in cfg.models).to(device)
    gains = store.gains(normalize)
    levels, bank = nuisances(cfg, store.sample_rate)
    for model in models.values():  # BN statistics of the originals' windows, as the probe re-estimates them
        recompute_batchnorm(model.encoder, (spec for spec, _, _ in
                                            altered_windows(store, idx, gains, windows, device, cfg)))
    original = embed(store, idx, gains, windows, reps, device, cfg)
    results: dict[str, dict] = {name: {} for name in original}
    for k, (kind, level, t) in enumerate(tqdm(levels, desc="invariance", leave=False)):
        g = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + k)
        t = t.to(device)
        alt = embed(store, idx, gains, windows, reps, device, cfg, generator=g,
                    **({"mask_t": t} if kind == "mask" else {"wave_t": t}))
        for name in original:
            results[name][f"{kind}@{level}"] = retrieval_metrics(original[name], alt[name])
    result = {"checkpoint": cfg.checkpoint, "checkpoints": checkpoints, "data": str(store.root), "n_clips": n, "preset": preset,
              "normalize": normalize, "rir_bank": bank, "nuisances": [f"{k}@{lv}" for k, lv, _ in levels],
              "representations": list(results), "chance": {"top1": 1 / n, "top5": min(5 / n, 1.0)},
              "results": results, "config": asdict(cfg) | {"models": list(cfg.models)},
              "seconds": time.perf_counter() - t0}
    common.write_json(out / "invariance.json", result)
    (out / "invariance.md").write_text(markdown(result))
    plot_top1({REP_NAMES.get(r, r): {nu: m["top1"] for nu, m in results[r].items()} for r in results},
              result["chance"]["top1"], out / "invariance.png",
              f"top-1 retrieval of the altered copy among {n} originals")
    print(f"invariance of {len(results)} representation(s) to {len(levels)} nuisance levels over {n} clips in "
          f"{result['seconds']:.0f} s. Wrote {out}/invariance.json, invariance.md, invariance.png")
    return result


def markdown(result: dict) -> str:
    n = result["n_clips"]
    lines = [f"# Invariance on {n} clips of `{result['data']}`", "",
             f"Checkpoint `{result['checkpoint']}`; RIR bank: {result['rir_bank']['source']}. Chance: top-1 "
             f"{result['chance']['top1']:.3f}, top-5 {result['chance']['top5']:.3f}. score = (cos same - cos diff) / "
             "(1 - cos diff).", ""]
    for rep, by_nuisance in result["results"].items():
        lines += [f"## {REP_NAMES.get(rep, rep)}", "", "| nuisance | cos same | cos diff | score | top-1 | top-5 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for nu, m in by_nuisance.items():
            lines.append(f"| {nu} | {m['cos_same']:.3f} | {m['cos_diff']:.3f} | {m['score']:.3f} | "
                         f"{m['top1']:.3f} | {m['top5']:.3f} |")
        lines.append("")
    return "\n".join(lines + ["![top-1 retrieval](invariance.png)", ""])


def plot_top1(series: dict[str, dict[str, float]], chance: float, path: Path, title: str,
              errors: Optional[dict[str, dict[str, float]]] = None) -> Path:
    """Grouped bars: one group per nuisance level, one bar per representation; ``errors``: error bars (std)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(series.values())))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(names) + 2), 4.5))
    for k, (label, values) in enumerate(series.items()):
        x = np.arange(len(names)) + (k - (len(series) - 1) / 2) * width
        err = None if errors is None else [errors[label][nu] for nu in names]
        ax.bar(x, [values[nu] for nu in names], width, yerr=err, label=label, capsize=2)
    ax.axhline(chance, color="k", ls=":", lw=1, label="chance")
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("top-1")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars reach every height
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: the flags' help texts (the fields' meaning is in :class:`InvarianceConfig`)
HELP = {"checkpoint": "a pretrain checkpoint (last.pt)", "data": "a packed store, or builtin (the built-in test split)",
        "models": f"some of {MODELS}", "rir": "auto (measured rooms if present, else simulated), simulated, none, "
        "or a folder of IR audio files", "snr_db": "white-noise SNRs", "masks": f"some of {MASKS}",
        "max_clips": "the first N clips; 0: all", "normalize": f"one of {NORMALIZE}; default the checkpoint's",
        "threads": "torch CPU threads; 0: the default, 1"}


def parse_args(argv: Optional[Sequence[str]] = None) -> InvarianceConfig:
    p = cli.parser(InvarianceConfig, "python -m trainer.invariance", __doc__, help=HELP, nargs={"models": "+"})
    return cli.parse(p, InvarianceConfig, argv)[0]


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return common.run_cli(lambda a: invariance(parse_args(a)), argv, "trainer.invariance")


if __name__ == "__main__":
    main()
