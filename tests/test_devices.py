"""Devices without a GPU: the forward pass and the trainer's step on FakeTensorMode's CUDA tensors, the device branches
run on a CPU (``tests/conftest.py``'s ``device_branches``) against the CPU branches, and the fixes of what was a host sync,
a host-to-device copy or a CPU-only choice.

Under FakeTensorMode a host sync (``.item()``, ``bool(t)``, ``nonzero``) raises, and so does an op that mixes a CPU
tensor into a CUDA one; a copy between host and device does not, so :class:`HostTraffic` records those. No CUDA driver
is needed, and none is used: modules are built on the CPU and moved to ``"cuda"`` inside the mode.
"""
import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from augcl import (PRESETS, BranchConfig, GainConfig, MaskConfig, NoiseConfig, PairAugmenter, PairConfig, RIRBank,
                   RIRConfig, StretchConfig)
from augcl import functional as AF
from augcl import kernels
from augcl.transforms import AddNoise, ApplyImpulseResponse, Gain, RandomSegment, SpecAugment

from .conftest import SR, cpu_generator, device_branches, make

ALL_PRESETS = sorted(PRESETS)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CUDA = torch.device("cuda", 0)


class HostTraffic(TorchDispatchMode):
    """Records the ops whose tensors all sit on one side going in and on the other coming out: host-to-device and
    device-to-host copies (``torch.tensor(x, device=...)``, ``new_tensor``, ``.cpu()``, ``.to(device)``)."""

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = {t.device.type for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        outs = {t.device.type for t in tree_leaves(out) if isinstance(t, torch.Tensor)}
        if ins and outs and not ins & outs:
            self.copies.append(f"{func}: {sorted(ins)} -> {sorted(outs)}")
        return out


class NoFloat64On(TorchDispatchMode):
    """Raises when an op makes a float64 tensor on ``device_type`` (Apple's MPS has no float64)."""

    def __init__(self, device_type: str):
        super().__init__()
        self.device_type = device_type

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == self.device_type and t.dtype == torch.float64:
                raise AssertionError(f"{func} made a float64 tensor on {t.device}")
        return out


def fake_cuda():
    return FakeTensorMode(allow_non_fake_inputs=True)


@pytest.fixture
def impulse_bank(impulse_bank):
    """conftest's bank, copied for each test: moving an augmenter to (fake) CUDA moves its bank in place."""
    return RIRBank(impulse_bank.irs.clone(), impulse_bank.lengths.clone(), SR)


def _every_block(impulse_bank):
    """The blocks and options no preset has: gain on both branches, coloured noise, a uniform-rate vocoder stretch
    followed by RIR and masks with a numeric fill."""
    return PairAugmenter(PairConfig(
        anchor=BranchConfig(noise=NoiseConfig(kind="colored", p=0.5), gain=GainConfig()),
        positive=BranchConfig(stretch=StretchConfig(mode="uniform", rates=(0.8, 1.2), method="vocoder"),
                              rir=RIRConfig(), mask=MaskConfig(fill=-5.0), gain=GainConfig(p=0.5))),
        rir_bank=impulse_bank)


# ------------------------------------------------------------------------------------- the forward pass on fake CUDA
@pytest.mark.parametrize("preset", ALL_PRESETS + ["every-block"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_lengths", [False, True], ids=["no-lengths", "lengths"])
def test_fake_cuda_forward_stays_on_the_device(preset, dtype, with_lengths, impulse_bank):
    """Every preset, in each input dtype, with and without lengths: outputs and params on CUDA in the input's dtype,
    no host sync (FakeTensorMode raises), no device mix (it raises too), no copy between host and device; the replay
    of the params too."""
    aug = _every_block(impulse_bank) if preset == "every-block" else make(preset, impulse_bank)
    frames = 98 if preset == "cola" else 96
    with fake_cuda():
        aug = aug.to("cuda")
        x = torch.randn(4, 160000, device="cuda", dtype=dtype)
        lengths = torch.tensor([160000, 8000, 1000, 40000], device="cuda") if with_lengths else None
        with HostTraffic() as traffic:
            pair = aug(x, lengths=lengths)
            again = aug(x, params=pair.params)
    assert traffic.copies == []
    for out in (pair, again):
        for spec in (out.anchor, out.positive):
            assert spec.device == CUDA and spec.dtype == dtype and spec.shape == (4, 1, 64, frames)
        assert all(v.device == CUDA for v in out.params.values())
    assert pair.finite.dtype == torch.bool and pair.finite.shape == (4,)


# --------------------------------------------------------------------- the device branches, run on a CPU, against the CPU's
def _branch_case(with_lengths, B=34, T=24000):
    """B > CPU_CHUNK (so the CPU chunks and the device path does not), rows stretched and not, lengths from a full
    row down to one shorter than a segment."""
    x = torch.randn(B, T, generator=cpu_generator(3)) * 0.1
    if not with_lengths:
        return x, None
    lengths = torch.randint(1, T + 1, (B,), generator=cpu_generator(4))
    lengths[:3] = torch.tensor([T, 500, 1])
    return x, lengths


@pytest.mark.parametrize("preset,backend", [(p, "torch") for p in ALL_PRESETS] + [("all", "auto")])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["no-lengths", "lengths"])
def test_device_branches_on_a_cpu_equal_the_cpu_branches(preset, backend, with_lengths, impulse_bank, one_thread):
    """The switch sends CPU tensors down the accelerator branches (whole batch at once, every row stretched and
    selected, windows gathered by index and from regions, the scale computed for every row, the finite flag): the
    output is bit for bit the CPU branches'. ``auto`` on the device branches runs the reference, as on a GPU (the CPU
    kernels are host code), so it is compared with the CPU branches of ``backend="torch"``."""
    if backend == "auto" and not kernels.available("cpu"):
        pytest.skip("needs numba")
    aug = make(preset, impulse_bank, backend=backend)
    ref_aug = make(preset, impulse_bank, backend="torch")
    x, lengths = _branch_case(with_lengths)
    ref = ref_aug(x, generator=cpu_generator(5), lengths=lengths)
    with device_branches():
        assert not AF.cpu_branch(x.device) and not kernels.use_kernels(backend, x.device)
        got = aug(x, generator=cpu_generator(5), lengths=lengths)
    assert AF.cpu_branch(x.device)  # the switch is off again
    assert ref.params.keys() == got.params.keys()
    for k in ref.params:
        assert torch.equal(ref.params[k], got.params[k]), k
    assert torch.equal(ref.anchor, got.anchor) and torch.equal(ref.positive, got.positive)


# ------------------------------------------------------------------------------------------------- the trainer's step
@pytest.fixture
def cuda_autocast(monkeypatch):
    """``torch.autocast("cuda")`` turns itself off (with a warning) where no CUDA is available; these two checks are
    all that stops it, so the fake step runs the real bf16 autocast dispatch."""
    import torch.cuda.amp.common as amp_common

    monkeypatch.setattr(amp_common, "amp_definitely_not_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def _int16_batch(device, B=4, T=32000):
    from trainer.data import Batch

    clips = torch.randint(-3000, 3000, (B, T), dtype=torch.int16, device=device)
    lengths = torch.tensor([T, 9000, 500, 20000], device=device)
    return Batch(clips, lengths, torch.zeros(B, dtype=torch.long, device=device), torch.ones(B, device=device))


def _watch_first_conv(model, seen):
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return conv.register_forward_hook(lambda m, args, out: seen.append(
        (args[0].is_contiguous(memory_format=torch.channels_last), out.dtype)))


def test_trainer_step_on_fake_cuda_runs_on_the_device_without_a_host_sync(cuda_autocast):
    """augment_batch (int16 clips, level gains, lengths) -> forward_loss under bf16 autocast with channels_last ->
    Adam, on fake CUDA: no host sync, no device mix, no copy between host and device. The backward between them cannot
    run here (the autograd engine asks the CUDA driver for the caller's streams): the next test runs it."""
    from trainer.model import ContrastiveModel
    from trainer.pretrain import PretrainConfig, augment_batch, forward_loss

    cfg = PretrainConfig(preset="ts+mask", encoder="small", dim=64)
    aug, model = PairAugmenter.from_preset(cfg.preset), ContrastiveModel(dim=64, encoder="small")
    seen = []
    _watch_first_conv(model, seen)
    with fake_cuda():
        # build() moves the model, then makes it channels_last: one .to here, since FakeTensorMode cannot swap the
        # parameters of a module twice (weak references to fake tensors)
        model = model.to(CUDA, memory_format=torch.channels_last)
        aug = aug.to(CUDA)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batch = _int16_batch(CUDA)
        with HostTraffic() as traffic:
            pair = augment_batch(aug, batch, None, CUDA)
            loss, acc = forward_loss(model, pair, cfg, CUDA)
        for p in model.parameters():  # what the backward would leave: a gradient like each parameter
            p.grad = torch.ones_like(p)
        optimizer.step()
    assert traffic.copies == []
    assert pair.anchor.device == pair.positive.device == CUDA and pair.finite.device == CUDA
    assert loss.device == acc.device == CUDA and loss.dtype == torch.float32 and loss.requires_grad
    assert seen == [(True, torch.bfloat16)]  # channels_last input, and the conv ran under bf16 autocast
    state = optimizer.state[next(model.parameters())]
    assert state["exp_avg"].device == CUDA and state["exp_avg"].dtype == torch.float32


def test_trainer_step_on_the_device_path_has_no_host_sync_through_backward_and_adam():
    """The whole train_step with the device branches forced on a CPU (augcl's device path, channels_last, bf16
    autocast, backward, Adam) on FakeTensorMode's CPU tensors, where the autograd engine needs no driver: no op reads
    device data on the host, the backward and Adam's step included."""
    from trainer.model import ContrastiveModel
    from trainer.pretrain import PretrainConfig, train_step

    cfg = PretrainConfig(preset="ts+mask", encoder="small", dim=64)
    aug, model = PairAugmenter.from_preset(cfg.preset), ContrastiveModel(dim=64, encoder="small")
    cpu = torch.device("cpu")
    with device_branches(), FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        stats = train_step(model, aug, optimizer, _int16_batch(cpu), None, cfg, cpu)
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    assert stats["loss"].dtype == torch.float32 and stats["finite"].shape == (4,)


def test_trainer_step_on_the_device_path_learns_with_bf16_autocast_and_channels_last():
    """The same step on real CPU tensors: the recipe is on (the conv sees channels_last input and runs in bf16), the
    gradients and Adam's state are float32, the loss is finite and falls over steps on a fixed batch."""
    from trainer.model import ContrastiveModel
    from trainer.pretrain import PretrainConfig, train_step

    torch.manual_seed(0)
    cfg = PretrainConfig(preset="ts+mask", encoder="small", dim=64)
    aug, model = PairAugmenter.from_preset(cfg.preset), ContrastiveModel(dim=64, encoder="small")
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen = []
    _watch_first_conv(model, seen)
    before = [p.detach().clone() for p in model.parameters()]
    batch = _int16_batch(torch.device("cpu"))
    with device_branches():
        losses = [float(train_step(model, aug, optimizer, batch, cpu_generator(0), cfg, torch.device("cpu"))["loss"])
                  for _ in range(3)]
    assert seen[0] == (True, torch.bfloat16)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    params = list(model.parameters())
    assert all(p.dtype == p.grad.dtype == optimizer.state[p]["exp_avg"].dtype == torch.float32 for p in params)
    assert all(not torch.equal(a, p) for a, p in zip(before, params) if p.ndim > 1)


# ------------------------------------------------------------------------------------------------- NaN/Inf, everywhere
def _rows_with_nan_and_inf(T=24000):
    x = torch.randn(6, T, generator=cpu_generator(7)) * 0.1
    x[1, 100] = float("nan")
    x[2, -1] = float("inf")
    x[3, 0] = -float("inf")
    x[4] *= 1e30  # loud and finite: its squares overflow float32, yet it is finite
    return x


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_nonfinite_rows_are_flagged_without_a_sync_on_the_device_path(preset, impulse_bank):
    """On the device path NaN/Inf is not raised (that would be a host sync) but flagged per row, exactly: the flagged
    rows' pairs are NaN, the other rows' are those of the same rows in a clean batch. The CPU raises by default and
    flags the same rows with check_finite=False."""
    aug = make(preset, impulse_bank)
    x = _rows_with_nan_and_inf()
    want = torch.tensor([True, False, False, False, True, True])
    with device_branches():
        pair = aug(x, generator=cpu_generator(0))
        clean = aug(torch.where(want[:, None], x, 0.0), params=pair.params)
    assert torch.equal(pair.finite, want)
    assert clean.finite.all()
    for got, ref in ((pair.anchor, clean.anchor), (pair.positive, clean.positive)):
        assert torch.isnan(got[~want]).all()
        assert torch.equal(got[want], ref[want])
    with pytest.raises(ValueError, match="NaN or Inf"):
        aug(x, generator=cpu_generator(0))
    unchecked = make(preset, impulse_bank, check_finite=False)(x, generator=cpu_generator(0))
    assert torch.equal(unchecked.finite, want)


def test_the_finite_flag_is_recomputed_on_a_replay_and_the_callers_params_are_left_alone():
    aug = make("ts+mask")
    x = _rows_with_nan_and_inf()
    with device_branches():
        pair = aug(x, generator=cpu_generator(0))
    kept, keys = pair.finite.clone(), set(pair.params)
    again = aug(x.nan_to_num(posinf=0.0, neginf=0.0), params=pair.params)  # the flag is the batch's, not a draw
    assert again.finite.all() and torch.equal(pair.finite, kept) and set(pair.params) == keys == set(again.params)
    assert aug(x[:, :20000].nan_to_num(), params=aug.sample(6, 20000, cpu_generator(1))).finite.all()
    bad = dict(pair.params, finite=torch.ones(5, dtype=torch.bool))  # params of an augcl that kept the flag in them
    with pytest.raises(ValueError, match="'finite'.*older augcl"):
        aug(x, params=bad)


def test_pretrain_stops_naming_the_step_and_the_clips_that_held_nan(tmp_path, monkeypatch):
    """On the device path the trainer reads the flags with its once-a-step log and stops, naming the step and the
    rows, before the step's checkpoint is written."""
    from trainer import pretrain as P
    from trainer.common import read_checkpoint

    real, calls = P.to_float, []

    def to_float_with_nan(clips, gains=None):
        out = real(clips, gains=gains)
        calls.append(1)
        if len(calls) == 2:  # the second step's batch: a NaN in its row 1
            out[1, 10] = float("nan")
        return out

    monkeypatch.setattr(P, "to_float", to_float_with_nan)
    cfg = P.PretrainConfig(out=str(tmp_path / "run"), steps=3, builtin_clips=8, clip_seconds=1.0, batch_size=4,
                           device="cpu", checkpoint_every=1, encoder="small", dim=32)
    with device_branches(), pytest.raises(ValueError, match=r"step 2 .*row\(s\) \[1\] .*NaN or Inf"):
        P.pretrain(cfg, progress=False)
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", "--resume")["step"] == 1


# ------------------------------------------------------------------------------- the fixes: syncs and host copies
def test_a_numeric_mask_fill_is_filled_on_the_device_not_copied_from_the_host():
    with fake_cuda():
        spec = torch.randn(3, 1, 64, 96, device="cuda", dtype=torch.bfloat16)
        start, width = (torch.randint(0, 50, (3, 2), device="cuda") for _ in range(2))
        with HostTraffic() as traffic:
            out = AF.time_mask(spec, start, width, -5.0)
    assert traffic.copies == [] and out.dtype == torch.bfloat16 and out.device == CUDA
    spec = torch.zeros(2, 1, 4, 10, dtype=torch.bfloat16)
    out = AF.time_mask(spec, torch.tensor([[2], [0]]), torch.tensor([[3], [1]]), -5)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[0, 0, :, 2:5], torch.full((4, 3), -5.0, dtype=torch.bfloat16))
    assert torch.equal(out[1, 0, :, 0], torch.full((4,), -5.0, dtype=torch.bfloat16))
    assert int((out != 0).sum()) == 4 * 3 + 4


def test_time_stretch_with_out_length_runs_on_fake_cuda_without_a_host_sync():
    """``out_length`` given: no read of the rates (the whole clip is the source region); a number as the rate is
    filled on the device."""
    with fake_cuda():
        x = torch.randn(3, 16000, device="cuda")
        rate = torch.tensor([0.8, 1.0, 1.25], device="cuda")
        with HostTraffic() as traffic:
            y = AF.time_stretch(x, rate, out_length=20000)
            z = AF.time_stretch(x, 1.1, out_length=14546)
    assert traffic.copies == []
    assert y.shape == (3, 20000) and z.shape == (3, 14546) and y.device == CUDA


def test_the_device_branch_of_the_stretch_is_exact_at_any_rate_without_a_bound():
    """max_rate None: the device branch reads the whole clip, so it equals the CPU branch whatever the rates, the
    whole-clip stretch of time_stretch included."""
    x = torch.randn(4, 6000, generator=cpu_generator(2))
    rate = torch.tensor([0.5, 1.0, 1.7, 3.0], dtype=torch.float64)
    start = torch.tensor([-300, 0, 1000, 1900])
    ref_frames = AF.stretched_frames(x, rate, start, 20, 160, 400)
    ref_stretch = AF.time_stretch(x, rate, n_fft=256, hop_length=64, out_length=12000)
    with device_branches():
        assert torch.equal(AF.stretched_frames(x, rate, start, 20, 160, 400), ref_frames)
        assert torch.equal(AF.time_stretch(x, rate, n_fft=256, hop_length=64, out_length=12000), ref_stretch)


def test_a_rate_above_max_rate_is_refused_on_both_branches():
    """The device branch used to read clamped frames where the CPU branch was exact. Now a rate above max_rate is an
    error on both, as an index out of range is: a ValueError on a CPU, ``torch._assert_async`` on a device (which, on
    a CPU tensor, raises at once; on CUDA it is a device-side assert, with no host sync)."""
    x = torch.randn(2, 8000, generator=cpu_generator(2))
    rate, start = torch.tensor([1.0, 1.3], dtype=torch.float64), torch.tensor([0, 100])
    for op in (lambda: AF.stretched_frames(x, rate, start, 10, 160, 400, max_rate=1.1),
               lambda: AF.time_stretch_segment(x, rate, start, 2000, max_rate=1.1)):
        with pytest.raises(ValueError, match="max_rate"):
            op()
        with device_branches(), pytest.raises(RuntimeError, match="max_rate"):
            op()
    AF.stretched_frames(x, torch.tensor([1.1, 0.9], dtype=torch.float64), start, 10, 160, 400, max_rate=1.1)
    aug = make("ts")
    params = aug.sample(2, 8000, cpu_generator(0))
    params["positive.stretch_rate"] = rate  # params of an augmenter with other rates
    with pytest.raises(ValueError, match="max_rate=1.1"):
        aug(x, params=params)


def test_sample_draws_on_the_generators_device(impulse_bank):
    """``device=None`` and a CUDA generator: the draws are on CUDA (they were on the CPU, where a CUDA generator
    fails). A CUDA generator needs a driver, so a Generator that reports CUDA stands in for one under FakeTensorMode."""

    class CudaGenerator(torch.Generator):
        @property
        def device(self):
            return CUDA

    g = CudaGenerator()
    aug = _every_block(impulse_bank)
    with fake_cuda():
        drawn = [aug.sample(4, 32000, g), RandomSegment(16000, stretch=StretchConfig()).sample(4, 32000, g),
                 AddNoise().sample(4, 32000, g), Gain().sample(4, 32000, g),
                 ApplyImpulseResponse(impulse_bank).sample(4, 32000, g), SpecAugment().sample(4, 64, 96, g)]
    assert all(v.device == CUDA for params in drawn for v in params.values())
    assert all(v.device.type == "cpu" for v in aug.sample(4, 32000, cpu_generator(0)).values())


def test_position_dtype_is_float64_except_where_the_device_has_none():
    for device in (None, "cpu", "cuda", torch.device("cuda", 1), "meta"):
        assert AF.position_dtype(device) == torch.float64
    for device in ("mps", torch.device("mps", 0)):
        assert AF.position_dtype(device) == torch.float32


@pytest.mark.parametrize("preset", ALL_PRESETS + ["uniform"])
def test_draws_on_a_device_without_float64_make_no_float64_tensor(preset, impulse_bank):
    """Fake MPS tensors under a mode that refuses float64 on MPS: every preset's draws (with and without lengths) are
    float32 there, and the CPU's draws stay float64 (its results unchanged)."""
    aug = (PairAugmenter(PairConfig(positive=BranchConfig(stretch=StretchConfig(mode="uniform"))))
           if preset == "uniform" else make(preset, impulse_bank))
    mps = torch.device("mps", 0)
    with fake_cuda(), NoFloat64On("mps"):
        lengths = torch.full((4,), 20000, device=mps)
        for drawn in (aug.sample(4, 32000, device=mps), aug.sample(4, 32000, device=mps, lengths=lengths)):
            assert all(v.device == mps and v.dtype != torch.float64 for v in drawn.values())
    if "positive.stretch_rate" in aug.param_keys():
        assert aug.sample(4, 32000, cpu_generator(0))["positive.stretch_rate"].dtype == torch.float64


# ----------------------------------------------------------------------------------------- the standalone transforms
def _standalone(impulse_bank):
    from augcl import LogMel, TimeStretch

    return {
        # the reference backend: the device branches run it (the CPU kernels are host code), so the CPU branches must
        "stretch": TimeStretch(0.8, 1.25, p=0.5, output_type="dict", backend="torch"),
        "stretch-longer": TimeStretch(rates=(0.9, 1.1), p=0.5, leave_length_unchanged=False, output_type="dict",
                                      backend="torch"),
        "rir": ApplyImpulseResponse(impulse_bank, p=0.5, compensate_for_propagation_delay=True, output_type="dict"),
        "white": AddNoise(p=0.5, output_type="dict", backend="torch"),
        "colored": AddNoise(kind="colored", p=0.5, mode="per_channel", output_type="dict", backend="torch"),
        "gain": Gain(p=0.5, mode="per_batch", output_type="dict"),
        "segment": RandomSegment(4000, p=0.5, output_type="dict"),
        "segment-stretch": RandomSegment(4000, stretch=StretchConfig(), output_type="dict", backend="torch"),
        "mel": LogMel(backend="torch"),
        "masks": SpecAugment(p=0.5, output_type="dict"),
    }


STANDALONE = ["stretch", "stretch-longer", "rir", "white", "colored", "gain", "segment", "segment-stretch", "mel",
              "masks"]


@pytest.mark.parametrize("name", STANDALONE)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fake_cuda_standalone_transforms_stay_on_the_device(name, dtype, impulse_bank):
    """Each public transform on (B, C, T) CUDA input with lengths, and its replay: output, lengths and params on
    CUDA, the input's dtype, no host sync, no device mix, no copy between host and device."""
    t = _standalone(impulse_bank)[name]
    with fake_cuda():
        t = t.to("cuda")
        x = torch.randn(4, 2, 16000, device="cuda", dtype=dtype)
        lengths = torch.tensor([16000, 9000, 100, 12000], device="cuda")
        with HostTraffic() as traffic:
            if name == "mel":
                outs = [t(x, lengths=lengths)]
            elif name == "masks":
                spec = torch.randn(4, 2, 64, 101, device="cuda", dtype=dtype)
                first = t(spec, lengths=lengths // 160)
                outs = [first, t(spec, lengths=lengths // 160, params=first.params)]
            else:
                first = t(x, lengths=lengths)
                outs = [first, t(x, lengths=lengths, params=first.params)]
    assert traffic.copies == []
    for out in outs:
        y = out if isinstance(out, torch.Tensor) else out.samples
        # the log-mel comes out in the dtype it is computed in (float32 for half input), the rest in the input's
        assert y.device == CUDA and y.dtype == (AF.work_dtype(dtype) if name == "mel" else dtype)
        if not isinstance(out, torch.Tensor):
            assert all(v.device == CUDA for v in out.params.values())
            assert out.lengths is None or out.lengths.device == CUDA


@pytest.mark.parametrize("name", ["stretch", "stretch-longer", "segment", "segment-stretch"])
def test_device_branches_of_the_standalone_transforms_equal_the_cpu_branches(name, impulse_bank):
    t = _standalone(impulse_bank)[name]
    x = torch.randn(6, 2, 16000, generator=cpu_generator(1)) * 0.1
    lengths = torch.tensor([16000, 9000, 100, 12000, 1, 15999])
    ref = t(x, lengths=lengths, generator=cpu_generator(2))
    with device_branches():
        got = t(x, lengths=lengths, generator=cpu_generator(2))
    assert torch.equal(ref.samples, got.samples) and torch.equal(ref.lengths, got.lengths)
