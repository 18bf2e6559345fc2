"""PairAugmenter: the paper's augmentation module as one ``nn.Module``.

For a batch of clips ``(B, T)`` it returns, per clip, an *anchor* and a *positive* log-mel ``(B, 1, 64, 96)``
from two independently placed segments of the same clip (the positives of the other clips are the negatives
of the loss). Each branch runs the blocks its :class:`BranchConfig` enables, in this fixed order::

    segment (after time stretch) -> gain -> extra waveform transforms -> RIR -> noise -> log-mel -> time/freq masks

All per-example parameters of a batch are drawn first, at once, from one ``torch.Generator`` on the batch's
device (``sample``), then applied (``apply``); both are public, so a batch can be replayed from ``pair.params``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from . import functional as AF
from . import kernels
from .banks import NoiseBank, RIRBank
from .mel import _writable
from .core import check_generator, check_traceable_draw, draw_device
from .transforms import (AddNoise, ApplyImpulseResponse, Gain, GainConfig, LogMel, MaskConfig, MelConfig, NoiseConfig,
                         RandomSegment, RIRConfig, SpecAugment, StretchConfig)


@dataclass(frozen=True)
class BranchConfig:
    """The blocks of one branch (anchor or positive); ``None`` disables a block."""

    stretch: Optional[StretchConfig] = None
    rir: Optional[RIRConfig] = None
    noise: Optional[NoiseConfig] = None
    mask: Optional[MaskConfig] = None
    gain: Optional[GainConfig] = None  # random gain right after the cut (off in every preset)


@dataclass(frozen=True)
class PairConfig:
    """Everything PairAugmenter does. Defaults: the paper's best preset, ``ts+mask``.

    ``segment_frames``: log-mel frames per segment (96; the segment length in samples follows from ``mel``).
    ``segment_length``: samples per segment, if not the least that gives ``segment_frames`` frames.
    ``normalize_clip``: L2-normalize each whole clip (its valid samples) before cropping (COLA's code).

    Clip lengths (``lengths=`` of :class:`PairAugmenter`): a segment starts inside its clip's valid part (in the
    stretched timeline), so no segment is pure padding. A clip shorter than a segment starts at 0: the clip
    sits at the segment's start and the rest of the segment is zeros.
    """

    sample_rate: int = 16000
    segment_frames: int = 96
    mel: MelConfig = field(default_factory=MelConfig)
    anchor: BranchConfig = field(default_factory=lambda: BranchConfig(noise=NoiseConfig()))
    positive: BranchConfig = field(default_factory=lambda: BranchConfig(stretch=StretchConfig(), mask=MaskConfig()))
    normalize_clip: bool = False
    segment_length: Optional[int] = None

    @property
    def segment_samples(self) -> int:
        """Samples per segment: ``segment_length`` if set (COLA crops 1 s), else the least that gives the frames."""
        return self.segment_length if self.segment_length is not None else self.mel.segment_samples(self.segment_frames)


def _paper(**positive) -> Callable[[int], PairConfig]:
    return lambda sr: PairConfig(sample_rate=sr, anchor=BranchConfig(noise=NoiseConfig()), positive=BranchConfig(**positive))


#: Named configurations: one per row of the paper's Tables 1 and 2, plus ``all`` and COLA's own choices.
PRESETS: dict[str, Callable[[int], PairConfig]] = {
    "noise": _paper(),
    "ts": _paper(stretch=StretchConfig()),
    "rir": _paper(rir=RIRConfig()),
    "mask": _paper(mask=MaskConfig()),
    "ts+mask": _paper(stretch=StretchConfig(), mask=MaskConfig()),
    "all": _paper(stretch=StretchConfig(), rir=RIRConfig(), mask=MaskConfig()),
    # COLA's public code: whole-clip L2 normalization, Gaussian noise (std 1e-3) on the positive, n_fft 1024
    # with a 400-sample window, uncentred frames, log of the clipped mel magnitude, 98 frames per 1-s crop.
    "cola": lambda sr: PairConfig(
        sample_rate=sr,
        segment_frames=98,
        segment_length=sr,
        mel=MelConfig(n_fft=1024, win_length=400, center=False, power=1.0, log_eps=1e-5, log_mode="clamp"),
        anchor=BranchConfig(),
        positive=BranchConfig(noise=NoiseConfig(std=1e-3)),
        normalize_clip=True,
    ),
}


#: Rows whose L2 norm exceeds this are augmented divided by a power of two, their log-mels shifted back. Below it every
#: power stays far inside float32: a frame's spectrum is at most ||window|| ||x|| < 13 * 2 ** 40, times
#: ||rir||_1 <= sqrt(16000) for an IR of 1 s, 2 (+6 dB gain) and 32 (an SNR of -30 dB): squared, < 1e36 < 3.4e38.
SCALE_ABOVE = 2.0 ** 40

#: Clips a branch processes at a time on a CPU. The whole batch's temporaries (B=128: ~20 MB each) outrun the
#: caches and make the allocator map fresh pages on every call; chunks of 32 were the fastest of 8-128 for
#: ``ts+mask`` and ``all`` on a 2-core CPU (``python -m benchmarks.throughput --chunk-sizes ...`` before the kernels:
#: ts+mask 58 -> 41 ms a B=128 batch; docs/guide.md, "Chunks"; chunks.md now holds a run with the kernels).
CPU_CHUNK = 32
#: the same with the CPU kernels (``backend="auto"`` with Numba, or ``"kernels"``) for every branch but those the fused
#: kernels compute whole (:meth:`Branch.fused`): the vocoder's, RIR's, a plain crop's, other noises', extra
#: transforms' temporaries, or frames where the fused log-mel has no plan (float64, other ``n_fft``). A branch the fused
#: kernels compute whole (the anchor's crop + noise + log-mel, the positive's stretched frames + log-mel: no frames,
#: spectra or segments written) runs the whole batch at once: fewer, larger kernel calls cost less Python and fewer
#: thread wake-ups. ``python -m benchmarks.throughput --presets ts+mask all --repeats 15 --chunk-sizes 32 48 64 128``
#: (docs/benchmarks/chunks.md; one size for both branches) on a 2-core CPU: ts+mask (both branches fused) 28 ms a
#: B=128 batch at 128, 30-33 ms at 32-64; all 99 ms at 48 and 64, 102 at 32 (within the runs' spread), 121 at 128
#: (its vocoder's and RIR's temporaries outrun the caches). The default mix (all's anchor whole, its positive in 64s)
#: is what ``python -m benchmarks.augment`` times.
KERNEL_CHUNK = 64


class Pair(NamedTuple):
    """Anchor and positive log-mels ``(B, 1, n_mels, frames)``, every per-example parameter applied (``params``: the
    draws and the ``lengths`` they were drawn for, what a replay needs), and ``finite`` ``(B,)`` bool: which rows of
    the input were free of NaN/Inf (a property of the batch, not a draw)."""

    anchor: Tensor
    positive: Tensor
    params: dict
    finite: Tensor


class Branch(nn.Module):
    """One branch of the pipeline; ``sample`` draws, ``apply`` computes ``(B, 1, n_mels, frames)``."""

    def __init__(self, config: BranchConfig, pair: PairConfig, mel: LogMel, extra: Sequence[nn.Module] = (),
                 rir_bank: Optional[RIRBank] = None, noise_bank: Optional[NoiseBank] = None, backend: str = "auto"):
        super().__init__()
        sr = pair.sample_rate
        self.config = config
        self.sample_rate = sr
        self.segment = RandomSegment(pair.segment_samples, stretch=config.stretch, context=mel.context, backend=backend)
        self.extra = nn.ModuleList(extra)
        waveform_blocks = [n for n, on in (("extra transforms", len(extra)), ("rir", config.rir), ("noise", config.noise)) if on]
        method = config.stretch.method if config.stretch is not None else "vocoder"
        if method == "spectral" and waveform_blocks:
            raise ValueError(f"stretch.method='spectral' makes no waveform, but this branch applies "
                             f"{', '.join(waveform_blocks)} after the stretch; use method='vocoder' or 'auto'")
        #: the stretched segment goes straight to the log-mel: read its frames at the stretched positions
        self.spectral = method in ("auto", "spectral") and not waveform_blocks
        self.rir = (ApplyImpulseResponse.from_config(config.rir, rir_bank, sr, backend)
                    if config.rir is not None else None)
        self.noise = AddNoise.from_config(config.noise, noise_bank, sr, backend) if config.noise is not None else None
        self.gain = Gain.from_config(config.gain) if config.gain is not None else None
        self.mel = mel
        self.mask = SpecAugment.from_config(config.mask) if config.mask is not None else None
        self.frames = pair.segment_frames

    def fused(self, x: Tensor) -> bool:
        """Whether the CPU kernels compute this branch's mel energies of ``x`` whole, in one fused kernel (crop + white
        noise + log-mel, or stretched frames + log-mel), writing no frames, spectra or segments."""
        n_fft = self.mel.config.n_fft
        if self.spectral:
            return self.mel._kernel_filterbank(x) is not None and kernels.fused_mel(n_fft, AF.work_dtype(x.dtype))
        return self._fused_noise(x) and kernels.fused_mel(n_fft, x.dtype)

    def _fused_noise(self, x: Tensor) -> bool:
        """Whether this branch is a plain segment + white noise at an SNR -> log-mel, run by the CPU kernels."""
        noise = self.noise
        return (noise is not None and noise.config.kind == "white" and noise.config.std is None
                and self.segment.stretch is None and self.rir is None and self.gain is None and not len(self.extra)
                and x.dtype == torch.float32 and self.mel._kernel_filterbank(x) is not None
                and kernels.use_kernels(noise.backend, x.device) and self.mel.config.center)

    @property
    def param_keys(self) -> tuple:
        """The keys ``sample`` returns."""
        blocks = (self.segment, self.gain, self.rir, self.noise, self.mask)
        return tuple(k for block in blocks if block is not None for k in block.param_keys)

    def sample(self, batch: int, length: int, generator=None, device=None, lengths: Optional[Tensor] = None) -> dict:
        params = dict(self.segment.sample(batch, length, generator, device, lengths))
        for block in (self.gain, self.rir, self.noise):
            if block is not None:
                params.update(block.sample(batch, self.segment.output_samples, generator, device))
        if self.mask is not None:
            params.update(self.mask.sample(batch, self.mel.config.n_mels, self.frames, generator, device))
        return params

    def apply(self, x: Tensor, params: dict) -> Tensor:
        """The branch's log-mels ``(B, 1, n_mels, frames)`` of clips ``x`` with ``params``, masked: the log of
        :meth:`mel_energy`, then the masks. (Clips too loud for float32 powers are :class:`PairAugmenter`'s to rescue.)"""
        spec = self.mel_energy(x, params, log=True)
        return self.mask.apply(spec, params) if self.mask is not None else spec

    def mel_energy(self, x: Tensor, params: dict, scale: Optional[Tensor] = None,
                   out: Optional[Tensor] = None, log: bool = False) -> Tensor:
        """The branch's mel energies ``(B, 1, n_mels, frames)`` of clips ``x`` with ``params`` (before the log and the
        masks). ``out``: where the CPU kernels may write them (returned then; otherwise a new tensor). ``log``: their
        log instead (:meth:`LogMel.log` without ``log_gain``), taken in the fused CPU kernel where it runs.

        ``params["lengths"]`` ``(B,)`` (optional): valid samples per clip; samples of ``x`` past them are read as zeros
        (whatever they hold), and the noise is measured over and added to the samples of the segment inside the clip
        only. ``scale`` ``(B,)`` (optional): ``x`` holds the clips divided by it (PairAugmenter's overflow rescue); only
        a noise of fixed ``std`` reads it (its std is in the clips' units); every other block is linear in the clip.
        """
        lengths = params.get("lengths")
        into = None if out is None else out[:, 0]
        if self.spectral:
            fused_log = log and self.gain is None
            mel = self.segment.stretched_mel(x, params, self.mel, self.frames, lengths=lengths, out=into, log=fused_log)
            if self.gain is not None:  # a per-row scale commutes with the stretch: scale the energies
                factor = self.gain.factor(params).to(device=mel.device, dtype=mel.dtype)
                mel = mel.mul_(factor.pow(self.mel.config.power).reshape(-1, 1, 1))
            return (self.mel.log(mel) if log and not fused_log else mel).unsqueeze(1)
        if self._fused_noise(x):  # the CPU kernels: crop and noise in one pass, then the fused log-mel (or frames)
            mel, seg = self.mel, self.segment
            c = mel.config
            if kernels.fused_mel(c.n_fft, x.dtype):  # segments of exactly this branch's frames, made in the cache
                got = kernels.noisy_mel(x, params["start"] - seg.context, self.frames, c.hop_length, mel.window,
                                        params["noise_seed"], params["snr_db"], params["noise_applied"], c.n_fft,
                                        mel._kernel_filterbank(x), c.power, lengths,
                                        _writable(into, (x.shape[0], c.n_mels, self.frames), torch.float32),
                                        mel._kernel_log(log))
                return got.unsqueeze(1)
            frames = kernels.noisy_frames(
                x, params["start"] - seg.context, self.frames, c.hop_length, mel.window, params["noise_seed"],
                params["snr_db"], params["noise_applied"], lengths)
            energy = mel.windowed_mel(frames, out=into)
            return (mel.log(energy) if log else energy).unsqueeze(1)
        y = self.segment.apply(x, params, lengths=lengths)
        if self.gain is not None:
            y = self.gain.apply(y, params)
        for t in self.extra:
            res = t(y.unsqueeze(1), sample_rate=self.sample_rate)
            y = (res.samples if hasattr(res, "samples") else res).reshape(y.shape).to(y.dtype)
        if self.rir is not None:
            y = self.rir.apply(y, params)
        if self.noise is not None:
            valid = self.segment.valid_mask(params, lengths) if lengths is not None else None
            y = self.noise.apply(y, params, valid, scale=scale)
        return self.mel.mel_from_context(y, log=log).unsqueeze(1)


class PairAugmenter(nn.Module):
    """The paper's augmentation module: ``wave (B, T) or (B, 1, T)`` -> :class:`Pair`.

    Example::

        aug = PairAugmenter.from_preset("ts+mask", sample_rate=16000).to(device)
        g = torch.Generator(device=device).manual_seed(0)
        pair = aug(wave, generator=g)           # pair.anchor, pair.positive: (B, 1, 64, 96)
        pair = aug(wave, generator=g, lengths=lengths)   # lengths (B,): valid samples per row (zero-padded batch)

    ``lengths`` (long ``(B,)``, on ``wave``'s device; default: every row fully valid): samples of a row past its
    length are treated as zeros (masked), each segment starts inside its clip's valid part (in the stretched
    timeline), and the noise's SNR is measured over, and the noise added to, the segment's valid samples only. A clip
    shorter than a segment sits at the segment's start, the rest being zeros. ``pair.params["lengths"]`` records
    them (``T`` for every row when none are given), so ``aug(wave, params=pair.params)`` replays the batch exactly.
    ``pair.finite`` ``(B,)`` bool: which rows of ``wave`` were free of NaN/Inf (see ``check_finite``).

    Args:
        config: a :class:`PairConfig` (see :data:`PRESETS`).
        anchor_extra, positive_extra: extra waveform transforms applied to that branch's segment right after
            it is cut, e.g. torch-audiomentations transforms (called as ``t(x, sample_rate=sr)`` on
            ``(B, 1, samples)``). They draw from their own (global) RNG, so their parameters are not in
            ``pair.params`` and a replay does not repeat them.
        rir_bank, noise_bank: banks to use instead of the ones the config names.
        check_finite: raise a ValueError on NaN/Inf input and on ``lengths`` outside ``[1, T]``. Default (None): on
            a CPU only, where it costs no sync. Whatever it says, ``pair.finite`` ``(B,)`` bool records
            which rows of the input were finite, on every device and without a host sync: a caller on an
            accelerator reads it where it syncs anyway (the trainer does, with its once-a-step log, and raises
            naming the rows); a non-finite row's anchor and positive are NaN, the other rows are unaffected.
            ``True`` on an accelerator raises at once, at the cost of a host sync; under ``torch.compile`` it is a
            device-side assert (docs/guide.md, "torch.compile"). Finite input of any magnitude
            gives finite output: rows too loud for float32 powers are augmented divided by a power of two
            (:data:`SCALE_ABOVE`).
        chunk_size: clips each branch processes at a time. Default (None): on a CPU with the kernels, the whole batch
            for a branch the fused kernels compute whole (:meth:`Branch.fused`) and :data:`KERNEL_CHUNK` for the others;
            :data:`CPU_CHUNK` without the kernels; the whole batch elsewhere. Parameters are drawn for the whole batch
            first either way, and the output does not depend on it; it only bounds the size of the temporaries.
        backend: ``"torch"`` (the :mod:`augcl.functional` reference), ``"kernels"`` (the fused kernels of
            :mod:`augcl.kernels`; an error if none runs on the input's device) or ``"auto"`` (kernels where they
            are installed and measured faster on that device, else torch). The CPU kernels: the whole log-mel
            (framing, its own real FFT, power, mel projection), the anchor's crop + white noise, the stretched
            frames, the whole vocoder, the input check's row norms, the masks (in place) and the RIR's spectral
            product (in place, the bank's rows not gathered); gains and the vocoder's and RIR's FFTs are the
            reference on every backend (the CPU kernels are host code: on an
            accelerator ``auto`` is the reference). Under ``torch.compile`` every backend traces the reference
            (:func:`augcl.kernels.use_kernels`).
    """

    def __init__(self, config: PairConfig = PairConfig(), *, anchor_extra: Sequence[nn.Module] = (),
                 positive_extra: Sequence[nn.Module] = (), rir_bank: Optional[RIRBank] = None,
                 noise_bank: Optional[NoiseBank] = None, check_finite: Optional[bool] = None, backend: str = "auto",
                 chunk_size: Optional[int] = None):
        super().__init__()
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None (the device's default), got {chunk_size!r}")
        if config.segment_frames < 1:
            raise ValueError(f"segment_frames must be >= 1, got {config.segment_frames}")
        if config.segment_samples < config.mel.segment_samples(config.segment_frames):
            raise ValueError(f"segment_length {config.segment_samples} gives fewer than segment_frames="
                             f"{config.segment_frames} frames; use at least {config.mel.segment_samples(config.segment_frames)}")
        self.config = config
        self.check_finite = check_finite
        self.chunk_size = chunk_size
        mel = LogMel(config.mel, config.sample_rate, backend=backend)
        self.backend = backend
        self.anchor = Branch(config.anchor, config, mel, anchor_extra, rir_bank, noise_bank, backend)
        self.positive = Branch(config.positive, config, mel, positive_extra, rir_bank, noise_bank, backend)

    @classmethod
    def from_preset(cls, name: str, sample_rate: int = 16000, **kwargs) -> "PairAugmenter":
        """A PairAugmenter for a named preset (:data:`PRESETS`); ``kwargs`` go to the constructor."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(PRESETS[name](int(sample_rate)), **kwargs)

    @property
    def segment_samples(self) -> int:
        return self.config.segment_samples

    def _source_length(self, length: int) -> int:
        """Pad short clips so that every segment (stretched or not) lies inside the clip."""
        return max(length, self.anchor.segment.min_clip_length, self.positive.segment.min_clip_length)

    def param_keys(self) -> set:
        """The keys of :meth:`sample`'s dict: each branch's draws, prefixed, and ``lengths``."""
        keys = {f"{name}.{k}" for name, branch in (("anchor", self.anchor), ("positive", self.positive))
                for k in branch.param_keys}
        return keys | {"lengths"}

    def sample(self, batch: int, length: int, generator: Optional[torch.Generator] = None, device=None,
               lengths: Optional[Tensor] = None) -> dict:
        """Draw every per-example parameter for a batch of ``batch`` clips of ``length`` samples.

        ``lengths`` ``(B,)``: valid samples per clip (default: ``length`` for all); each segment starts inside its
        clip's valid part, and a clip shorter than a segment starts at 0. Keys are prefixed ``anchor.`` and
        ``positive.``, plus ``lengths`` (long ``(B,)``: the valid samples the draws were made for, ``length`` for every
        row when none are given; a replay reads the clips with them); values are tensors with leading dimension
        ``batch``, on ``device`` (default: the generator's device, else the CPU).
        """
        check_generator(generator)
        check_traceable_draw(generator)
        device = draw_device(generator, device)
        if lengths is None:
            lengths = torch.full((batch,), length, dtype=torch.long, device=device)
        out = {}
        for name, branch in (("anchor", self.anchor), ("positive", self.positive)):
            drawn = branch.sample(batch, length, generator, device, lengths)
            out.update({f"{name}.{k}": v for k, v in drawn.items()})
        out["lengths"] = lengths.to(torch.long, copy=True)  # a copy: the caller may refill its buffer
        return out

    def check_params(self, params, wave: Tensor) -> None:
        """Raise a named error unless ``params`` were drawn by this augmenter for ``wave`` ``(B, T)``: the keys
        :meth:`sample` gives, a tensor per key with ``B`` rows on ``wave``'s device. Shapes and keys only: no host sync
        (``params["lengths"]`` in ``[1, T]`` is checked with the lengths, where ``check_finite`` checks them)."""
        redraw = "pass params drawn by this augmenter for this batch (pair.params), or params=None to draw new ones"
        if not isinstance(params, dict):
            raise TypeError(f"params must be the dict of a previous pair.params, got {type(params).__name__}; {redraw}")
        expected = self.param_keys()
        missing, extra = sorted(expected - params.keys()), sorted(params.keys() - expected)
        if "length" in params or "finite" in params:
            raise ValueError("params hold 'length' or 'finite': they come from an older augcl; draw them again with "
                             "this version (aug.sample(B, T, generator)), or pass params=None")
        if missing or extra:
            found = "; ".join(f"{what} {keys}" for what, keys in (("missing", missing), ("not its own", extra)) if keys)
            raise ValueError(f"params do not match this augmenter ({found}); {redraw}")
        B = wave.shape[0]
        for k, v in params.items():
            if not isinstance(v, Tensor) or v.ndim == 0:
                raise TypeError(f"params[{k!r}] must be a tensor with one row per clip, got "
                                f"{type(v).__name__ if not isinstance(v, Tensor) else 'a 0-d tensor'}; {redraw}")
            if v.shape[0] != B:
                raise ValueError(f"params[{k!r}] has {v.shape[0]} rows but wave has {B} clips; {redraw}")
            if v.device != wave.device:
                raise ValueError(f"params[{k!r}] is on {v.device} but wave is on {wave.device}; move them with "
                                 f"{{k: v.to(wave.device) for k, v in params.items()}}")

    def forward(self, wave: Tensor, generator: Optional[torch.Generator] = None, params: Optional[dict] = None,
                lengths: Optional[Tensor] = None) -> Pair:
        """Anchor and positive log-mels of every clip; ``params`` replays a batch drawn before (checked first by
        :meth:`check_params`), reading each clip's first ``params["lengths"]`` samples; ``lengths`` ``(B,)``: valid
        samples per row (default: all; with ``params``: theirs), recorded in the returned ``pair.params``."""
        x = AF.as_batch(wave)
        check_generator(generator)
        if generator is not None and generator.device.type != x.device.type:
            raise ValueError(f"generator is on {generator.device} but wave is on {x.device}; "
                             f"create it with torch.Generator(device=wave.device)")
        if params is not None:
            self.check_params(params, x)
        on_cpu = AF.cpu_branch(x.device)
        check = self.check_finite if self.check_finite is not None else on_cpu
        out_dtype = x.dtype
        x = x.to(AF.work_dtype(x.dtype))
        # one pass: the rows' norms find the rows too loud for float32 powers, and NaN/Inf (the check's sum before)
        fast = on_cpu and x.dtype == torch.float32 and kernels.use_kernels(self.backend, x.device)
        if fast:  # the kernels read NumPy views: one contiguous copy here, not one per kernel call (a no-op if it is)
            x = x.contiguous()
        row_norm = kernels.row_norms(x) if fast else torch.linalg.vector_norm(x, dim=-1)
        if check and (torch.compiler.is_compiling() or not bool(torch.isfinite(row_norm).all())):
            AF.check_finite(x)  # raises on NaN/Inf (traced: asserts); finite rows whose squares overflow pass
        B, T = x.shape
        if lengths is not None:
            lengths = AF.check_lengths(lengths, x, check_values=check)
        elif params is not None:  # a replay reads each clip's first params["lengths"] samples: they must fit this wave
            lengths = AF.check_lengths(params["lengths"], x, check_values=check, name="params['lengths']",
                                       what="the lengths the params were drawn for")
        # the overflow rescue, once before the branches and once after: rows too loud for float32 powers (|x| ** 2
        # overflows from |x| ~ 1.8e19) are augmented divided by a power of two (exact) and the log of their mel energies
        # taken with the scale added back (log_of_mel's log_gain); on a CPU, where reading the norms costs nothing, only
        # if there are any. The scale is NaN exactly for the rows holding NaN/Inf (their peaks are): the finite flag, free
        scale = None
        if not on_cpu or not bool((row_norm <= SCALE_ABOVE).all()):
            scale = AF.power_of_two_scale(x, SCALE_ABOVE, row_norm)
            x = x / scale.reshape(-1, 1)
            finite = torch.isfinite(scale)
        else:  # every norm is at most SCALE_ABOVE, so every row is finite
            finite = torch.ones(B, dtype=torch.bool, device=x.device)
        # samples past a row's length count as zeros, whatever the caller left there: the readers (crop, stretched
        # frames, vocoder analysis) mask the windows they read, so lengths cost the segments, not a pass over the batch
        if self.config.normalize_clip:
            # COLA's whole-clip L2 normalization, of the (rescued) clip: it leaves no scale to add back, and a noise of
            # fixed std is then in the normalized clip's units, as in COLA. With lengths the norm reads the row masked
            row = x if lengths is None else torch.where(AF.valid_mask(lengths, T), x, 0.0)
            norm = torch.linalg.vector_norm(row, dim=-1, keepdim=True).clamp_min(1e-8)
            x = x.div_(norm) if scale is not None else x / norm  # in place only where x is our own copy
            scale = None
        x = AF.pad_to_length(x, self._source_length(T))
        # the caller's dict is not modified; the returned one records (a copy of) the lengths this call used. No
        # lengths: every row is fully valid (one path: the same draws and output as lengths = T for all rows)
        params = (self.sample(B, T, generator, x.device, lengths) if params is None
                  else dict(params, lengths=lengths.clone()))
        valid = params["lengths"]
        log_gain = None if scale is None else self.config.mel.power * torch.log(scale)
        specs = []
        for name, branch in (("anchor", self.anchor), ("positive", self.positive)):
            prefix = name + "."
            p = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
            p["lengths"] = valid
            if log_gain is None:  # the log in the branch (in the fused kernel, with the energies still in the cache)
                spec = self._mel_energies(branch, x, p, scale, log=True)
            else:  # after the branches: the log, with the rescued rows' scale back
                spec = branch.mel.log(self._mel_energies(branch, x, p, scale), log_gain)
            if branch.mask is not None:  # then the masks, once for the batch (in place: spec is ours)
                spec = branch.mask.apply(spec, p, inplace=fast)
            specs.append(spec)
        return Pair(specs[0].to(out_dtype), specs[1].to(out_dtype), params, finite)

    def _mel_energies(self, branch: Branch, x: Tensor, params: dict, scale: Optional[Tensor],
                      log: bool = False) -> Tensor:
        """``branch``'s mel energies of the batch (``log``: their log), chunk by chunk (:meth:`chunks`). On the CPU branch
        the chunks' go straight into the batch's (the kernels write there: no concatenation); elsewhere they are
        concatenated."""
        parts = self.chunks(x, params, scale, branch)
        if not AF.cpu_branch(x.device):
            return torch.cat([branch.mel_energy(*chunk, log=log) for chunk in parts])
        spec = x.new_empty(x.shape[0], 1, self.config.mel.n_mels, self.config.segment_frames)
        i = 0
        for chunk in parts:
            part = spec[i:i + chunk[0].shape[0]]
            got = branch.mel_energy(*chunk, out=part, log=log)
            if got.data_ptr() != part.data_ptr():  # the reference made a new tensor
                part.copy_(got)
            i += chunk[0].shape[0]
        return spec

    def chunks(self, x: Tensor, params: dict, scale: Optional[Tensor] = None, branch: Optional[Branch] = None):
        """``(x[i:j], params[i:j], scale[i:j])`` for the row chunks ``branch`` is applied to (see ``chunk_size``; no
        ``branch``: those of a branch with waveform stages)."""
        B = x.shape[0]
        size = self.chunk_size
        if not size:
            if not AF.cpu_branch(x.device):
                size = B
            elif kernels.use_kernels(self.backend, x.device):
                size = B if branch is not None and branch.fused(x) else KERNEL_CHUNK
            else:
                size = CPU_CHUNK
        if size >= B:
            yield x, params, scale
            return
        for i in range(0, B, size):
            part = slice(i, i + size)
            yield x[part], {k: v[part] for k, v in params.items()}, None if scale is None else scale[part]

    def extra_repr(self) -> str:
        return (f"sample_rate={self.config.sample_rate}, segment_samples={self.segment_samples}, backend={self.backend!r}, "
                f"chunk_size={self.chunk_size}")

