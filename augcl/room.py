"""Room reverberation: each example convolved with an impulse response from an :class:`~augcl.banks.RIRBank`.

:func:`fft_convolve` is linear convolution by real FFTs of size ``next_pow2(T + N - 1)`` (three of them per row),
cut to the input length, optionally read from a per-row delay (the IR's direct path) on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from . import kernels
from .banks import RIRBank, RoomSimConfig
from .core import Params, Transform, _coin, _select, _select_, draw_device, valid_mask, work_dtype


def _fft_size(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


def fft_convolve(wave: Tensor, ir: Tensor, delay: Optional[Tensor] = None) -> Tensor:
    """Linear convolution of each row with its own impulse response, cut to the input length.

    ``wave``: ``(..., T)``; ``ir``: ``(..., N)`` broadcastable to it. Returns ``(..., T)``: ``out[t] = sum_k
    ir[k] wave[t - k]``, i.e. ``numpy.convolve(wave, ir)[:T]``, so a unit impulse returns the input and the
    output is aligned with it (put the direct sound at index 0 of the IR; :class:`augcl.banks.RIRBank` does).
    ``delay`` ``(B,)`` integer, for ``(B, ..., T)`` input: row ``b`` reads the full convolution from ``delay[b]`` on
    (``numpy.convolve(wave, ir)[d : d + T]``), which compensates an IR whose direct sound sits at ``d``.
    Cost: three real FFTs of size ``next_pow2(T + N - 1)``.
    """
    dtype = work_dtype(wave.dtype)
    T, N = wave.shape[-1], ir.shape[-1]
    n = _fft_size(T + N - 1)
    return _convolve_spectrum(wave, torch.fft.rfft(ir.to(dtype), n=n), n, N, delay)


def _convolve_spectrum(wave: Tensor, ir_spectrum: Tensor, n: int, N: int, delay: Optional[Tensor] = None,
                       rows: Optional[Tensor] = None, backend: str = "torch") -> Tensor:
    """:func:`fft_convolve` with the IRs' spectra ``rfft(ir, n)`` given (``N``: the IRs' length). ``rows`` ``(B,)``:
    ``ir_spectrum`` is a table of spectra and row ``b`` of ``wave`` ``(B, ..., T)`` takes its row ``rows[b]``
    (multiplied without gathering them, by the CPU kernel, where ``backend`` runs it and no gradient is needed)."""
    T = wave.shape[-1]
    x = wave.to(work_dtype(wave.dtype))
    grad = torch.is_grad_enabled() and (x.requires_grad or ir_spectrum.requires_grad)
    if (rows is not None and not grad and x.ndim == 2 and x.device.type == "cpu"
            and kernels.use_kernels(backend, x.device)):
        padded = x.new_empty(x.shape[0], n)  # rfft(x, n)'s zero padding, but only the tail is zeroed
        padded[:, T:].zero_()
        padded[:, :T] = x
        full = torch.fft.irfft(kernels.mul_rows_(torch.fft.rfft(padded), ir_spectrum, rows), n=n)
        return _read_from(full, T, N, delay)
    spec = torch.fft.rfft(x, n=n)
    if rows is not None:
        ir_spectrum = ir_spectrum[rows].reshape((spec.shape[0],) + (1,) * (spec.ndim - 2) + (-1,))
    # in place where no gradient needs the product's factors: one batch-sized complex temporary (B=128: 16 MB) fewer
    in_place = not grad and torch.broadcast_shapes(spec.shape, ir_spectrum.shape) == spec.shape
    full = torch.fft.irfft(spec.mul_(ir_spectrum) if in_place else spec * ir_spectrum, n=n)
    return _read_from(full, T, N, delay)


def _read_from(full: Tensor, T: int, N: int, delay: Optional[Tensor]) -> Tensor:
    """``full[..., :T]``, or row ``b`` from ``delay[b]`` on (clamped to the IR's ``N`` samples)."""
    if delay is None:
        return full[..., :T]
    shape = (full.shape[0],) + (1,) * (full.ndim - 1)
    index = delay.to(device=full.device, dtype=torch.long).clamp(0, N - 1).reshape(shape) + torch.arange(
        T, device=full.device)
    return torch.gather(full, -1, index.expand(*full.shape[:-1], T))


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


class ApplyImpulseResponse(Transform):
    """Each example convolved with an impulse response drawn from a bank; the output keeps ``T`` samples.

    ``bank``: an :class:`~augcl.banks.RIRBank` (kept on the module's device: IRs are gathered by index, never re-read
    from disk), a folder of IR audio files (loaded once, at ``sample_rate``, cut to ``max_seconds``), or None: rooms
    simulated with pyroomacoustics (``sim``, cached on disk). Channels of an example share its IR. Samples past
    ``lengths`` are padding: they are zeroed before the convolution and the reverberant tail is cut there, as it is at
    ``T``. ``compensate_for_propagation_delay``: read the convolution from each IR's direct path (its peak) on, so
    the output stays aligned with the input (torch-audiomentations' option of that name); banks loaded with
    ``align=True`` (the default) are aligned already. ``backend``: on the CPU, ``"auto"``/``"kernels"`` multiply the
    clips' spectra by their IRs' in place, without gathering the bank's rows (:func:`augcl.kernels.mul_rows_`, within
    an ulp of the reference's product); ``"torch"`` gathers them. Params: ``rir_index``, ``rir_applied``.
    """

    param_keys = ("rir_applied", "rir_index")

    def __init__(self, bank: Union[RIRBank, str, Path, None] = None, *, p: float = 0.5,
                 compensate_for_propagation_delay: bool = False, max_seconds: float = 1.0,
                 sim: Optional[RoomSimConfig] = None, mode: str = "per_example", sample_rate: Optional[int] = None,
                 output_type: str = "tensor", backend: str = "auto"):
        super().__init__(p, mode, sample_rate, output_type)
        kernels.check_backend(backend)
        self.backend = backend
        if not isinstance(bank, RIRBank):
            if sample_rate is None:
                raise ValueError("ApplyImpulseResponse needs sample_rate= to load or simulate its bank at the "
                                 "pipeline's rate (or pass a loaded RIRBank as bank=)")
            bank = (RIRBank.from_folder(bank, sample_rate, max_seconds) if bank is not None
                    else RIRBank.simulated(sim or RoomSimConfig(), sample_rate))
        elif sample_rate is not None and bank.sample_rate != sample_rate:
            raise ValueError(f"RIR bank sample_rate {bank.sample_rate} != sample_rate {sample_rate}; "
                             "load the bank at the pipeline's rate")
        self.sample_rate = bank.sample_rate
        self.bank = bank
        self.compensate = bool(compensate_for_propagation_delay)
        self.register_buffer("delays", bank.irs.abs().argmax(dim=-1), persistent=False)

    @classmethod
    def from_config(cls, config: RIRConfig, bank: Optional[RIRBank] = None, sample_rate: int = 16000,
                    backend: str = "auto") -> "ApplyImpulseResponse":
        """The block a :class:`RIRConfig` describes (PairAugmenter's)."""
        if bank is None:
            bank = config.folder
        return cls(bank, p=config.p, max_seconds=config.max_seconds, sim=config.sim, sample_rate=sample_rate,
                   backend=backend)

    def sample(self, batch: int, length: int, generator=None, device=None, lengths: Optional[Tensor] = None) -> Params:
        device = draw_device(generator, device)
        return {
            "rir_applied": _coin(self.p, batch, generator, device),
            "rir_index": torch.randint(len(self.bank), (batch,), generator=generator, device=device),
        }

    def apply(self, x: Tensor, params: Params) -> Tensor:
        """``x`` ``(B, ..., T)`` convolved row by row with the drawn IRs where applied. The bank's spectra at the FFT
        size of the input's length are computed once and kept (one FFT per row saved: two instead of three)."""
        index = params["rir_index"]
        N = self.bank.irs.shape[-1]
        n = _fft_size(x.shape[-1] + N - 1)
        wet = _convolve_spectrum(x, self._bank_spectrum(n, work_dtype(x.dtype)), n, N,
                                 self.delays[index] if self.compensate else None, rows=index, backend=self.backend)
        applied = params["rir_applied"]
        if not wet.requires_grad and not torch.compiler.is_compiling():  # wet is ours: keep the dry rows in it
            return _select_(applied, wet, x)
        return _select(applied, wet, x)

    def _bank_spectrum(self, n: int, dtype: torch.dtype) -> Tensor:
        """``rfft(bank.irs, n)`` ``(len(bank), n // 2 + 1)``, kept until the bank's tensor, ``n`` or the dtype changes
        (``.to(device)`` makes a new tensor; under ``torch.compile`` it is computed in the graph instead)."""
        irs = self.bank.irs
        if torch.compiler.is_compiling():
            return torch.fft.rfft(irs.to(dtype), n=n)
        key = (id(irs), irs._version, irs.device, n, dtype)
        if getattr(self, "_spectrum_key", None) != key:
            self._spectrum = torch.fft.rfft(irs.to(dtype), n=n)
            self._spectrum_key = key
        return self._spectrum

    def transform(self, x: Tensor, params: Params, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        if lengths is None:
            return self.apply(x, params), None
        inside = valid_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)
        wet = self.apply(x * inside, params) * inside
        return _select(params["rir_applied"], wet, x), lengths  # an example left alone keeps its padding as it was

    def extra_repr(self) -> str:
        return (f"bank={len(self.bank)} IRs, compensate={self.compensate}, backend={self.backend!r}, "
                + super().extra_repr())
