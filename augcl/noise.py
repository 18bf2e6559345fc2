"""Additive noise at a per-example SNR: white, colored (power ``∝ 1 / f**exponent``) or recordings from a
:class:`~augcl.banks.NoiseBank` kept in memory.

Powers are energies over each example's valid samples (all its channels); the noise gain follows in one reduction
per row, no host sync. Colored noise costs two FFTs of ``T`` per row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from . import kernels
from .banks import NoiseBank
from .core import Params, Transform, _coin, _randint_below, _uniform, draw_device, valid_mask, work_dtype


#: SplitMix64's constants (as signed int64: torch has no unsigned 64-bit shifts): the Weyl increment and the two mixers
_GOLDEN, _MIX1, _MIX2 = -0x61C8864680B583EB, -0x40A7B892E31B1A47, -0x6B2FB644ECCEEE15


def _logical_shift(z: Tensor, bits: int) -> Tensor:
    """``z >> bits`` of int64 ``z`` read as unsigned (torch's ``>>`` on int64 copies the sign bit)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def white_noise(seed: Tensor, length: int) -> Tensor:
    """``(B, length)`` float32 standard normal noise, row ``b`` a function of ``seed[b]`` (int64) alone.

    A counter-based generator: value ``j`` of a row is SplitMix64's output function of ``seed + (j // 2 + 1) *
    golden`` (wrapping int64 arithmetic), whose top and low 24-bit halves (``j`` even, odd) give ``u = (v + 0.5) /
    2 ** 24`` and the normal ``sqrt(2) erfinv(2 u - 1)`` (at most 5.4 in magnitude). No state: any part of a row, on
    any device, is computed independently of the rest, so the noise of a batch is its seeds (a replay stores ``B``
    integers, not ``B * length`` samples), and the CPU kernel (:mod:`augcl.kernels.noise_cpu`) computes it on every
    core. Cost: ~15 integer ops and an ``erfinv`` per value.
    """
    seed = seed.to(torch.long)
    j = torch.arange(length, device=seed.device)
    z = seed[:, None] + ((j >> 1) + 1) * _GOLDEN
    z = (z ^ _logical_shift(z, 30)) * _MIX1
    z = (z ^ _logical_shift(z, 27)) * _MIX2
    z = z ^ _logical_shift(z, 31)
    v = torch.where(j % 2 == 0, _logical_shift(z, 40), (z >> 8) & 0xFFFFFF)
    x = (2 * v + 1 - (1 << 24)).to(torch.float32) * 2.0 ** -24  # 2 u - 1, exact (|integer| < 2 ** 24: float32 holds it)
    return torch.erfinv(x).mul_(math.sqrt(2.0))


def draw_seeds(batch: int, generator=None, device=None) -> Tensor:
    """``(batch,)`` int64 seeds for :func:`white_noise`, uniform over 62 bits."""
    return torch.randint(-(2 ** 62), 2 ** 62, (batch,), generator=generator, device=device)


def add_noise(wave: Tensor, noise: Tensor, snr_db: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """``wave + g * noise`` with ``g`` per row so that ``10 log10(P_wave / P(g * noise)) = snr_db``.

    ``wave``, ``noise``: ``(B, T)``; ``snr_db``: ``(B,)``. Powers are mean squares over the row, or over the
    samples where ``valid`` ``(B, T)`` (bool) is True; then noise is added there only (the rest is unchanged).
    A silent row stays silent (g = 0); silent noise adds nothing.
    """
    dtype = work_dtype(wave.dtype)
    x, n = wave.to(dtype), noise.to(dtype)
    if valid is not None:
        n = n * valid.to(dtype)
    return torch.addcmul(x, noise_gain(x, n, snr_db, valid), n)  # no full-size temporary besides the output


def noise_gain(wave: Tensor, noise: Tensor, snr_db: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """The gain ``g`` ``(B, 1)`` of :func:`add_noise`: ``wave + g * noise`` is at ``snr_db``; 0 for silent noise.

    ``valid`` ``(B, T)`` bool: energies of signal and noise over those samples only (the same count in both, so the
    ratio of energies is the ratio of mean squares).
    """
    dtype = work_dtype(wave.dtype)
    x, n = wave.to(dtype), noise.to(dtype)
    if valid is not None:
        v = valid.to(device=x.device, dtype=dtype)
        x, n = x * v, n * v
    # energies: the row length cancels in the ratio of mean squares; norms make no full-size temporary
    e_signal = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square()
    e_noise = torch.linalg.vector_norm(n, dim=-1, keepdim=True).square()
    snr = snr_db.to(device=wave.device, dtype=dtype).reshape(-1, 1)
    gain = torch.sqrt(e_signal / (e_noise.clamp_min(torch.finfo(dtype).tiny) * torch.pow(10.0, snr / 10.0)))
    return torch.where(e_noise > 0, gain, 0.0)  # silent noise adds nothing (its gain would overflow)


def colored_noise(white: Tensor, exponent: Tensor) -> Tensor:
    """Shape white noise ``(B, T)`` to a power spectrum ``∝ 1 / f**exponent`` per row; unit RMS output.

    exponent 0 is white, 1 pink, 2 brown (red), -1 blue, -2 violet. DC is removed. Cost: two FFTs of size T.
    """
    dtype = work_dtype(white.dtype)
    T = white.shape[-1]
    spec = torch.fft.rfft(white.to(dtype), dim=-1)
    freqs = torch.fft.rfftfreq(T, device=white.device, dtype=dtype)
    freqs = freqs.clamp_min(freqs[1] if T > 1 else 1.0)
    gain = freqs.pow(-0.5 * exponent.to(device=white.device, dtype=dtype).reshape(-1, 1))
    gain = gain * (torch.arange(gain.shape[-1], device=white.device) > 0)
    out = torch.fft.irfft(spec * gain, n=T, dim=-1)
    return out / out.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(torch.finfo(dtype).tiny)


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



class AddNoise(Transform):
    """Additive white, colored or recorded noise at a per-example SNR (or COLA's fixed-std Gaussian).

    ``AddNoise(snr_db=(5, 30), kind="colored")``: each example gets noise at an SNR uniform in ``snr_db``, measured
    over its valid samples (``lengths``) and all its channels; the noise is added to the valid samples only and is the
    same in every channel of an example (one draw per example). ``kind``: ``"white"``, ``"colored"`` (power ``∝
    1/f**exponent``, exponent uniform in ``color_exponent``: 0 white, 1 pink, 2 brown) or ``"bank"`` (``bank``: a
    :class:`~augcl.banks.NoiseBank`, or a folder of recordings loaded once at ``sample_rate``). ``std``: Gaussian noise
    of that fixed standard deviation instead of an SNR.

    Params: ``noise_applied``, ``snr_db`` (not with ``std``); ``noise_seed`` (white/colored: the seed of the example's
    white noise, :func:`white_noise`, so a replay is exact) and ``color_exponent`` (colored); ``noise_index``,
    ``noise_start`` (bank). ``backend``: the white noise in the CPU kernel (``"auto"``, ``"kernels"``) or the torch
    reference (``"torch"``); the same numbers to float32 rounding of ``erfinv``.
    """

    KINDS = ("white", "colored", "bank")

    def __init__(self, snr_db: tuple = (5.0, 30.0), *, kind: str = "white", color_exponent: tuple = (-1.0, 2.0),
                 bank: Union[NoiseBank, str, Path, None] = None, std: Optional[float] = None, p: float = 0.5,
                 mode: str = "per_example", sample_rate: Optional[int] = None, output_type: str = "tensor",
                 backend: str = "auto"):
        super().__init__(p, mode, sample_rate, output_type)
        kernels.check_backend(backend)
        self.backend = backend
        if kind not in self.KINDS:
            raise ValueError(f"noise kind must be one of {self.KINDS}, got {kind!r}")
        for name, pair in (("snr_db", snr_db), ("color_exponent", color_exponent)):
            if len(pair) != 2 or not pair[0] <= pair[1]:
                raise ValueError(f"{name} must be a (low, high) range with low <= high, got {pair!r}")
        if std is not None and not std >= 0:
            raise ValueError(f"std must be a standard deviation >= 0 or None, got {std!r}")
        if kind == "bank":
            if bank is None:
                raise ValueError("noise kind 'bank' needs bank=: a NoiseBank or a folder of noise recordings")
            if not isinstance(bank, NoiseBank):
                if sample_rate is None:
                    raise ValueError("AddNoise needs sample_rate= to load its bank at the pipeline's rate")
                bank = NoiseBank.from_folder(bank, sample_rate)
            elif sample_rate is not None and bank.sample_rate != sample_rate:
                raise ValueError(f"noise bank sample_rate {bank.sample_rate} != sample_rate {sample_rate}; "
                                 "load the bank at the pipeline's rate")
            self.sample_rate = bank.sample_rate
        self.config = NoiseConfig(kind=kind, snr_db=tuple(snr_db), color_exponent=tuple(color_exponent),
                                  std=std, p=self.p)
        self.bank = bank if kind == "bank" else None

    @classmethod
    def from_config(cls, config: NoiseConfig, bank: Optional[NoiseBank] = None, sample_rate: int = 16000,
                    backend: str = "auto") -> "AddNoise":
        """The block a :class:`NoiseConfig` describes (PairAugmenter's)."""
        if config.kind == "bank" and bank is None:
            if config.bank_folder is None:
                raise ValueError("noise kind 'bank' needs NoiseConfig.bank_folder or a NoiseBank passed as bank=")
            bank = config.bank_folder
        return cls(config.snr_db, kind=config.kind, color_exponent=config.color_exponent,
                   bank=bank if config.kind == "bank" else None, std=config.std, p=config.p, sample_rate=sample_rate,
                   backend=backend)

    @property
    def param_keys(self) -> tuple:
        cfg = self.config
        drawn = ("noise_index", "noise_start") if cfg.kind == "bank" else ("noise_seed",)
        return (("noise_applied",) + (("snr_db",) if cfg.std is None else ()) + drawn
                + (("color_exponent",) if cfg.kind == "colored" else ()))

    def sample(self, batch: int, length: int, generator=None, device=None, lengths: Optional[Tensor] = None) -> Params:
        cfg = self.config
        device = draw_device(generator, device)
        params = {"noise_applied": _coin(cfg.p, batch, generator, device)}
        if cfg.std is None:
            params["snr_db"] = _uniform(batch, *cfg.snr_db, generator, device)
        if cfg.kind == "bank":
            params["noise_index"] = torch.randint(len(self.bank), (batch,), generator=generator, device=device)
            params["noise_start"] = _randint_below(self.bank.lengths[params["noise_index"]], generator, device)
        else:
            params["noise_seed"] = draw_seeds(batch, generator, device)
            if cfg.kind == "colored":
                params["color_exponent"] = _uniform(batch, *cfg.color_exponent, generator, device)
        return params

    def noise(self, params: Params, length: int) -> Tensor:
        """The drawn noise ``(B, length)``, before its gain."""
        if self.config.kind == "bank":
            return self.bank.read(params["noise_index"], params["noise_start"], length)
        seed = params["noise_seed"]
        if kernels.use_kernels(self.backend, seed.device) and seed.device.type == "cpu":
            white = kernels.white_noise(seed, length)
        else:
            white = white_noise(seed, length)
        if self.config.kind == "colored":
            return colored_noise(white, params["color_exponent"])
        return white

    def add(self, x: Tensor, params: Params, valid: Optional[Tensor] = None, scale: Optional[Tensor] = None) -> Tensor:
        """``x`` ``(B, C, T)`` plus the drawn noise where applied; ``valid`` ``(B, T)`` bool: the SNR is measured over,
        and noise added to, those samples only; ``scale`` ``(B,)``: the rows of ``x`` are the clips divided by it, so a
        fixed-std noise is divided likewise (an SNR needs nothing)."""
        cfg = self.config
        B, C, T = x.shape
        dtype = work_dtype(x.dtype)
        x, noise = x.to(dtype), self.noise(params, T).to(dtype)
        if valid is not None:  # mask both once here; noise_gain then needs no mask of its own (it would redo both)
            v = valid.to(dtype)
            noise = noise * v
        if cfg.std is None:
            # the same noise in each of C channels: C times its energy, i.e. 10 log10(C) dB more SNR to ask for
            snr = params["snr_db"] + (10.0 * math.log10(C) if C > 1 else 0.0)
            gain = noise_gain((x if valid is None else x * v[:, None]).reshape(B, -1), noise, snr)
        else:
            gain = torch.full((B, 1), cfg.std, dtype=dtype, device=x.device)
            if scale is not None:
                gain = gain / scale.to(dtype).reshape(-1, 1)
        # a row the coin skipped gets gain 0 (x + 0 * noise == x): one pass, no second full-size tensor to select
        gain = gain * params["noise_applied"].reshape(-1, 1).to(dtype)
        return torch.addcmul(x, gain.unsqueeze(-1), noise.unsqueeze(1))

    def apply(self, x: Tensor, params: Params, valid: Optional[Tensor] = None, scale: Optional[Tensor] = None) -> Tensor:
        """:meth:`add` on mono rows ``x`` ``(B, T)`` (PairAugmenter's segments)."""
        return self.add(x.unsqueeze(1), params, valid, scale).squeeze(1)

    def transform(self, x: Tensor, params: Params, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        valid = None if lengths is None else valid_mask(lengths, x.shape[-1])
        return self.add(x, params, valid), lengths

    def extra_repr(self) -> str:
        c = self.config
        level = f"std={c.std}" if c.std is not None else f"snr_db={c.snr_db}"
        return f"kind={c.kind!r}, {level}, " + super().extra_repr()
