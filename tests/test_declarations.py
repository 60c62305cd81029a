"""The harness as declarations: every option comes from a config dataclass, the commands do not import each other,
a user's own model and data run through the commands, and the committed results still load."""

from __future__ import annotations

import ast
import dataclasses
import gzip
import json
import pickle
import re
import shlex
import shutil
import struct
import subprocess
import sys
import textwrap
from argparse import SUPPRESS
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import build_parser, commands, main
from bench.config import SHARED_OPTIONS, Shared, options_of
from bench.csvlog import rows_from_pytest_benchmark
from bench.experiments import EXPERIMENTS
from bench.report import write_report

REPO = Path(__file__).resolve().parents[1]
USER_MODEL = f"{REPO / 'examples' / 'user_model.py'}:make_model"
USER_SCORE = f"{REPO / 'examples' / 'user_model.py'}:make_score_model"


def _subparsers() -> dict:
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    return sub.choices


@pytest.mark.parametrize("command", commands(), ids=lambda c: c.name)
def test_every_option_of_a_command_is_a_field_of_its_config_or_a_shared_one(command):
    parser = _subparsers()[command.name]
    dests = {a.dest for a in parser._actions if a.dest not in ("help", "command_object") and a.help != SUPPRESS}
    fields = {f.name for f in options_of(type(command.default))} | (set(SHARED_OPTIONS) - set(command.ignores))
    assert dests == fields


def test_a_default_is_written_once_and_shown_in_the_help():
    help_text = _subparsers()["derivatives"].format_help()
    assert "(default: 1,2,3,4,5,6; --quick: 1,2,3)" in " ".join(help_text.split())


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_no_command_imports_another_and_only_the_entry_point_imports_the_cli():
    command_modules = {f"bench.commands.{p.stem}" for p in (REPO / "bench" / "commands").glob("*.py")
                       if p.stem != "__init__"}
    for path in (REPO / "bench" / "commands").glob("*.py"):
        if path.stem == "__init__":
            continue
        others = _imports(path) & (command_modules - {f"bench.commands.{path.stem}"})
        assert not others, f"{path.name} imports {others}"
    importers = [p.relative_to(REPO).as_posix() for p in (REPO / "bench").rglob("*.py")
                 if "bench.cli" in _imports(p)]
    assert importers == ["bench/__main__.py"]


def test_width_stays_an_alias_of_n_chan():
    args = build_parser().parse_args(["derivatives", "--width", "3"])
    assert args.n_chan == 3


def test_a_users_model_from_a_file_runs_through_derivatives(tmp_path):
    assert main(["derivatives", "--quick", "--device", "cpu", "--out", str(tmp_path), "--model", USER_MODEL,
                 "--methods", "exact-reverse,exact-taylor,fd-batched", "--orders", "1,2"]) == 0
    rows = pd.read_csv(tmp_path / "derivatives.csv")
    assert set(rows.model) == {USER_MODEL} and set(rows["size"]) == {"user"} and (rows.status == "ok").all()
    assert set(rows.reference) == {"exact-taylor"}  # NOTE [the reference method] in bench/derivative_case.py
    exact = rows[rows.method.str.startswith("exact")]
    assert (exact.rel_error < 1e-4).all()  # float32 against the float64 reference: rounding only
    # The deep EBM's default step knows nothing of this network: the step is the automatic step's, fixed.
    assert set(rows.eps_source) == {"probed"} and rows.eps.nunique() == 2
    assert (rows[rows.method == "fd-batched"].rel_error < 1e-2).all()


def test_a_registered_model_without_the_deep_ebms_width_runs_under_quick(tmp_path):
    """--quick sets n_chan = 2, the deep EBM's width, only where the model has one (its n_chan cell is empty)."""
    assert main(["derivatives", "--quick", "--device", "cpu", "--out", str(tmp_path), "--model", "mlp-ebm",
                 "--methods", "fd-batched,exact-taylor", "--orders", "1"]) == 0
    rows = pd.read_csv(tmp_path / "derivatives.csv")
    assert (rows.status == "ok").all() and rows.n_chan.isna().all() and (tmp_path / "figure2.png").exists()


NORMED_MODELS = """
    import torch
    from torch import nn

    class Normed(nn.Module):  # a LayerNorm: PyTorch's nested autograd through it is wrong from T = 3
        event_shape = (4,)

        def __init__(self):
            super().__init__()
            self.inner, self.norm, self.outer = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1)

        def forward(self, x):
            return self.outer(torch.tanh(self.norm(self.inner(x)))).squeeze(1)

    class Bessel(nn.Module):  # an op with no Taylor rule
        event_shape = (4,)

        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(4, 1)

        def forward(self, x):
            return torch.special.i0(self.inner(x)).squeeze(1)

    class Branchy(nn.Module):  # data-dependent control flow: Taylor mode's trace cannot follow it
        event_shape = (4,)

        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(4, 1)

        def forward(self, x):
            y = self.inner(x).squeeze(1)
            return torch.tanh(y) if x.abs().max() < 1e6 else torch.sigmoid(y)  # rows stay independent samples

    class Edge(nn.Module):  # nearly linear, so the automatic step grows long, and not finite past x_0 = 3
        event_shape = (4,)

        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(4, 1)

        def forward(self, x):
            return (self.inner(x).squeeze(1) + 1e-4 * x[:, 0] ** 3) * torch.where(x[:, 0] < 3, 1.0, float("nan"))

    def normed():
        return Normed()

    def bessel():
        return Bessel()

    def branchy_float64():  # and a factory that returns its model in float64
        return Branchy().double()

    def edge():
        return Edge()
"""


def test_the_reference_is_taylor_mode_and_an_exact_row_that_disagrees_says_so(tmp_path):
    models = tmp_path / "normed.py"
    models.write_text(textwrap.dedent(NORMED_MODELS))
    out = tmp_path / "normed"
    assert main(["derivatives", "--quick", "--device", "cpu", "--out", str(out), "--model", f"{models}:normed",
                 "--methods", "exact-reverse,exact-taylor", "--orders", "3"]) == 0
    rows = pd.read_csv(out / "derivatives.csv").set_index("method")
    assert set(rows.reference) == {"exact-taylor"} and (rows.status == "ok").all()
    assert rows.rel_error["exact-taylor"] < 1e-4
    reverse = rows.loc["exact-reverse"]
    if reverse.rel_error > 1e-4:  # torch 2.13: about 1e-2; a torch that fixes its layer norm drops the message
        assert "one of them is wrong on this f" in reverse.message and "normalizations" in reverse.message
    else:
        assert pd.isna(reverse.message)
    # No Taylor rule for i0: the reference falls back to nested reverse mode, and Taylor mode's own rows are
    # `unsupported` (it does not apply to this f; nothing failed), with what to do: the sweep exits 0.
    out = tmp_path / "bessel"
    assert main(["derivatives", "--quick", "--device", "cpu", "--out", str(out), "--model", f"{models}:bessel",
                 "--methods", "exact-reverse,exact-taylor", "--orders", "1", "--compiled"]) == 0
    rows = pd.read_csv(out / "derivatives.csv").set_index("method")
    assert rows.reference["exact-reverse"] == "exact-reverse" and rows.rel_error["exact-reverse"] < 1e-4
    for method in ("exact-taylor", "exact-taylor+fused", "exact-taylor+compiled"):
        assert rows.status[method] == "unsupported", rows.loc[method].to_dict()
        assert rows.message[method].startswith("exact-taylor: no Taylor rule for the aten op aten.i0.default")
        assert "register_rule" in rows.message[method] and "method 'exact-reverse'" in rows.message[method]
    out = tmp_path / "branchy"  # f does not trace: the same fallback; the float64 model runs as float32
    assert main(["derivatives", "--quick", "--device", "cpu", "--out", str(out), "--model",
                 f"{models}:branchy_float64", "--methods", "exact-reverse,exact-taylor,fd-batched",
                 "--orders", "1"]) == 0
    rows = pd.read_csv(out / "derivatives.csv").set_index("method")
    assert rows.status["exact-taylor"] == "unsupported" and "data-dependent" in rows.message["exact-taylor"]
    rows = rows.drop("exact-taylor")
    assert set(rows.reference) == {"exact-reverse"} and (rows.status == "ok").all()
    assert set(rows.dtype) == {"float32"} and (rows.rel_error < 1e-2).all()


WRONG_RULE_MODEL = """
    import torch
    from torch import nn

    from fdsm.taylor import RULES, Jet, register_rule, series

    if "aten.special_erfcx.default" not in RULES:  # a user's rule, wrong: the series of tanh, not erfcx's
        register_rule(torch.ops.aten.special_erfcx.default, lambda z: Jet(series.tanh(z.series)))

    class Erfcx(nn.Module):
        event_shape = (4,)

        def __init__(self):
            super().__init__()
            self.inner, self.outer = nn.Linear(4, 8), nn.Linear(8, 1)

        def forward(self, x):
            return self.outer(torch.special.erfcx(self.inner(x))).squeeze(1)

    def erfcx():
        return Erfcx()
"""


def test_a_wrong_taylor_rule_is_caught_by_the_reference_check_and_every_row_says_so(tmp_path, monkeypatch):
    from fdsm.taylor import RULES

    monkeypatch.setattr(RULES, "_entries", dict(RULES._entries))  # the model file registers its rule here too
    models = tmp_path / "wrong_rule.py"
    models.write_text(textwrap.dedent(WRONG_RULE_MODEL))
    out = tmp_path / "wrong"
    assert main(["derivatives", "--quick", "--device", "cpu", "--out", str(out), "--model", f"{models}:erfcx",
                 "--methods", "exact-reverse,exact-taylor", "--orders", "1,3"]) == 0
    rows = pd.read_csv(out / "derivatives.csv").set_index(["method", "order"])
    assert (rows.status == "ok").all() and rows.message.str.contains("disagrees with nested reverse mode").all()
    assert rows.reference.to_dict() == {("exact-reverse", 1): "exact-reverse", ("exact-taylor", 1): "exact-reverse",
                                        ("exact-reverse", 3): "exact-taylor", ("exact-taylor", 3): "exact-taylor"}
    assert rows.rel_error["exact-reverse", 1] < 1e-6 and rows.rel_error["exact-taylor", 1] > 1e-2
    assert "exact-taylor is" in rows.message["exact-taylor", 1] and "one of them is wrong" in rows.message[
        "exact-taylor", 1]


def test_a_user_model_whose_probes_fail_keeps_the_default_step_and_says_so(tmp_path, capsys):
    models = tmp_path / "edge.py"
    models.write_text(textwrap.dedent(NORMED_MODELS))
    spec = f"{models}:edge"
    assert main(["derivatives", "--quick", "--device", "cpu", "--out", str(tmp_path / "auto"), "--model", spec,
                 "--methods", "fd-batched", "--orders", "2", "--eps", "auto"]) == 2
    err = capsys.readouterr().err
    assert "--eps auto: T = 2: fd_estimate(f, x, v, order): f is not finite at a probe" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["derivatives", "--quick", "--device", "cpu", "--out", str(tmp_path / "probed"), "--model", spec,
                 "--methods", "fd-batched", "--orders", "2", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "note: T = 2: no probed step (fd_estimate(f, x, v, order): f is not finite at a probe" in err
    assert "FD runs at the default step 7.81, calibrated on the deep EBM" in err


def test_a_user_model_whose_forward_raises_on_the_probes_batch_is_one_line_or_error_rows_not_a_traceback(tmp_path,
                                                                                                          capsys):
    """A forward that passes the 2-row check and raises on larger batches: the probes ran it in the sweep's own
    process, and only a ValueError was caught, so the command (a dry run too) ended in a traceback."""
    models = tmp_path / "late.py"
    models.write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Late(nn.Module):
            event_shape = (3,)

            def __init__(self):
                super().__init__()
                self.linear = nn.Linear(3, 1)

            def forward(self, x):
                if len(x) > 2:
                    raise RuntimeError("fails at sweep time")
                return self.linear(x).squeeze(1)

        def make():
            return Late()
    """))
    argv = ["derivatives", "--quick", "--device", "cpu", "--model", f"{models}:make", "--methods", "fd-batched",
            "--orders", "1"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--eps", "auto"]) == 2
    err = capsys.readouterr().err
    assert "--eps auto: T = 1: RuntimeError: fails at sweep time" in err and len(err.strip().splitlines()) == 1
    assert main([*argv, "--out", str(tmp_path / "b"), "--dry-run"]) == 0
    assert "note: T = 1: no probed step (RuntimeError: fails at sweep time)" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "b")]) == 1  # its rows say what the forward raised
    rows = pd.read_csv(tmp_path / "b" / "derivatives.csv")
    assert list(rows.status) == ["error"] and "fails at sweep time" in rows.message[0]


def test_the_rows_of_a_users_model_are_measured_again_once_its_file_changes(tmp_path, capsys):
    """The rows are keyed by the spec; after an edit of the file (a width of 8 -> 16, tanh -> sin) a resumed sweep
    kept the old network's rows as this one's. The file's digest is on every row, and a changed one is measured."""
    models = tmp_path / "mine.py"
    source = textwrap.dedent("""
        import torch
        from torch import nn

        def make():
            net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))
            net.event_shape = (3,)
            return net
    """)
    models.write_text(source)
    argv = ["derivatives", "--quick", "--device", "cpu", "--model", f"{models}:make", "--methods", "fd-batched",
            "--orders", "1", "--eps", "0.1", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    first = pd.read_csv(tmp_path / "out" / "derivatives.csv")
    assert first.model_source[0].startswith("sha256:")
    assert main([*argv, "--dry-run"]) == 0 and "1 already in" in capsys.readouterr().out  # unchanged: kept
    models.write_text(source.replace("8", "16").replace("Tanh", "SiLU"))
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "0 already in" in out and f"model_source {first.model_source[0]} is now sha256:" in out
    assert main(argv) == 0
    again = pd.read_csv(tmp_path / "out" / "derivatives.csv")
    assert len(again) == 1 and again.model_source[0] != first.model_source[0]


def test_a_users_model_and_score_model_run_through_train_steps(tmp_path):
    for spec, objectives in ((USER_MODEL, "SSM,FD-SSM"), (USER_SCORE, "SSMVR,FD-SSMVR")):
        assert main(["train-steps", "--quick", "--device", "cpu", "--out", str(tmp_path), "--models", spec,
                     "--objectives", objectives, "--batch", "8"]) == 0
    rows = pd.read_csv(tmp_path / "train_steps.csv")
    assert len(rows) == 4 and (rows.status == "ok").all(), rows.message.tolist()
    assert (rows.time_ms > 0).all() and (rows.lr == 1e-3).all() and set(rows.batch) == {8}
    assert (rows.gflop > 0).all(), rows.message.tolist()  # counted on the meta device, where the model is checked too
    fd = rows[rows.objective.str.startswith("FD")]
    assert fd.speedup.notna().all() and set(fd.versus) == {"SSM", "SSMVR"}


@pytest.mark.parametrize("argv, message", [
    (["derivatives", "--model", "no/such/file.py:make"], "--model no/such/file.py:make: no such file"),
    (["derivatives", "--model", USER_SCORE], "a score model has no log-density"),
    (["derivatives", "--model", "resnet"], "--model resnet: not a registered model"),
    (["fit", "--data", "mnist:no/such.gz"], "--data mnist:no/such.gz: no such file"),
    (["fit", "--data", "imagenet"], "--data imagenet: unknown dataset 'imagenet'"),
])
def test_a_bad_model_or_data_is_one_line_and_exit_status_2(tmp_path, capsys, argv, message):
    assert main([*argv, "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.csv"))


def _idx_images(path: Path, images: np.ndarray) -> None:
    """An IDX3 file of unsigned bytes (the MNIST format): magic 0x0803, three big-endian sizes, the pixels."""
    with gzip.open(path, "wb") as handle:
        handle.write(struct.pack(">IIII", 0x0803, *images.shape) + images.astype(np.uint8).tobytes())


def _wine_csv(path: Path, rows: int) -> Path:
    """A UCI wine-quality CSV: a header, 11 features and the quality, ';'-separated."""
    rng = np.random.default_rng(0)
    table = np.column_stack([rng.normal(size=(rows, 11)).round(2), rng.integers(3, 9, rows)])
    pd.DataFrame(table, columns=[f"c{i}" for i in range(11)] + ["quality"]).to_csv(path, sep=";", index=False)
    return path


def test_fit_trains_on_an_idx_file_resumes_by_that_file_and_refuses_a_corrupt_one(tmp_path, capsys):
    rng = np.random.default_rng(0)
    good = tmp_path / "train-images-idx3-ubyte.gz"
    _idx_images(good, rng.integers(0, 256, size=(80, 28, 28)))
    out = tmp_path / "out"
    args = ["fit", "--quick", "--device", "cpu", "--out", str(out), "--samples", "64"]
    assert main([*args, "--data", f"mnist:{good}"]) == 0
    note = json.loads((out / "checkpoints" / "deep-ebm-DSM.json").read_text())
    assert note["data"] == f"mnist:{good}" and note["data_source"] == f"mnist:{good}, 64 rows fitted to (1, 32, 32)"
    assert main([*args, "--data", f"mnist:{good}"]) == 0 and "with these settings, kept" in capsys.readouterr().out
    assert main(args) == 2  # the embedded data is not what the checkpoint was trained on
    assert f"trained with other settings (data mnist:{good} (asked: embedded))" in capsys.readouterr().err
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as handle:
        handle.write(b"not an idx file")
    assert main(["fit", "--quick", "--device", "cpu", "--out", str(tmp_path / "bad"), "--data", f"mnist:{bad}"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize("command, data, message", [
    ("fit", "mnist:5", "5 rows; deep-ebm/DSM needs at least 64 (its batch)"),
    ("train", "mnist:100", "100 rows; train needs at least 216 (200 held out and a batch of 16)"),
    ("train", "wine-red:20", "20 rows; train needs at least 61 (dkef_split holds out a tenth twice"),
])
def test_data_with_too_few_rows_is_refused_in_one_line_before_any_training(tmp_path, capsys, dry_run, command, data,
                                                                            message):
    name, rows = data.split(":")
    path = tmp_path / "data.gz"
    if name == "mnist":
        _idx_images(path, np.zeros((int(rows), 28, 28)))
    else:
        _wine_csv(path, int(rows))
    out = tmp_path / "out"
    assert main([command, "--quick", "--device", "cpu", "--out", str(out), "--data", f"{name}:{path}",
                 *["--dry-run"] * dry_run]) == 2
    err = capsys.readouterr().err
    assert f"--data {name}:{path}: {message}" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing trained, nothing written


def test_fit_flattens_images_for_a_flat_model_and_builds_dkef_at_the_tables_dimension(tmp_path):
    images, table = tmp_path / "data_batch_1", _wine_csv(tmp_path / "wine.csv", 300)
    pixels = np.random.default_rng(0).integers(0, 256, size=(128, 3072), dtype=np.uint8)  # CIFAR-10: (3, 32, 32)
    images.write_bytes(pickle.dumps({b"data": pixels, b"labels": [0] * 128}))
    for recipe, data, event in (("nice/SSM", f"cifar10:{images}", "(784,)"),  # as (1, 28, 28), flattened
                                ("dkef/SSM", f"wine-red:{table}", "(11,)")):
        assert main(["fit", "--quick", "--steps", "1", "--device", "cpu", "--out", str(tmp_path), "--recipe", recipe,
                     "--data", data]) == 0
        note = json.loads((tmp_path / "checkpoints" / f"{recipe.replace('/', '-')}.json").read_text())
        assert note["data_source"].endswith(f"rows fitted to {event}"), note


def test_the_benchmark_json_holds_training_step_rows_as_well_as_derivative_rows(tmp_path):
    json_path = tmp_path / "out.json"
    subprocess.run([sys.executable, "-m", "pytest", "bench/test_experiments.py", "-q", "-p", "no:cacheprovider",
                    "-k", "FD-SSM or (fd-batched and T1)", f"--benchmark-json={json_path}"], cwd=REPO, check=True,
                   capture_output=True)
    rows = pd.DataFrame(rows_from_pytest_benchmark(json_path))
    assert set(rows.experiment) == {"derivatives", "train_steps"} and (rows.status == "ok").all()
    steps = rows[rows.experiment == "train_steps"]
    assert list(steps.objective) == ["FD-SSM"] and (steps.time_ms > 0).all() and steps.loss.notna().all()


def test_the_committed_cpu_results_still_load_in_report(tmp_path):
    for experiment in EXPERIMENTS:
        if (REPO / "results" / "cpu" / experiment.csv).is_file():
            shutil.copy(REPO / "results" / "cpu" / experiment.csv, tmp_path)
    report = write_report(tmp_path, Shared().device, "test", {}, elapsed_s=0).read_text()
    assert "Could not summarize" not in report
    assert "time exact-reverse / fd-batched" in report and "speed-up (median)" in report


def test_a_new_experiment_is_a_declaration_the_cli_picks_up(monkeypatch, tmp_path):
    import bench.cli
    from bench.experiments import derivatives

    toy = dataclasses.replace(derivatives.EXPERIMENT, name="toy-derivatives", stem="toy")
    monkeypatch.setattr(bench.cli, "EXPERIMENTS", (*EXPERIMENTS, toy))
    assert main(["toy-derivatives", "--quick", "--device", "cpu", "--out", str(tmp_path), "--methods", "fd-batched",
                 "--orders", "1"]) == 0
    assert (tmp_path / "toy.csv").is_file()


def _recorded_command_lines() -> list[tuple[str, list[str]]]:
    """Every ``fdsm-bench ...`` / ``python -m bench ...`` command line of the scripts and the results' notes, as
    argv after the program (continuation lines joined, up to a redirection or pipe; options set from shell
    variables left out)."""
    sources = [*(REPO / "scripts").glob("*.sh"), *(REPO / "results").rglob("*.sh"),
               *(REPO / "results").rglob("*.md"), REPO / "README.md", *(REPO / "docs").glob("*.md")]
    lines = []
    for path in sources:
        text = path.read_text().replace("\\\n", " ")
        names = "|".join(c.name for c in commands())
        for match in re.finditer(rf"(?:fdsm-bench|-m bench) ((?:{names})\b[^\n`|>;)]*)", text):
            words = []
            command = match.group(1)
            if text[match.end():match.end() + 1] == ">":  # the 2 of a 2>&1
                command = re.sub(r"\s\d$", "", command)
            for word in shlex.split(command.replace('"', "").replace("'", ""), comments=True):
                if "$" in word:  # a shell variable's value is unknown here: leave its option out
                    words = words[:-1] if words and words[-1].startswith("--") else words
                else:
                    words.append(word)
            lines.append((f"{path.relative_to(REPO)}: {match.group(0)[:80]}", words))
    return lines


@pytest.mark.parametrize("where, argv", _recorded_command_lines(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_recorded_command_line_still_parses(where, argv):
    try:
        build_parser().parse_args(argv)
    except SystemExit as stop:
        pytest.fail(f"{where}: argparse refused it (exit {stop.code})")
