"""``torch.compile(fullgraph=True)`` on the CPU (inductor, the default backend): PairAugmenter's presets and every
standalone transform trace whole (a graph break or a host sync fails the trace) and give eager's output for the same
params; a draw from a ``torch.Generator`` is refused with the error that names ``params=``; traced input checks
assert on the device instead of reading values on the host.

Slow: inductor builds each graph in C++, 1-30 s apiece on a 2-core CPU (the first also pays ~15 s of start-up), a few
seconds less from a warm inductor cache. Shapes are small (3 clips of 0.5-1 s).
"""
import numpy as np
import pytest
import torch

from augcl import (AddNoise, ApplyImpulseResponse, Gain, LogMel, PairAugmenter, RandomSegment, SpecAugment,
                   TimeStretch)

from .conftest import SR, cpu_generator, make, tone

pytestmark = pytest.mark.slow

#: waveforms (and SpecAugment's spectrograms): inductor fuses and reorders float32 arithmetic (sums in another order,
#: FMAs, vectorised exp/pow within an ulp or two), a few ulps of the values. Seen: at most 1.2e-7 on a peak of 0.7
#: (colored noise: two FFTs); the crops, gains and rooms are exact
WAVE = dict(rtol=1e-5, atol=1e-6)
#: log-mels, in nepers (an absolute error there is a relative error of the mel energy): the same reordering in the FFT
#: and the mel matmul moves a bin by a few ulps of the frame's largest terms, a larger share of a quiet bin. Seen: at
#: most 1.9e-5 (ts+mask's positive); 1e-4 nepers is 4e-4 dB
LOGMEL = dict(rtol=0, atol=1e-4)

#: the vocoder's outputs: compiled, every backend traces the float32 reference (the kernels do not trace), which adds
#: each bin's synthesis phase up unwrapped over the frames (hundreds of radians, where float32's spacing is 3e-5 rad),
#: so reordering that math moves the output by about the reference's own error against the float64 pipeline. The
#: bound: against float64, at most this many times the eager float32 reference's error, plus WAVE's or LOGMEL's atol.
#: Seen: TimeStretch 6.7e-5 (reference 8.0e-5, the CPU kernel eager 2.0e-5) on a peak of 0.35; all's positive
#: log-mels 3.0e-3 nepers (reference 3.2e-3), and 0.4-1.75 times the reference's error over 24 batches. Two float32
#: orders of the same math, neither closer to float64 by design: 3 leaves room for that spread, and a real error (a
#: wrong phase path) is orders of magnitude above it
VOCODER_ERROR_FACTOR = 3.0

B, T = 3, 16000
LENGTHS = torch.tensor([T, 12000, 6000])  # the last clip is shorter than a segment (15200 samples + context)


def clips(batch: int = B, length: int = T, channels: int = 0) -> torch.Tensor:
    """A tone per row (and channel) over a little noise: peaks for the vocoder to lock, no silent bins."""
    g = np.random.default_rng(0)
    rows = [tone(g.uniform(200, 2000), length / SR, 0.3, phase=g.uniform(0, 6))[:length]
            for _ in range(batch * max(channels, 1))]
    x = torch.from_numpy(np.stack(rows) + 0.01 * g.standard_normal((len(rows), length)).astype(np.float32))
    return x.reshape(batch, channels, length) if channels else x


def compiled(fn):
    """``fn`` under ``torch.compile(fullgraph=True)`` (inductor), from a fresh dynamo state."""
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True)


def assert_vocoder_as_eager(out, eager, reference, truth, floor):
    """``out`` (compiled) is as close to the float64 ``truth`` as the eager float32 ``reference`` (at most
    VOCODER_ERROR_FACTOR times its error, plus ``floor``: the atol of that kind of output), hence within that plus
    the reference's error of ``eager`` (the reference, or the kernels, which are closer to the truth)."""
    own = (reference.double() - truth).abs().max().item()
    bound = VOCODER_ERROR_FACTOR * own + floor
    assert (out.double() - truth).abs().max().item() <= bound
    torch.testing.assert_close(out, eager, rtol=0, atol=bound + own)


def assert_preset_as_eager(preset, impulse_bank):
    """Compile ``preset``'s forward with params (lengths given, check_finite=True: its checks traced) and check it
    against eager; returns the compiled call and its inputs."""
    aug = make(preset, impulse_bank, check_finite=True)
    x = clips()
    params = aug.sample(B, T, cpu_generator(0), lengths=LENGTHS)
    eager = aug(x, params=params)
    run = compiled(lambda w, p: aug(w, params=p))
    out = run(x, params)
    assert out.params.keys() == eager.params.keys()
    assert all(torch.equal(out.params[k], eager.params[k]) for k in eager.params)
    torch.testing.assert_close(out.anchor, eager.anchor, **LOGMEL)
    if preset != "all":
        torch.testing.assert_close(out.positive, eager.positive, **LOGMEL)
    else:
        reference = make(preset, impulse_bank, backend="torch")(x, params=params).positive
        truth = aug(x.double(), params=params).positive
        assert_vocoder_as_eager(out.positive, eager.positive, reference, truth, LOGMEL["atol"])
    return run, x, params


@pytest.mark.parametrize("preset", ["all", "cola"])
def test_presets_trace_whole_and_equal_eager_on_the_same_params(preset, impulse_bank):
    """all: the vocoder, rooms, masks; cola: the whole-clip norm, uncentred frames, fixed-std noise (ts+mask: below)."""
    assert_preset_as_eager(preset, impulse_bank)


def test_ts_mask_traces_whole_equals_eager_and_its_checks_assert_on_the_device(one_thread):
    """ts+mask (stretched frames, masks, white noise) as above; then NaN input, lengths outside [1, T] and a replayed
    rate above the stretch's bound are device-side asserts (a RuntimeError when the graph runs), not host reads."""
    run, x, params = assert_preset_as_eager("ts+mask", None)
    nan = x.clone()
    nan[1, 5] = float("nan")
    with pytest.raises(RuntimeError, match="wave contains NaN or Inf"):
        run(nan, params)
    with pytest.raises(RuntimeError, match=r"lengths.* must lie in \[1, T\]"):
        run(x, {**params, "lengths": torch.tensor([T, 0, 6000])})
    fast = torch.full_like(params["positive.stretch_rate"], 1.5)
    with pytest.raises(RuntimeError, match="stretch rate above max_rate"):
        run(x, {**params, "positive.stretch_rate": fast})


def _transforms(bank, **kw):
    """One of each standalone transform, returning dicts (their params and lengths); modes and options that take
    other code: per_batch Gain, per_channel SpecAugment, a stretch that lengthens, a delay-compensated room."""
    return {
        "TimeStretch": lambda: TimeStretch(0.8, 1.25, p=0.7, leave_length_unchanged=False, output_type="dict", **kw),
        "ApplyImpulseResponse": lambda: ApplyImpulseResponse(bank, p=0.7, compensate_for_propagation_delay=True,
                                                             output_type="dict"),
        "AddNoise": lambda: AddNoise((0.0, 20.0), kind="colored", p=0.7, output_type="dict"),
        "Gain": lambda: Gain(p=0.7, mode="per_batch", output_type="dict"),
        "RandomSegment": lambda: RandomSegment(4000, p=0.7, output_type="dict"),
        "SpecAugment": lambda: SpecAugment(p=0.7, mode="per_channel", output_type="dict"),
    }


@pytest.mark.parametrize("name", ["TimeStretch", "ApplyImpulseResponse", "AddNoise", "Gain", "RandomSegment",
                                  "SpecAugment", "LogMel"])
def test_standalone_transforms_trace_whole_and_equal_eager_on_the_same_params(name, impulse_bank):
    """(B, C, T) = (3, 2, 8000) with lengths; SpecAugment on (3, 2, 64, 50) with valid frames; params from an eager
    call's dict output."""
    if name == "LogMel":
        mel, x = LogMel(sample_rate=SR), clips()
        torch.testing.assert_close(compiled(mel)(x, LENGTHS), mel(x, LENGTHS), **LOGMEL)
        return
    t = _transforms(impulse_bank)[name]()
    if name == "SpecAugment":
        x, lengths = torch.randn(B, 2, 64, 50, generator=cpu_generator(1)), torch.tensor([50, 40, 30])
    else:
        x, lengths = clips(length=8000, channels=2), torch.tensor([8000, 6000, 5000])
    eager = t(x, lengths=lengths, generator=cpu_generator(0))
    out = compiled(lambda w, n, p: t(w, lengths=n, params=p))(x, lengths, eager.params)
    assert torch.equal(out.lengths, eager.lengths)
    if name != "TimeStretch":
        torch.testing.assert_close(out.samples, eager.samples, **WAVE)
        return
    reference = _transforms(impulse_bank, backend="torch")[name]()(x, lengths=lengths, params=eager.params).samples
    truth = t(x.double(), lengths=lengths, params=eager.params).samples
    assert_vocoder_as_eager(out.samples, eager.samples, reference, truth, WAVE["atol"])


def test_generator_draws_are_refused_naming_params_and_the_global_rng_traces():
    """Dynamo cannot trace draws from an explicit torch.Generator: fullgraph raises the error naming params=. Without
    a generator the draws trace (inductor's own random numbers, not eager's for the same seed), and the params returned
    record them: an eager replay gives the compiled output."""
    aug, gain = PairAugmenter.from_preset("mask", sample_rate=SR), Gain(p=0.5, output_type="dict")
    x = clips()
    for call in (lambda w, g: aug(w, generator=g), lambda w, g: gain(w.unsqueeze(1), generator=g)):
        with pytest.raises(torch._dynamo.exc.Unsupported, match="compile the call with params="):
            compiled(call)(x, cpu_generator(0))
    out = compiled(lambda w: gain(w))(x)
    torch.testing.assert_close(out.samples, gain(x, params=out.params).samples, **WAVE)
