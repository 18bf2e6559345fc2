"""The forward pass on a CUDA GPU as benchmarks.gpu times it: a captured CUDA graph and ``torch.compile(fullgraph=True)``
equal eager, and the CUDA kernel's phase step on the paper's batch is as accurate as the reference (``pytest -m
cuda``: benchmarks.gpu's ``tests`` part runs these first). The check of the same path that needs no GPU, tracing the
CUDA forward whole on fake CUDA, runs everywhere.

Batches are the paper's, B=128 clips of 10 s, as benchmarks.gpu times them."""
import pytest
import torch

from augcl import functional as AF
from augcl import kernels
from benchmarks import gpu

from .conftest import make
from .test_kernels import _check_float32

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")
#: the forward's log-mels compiled vs eager: float32 reassociation moves a value by ~1e-6 relative (~1e-5 nepers);
#: 1e-3 nepers (0.004 dB) leaves room for that and catches any real difference
COMPILE_ATOL = 1e-3
#: replaying a captured graph runs the same kernels on the same inputs: equal to eager up to float32 rounding
GRAPH_ATOL = 1e-5
PRESETS = ["ts+mask", "all"]


def _assert_equal_pairs(a, b, atol: float) -> None:
    for x, y in ((a.anchor, b.anchor), (a.positive, b.positive)):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("preset", PRESETS)
def test_cuda_graph_replay_equals_eager_on_the_captured_batch_and_on_a_new_one(preset, impulse_bank):
    """``aug(wave, params=params)`` captured on static inputs: its replay equals eager; a new batch copied into the
    static inputs replays to that batch's eager output."""
    aug = make(preset, impulse_bank).to(CUDA)
    wave, params = gpu.batch(aug, CUDA, 0)
    eager = aug(wave, params=params)
    replay, output = gpu.capture_graph(aug, wave, params)
    replay()
    _assert_equal_pairs(output(), eager, GRAPH_ATOL)
    wave2, params2 = gpu.batch(aug, CUDA, 1)
    gpu.refill(wave, params, wave2, params2)
    replay()
    _assert_equal_pairs(output(), aug(wave2, params=params2), GRAPH_ATOL)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_compiled_forward_equals_eager(preset, mode, impulse_bank):
    """``torch.compile(fullgraph=True)`` of the forward with params (inductor; ``reduce-overhead``: CUDA graphs too):
    its first call and a later one (``reduce-overhead`` records its graph on a later call) equal eager."""
    aug = make(preset, impulse_bank).to(CUDA)
    wave, params = gpu.batch(aug, CUDA, 0)
    eager = aug(wave, params=params)
    call = gpu.compiled_call(aug, wave, params, CUDA, fullgraph=True, mode=None if mode == "default" else mode)
    _assert_equal_pairs(call(), eager, COMPILE_ATOL)
    call()
    _assert_equal_pairs(call(), eager, COMPILE_ATOL)


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and kernels.available("cuda")),
                    reason="needs a CUDA GPU and numba-cuda")
def test_cuda_kernel_phase_step_on_the_papers_batch_is_as_accurate_as_the_reference():
    """The phase step benchmarks.gpu times (the ``all`` positive's vocoder, B=128 x 10 s, rates 0.9 and 1.1), in
    float32 on the kernel: within tests/test_kernels.py's tolerance of the float64 truth."""
    s0, s1 = gpu.phase_step_case(CUDA, 128, 160000)
    truth = AF._vocoder_phase(s0, s1, 512, 128)
    c0, c1 = s0.to(torch.complex64), s1.to(torch.complex64)
    out = kernels.vocoder_phase(c0, c1, 512, 128)
    assert out.device == c0.device and out.dtype == torch.complex64
    _check_float32(out, AF._vocoder_phase(c0, c1, 512, 128), truth, s0)


@pytest.mark.parametrize("preset", PRESETS)
def test_cuda_forward_with_params_traces_whole_on_fake_cuda(preset, impulse_bank):
    """``torch.compile(fullgraph=True, backend="eager")`` of the forward with params on FakeTensorMode's CUDA tensors:
    a graph break on the CUDA path (a host sync, data-dependent control flow) raises. No GPU needed."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    aug = make(preset, impulse_bank)
    torch._dynamo.reset()
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            aug = aug.to("cuda")
            x = torch.randn(4, 32000, device="cuda")
            out = torch.compile(lambda w, p: aug(w, params=p), fullgraph=True, backend="eager")(
                x, aug.sample(4, 32000, None, x.device))
            assert out.anchor.device.type == "cuda" and tuple(out.positive.shape) == (4, 1, 64, 96)
    finally:
        torch._dynamo.reset()
