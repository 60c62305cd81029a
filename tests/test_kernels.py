"""Each Triton kernel against its torch reference: values, gradients, gradcheck, every output element written.

On the CPU the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``, set in ``tests/conftest.py``
before anything imports triton); with ``TRITON_INTERPRET=0`` and a GPU they run compiled, on CUDA tensors.
Shapes are small (the interpreter runs each program in Python) and chosen to leave a partial block: the
elementwise kernels work in blocks of 1024 elements and the FD-SSMVR row loop in steps of up to 1024 columns.
"""

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import kernels
from kernels.backend import triton_unavailable_reason
from kernels.fused_op import new_output

DEVICE = "cuda" if torch.cuda.is_available() and not kernels.INTERPRET else "cpu"
_NO_TRITON = triton_unavailable_reason(torch.device(DEVICE))
needs_triton = pytest.mark.skipif(_NO_TRITON is not None, reason=f"Triton backend unavailable: {_NO_TRITON}")
# float32: the kernels round in a different order than torch (blocked sums, and FMA when compiled), so agreement
# is to a few ulps of the largest element. The error is measured against that scale, because an element where a
# stencil sum cancels has no meaningful relative error of its own. float64: the same, 1e6 times tighter.
RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}


@dataclass(frozen=True)
class Case:
    """One op on one shape: ``make(dtype, generator)`` gives the positional tensors; ``kwargs`` the rest."""

    id: str
    op: Callable
    make: Callable
    kwargs: dict


def _randn(*shape):
    return lambda dtype, gen: torch.randn(*shape, dtype=dtype, generator=gen).to(DEVICE)


def _inputs(*makers):
    return lambda dtype, gen: [m(dtype, gen) for m in makers]


CASES = [
    # perturb: N = B*n = 111 (one partial block) and 1030 (one full block and a partial one); S = 3 and 4.
    Case("perturb-3x37-S3", kernels.perturb, _inputs(_randn(3, 37), _randn(3, 37)), {"offsets": [1.0, 0.0, -1.0]}),
    Case("perturb-5x206-S4", kernels.perturb, _inputs(_randn(5, 206), _randn(5, 206)),
         {"offsets": [2.0, 1.0, -1.0, -2.0]}),
    # combine: F (S, B, k) with B*k = 111 and 1030.
    Case("combine-3x3x37", kernels.combine, _inputs(_randn(3, 3, 37)), {"weights": [-0.5, 0.0, 0.5]}),
    Case("combine-4x5x206", kernels.combine, _inputs(_randn(4, 5, 206)),
         {"weights": [-1 / 12, 2 / 3, -2 / 3, 1 / 12]}),
    # per-sample heads: B = 7 and 1029.
    Case("fd_ssm-7", kernels.fd_ssm_head, _inputs(_randn(7), _randn(7), _randn(7)), {"scale": 100.0}),
    Case("fd_ssm-1029", kernels.fd_ssm_head, _inputs(_randn(1029), _randn(1029), _randn(1029)), {"scale": 0.3}),
    Case("fd_dsm-7-float-sigma", kernels.fd_dsm_head, _inputs(_randn(7), _randn(7), _randn(7)),
         {"sigma": 0.3, "scale": 25.0}),
    Case("fd_dsm-1029-tensor-sigma", kernels.fd_dsm_head, _inputs(_randn(1029), _randn(1029), _randn(1029)),
         {"sigma": torch.linspace(0.05, 1.2, 1029).to(DEVICE), "scale": 1.0}),
    # FD-SSMVR: rows of 7 (one step of 8) and 1500 (a full step of 1024 and a partial one).
    Case("fd_ssmvr-3x7", kernels.fd_ssmvr_head, _inputs(_randn(3, 7), _randn(3, 7), _randn(3, 7)), {"eps": 0.1}),
    Case("fd_ssmvr-2x1500", kernels.fd_ssmvr_head, _inputs(_randn(2, 1500), _randn(2, 1500), _randn(2, 1500)),
         {"eps": 0.05}),
]


def _run(case: Case, dtype: torch.dtype, backend: str, *, seed: int = 0):
    """The op's output and the gradients of <output, upstream> for a random upstream, under ``backend``."""
    gen = torch.Generator().manual_seed(seed)
    inputs = [t.requires_grad_() for t in case.make(dtype, gen)]
    with kernels.poison_outputs():
        out = case.op(*inputs, **case.kwargs, backend=backend)
        upstream = torch.randn(out.shape, dtype=dtype, generator=gen).to(DEVICE)
        grads = torch.autograd.grad(out, inputs, upstream)
    return out.detach(), grads


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, scale: float | None = None):
    """Agreement to RTOL of ``scale``, by default the largest element of ``expected``."""
    assert not actual.isnan().any(), f"{what}: {int(actual.isnan().sum())} elements left unwritten (NaN)"
    rtol = RTOL[expected.dtype]
    scale = expected.abs().max().item() if scale is None else scale
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=what)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_kernel_matches_reference(case: Case, dtype: torch.dtype):
    out, grads = _run(case, dtype, "triton")
    ref_out, ref_grads = _run(case, dtype, "torch")
    _assert_close(out, ref_out, f"{case.id} forward")
    for i, (g, ref_g) in enumerate(zip(grads, ref_grads, strict=True)):
        _assert_close(g, ref_g, f"{case.id} gradient of input {i}")


GRADCHECK_CASES = [
    # Tiny shapes (gradcheck runs the forward twice per input element); coefficients with gradients too.
    ("perturb", lambda x, v, g: kernels.perturb(x, v, g, backend="triton"), [(3, 5), (3, 5), (3,)]),
    ("combine", lambda F, w: kernels.combine(F, w, backend="triton"), [(3, 2, 3), (3,)]),
    ("fd_ssm", lambda a, b, c: kernels.fd_ssm_head(a, b, c, scale=4.0, backend="triton"), [(5,)] * 3),
    ("fd_dsm", lambda a, b, t: kernels.fd_dsm_head(a, b, t, 0.7, scale=0.5, backend="triton"), [(5,)] * 3),
    ("fd_ssmvr", lambda sp, sm, v: kernels.fd_ssmvr_head(sp, sm, v, 0.3, backend="triton"), [(2, 6)] * 3),
]


@needs_triton
@pytest.mark.parametrize("name,fn,shapes", GRADCHECK_CASES, ids=[c[0] for c in GRADCHECK_CASES])
def test_gradcheck_float64(name, fn, shapes):
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(s, dtype=torch.float64, generator=gen).to(DEVICE).requires_grad_() for s in shapes]
    assert torch.autograd.gradcheck(fn, inputs)


@needs_triton
def test_fd_ssmvr_gives_v_a_gradient_only_when_asked():
    sp, sm = (torch.randn(2, 9, dtype=torch.float64, device=DEVICE, requires_grad=True) for _ in range(2))
    v = torch.randn(2, 9, dtype=torch.float64, device=DEVICE)
    loss = kernels.fd_ssmvr_head(sp, sm, v, 0.1, backend="triton").sum()
    assert torch.autograd.grad(loss, [sp, sm])[0].shape == (2, 9)
    assert v.grad is None


@needs_triton
@pytest.mark.parametrize("head", ["fd_ssm", "fd_dsm"])
def test_loss_head_scale_survives_float16(head: str):
    """The scale 1/eps^2 (eq. 9) and 1/(4 eps^2) (eq. 10) at eps = 0.002 and 0.001 is 250000, past float16's
    largest value (65504): the kernels get it in float32 and compute in float32, so the loss is finite and only the
    output rounds (relative 2^-11), against a float64 reference on the same inputs."""
    gen = torch.Generator().manual_seed(5)
    inputs = [(1e-4 * torch.randn(7, generator=gen)).to(dtype=torch.float16, device=DEVICE) for _ in range(3)]
    if head == "fd_ssm":
        out = kernels.fd_ssm_head(*inputs, scale=1 / 0.002**2, backend="triton")
        expected = kernels.fd_ssm_reference(*(t.double() for t in inputs), scale=1 / 0.002**2)
    else:
        sigma = torch.ones(7, dtype=torch.float64, device=DEVICE)
        out = kernels.fd_dsm_head(*inputs, sigma, scale=0.25 / 0.001**2, backend="triton")
        expected = kernels.fd_dsm_reference(*(t.double() for t in inputs), sigma, scale=0.25 / 0.001**2)
    assert out.dtype == torch.float16 and out.isfinite().all(), out
    torch.testing.assert_close(out.double(), expected, rtol=2**-10, atol=2**-10 * expected.abs().max().item())


def test_poison_hook_fills_outputs_with_nan():
    """The NaN checks above can fail: under the hook, an output no kernel writes stays NaN."""
    like = torch.zeros(3)
    with kernels.poison_outputs():
        assert new_output((4,), like).isnan().all()
    assert new_output((4,), like).shape == (4,)


def test_auto_backend_is_torch_on_cpu():
    assert kernels.resolve_backend("auto", torch.device("cpu"), caller="t") == "torch"


def test_triton_backend_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setattr("kernels.backend.INTERPRET", False)
    x = torch.zeros(2, 3)
    expected = "TRITON_INTERPRET=1" if kernels.HAS_TRITON else "not importable"
    with pytest.raises(RuntimeError, match=expected):
        kernels.perturb(x, x, [1.0, -1.0], backend="triton")


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: kernels.perturb(torch.zeros(2, 3), torch.zeros(2, 3), [1.0], backend="gpu"), "backend"),
        (lambda: kernels.perturb(torch.zeros(2, 3), torch.zeros(2, 4), [1.0]), "expected v to match x"),
        (lambda: kernels.perturb(torch.zeros(6), torch.zeros(6), [1.0]), r"x to be a floating tensor of shape"),
        (lambda: kernels.combine(torch.zeros(3, 2, 1), [1.0, -1.0]), "expected 3 weights"),
        (lambda: kernels.fd_ssm_head(torch.zeros(4), torch.zeros(4), torch.zeros(5)), "lp_zero"),
        (lambda: kernels.fd_dsm_head(torch.zeros(4), torch.zeros(4), torch.zeros(4), torch.ones(3)), "sigma"),
        (lambda: kernels.fd_ssmvr_head(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), 0.0), "eps > 0"),
    ],
    ids=["backend", "perturb-shape", "perturb-rank", "combine-weights", "ssm-shape", "dsm-sigma", "ssmvr-eps"],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_imports_and_falls_back_without_triton():
    """With triton unimportable, ``kernels`` still imports, ``auto`` runs torch, and ``triton`` explains itself."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, kernels\n"
        "assert not kernels.HAS_TRITON and 'not importable' in kernels.TRITON_IMPORT_ERROR\n"
        "x = torch.ones(2, 3)\n"
        "assert kernels.perturb(x, x, [1.0, -1.0]).shape == (4, 3)\n"
        "try:\n"
        "    kernels.perturb(x, x, [1.0, -1.0], backend='triton')\n"
        "except RuntimeError as err:\n"
        "    assert 'not importable' in str(err), err\n"
        "else:\n"
        "    raise AssertionError('backend=triton ran without triton')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# %% fd-fused: fd-batched with the fused kernels at both ends


def _mlp(dtype):
    torch.manual_seed(0)
    # (N, 3, 2) -> (N, 4): a vector output, so that combine sees k > 1 and the event shape is restored.
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 8), torch.nn.Softplus(),
                               torch.nn.Linear(8, 4)).to(device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=needs_triton), "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_fd_fused_equals_fd_batched(order, dtype, backend):
    from fdsm import central_stencil, directional_derivative
    from fdsm.fd import fd_fused

    f = _mlp(dtype)
    gen = torch.Generator().manual_seed(order)
    x, v = (torch.randn(5, 3, 2, dtype=dtype, generator=gen).to(DEVICE) for _ in range(2))
    stencil = central_stencil(order, accuracy=4)

    def value_and_grads(run):
        d = run(f, x, v, order, stencil=stencil)  # |v| ~ 2.4: no cancellation to amplify roundoff
        grads = torch.autograd.grad((d**2).sum(), list(f.parameters()))
        # One vector, one scale: the last bias's gradient is sum_s w_s = 0 times something, i.e. pure roundoff.
        return d, torch.cat([g.flatten() for g in grads])

    fused, fused_grads = value_and_grads(lambda *a, **k: fd_fused(*a, **k, backend=backend))
    batched, batched_grads = value_and_grads(lambda *a, **k: directional_derivative(*a, **k, method="fd-batched"))
    assert fused.shape == batched.shape == (5, 4)
    # The stencil sum cancels (a small difference of terms the size of f): roundoff scales with sum_s |w_s f|.
    terms = sum(abs(w) for w in stencil.weights) * f(x).abs().max().item()
    _assert_close(fused, batched, "fd-fused value", scale=terms)
    _assert_close(fused_grads, batched_grads, "fd-fused parameter gradient")


@needs_triton
def test_fd_fused_method_runs_the_kernels():
    from fdsm import METHODS, directional_derivative

    assert METHODS.entry("fd-fused").enabled
    x = torch.randn(4, 3, dtype=torch.float64, device=DEVICE)
    d = directional_derivative(lambda z: (z**3).sum(1), x, torch.ones_like(x), 3, method="fd-fused")
    torch.testing.assert_close(d, torch.full((4,), 18.0, dtype=torch.float64, device=DEVICE))  # 3! * 3 ones
