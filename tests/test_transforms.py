"""The public standalone transforms (augcl.TimeStretch, ApplyImpulseResponse, AddNoise, Gain, RandomSegment,
SpecAugment): layouts, dtypes, per-example draws, replay, p, lengths, channels, torch-audiomentations' Compose, and
their DSP against independent references (numpy, analytic bursts)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import augcl
from augcl import AddNoise, ApplyImpulseResponse, Gain, RandomSegment, RIRBank, SpecAugment, TimeStretch
from augcl.transforms import ObjectDict, Transform

from .conftest import SR, cpu_generator, peak_freq, rms_db, tone

T = 8000


@pytest.fixture(scope="module")
def bank():
    """A unit impulse, and a decaying IR whose direct path sits at sample 40."""
    irs = torch.zeros(2, 600)
    irs[0, 0] = 1.0
    irs[1, 40] = 1.0
    irs[1, 41:] = 0.3 * torch.exp(-torch.arange(559) / 100.0) * torch.randn(559, generator=cpu_generator(3))
    return RIRBank(irs, torch.tensor([1, 600]), SR)


def every(bank, p=1.0, **kw):
    """One of each waveform transform, at probability ``p``."""
    return {
        "stretch": TimeStretch(0.8, 1.25, p=p, **kw),
        "rir": ApplyImpulseResponse(RIRBank(bank.irs.clone(), bank.lengths.clone(), SR), p=p, **kw),
        "white": AddNoise((0.0, 20.0), p=p, **kw),
        "colored": AddNoise((0.0, 20.0), kind="colored", p=p, **kw),
        "gain": Gain((-12.0, 12.0), p=p, **kw),
        "segment": RandomSegment(4000, p=p, **kw),
    }


NAMES = ["stretch", "rir", "white", "colored", "gain", "segment"]


def batch(B=6, C=2, n=T, seed=0):
    """Examples of different tones per channel (so that each channel is checked), moderate level."""
    g = np.random.default_rng(seed)
    x = np.stack([np.stack([tone(g.uniform(200, 2000), n / SR, 0.3, phase=g.uniform(0, 6))[:n] for _ in range(C)])
                  for _ in range(B)])
    return torch.from_numpy(x + 0.01 * g.standard_normal(x.shape).astype(np.float32))


# ---------------------------------------------------------------------------------------------------------
# layout, dtype, device
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["BCT", "BT"])
def test_layout_dtype_and_device_are_kept(name, dtype, layout, bank):
    t = every(bank)[name]
    x = batch().to(dtype)
    if layout == "BT":
        x = x[:, 0]
    y = t(x, generator=cpu_generator())
    assert y.dtype == dtype and y.device == x.device
    expected = list(x.shape)
    if name == "segment":
        expected[-1] = 4000
    assert list(y.shape) == expected
    assert torch.isfinite(y.float()).all()


def test_the_public_names_are_exported_from_augcl_and_its_faces():
    for name in ("TimeStretch", "ApplyImpulseResponse", "AddNoise", "Gain", "RandomSegment", "SpecAugment", "LogMel"):
        cls = getattr(augcl, name)
        assert getattr(augcl.transforms, name) is cls and name in augcl.__all__
    assert augcl.functional.time_stretch is augcl.stretch.time_stretch
    assert augcl.functional.fft_convolve is augcl.room.fft_convolve


# ---------------------------------------------------------------------------------------------------------
# per-example draws, replay, p
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_a_batch_equals_its_examples_run_one_by_one_with_their_params(name, bank):
    """Batch consistency: row b of the batch depends on row b of the input and row b of the params only."""
    t = every(bank, output_type="dict")[name]
    x = batch(B=5)
    lengths = torch.tensor([T, 7000, 5000, T, 6100])
    out = t(x, lengths=lengths, generator=cpu_generator(1))
    for b in range(5):
        one = t(x[b:b + 1], lengths=lengths[b:b + 1], params={k: v[b:b + 1] for k, v in out.params.items()})
        torch.testing.assert_close(one.samples[0], out.samples[b], atol=2e-6, rtol=1e-5)
        if out.lengths is not None:
            assert int(one.lengths[0]) == int(out.lengths[b])


@pytest.mark.parametrize("name", NAMES)
def test_params_replay_exactly_and_a_generator_seed_repeats_the_batch(name, bank):
    t = every(bank, p=0.5, output_type="dict")[name]
    x = batch()
    a = t(x, generator=cpu_generator(7))
    b = t(x, params=a.params)
    c = t(x, generator=cpu_generator(7))
    assert torch.equal(a.samples, b.samples) and torch.equal(a.samples, c.samples)
    assert isinstance(a, ObjectDict) and a.samples is a["samples"]
    assert set(a.params) == set(t.param_keys) | {"lengths"}  # the draws and the lengths they were made for
    assert (a.lengths is None) == (b.lengths is None) and (a.lengths is None or torch.equal(a.lengths, b.lengths))


def test_each_example_gets_its_own_draw(bank):
    t = TimeStretch(0.8, 1.25, p=1.0, output_type="dict")
    rates = t(batch(B=32, C=1, n=2000), generator=cpu_generator()).params["stretch_rate"]
    assert len(torch.unique(rates)) == 32 and 0.8 <= rates.min() and rates.max() <= 1.25
    gains = Gain((-6, 6), p=1.0, output_type="dict")(batch(B=32), generator=cpu_generator()).params["gain_db"]
    assert len(torch.unique(gains)) == 32


@pytest.mark.parametrize("name", ["stretch", "rir", "white", "gain"])
def test_p_acts_per_example_and_the_others_come_out_unchanged(name, bank):
    t = every(bank, p=0.5, output_type="dict")[name]
    x = batch(B=64, C=2, n=2000)
    out = t(x, generator=cpu_generator(2))
    applied = next(v for k, v in out.params.items() if k.endswith("_applied"))
    assert 16 < int(applied.sum()) < 48  # binomial(64, 0.5): outside this with probability < 1e-4
    assert torch.equal(out.samples[~applied], x[~applied])
    assert not torch.isclose(out.samples[applied], x[applied]).all(dim=(-1, -2)).any()
    assert torch.equal(every(bank, p=0.0)[name](x, generator=cpu_generator()), x)


def test_random_segment_with_p_starts_the_other_examples_at_zero():
    t = RandomSegment(500, p=0.5, output_type="dict")
    x = torch.arange(64 * 4000, dtype=torch.float32).reshape(64, 1, 4000)
    out = t(x, generator=cpu_generator(5))
    applied, start = out.params["segment_applied"], out.params["start"]
    assert (start[~applied] == 0).all() and (start[applied] > 0).all()
    torch.testing.assert_close(out.samples[:, 0, 0], x[torch.arange(64), 0, start])


def test_modes_per_channel_and_per_batch(bank):
    x = batch(B=4, C=3)
    same = x[:, :1].expand(4, 3, T).contiguous()
    g = Gain((-12, 12), p=1.0, mode="per_channel", output_type="dict")(same, generator=cpu_generator())
    assert g.params["gain_db"].shape == (12,) and not torch.equal(g.samples[:, 0], g.samples[:, 1])
    g = Gain((-12, 12), p=1.0, mode="per_batch", output_type="dict")(x, generator=cpu_generator())
    assert len(torch.unique(g.params["gain_db"])) == 1
    torch.testing.assert_close(g.samples, x * 10 ** (g.params["gain_db"][0] / 20))


@pytest.mark.parametrize("name", NAMES)
def test_channels_of_an_example_stay_aligned(name, bank):
    """Identical channels come out identical: one draw per example, applied to every channel alike."""
    x = batch(B=4, C=1).expand(4, 3, T).contiguous()
    y = every(bank)[name](x, generator=cpu_generator(4))
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 0], y[:, 2])


def test_eval_mode_passes_the_input_through_as_torch_audiomentations_does(bank):
    for t in every(bank).values():
        x = batch()
        assert t.eval()(x) is x


# ---------------------------------------------------------------------------------------------------------
# DSP against independent references
# ---------------------------------------------------------------------------------------------------------
def test_gain_is_the_drawn_decibels():
    x = batch()
    out = Gain((-20, 20), p=1.0, output_type="dict")(x, generator=cpu_generator())
    db = out.params["gain_db"].double()
    for b in range(len(x)):
        assert rms_db(out.samples[b]) - rms_db(x[b]) == pytest.approx(float(db[b]), abs=1e-3)


@pytest.mark.parametrize("C", [1, 2])
@pytest.mark.parametrize("kind", ["white", "colored"])
def test_noise_is_added_at_the_drawn_snr_over_the_valid_samples_of_all_channels(kind, C):
    x = batch(B=6, C=C)
    lengths = torch.tensor([T, 3000, 5000, 8000, 1200, 6400])
    x = x * (torch.arange(T) < lengths[:, None]).unsqueeze(1)  # zero-padded batch
    out = AddNoise((-5, 25), kind=kind, p=1.0, output_type="dict")(x, lengths=lengths, generator=cpu_generator(3))
    for b in range(6):
        n = int(lengths[b])
        noise = (out.samples[b] - x[b]).double().numpy()
        assert np.all(noise[:, n:] == 0)  # nothing is added to the padding
        assert np.allclose(noise, noise[0], rtol=0, atol=1e-6)  # the same noise in every channel (float32 rounding)
        snr = 10 * np.log10(np.sum(x[b, :, :n].double().numpy() ** 2) / np.sum(noise[:, :n] ** 2))
        assert snr == pytest.approx(float(out.params["snr_db"][b]), abs=1e-3)


def test_noise_from_a_bank_reads_its_recordings():
    rec = torch.from_numpy(tone(440.0, 0.5, 1.0))
    noise_bank = augcl.NoiseBank([rec], SR)
    out = AddNoise((10, 10), kind="bank", bank=noise_bank, p=1.0, sample_rate=SR, output_type="dict")(
        batch(B=3, C=1), generator=cpu_generator())
    added = (out.samples - batch(B=3, C=1))[:, 0]
    for b in range(3):
        assert peak_freq(added[b].numpy()) == pytest.approx(440.0, rel=1e-3)


@pytest.mark.parametrize("compensate", [False, True])
def test_rir_is_numpy_convolve_cut_to_the_input_and_compensation_reads_from_the_direct_path(compensate, bank):
    t = ApplyImpulseResponse(bank, p=1.0, compensate_for_propagation_delay=compensate, output_type="dict")
    x = batch(B=6, C=2)
    out = t(x, generator=cpu_generator(1))
    for b in range(6):
        i = int(out.params["rir_index"][b])
        ir = bank.irs[i].double().numpy()
        d = int(np.argmax(np.abs(ir))) if compensate else 0
        for c in range(2):
            ref = np.convolve(x[b, c].double().numpy(), ir)[d:d + T]
            np.testing.assert_allclose(out.samples[b, c].double().numpy(), ref, atol=2e-5)


def test_rir_with_lengths_treats_the_padding_as_padding(bank):
    x = batch(B=2, C=1)
    lengths = torch.tensor([3000, T])
    dirty = x.clone()
    dirty[0, :, 3000:] = 1.0  # garbage in the padding must not ring into the clip
    out = ApplyImpulseResponse(bank, p=1.0, output_type="dict")(dirty, lengths=lengths,
                                                                params={"rir_applied": torch.tensor([True, True]),
                                                                        "rir_index": torch.tensor([1, 1])})
    clean = ApplyImpulseResponse(bank, p=1.0)(x[:1, :, :3000], params={"rir_applied": torch.tensor([True]),
                                                                      "rir_index": torch.tensor([1])})
    torch.testing.assert_close(out.samples[0, :, :3000], clean[0])
    assert (out.samples[0, :, 3000:] == 0).all()


@pytest.mark.parametrize("rate", [0.8, 0.9, 1.1, 1.25])
def test_stretch_keeps_level_pitch_and_moves_the_onset_of_analytic_bursts(rate):
    """The fidelity figures of benchmarks.stretch_fidelity on the standalone module: level within 1.5 dB, pitch
    within 2 %, onset within 30 ms of ``onset / rate``."""
    from benchmarks.stretch_fidelity import make_bursts, measure

    bursts = make_bursts(8, seed=1)
    x = torch.from_numpy(np.stack([b.wave for b in bursts]))[:, None]
    t = TimeStretch(rates=(rate,), p=1.0, leave_length_unchanged=False)
    y, lengths = t(x, generator=cpu_generator())
    assert (lengths == math.ceil(x.shape[-1] / rate - 1e-9)).all()
    for b, burst in enumerate(bursts):
        m = measure(burst, y[b, 0, : int(lengths[b])].numpy(), rate)
        assert abs(m["level_err_db"]) < 1.5, m
        assert abs(m["pitch_err_rel"]) < 0.02, m
        assert abs(m["onset_err_s"]) < 0.030, m


def test_stretch_lengths_and_the_zeros_past_them():
    x = batch(B=4, C=2)
    lengths = torch.tensor([T, 6000, 4000, 7000])
    long = TimeStretch(0.8, 1.25, p=1.0, leave_length_unchanged=False, output_type="dict")
    out = long(x, lengths=lengths, generator=cpu_generator(6))
    rate = out.params["stretch_rate"]
    assert out.samples.shape[-1] == math.ceil(T / 0.8)
    expected = torch.ceil(lengths / rate - 1e-9).long()
    assert torch.equal(out.lengths, expected)
    for b in range(4):
        assert (out.samples[b, :, int(expected[b]):] == 0).all()
        assert out.samples[b, :, int(expected[b]) - 200:int(expected[b])].abs().amax() > 0.01
    same = TimeStretch(0.8, 1.25, p=1.0, output_type="dict")(x, lengths=lengths, params=out.params)
    assert same.samples.shape == x.shape
    torch.testing.assert_close(same.samples, out.samples[..., :T])
    assert torch.equal(same.lengths, expected.clamp_max(T))
    y, n = TimeStretch(rates=(1.0,), p=1.0, leave_length_unchanged=False)(x, lengths=lengths)
    assert torch.equal(n, lengths)


def test_segment_lengths_keep_every_segment_inside_the_valid_part():
    x = torch.arange(1, 16 * T + 1, dtype=torch.float32).reshape(16, 1, T)
    lengths = torch.randint(100, T + 1, (16,), generator=cpu_generator(8))
    out = RandomSegment(3000, p=1.0, output_type="dict")(x, lengths=lengths, generator=cpu_generator(9))
    start = out.params["start"]
    assert ((start + 3000 <= lengths) | (start == 0)).all()
    assert torch.equal(out.lengths, (lengths - start).clamp(0, 3000))
    for b in range(16):
        n = int(out.lengths[b])
        assert (out.samples[b, 0, n:] == 0).all() and (out.samples[b, 0, :n] > 0).all()


# ---------------------------------------------------------------------------------------------------------
# SpecAugment
# ---------------------------------------------------------------------------------------------------------
@given(seed=st.integers(0, 2**31 - 1), C=st.integers(1, 3))
def test_spec_augment_masks_only_valid_frames_and_fills_their_mean(seed, C):
    g = torch.Generator().manual_seed(seed)
    B, F, K = 5, 16, 40
    spec = torch.randn(B, C, F, K, generator=g) + 3.0
    lengths = torch.randint(1, K + 1, (B,), generator=g)
    t = SpecAugment(2, 10, 2, 4, output_type="dict")
    out = t(spec, lengths=lengths, generator=g)
    for b in range(B):
        n = int(lengths[b])
        assert torch.equal(out.samples[b, ..., n:], spec[b, ..., n:])  # padding frames are never masked
        changed = out.samples[b] != spec[b]
        if changed.any():
            fill = spec[b, ..., :n].mean()
            torch.testing.assert_close(out.samples[b][changed], fill.expand(int(changed.sum())))
        starts, widths = out.params["time_mask_start"][b], out.params["time_mask_width"][b]
        assert ((starts + widths <= n) | (widths == 0)).all()
        assert torch.equal(changed[0], changed[-1])  # channels share the masks


def test_spec_augment_on_three_dims_and_p():
    spec = torch.randn(64, 32, 50)
    out = SpecAugment(p=0.5, output_type="dict")(spec, generator=cpu_generator())
    applied = out.params["mask_applied"]
    assert out.samples.shape == spec.shape
    assert torch.equal(out.samples[~applied], spec[~applied])
    assert 16 < int(applied.sum()) < 48


# ---------------------------------------------------------------------------------------------------------
# torch-audiomentations
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("augcl_first", [True, False], ids=["augcl-first", "ta-first"])
@pytest.mark.parametrize("output_type", ["tensor", "dict"])
def test_inside_torch_audiomentations_compose_in_both_orders(augcl_first, output_type, bank):
    ta = pytest.importorskip("torch_audiomentations")
    ours = [Gain((6.0, 6.0), p=1.0), AddNoise((60.0, 60.0), p=1.0)]
    theirs = [ta.PolarityInversion(p=1.0, output_type="dict"),
              ta.Gain(min_gain_in_db=-6.0, max_gain_in_db=-5.9999, p=1.0, output_type="dict"),
              ta.AddColoredNoise(min_snr_in_db=60.0, max_snr_in_db=60.001, p=1.0, sample_rate=SR, output_type="dict")]
    chain = ta.Compose(ours + theirs if augcl_first else theirs + ours, output_type=output_type)
    x = batch(B=4, C=2)
    out = chain(x, sample_rate=SR)
    y = out.samples if output_type == "dict" else out
    assert y.shape == x.shape and y.dtype == x.dtype
    # polarity inversion, +6 dB and -6 dB cancel to -x; two noises at 60 dB SNR are the only difference, in any
    # order: together 10 log10(2) dB above one
    assert rms_db(y + x) - rms_db(x) == pytest.approx(-60.0 + 10 * math.log10(2), abs=0.5)


def test_beside_torch_audiomentations_colored_noise_and_a_stretch():
    ta = pytest.importorskip("torch_audiomentations")
    chain = ta.Compose([ta.AddColoredNoise(p=1.0, sample_rate=SR, output_type="dict"),
                        TimeStretch(0.8, 1.25, p=1.0), RandomSegment(4000),
                        ta.PolarityInversion(p=1.0, output_type="dict")], output_type="dict")
    out = chain(batch(B=3, C=2), sample_rate=SR)
    assert out.samples.shape == (3, 2, 4000) and torch.isfinite(out.samples).all()


# ---------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------
def test_bad_calls_get_named_errors(bank):
    t = Gain(p=1.0, sample_rate=SR)
    with pytest.raises(ValueError, match="samples must have shape"):
        t(torch.zeros(T))
    with pytest.raises(TypeError, match="real floating"):
        t(torch.zeros(2, T, dtype=torch.int16))
    with pytest.raises(ValueError, match="sample_rate=8000 but Gain was built for 16000"):
        t(torch.zeros(2, T), sample_rate=8000)
    with pytest.raises(ValueError, match=r"p must be a probability"):
        Gain(p=1.5)
    with pytest.raises(ValueError, match="mode must be one of"):
        Gain(mode="per_row")
    with pytest.raises(ValueError, match="output_type"):
        Gain(output_type="list")
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        t(torch.zeros(2, T), generator=0)
    with pytest.raises(ValueError, match=r"params do not match Gain \(missing \['gain_db'\]"):
        t(torch.zeros(2, T), params={"gain_applied": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="has 2 rows but the input has 3"):
        t(torch.zeros(3, T), params=Gain(output_type="dict")(torch.zeros(2, T)).params)
    with pytest.raises(ValueError, match=r"params\['lengths'\] must lie in \[1, T\] = \[1, 100\] \(the lengths the "
                                          r"params were drawn for\); got min 8000"):
        t(torch.zeros(2, 100), params=Gain(output_type="dict")(torch.zeros(2, T)).params)
    with pytest.raises(ValueError, match="'length': they come from an older augcl"):
        t(torch.zeros(2, T), params={**Gain(output_type="dict")(torch.zeros(2, T)).params,
                                     "length": torch.empty(2, 0, T, dtype=torch.bool)})
    with pytest.raises(ValueError, match="lengths must lie in"):
        t(torch.zeros(2, T), lengths=torch.tensor([0, T]))
    with pytest.raises(ValueError, match="min_rate <= max_rate"):
        TimeStretch(1.2, 0.9)
    with pytest.raises(ValueError, match="needs sample_rate="):
        ApplyImpulseResponse("/some/folder")
    with pytest.raises(ValueError, match="targets"):
        TimeStretch(p=1.0)(torch.zeros(1, 1, T), targets=torch.zeros(1, 1, 10, 1))
    assert isinstance(t, Transform)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_equals_cpu_for_the_same_params(name, bank):
    t = every(bank, p=0.5, output_type="dict")[name]
    x = batch()
    lengths = torch.tensor([T, 7000, 5000, T, 6100, 300])
    ref = t(x, lengths=lengths, generator=cpu_generator(1))
    dev = torch.device("cuda")
    out = t.to(dev)(x.to(dev), lengths=lengths.to(dev), params={k: v.to(dev) for k, v in ref.params.items()})
    assert out.samples.device.type == "cuda"
    torch.testing.assert_close(out.samples.cpu(), ref.samples, atol=2e-4, rtol=1e-3)


@given(T=st.integers(1, 1500), C=st.integers(1, 3), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_any_length_and_lengths_give_finite_output_of_the_promised_shape(T, C, seed, data):
    """Clips from one sample long to a few vocoder windows, any valid lengths: every transform returns finite
    samples of the promised shape, valid lengths in range, and nothing but zeros past them where they shrink."""
    lengths = torch.tensor(data.draw(st.lists(st.integers(1, T), min_size=3, max_size=3)))
    x = torch.randn(3, C, T, generator=cpu_generator(seed))
    ir = RIRBank(torch.tensor([[1.0, 0.5, 0.25]]), torch.tensor([3]), SR)
    for t in (TimeStretch(p=1.0, leave_length_unchanged=False, output_type="dict"),
              ApplyImpulseResponse(ir, p=1.0, output_type="dict"), AddNoise(kind="colored", p=1.0, output_type="dict"),
              Gain(p=1.0, output_type="dict"), RandomSegment(200, output_type="dict")):
        out = t(x, lengths=lengths, generator=cpu_generator(seed))
        assert torch.isfinite(out.samples).all() and out.samples.shape[:2] == (3, C)
        assert out.lengths.shape == (3,) and (out.lengths >= 0).all() and (out.lengths <= out.samples.shape[-1]).all()
        if isinstance(t, (TimeStretch, RandomSegment)):
            for b in range(3):
                assert (out.samples[b, :, int(out.lengths[b]):] == 0).all()


def _real(*parts):
    from .conftest import shared_data

    return shared_data().joinpath(*parts)


@pytest.mark.skipif(not all(_real(*p).is_dir() for p in (("rirs", "audio"), ("noise", "segments"),
                                                          ("esc50-fold4", "audio"))),
                    reason="shared recordings not present")
def test_real_clips_real_rooms_and_real_noise_from_folders():
    """ESC-50 clips as stereo pairs, reverberated by measured rooms and mixed with recorded noise, both banks loaded
    from their folders by the transforms: each channel is numpy's convolution with the example's IR, and the noise is
    at the drawn SNR over both channels."""
    import soundfile as sf
    from scipy.signal import resample_poly

    files = sorted(_real("esc50-fold4", "audio").glob("*.flac"))[:8]
    clips = []
    for f in files:
        y, sr = sf.read(f, dtype="float32")
        clips.append(resample_poly(y, SR, sr).astype(np.float32)[: 2 * SR])
    x = torch.from_numpy(np.stack(clips)).reshape(4, 2, 2 * SR)
    reverb = ApplyImpulseResponse(_real("rirs", "audio"), p=1.0, sample_rate=SR, output_type="dict")
    wet = reverb(x, generator=cpu_generator(0))
    assert len(reverb.bank) == 46
    for b in range(4):
        ir = reverb.bank.irs[int(wet.params["rir_index"][b])].double().numpy()
        for c in range(2):
            ref = np.convolve(x[b, c].double().numpy(), ir)[: 2 * SR]
            np.testing.assert_allclose(wet.samples[b, c].double().numpy(), ref, atol=1e-4 * np.abs(ref).max() + 1e-6)
    noisy = AddNoise((0.0, 20.0), kind="bank", bank=_real("noise", "segments"), p=1.0, sample_rate=SR,
                     output_type="dict")(wet.samples, generator=cpu_generator(1))
    for b in range(4):
        noise = (noisy.samples[b] - wet.samples[b]).double().numpy()
        snr = 10 * np.log10(np.sum(wet.samples[b].double().numpy() ** 2) / np.sum(noise**2))
        assert snr == pytest.approx(float(noisy.params["snr_db"][b]), abs=0.01)
