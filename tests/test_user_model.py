"""Bring your own model: the contract (``fdsm.models.user``) and the command-line loader (``bench.user_model``).

Closed forms: the standard Gaussian has log p(x) = -|x|^2 / 2 (+ const) and score s(x) = -x, whichever interface
gives it (a log-density, the energy |x|^2 / 2, or the score itself). Values are compared in float64, where these
are exact up to rounding, so the default float64 tolerances of ``assert_close`` apply.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from bench import derivative_case
from bench.cli import main
from bench.config import Shared, UsageError
from bench.experiments import derivatives
from bench.user_model import build_user_model, is_user_model, load_factory, parse_event_shape
from fdsm.models import INTERFACES, UserModel, UserModelError, check_user_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "user_model.py"
EVENT = (2, 3)  # a rank-2 event, so that nothing assumes (B, d)


# ---- toy modules -------------------------------------------------------------------------------------------------


class GaussianLogDensity(nn.Module):
    """log p(x) = -|x|^2 / 2, the default interface."""

    event_shape = EVENT

    def forward(self, x):  # (B, 2, 3) -> (B,)
        return -0.5 * x.pow(2).flatten(1).sum(1)


class GaussianEnergy(nn.Module):
    interface = "energy"
    event_shape = EVENT

    def forward(self, x):  # E(x) = |x|^2 / 2
        return 0.5 * x.pow(2).flatten(1).sum(1)


class GaussianScore(nn.Module):
    interface = "score"
    event_shape = EVENT

    def forward(self, x):  # s(x) = -x
        return -x


class Returns(nn.Module):
    """forward returns ``make(x)``; event (3,), any interface."""

    event_shape = (3,)

    def __init__(self, make, interface="log-density"):
        super().__init__()
        self.make, self.interface = make, interface

    def forward(self, x):
        return self.make(x)


def _x(*shape, requires_grad=False) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                       requires_grad=requires_grad)


# ---- the contract: interfaces against the closed forms -----------------------------------------------------------


@pytest.mark.parametrize("module", [GaussianLogDensity(), GaussianEnergy(), GaussianScore()],
                         ids=lambda m: type(m).__name__)
def test_each_interface_gives_the_gaussian_score(module):
    model = UserModel(module)
    x = _x(5, *EVENT)
    assert model.event_shape == EVENT and model.interface in INTERFACES
    s = model.score(x)
    assert s.shape == (5, *EVENT)
    torch.testing.assert_close(s, -x)
    if model.interface == "score":
        torch.testing.assert_close(model(x), -x)
    else:
        torch.testing.assert_close(model.log_density(x), -0.5 * x.pow(2).flatten(1).sum(1))
        torch.testing.assert_close(model(x), model.log_density(x))


def test_score_of_a_log_density_keeps_the_graph_for_higher_derivatives():
    """v . grad_x (v . s(x)) = v^T H v = -|v|^2 per sample for the standard Gaussian."""
    model = UserModel(GaussianEnergy())
    x, v = _x(4, *EVENT, requires_grad=True), _x(4, *EVENT).flip(0)
    s = model.score(x)
    assert s.requires_grad
    (hv,) = torch.autograd.grad((s * v).sum(), x)
    torch.testing.assert_close((hv * v).flatten(1).sum(1), -v.pow(2).flatten(1).sum(1))
    with torch.no_grad():
        assert not model.score(x).requires_grad  # detached under no_grad, as exact_reverse does


def test_a_log_density_that_ignores_x_has_zero_score():
    model = UserModel(Returns(lambda x: torch.zeros(len(x), dtype=x.dtype)))
    torch.testing.assert_close(model.score(_x(2, 3)), torch.zeros(2, 3, dtype=torch.float64))


def test_score_model_has_no_log_density():
    with pytest.raises(UserModelError, match=r"UserModel\(GaussianScore\)\.log_density: a 'score' model .*score"):
        UserModel(GaussianScore()).log_density(_x(2, *EVENT))


def test_interface_spellings_and_unknown_interface():
    assert UserModel(Returns(lambda x: -x.sum(1), interface="log_density")).interface == "log-density"
    with pytest.raises(UserModelError, match=r"UserModel\(Returns\): interface must be one of .* got 'density'"):
        UserModel(Returns(lambda x: x, interface="density"))


def test_the_module_is_a_submodule():
    linear = nn.Linear(3, 1)
    net = nn.Sequential(linear, nn.Flatten(0))  # (B, 3) -> (B, 1) -> (B,)
    net.event_shape = (3,)  # an instance attribute declares it too
    model = UserModel(net)
    assert [p is q for p, q in zip(model.parameters(), linear.parameters(), strict=True)] == [True, True]
    assert set(model.state_dict()) == {"module.0.weight", "module.0.bias"}
    assert model.to(torch.float64).module[0].weight.dtype == torch.float64
    assert model.log_density(_x(4, 3)).shape == (4,)


class Holder(nn.Module):
    """A module whose own child is named ``module``: its state_dict keys start ``module.`` as the wrapper's do."""

    event_shape = (3,)

    def __init__(self):
        super().__init__()
        self.module = nn.Linear(3, 1)

    def forward(self, x):
        return self.module(x).squeeze(1)


@pytest.mark.parametrize("make", [lambda: nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)), Holder],
                         ids=["Sequential", "Holder"])
def test_load_state_dict_takes_the_users_own_state_dict_or_the_wrappers(make):
    torch.manual_seed(0)
    trained = UserModel(make(), event_shape=(3,))
    for state in (trained.module.state_dict(), trained.state_dict()):  # torch.save(module.state_dict()) or ours
        model = UserModel(make(), event_shape=(3,))
        model.load_state_dict(state)
        torch.testing.assert_close(model.state_dict(), trained.state_dict(), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict({"weight": torch.zeros(1, 3)})


def test_checks_x_and_the_output_shape_on_every_call():
    model = UserModel(Returns(lambda x: x.sum(1, keepdim=True)))
    with pytest.raises(ValueError, match=r"UserModel\(Returns\)\.log_density: expected x of shape \(B, 3\), got"):
        model.log_density(_x(4, 5))
    with pytest.raises(UserModelError, match=r"expected forward\(x\) of shape \(4,\) .* got \(4, 1\)"):
        model.log_density(_x(4, 3))


# ---- the contract: event shape -----------------------------------------------------------------------------------


class NoShape(nn.Module):
    def forward(self, x):
        return -x.pow(2).flatten(1).sum(1)


class ShapeProperty(NoShape):
    @property
    def event_shape(self):  # as the built-in models declare it (config.event_shape)
        return torch.Size([4])


def test_event_shape_from_argument_attribute_or_property():
    assert UserModel(NoShape(), event_shape=[1, 4, 4]).event_shape == (1, 4, 4)
    assert UserModel(NoShape(), event_shape=7).event_shape == (7,)
    assert UserModel(ShapeProperty()).event_shape == (4,)
    assert UserModel(ShapeProperty(), event_shape=(4,)).event_shape == (4,)


def test_missing_or_bad_event_shape_is_an_error():
    with pytest.raises(UserModelError, match=r"UserModel\(NoShape\): the event shape is unknown; .*--event-shape"):
        UserModel(NoShape())
    with pytest.raises(UserModelError, match=r"declares event_shape \(4,\) but \(5,\) was passed"):
        UserModel(ShapeProperty(), event_shape=(5,))
    for bad in [(), (0,), (2.5,), "16", (True,)]:
        with pytest.raises(UserModelError, match="event_shape must be a non-empty tuple of positive ints"):
            UserModel(NoShape(), event_shape=bad)
    with pytest.raises(TypeError, match=r"UserModel\(module\): expected a torch.nn.Module, got type function"):
        UserModel(lambda x: x)


# ---- check_user_model --------------------------------------------------------------------------------------------


def _check_error(make, interface="log-density") -> str:
    with pytest.raises(UserModelError) as info:
        check_user_model(UserModel(Returns(make, interface)))
    message = str(info.value)
    assert "\n" not in message and message.startswith("check_user_model(Returns): ")
    return message


def _raise(x):
    raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 8x32)\nsecond line")


def test_check_user_model_errors_are_one_line():
    assert _check_error(lambda x: x.sum(1, keepdim=True)) == (
        "check_user_model(Returns): expected forward(x) of shape (2,) for interface 'log-density', got (2, 1); "
        "a log-density model maps (B, *event) to (B,)")
    assert "expected forward(x) of shape (2, 3) for interface 'score', got (2,); a score model maps" in _check_error(
        lambda x: x.sum(1), "score")
    assert "for interface 'energy'" in _check_error(lambda x: x, "energy")
    assert "got a value of type tuple" in _check_error(lambda x: (x.sum(1),))
    assert "forward(x) gave 2 non-finite value(s) (nan or inf) of 2" in _check_error(lambda x: x.sum(1) / 0)
    assert ("forward(x) raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x3 and 8x32) on x of "
            "shape (2, 3)") in _check_error(_raise)
    assert "not differentiable in x" in _check_error(lambda x: x.sum(1).detach())
    weight = torch.ones(3, requires_grad=True)  # a graph through the parameters only: x detached inside forward
    assert "not differentiable in x" in _check_error(lambda x: (x.detach() * weight).sum(1))
    no_backward = torch.special.zeta  # zeta has no derivative in its first argument
    assert "the backward of forward(x) raised" in _check_error(lambda x: no_backward(x.exp() + 1, 2.0).sum(1))


def test_check_user_model_runs_a_row_alone_too():
    """At batch 1 (a .squeeze() without a dim drops the batch dimension), and the row must give what it gives in the
    batch: an output mixing the rows (x.sum() over the batch, batch statistics) breaks the contract."""
    message = _check_error(lambda x: x.sum(1).squeeze())
    assert "expected forward(x) of shape (1,) for interface 'log-density', got ()" in message
    assert "at batch 1" in message
    for mixing in (lambda x: x.sum(1) + x.sum(), lambda x: (x - x.mean(0)).pow(2).sum(1)):
        message = _check_error(mixing)
        assert "a row alone differs from the same row in a batch of 2" in message
        assert "rows must be independent samples" in message and "fdsm.models.user" in message


def test_check_user_model_passes_good_models_and_leaves_the_rng_alone():
    def mlp(*norm):  # (B, 3) -> (B,)
        return nn.Sequential(nn.Linear(3, 8), *norm, nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))

    models = [UserModel(GaussianLogDensity()), UserModel(GaussianEnergy()), UserModel(GaussianScore()),
              UserModel(nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)), event_shape=(3,)),
              UserModel(nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)).double(), event_shape=(3,)),  # float64 probe
              UserModel(mlp(nn.BatchNorm1d(8), nn.Dropout(0.5)), event_shape=(3,))]  # in training mode
    state = torch.get_rng_state()
    for model in models:
        check_user_model(model, batch=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(m.training for m in models[-1].modules())  # checked in eval mode, then given back its training mode
    frozen = models[-1].module.eval()
    check_user_model(models[-1])
    assert not any(m.training for m in frozen.modules())
    with pytest.raises(TypeError, match="expected a UserModel"):
        check_user_model(GaussianEnergy())


def test_user_model_error_pickles():
    err = pickle.loads(pickle.dumps(UserModelError("owner(X)", "what is wrong")))
    assert (str(err), err.detail, err.owner) == ("owner(X): what is wrong", "what is wrong", "owner(X)")


# ---- the loader --------------------------------------------------------------------------------------------------

GOOD_FILE = """
    import torch
    from torch import nn

    SIZE = 3

    class Quadratic(nn.Module):
        interface = "energy"
        event_shape = (SIZE,)

        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return 0.5 * self.scale * x.pow(2).sum(1)

    def make():
        return Quadratic()

    class Builder:
        @staticmethod
        def make():
            return Quadratic()

    def make_no_shape():
        return nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))

    def make_bad_shape():
        return nn.Linear(3, 1)

    def make_list():
        return [Quadratic()]

    def make_raises():
        raise KeyError("no config")

    def needs_argument(width):
        return nn.Linear(width, 1)
"""


def _write(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def good_file(tmp_path) -> Path:
    return _write(tmp_path, "my_models.py", GOOD_FILE)


@pytest.fixture
def good_module(tmp_path, monkeypatch) -> str:
    """The name of an importable module (on sys.path for this test) holding GOOD_FILE."""
    name = f"fdsm_test_user_{uuid.uuid4().hex[:8]}"
    _write(tmp_path, f"{name}.py", GOOD_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_is_user_model():
    assert is_user_model("pkg.mod:make") and is_user_model("path/file.py:make")
    assert not is_user_model("mlp-ebm")


def test_load_factory_by_module_path(good_module):
    factory = load_factory(f"{good_module}:make")
    assert factory.__module__ == good_module and factory() is not factory()
    assert load_factory(f"{good_module}:make") is factory  # cached
    assert isinstance(load_factory(f"{good_module}:Builder.make")(), nn.Module)


def test_load_factory_by_file_path_derives_the_module_name_from_the_path(good_file):
    spec = f"{good_file}:make"
    factory = load_factory(spec)
    assert factory.__module__.startswith("fdsm_user_my_models_") and sys.modules[factory.__module__].make is factory
    load_factory.cache_clear()
    assert load_factory(spec) is factory  # the same name again, as a spawned worker derives it
    model = build_user_model(spec)
    clone = pickle.loads(pickle.dumps(model))  # the class is importable by its derived module name
    assert type(clone.module) is type(model.module) and clone.interface == "energy"


def test_build_user_model(good_file):
    model = build_user_model(f"{good_file}:make")
    assert isinstance(model, UserModel) and (model.interface, model.event_shape) == ("energy", (3,))
    assert [name for name, _ in model.named_parameters()] == ["module.scale"]
    x = _x(4, 3)
    torch.testing.assert_close(model.to(torch.float64).score(x), -x)
    assert build_user_model(f"{good_file}:make") is not model  # fresh parameters on every build
    assert build_user_model(f"{good_file}:make_no_shape", event_shape=(3,)).event_shape == (3,)


def _usage_error(spec: str, event_shape=None) -> str:
    with pytest.raises(UsageError) as info:
        build_user_model(spec, event_shape)
    message = str(info.value)
    assert message.startswith(f"--model {spec}: ") and "\n" not in message
    return message


def test_loader_errors_are_one_line_usage_errors(tmp_path, good_file, good_module):
    broken = _write(tmp_path, "broken.py", "raise ValueError('boom\\nmore')\n")
    exits = _write(tmp_path, "exits.py", "import sys\nsys.exit(3)\n")
    missing_dependency = _write(tmp_path, "needs_dep.py", "import fdsm_no_such_dependency\n")
    not_python = _write(tmp_path, "model.txt", "")
    cases = {
        f"{good_file}:": "expected package.module:factory or path/to/file.py:factory",
        ":make": "expected package.module:factory",
        f"{tmp_path}/absent.py:make": "no such file",
        f"{not_python}:make": "is not a Python file",
        f"{broken}:make": "importing .*broken.py raised ValueError: boom$",
        f"{exits}:make": "raised SystemExit: 3",
        f"{missing_dependency}:make": "raised ModuleNotFoundError: No module named 'fdsm_no_such_dependency'",
        "fdsm_no_such_module.sub:make": "no module named 'fdsm_no_such_module'; is it installed or on PYTHONPATH",
        f"{good_module}:mkae": "has no attribute 'mkae'; its callables: Builder, Quadratic, make, make_bad_shape",
        f"{good_file}:SIZE": "my_models.py's SIZE is not callable \\(type int\\)",
        f"{good_file}:make_raises": "make_raises\\(\\) raised KeyError: 'no config'; the factory is called with no",
        f"{good_file}:needs_argument": "needs_argument\\(\\) raised TypeError: .*width",
        f"{good_file}:make_list": "make_list\\(\\) returned a value of type list, expected a torch.nn.Module",
        f"{good_file}:make_no_shape": "the event shape is unknown; .*--event-shape",
        f"{good_file}:make_bad_shape": "the event shape is unknown",
    }
    for spec, pattern in cases.items():
        message = _usage_error(spec)
        assert "--model" in message and spec in message
        assert re.search(pattern, message), (spec, message)
    assert _usage_error(f"{good_file}:make_bad_shape", (3,)) == (
        f"--model {good_file}:make_bad_shape: expected forward(x) of shape (2,) for interface 'log-density', got "
        "(2, 1); a log-density model maps (B, *event) to (B,)")


def test_a_module_spec_naming_a_file_here_suggests_the_file_spec(tmp_path, monkeypatch):
    name = f"fdsm_local_{uuid.uuid4().hex[:8]}"
    _write(tmp_path, f"{name}.py", GOOD_FILE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    assert f"exists but the current directory is not on sys.path: pass --model {name}.py:make" in _usage_error(
        f"{name}:make")


ENERGY_FILE = """
    from torch import nn

    class Energy(nn.Module):
        interface = "energy"
        event_shape = (4,)

        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Softplus(), nn.Linear(8, 1))

        def forward(self, x):  # (B, 4) -> (B,)
            return self.net(x).squeeze(1)

    class Squeezed(Energy):
        def forward(self, x):  # (B, 4) -> (B,), but () at B = 1
            return self.net(x).squeeze()

    class Mixing(Energy):
        def forward(self, x):  # row b depends on every row of x
            return self.net(x).squeeze(1) + x.sum()

    class NoParameters(nn.Module):
        interface = "energy"
        event_shape = (4,)

        def forward(self, x):  # E(x) = |x|^2 / 2
            return 0.5 * x.pow(2).sum(1)
"""


@pytest.fixture
def energy_file(tmp_path) -> Path:
    return _write(tmp_path, "energies.py", ENERGY_FILE)


def _dry_run(tmp_path, command: str, spec: str, *options: str) -> int:
    return main([command, "--quick", "--dry-run", "--device", "cpu", "--out", str(tmp_path / "out"), "--model", spec,
                 *options])


def _one_line_refusal(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_the_cli_loads_a_user_modules_own_checkpoint(tmp_path, energy_file):
    spec = f"{energy_file}:Energy"
    model = build_user_model(spec)
    own, wrapped = tmp_path / "own.pt", tmp_path / "wrapped.pt"
    torch.save(model.module.state_dict(), own)  # keys net.0.weight, ..., as a user saves their module
    torch.save(model.state_dict(), wrapped)  # keys module.net.0.weight, ...
    for checkpoint in (own, wrapped):
        assert _dry_run(tmp_path, "derivatives", spec, "--checkpoint", str(checkpoint)) == 0


def test_the_cli_refuses_a_model_broken_at_batch_1_or_mixing_rows_before_any_work(tmp_path, capsys, energy_file):
    assert _dry_run(tmp_path, "derivatives", f"{energy_file}:Squeezed") == 2
    err = _one_line_refusal(capsys)
    assert f"--model {energy_file}:Squeezed: expected forward(x) of shape (1,)" in err and "got ()" in err
    assert _dry_run(tmp_path, "train-steps", f"{energy_file}:Mixing") == 2
    err = _one_line_refusal(capsys)
    assert f"--model {energy_file}:Mixing: forward(x) of a row alone differs" in err
    assert "rows must be independent samples" in err
    assert not (tmp_path / "out").exists()


def test_a_bad_event_shape_is_blamed_on_event_shape(tmp_path, capsys, energy_file):
    for bad in ("4,0", "0", "4,-2"):
        assert _dry_run(tmp_path, "derivatives", f"{energy_file}:Energy", f"--event-shape={bad}") == 2
        err = _one_line_refusal(capsys)
        assert f"--event-shape {bad}: expected positive integers, e.g. 1,28,28" in err and "--model" not in err


def test_only_a_model_to_train_needs_parameters(energy_file):
    spec = f"{energy_file}:NoParameters"
    assert build_user_model(spec).interface == "energy"  # the derivative sweeps take it
    with pytest.raises(UsageError, match=f"^--model {re.escape(spec)}: has no parameters to train; train-steps"):
        build_user_model(spec, trains=True)
    assert build_user_model(f"{energy_file}:Energy", trains=True).interface == "energy"


def test_train_steps_refuses_a_model_with_nothing_to_train_before_any_work(tmp_path, capsys, energy_file):
    assert _dry_run(tmp_path, "train-steps", f"{energy_file}:NoParameters") == 2
    assert "has no parameters to train" in _one_line_refusal(capsys)
    assert _dry_run(tmp_path, "derivatives", f"{energy_file}:NoParameters") == 0  # nothing to train there


def test_parse_event_shape():
    assert parse_event_shape("1,28,28") == (1, 28, 28)
    assert parse_event_shape(" 16 ") == (16,)
    assert parse_event_shape("(3, 4)") == (3, 4) and parse_event_shape("16,") == (16,)
    for bad in ["", "a", "1,,2", "0", "1,-2", "1.5"]:
        with pytest.raises(UsageError, match=f"--event-shape {bad}: expected positive integers, e.g. 1,28,28"):
            parse_event_shape(bad)


# ---- the example file --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("factory", "interface"), [("make_model", "energy"), ("make_score_model", "score")])
def test_example_factories_pass_the_check(factory, interface):
    model = build_user_model(f"{EXAMPLE}:{factory}")
    assert (model.interface, model.event_shape) == (interface, (16,))
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    assert model.score(x).shape == (3, 16) and sum(p.numel() for p in model.parameters()) < 2000


SPECTRAL_FILE = """
    import torch
    from torch import nn

    class Spectral(nn.Module):
        \"\"\"E(x) = sum softplus(irfft(rfft(x) w)): a complex128 spectral weight, float32 around it.\"\"\"
        interface = "energy"
        event_shape = (8,)

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, dtype=torch.complex128))
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return nn.functional.softplus(self.scale * torch.fft.irfft(torch.fft.rfft(x) * self.w, n=8)).sum(1)
"""


@pytest.mark.parametrize("dtype, complex_dtype", [("float32", torch.complex64), ("float64", torch.complex128)])
def test_a_user_models_complex_weights_take_each_rows_precision_and_its_taylor_rows_agree(tmp_path, dtype,
                                                                                          complex_dtype):
    spec = f"{_write(tmp_path, 'spectral.py', SPECTRAL_FILE)}:Spectral"
    config = dataclasses.replace(derivatives.QUICK, model=spec, n_chan=None, methods=("exact-taylor",), orders=(3,))
    case = derivatives.cases(config, Shared(device="cpu", dtype=dtype, quick=True))[0]
    model, x, _ = derivative_case._inputs(case)
    assert model.module.w.dtype == complex_dtype and model.module.scale.dtype == x.dtype == getattr(torch, dtype)
    row = derivative_case.measure_derivative(case)
    assert row["reference"] == "exact-taylor" and not row.get("message"), row
    assert row["rel_error"] <= (1e-12 if dtype == "float64" else 1e-5)
