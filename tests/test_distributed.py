"""Data-parallel steps and stencil-parallel FD on 2 gloo ranks of this CPU, spawned by the tests themselves.

One spawn of two ranks (``_ranks``) runs, in float64 and at tiny sizes:

- a DDP step of the deep EBM's FD-SSM and SSM (``bench.distributed_case.DataParallelStepper``, the batch split over
  the ranks, v and the noise drawn for the global batch, NOTE [global-batch draws]): its loss, gradient and
  parameter update against one process's step on the whole batch (``bench.step_case.Stepper``);
- ``fd-distributed`` against ``fd-batched`` for T = 1..4 (odd and even stencils, split unevenly over the ranks), at
  the roundoff scale of the stencil sum, sum_i |w_i f_i|, and its parameter gradients (NOTE [the gradient contract
  of fd-distributed]): the ranks' gradients sum to the single-process gradient, ``sum_gradients`` gives it to every
  rank, and a naive differentiable all-reduce would have doubled it;
- ``measure_stencil`` (stencil-scaling's rows) at T = 1, 2: how many points each rank evaluates, and on how many ranks;
- then rank 1 raises, and rank 0's next collective fails with a clear message within the group's timeout.

A second test launches ``bench.distributed_case`` under torchrun with rank 1 hanging: the launch fails with rank 0's
timeout message, not a hang. Tolerances, float64 throughout: the DDP step sums the same per-sample terms in another
order, and a gradient through FD amplifies that rounding (``GRAD_RTOL``); fd-distributed adds its points' terms in
another order and evaluates f on other batch sizes, so D agrees with fd-batched to ``D_RTOL`` of sum_i |w_i f_i|
(not of |D|, which FD's cancellation makes far smaller than the terms' rounding).

The sweeps' side, without a launch: a ``--launcher`` whose program is not on PATH is one line and exit 2, and the
plots and summaries of launches that all failed say so.
"""

from __future__ import annotations

import datetime
import os
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.distributed_case import FAULT_ENV, LaunchFailed, launch
from bench.step_case import Stepper, recipe_for

WORLD = 2
GROUP_TIMEOUT_S = 6.0  # the process group's timeout in these tests (gloo's default is 30 minutes)
ORDERS = (1, 2, 3, 4)
EPS = 0.5
# Gradients through FD are differences of nearby forwards, which amplify float64 rounding: the DDP step's FD-SSM
# gradient (the recipe's eps 0.05 on a near-constant initial energy) agreed to 6e-9 of its norm, fd-distributed's
# (``_tiny_ebm``) to 5e-15. A wrong world-size factor would be an error of 0.5 or 1.
GRAD_RTOL = 1e-7  # the DDP step
STENCIL_GRAD_RTOL = 1e-12  # fd-distributed
D_RTOL = 1e-13  # |D_distributed - D_batched| / sum_i |w_i f_i| (measured: up to 1.3e-15, a few ulps)


def _step_case(objective: str) -> dict:
    return {"model": "deep-ebm", "objective": objective, "size": "cpu", "batch": 4, "dtype": "float64",
            "device": "cpu", "memory_format": "contiguous", "cudnn_benchmark": False, "float32_math": "ieee",
            "seed": 0}


def _grads(params) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]


def _tiny_ebm():
    """A 2-channel deep EBM on 8x8 images, its weights 4x the initialization's: a sharper energy, so that D (down
    to 8e-4 of sum_i |w_i f_i| here, at T = 4) stands well above the roundoff of its stencil sum."""
    from fdsm.models import build

    torch.manual_seed(3)
    model = build("deep-ebm", size="cpu", n_chan=2, image_size=8).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    return model


def _stencil_inputs():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64)  # B = 3: an odd batch
    u = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    return x, EPS * u / u.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def _stencil_cases() -> list[dict]:
    """stencil-scaling's cases at T = 1, 2 (S = 2, 3 points) on the ranks, tiny and timed once."""
    problem = {"model": "deep-ebm", "size": "cpu", "n_chan": 2, "weights": "random", "seed": 0, "batch": 2,
               "device": "cpu", "checkpoint": "", "event_shape": "", "accuracy": 2, "dtype": "float64",
               "world_size": WORLD, "warmup": 0, "repeats": 1}
    return [{**problem, "method": m, "order": t, "eps": 0.1} for t in (1, 2) for m in ("fd-batched", "fd-distributed")]


def _ranks(rank: int, store: str, out: str) -> None:
    """One rank of the spawned test (module docstring); writes its results to out/rank<r>.pt."""
    torch.set_num_threads(1)
    from bench.distributed_case import DataParallelStepper, measure_stencil
    from fdsm import Stencil, central_stencil, directional_derivative
    from fdsm.distributed import fd_distributed, points_of, sum_gradients
    from fdsm.fd import stencil_inputs

    result: dict = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                                timeout=datetime.timedelta(seconds=GROUP_TIMEOUT_S))
        for objective in ("FD-SSM", "SSM"):
            step = DataParallelStepper(recipe_for(_step_case(objective)), _step_case(objective), torch.device("cpu"))
            torch.manual_seed(1234)
            loss = step.ddp(step.x)
            loss.backward()  # DDP: the gradient averaged over the ranks
            result[objective] = {"loss": loss.item(), "grad": _grads(step.model.parameters())}
            step.optimizer.zero_grad(set_to_none=True)
            torch.manual_seed(1234)
            step()
            result[objective]["params"] = [p.detach().clone() for p in step.model.parameters()]
        model = _tiny_ebm()
        x, v = _stencil_inputs()
        for order in ORDERS:
            model.zero_grad(set_to_none=True)
            d = directional_derivative(model.log_density, x, v, order, method="fd-distributed")
            (d ** 2).sum().backward()  # the same loss on every rank
            mine = _grads(model.parameters())
            sum_gradients(model)
            result[order] = {"d": d.detach(), "grad": mine, "summed": _grads(model.parameters())}
            # the naive all-reduce: autograd's adjoint of a sum is a sum, so the replicated loss counts N times
            model.zero_grad(set_to_none=True)
            stencil = central_stencil(order)
            points = points_of(rank, WORLD, len(stencil))
            share = Stencil(order, tuple(stencil.offsets[i] for i in points), tuple(stencil.weights[i] for i in points),
                            stencil.accuracy)  # this rank's points
            outputs = model.log_density(stencil_inputs(x, v, share)).unflatten(0, (len(points), len(x)))  # (|I_r|, B)
            partial = torch.tensordot(torch.tensor(share.weights, dtype=torch.float64), outputs, dims=1)  # (B,)
            (torch.distributed.nn.functional.all_reduce(partial) ** 2).sum().backward()
            sum_gradients(model)
            result[order]["naive"] = _grads(model.parameters())
        result["stencil_rows"] = measure_stencil(_stencil_cases(), torch.device("cpu"), "gloo")
        torch.save(result, Path(out) / f"rank{rank}.pt")
        # a rank that raises: the other gets a clear error within the group's timeout
        if rank == 1:
            raise RuntimeError("rank 1 raises on purpose")
        start = time.perf_counter()
        try:
            fd_distributed(model.log_density, x, v, 2)
            failure = {"message": "", "seconds": time.perf_counter() - start}
        except RuntimeError as err:
            failure = {"message": str(err), "seconds": time.perf_counter() - start}
        torch.save(failure, Path(out) / "failure.pt")
    except Exception:
        (Path(out) / f"rank{rank}.error").write_text(traceback.format_exc())
        raise


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Spawn the two ranks once; their results by rank, and rank 0's failure record."""
    folder = tmp_path_factory.mktemp("ranks")
    context = mp.get_context("spawn")
    processes = [context.Process(target=_ranks, args=(r, str(folder / "store"), str(folder)), daemon=True)
                 for r in range(WORLD)]
    for p in processes:
        p.start()
    deadline = time.monotonic() + 150
    for p in processes:
        p.join(max(deadline - time.monotonic(), 0.1))
    for p in processes:
        if p.is_alive():
            p.kill()
    results = {r: torch.load(folder / f"rank{r}.pt") for r in range(WORLD) if (folder / f"rank{r}.pt").exists()}
    errors = {path.name: path.read_text() for path in folder.glob("rank*.error")}
    assert len(results) == WORLD, f"a rank did not finish its checks: {errors}"
    failure = torch.load(folder / "failure.pt") if (folder / "failure.pt").exists() else None
    return results, failure


def _reference_step(objective: str) -> dict:
    """One process, the whole batch: loss, gradient, then the parameters after one step from the same seed."""
    case = _step_case(objective)
    step = Stepper(recipe_for(case), case)
    torch.manual_seed(1234)
    loss = step.recipe.loss(step.model, step.x)
    loss.backward()
    grad = _grads(step.model.parameters())
    step.optimizer.zero_grad(set_to_none=True)
    torch.manual_seed(1234)
    step()
    return {"loss": loss.item(), "grad": grad, "params": [p.detach().clone() for p in step.model.parameters()]}


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def _norm(a: list[torch.Tensor]) -> float:
    return torch.cat([t.flatten() for t in a]).norm().item()


@pytest.mark.parametrize("objective", ["FD-SSM", "SSM"])
def test_a_ddp_step_over_two_ranks_is_the_single_process_step_on_the_whole_batch(ranks, objective):
    results, _ = ranks
    reference = _reference_step(objective)
    mean_loss = sum(results[r][objective]["loss"] for r in range(WORLD)) / WORLD
    assert mean_loss == pytest.approx(reference["loss"], rel=1e-10)
    for r in range(WORLD):
        # DDP averages the ranks' gradients: every rank holds the gradient of the whole batch's mean loss
        assert _max_diff(results[r][objective]["grad"], reference["grad"]) <= GRAD_RTOL * _norm(reference["grad"])
        assert _max_diff(results[r][objective]["params"], reference["params"]) <= 1e-6  # the bound


def test_fd_distributed_is_fd_batched_at_the_roundoff_of_the_stencil_sum_and_so_are_its_gradients(ranks):
    from fdsm import central_stencil, directional_derivative
    from fdsm.fd import stencil_outputs

    results, _ = ranks
    model = _tiny_ebm()
    x, v = _stencil_inputs()
    for order in ORDERS:
        stencil = central_stencil(order)
        model.zero_grad(set_to_none=True)
        d = directional_derivative(model.log_density, x, v, order, method="fd-batched")
        (d ** 2).sum().backward()
        grad = _grads(model.parameters())
        with torch.no_grad():
            f = stencil_outputs(model.log_density, x, v, stencil)  # (S, B)
            scale = (torch.tensor(stencil.weights, dtype=torch.float64).view(-1, 1) * f).abs().sum(0)  # (B,)
        for r in range(WORLD):
            ratio = ((results[r][order]["d"] - d.detach()).abs() / scale).max().item()
            assert ratio <= D_RTOL, f"T = {order}: |D - D_batched| is {ratio:.2g} of sum_i |w_i f_i|"
            bound = STENCIL_GRAD_RTOL * _norm(grad)
            assert _max_diff(results[r][order]["summed"], grad) <= bound, f"T = {order}"  # sum_gradients: everyone
            assert _max_diff([2 * g for g in grad], results[r][order]["naive"]) <= 2 * bound  # the naive: N times
        summed = [a + b for a, b in zip(results[0][order]["grad"], results[1][order]["grad"], strict=True)]
        worst = _max_diff(summed, grad) / _norm(grad)
        assert worst <= STENCIL_GRAD_RTOL, f"T = {order}: the ranks' gradients sum to it, up to {worst:.2g} of its norm"
        assert _max_diff(results[0][order]["grad"], grad) > 1e-3 * _norm(grad)  # a share, not the whole


def test_a_stencil_row_says_how_many_ranks_evaluate_its_points(ranks):
    from bench.distributed_case import _stencil_shares

    results, _ = ranks
    rows = results[0]["stencil_rows"]
    assert [(r["points"], r["points_per_rank"], r["ranks_busy"]) for r in rows] == [
        (2, 2, 1), (2, 1, 2),  # T = 1: fd-batched on rank 0, fd-distributed one point per rank
        (3, 3, 1), (3, 2, 2)]  # T = 2: rank 0 holds points 0 and 2, rank 1 point 1
    assert _stencil_shares("fd-distributed", 4, 3) == {"points_per_rank": 1, "ranks_busy": 3}  # N > S: one idles


def test_a_rank_that_raises_gives_the_others_a_clear_error_within_the_timeout(ranks):
    _, failure = ranks
    assert failure is not None, "rank 0 did not record its collective's outcome"
    assert "fd-distributed: the all-reduce of the partial stencil sums (3,) failed on rank 0 of 2" in failure["message"]
    assert "another rank died, raised or hung" in failure["message"]
    assert failure["seconds"] < GROUP_TIMEOUT_S + 3


def test_fd_distributed_refuses_without_a_process_group():
    from fdsm import METHODS, directional_derivative
    from fdsm.distributed import sum_gradients

    assert "fd-distributed" not in METHODS.names(enabled_only=True)
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="needs an initialized torch.distributed process group"):
        directional_derivative(lambda z: z.sum(1), x, x, 1, method="fd-distributed")
    module = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match=r"sum_gradients\(module\): needs an initialized torch.distributed"):
        sum_gradients(module)  # it raised torch's own error from its error handler, after setting zero grads
    assert module.weight.grad is None


def _three_ranks(rank: int, store: str, out: str) -> None:
    """One of 3 ranks for the 2 points of T = 1 (rank 2 holds none); writes out/three<r>.pt."""
    torch.set_num_threads(1)
    from fdsm import NotSupported, directional_derivative
    from fdsm.distributed import fd_distributed

    result: dict = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=3,
                                timeout=datetime.timedelta(seconds=GROUP_TIMEOUT_S))
        g = torch.Generator().manual_seed(7)
        x = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_(True)
        v = (0.1 * torch.randn(4, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
        d = directional_derivative(lambda z: (z ** 3).sum(1), x, v, 1, method="fd-distributed")
        result["requires_grad"] = d.requires_grad
        d.sum().backward(retain_graph=True)  # rank 2's D needed no gradient (it saw neither x nor v): it raised
        result["d"], result["x_grad"], result["v_grad"] = d.detach(), x.grad.clone(), v.grad.clone()
        # a gradient penalty through D: autograd took the in-place all_reduce for a copy (27% off); now refused
        (gx,) = torch.autograd.grad((d ** 2).sum(), x, create_graph=True)
        try:
            (gx ** 2).sum().backward()
            result["second"] = ""
        except NotSupported as err:
            result["second"] = str(err)
        group = dist.new_group([0, 1])  # every rank calls new_group; rank 2 is not in it
        try:
            fd_distributed(lambda z: (z ** 3).sum(1), x.detach(), v.detach(), 2, group=group)
            result["outside"] = ""
        except ValueError as err:
            result["outside"] = str(err)
        torch.save(result, Path(out) / f"three{rank}.pt")
    except Exception:
        (Path(out) / f"three{rank}.error").write_text(traceback.format_exc())
        raise


def test_fd_distributed_on_more_ranks_than_points_a_double_backward_and_a_foreign_group(tmp_path):
    """3 ranks for T = 1's 2 points: the idle rank's D has the others' graph (only x and v need a gradient here), with
    zero gradients, and the ranks' gradients sum to fd-batched's; a second derivative through D is refused by name
    on every rank; a rank outside the given group is refused (it computed a wrong D: rank -1's points)."""
    from fdsm import directional_derivative

    context = mp.get_context("spawn")
    processes = [context.Process(target=_three_ranks, args=(r, str(tmp_path / "store"), str(tmp_path)), daemon=True)
                 for r in range(3)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(90)
        if p.is_alive():
            p.kill()
    errors = {path.name: path.read_text() for path in tmp_path.glob("three*.error")}
    results = [torch.load(tmp_path / f"three{r}.pt") for r in range(3) if (tmp_path / f"three{r}.pt").exists()]
    assert len(results) == 3, errors
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    v = (0.1 * torch.randn(4, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    d = directional_derivative(lambda z: (z ** 3).sum(1), x, v, 1, method="fd-batched")
    d.sum().backward()
    assert all(r["requires_grad"] for r in results)
    for r in results:
        torch.testing.assert_close(r["d"], d.detach(), rtol=1e-13, atol=1e-15)
        assert "a second derivative through D" in r["second"] and "fd-batched" in r["second"]
    assert not results[2]["x_grad"].any() and not results[2]["v_grad"].any()  # the idle rank's share: zeros
    torch.testing.assert_close(sum(r["x_grad"] for r in results), x.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sum(r["v_grad"] for r in results), v.grad, rtol=1e-12, atol=1e-14)
    assert [bool(r["outside"]) for r in results] == [False, False, True]
    assert "not a member of the given group" in results[2]["outside"]


def test_a_hung_rank_under_torchrun_is_a_timeout_error_naming_the_rank_not_a_hung_sweep(monkeypatch):
    case = {**_step_case("FD-SSM"), "dtype": "float32", "warmup": 0, "repeats": 1}
    spec = {"kind": "steps", "device": "cpu", "threads": 1, "collective_timeout_s": 3.0, "cases": [case]}
    monkeypatch.setenv(FAULT_ENV, "hang:1")
    start = time.perf_counter()
    with pytest.raises(LaunchFailed) as failed:
        launch(spec, WORLD, timeout_s=90)
    assert time.perf_counter() - start < 60
    message = str(failed.value)
    assert failed.value.status == "error" and "exited with status" in message
    assert "rank 0 of 2, while building the DDP models of deep-ebm (FD-SSM)" in message  # its first collective
    assert "Timed out" in message and "another rank died, raised or hung" in message
    assert "the process-group timeout is 3 s" in message and os.environ[FAULT_ENV] == "hang:1"


@pytest.mark.parametrize("argv", [
    ["scaling", "--quick", "--world-sizes", "2", "--scalings", "strong", "--launcher", "nonexistent-launcher-xyz"],
    ["stencil-scaling", "--quick", "--orders", "1", "--world-sizes", "1", "--launcher", "nonexistent-launcher-xyz -n 2",
     "--dry-run"],
])
def test_a_launcher_that_is_not_on_path_is_refused_in_one_line_before_any_launch(tmp_path, capsys, argv):
    from bench.cli import main

    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--launcher 'nonexistent-launcher-xyz" in err and "'nonexistent-launcher-xyz' is not found on PATH" in err
    assert len(err.splitlines()) == 1 and not list(tmp_path.glob("*.csv"))


def test_the_scaling_plots_and_summaries_of_failed_launches_say_so_without_an_empty_legend_or_table(tmp_path):
    import warnings

    import pandas as pd

    from bench.experiments import scaling

    failed = {"status": "error", "message": "a rank raised", "world_size": 2, "backend": "gloo", "device": "cpu",
              "dtype": "float32", "model": "deep-ebm", "size": "cpu", "batch": 2, "repeats": 3}
    steps = pd.DataFrame([{**failed, "objective": o, "scaling": "strong"} for o in ("FD-SSM", "SSM")])
    stencil = pd.DataFrame([{**failed, "method": m, "order": 1} for m in scaling.STENCIL_METHODS])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend"
        scaling.plot(steps, tmp_path / "scaling.png")
        scaling.plot_stencil(stencil, tmp_path / "stencil_scaling.png")
    for text in (scaling.summary(steps), scaling.stencil_summary(stencil)):
        assert text.endswith("no row ran ok; the status and message columns say why") and "Empty" not in text


def test_stencil_scaling_refuses_a_user_model_naming_the_option_and_offers_no_event_shape(tmp_path, capsys):
    from bench.cli import build_parser, main

    spec = f"{Path(__file__).parents[1] / 'examples' / 'user_model.py'}:make_model"
    assert main(["stencil-scaling", "--quick", "--dry-run", "--model", spec, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--model {spec}: stencil-scaling takes a registered model" in err and "derivatives --model" in err
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    help_text = sub.choices["stencil-scaling"].format_help()
    assert "--event-shape" not in help_text and "file.py:factory" not in help_text
