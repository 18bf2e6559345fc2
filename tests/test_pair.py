"""PairAugmenter and the transforms: shapes, determinism, replay, per-example independence, bounds, bad input."""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from augcl import (PRESETS, BranchConfig, GainConfig, MaskConfig, NoiseConfig, PairAugmenter, PairConfig, RIRBank,
                   StretchConfig)
from augcl import functional as AF
from augcl.transforms import AddNoise, RandomSegment, SpecAugment

from .conftest import SR, cpu_generator, make, tone

FAST_PRESETS = ["noise", "ts", "mask", "ts+mask", "cola"]




@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("shape", [(3, 160000), (2, 1, 40000)])
def test_every_preset_gives_finite_pairs_of_the_paper_shape(preset, shape, impulse_bank):
    aug = make(preset, impulse_bank)
    pair = aug(torch.randn(shape) * 0.1, generator=cpu_generator())
    frames = 98 if preset == "cola" else 96
    assert pair.anchor.shape == pair.positive.shape == (shape[0], 1, 64, frames)
    assert torch.isfinite(pair.anchor).all() and torch.isfinite(pair.positive).all()
    for k, v in pair.params.items():
        assert k.startswith(("anchor.", "positive.")) or k == "lengths", k
        assert v.shape[0] == shape[0], k
    assert torch.equal(pair.params["lengths"], torch.full((shape[0],), shape[-1]))  # the lengths the draws were made for
    assert pair.finite.dtype == torch.bool and pair.finite.all()


def test_default_segment_is_96_frames_of_0_95_seconds():
    aug = PairAugmenter.from_preset("ts+mask")
    assert aug.segment_samples == 15200


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_output_dtype_and_device_follow_input(dtype):
    pair = make("ts+mask")(torch.randn(2, 20000).to(dtype), generator=cpu_generator())
    assert pair.anchor.dtype == pair.positive.dtype == dtype
    assert pair.anchor.device == torch.device("cpu")


@pytest.mark.parametrize("preset", FAST_PRESETS + ["all"])
def test_same_seed_same_output_and_other_seed_differs(preset, impulse_bank):
    aug = make(preset, impulse_bank)
    x = torch.randn(4, 32000)
    a, b, c = (aug(x, generator=cpu_generator(s)) for s in (5, 5, 6))
    assert torch.equal(a.anchor, b.anchor) and torch.equal(a.positive, b.positive)
    assert not torch.equal(a.positive, c.positive)


def test_replay_from_params_is_exact(impulse_bank):
    aug = make("all", impulse_bank)
    x = torch.randn(4, 32000)
    first = aug(x, generator=cpu_generator(3))
    again = aug(x, params=first.params)
    assert torch.equal(first.anchor, again.anchor) and torch.equal(first.positive, again.positive)


def test_each_example_depends_only_on_its_own_row_and_params(impulse_bank):
    """Batch consistency: permuting the batch and its params permutes the output."""
    aug = make("all", impulse_bank)
    x = torch.randn(5, 30000)
    pair = aug(x, generator=cpu_generator(0))
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = aug(x[perm], params={k: v[perm] for k, v in pair.params.items()})
    torch.testing.assert_close(permuted.anchor, pair.anchor[perm], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(permuted.positive, pair.positive[perm], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "kernels"])
@pytest.mark.parametrize("preset", FAST_PRESETS + ["all"])
def test_chunked_output_equals_the_whole_batch(preset, backend, impulse_bank):
    """chunk_size changes only how many rows go through a branch at a time, never the pair (chunks of 3 of a
    batch of 7: uneven last chunk)."""
    pytest.importorskip("numba") if backend == "kernels" else None
    x = torch.randn(7, 40000, generator=cpu_generator(8)) * 0.1
    whole = make(preset, impulse_bank, backend=backend, chunk_size=64)(x, generator=cpu_generator(2))
    chunked = make(preset, impulse_bank, backend=backend, chunk_size=3)(x, params=whole.params)
    torch.testing.assert_close(chunked.anchor, whole.anchor, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.positive, whole.positive, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset, fused", [("ts+mask", (True, True)), ("all", (True, False)), ("mask", (True, False))])
def test_default_chunks_on_the_cpu_kernels(preset, fused, impulse_bank):
    """Without chunk_size, a branch the fused kernels compute whole (the anchor's crop + noise + log-mel, the
    positive's stretched log-mel) takes the batch in one chunk; every other branch (vocoder, RIR, a plain crop,
    float64) KERNEL_CHUNK rows at a time; chunk_size= overrides both; without the kernels every branch takes
    CPU_CHUNK."""
    from augcl.pair import CPU_CHUNK, KERNEL_CHUNK

    pytest.importorskip("numba")
    B = KERNEL_CHUNK + 5
    x = torch.zeros(B, 32000)
    aug = make(preset, impulse_bank, backend="kernels")
    params = aug.sample(B, x.shape[-1], cpu_generator(0))

    def split(size):
        return [size] * (B // size) + ([B % size] if B % size else [])

    for branch, whole in zip((aug.anchor, aug.positive), fused):
        assert branch.fused(x) is whole
        sizes = [chunk[0].shape[0] for chunk in aug.chunks(x, params, None, branch)]
        assert sizes == ([B] if whole else split(KERNEL_CHUNK))
    x64 = x.double()  # float64: no fused kernel (the kernels' FFT is float32), so every branch is chunked
    for branch in (aug.anchor, aug.positive):
        assert not branch.fused(x64)
        assert [c[0].shape[0] for c in aug.chunks(x64, params, None, branch)] == split(KERNEL_CHUNK)
    given = make(preset, impulse_bank, backend="kernels", chunk_size=16)
    for branch in (given.anchor, given.positive):
        assert [c[0].shape[0] for c in given.chunks(x, params, None, branch)] == split(16)
    reference = make(preset, impulse_bank, backend="torch")
    for branch in (reference.anchor, reference.positive):
        assert [c[0].shape[0] for c in reference.chunks(x, params, None, branch)] == split(CPU_CHUNK)


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, True])
def test_bad_chunk_size_gets_a_named_error(chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        make("ts+mask", chunk_size=chunk_size)


def test_batch_of_one_equals_its_row_in_a_batch():
    aug = make("ts+mask")
    x = torch.randn(3, 30000)
    pair = aug(x, generator=cpu_generator(0))
    one = aug(x[1:2], params={k: v[1:2] for k, v in pair.params.items()})
    torch.testing.assert_close(one.positive, pair.positive[1:2], atol=1e-4, rtol=1e-4)


def test_anchor_and_positive_segments_come_from_the_same_clip():
    """Clips are tones of different frequencies: both views of clip b peak in clip b's mel band."""
    freqs = [300.0, 700.0, 1500.0, 3000.0]
    x = torch.from_numpy(np.stack([tone(f, 10.0) for f in freqs]))
    pair = make("ts")(x, generator=cpu_generator(0))
    bands_a = pair.anchor[:, 0].mean(-1).argmax(-1)
    bands_p = pair.positive[:, 0].mean(-1).argmax(-1)
    assert torch.equal(bands_a, bands_p) and len(set(bands_a.tolist())) == 4


def test_segment_positions_are_independent_and_cover_the_clip():
    aug = make("noise")
    params = aug.sample(4000, 160000, cpu_generator(0))
    a, p = params["anchor.start"].double(), params["positive.start"].double()
    hi = 160000 - aug.segment_samples
    assert a.min() >= 0 and a.max() <= hi and p.min() >= 0 and p.max() <= hi
    assert abs(float(np.corrcoef(a.numpy(), p.numpy())[0, 1])) < 0.06  # 4000 pairs: 3.8 sigma
    assert a.mean() / hi == pytest.approx(0.5, abs=0.03)


@given(seed=st.integers(0, 2**20), p=st.sampled_from([0.0, 0.5, 1.0]))
def test_stretch_probability_is_per_example_and_rates_are_the_papers(seed, p):
    seg = RandomSegment(15200, stretch=StretchConfig(p=p))
    params = seg.sample(2000, 160000, cpu_generator(seed))
    applied, rate = params["stretch_applied"], params["stretch_rate"]
    frac = applied.double().mean().item()
    assert abs(frac - p) < 4 * math.sqrt(0.25 / 2000) + 1e-9
    assert set(rate[applied].tolist()) <= {0.9, 1.1} and torch.all(rate[~applied] == 1.0)
    limit = torch.ceil(160000 / rate) - 15200
    assert torch.all(params["start"] >= 0) and torch.all(params["start"] <= limit)


def test_uniform_stretch_mode_draws_in_range():
    params = RandomSegment(15200, stretch=StretchConfig(p=1.0, rates=(0.8, 1.25), mode="uniform")).sample(
        1000, 160000, cpu_generator(0))
    r = params["stretch_rate"]
    assert r.min() >= 0.8 and r.max() <= 1.25 and r.std() > 0.1


def test_stretched_positive_is_the_stretched_segment():
    x = torch.randn(2, 50000)
    seg = RandomSegment(15200, stretch=StretchConfig(p=1.0), backend="torch")
    params = seg.sample(2, 50000, cpu_generator(0))
    ref = AF.time_stretch_segment(x, params["stretch_rate"], params["start"], 15200)
    torch.testing.assert_close(seg(x, params=params), ref)


@given(seed=st.integers(0, 2**20))
def test_spec_masks_stay_in_bounds(seed):
    cfg = MaskConfig(n_time_masks=2, max_time_frames=12, n_freq_masks=2, max_freq_bins=8)
    m = SpecAugment.from_config(cfg)
    params = m.sample(64, 64, 96, cpu_generator(seed))
    for axis, size, w in (("time", 96, 12), ("freq", 64, 8)):
        start, width = params[f"{axis}_mask_start"], params[f"{axis}_mask_width"]
        assert width.min() >= 0 and width.max() <= w and start.min() >= 0
        assert torch.all(start + width <= size)
    spec = torch.randn(64, 1, 64, 96)
    out = m(spec, params=params)
    changed_t = (out != spec).all(dim=-2).sum(-1).squeeze(1)  # fully masked frames per example
    assert torch.all(changed_t <= 2 * 12)
    fill = spec.mean(dim=(-2, -1)).reshape(64, 1, 1, 1)
    assert torch.all((out == spec) | (out == fill))


def test_anchor_noise_snr_follows_params():
    noise = AddNoise.from_config(NoiseConfig(snr_db=(10.0, 10.0)))
    x = torch.randn(8, 15200) * 0.2
    y = noise(x, generator=cpu_generator(0))
    snr = 10 * torch.log10(x.pow(2).mean(-1) / (y - x).pow(2).mean(-1))
    assert torch.all((snr - 10).abs() < 0.2)


def test_noise_probability_leaves_rows_untouched():
    noise = AddNoise.from_config(NoiseConfig(p=0.5))
    x = torch.randn(200, 1000)
    params = noise.sample(200, 1000, cpu_generator(0))
    y = noise(x, params=params)
    untouched = (y == x).all(-1)
    assert torch.equal(untouched, ~params["noise_applied"])


def test_cola_preset_normalizes_clip_and_adds_fixed_std_noise():
    aug = make("cola")
    assert aug.config.normalize_clip and aug.segment_samples == 16000
    x = torch.randn(2, 48000)
    scaled = aug(x * 37.0, generator=cpu_generator(0))
    plain = aug(x, generator=cpu_generator(0))
    torch.testing.assert_close(scaled.anchor, plain.anchor, atol=1e-4, rtol=1e-4)
    seg = torch.randn(8, 16000)
    added = aug.positive.noise(seg, generator=cpu_generator(1)) - seg
    assert added.std(dim=-1).sub(1e-3).abs().max() < 5e-5  # fixed std 0.001, not an SNR (16000 samples: ±3%)


@pytest.mark.parametrize("preset", ["ts+mask", "all", "cola"])
def test_normalize_clip_equals_dividing_the_clip_first(preset, impulse_bank):
    """normalize_clip divides each branch's segments (or stretched frames) by the clip's L2 norm: the same
    pair as dividing the whole clip first."""
    from dataclasses import replace

    config = replace(PRESETS[preset](SR), normalize_clip=True)
    kw = {"rir_bank": impulse_bank} if preset == "all" else {}
    normalized = PairAugmenter(config, chunk_size=2, **kw)
    plain = PairAugmenter(replace(config, normalize_clip=False), chunk_size=2, **kw)
    x = torch.randn(5, 40000, generator=cpu_generator(7)) * torch.tensor([[0.01], [0.1], [1.0], [3.0], [30.0]])
    pair = normalized(x, generator=cpu_generator(4))
    ref = plain(x / torch.linalg.vector_norm(x, dim=-1, keepdim=True), params=pair.params)
    # log-mels: 1e-3 is 0.1 % of a mel energy
    torch.testing.assert_close(pair.anchor, ref.anchor, atol=1e-3, rtol=0)
    if normalized.positive.spectral or config.positive.stretch is None:
        torch.testing.assert_close(pair.positive, ref.positive, atol=1e-3, rtol=0)
    else:  # the vocoder runs on x instead of x / norm: float32 rounding can break a peak tie the other way
        diff = (pair.positive - ref.positive).abs()
        assert float(diff.mean()) < 1e-4 and float(diff.max()) < 0.05


def test_torch_audiomentations_transform_in_a_branch():
    """A +6 dB Gain from torch-audiomentations on the positive raises its log-mel power by 2 ln(10^(6/20))."""
    from torch_audiomentations import Gain

    gain = Gain(min_gain_in_db=5.999, max_gain_in_db=6.0, p=1.0, output_type="dict")  # it refuses min == max
    base = make("noise")
    boosted = make("noise", positive_extra=[gain])
    x = torch.from_numpy(np.stack([tone(500.0, 3.0), tone(2000.0, 3.0)]))
    ref = base(x, generator=cpu_generator(0))
    out = boosted(x, generator=cpu_generator(0))
    torch.testing.assert_close(out.anchor, ref.anchor)
    loud = ref.positive > math.log(1e-2)
    shift = (out.positive - ref.positive)[loud]
    torch.testing.assert_close(shift, torch.full_like(shift, 2 * math.log(10 ** 0.3)), atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("preset", FAST_PRESETS + ["all"])
def test_silent_short_single_and_loud_clips_give_finite_output(preset, impulse_bank):
    aug = make(preset, impulse_bank)
    g = cpu_generator(0)
    for x in (torch.zeros(2, 160000), torch.randn(1, 1000), torch.randn(1, 160000), 1e4 * torch.randn(2, 20000)):
        pair = aug(x, generator=g)
        assert torch.isfinite(pair.anchor).all() and torch.isfinite(pair.positive).all()
        assert pair.anchor.shape[0] == x.shape[0]


VOCODER = PairConfig(positive=BranchConfig(stretch=StretchConfig(p=1.0, method="vocoder"), mask=MaskConfig()))
FIXED_STD = PairConfig(anchor=BranchConfig(noise=NoiseConfig(std=1e-3)), positive=BranchConfig(gain=GainConfig()))
LOUD_CASES = [(p, "torch") for p in sorted(PRESETS)] + [("all", "kernels"), ("vocoder", "torch"), ("vocoder", "kernels"),
                                                       ("fixed_std", "torch")]


def _loud_case(name, backend, impulse_bank, **kw):
    if backend == "kernels":
        pytest.importorskip("numba")
    if name in PRESETS:
        return make(name, impulse_bank, backend=backend, **kw)
    return PairAugmenter(VOCODER if name == "vocoder" else FIXED_STD, backend=backend, **kw)


@pytest.mark.parametrize("name, backend", LOUD_CASES)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(exponent=st.floats(-30, 38), seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_finite_input_of_any_magnitude_gives_finite_pairs(name, backend, exponent, seed, dtype, impulse_bank):
    """|x| from 1e-30 to 1e38 (float32's range): finite log-mels; the normal-level row beside the loud one is bit for
    bit what it is beside a normal row (where a row is scaled, the others take the scaled route with scale 1: the route
    every row takes on a GPU)."""
    aug = _loud_case(name, backend, impulse_bank)
    x = torch.randn(2, 20000, generator=cpu_generator(seed), dtype=torch.float64)
    x = (x / x.abs().amax(-1, keepdim=True) * torch.tensor([[10.0 ** exponent], [0.3]], dtype=torch.float64)).to(dtype)
    assert torch.isfinite(x).all()
    pair = aug(x, generator=cpu_generator(seed), lengths=torch.tensor([20000, 9000]))
    assert torch.isfinite(pair.anchor).all() and torch.isfinite(pair.positive).all()
    normal = x.clone()
    normal[0] = x[1].flip(0)
    ref = aug(normal, params=pair.params)
    assert torch.equal(ref.anchor[1], pair.anchor[1]) and torch.equal(ref.positive[1], pair.positive[1])


@pytest.mark.parametrize("name, backend", LOUD_CASES)
def test_scaling_a_loud_clip_changes_only_the_rounding(name, backend, impulse_bank, monkeypatch):
    """Clips just above the level where rows are scaled (L2 norm 2 ** 40) are still computable as they are: the
    pair of the scaled route equals the pair computed without scaling, up to the rounding of the log."""
    import augcl.pair

    aug = _loud_case(name, backend, impulse_bank)
    x = torch.randn(3, 40000, generator=cpu_generator(1)) * torch.tensor([[2.0 ** 35], [2.0 ** 30], [0.1]])
    assert torch.linalg.vector_norm(x[0]) > augcl.pair.SCALE_ABOVE > torch.linalg.vector_norm(x[1])
    pair = aug(x, generator=cpu_generator(2))
    monkeypatch.setattr(augcl.pair, "SCALE_ABOVE", math.inf)
    ref = aug(x, params=pair.params)
    # log-mels near 70 (row 0): float32's spacing there is 8e-6; the log rounds differently on the two routes
    torch.testing.assert_close(pair.anchor, ref.anchor, atol=1e-4, rtol=0)
    torch.testing.assert_close(pair.positive, ref.positive, atol=1e-4, rtol=0)
    assert torch.equal(pair.anchor[1:], ref.anchor[1:]) and torch.equal(pair.positive[1:], ref.positive[1:])


@pytest.mark.parametrize("name, backend", [("noise", "torch"), ("ts+mask", "torch"), ("all", "torch"),
                                           ("all", "kernels"), ("vocoder", "kernels")])
def test_a_clip_at_float32s_top_has_the_log_mels_of_a_normal_clip_shifted_by_its_level(name, backend, impulse_bank):
    """log-mel(c x) = log-mel(x) + 2 ln c where the mel energy is far above log_eps: at c = 2 ** 125 (|x| ~ 1e37),
    whose powers float32 cannot hold."""
    aug = _loud_case(name, backend, impulse_bank)
    x = torch.randn(3, 40000, generator=cpu_generator(3)) * 0.1
    ref = aug(x, generator=cpu_generator(4))
    loud = aug(x * 2.0 ** 125, params=ref.params)
    shift = 2 * 125 * math.log(2.0)
    for got, want in ((loud.anchor, ref.anchor), (loud.positive, ref.positive)):
        far = want > math.log(1e-6) + 8  # log(m + eps) - log(m) < 4e-4 there
        assert far.float().mean() > 0.95
        torch.testing.assert_close(got[far], want[far] + shift, atol=2e-3, rtol=0)


def test_the_cola_preset_is_exactly_scale_free_at_any_level():
    """normalize_clip divides each clip by its norm: the power of two a loud clip is divided by cancels exactly."""
    aug = make("cola")
    x = torch.randn(2, 40000, generator=cpu_generator(5)) * 0.1
    ref = aug(x, generator=cpu_generator(6))
    for level in (2.0 ** 40, 2.0 ** 125):
        pair = aug(x * level, params=ref.params)
        assert torch.equal(pair.anchor, ref.anchor) and torch.equal(pair.positive, ref.positive)


def test_inf_beside_a_loud_finite_row_is_still_refused():
    x = torch.randn(2, 20000, generator=cpu_generator(0)) * 1e37
    x[1, 7] = float("inf")
    with pytest.raises(ValueError, match="wave contains NaN or Inf"):
        make("noise")(x, generator=cpu_generator(0))
    x[1, 7] = 1e37
    assert torch.isfinite(make("noise")(x, generator=cpu_generator(0)).anchor).all()


def test_short_clip_is_zero_padded_at_the_end():
    aug = make("noise")
    x = torch.from_numpy(tone(1000.0, 0.2))[None]  # 3200 samples, shorter than a segment
    pair = aug(x, generator=cpu_generator(0))
    assert pair.params["positive.start"].item() == 0
    frames = pair.positive[0, 0].exp().sum(0)
    assert frames[:15].min() > 100 * frames[25:].max()  # tone over the first 0.2 s, silence after


@pytest.mark.parametrize(
    "bad, exc, words",
    [
        (torch.zeros(2, 2, 16000), ValueError, "downmix"),
        (torch.zeros(16000), ValueError, "unsqueeze"),
        (torch.zeros(2, 16000, dtype=torch.int16), TypeError, "32768"),
        (torch.zeros(2, 0), ValueError, "empty"),
        (torch.full((2, 16000), float("nan")), ValueError, "NaN"),
    ],
)
def test_bad_input_gets_a_named_error(bad, exc, words):
    with pytest.raises(exc, match="wave") as info:
        make("ts+mask")(bad)
    assert words in str(info.value)


def test_bad_configuration_gets_a_named_error():
    with pytest.raises(ValueError, match="unknown preset"):
        PairAugmenter.from_preset("nope")
    with pytest.raises(ValueError, match="stretch.mode"):
        PairAugmenter(PairConfig(positive=BranchConfig(stretch=StretchConfig(mode="linear"))))
    with pytest.raises(ValueError, match="noise kind"):
        PairAugmenter(PairConfig(anchor=BranchConfig(noise=NoiseConfig(kind="pink"))))
    with pytest.raises(ValueError, match="bank_folder"):
        PairAugmenter(PairConfig(anchor=BranchConfig(noise=NoiseConfig(kind="bank"))))
    with pytest.raises(TypeError, match="params"):
        make("noise")(torch.randn(1, 16000), params=[1, 2])


def test_rir_bank_sample_rate_mismatch_is_refused(impulse_bank):
    bank = RIRBank(impulse_bank.irs, impulse_bank.lengths, 8000)
    with pytest.raises(ValueError, match="sample_rate"):
        PairAugmenter.from_preset("rir", sample_rate=SR, rir_bank=bank)


def test_generator_on_another_device_type_is_refused():
    with pytest.raises(ValueError, match="generator is on cpu but wave is on meta"):
        make("noise")(torch.randn(1, 16000, device="meta"), generator=cpu_generator(0))


@pytest.mark.parametrize("generator", [0, 1234, "seed", np.random.default_rng(0), torch.Generator])
def test_a_generator_that_is_not_a_torch_generator_gets_a_named_error(generator):
    aug = make("noise")
    for call in (lambda: aug(torch.randn(1, 16000), generator=generator), lambda: aug.sample(1, 16000, generator)):
        with pytest.raises(TypeError, match=r"generator must be a torch.Generator or None, got .*torch.Generator\(device"):
            call()


# ---------------------------------------------------------------------------------------------------------
# replayed params are checked before anything runs: keys, rows, the clip length they were drawn for, device
# ---------------------------------------------------------------------------------------------------------
def _other_batch(B, T, seed=0):
    return torch.randn(B, T, generator=cpu_generator(seed)) * 0.1


@pytest.mark.parametrize("chunk_size", [None, 1])  # chunks smaller than the batch used to take them silently
@pytest.mark.parametrize("B, T", [(2, 32000), (6, 32000), (3, 64000), (4, 20000)])
def test_params_drawn_for_another_batch_or_for_longer_clips_are_refused(B, T, chunk_size):
    """A replay needs one row of params per clip, and clips at least as long as the lengths the params were drawn
    for (params['lengths'], checked where check_finite checks lengths: on a CPU by default)."""
    aug = make("ts+mask", chunk_size=chunk_size)
    params = aug(_other_batch(4, 32000), generator=cpu_generator(0)).params
    if B != 4:
        want = f"has 4 rows but wave has {B} clips"
    else:
        want = ("params['lengths'] must lie in [1, T] = [1, 20000] (the lengths the params were drawn for); got min "
                "32000, max 32000")
    with pytest.raises(ValueError) as info:
        aug(_other_batch(B, T), params=params)
    assert want in str(info.value)
    if B != 4:
        with pytest.raises(ValueError, match=rf"wave has {B} clips"):  # (B, 1, T) input: checked on its (B, T) view
            aug(_other_batch(B, T)[:, None], params=params)


@given(drawn=st.tuples(st.integers(1, 3), st.sampled_from([15000, 20000, 33333])),
       given_=st.tuples(st.integers(1, 3), st.sampled_from([15000, 20000, 33333])), seed=st.integers(0, 2**16))
def test_replay_reads_the_clips_first_lengths_samples_and_is_refused_where_they_do_not_fit(drawn, given_, seed):
    """params record the lengths they were drawn for: a replay on longer clips reads their first ``lengths``
    samples (exactly the replay on the clips cut to them); fewer rows or shorter clips are refused."""
    aug = make("noise")
    params = aug.sample(*drawn, cpu_generator(seed))
    x = _other_batch(*given_, seed)
    if drawn[0] != given_[0] or given_[1] < drawn[1]:
        with pytest.raises(ValueError, match="rows but wave has|params\\['lengths'\\] must lie in"):
            aug(x, params=params)
        return
    again = aug(x, params=params)
    cut = aug(x[:, :drawn[1]], params=params)
    assert torch.equal(cut.anchor, again.anchor) and torch.equal(cut.positive, again.positive)
    first = aug(x, generator=cpu_generator(seed))
    replay = aug(x, params=first.params)
    assert torch.equal(first.anchor, replay.anchor) and torch.equal(first.positive, replay.positive)


def test_params_of_another_augmenter_or_with_missing_keys_name_the_keys():
    x = _other_batch(2, 32000)
    noise, ts = make("noise"), make("ts+mask")
    params = noise(x, generator=cpu_generator(0)).params
    missing = {k: v for k, v in params.items() if k != "anchor.noise_seed"}
    with pytest.raises(ValueError, match=r"params do not match this augmenter \(missing \['anchor.noise_seed'\]\); pass"):
        noise(x, params=missing)
    with pytest.raises(ValueError, match=r"not its own \['anchor.extra'\]\)"):
        noise(x, params={**params, "anchor.extra": torch.zeros(2)})
    with pytest.raises(ValueError) as info:  # another preset's params: both directions named
        ts(x, params=params)
    message = str(info.value)
    assert "missing ['positive.freq_mask_start'," in message and "positive.stretch_rate" in message
    assert "\n" not in message and "pair.params" in message


def test_a_replay_with_other_lengths_records_them_and_replays_exactly_in_turn():
    """``aug(x, params=p, lengths=L)``: the returned params hold L (what this call used), so they replay it; the
    caller's params and lengths are left as they were."""
    aug = make("ts+mask")
    x = _other_batch(2, 20000)
    first = aug(x, generator=cpu_generator(0))
    L = torch.tensor([20000, 9000])
    other = aug(x, params=first.params, lengths=L)
    assert torch.equal(other.params["lengths"], L) and torch.equal(first.params["lengths"], torch.tensor([20000] * 2))
    again = aug(x, params=other.params)
    assert torch.equal(again.anchor, other.anchor) and torch.equal(again.positive, other.positive)
    L[1] = 5  # the params hold a copy
    assert int(other.params["lengths"][1]) == 9000


def test_params_of_an_older_augcl_ask_for_a_redraw():
    """Before issue 21 params held 'length' (an empty (B, 0, T) tensor) and 'finite' (now ``pair.finite``)."""
    aug = make("noise")
    x = _other_batch(2, 32000)
    params = aug(x, generator=cpu_generator(0)).params
    for old in ({**params, "length": torch.empty(2, 0, 32000, dtype=torch.bool)}, {**params, "finite": torch.ones(2)}):
        with pytest.raises(ValueError, match=r"'length' or 'finite': .* older augcl; draw them again .*aug.sample\(B, T"):
            aug(x, params=old)


def test_params_with_a_bad_value_name_the_key():
    aug = make("noise")
    x = _other_batch(3, 32000)
    params = aug(x, generator=cpu_generator(0)).params
    for bad, exc, words in ((params["anchor.snr_db"].tolist(), TypeError, "params['anchor.snr_db'] must be a tensor"),
                            (torch.tensor(1.0), TypeError, "params['anchor.snr_db'] must be a tensor"),
                            (params["anchor.snr_db"][:2], ValueError, "params['anchor.snr_db'] has 2 rows but wave has 3"),
                            (params["anchor.snr_db"].to("meta"), ValueError, "params['anchor.snr_db'] is on meta")):
        with pytest.raises(exc) as info:
            aug(x, params={**params, "anchor.snr_db": bad})
        assert words in str(info.value)
    with pytest.raises(TypeError, match=r"params\['lengths'\] must be an integer tensor \(the lengths the params were drawn for\), got torch.float32; "
                                          r"use params\['lengths'\].round\(\).long\(\)"):
        aug(x, params={**params, "lengths": torch.full((3,), 32000.0)})


def test_param_keys_are_the_keys_sample_draws(impulse_bank):
    from dataclasses import replace

    from augcl import GainConfig, NoiseBank

    bank = NoiseBank([torch.randn(3000), torch.randn(5000)], SR)
    configs = [PRESETS[p](SR) for p in sorted(PRESETS)] + [
        PairConfig(anchor=BranchConfig(noise=NoiseConfig(kind="colored"), gain=GainConfig())),
        PairConfig(anchor=BranchConfig(noise=NoiseConfig(kind="bank"))),
        PairConfig(anchor=BranchConfig(noise=NoiseConfig(std=1e-3), mask=MaskConfig(n_time_masks=0))),
        replace(PRESETS["all"](SR), positive=BranchConfig(stretch=StretchConfig(mode="uniform"), gain=GainConfig())),
    ]
    for config in configs:
        aug = PairAugmenter(config, rir_bank=impulse_bank, noise_bank=bank)
        assert set(aug.sample(2, 20000, cpu_generator(0))) == aug.param_keys(), config
        drawn = aug.sample(2, 20000, cpu_generator(0), lengths=torch.tensor([20000, 900]))
        assert set(drawn) == aug.param_keys(), config


def test_replay_is_checked_on_fake_cuda_without_a_host_sync():
    """The checks read shapes, keys and devices only: on a (fake) CUDA batch they run, and refuse, without a sync."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    aug = make("ts+mask")
    with FakeTensorMode(allow_non_fake_inputs=True):
        aug = aug.to("cuda")
        x = torch.randn(4, 160000, device="cuda")
        pair = aug(x)
        again = aug(x, params=pair.params)
        assert again.positive.shape == pair.positive.shape
        with pytest.raises(ValueError, match=r"has 4 rows but wave has 2 clips"):
            aug(x[:2], params=pair.params)
        with pytest.raises(ValueError, match="is on cpu but wave is on cuda"):
            aug(x, params={k: v.to("cpu") for k, v in pair.params.items()})


def test_default_rir_preset_works_without_files():
    """No bank given: a simulated shoebox bank is built (and cached in the test's cache folder)."""
    aug = PairAugmenter.from_preset("rir")
    assert len(aug.positive.rir.bank) == 64
    pair = aug(torch.randn(2, 32000), generator=cpu_generator(0))
    assert torch.isfinite(pair.positive).all()


@pytest.mark.parametrize("preset", ["noise", "ts"])
def test_segment_edges_see_real_context_not_a_click(preset):
    """A segment cut from inside a steady tone has edge frames like its middle frames (no broadband click)."""
    x = torch.from_numpy(np.stack([tone(1000.0, 10.0, phase=0.3), tone(440.0, 10.0)]))
    aug = make(preset)
    params = aug.sample(2, x.shape[1], cpu_generator(0))
    params["positive.start"] = torch.tensor([50000, 80001])
    spec = aug(x, params=params).positive[:, 0]  # (2, 64, 96)
    high = spec[:, 48:].exp().sum(1)  # energy far above both tones, per frame
    assert torch.all(high[:, [0, -1]] < 3 * high[:, 40:56].mean(-1, keepdim=True))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset", ["ts+mask", "all"])
def test_cuda_equals_cpu_for_the_same_params(preset, impulse_bank):
    aug = make(preset, impulse_bank)
    x = torch.randn(4, 48000, generator=cpu_generator(0)) * 0.1
    ref = aug(x, generator=cpu_generator(1))
    dev = torch.device("cuda")
    out = aug.to(dev)(x.to(dev), params={k: v.to(dev) for k, v in ref.params.items()})
    assert out.positive.device.type == "cuda"
    torch.testing.assert_close(out.anchor.cpu(), ref.anchor, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(out.positive.cpu(), ref.positive, atol=2e-3, rtol=1e-3)
    g = torch.Generator(device=dev).manual_seed(0)
    a, b = aug(x.to(dev), generator=g), aug(x.to(dev), generator=torch.Generator(device=dev).manual_seed(0))
    assert torch.equal(a.positive, b.positive)


# ---------------------------------------------------------------------------------------------------------
# the spectral route of the time stretch (no resynthesis when the stretched segment goes straight to the mel)
# ---------------------------------------------------------------------------------------------------------
def test_spectral_route_is_chosen_only_without_waveform_blocks(impulse_bank):
    assert make("ts+mask").positive.spectral and make("ts").positive.spectral
    assert not make("all", impulse_bank).positive.spectral  # RIR after the stretch needs the waveform
    assert not make("noise").anchor.spectral
    vocoder = PairConfig(positive=BranchConfig(stretch=StretchConfig(method="vocoder")))
    assert not PairAugmenter(vocoder).positive.spectral
    bad = PairConfig(positive=BranchConfig(stretch=StretchConfig(method="spectral"), noise=NoiseConfig()))
    with pytest.raises(ValueError, match="method='spectral' makes no waveform"):
        PairAugmenter(bad)
    with pytest.raises(ValueError, match="stretch.method must be"):
        RandomSegment(100, stretch=StretchConfig(method="psola"))


@given(seed=st.integers(0, 2**16))
def test_spectral_route_at_rate_one_is_the_plain_log_mel(seed):
    """Rows left unstretched (rate 1) give exactly the plain segment's log-mel."""
    x = torch.randn(3, 40000, generator=cpu_generator(seed))
    aug = PairAugmenter.from_preset("ts")
    pair = aug(x, generator=cpu_generator(seed))
    plain = PairAugmenter.from_preset("noise")  # its positive branch is the plain segment -> log-mel
    ref = plain.positive.apply(x, {"start": pair.params["positive.start"]})
    keep = ~pair.params["positive.stretch_applied"]
    torch.testing.assert_close(pair.positive[keep], ref[keep], rtol=0, atol=0)


@pytest.mark.parametrize("rate", [0.9, 1.1, 0.8, 1.25])
def test_spectral_route_matches_an_analytic_stretched_chirp(rate):
    """Ground truth: a chirp with instantaneous frequency f0 + k t, ideally stretched by ``rate``, is the chirp
    with frequency f0 + k rate tau (pitch kept, time scaled). Its plain log-mel equals the spectral route's."""
    f0, k, T = 300.0, 350.0, 10 * SR
    t = torch.arange(T, dtype=torch.float64) / SR
    x = torch.sin(2 * math.pi * (f0 * t + 0.5 * k * t**2)).float()[None]
    y = torch.sin(2 * math.pi * (f0 * t + 0.5 * k * rate * t**2)).float()[None]  # stretched timeline
    # the "ts" preset with rates that bound this test's (a rate above the branch's bound is refused)
    aug = PairAugmenter(PairConfig(positive=BranchConfig(stretch=StretchConfig(rates=(0.8, 1.25)))))
    start = torch.tensor([4 * SR])
    got = aug.positive.mel.log(aug.positive.segment.stretched_mel(
        x, {"stretch_rate": torch.tensor([rate], dtype=torch.float64), "start": start}, aug.positive.mel, 96))
    want = aug.anchor.mel.from_context(AF.crop_segments(y, start - aug.anchor.segment.context,
                                                        aug.anchor.segment.output_samples))
    loud = want > want.amax() - 30  # the chirp's ridge and its main lobe
    assert float((got - want)[loud].abs().mean()) < 0.1
    assert torch.equal(got.argmax(dim=1), want.argmax(dim=1))  # the ridge is in the same mel bin in every frame


def test_spectral_route_agrees_with_the_vocoder_route():
    """The two routes of the same stretch (same params) give close log-mels on a harmonic signal."""
    t = torch.arange(3 * SR) / SR
    x = sum(torch.sin(2 * math.pi * f * t * (1 + 0.05 * torch.sin(2 * math.pi * 2 * t))) / i
            for i, f in enumerate((220, 440, 660, 880), 1))[None].repeat(4, 1)
    spectral = PairAugmenter.from_preset("ts")
    vocoder = PairAugmenter(PairConfig(positive=BranchConfig(stretch=StretchConfig(p=1.0, method="vocoder"))),
                            backend="torch")
    ref = vocoder(x, generator=cpu_generator(0))
    got = spectral(x, params=ref.params)
    loud = ref.positive > ref.positive.amax() - 40
    assert float(torch.corrcoef(torch.stack([got.positive[loud], ref.positive[loud]]))[0, 1]) > 0.98


# ---------------------------------------------------------------------------------------------------------
# random gain (off in every preset; BranchConfig(gain=GainConfig()))
# ---------------------------------------------------------------------------------------------------------
def test_random_gain_equals_numpy_and_draws_from_the_generator():
    from augcl import Gain, GainConfig

    block = Gain.from_config(GainConfig(p=0.5, gain_db=(-6.0, 6.0)))
    x = torch.randn(64, 500, generator=cpu_generator(0))
    params = block.sample(64, 500, cpu_generator(1))
    again = block.sample(64, 500, cpu_generator(1))
    assert all(torch.equal(params[k], again[k]) for k in ("gain_db", "gain_applied"))
    g, on = params["gain_db"].numpy(), params["gain_applied"].numpy()
    assert g.min() >= -6.0 and g.max() <= 6.0 and 0 < on.sum() < 64
    want = np.where(on[:, None], x.numpy() * 10 ** (g[:, None] / 20), x.numpy())
    np.testing.assert_allclose(block(x, params=params).numpy(), want, rtol=1e-6, atol=0)
    off = Gain.from_config(GainConfig(p=0.0))
    assert torch.equal(off(x, generator=cpu_generator(2)), x)
    with pytest.raises(ValueError, match="gain_db"):
        Gain.from_config(GainConfig(gain_db=(6.0, -6.0)))


@pytest.mark.parametrize("positive", [
    BranchConfig(stretch=StretchConfig(), mask=MaskConfig()),  # spectral route: the gain scales the energies
    BranchConfig(mask=MaskConfig()),  # waveform route
])
def test_branch_gain_equals_scaling_the_clip(positive):
    from dataclasses import replace

    from augcl import GainConfig

    with_gain = PairAugmenter(PairConfig(positive=replace(positive, gain=GainConfig(p=0.5))))
    plain = PairAugmenter(PairConfig(positive=positive))
    assert with_gain.positive.spectral == plain.positive.spectral
    x = torch.randn(6, 40000, generator=cpu_generator(3)) * 0.1
    pair = with_gain(x, generator=cpu_generator(4))
    p = pair.params
    factor = 10 ** (p["positive.gain_db"] * p["positive.gain_applied"] / 20)
    p_plain = {k: v for k, v in p.items() if not k.startswith("positive.gain")}  # plain refuses keys not its own
    ref = plain(x * factor[:, None], params=p_plain)
    torch.testing.assert_close(pair.positive, ref.positive, atol=1e-3, rtol=0)  # 0.1 % of a mel energy
    assert torch.equal(pair.anchor, plain(x, params=p_plain).anchor)  # the anchor has no gain


def test_branch_gain_runs_on_fake_cuda():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from augcl import GainConfig

    aug = PairAugmenter(PairConfig(positive=BranchConfig(stretch=StretchConfig(), mask=MaskConfig(), gain=GainConfig()),
                                   anchor=BranchConfig(noise=NoiseConfig(), gain=GainConfig())))
    with FakeTensorMode(allow_non_fake_inputs=True):
        aug = aug.to("cuda")
        pair = aug(torch.randn(4, 160000, device="cuda"), lengths=torch.tensor([160000, 800, 9000, 4], device="cuda"))
        assert pair.positive.device.type == "cuda"
