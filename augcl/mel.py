"""The log-mel front end: librosa's mel convention, batched, with the paper's 25 ms / 10 ms / 64-bin defaults.

Convention (:class:`MelConfig`): Slaney mel scale and Slaney area normalisation (``librosa.filters.mel``'s
defaults), Hann window, power spectrogram, ``log(mel + 1e-6)`` (natural log). Tested against librosa and nnAudio.
Cost: one real FFT of ``n_fft`` per frame and a ``(n_mels, n_fft / 2 + 1)`` matrix product.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from . import kernels
from .core import work_dtype
from .vocoder import _check_rate_bound, stretched_frames, stretched_starts


def _hz_to_mel(f: Tensor, scale: str) -> Tensor:
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return torch.where(f >= min_log_hz, min_log_mel + torch.log(f.clamp_min(min_log_hz) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: Tensor, scale: str) -> Tensor:
    if scale == "htk":
        return 700.0 * (torch.pow(10.0, m / 2595.0) - 1.0)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: Optional[float] = None,
    *,
    mel_scale: str = "slaney",
    norm: Optional[str] = "slaney",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Triangular mel filters ``(n_fft // 2 + 1, n_mels)``, the convention of ``librosa.filters.mel``.

    ``mel_scale``: ``"slaney"`` (linear below 1 kHz, log above; librosa's default) or ``"htk"``.
    ``norm="slaney"`` scales each triangle to unit area (``2 / bandwidth_hz``); ``None`` leaves peaks at 1.
    """
    if mel_scale not in ("slaney", "htk"):
        raise ValueError(f"mel_scale must be 'slaney' or 'htk', got {mel_scale!r}")
    if norm not in ("slaney", None):
        raise ValueError(f"norm must be 'slaney' or None, got {norm!r}")
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}")
    fft_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, hi = _hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64), mel_scale)
    edges_hz = _mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64), mel_scale)
    width = edges_hz.diff()  # (n_mels + 1,)
    ramps = edges_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, F)
    lower = -ramps[:-2] / width[:-1, None]
    upper = ramps[2:] / width[1:, None]
    fb = torch.clamp(torch.minimum(lower, upper), min=0.0)  # (n_mels, F)
    if norm == "slaney":
        fb = fb * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return fb.T.contiguous().to(dtype)


def mel_energy(wave: Tensor, filterbank: Tensor, window: Tensor, *, n_fft: int, hop_length: int, center: bool = True,
               power: float = 2.0) -> Tensor:
    """Mel energies ``(B, n_mels, frames)`` of ``(B, T)`` clips, ``filterbank.T @ |STFT| ** power``: :func:`log_mel`
    before its log (framing as there)."""
    dtype = work_dtype(wave.dtype)
    x = wave.to(dtype)
    win = window.to(device=x.device, dtype=dtype)
    if not center:
        return mel_energy_frames(x.unfold(-1, win.shape[-1], hop_length), filterbank, win, n_fft=n_fft, power=power)
    spec = torch.stft(x, n_fft, hop_length, win_length=win.shape[-1], window=win, center=True,
                      pad_mode="constant", return_complex=True)  # (B, F, frames)
    return _spectrum_mel(spec, filterbank, power)


def log_mel(
    wave: Tensor,
    filterbank: Tensor,
    window: Tensor,
    *,
    n_fft: int,
    hop_length: int,
    center: bool = True,
    power: float = 2.0,
    log_eps: float = 1e-6,
    log_mode: str = "offset",
    log_gain: Optional[Tensor] = None,
) -> Tensor:
    """Log-mel spectrogram ``(B, n_mels, frames)`` of ``(B, T)`` clips.

    ``center=True``: frames centred at ``t * hop`` after zero padding of ``n_fft // 2`` on both sides
    (librosa >= 0.10 and torch.stft with ``pad_mode="constant"``), ``1 + T // hop`` frames; the window
    (length ``win_length <= n_fft``) sits in the middle of the frame. ``center=False``: frames of
    ``win_length`` samples from ``t * hop``, zero-padded at the end to ``n_fft`` (``tf.signal.stft``, COLA),
    ``1 + (T - win_length) // hop`` frames. Value: ``log(mel + log_eps)`` (``log_mode="offset"``) or
    ``log(max(mel, log_eps))`` (``"clamp"``) where ``mel = filterbank.T @ |STFT| ** power`` (:func:`mel_energy`).
    ``log_gain`` ``(B,)``: as in :func:`log_of_mel`.
    """
    _check_log_mode(log_mode)
    mel = mel_energy(wave, filterbank, window, n_fft=n_fft, hop_length=hop_length, center=center, power=power)
    return log_of_mel(mel, log_eps, log_mode, log_gain, inplace=True)


def _spectral_power(spec: Tensor, power: float) -> Tensor:
    """``|spec| ** power`` of a complex spectrum, from ``re² + im²`` (complex ``abs`` costs a ``hypot`` per bin: it was
    the largest single cost of the CPU log-mel; docs/guide.md)."""
    re, im = spec.real, spec.imag
    energy = torch.square(re).addcmul_(im, im)
    # |z| ** p = (re² + im²) ** (p / 2): |z|² overflows float32 from |z| ~ 1.8e19; PairAugmenter divides rows that loud
    # by a power of two before its branches (power_of_two_scale) and adds the scale back in the log after them
    return energy if power == 2.0 else energy.sqrt_() if power == 1.0 else energy.pow(power / 2)


def _spectrum_mel(spec: Tensor, filterbank: Tensor, power: float) -> Tensor:
    """The mel energies ``(B, n_mels, K)`` of a complex spectrum ``(B, F, K)``."""
    pw = _spectral_power(spec, power)
    return torch.matmul(filterbank.to(device=pw.device, dtype=pw.dtype).T, pw)


def _check_log_mode(log_mode: str) -> None:
    if log_mode not in ("offset", "clamp"):
        raise ValueError(f"log_mode must be 'offset' or 'clamp', got {log_mode!r}")


def log_of_mel(mel: Tensor, log_eps: float = 1e-6, log_mode: str = "offset", log_gain: Optional[Tensor] = None,
               inplace: bool = False) -> Tensor:
    """The log of mel energies ``(B, ...)``: ``log(mel + log_eps)`` (``"offset"``) or ``log(max(mel, log_eps))``
    (``"clamp"``); ``inplace``: the result is ``mel`` itself.

    ``log_gain`` ``(B,)``: the log of each row's energies times ``exp(log_gain)``, computed in the log domain
    (``logaddexp(log(mel) + log_gain, log(log_eps))``), so the product may exceed the dtype's range; rows with 0
    get exactly the value without it. PairAugmenter's overflow rescue: a row too loud for float32 powers is augmented
    divided by a power of two ``s`` (:func:`power_of_two_scale`) and its energies' log taken with ``power * log(s)``.
    """
    _check_log_mode(log_mode)
    g, gained = _gained_log(mel, log_eps, log_mode, log_gain)
    if inplace:
        out = (mel.add_(log_eps) if log_mode == "offset" else mel.clamp_min_(log_eps)).log_()
    else:
        out = torch.log(mel + log_eps) if log_mode == "offset" else torch.log(mel.clamp_min(log_eps))
    if gained is None:
        return out
    return out.copy_(torch.where(g != 0, gained, out)) if inplace else torch.where(g != 0, gained, out)


def _gained_log(mel: Tensor, log_eps: float, log_mode: str, log_gain: Optional[Tensor]) -> tuple:
    """``(g, gained)``: :func:`log_of_mel`'s ``log_gain`` reshaped to broadcast on ``mel``, and the log of ``mel`` times
    ``exp(g)`` (both None without ``log_gain``); computed before the log of ``mel`` overwrites it."""
    if log_gain is None:
        return None, None
    g = log_gain.to(device=mel.device, dtype=mel.dtype).reshape([-1] + [1] * (mel.ndim - 1))
    floor = mel.new_full((), math.log(log_eps))  # filled on the device (new_tensor would copy from the host)
    scaled = torch.log(mel) + g  # -inf where mel is 0: then the floor
    return g, torch.logaddexp(scaled, floor) if log_mode == "offset" else torch.maximum(scaled, floor)


def mel_energy_frames(frames: Tensor, filterbank: Tensor, window: Tensor, *, n_fft: int, power: float = 2.0) -> Tensor:
    """Mel energies ``(B, n_mels, K)`` of analysis frames ``(B, K, win_length)``: :func:`log_mel_frames` before its
    log."""
    dtype = work_dtype(frames.dtype)
    win = window.to(device=frames.device, dtype=dtype)
    return _mel_windowed(frames.to(dtype) * win, filterbank, n_fft, power)


def log_mel_frames(
    frames: Tensor,
    filterbank: Tensor,
    window: Tensor,
    *,
    n_fft: int,
    power: float = 2.0,
    log_eps: float = 1e-6,
    log_mode: str = "offset",
    log_gain: Optional[Tensor] = None,
) -> Tensor:
    """Log-mel ``(B, n_mels, K)`` of analysis frames ``(B, K, win_length)`` (e.g. :func:`stretched_frames`).

    Each frame is multiplied by ``window`` and zero-padded at the end to ``n_fft``; otherwise as :func:`log_mel`
    with ``center=False``, which calls this on the frames ``unfold`` cuts.
    """
    _check_log_mode(log_mode)
    mel = mel_energy_frames(frames, filterbank, window, n_fft=n_fft, power=power)
    return log_of_mel(mel, log_eps, log_mode, log_gain, inplace=True)


def _mel_windowed(windowed: Tensor, filterbank: Tensor, n_fft: int, power: float, sparse: Optional[tuple] = None,
                  out: Optional[Tensor] = None) -> Tensor:
    """The mel energies ``(B, n_mels, K)`` of frames already multiplied by the window (a caller that owns fresh frames
    windows them in place: one full-size temporary fewer). ``sparse``: the filterbank's nonzero spans
    (:func:`augcl.kernels.sparse_filterbank`): the power and mel projection then run in the CPU kernel, which writes
    into ``out`` ``(B, n_mels, K)`` if given (contiguous, of the spectrum's real dtype; else a new tensor)."""
    spec = torch.fft.rfft(windowed, n=n_fft)  # (B, K, F)
    if sparse is None:
        return _spectrum_mel(spec.transpose(-1, -2), filterbank, power)
    out = _writable(out, (windowed.shape[0], sparse[0].shape[0], windowed.shape[1]), spec.real.dtype)
    return kernels.mel_energy(spec, sparse, power, out=out)


def _writable(out: Optional[Tensor], shape: tuple, dtype: torch.dtype) -> Optional[Tensor]:
    """``out`` where a CPU kernel can write its result into it (contiguous, that shape and dtype), else None (the kernel
    returns a new tensor, which the caller copies where it needs to)."""
    ok = out is not None and out.is_contiguous() and out.dtype == dtype and tuple(out.shape) == tuple(shape)
    return out if ok else None


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



class LogMel(nn.Module):
    """Log-mel spectrogram (see :class:`MelConfig` for the convention); deterministic, no parameters to draw.

    ``LogMel(sample_rate=16000)(wave)``: ``(..., T)`` -> ``(..., n_mels, 1 + T // hop)`` float32 (float64 stays),
    frames centred at multiples of the hop after zero padding of ``n_fft // 2`` on each side (``center=True``;
    librosa >= 0.10's ``pad_mode="constant"``), as ``librosa.feature.melspectrogram`` followed by ``log(x + 1e-6)``.
    ``lengths`` ``(B,)``: valid samples per row (first dimension), those past it read as zeros; :meth:`frames` gives
    the frames whose centre lies inside each row, for :class:`~augcl.masks.SpecAugment`'s ``lengths``.

    PairAugmenter uses :meth:`from_context`: its segments carry ``context = n_fft // 2`` real samples on each side, so
    the edge frames see the audio around the segment instead of zero padding (a cut segment would otherwise begin and
    end with a broadband click).
    """

    def __init__(self, config: MelConfig = MelConfig(), sample_rate: int = 16000, backend: str = "auto"):
        super().__init__()
        kernels.check_backend(backend)
        self.backend = backend
        if not config.win_length <= config.n_fft:
            raise ValueError(f"mel win_length ({config.win_length}) must be <= n_fft ({config.n_fft})")
        self.config = config
        self.sample_rate = int(sample_rate)
        self.context = config.n_fft // 2 if config.center else 0
        fb = mel_filterbank(sample_rate, config.n_fft, config.n_mels, config.f_min, config.f_max,
                            mel_scale=config.mel_scale, norm=config.norm, dtype=torch.float32)
        window = torch.hann_window(config.win_length, periodic=True)
        if config.center:  # centred in an n_fft frame, as torch.stft/librosa place a shorter window
            left = (config.n_fft - config.win_length) // 2
            window = torch.nn.functional.pad(window, (left, config.n_fft - config.win_length - left))
        self.register_buffer("filterbank", fb, persistent=False)
        self.register_buffer("window", window, persistent=False)
        self._sparse = None  # the filterbank's nonzero spans for the CPU kernel, made on first use

    def _kernel_filterbank(self, x: Tensor) -> Optional[tuple]:
        """The sparse filterbank where the CPU kernels compute the log-mel of ``x`` (framing, FFT, power and mel
        projection, or the power and mel projection alone), else None: not on a CPU, backend ``"torch"``, or ``x``
        needs gradients (the kernels read it as NumPy: the reference keeps the graph)."""
        if x.device.type != "cpu" or not kernels.use_kernels(self.backend, x.device):
            return None
        if torch.is_grad_enabled() and x.requires_grad:
            return None
        if self._sparse is None:
            self._sparse = kernels.sparse_filterbank(self.filterbank)
        return self._sparse

    def forward(self, wave: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """``(..., T)`` -> ``(..., n_mels, frames)``; ``lengths`` ``(B,)`` for ``(B, ..., T)``: valid samples per row."""
        if not isinstance(wave, Tensor) or not wave.is_floating_point() or wave.ndim < 1:
            raise TypeError(f"wave must be a floating tensor (..., T), got "
                            f"{wave.dtype if isinstance(wave, Tensor) else type(wave).__name__}")
        if lengths is not None:
            inside = torch.arange(wave.shape[-1], device=wave.device) < lengths.to(wave.device).reshape(
                (-1,) + (1,) * (wave.ndim - 1))
            wave = wave * inside.to(wave.dtype)
        c = self.config
        x = wave.reshape(-1, wave.shape[-1])
        if c.center:
            x = torch.nn.functional.pad(x.to(work_dtype(x.dtype)), (self.context, self.context))
        spec = self.from_context(x)
        return spec.reshape(*wave.shape[:-1], *spec.shape[-2:])

    def frames(self, lengths: Tensor) -> Tensor:
        """Frames of each row whose centre lies inside its ``lengths`` valid samples (``ceil(lengths / hop)``; with
        ``center=False``, the frames that end inside)."""
        c = self.config
        lengths = lengths.to(torch.long)
        if c.center:
            return (lengths + c.hop_length - 1) // c.hop_length
        return ((lengths - c.win_length) // c.hop_length + 1).clamp_min(0)

    def log(self, mel: Tensor, log_gain: Optional[Tensor] = None) -> Tensor:
        """The log of mel energies ``(B, ...)`` in place, with this config's ``log_eps`` and ``log_mode``; ``log_gain``
        ``(B,)``: as in :func:`augcl.functional.log_of_mel`. Where the CPU kernels run (contiguous float32), the log is
        theirs (:func:`augcl.kernels.log_mel_`, the one the fused log-mel takes: a row's log-mels are the same bits
        whichever route they take)."""
        c = self.config
        if not (mel.dtype == torch.float32 and mel.is_contiguous() and mel.ndim >= 1 and mel.numel() > 0
                and self._kernel_filterbank(mel) is not None):
            return log_of_mel(mel, c.log_eps, c.log_mode, log_gain, inplace=True)
        _check_log_mode(c.log_mode)
        g, gained = _gained_log(mel, c.log_eps, c.log_mode, log_gain)
        out = kernels.log_mel_(mel, c.log_eps, c.log_mode)
        torch.autograd.graph.increment_version(mel)  # written through NumPy: tell autograd, as add_/log_ would
        return out if gained is None else out.copy_(torch.where(g != 0, gained, out))

    def from_context(self, x: Tensor) -> Tensor:
        """``(B, T + 2 * context)`` -> ``(B, n_mels, frames)``: the log-mels of segments that carry their context (no
        padding added): the log of :meth:`mel_from_context` (taken in the CPU kernel where it runs)."""
        return self.mel_from_context(x, log=True)

    def _kernel_log(self, log: bool) -> Optional[tuple]:
        """``log=`` of :func:`augcl.kernels.mel_at`: this config's ``(log_eps, log_mode)`` if ``log``, else None."""
        if not log:
            return None
        _check_log_mode(self.config.log_mode)
        return self.config.log_eps, self.config.log_mode

    def mel_from_context(self, x: Tensor, out: Optional[Tensor] = None, log: bool = False) -> Tensor:
        """The mel energies ``(B, n_mels, frames)`` of :meth:`from_context` (``center=False`` framing of ``x``; the
        framing, FFT, power and mel projection in the CPU kernels where they run, written into ``out`` there);
        ``log``: their log (:meth:`log`, without ``log_gain``), in the same kernel."""
        c = self.config
        x = x.to(work_dtype(x.dtype))
        win = self.window.to(x.dtype)
        sparse = self._kernel_filterbank(x)
        if sparse is not None and kernels.fused_mel(c.n_fft, x.dtype) and x.ndim == 2 and x.shape[-1] >= win.shape[-1]:
            K = (x.shape[-1] - win.shape[-1]) // c.hop_length + 1
            first = (torch.arange(K) * c.hop_length).expand(x.shape[0], K)
            out = _writable(out, (x.shape[0], c.n_mels, K), torch.float32)
            return kernels.mel_at(x, first, win, c.n_fft, sparse, c.power, out=out, log=self._kernel_log(log))
        mel = _mel_windowed(x.unfold(-1, win.shape[-1], c.hop_length) * win, self.filterbank, c.n_fft, c.power,
                            sparse, out)
        return self.log(mel) if log else mel

    def windowed_mel(self, frames: Tensor, out: Optional[Tensor] = None) -> Tensor:
        """``(B, K, win_length)`` frames already multiplied by the window -> their mel energies ``(B, n_mels, K)`` (into
        ``out`` where the CPU kernels run)."""
        c = self.config
        return _mel_windowed(frames, self.filterbank, c.n_fft, c.power, self._kernel_filterbank(frames), out)

    def mel_at_rate(self, x: Tensor, rate: Tensor, first: Tensor, frames: int, max_rate: float,
                    lengths: Optional[Tensor] = None, out: Optional[Tensor] = None, log: bool = False) -> Tensor:
        """``(B, n_mels, frames)`` mel energies of clip ``x`` time-stretched by ``rate``, frame 0 starting at stretched
        position ``first`` (:func:`augcl.functional.stretched_frames`): with ``rate == 1`` they equal
        :meth:`mel_from_context` of the segment ``x[first : first + (frames - 1) * hop + width]``. ``lengths`` ``(B,)``:
        valid samples per clip, those past it read as zeros; ``out``: where the CPU kernels may write the result;
        ``log``: their log (:meth:`log`, without ``log_gain``; in the fused kernel where it runs)."""
        c = self.config
        width = self.window.shape[-1]
        sparse = self._kernel_filterbank(x)
        if sparse is not None:  # the CPU kernels: gather, mask and window in one pass (and the FFT and mel with it)
            rate = rate.to(torch.float64)
            if max_rate is not None:
                _check_rate_bound(rate, max_rate)
            x = x.to(work_dtype(x.dtype))
            starts = stretched_starts(rate, first, frames, c.hop_length, width // 2)
            if kernels.fused_mel(c.n_fft, x.dtype):
                return kernels.mel_at(x, starts, self.window, c.n_fft, sparse, c.power, lengths,
                                      _writable(out, (x.shape[0], c.n_mels, frames), torch.float32),
                                      self._kernel_log(log))
            f = kernels.frames_at(x, starts, self.window.to(x.dtype), lengths)
            mel = _mel_windowed(f, self.filterbank, c.n_fft, c.power, sparse, out)
        else:
            f = stretched_frames(x, rate, first, frames, c.hop_length, width, max_rate, lengths=lengths)
            f = f.mul_(self.window.to(f.dtype))  # the frames are a fresh copy: window them in place
            mel = _mel_windowed(f, self.filterbank, c.n_fft, c.power)
        return self.log(mel) if log else mel

    def extra_repr(self) -> str:
        c = self.config
        return (f"sample_rate={self.sample_rate}, n_fft={c.n_fft}, hop_length={c.hop_length}, n_mels={c.n_mels}, "
                f"f_min={c.f_min}, f_max={c.f_max}")
