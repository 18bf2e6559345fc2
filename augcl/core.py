"""What every augcl op and transform shares: devices, input checks, dtypes, parameter draws, and :class:`Transform`.

Ops take ``(B, T)`` batches of mono rows; :class:`Transform` (the base of the public modules) takes ``(B, T)`` or
``(B, C, T)`` and keeps the channels aligned. Parameters are drawn at once, as tensors on the batch's device, from an
explicit ``torch.Generator``; nothing here reads device memory on the host except where the docstring says so.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Params = dict


#: device types without float64 (Apple's MPS): rates, positions and parameter draws are float32 there
NO_FLOAT64 = ("mps",)


def cpu_branch(device: torch.device) -> bool:
    """Whether code for ``device`` takes its CPU branch, which reads tensor values on the host (free on a CPU, a sync
    anywhere else): True on a CPU, unless ``torch.compile`` is tracing (a value read on the host breaks the graph: the
    sync-free accelerator branch, the same output, traces whole). The tests run the accelerator branches on a CPU by
    patching this function (tests/conftest.py's ``device_branches``)."""
    return device.type == "cpu" and not torch.compiler.is_compiling()


def position_dtype(device=None) -> torch.dtype:
    """The float dtype of rates, fractional sample positions and parameter draws on ``device`` (None: the CPU):
    float64, exact to the sample for clips of any length; float32 on devices without float64 (:data:`NO_FLOAT64`),
    where positions past 2 ** 24 samples round and a stretched frame may sit a sample off the float64 one."""
    return torch.float32 if device is not None and torch.device(device).type in NO_FLOAT64 else torch.float64


def as_batch(wave: Tensor, name: str = "wave") -> Tensor:
    """Return ``wave`` as ``(B, T)``; raise a named TypeError/ValueError for anything else.

    Accepts ``(B, T)`` and ``(B, 1, T)`` floating tensors. Cost: O(1), no host sync.
    """
    if not isinstance(wave, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, T) or (B, 1, T), got {type(wave).__name__}")
    if wave.is_complex() or not wave.is_floating_point():
        raise TypeError(
            f"{name} must be a real floating tensor (float32/float64/bfloat16/float16), got {wave.dtype}; "
            f"convert int16 PCM with {name}.float() / 32768"
        )
    if wave.ndim == 3:
        if wave.shape[1] != 1:
            raise ValueError(
                f"{name} has {wave.shape[1]} channels (shape {tuple(wave.shape)}); augcl works on mono clips: "
                f"downmix with {name}.mean(dim=1, keepdim=True)"
            )
        wave = wave[:, 0]
    elif wave.ndim != 2:
        hint = f"{name}.unsqueeze(0)" if wave.ndim == 1 else f"{name}.reshape(-1, {name}.shape[-1])"
        raise ValueError(f"{name} must have shape (B, T) or (B, 1, T), got {tuple(wave.shape)}; try {hint}")
    if wave.shape[0] == 0 or wave.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(wave.shape)}); every clip needs at least one sample")
    return wave


def check_finite(wave: Tensor, name: str = "wave") -> None:
    """Raise ValueError if ``wave`` holds NaN or Inf (one reduction; a host sync on accelerators). Under
    ``torch.compile``: a device-side assert instead (``torch._assert_async``, a RuntimeError when it runs; no sync).

    The reduction is a sum: NaN and Inf propagate through it, and it is one fast pass (``isfinite(x).all()`` builds
    three full-size temporaries; docs/guide.md has the measured figures). Only a non-finite sum, which finite values
    too can give by overflowing, is confirmed element by element.
    """
    message = f"{name} contains NaN or Inf; clean the clip (e.g. torch.nan_to_num) before augmenting"
    if torch.compiler.is_compiling():  # no value read on the host: a device-side assert (inductor fuses the pass)
        torch._assert_async(torch.isfinite(wave).all(), message)
    elif not bool(torch.isfinite(wave.sum())) and not bool(torch.isfinite(wave).all()):
        raise ValueError(message)


def check_lengths(lengths: Tensor, wave: Tensor, check_values: bool = True, name: str = "lengths",
                  what: str = "valid samples per row of wave") -> Tensor:
    """Return ``lengths`` (valid samples per row of ``wave (B, T)``) as a ``(B,)`` long tensor, or raise a named error
    (``name``: the expression the caller passed, for the fixes the messages suggest; ``what``: what its values are).

    Checks type, dtype, shape and device (no host sync). ``check_values``: also check that every value lies in
    ``[1, T]`` (one reduction: a host sync on accelerators, so callers run it where they run :func:`check_finite`;
    under ``torch.compile`` a device-side assert, as there).
    """
    if not isinstance(lengths, Tensor):
        raise TypeError(f"{name} must be a (B,) integer torch.Tensor ({what}), got {type(lengths).__name__}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor ({what}), got {lengths.dtype}; use {name}.round().long()")
    B, T = wave.shape[0], wave.shape[-1]
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"{name} must have shape (B,) = ({B},), one value per row of wave, got {tuple(lengths.shape)}")
    if lengths.device != wave.device:
        raise ValueError(f"{name} is on {lengths.device} but wave is on {wave.device}; pass {name}.to(wave.device)")
    lengths = lengths.to(torch.long)
    if check_values:
        within = ((lengths >= 1) & (lengths <= T)).all()
        message = f"{name} must lie in [1, T] = [1, {T}] ({what})"
        if torch.compiler.is_compiling():  # no value read on the host: a device-side assert
            torch._assert_async(within, message)
        elif not bool(within):
            raise ValueError(f"{message}; got min {int(lengths.min())}, max {int(lengths.max())}")
    return lengths


def valid_mask(lengths: Tensor, length: int) -> Tensor:
    """``(B, length)`` bool mask, True at the first ``lengths[b]`` samples of row ``b`` (an ``arange`` comparison)."""
    return torch.arange(length, device=lengths.device) < lengths.reshape(-1, 1)


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype computation runs in: float64 stays, everything else becomes float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pad_to_length(wave: Tensor, length: int) -> Tensor:
    """Zero-pad ``(B, T)`` at the end to at least ``length`` samples (the policy for clips shorter than a segment)."""
    short = length - wave.shape[-1]
    return F.pad(wave, (0, short)) if short > 0 else wave


def power_of_two_scale(wave: Tensor, limit: float, norm: Optional[Tensor] = None) -> Tensor:
    """``(B,)`` per row of ``wave`` ``(B, T)``: 1 where the row's L2 norm is at most ``limit``, else the power of two
    ``2 ** (e - 1)`` that brings the row's peak ``|x|`` into ``[1, 2)`` (NaN for a row holding NaN or Inf).

    Dividing a row by a power of two is exact, and a linear pipeline's output scales back exactly: a row too loud for
    float32 powers (``|x| ** 2`` overflows from ``|x| ~ 1.8e19``) is augmented divided by it and its log-mels shifted
    back (``log_of_mel(..., log_gain=)``). ``norm`` ``(B,)``: the rows' L2 norms, if already computed. Cost: one pass for
    the norm (unless given) and two for the peak; no host sync.
    """
    if norm is None:
        norm = torch.linalg.vector_norm(wave, dim=-1)
    peak = torch.maximum(wave.amax(dim=-1), -wave.amin(dim=-1))
    mantissa, _ = torch.frexp(peak)  # peak = mantissa * 2 ** e, mantissa in [0.5, 1)
    scale = peak / (2 * mantissa)  # exactly 2 ** (e - 1): the exact quotient is representable (2 ** e may not be)
    return torch.where(norm <= limit, torch.ones_like(scale), scale)


def _gather_windows(wave: Tensor, start: Tensor, width: int, rows: Optional[Tensor] = None,
                    limit: Optional[Tensor] = None) -> Tensor:
    """``out[b, ..., i] = wave[rows[b], start[b, ...] + i]`` with zeros outside ``[0, min(T, limit[b]))``.

    ``start``: integer tensor ``(B, ...)``; ``rows``: ``(B,)`` rows of ``wave`` to read (default: all, in order);
    ``limit``: ``(B,)`` long, the end of each output row's valid samples (indexed like ``start``: with ``rows``,
    ``limit[b]`` belongs to ``wave[rows[b]]``, i.e. pass ``lengths[rows]``); samples at or past it read as zeros,
    whatever ``wave`` holds there (default: none, only ``T``). Returns ``(B, ..., width)``. The limit costs a pass
    over the output (over the windows that cross it, on a CPU), never one over ``wave``.
    """
    T = wave.shape[-1]
    B = start.shape[0]
    if rows is None and B != wave.shape[0]:
        raise ValueError(f"start has {B} rows but wave has {wave.shape[0]}; pass rows= to read a subset")
    if cpu_branch(wave.device) and T >= width:
        # index whole windows out of a zero-copy unfold view (a row copy each, instead of an int64 index
        # per sample), then redo the few windows that cross the clip's ends sample by sample (a host-side choice: no
        # sync on a CPU). Only those windows: redoing their whole rows cost whole-clip stretches 8x the reads
        inner = start.clamp(0, T - width)
        index = torch.arange(B) if rows is None else rows
        out = wave.unfold(-1, width, 1)[index.reshape((B,) + (1,) * (start.ndim - 1)), inner]
        edge = (inner != start).nonzero(as_tuple=True)
        if len(edge[0]):
            pos = start[edge].unsqueeze(-1) + torch.arange(width)
            inside = ((pos >= 0) & (pos < T)).to(wave.dtype)
            out[edge] = wave[index[edge[0]].unsqueeze(-1), pos.clamp(0, T - 1)] * inside
        if limit is not None:  # zero the tails of the windows that cross the limit (host-side choice, as above)
            valid = limit.to(torch.long).reshape((B,) + (1,) * (start.ndim - 1)) - start  # valid samples per window
            flat, valid = out.reshape(-1, width), valid.reshape(-1)
            cut = (valid < width).nonzero().flatten()
            if len(cut):
                flat[cut] = flat[cut].masked_fill(torch.arange(width) >= valid[cut, None], 0.0)
        return out
    return _gather_samples(wave if rows is None else wave[rows], start, width, limit)


def crop_segments(wave: Tensor, start: Tensor, length: int, lengths: Optional[Tensor] = None) -> Tensor:
    """Per-example segments ``wave[b, start[b] : start[b] + length]`` as ``(B, length)``; zeros past the end.

    ``lengths`` ``(B,)``: valid samples per row; samples at or past ``lengths[b]`` read as zeros (default: ``T``).
    """
    dev = wave.device
    limit = None if lengths is None else lengths.to(device=dev, dtype=torch.long)
    return _gather_windows(wave, start.to(device=dev, dtype=torch.long), length, limit=limit)


def _gather_samples(wave: Tensor, start: Tensor, width: int, limit: Optional[Tensor] = None) -> Tensor:
    """:func:`_gather_windows` by an index per sample (any device, any window); ``limit`` ``(B,)`` as there."""
    B, T = wave.shape
    idx = start.unsqueeze(-1) + torch.arange(width, device=wave.device)
    end = T if limit is None else limit.to(torch.long).clamp_max(T).reshape((B,) + (1,) * start.ndim)
    inside = (idx >= 0) & (idx < end)
    flat = idx.clamp(0, T - 1).reshape(B, -1)
    out = torch.gather(wave, 1, flat).reshape(idx.shape)
    return out * inside.to(out.dtype)


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
    u = torch.rand(high.shape, generator=generator, device=device, dtype=position_dtype(device))
    return torch.minimum((u * high).long(), high - 1)


def _select(applied: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(applied.reshape([-1] + [1] * (new.ndim - 1)), new, old.to(new.dtype))


def _select_(applied: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """:func:`_select` into ``new`` (a tensor the caller owns and no gradient reads): on a CPU only the rows not
    applied are written (a host-side selection, free there; none where every row is), elsewhere one ``where`` into
    ``new`` (no sync). Returns ``new``."""
    if cpu_branch(new.device):
        keep = (~applied).nonzero().flatten()
        if len(keep):
            new[keep] = old[keep].to(new.dtype)
        return new
    return torch.where(applied.reshape([-1] + [1] * (new.ndim - 1)), new, old.to(new.dtype), out=new)


#: what a call traced by ``torch.compile`` raises where it would draw parameters from a ``torch.Generator``
GENERATOR_UNDER_COMPILE = (
    "torch.compile cannot trace draws from a torch.Generator (torch 2.14's dynamo: 'Failed to convert args/kwargs to "
    "proxy'); draw the parameters eagerly and compile the call with params=: params = aug.sample(B, T, generator=g) "
    "(t.sample(B, T, generator=g) for a transform, or an earlier call's params), then "
    "torch.compile(lambda w, p: aug(w, params=p), fullgraph=True)(wave, params); see docs/guide.md, 'torch.compile'")


def check_traceable_draw(generator) -> None:
    """Raise a RuntimeError naming the supported way (:data:`GENERATOR_UNDER_COMPILE`) if ``torch.compile`` is tracing
    a draw from ``generator``: dynamo cannot trace ``generator=`` draws. In eager, or with ``generator=None`` (torch's
    global RNG, which inductor replaces with its own), nothing."""
    if generator is not None and torch.compiler.is_compiling():
        raise RuntimeError(GENERATOR_UNDER_COMPILE)


def check_generator(generator, device: Optional[torch.device] = None) -> None:
    """Raise a named TypeError unless ``generator`` is a ``torch.Generator`` (or None), and a ValueError if it is on
    another device type than ``device``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}; pass "
                        f"torch.Generator(device=wave.device).manual_seed(seed)")
    if generator is not None and device is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the input is on {device}; "
                         f"create it with torch.Generator(device=input.device)")


# ----------------------------------------------------------------------------------------------------------
# the public transforms' base
# ----------------------------------------------------------------------------------------------------------
class ObjectDict(dict):
    """A dict with attribute access: torch-audiomentations' output object (``out.samples``, ``out["samples"]``).

    augcl's transforms return one with ``output_type="dict"``: ``samples``, ``sample_rate``, ``targets``,
    ``target_rate`` (as torch-audiomentations 0.12), plus ``lengths`` (valid samples per example after the transform,
    or None) and ``params`` (the drawn parameters: pass them back as ``params=`` to replay the batch).
    """

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


MODES = ("per_example", "per_channel", "per_batch")
OUTPUT_TYPES = ("tensor", "dict")


class Transform(nn.Module):
    """Base of augcl's public batched transforms: draw every parameter of a batch at once, then apply them.

    ``t(samples, sample_rate=None, *, lengths=None, generator=None, params=None)``:

    * ``samples``: ``(B, C, T)`` (torch-audiomentations' layout) or ``(B, T)``; float of any dtype, any device. The
      output has the same layout, dtype and device (computation runs in float32, float64 stays float64).
    * ``lengths`` ``(B,)`` integer: valid samples per example of a zero-padded batch (default: all ``T``); each
      transform treats the padding as padding (never as signal), and the dict output says what is valid afterwards.
    * ``generator``: a ``torch.Generator`` on the input's device type (default: the global one); every parameter is
      drawn from it at once, as tensors on the input's device: no Python loop over examples, no host sync.
    * ``params``: the ``params`` of an earlier call (``output_type="dict"``) or of :meth:`sample`; they are replayed.
    * ``mode``: ``"per_example"`` (one draw per example, shared by its channels: they stay aligned),
      ``"per_channel"`` (one draw per channel) or ``"per_batch"`` (one draw for the whole batch). ``p``: the
      probability that an example (channel, batch) is transformed; the others come out unchanged.
    * ``output_type``: ``"tensor"`` (the default, as torch-audiomentations 0.12 when none is given) or ``"dict"``, an
      :class:`ObjectDict` with ``samples``, ``sample_rate``, ``targets``, ``target_rate``, ``lengths`` and ``params``.
      torch-audiomentations' ``Compose`` sets ``output_type = "dict"`` on its children but calls the ones that are not
      its own classes as tensor -> tensor, so augcl reads the value given to the constructor (``self.returns``):
      inside a ``Compose``, leave it at ``"tensor"``.
    * In ``eval()`` mode the input is returned unchanged, as torch-audiomentations does.
    """

    #: the keys :meth:`sample` returns, besides ``length``
    param_keys: tuple = ()
    #: trailing dimensions of one channel of one example: 1 for waveforms ``(T,)``, 2 for spectrograms ``(F, K)``
    event_dims: int = 1

    def __init__(self, p: float = 0.5, mode: str = "per_example", sample_rate: Optional[int] = None,
                 output_type: str = "tensor"):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, int)
                                        or sample_rate < 1):
            raise ValueError(f"sample_rate must be a positive int (Hz) or None, got {sample_rate!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        self.p = float(p)
        self.mode = mode
        self.sample_rate = sample_rate
        self.returns = output_type

    # -- to implement ------------------------------------------------------------------------------------------
    def sample(self, batch: int, *shape, generator=None, device=None, lengths: Optional[Tensor] = None) -> Params:
        """Draw the parameters of ``batch`` examples whose channels have ``shape`` (``T``, or ``F, K``)."""
        raise NotImplementedError

    def transform(self, x: Tensor, params: Params, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """Apply ``params`` to ``x`` ``(N, C, *shape)`` (float32 or float64); return the output and its ``lengths``."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------------------
    def _layout(self, samples: Tensor) -> Tensor:
        """``samples`` as ``(B, C, *event)``; a named error for anything else."""
        e = self.event_dims
        what = "(B, C, T) or (B, T)" if e == 1 else "(B, C, F, K) or (B, F, K)"
        if not isinstance(samples, Tensor):
            raise TypeError(f"samples must be a torch.Tensor {what}, got {type(samples).__name__}")
        if samples.is_complex() or not samples.is_floating_point():
            raise TypeError(f"samples must be a real floating tensor, got {samples.dtype}; convert int16 PCM with "
                            f"samples.float() / 32768")
        if samples.ndim == e + 1:
            samples = samples.unsqueeze(1)
        elif samples.ndim != e + 2:
            raise ValueError(f"samples must have shape {what}, got {tuple(samples.shape)}"
                             + ("; add the batch dimension with samples.unsqueeze(0)" if samples.ndim == e else ""))
        if samples.numel() == 0:
            raise ValueError(f"samples is empty (shape {tuple(samples.shape)})")
        return samples

    def _check_rate(self, sample_rate: Optional[int]) -> Optional[int]:
        if sample_rate is None or self.sample_rate is None:
            return sample_rate if sample_rate is not None else self.sample_rate
        if int(sample_rate) != self.sample_rate:
            raise ValueError(f"sample_rate={sample_rate} but {type(self).__name__} was built for {self.sample_rate} Hz "
                             f"(its banks and durations are at that rate); resample the input or build it with "
                             f"sample_rate={sample_rate}")
        return self.sample_rate

    def check_params(self, params, rows: int, device: torch.device) -> None:
        """Raise a named error unless ``params`` hold this transform's keys (and, as a call records them, the
        ``lengths`` the draws were made for; params written by hand may leave them out), as tensors of ``rows`` rows on
        ``device``. Shapes only: no host sync (``lengths`` are checked against the input where lengths are checked: on
        a CPU)."""
        redraw = "pass the params an earlier call returned for this batch (output_type='dict'), or params=None"
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict of tensors, got {type(params).__name__}; {redraw}")
        if "length" in params:
            raise ValueError(f"params hold 'length': they come from an older augcl; draw them again, or {redraw}")
        expected = set(self.param_keys)
        missing, extra = sorted(expected - params.keys()), sorted(params.keys() - expected - {"lengths"})
        if missing or extra:
            found = "; ".join(f"{what} {keys}" for what, keys in (("missing", missing), ("not its own", extra)) if keys)
            raise ValueError(f"params do not match {type(self).__name__} ({found}); {redraw}")
        for k, v in params.items():
            if not isinstance(v, Tensor) or v.ndim == 0:
                raise TypeError(f"params[{k!r}] must be a tensor with one row per example; {redraw}")
            if v.shape[0] != rows:
                raise ValueError(f"params[{k!r}] has {v.shape[0]} rows but the input has {rows} ({self.mode}); {redraw}")
            if v.device != device:
                raise ValueError(f"params[{k!r}] is on {v.device} but the input is on {device}; move them with "
                                 f"{{k: v.to(device) for k, v in params.items()}}")

    def forward(self, samples: Tensor, sample_rate: Optional[int] = None, targets: Optional[Tensor] = None,
                target_rate: Optional[int] = None, *, lengths: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None, params: Optional[Params] = None):
        x = self._layout(samples)
        sample_rate = self._check_rate(sample_rate)
        check_generator(generator, x.device)
        B, C = x.shape[:2]
        event = tuple(x.shape[2:])
        if lengths is not None:
            lengths = check_lengths(lengths, x[:, 0], check_values=cpu_branch(x.device))
        if not self.training:
            return self._output(samples, lengths, {}, sample_rate, targets, target_rate)
        if targets is not None and not self.keeps_time:
            raise ValueError(f"{type(self).__name__} moves samples in time, so frame targets would no longer match; "
                             f"pass targets=None")
        per_channel = self.mode == "per_channel"
        rows = B * C if per_channel else B
        if per_channel:
            x = x.reshape(B * C, 1, *event)
            lengths = None if lengths is None else lengths.repeat_interleave(C)
        if params is None:
            check_traceable_draw(generator)
            if self.mode == "per_batch":
                shortest = None if lengths is None else lengths.amin().reshape(1)
                drawn = self.sample(1, *event, generator=generator, device=x.device, lengths=shortest)
                params = {k: v.expand(rows, *v.shape[1:]) for k, v in drawn.items()}
            else:
                params = dict(self.sample(rows, *event, generator=generator, device=x.device, lengths=lengths))
            params["lengths"] = (torch.full((rows,), event[-1], dtype=torch.long, device=x.device) if lengths is None
                                 else lengths.clone())
        else:
            self.check_params(params, rows, x.device)
            params = dict(params)  # the caller's dict is not modified: the returned one records this call's lengths
            if lengths is not None:
                params["lengths"] = lengths.clone()
            elif "lengths" in params:  # a replay reads the inputs' first params["lengths"] samples
                params["lengths"] = check_lengths(params["lengths"], x[:, 0], check_values=cpu_branch(x.device),
                                                  name="params['lengths']", what="the lengths the params were drawn for")
        lengths = params.get("lengths")  # one path, drawn or replayed (hand-written params may have none)
        y, out_lengths = self.transform(x.to(work_dtype(x.dtype)), params, lengths)
        y = y.to(samples.dtype)
        if per_channel:
            y = y.reshape(B, C, *y.shape[2:])
            out_lengths = None if out_lengths is None else out_lengths.reshape(B, C)  # one per channel
        if samples.ndim == self.event_dims + 1:
            y = y[:, 0]
        return self._output(y, out_lengths, params, sample_rate, targets, target_rate)

    #: whether sample ``t`` of the output is sample ``t`` of the input, transformed (frame targets stay valid)
    keeps_time: bool = True

    def _output(self, y, lengths, params, sample_rate, targets, target_rate):
        if self.returns == "dict":
            return ObjectDict(samples=y, sample_rate=sample_rate, targets=targets, target_rate=target_rate,
                              lengths=lengths, params=params)
        return y

    def extra_repr(self) -> str:
        rate = "" if self.sample_rate is None else f", sample_rate={self.sample_rate}"
        return f"p={self.p}, mode={self.mode!r}{rate}"
