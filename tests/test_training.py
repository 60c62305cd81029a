"""One training step, the short loop, the non-finite guard, and a --quick smoke test of each command."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.config import Shared
from bench.step_case import recipe_for
from fdsm import objectives as obj
from fdsm.models import build
from fdsm.recipes import RECIPES, Recipe, in_memory_format, recipe_available
from fdsm.training import PHASES, NonFiniteLossError, OptimConfig, Record, make_optimizer, train, training_step
from tests.conftest import load_script


def _shared(device: str) -> Shared:
    """The shared options on ``device``, a torch.device so that a CUDA one is taken as it is (no GPU needed here)."""
    return Shared(device=torch.device(device))


def _gaussian_recipe(lr=0.05, clip=1.0):
    return Recipe("gaussian", "FD-SSM", "-", lambda m, x: obj.fd_ssm_loss(m.log_density, x, eps=0.1),
                  OptimConfig("adam", lr=lr, clip=clip), batch=64)


def test_training_step_clips_the_gradient_norm_before_the_update():
    model = build("gaussian", size="cpu", dim=3)
    x = torch.randn(32, 3) + 5.0  # far from the model's mean: a large gradient
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    norms = []
    optimizer.step = lambda: norms.append(torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters() if p.grad is not None])).item())
    for clip in (1e-3, None):
        training_step(model, lambda: obj.fd_ssm_loss(model.log_density, x, eps=0.1), optimizer, clip=clip)
    assert norms[0] == pytest.approx(1e-3, rel=1e-4) and norms[1] > 1e-2  # clipped to 1e-3; unclipped larger


def test_the_deep_ebm_recipes_cosine_schedule_steps_with_every_training_step():
    model = build("gaussian", size="cpu", dim=3)
    optimizer, scheduler = make_optimizer(model, OptimConfig("adam", lr=0.1, cosine=True), total_steps=4)
    x = torch.randn(16, 3)
    for k in range(1, 5):
        training_step(model, lambda: obj.fd_ssm_loss(model.log_density, x, eps=0.1), optimizer, scheduler=scheduler)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (1 + math.cos(math.pi * k / 4)) / 2, abs=1e-12)


def test_training_step_updates_and_lowers_the_loss():
    torch.manual_seed(0)
    model = build("gaussian", size="cpu", dim=3)
    data = 0.5 * torch.randn(512, 3) + 1.0  # N(1, 0.25 I); the model starts at N(0, I)
    before = model.mean.detach().clone()
    records = train(model, _gaussian_recipe(), data, steps=60,
                    evaluate=lambda: {"sm_loss": obj.sm_loss(model.log_density, data).item()}, eval_every=20)
    assert [r.step for r in records] == [20, 40, 60]
    assert not torch.equal(model.mean, before)
    assert records[-1].metrics["sm_loss"] < records[0].metrics["sm_loss"]  # exact SM loss goes down
    assert all(r.wall_s > 0 for r in records)


def test_train_records_the_loss_with_no_metrics_where_nothing_is_evaluated():
    torch.manual_seed(0)
    model = build("gaussian", size="cpu", dim=3)
    records = train(model, _gaussian_recipe(), torch.randn(128, 3), steps=5, eval_every=2)
    assert [(r.step, r.metrics) for r in records] == [(2, {}), (4, {}), (5, {})]
    assert all(math.isfinite(r.loss) for r in records)


def test_non_finite_loss_stops_with_the_step_and_no_update():
    model = build("gaussian", size="cpu", dim=2)
    optimizer, _ = make_optimizer(model, OptimConfig(lr=0.1))
    x = torch.randn(4, 2)
    training_step(model, lambda: obj.ssm_loss(model.log_density, x), optimizer, step=1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError, match="training step 7: the loss is nan"):
        training_step(model, lambda: obj.ssm_loss(model.log_density, x) * math.nan, optimizer, step=7)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_a_loss_that_is_not_one_number_or_has_no_gradient_is_refused_before_any_update():
    model = build("gaussian", size="cpu", dim=2)
    optimizer, _ = make_optimizer(model, OptimConfig(lr=0.1))
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"training step 3: expected loss_fn to return one number, a 0-d tensor "
                                         r"\(an objective with reduction='mean'\), got shape \(4,\)"):
        training_step(model, lambda: obj.ssm_loss(model.log_density, x, reduction="none"), optimizer, step=3)
    with pytest.raises(ValueError, match="training step 0: the loss does not depend on any parameter"):
        training_step(model, lambda: torch.tensor(1.0), optimizer)  # autograd's raw error in backward before


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "expected steps to be a positive integer, got 0"),
    ({"steps": 2.5}, "expected steps to be a positive integer, got 2.5"),
    ({"steps": 3, "eval_every": 0}, "expected eval_every to be a positive integer, got 0"),
    ({"steps": 3, "time_budget_s": 0.0}, r"expected time_budget_s > 0, got 0.0"),
])
def test_train_refuses_a_run_it_cannot_make(kwargs, match):
    """steps = 0 returned no record silently; eval_every = 0 raised ZeroDivisionError after the first step."""
    model = build("gaussian", size="cpu", dim=3)
    with pytest.raises(ValueError, match=r"train\(model, recipe, data\): " + match):
        train(model, _gaussian_recipe(), torch.randn(128, 3), **kwargs)


def test_training_step_marks_the_end_of_each_phase_in_order():
    model = build("gaussian", size="cpu", dim=2)
    optimizer, scheduler = make_optimizer(model, OptimConfig(lr=0.1, clip=1.0, cosine=True), total_steps=5)
    marks = []
    training_step(model, lambda: obj.ssm_loss(model.log_density, torch.randn(4, 2)), optimizer, clip=1.0,
                  scheduler=scheduler, mark=marks.append)
    assert tuple(marks) == PHASES == ("loss", "backward", "update")


def test_every_table_row_has_a_recipe():
    rows = {(r.value.model, r.value.objective) for r in RECIPES}
    assert {("deep-ebm", o) for o in ("DSM", "FD-DSM*", "FD-DSM", "SSM", "SSMVR", "FD-SSM*", "FD-SSM")} <= rows
    assert {("dkef", o) for o in ("SSM", "SSMVR", "FD-SSM")} <= rows
    assert {("nice", o) for o in ("Approx-BP", "CP", "DSM", "DSM-1.74", "SSM", "SSMVR", "FD-SSM", "MLE")} <= rows
    assert {("ncsn", "SSMVR"), ("ncsn", "FD-SSMVR"), ("vae-score", "FD-SSMVR"), ("wae-score", "SSMVR")} <= rows


@pytest.mark.parametrize("name", ["nice/FD-SSM", "nice/SSMVR", "nice/Approx-BP", "nice/CP", "dkef/FD-SSM",
                                  "vae-score/FD-SSMVR", "wae-score/SSMVR"])
def test_cheap_recipes_take_a_finite_step(name):
    recipe = dataclasses.replace(RECIPES.get(name), batch=8)
    assert recipe_available(recipe)[0]
    torch.manual_seed(0)
    model = recipe.build_model("cpu")
    x = torch.rand(8, *model.event_shape)
    recipe.prepare_model(model, x)
    optimizer, scheduler = make_optimizer(model, recipe.optim, 10)
    loss = training_step(model, lambda: recipe.loss(model, x), optimizer, clip=recipe.optim.clip,
                         scheduler=scheduler)
    assert loss.shape == () and torch.isfinite(loss)


def _loss_and_grads(name: str, memory_format: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    recipe = RECIPES.get(name)
    torch.manual_seed(0)
    model = recipe.build_model("cpu", n_chan=2).double()
    x = torch.rand(3, *model.event_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    model, x = in_memory_format(model, x, memory_format)
    torch.manual_seed(2)  # the same directions and noise in both layouts
    loss = recipe.loss(model, x)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True, materialize_grads=True)
    return loss.detach(), grads


# FD-SSM is left out: at random weights its loss is a 1e-10 difference of O(1) log-densities, rounding-dominated in
# either layout; FD-DSM runs the same stacked forward (fdsm.fd.stencil_outputs) and SSM the nested backward.
@pytest.mark.parametrize("name", ["deep-ebm/SSM", "deep-ebm/DSM", "deep-ebm/FD-DSM"])
def test_channels_last_moves_values_not_the_loss_or_its_gradients(name):
    loss, grads = _loss_and_grads(name, "contiguous")
    loss_cl, grads_cl = _loss_and_grads(name, "channels_last")
    torch.testing.assert_close(loss_cl, loss, rtol=1e-10, atol=0)
    for g_cl, g in zip(grads_cl, grads, strict=True):
        torch.testing.assert_close(g_cl, g, rtol=1e-8, atol=1e-12)


def test_memory_format_applies_to_image_batches_only():
    model = build("deep-ebm", size="cpu", n_chan=2, in_channels=3)
    model, x = in_memory_format(model, torch.rand(2, 3, 32, 32), "channels_last")
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert model.stem.weight.is_contiguous(memory_format=torch.channels_last)
    flat = torch.rand(4, 3)
    assert in_memory_format(build("gaussian", size="cpu", dim=3), flat, "channels_last")[1] is flat
    with pytest.raises(ValueError, match="expected one of"):
        in_memory_format(model, x, "nhwc")


def test_flop_count_matches_the_closed_form_of_a_linear_map_through_nested_autograd_grad():
    from bench.flops import FlopCount

    batch, n, m = 5, 7, 3
    w = torch.randn(m, n, requires_grad=True)
    x = torch.randn(batch, n, requires_grad=True)
    with FlopCount() as forward:
        y = x @ w.T  # 2 B n m
    assert forward.total == 2 * batch * n * m
    with FlopCount() as nested:  # the input gradient with create_graph, then the parameter gradient through it
        (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)  # g = 2 y W: one matmul
        g.sum().backward()  # through g = 2y W: to 2y and to W (two matmuls); through y = x W^T: to x and W (two)
    assert nested.total == 2 * batch * n * m * 5


def test_fd_dsm_and_fd_ssmvr_do_their_counterparts_arithmetic_and_fd_ssm_less():
    from bench.experiments.train_steps import DEFAULT, cases
    from bench.flops import step_gflop

    # Equal but for the first layer's input gradient, which only the gradient objectives take.
    pairs = dataclasses.replace(DEFAULT, models=("deep-ebm", "ncsn"),
                                objectives=("DSM", "FD-DSM", "SSM", "FD-SSM", "SSMVR", "FD-SSMVR"))
    gflop = {(c["model"], c["objective"]): step_gflop(c, recipe_for(c)) for c in cases(pairs, _shared("cpu"))}
    assert gflop[("deep-ebm", "FD-DSM")] == pytest.approx(gflop[("deep-ebm", "DSM")], rel=5e-3)
    assert gflop[("ncsn", "FD-SSMVR")] == pytest.approx(gflop[("ncsn", "SSMVR")], rel=5e-3)
    assert 1.3 < gflop[("deep-ebm", "SSM")] / gflop[("deep-ebm", "FD-SSM")] < 1.6  # 1.45 at both sizes


def test_flops_command_counts_the_cases_and_the_rate_of_a_timed_run(tmp_path, capsys):
    from bench.flops import step_gflop

    assert main(["flops", "--size", "cpu", "--models", "nice", "--out", str(tmp_path / "counted")]) == 0
    counted = pd.read_csv(tmp_path / "counted" / "flops.csv")
    assert list(counted.objective) == [r.value.objective for r in RECIPES if r.value.model == "nice"]
    assert (counted.gflop > 0).all() and counted.message.isna().all()

    run = tmp_path / "train_steps.csv"  # a train-steps run from before it counted FLOPs: one ok row, one failed
    pd.DataFrame({"model": ["nice", "nice"], "objective": ["SSM", "FD-SSM"], "size": "cpu", "batch": [8, 8],
                  "time_ms": [4.0, float("nan")], "status": ["ok", "error"]}).to_csv(run, index=False)
    assert main(["flops", "--times", str(run), "--out", str(tmp_path / "rates")]) == 0
    rates = pd.read_csv(tmp_path / "rates" / "flops.csv")
    gflop = step_gflop({"model": "nice", "objective": "SSM", "size": "cpu", "batch": 8}, RECIPES.get("nice/SSM"))
    assert list(rates.objective) == ["SSM"]
    assert rates.gflop[0] == pytest.approx(gflop) and rates.tflops[0] == pytest.approx(gflop / 4.0)

    capsys.readouterr()
    for dry_run in ([], ["--dry-run"]):  # the dry run makes the run's checks
        assert main(["flops", "--times", str(tmp_path / "missing.csv"), "--out", str(tmp_path), *dry_run]) == 2
        assert "no such file" in capsys.readouterr().err
    assert main(["flops", "--models", "resnet", "--out", str(tmp_path)]) == 2
    assert "unknown ['resnet']" in capsys.readouterr().err


def test_flops_times_rates_a_user_models_rows_and_refuses_a_run_with_no_ok_row(tmp_path, capsys):
    from bench.flops import step_gflop

    spec = f"{Path(__file__).parents[1] / 'examples' / 'user_model.py'}:make_model"
    run = tmp_path / "train_steps.csv"  # as train-steps writes it: event_shape empty where the model declares it
    pd.DataFrame({"model": spec, "objective": ["SSM", "FD-SSM"], "size": "user", "batch": 8, "time_ms": 2.0,
                  "status": "ok", "event_shape": ["", "16"], "lr": 1e-3}).to_csv(run, index=False)
    assert main(["flops", "--times", str(run), "--out", str(tmp_path)]) == 0
    rates = pd.read_csv(tmp_path / "flops.csv")
    case = {"model": spec, "objective": "SSM", "size": "user", "batch": 8, "event_shape": "", "lr": 1e-3}
    assert rates.gflop[0] == pytest.approx(step_gflop(case, recipe_for(case))) and (rates.gflop > 0).all()
    assert rates.tflops.tolist() == pytest.approx((rates.gflop / 2.0).tolist())

    pd.DataFrame({"model": ["nice"], "objective": ["SSM"], "size": "cpu", "batch": 8, "time_ms": [float("nan")],
                  "status": ["error"]}).to_csv(run, index=False)
    capsys.readouterr()
    assert main(["flops", "--times", str(run), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--times {run}: no ok rows to rate" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("command, csv, columns", [
    ("train-steps", "train_steps.csv", {"model", "objective", "batch", "dtype", "device", "time_ms", "time_ms_iqr",
                                        "peak_mem_mb", "loss", "status", "torch", "git_commit", "memory_format",
                                        "versus", "speedup", "speedup_q1", "speedup_q3", "time_loss_ms",
                                        "time_backward_ms", "time_update_ms", "gflop", "tflops"}),
    ("grad-agreement", "grad_agreement.csv", {"model", "pair", "eps", "dtype", "cosine", "status"}),
    ("train", "train.csv", {"model", "objective", "step", "wall_s", "sm_loss", "nll", "status"}),
])
def test_command_quick_writes_its_csv(tmp_path, command, csv, columns):
    assert main([command, "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = pd.read_csv(tmp_path / csv)
    assert columns <= set(rows.columns), columns - set(rows.columns)
    assert len(rows) and (rows.status == "ok").all()
    assert (tmp_path / csv.replace(".csv", ".png")).exists()


def test_train_steps_cases_take_the_layout_measured_fastest_per_model():
    from bench.experiments.train_steps import DEFAULT, cases

    fastest = {(m, "channels_last" if m == "deep-ebm" else "contiguous") for m in DEFAULT.models}
    for device in ("cpu", "cuda"):  # building nothing on the GPU, so this runs without one
        rows = cases(DEFAULT, _shared(device))
        assert {(c["model"], c["memory_format"]) for c in rows} == fastest, device  # every model's rows, none lost
        assert {c["size"] for c in rows} == {"paper" if device == "cuda" else "cpu"}
    forced = dataclasses.replace(DEFAULT, memory_format="channels_last")
    forced_rows = {(c["model"], c["memory_format"]) for c in cases(forced, _shared("cpu"))}
    image_models = {"deep-ebm", "ncsn"}  # flat batches stay contiguous whatever is asked
    assert forced_rows == {(m, "channels_last" if m in image_models else "contiguous") for m in DEFAULT.models}


def test_cudnn_benchmark_is_on_for_cuda_rows_by_default_and_can_be_turned_off():
    from bench.cli import build_parser
    from bench.experiments.train_steps import DEFAULT, cases

    def flags(config, device):
        return {c["cudnn_benchmark"] for c in cases(config, _shared(device))}

    assert flags(DEFAULT, "cuda") == {True} and flags(DEFAULT, "cpu") == {False}  # a CPU row has no cuDNN
    args = build_parser().parse_args(["train-steps", "--device", "cuda", "--no-cudnn-benchmark"])
    assert args.cudnn_benchmark is False
    assert flags(dataclasses.replace(DEFAULT, cudnn_benchmark=args.cudnn_benchmark), "cuda") == {False}


def test_float32_math_is_ieee_by_default_tf32_on_request_and_always_ieee_on_the_cpu():
    from bench.cli import build_parser
    from bench.experiments.train_steps import DEFAULT, cases

    def modes(config, device):
        return {c["float32_math"] for c in cases(config, _shared(device))}

    args = build_parser().parse_args(["train-steps", "--device", "cuda", "--float32-math", "tf32"])
    tf32 = dataclasses.replace(DEFAULT, float32_math=args.float32_math)
    assert modes(DEFAULT, "cuda") == {"ieee"} and modes(tf32, "cuda") == {"tf32"}
    assert modes(tf32, "cpu") == {"ieee"}  # a CPU has no TF32: the row says what ran


def test_an_fd_row_whose_counterpart_cannot_run_is_timed_alone(monkeypatch):
    from bench import step_case as train_steps

    monkeypatch.setitem(train_steps.COUNTERPART, "FD-SSM", "NO-SUCH-ROW")  # building the counterpart fails
    case = {"model": "nice", "objective": "FD-SSM", "size": "cpu", "batch": 8, "dtype": "float32", "device": "cpu",
            "memory_format": "contiguous", "seed": 0, "warmup": 0, "repeats": 2}
    row = train_steps.measure_step(case)
    assert row["time_ms"] > 0 and row["repeats"] == 2 and math.isfinite(row["loss"])
    assert "speedup" not in row and "NO-SUCH-ROW could not run beside it" in row["message"]


def test_a_row_whose_flops_cannot_be_counted_keeps_its_timings(monkeypatch):
    import bench.flops
    from bench import step_case as train_steps

    def no_meta(case, recipe):
        raise NotImplementedError("no meta kernel")

    monkeypatch.setattr(bench.flops, "step_gflop", no_meta)
    case = {"model": "nice", "objective": "MLE", "size": "cpu", "batch": 8, "dtype": "float32", "device": "cpu",
            "memory_format": "contiguous", "seed": 0, "warmup": 0, "repeats": 2}
    row = train_steps.measure_step(case)
    assert row["time_ms"] > 0 and math.isnan(row["gflop"]) and math.isnan(row["tflops"])
    assert "FLOPs not counted on the meta device (NotImplementedError: no meta kernel)" in row["message"]


def test_an_fd_rows_speedup_is_its_counterparts_time_over_its_own(monkeypatch):
    from bench import step_case as train_steps
    from bench.timing import Timing

    def fixed(fns, device, *, warmup, repeats):  # FD (first) 10 ms a round, SSM 30 ms, the Taylor SSM step 20 ms
        assert len(fns) == 3
        for fn in fns * repeats:
            fn()
        return [Timing(ms, 0.0, ms, ms, repeats, 1, (ms,) * repeats) for ms in (10.0, 30.0, 20.0)]

    monkeypatch.setattr(train_steps, "measure_interleaved", fixed)
    case = {"model": "nice", "objective": "FD-SSM", "size": "cpu", "batch": 8, "dtype": "float32", "device": "cpu",
            "memory_format": "contiguous", "seed": 0, "warmup": 0, "repeats": 3}
    row = train_steps.measure_step(case)
    assert row["versus"] == "SSM" and row["speedup"] == 3.0 and row["time_ms"] == 10.0  # above 1: FD is faster
    assert row["versus_taylor"] == "SSM-Taylor" and row["speedup_taylor"] == 2.0  # over the strongest exact step


def test_speedups_take_the_flop_and_memory_ratios_from_the_counterparts_row():
    from bench.experiments.train_steps import speedups

    rows = pd.DataFrame({"model": ["m", "m", "m"], "objective": ["SSM", "FD-SSM", "FD-DSM"],
                         "versus": [None, "SSM", "DSM"], "speedup": [None, 2.5, 1.5], "speedup_q1": [None, 2.4, 1.4],
                         "speedup_q3": [None, 2.6, 1.6], "gflop": [3.0, 2.0, 1.0],
                         "peak_mem_mb": [8.0, 4.0, 1.0], "status": ["ok"] * 3})
    table = speedups(rows).set_index("objective")
    assert table.loc["FD-SSM", "flop_ratio"] == 1.5 and table.loc["FD-SSM", "memory_ratio"] == 2.0
    assert math.isnan(table.loc["FD-DSM", "flop_ratio"])  # its counterpart's row is not in this run


def test_profile_script_writes_a_table_a_trace_and_a_row(tmp_path):
    from bench.experiments.train_steps import DEFAULT, cases

    profile_step = load_script("profile_step")
    (case,) = cases(dataclasses.replace(DEFAULT, models=("nice",), objectives=("FD-SSM",), batch=8, warmup=0),
                    _shared("cpu"))
    row = profile_step.profile_row(case, steps=1, out=tmp_path, trace=True)
    assert row["time_ms"] > 0 and row["gflop"] > 0 and row["aten_ops"] > 0 and "kernel_ms" not in row
    table = (tmp_path / "nice_FD-SSM.txt").read_text()
    assert "aten::" in table and "loss" in table  # the phase ranges are profiled too
    assert (tmp_path / "nice_FD-SSM.json.gz").stat().st_size > 0


def test_layout_comparison_script_times_every_objective_in_both_layouts():
    from bench.experiments.train_steps import MEMORY_FORMAT

    rows = load_script("compare_layouts").compare("deep-ebm", batch=2, warmup=0, repeats=1, seed=0)
    assert {r["objective"] for r in rows} == {r.value.objective for r in RECIPES if r.value.model == "deep-ebm"}
    assert all(r["time_ms_contiguous"] > 0 and r["time_ms_channels_last"] > 0 for r in rows)
    assert set(MEMORY_FORMAT) <= {"deep-ebm", "ncsn"}  # the image models the script compares by default


def test_how_often_train_evaluates_does_not_change_the_training_run():
    from bench.commands.train import QUICK, _run_dkef

    def losses(eval_every: int) -> dict[int, float]:
        config = dataclasses.replace(QUICK, dkef_steps=4, eval_every=eval_every)
        return {row["step"]: row["loss"] for row in _run_dkef(config, seed=0, device=torch.device("cpu"))}

    every_step, every_other = losses(1), losses(2)
    assert set(every_other) == {2, 4}
    assert all(every_other[step] == every_step[step] for step in every_other), (every_step, every_other)


def test_each_deep_ebm_objective_in_train_sees_the_same_batches_however_far_the_others_ran(monkeypatch):
    from bench.commands import train as train_command
    from fdsm.training import batches

    seen: dict[str, list[torch.Tensor]] = {}

    def record_batches(model, recipe, data, *, steps, generator, **kwargs):  # train's batches, without the steps
        stream = batches(data, recipe.batch, generator)
        seen[recipe.objective] = [next(stream) for _ in range(steps)]
        return []

    monkeypatch.setattr(train_command, "train", record_batches)
    config = dataclasses.replace(train_command.QUICK, ebm_objectives=("DSM", "FD-DSM"), ebm_steps=3)
    train_command._run_ebm(config, seed=0, device=torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(seen["DSM"], seen["FD-DSM"], strict=True))


def test_train_labels_each_run_with_the_data_it_trained_on_and_resumes_by_it(tmp_path, monkeypatch, capsys):
    from bench.commands import train as train_command

    shapes = []

    def one_record(model, recipe, data, *, steps, on_record, **kwargs):  # train's rows, without the training
        shapes.append(tuple(data.shape))
        on_record(Record(steps, 0.1, 1.0, {"sm_loss": 1.0, "nll": 2.0}))

    monkeypatch.setattr(train_command, "train", one_record)
    wine = tmp_path / "winequality-red.csv"
    table = np.column_stack([np.random.default_rng(0).normal(size=(300, 11)).round(2), np.full(300, 5)])
    pd.DataFrame(table, columns=[f"c{i}" for i in range(12)]).to_csv(wine, sep=";", index=False)
    args = ["train", "--quick", "--device", "cpu", "--out", str(tmp_path / "out")]
    assert main([*args, "--data", f"wine-red:{wine}"]) == 0
    assert main(args) == 0  # DKEF again, on its embedded data; the deep EBM's run on digits is kept
    rows = pd.read_csv(tmp_path / "out" / "train.csv")
    assert rows[["model", "data"]].values.tolist() == [["dkef", f"wine-red:{wine}"], ["deep-ebm", "embedded"],
                                                       ["dkef", "embedded"]]
    assert shapes == [(243, 11), (1597, 1, 8, 8), (145, 13)]  # the rows each run trained on
    assert "train: deep-ebm FD-DSM on embedded already in" in capsys.readouterr().out


def test_every_fd_and_taylor_row_is_paired_with_the_gradient_objective_of_its_own_name():
    from bench.step_case import COUNTERPART, STRONGEST

    assert COUNTERPART and all(versus == row.removeprefix("FD-").rstrip("*").removesuffix("-Taylor")
                               for row, versus in COUNTERPART.items())
    assert STRONGEST and all(versus == COUNTERPART[row] + "-Taylor" and versus in COUNTERPART
                             for row, versus in STRONGEST.items())


def test_grad_agreement_measures_the_cosine_of_fd_at_eps_against_exact_as_computed_by_hand():
    from bench.experiments import grad_agreement

    eps = 3.0  # large enough that FD's gradient visibly differs from the exact one
    row = grad_agreement.measure_cosine({"model": "nice", "pair": "fd-ssm/ssm", "eps": eps, "dtype": "float64",
                                         "batch": 4, "seed": 0, "device": "cpu"})
    model, x, u, _ = grad_agreement._problem("nice", "float64", 4, 0, "cpu")

    def gradient(loss):
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                          for p, g in zip(model.parameters(), grads, strict=True)])

    exact = gradient(obj.ssm_loss(model.log_density, x, v=u))
    fd = gradient(obj.fd_ssm_loss(model.log_density, x, v=eps * u, backend="torch"))
    cosine = torch.nn.functional.cosine_similarity(fd, exact, dim=0).item()
    assert 0 < 1 - cosine < 1e-6 and row["one_minus_cosine"] == pytest.approx(1 - cosine, rel=1e-3)
    assert row["grad_norm_ratio"] == pytest.approx((fd.norm() / exact.norm()).item(), rel=1e-12)


def test_dkef_nll_recovers_a_normalized_densitys_own_negative_log_likelihood():
    from bench.commands.train import dkef_nll

    class StandardNormal(torch.nn.Module):  # log Z = 0: the estimate must be the mean -log N(x; 0, I)
        def log_density(self, x):
            return -0.5 * x.pow(2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)

    x = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    nll = dkef_nll(StandardNormal(), x, 100_000, torch.Generator().manual_seed(1))
    assert nll == pytest.approx(-StandardNormal().log_density(x).mean().item(), abs=0.03)
