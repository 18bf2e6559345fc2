"""One ``nn.Module`` per augmentation block, each with a frozen config holding the paper's values as defaults.

Every module separates *drawing* from *applying*:

* ``sample(batch_size, length, generator, device) -> dict[str, Tensor]`` draws all per-example parameters of a
  batch at once, as tensors on the batch's device (``device=None``: the generator's), from an explicit
  ``torch.Generator``;
* ``apply(x, params) -> Tensor`` calls :mod:`augcl.functional` with them (vectorized, no host sync);
* ``forward(x, generator=None, params=None)`` is ``apply(x, params or sample(...))``.

Probabilities act per example: a block with ``p < 1`` draws an ``applied`` flag per example and selects with
``torch.where``, so every row of the output is either transformed or untouched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor, nn

from . import functional as AF
from . import kernels
from .banks import NoiseBank, RIRBank, RoomSimConfig

Params = dict


# ----------------------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MelConfig:
    """Log-mel front end. Defaults: the paper's 25 ms window, 10 ms hop, 64 mel bins (96 frames per segment).

    Mel convention: librosa's (Slaney mel scale, Slaney area normalization), power spectrogram, natural log
    with an offset: ``log(mel + 1e-6)``. Band 60-7800 Hz as in COLA. ``center=True`` centres frames at
    multiples of the hop (zero padding), so a segment of ``(frames - 1) * hop`` samples gives ``frames``
    frames (0.95 s for 96 frames, as in BYOL-A). ``center=False`` is tf.signal.stft's framing (COLA).
    """

    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 60.0
    f_max: float = 7800.0
    center: bool = True
    power: float = 2.0
    log_eps: float = 1e-6
    log_mode: str = "offset"
    mel_scale: str = "slaney"
    norm: Optional[str] = "slaney"

    def segment_samples(self, frames: int) -> int:
        """Samples a segment needs to give ``frames`` frames."""
        return (frames - 1) * self.hop_length + (0 if self.center else self.win_length)


@dataclass(frozen=True)
class StretchConfig:
    """Time stretch of the clip before the segment is chosen (paper: p = 0.5, rate 0.9 or 1.1)."""

    p: float = 0.5
    rates: tuple = (0.9, 1.1)
    mode: str = "choice"  # "choice": one of ``rates``; "uniform": uniform in [min(rates), max(rates)]
    n_fft: int = 512
    hop_length: int = 128
    #: ``"auto"``: ``"spectral"`` when the stretched segment goes straight to the log-mel (no waveform block
    #: after it in its branch), else ``"vocoder"``. ``"spectral"``: the log-mel frames are read from the source
    #: at the stretched positions (:func:`augcl.functional.stretched_frames`; no resynthesis, the cost of a
    #: plain log-mel). ``"vocoder"``: the phase-locked vocoder resynthesises the segment's waveform.
    method: str = "auto"

    @property
    def max_rate(self) -> float:
        return float(max(self.rates))

    @property
    def rate_bound(self) -> float:
        """An upper bound of every row's rate in a batch: rows left unstretched have rate 1."""
        return max(self.max_rate, 1.0)


@dataclass(frozen=True)
class NoiseConfig:
    """Additive noise at a random SNR (the anchor's block in the paper; the COLA baseline's only block).

    ``kind``: ``"white"``, ``"colored"`` (power ∝ 1/f**exponent, exponent uniform in ``color_exponent``:
    0 white, 1 pink, 2 brown, negative blue/violet) or ``"bank"`` (background recordings from
    ``bank_folder``). SNR uniform in ``snr_db``. ``std``: if set, Gaussian noise of this fixed standard
    deviation instead of an SNR (COLA's code: 0.001).
    """

    kind: str = "white"
    snr_db: tuple = (5.0, 30.0)
    color_exponent: tuple = (-1.0, 2.0)
    bank_folder: Optional[str] = None
    std: Optional[float] = None
    p: float = 1.0


@dataclass(frozen=True)
class GainConfig:
    """Random gain of the segment, per example: with probability ``p``, ``gain_db`` uniform in the range (dB).

    Off in every preset (the paper has no gain); ``BranchConfig(gain=GainConfig())`` turns it on.
    """

    p: float = 1.0
    gain_db: tuple = (-6.0, 6.0)


@dataclass(frozen=True)
class RIRConfig:
    """Room-impulse-response filtering of the segment (paper: IRs of the DNS challenge).

    ``folder``: audio files, one IR each; None: a bank of rooms simulated with pyroomacoustics (``sim``),
    cached on disk. IRs are aligned on their direct sound, cut to ``max_seconds`` and set to unit energy.
    """

    p: float = 1.0
    folder: Optional[str] = None
    sim: RoomSimConfig = field(default_factory=RoomSimConfig)
    max_seconds: float = 1.0


@dataclass(frozen=True)
class MaskConfig:
    """SpecAugment time and frequency masks on the log-mel, per example.

    Each of the ``n_time_masks`` masks has a width uniform in ``[0, max_time_frames]`` and a uniform start;
    likewise on the mel axis. ``fill="mean"``: the example's mean log-mel value (a mask then carries no level
    cue); a number: that value.
    """

    n_time_masks: int = 2
    max_time_frames: int = 12
    n_freq_masks: int = 2
    max_freq_bins: int = 8
    fill: Union[str, float] = "mean"


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def draw_device(generator: Optional[torch.Generator], device=None):
    """The device parameters are drawn on: ``device`` if given, else the generator's (a CUDA generator draws on CUDA),
    else the CPU."""
    if device is None and generator is not None:
        return generator.device
    return device


def _uniform(shape, lo, hi, generator, device, dtype=torch.float32) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=generator, device=device, dtype=dtype)


def _coin(p: float, batch: int, generator, device) -> Tensor:
    return torch.rand(batch, generator=generator, device=device) < p


def _randint_below(high: Tensor, generator, device) -> Tensor:
    """Integers uniform in ``[0, high)`` per element (``high`` a tensor >= 1); the uniform draw is float64 (float32
    where the device has no float64: :func:`augcl.functional.position_dtype`)."""
    u = torch.rand(high.shape, generator=generator, device=device, dtype=AF.position_dtype(device))
    return torch.minimum((u * high).long(), high - 1)


def _select(applied: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(applied.reshape([-1] + [1] * (new.ndim - 1)), new, old.to(new.dtype))


# ----------------------------------------------------------------------------------------------------------
# blocks
# ----------------------------------------------------------------------------------------------------------
class WaveBlock(nn.Module):
    """Base of the waveform blocks: ``forward`` draws parameters for ``x`` unless given, then applies them."""

    #: the keys ``sample`` returns (PairAugmenter checks replayed params against them)
    param_keys: tuple = ()

    def sample(self, batch: int, length: int, generator=None, device=None) -> Params:
        raise NotImplementedError

    def apply(self, x: Tensor, params: Params) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, generator=None, params: Optional[Params] = None) -> Tensor:
        x = AF.as_batch(x)
        return self.apply(x, params if params is not None else self.sample(*x.shape, generator, x.device))


class RandomSegment(WaveBlock):
    """Random segment of ``segment_samples`` per clip, optionally from the time-stretched clip.

    With a :class:`StretchConfig`, each example is stretched with probability ``p`` and its segment start is
    drawn uniformly in the *stretched* timeline (``ceil(T / rate)`` samples); only that segment is computed
    (:func:`augcl.functional.time_stretch_segment`). Params: ``start`` (in the stretched timeline),
    ``stretch_rate`` (1.0 where not applied), ``stretch_applied``. The output carries ``context`` extra
    samples of the (stretched) clip on each side of the segment (zeros beyond the clip's ends).

    ``lengths`` ``(B,)`` (valid samples per clip; default: all ``T``): the start is drawn inside the valid part,
    uniform in ``[0, max(ceil(lengths / rate) - segment_samples + 1, 1))``, so no segment is pure padding; a
    clip shorter than a segment starts at 0 (the clip at the segment's start, zeros after it).
    """

    def __init__(self, segment_samples: int, stretch: Optional[StretchConfig] = None, context: int = 0,
                 backend: str = "auto"):
        super().__init__()
        if stretch is not None:
            if stretch.mode not in ("choice", "uniform"):
                raise ValueError(f"stretch.mode must be 'choice' or 'uniform', got {stretch.mode!r}")
            if min(stretch.rates) <= 0:
                raise ValueError(f"stretch.rates must be positive, got {stretch.rates}")
            if stretch.method not in ("auto", "spectral", "vocoder"):
                raise ValueError(f"stretch.method must be 'auto', 'spectral' or 'vocoder', got {stretch.method!r}")
        kernels.check_backend(backend)
        self.segment_samples = int(segment_samples)
        self.context = int(context)
        self.stretch = stretch
        self.backend = backend

    @property
    def param_keys(self) -> tuple:
        return ("start", "stretch_rate", "stretch_applied") if self.stretch is not None else ("start",)

    @property
    def output_samples(self) -> int:
        """Samples per output row: the segment plus its context on both sides."""
        return self.segment_samples + 2 * self.context

    @property
    def min_clip_length(self) -> int:
        """Shortest clip in which every segment lies inside the (stretched) clip; shorter clips get zero-padded."""
        return math.ceil(self.segment_samples * (self.stretch.max_rate if self.stretch is not None else 1.0))

    def sample(self, batch: int, length: int, generator=None, device=None, lengths: Optional[Tensor] = None) -> Params:
        device = draw_device(generator, device)
        params = {}
        if self.stretch is None:
            if lengths is None:
                span = torch.full((batch,), max(length - self.segment_samples + 1, 1), device=device)
            else:
                span = (lengths.to(device=device, dtype=torch.long) - self.segment_samples + 1).clamp_min(1)
        else:
            cfg = self.stretch
            applied = _coin(cfg.p, batch, generator, device)
            dtype = AF.position_dtype(device)
            if cfg.mode == "choice":
                pick = torch.randint(len(cfg.rates), (batch,), generator=generator, device=device)
                rate = torch.full((batch,), float(cfg.rates[0]), dtype=dtype, device=device)
                for i, r in enumerate(cfg.rates[1:], 1):  # scalars: no table to copy to the device
                    rate = torch.where(pick == i, float(r), rate)
            else:
                rate = _uniform(batch, min(cfg.rates), max(cfg.rates), generator, device, dtype)
            rate = torch.where(applied, rate, torch.ones_like(rate))
            valid = length if lengths is None else lengths.to(device=device, dtype=torch.long)
            span = (AF.stretched_length(valid, rate) - self.segment_samples + 1).clamp_min(1)
            params.update(stretch_rate=rate, stretch_applied=applied)
        params["start"] = _randint_below(span, generator, device)
        return params

    def apply(self, x: Tensor, params: Params, lengths: Optional[Tensor] = None) -> Tensor:
        """The segments ``(B, output_samples)``; ``lengths`` ``(B,)``: valid samples per clip, those past it read as
        zeros (masked in the windows read, not in the clip)."""
        start, length = params["start"] - self.context, self.output_samples
        plain = AF.crop_segments(x, start, length, lengths=lengths)
        if self.stretch is None:
            return plain
        cfg = self.stretch
        applied, rate = params["stretch_applied"], params["stretch_rate"]
        stretch = kernels.time_stretch_segment if kernels.use_kernels(self.backend, x.device) else AF.time_stretch_segment
        kw = dict(n_fft=cfg.n_fft, hop_length=cfg.hop_length, max_rate=cfg.rate_bound)
        if AF.cpu_branch(x.device):  # host-side row selection costs no sync here: stretch only the rows that need it
            rows = applied.nonzero().flatten()
            out = plain.clone()
            if len(rows):
                part = None if lengths is None else lengths[rows]
                out[rows] = stretch(x, rate[rows], start[rows], length, rows=rows, lengths=part, **kw).to(out.dtype)
            return out
        return _select(applied, stretch(x, rate, start, length, lengths=lengths, **kw), plain)

    def valid_mask(self, params: Params, lengths: Tensor) -> Tensor:
        """``(B, output_samples)`` bool: which samples of each output row lie inside the (stretched) clip.

        Sample ``i`` of row ``b`` is position ``p = start[b] - context + i`` of the stretched timeline; it is valid
        where ``0 <= p < ceil(lengths[b] / rate[b])`` (rate 1 without stretch). ``lengths``: ``(B,)`` valid
        samples per clip.
        """
        lengths = lengths.to(torch.long)
        if self.stretch is not None:
            lengths = AF.stretched_length(lengths, params["stretch_rate"].to(lengths.device))
        pos = params["start"].to(lengths.device).reshape(-1, 1) - self.context + torch.arange(
            self.output_samples, device=lengths.device)
        return (pos >= 0) & (pos < lengths.reshape(-1, 1))

    def stretched_log_mel(self, x: Tensor, params: Params, mel: "LogMel", frames: int,
                          divisor: Optional[Tensor] = None, lengths: Optional[Tensor] = None,
                          log_gain: Optional[Tensor] = None) -> Tensor:
        """The log-mel of the stretched segment, without resynthesis (``method="spectral"``); ``divisor`` ``(B, 1)``
        scales the clips by ``1 / divisor``; ``lengths`` ``(B,)``: valid samples per clip (as in :meth:`apply`);
        ``log_gain`` ``(B,)``: as in :func:`augcl.functional.log_mel`."""
        return mel.at_rate(x, params["stretch_rate"], params["start"] - self.context, frames, self.stretch.rate_bound,
                           divisor, lengths=lengths, log_gain=log_gain)


class AddNoise(WaveBlock):
    """Additive white, colored or recorded noise at a per-example SNR (or COLA's fixed-std Gaussian).

    Params: ``snr_db``, ``noise_applied``; ``color_exponent`` (colored); ``noise_index``, ``noise_start``
    (bank). The white/colored noise samples themselves are drawn in ``sample`` too (``noise``), so a replay
    with the same params is exact. ``apply(x, params, valid)``: with a ``(B, T)`` bool mask, the SNR is measured
    over the valid samples and noise (either kind) is added there only. ``apply(..., scale=)`` ``(B,)``: the rows of
    ``x`` are the clips divided by ``scale``; a fixed-std noise is divided likewise (an SNR needs nothing).
    """

    KINDS = ("white", "colored", "bank")

    def __init__(self, config: NoiseConfig = NoiseConfig(), bank: Optional[NoiseBank] = None, sample_rate: int = 16000):
        super().__init__()
        if config.kind not in self.KINDS:
            raise ValueError(f"noise kind must be one of {self.KINDS}, got {config.kind!r}")
        if config.kind == "bank" and bank is None:
            if config.bank_folder is None:
                raise ValueError("noise kind 'bank' needs NoiseConfig.bank_folder or a NoiseBank passed as bank=")
            bank = NoiseBank.from_folder(config.bank_folder, sample_rate)
        if bank is not None and bank.sample_rate != sample_rate:
            raise ValueError(f"noise bank sample_rate {bank.sample_rate} != sample_rate {sample_rate}; "
                             "load the bank at the pipeline's rate")
        self.config = config
        self.bank = bank if config.kind == "bank" else None

    @property
    def param_keys(self) -> tuple:
        cfg = self.config
        drawn = ("noise_index", "noise_start") if cfg.kind == "bank" else ("noise",)
        return (("noise_applied",) + (("snr_db",) if cfg.std is None else ()) + drawn
                + (("color_exponent",) if cfg.kind == "colored" else ()))

    def sample(self, batch: int, length: int, generator=None, device=None) -> Params:
        cfg = self.config
        device = draw_device(generator, device)
        params = {"noise_applied": _coin(cfg.p, batch, generator, device)}
        if cfg.std is None:
            params["snr_db"] = _uniform(batch, *cfg.snr_db, generator, device)
        if cfg.kind == "bank":
            params["noise_index"] = torch.randint(len(self.bank), (batch,), generator=generator, device=device)
            params["noise_start"] = _randint_below(self.bank.lengths[params["noise_index"]], generator, device)
        else:
            params["noise"] = torch.randn(batch, length, generator=generator, device=device)
            if cfg.kind == "colored":
                params["color_exponent"] = _uniform(batch, *cfg.color_exponent, generator, device)
        return params

    def apply(self, x: Tensor, params: Params, valid: Optional[Tensor] = None, scale: Optional[Tensor] = None) -> Tensor:
        cfg = self.config
        if cfg.kind == "bank":
            noise = self.bank.read(params["noise_index"], params["noise_start"], x.shape[-1])
        elif cfg.kind == "colored":
            noise = AF.colored_noise(params["noise"], params["color_exponent"])
        else:
            noise = params["noise"]
        dtype = AF.work_dtype(x.dtype)
        x, noise = x.to(dtype), noise.to(dtype)
        if valid is not None:  # mask both once here; noise_gain then needs no mask of its own (it would redo both)
            v = valid.to(dtype)
            noise = noise * v
        if cfg.std is None:
            gain = AF.noise_gain(x if valid is None else x * v, noise, params["snr_db"])
        else:
            gain = torch.full((len(x), 1), cfg.std, dtype=dtype, device=x.device)
            if scale is not None:
                gain = gain / scale.to(dtype).reshape(-1, 1)
        # a row the coin skipped gets gain 0 (x + 0 * noise == x): one pass, no second full-size tensor to select
        return torch.addcmul(x, gain * params["noise_applied"].reshape(-1, 1).to(dtype), noise)


class RandomGain(WaveBlock):
    """Per-example random gain (:class:`GainConfig`): row ``b`` times ``10 ** (gain_db[b] / 20)`` where applied.

    Params: ``gain_db`` (drawn for every row), ``gain_applied``.
    """

    param_keys = ("gain_applied", "gain_db")

    def __init__(self, config: GainConfig = GainConfig()):
        super().__init__()
        if not 0.0 <= config.p <= 1.0:
            raise ValueError(f"gain p must be in [0, 1], got {config.p}")
        if len(config.gain_db) != 2 or config.gain_db[0] > config.gain_db[1]:
            raise ValueError(f"gain_db must be a (low, high) range in dB with low <= high, got {config.gain_db}")
        self.config = config

    def sample(self, batch: int, length: int, generator=None, device=None) -> Params:
        device = draw_device(generator, device)
        return {
            "gain_applied": _coin(self.config.p, batch, generator, device),
            "gain_db": _uniform(batch, *self.config.gain_db, generator, device),
        }

    def applied_db(self, params: Params) -> Tensor:
        """``(B,)`` gain in dB each row gets: ``gain_db`` where applied, 0 elsewhere."""
        return params["gain_db"] * params["gain_applied"].to(params["gain_db"].dtype)

    def factor(self, params: Params) -> Tensor:
        """``(B, 1)`` linear factor each row is multiplied by."""
        return torch.pow(10.0, self.applied_db(params).reshape(-1, 1) / 20.0)

    def apply(self, x: Tensor, params: Params) -> Tensor:
        return AF.gain(x, self.applied_db(params))


class RIRFilter(WaveBlock):
    """Convolution of each example with an IR gathered from a :class:`RIRBank`. Params: ``rir_index``, ``rir_applied``."""

    param_keys = ("rir_applied", "rir_index")

    def __init__(self, config: RIRConfig = RIRConfig(), bank: Optional[RIRBank] = None, sample_rate: int = 16000):
        super().__init__()
        if bank is None:
            bank = (RIRBank.from_folder(config.folder, sample_rate, config.max_seconds) if config.folder
                    else RIRBank.simulated(config.sim, sample_rate))
        if bank.sample_rate != sample_rate:
            raise ValueError(f"RIR bank sample_rate {bank.sample_rate} != sample_rate {sample_rate}; "
                             "load the bank at the pipeline's rate")
        self.config = config
        self.bank = bank

    def sample(self, batch: int, length: int, generator=None, device=None) -> Params:
        device = draw_device(generator, device)
        return {
            "rir_applied": _coin(self.config.p, batch, generator, device),
            "rir_index": torch.randint(len(self.bank), (batch,), generator=generator, device=device),
        }

    def apply(self, x: Tensor, params: Params) -> Tensor:
        wet = AF.fft_convolve(x, self.bank.gather(params["rir_index"]))
        return _select(params["rir_applied"], wet, x)


class LogMel(nn.Module):
    """``(B, T + 2 * context)`` -> ``(B, 1, n_mels, frames)`` log-mel (see :class:`MelConfig` for the convention).

    With ``center=True`` the input carries ``context = n_fft // 2`` real samples on each side of the segment,
    so the edge frames see the audio around the segment instead of zero padding (a cut segment would
    otherwise begin and end with a broadband click); frames are taken without padding. The frame count is
    the centred one, ``1 + segment // hop``.
    """

    def __init__(self, config: MelConfig = MelConfig(), sample_rate: int = 16000):
        super().__init__()
        if not config.win_length <= config.n_fft:
            raise ValueError(f"mel win_length ({config.win_length}) must be <= n_fft ({config.n_fft})")
        self.config = config
        self.context = config.n_fft // 2 if config.center else 0
        fb = AF.mel_filterbank(sample_rate, config.n_fft, config.n_mels, config.f_min, config.f_max,
                               mel_scale=config.mel_scale, norm=config.norm, dtype=torch.float32)
        window = torch.hann_window(config.win_length, periodic=True)
        if config.center:  # centred in an n_fft frame, as torch.stft/librosa place a shorter window
            left = (config.n_fft - config.win_length) // 2
            window = torch.nn.functional.pad(window, (left, config.n_fft - config.win_length - left))
        self.register_buffer("filterbank", fb, persistent=False)
        self.register_buffer("window", window, persistent=False)

    def forward(self, x: Tensor, log_gain: Optional[Tensor] = None) -> Tensor:
        """``log_gain`` ``(B,)``: the rows' mel energies times ``exp(log_gain)``, in the log domain (see
        :func:`augcl.functional.log_mel`)."""
        c = self.config
        return AF.log_mel(x, self.filterbank, self.window, n_fft=c.n_fft, hop_length=c.hop_length, center=False,
                          power=c.power, log_eps=c.log_eps, log_mode=c.log_mode, log_gain=log_gain).unsqueeze(1)

    def at_rate(self, x: Tensor, rate: Tensor, first: Tensor, frames: int, max_rate: float,
                divisor: Optional[Tensor] = None, lengths: Optional[Tensor] = None,
                log_gain: Optional[Tensor] = None) -> Tensor:
        """``(B, 1, n_mels, frames)`` log-mel of clip ``x`` time-stretched by ``rate``, frame 0 starting at
        stretched position ``first`` (:func:`augcl.functional.stretched_frames`): with ``rate == 1`` it equals
        ``forward`` of the segment ``x[first : first + (frames - 1) * hop + width]``. ``divisor`` ``(B, 1)``: the
        log-mel of ``x / divisor``; ``lengths`` ``(B,)``: valid samples per clip, those past it read as zeros;
        ``log_gain`` ``(B,)``: as in :meth:`forward`."""
        c = self.config
        f = AF.stretched_frames(x, rate, first, frames, c.hop_length, self.window.shape[-1], max_rate,
                                lengths=lengths)
        f = f.mul_(self.window.to(f.dtype))  # the frames are a fresh copy: window them in place
        if divisor is not None:
            f = f.div_(divisor.to(f.dtype).reshape(-1, 1, 1))
        return AF._log_mel_windowed(f, self.filterbank, c.n_fft, c.power, c.log_eps, c.log_mode, log_gain).unsqueeze(1)


class SpecMask(nn.Module):
    """SpecAugment masks on ``(B, 1, n_mels, frames)``. Params: ``time_mask_start/width``, ``freq_mask_start/width`` ``(B, n)``."""

    param_keys = ("time_mask_width", "time_mask_start", "freq_mask_width", "freq_mask_start")

    def __init__(self, config: MaskConfig = MaskConfig()):
        super().__init__()
        if not (config.fill == "mean" or isinstance(config.fill, (int, float))):
            raise ValueError(f"mask fill must be 'mean' or a number, got {config.fill!r}")
        self.config = config

    def sample(self, batch: int, n_mels: int, frames: int, generator=None, device=None) -> Params:
        c = self.config
        device = draw_device(generator, device)
        params = {}
        for axis, n, max_width, size in (("time", c.n_time_masks, c.max_time_frames, frames),
                                          ("freq", c.n_freq_masks, c.max_freq_bins, n_mels)):
            max_width = min(max_width, size)
            width = torch.randint(max_width + 1, (batch, n), generator=generator, device=device)
            params[f"{axis}_mask_width"] = width
            params[f"{axis}_mask_start"] = _randint_below(size - width + 1, generator, device)
        return params

    def apply(self, spec: Tensor, params: Params) -> Tensor:
        fill = spec.mean(dim=(-2, -1)).flatten() if self.config.fill == "mean" else float(self.config.fill)
        spec = AF.time_mask(spec, params["time_mask_start"], params["time_mask_width"], fill)
        return AF.freq_mask(spec, params["freq_mask_start"], params["freq_mask_width"], fill)

    def forward(self, spec: Tensor, generator=None, params: Optional[Params] = None) -> Tensor:
        if params is None:
            params = self.sample(spec.shape[0], spec.shape[-2], spec.shape[-1], generator, spec.device)
        return self.apply(spec, params)
