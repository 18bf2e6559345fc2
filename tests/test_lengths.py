"""Clip lengths as data: ``PairAugmenter(wave, lengths=)`` on zero-padded batches of clips of different lengths."""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from augcl import PRESETS, NoiseConfig
from augcl import functional as AF
from augcl.transforms import AddNoise, RandomSegment, StretchConfig

from .conftest import SR, cpu_generator, make

ALL_PRESETS = sorted(PRESETS)
LOG_FLOOR = math.log(1e-6)




def padded_batch(lengths, seed, garbage=True):
    """Random clips of ``lengths`` samples in one batch; past each length: non-zero garbage (or zeros)."""
    g = cpu_generator(seed)
    T = max(lengths)
    x = torch.randn(len(lengths), T, generator=g) * 0.1
    lengths = torch.tensor(lengths)
    past = ~AF.valid_mask(lengths, T)
    junk = 5.0 * torch.randn(len(lengths), T, generator=g)
    return torch.where(past, junk if garbage else torch.zeros(()), x), lengths


def stretched_valid(params, branch, lengths):
    rate = params.get(f"{branch}.stretch_rate")
    return lengths if rate is None else AF.stretched_length(lengths, rate)


# ---------------------------------------------------------------------------------------------- placement
@pytest.mark.parametrize("preset", ALL_PRESETS)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(lengths=st.lists(st.integers(int(0.05 * SR), 10 * SR), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_segments_start_inside_the_clip_and_padding_is_masked(preset, lengths, seed, impulse_bank):
    aug = make(preset, impulse_bank)
    x, L = padded_batch(lengths, seed)
    clean, _ = padded_batch(lengths, seed, garbage=False)
    pair = aug(x, generator=cpu_generator(seed), lengths=L)
    assert torch.equal(pair.params["lengths"], L)
    seg = aug.segment_samples
    for branch in ("anchor", "positive"):
        start = pair.params[f"{branch}.start"]
        valid = stretched_valid(pair.params, branch, L)
        assert torch.all(start >= 0) and torch.all(start < valid)  # the window overlaps the clip
        assert torch.all(start <= (valid - seg).clamp_min(0))  # and lies inside it when the clip is long enough
        assert torch.all(start[valid <= seg] == 0)  # a clip shorter than a segment starts at 0
    ref = aug(clean, params=pair.params)
    assert torch.equal(pair.anchor, ref.anchor) and torch.equal(pair.positive, ref.positive)


def test_short_clip_in_a_long_batch_starts_at_zero_for_every_draw():
    aug = make("ts+mask")
    L = torch.tensor([3000, 160000] * 100)
    params = aug.sample(len(L), 160000, cpu_generator(0), lengths=L)
    for branch in ("anchor", "positive"):
        assert torch.all(params[f"{branch}.start"][0::2] == 0)
        assert params[f"{branch}.start"][1::2].float().std() > 10000  # the long clips' starts still spread


@pytest.mark.parametrize("preset", ["noise", "ts+mask", "all", "cola"])
def test_no_segment_is_pure_padding_on_the_output(preset, impulse_bank):
    """Loud tones over each clip's valid part, zeros beyond: every row's log-mels have frames far above the log
    floor (with starts drawn over the padded batch, the short clips' segments would mostly be silence)."""
    lengths = [int(0.05 * SR), int(0.3 * SR), int(1.2 * SR), int(2.5 * SR), 10 * SR]
    T = max(lengths)
    t = torch.arange(T) / SR
    x = torch.stack([0.5 * torch.sin(2 * math.pi * f * t) for f in (500, 900, 1300, 2100, 3000)])
    L = torch.tensor(lengths)
    x = x * AF.valid_mask(L, T)
    aug = make(preset, impulse_bank)
    for seed in range(4):
        pair = aug(x, generator=cpu_generator(seed), lengths=L)
        # frequency masks (mean fill) can hide a tone's band: a masked positive is checked by its starts above
        for spec in (pair.anchor,) if aug.config.positive.mask is not None else (pair.anchor, pair.positive):
            loudest = spec[:, 0].amax(dim=(1, 2))  # per row
            assert torch.all(loudest > math.log(aug.config.mel.log_eps) + 5), (preset, seed, loudest)


def test_noise_stays_off_the_padding_of_a_short_clip():
    """A 0.2-s clip padded to 10 s: the anchor's frames past the clip (window included) stay at the log floor,
    so the noise was added on the clip's samples only."""
    x = torch.zeros(2, 10 * SR)
    x[0, :3200] = torch.randn(3200, generator=cpu_generator(0)) * 0.3
    x[1] = torch.randn(10 * SR, generator=cpu_generator(1)) * 0.3
    L = torch.tensor([3200, 10 * SR])
    aug = make("noise")
    spec = aug(x, generator=cpu_generator(2), lengths=L).anchor[0, 0]  # (64, 96), start 0
    hop, half = 160, 200
    first_silent = math.ceil((3200 + half) / hop)
    floor = torch.log(torch.tensor(1e-6))
    assert torch.all(spec[:, first_silent:] == floor)
    assert torch.all(spec[:, :10].amax(0) > LOG_FLOOR + 5)


def test_valid_mask_of_a_segment_equals_a_loop():
    seg = RandomSegment(1000, stretch=StretchConfig(p=0.5), context=200)
    L = torch.tensor([300, 1000, 1500, 5000, 40000, 800])
    params = seg.sample(len(L), 40000, cpu_generator(3), lengths=L)
    got = seg.valid_mask(params, L).numpy()
    for b in range(len(L)):
        n = math.ceil(int(L[b]) / float(params["stretch_rate"][b]) - 1e-9)
        pos = int(params["start"][b]) - 200 + np.arange(1400)
        np.testing.assert_array_equal(got[b], (pos >= 0) & (pos < n))


# ---------------------------------------------------------------------------------------------- noise over valid
@given(snr=st.floats(-10, 40), seed=st.integers(0, 2**16), kind=st.sampled_from(["prefix", "random"]))
def test_add_noise_snr_is_measured_over_the_valid_samples(snr, seed, kind):
    rng = np.random.default_rng(seed)
    B, T = 4, 3000
    x = rng.standard_normal((B, T)) * np.array([[0.01], [0.3], [3.0], [1.0]])
    noise = rng.standard_normal((B, T))
    if kind == "prefix":
        valid = np.arange(T) < rng.integers(1, T + 1, size=(B, 1))
    else:
        valid = rng.random((B, T)) < 0.5
        valid[:, 0] = True
    y = AF.add_noise(torch.from_numpy(x), torch.from_numpy(noise), torch.full((B,), snr, dtype=torch.float64),
                     valid=torch.from_numpy(valid)).numpy()
    for b in range(B):
        v = valid[b]
        measured = 10 * np.log10(np.sum(x[b, v] ** 2) / np.sum((y[b, v] - x[b, v]) ** 2))
        assert abs(measured - snr) < 1e-3
        np.testing.assert_array_equal(y[b, ~v], x[b, ~v])  # outside the mask: unchanged


def test_add_noise_with_every_sample_valid_equals_no_mask():
    g = cpu_generator(0)
    x, n = torch.randn(3, 500, generator=g), torch.randn(3, 500, generator=g)
    snr = torch.tensor([0.0, 10.0, 20.0])
    torch.testing.assert_close(AF.add_noise(x, n, snr, torch.ones(3, 500, dtype=torch.bool)), AF.add_noise(x, n, snr),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("config", [NoiseConfig(snr_db=(10.0, 10.0)), NoiseConfig(std=1e-3)])
def test_add_noise_block_adds_on_valid_samples_only(config):
    """SNR noise and COLA's fixed-std noise both leave the samples outside the mask unchanged."""
    block = AddNoise.from_config(config)
    x = torch.randn(3, 4000, generator=cpu_generator(0)) * 0.2
    valid = AF.valid_mask(torch.tensor([100, 2500, 4000]), 4000)
    y = block.apply(x, block.sample(3, 4000, cpu_generator(1)), valid)
    assert torch.equal(y[~valid], x[~valid]) and torch.all((y != x)[valid])
    if config.std is None:
        v = valid.double()
        snr = 10 * torch.log10((x.double() * v).pow(2).sum(-1) / ((y - x).double() * v).pow(2).sum(-1))
        assert torch.all((snr - 10).abs() < 1e-3)


# ---------------------------------------------------------------------------------------------- replay, None
@pytest.mark.parametrize("preset", ["noise", "ts+mask", "all", "cola"])
def test_replay_with_lengths_is_exact(preset, impulse_bank):
    aug = make(preset, impulse_bank)
    x, L = padded_batch([900, 20000, 50000, 4000], 0)
    first = aug(x, generator=cpu_generator(3), lengths=L)
    again = aug(x, params=first.params)
    assert torch.equal(first.anchor, again.anchor) and torch.equal(first.positive, again.positive)


@pytest.mark.parametrize("preset", ["noise", "ts+mask", "all", "cola"])
def test_chunked_output_with_lengths_equals_the_whole_batch(preset, impulse_bank):
    x, L = padded_batch([900, 20000, 50000, 4000, 16000, 30000, 1200], 1)
    whole = make(preset, impulse_bank, chunk_size=64)(x, generator=cpu_generator(2), lengths=L)
    chunked = make(preset, impulse_bank, chunk_size=3)(x, params=whole.params)
    torch.testing.assert_close(chunked.anchor, whole.anchor, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.positive, whole.positive, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", ALL_PRESETS)
@pytest.mark.parametrize("T", [40000, 9000])  # clips longer and shorter than a segment
def test_full_lengths_equal_no_lengths(preset, T, impulse_bank):
    aug = make(preset, impulse_bank)
    x = torch.randn(3, T, generator=cpu_generator(5)) * 0.1
    none = aug(x, generator=cpu_generator(6))
    full = aug(x, generator=cpu_generator(6), lengths=torch.full((3,), T))
    assert torch.equal(none.anchor, full.anchor) and torch.equal(none.positive, full.positive)
    assert set(full.params) == set(none.params) | {"lengths"}
    assert all(torch.equal(none.params[k], full.params[k]) for k in none.params)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "bad, exc",
    [
        ([16000, 16000], TypeError),
        (torch.tensor([16000.0, 16000.0]), TypeError),
        (torch.tensor([True, True]), TypeError),
        (torch.tensor([16000, 16000, 16000]), ValueError),
        (torch.tensor([[16000], [16000]]), ValueError),
        (torch.tensor([16000, 16000], device="meta"), ValueError),
        (torch.tensor([0, 16000]), ValueError),
        (torch.tensor([16000, 16001]), ValueError),
    ],
)
def test_bad_lengths_get_a_named_error(bad, exc):
    with pytest.raises(exc, match="lengths"):
        make("ts+mask")(torch.randn(2, 16000), generator=cpu_generator(0), lengths=bad)


def test_lengths_values_are_not_checked_without_the_finite_check():
    """The range check is a host sync on an accelerator: it runs only where check_finite does."""
    aug = make("noise", check_finite=False)
    pair = aug(torch.randn(2, 16000), generator=cpu_generator(0), lengths=torch.tensor([16000, 16001]))
    assert torch.isfinite(pair.anchor).all()


# ---------------------------------------------------------------------------------------------- fake CUDA
@pytest.mark.parametrize("preset", ALL_PRESETS)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_fake_cuda_forward_has_no_host_sync_and_no_device_mix(preset, with_lengths, impulse_bank):
    """Under FakeTensorMode a host sync (``.item()``, ``bool(tensor)``, ``nonzero``) or a CPU tensor mixed into a
    CUDA op raises: the forward pass on a (fake) CUDA batch runs on device data only."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    aug = make(preset, impulse_bank)
    with FakeTensorMode(allow_non_fake_inputs=True):
        aug = aug.to("cuda")
        lengths = torch.tensor([160000, 8000, 1000, 40000], device="cuda") if with_lengths else None
        pair = aug(torch.randn(4, 160000, device="cuda"), lengths=lengths)
        assert pair.anchor.device.type == pair.positive.device.type == "cuda"
        assert pair.anchor.shape[0] == 4


# ---------------------------------------------------------------------------------------------- readers mask
def _garbage_and_zeroed(B, T, lengths, seed):
    """Clips with garbage past ``lengths``, and the numpy-built copy with zeros there (the reference)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T)).astype(np.float32)
    zeroed = np.where(np.arange(T) < lengths[:, None], x, 0.0).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(zeroed)


@given(B=st.integers(1, 4), T=st.integers(1, 300), width=st.integers(1, 120), seed=st.integers(0, 2**16))
def test_crop_with_lengths_equals_the_crop_of_a_zeroed_copy(B, T, width, seed):
    """Windows inside, straddling the length, wholly past it and across either end: ``lengths=`` reads zeros."""
    rng = np.random.default_rng(seed + 1)
    lengths = rng.integers(1, T + 1, size=B)
    x, zeroed = _garbage_and_zeroed(B, T, lengths, seed)
    L = torch.from_numpy(lengths)
    start = torch.from_numpy(rng.integers(-width - 3, T + 3, size=B))
    start[0] = int(lengths[0]) - width // 2  # straddles its length
    np.testing.assert_array_equal(AF.crop_segments(x, start, width, lengths=L).numpy(),
                                  AF.crop_segments(zeroed, start, width).numpy())
    # many windows per row, both readers, every row and a reordered subset (limit indexed like start)
    starts = torch.from_numpy(rng.integers(-width - 3, T + 3, size=(B, 5)))
    ref = AF._gather_samples(zeroed, starts, width).numpy()
    rows = torch.from_numpy(rng.permutation(B)[: max(1, B - 1)])
    for got in (AF._gather_windows(x, starts, width, limit=L), AF._gather_samples(x, starts, width, L)):
        np.testing.assert_array_equal(got.numpy(), ref)
    np.testing.assert_array_equal(AF._gather_windows(x, starts[rows], width, rows, L[rows]).numpy(), ref[rows.numpy()])
    first = starts.sort(dim=1).values
    span = int((first - first[:, :1]).max()) + width
    for read in (AF._frames_at, AF._frames_in_region):
        np.testing.assert_array_equal(read(x, first[rows], width, span, rows, L[rows]).numpy(),
                                      read(zeroed, first[rows], width, span, rows).numpy())


def _stretch_case(seed, B=4, T=6000):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0] = 200  # short: the segment's frames lie wholly past the length
    x, zeroed = _garbage_and_zeroed(B, T, lengths, seed)
    rate = torch.from_numpy(rng.uniform(0.5, 1.5, size=B))
    start = torch.from_numpy(rng.integers(-300, 3000, size=B))
    start[0] = 1500
    start[1] = int(np.ceil(lengths[1] / float(rate[1]))) - 300  # straddles the stretched length
    return x, zeroed, torch.from_numpy(lengths), rate, start


@given(seed=st.integers(0, 2**16), width=st.sampled_from([64, 400, 576]))
def test_stretched_frames_with_lengths_equal_those_of_a_zeroed_copy(seed, width):
    x, zeroed, L, rate, start = _stretch_case(seed)
    rows = torch.tensor([3, 0, 1])
    for r in (None, rows):  # every row, and a subset (rate, first and lengths indexed like the subset)
        sel = slice(None) if r is None else r
        got = AF.stretched_frames(x, rate[sel], start[sel], 20, 160, width, 1.5, rows=r, lengths=L[sel])
        want = AF.stretched_frames(zeroed, rate[sel], start[sel], 20, 160, width, 1.5, rows=r)
        np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("backend", ["torch", "kernels"])
@given(seed=st.integers(0, 2**16))
def test_time_stretch_segment_with_lengths_equals_that_of_a_zeroed_copy(backend, seed):
    from augcl import kernels

    if backend == "kernels" and not kernels.available("cpu"):
        pytest.skip("needs numba")
    stretch = AF.time_stretch_segment if backend == "torch" else kernels.time_stretch_segment
    x, zeroed, L, rate, start = _stretch_case(seed)
    rows = torch.tensor([3, 0, 1])
    for r in (None, rows):
        sel = slice(None) if r is None else r
        kw = dict(n_fft=256, hop_length=64, max_rate=1.5, rows=r)
        got = stretch(x, rate[sel], start[sel], 1000, lengths=L[sel], **kw)
        want = stretch(zeroed, rate[sel], start[sel], 1000, **kw)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        assert torch.all(got[0 if r is None else 1] == 0)  # row 0 is read wholly past its length
