"""`fdsm-bench compare OLD NEW`: ratios per row, exit status 1 on a regression past the threshold, like compared
with like (weights by content, machines told apart, old column names read), and bench.results beneath it."""

import argparse
import shutil
import types

import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.commands import compare
from bench.commands.compare import COMMAND, CompareConfig, keys_for, run
from bench.config import Shared, UsageError, add_options, configure
from bench.csvlog import read_rows
from bench.results import normalize, weights_digest, weights_label

DERIVATIVE_KEYS = ("model", "size", "n_chan", "weights", "seed", "batch", "device", "method", "order", "accuracy",
                   "eps", "dtype")
TRAIN_STEP_KEYS = ("model", "objective", "size", "batch", "dtype", "device", "seed")
DERIVATIVE_COLUMNS = ("model", "method", "order", "batch", "dtype", "device", "time_ms", "time_ms_iqr", "peak_mem_mb",
                      "rel_error", "status")  # DESIGN.md's required columns
TRAIN_STEP_COLUMNS = ("model", "objective", "batch", "dtype", "device", "time_ms", "time_ms_iqr", "peak_mem_mb",
                      "loss", "status")


def declared(csv, keys, compare_keys=None, columns=()):
    return types.SimpleNamespace(csv=csv, keys=keys, compare_keys=compare_keys, columns=columns,
                                 aliases={"width": "n_chan"})


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """A registry that declares derivatives.csv and train_steps.csv as bench/experiments does, so that these tests
    do not depend on the experiments' modules (test_registry_declares_what_compare_joins_on checks the real one)."""
    fake = {e.csv: e for e in (
        declared("derivatives.csv", DERIVATIVE_KEYS, tuple(k for k in DERIVATIVE_KEYS if k != "eps"),
                 DERIVATIVE_COLUMNS),
        declared("train_steps.csv", TRAIN_STEP_KEYS, tuple(k for k in TRAIN_STEP_KEYS if k != "seed"),
                 TRAIN_STEP_COLUMNS),
    )}
    monkeypatch.setattr(compare, "registry", lambda: fake)
    return fake


def compare_folders(old, new, **options):
    return run(CompareConfig(old=old, new=new, **options), Shared())


def write(folder, times, statuses=None, name="derivatives.csv", **columns):
    folder.mkdir(parents=True, exist_ok=True)
    n = len(times)
    pd.DataFrame({
        "model": ["deep-ebm"] * n, "method": [f"m{i}" for i in range(n)], "order": [2] * n, "batch": [8] * n,
        "dtype": ["float32"] * n, "device": ["cpu"] * n, "time_ms": times, "status": statuses or ["ok"] * n,
        "timestamp": [f"2026-11-28T00:00:0{i}" for i in range(n)],  # metadata differs between runs: not a key
        **{k: v if isinstance(v, list) else [v] * n for k, v in columns.items()},
    }).to_csv(folder / name, index=False)
    return folder


# ---- the gate -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "new_times, new_status, threshold, code",
    [
        ([10.0, 2.0], None, 0.1, 0),     # unchanged
        ([10.5, 2.1], None, 0.1, 0),     # +5%: inside the threshold
        ([10.0, 2.5], None, 0.1, 1),     # +25% on one row
        ([10.0, 2.5], None, 0.5, 0),     # ... which a 50% threshold lets through
        ([10.0, None], ["ok", "timeout"], 0.1, 1),  # a row that stopped being ok
    ],
)
def test_compare_exit_status(tmp_path, capsys, new_times, new_status, threshold, code):
    old = write(tmp_path / "old", [10.0, 2.0])
    new = write(tmp_path / "new", new_times, new_status)
    assert compare_folders(old, new, threshold=threshold) == code
    out = capsys.readouterr().out
    assert "derivatives.csv" in out and "ratio" in out
    assert "metadata that differ" not in out  # only the timestamp differs, which says nothing


@pytest.mark.parametrize("new_speedups, code", [([2.0, 1.5], 1), ([2.0, 2.5], 0)])
def test_compare_reads_a_higher_speedup_as_better(tmp_path, new_speedups, code):
    for name, speedups in (("old", [2.0, 2.0]), ("new", new_speedups)):
        (tmp_path / name).mkdir()
        pd.DataFrame({"model": "deep-ebm", "objective": ["FD-SSM", "FD-DSM"], "batch": 64, "dtype": "float32",
                      "device": "cpu", "speedup": speedups, "status": "ok"}).to_csv(
            tmp_path / name / "train_steps.csv", index=False)
    assert compare_folders(tmp_path / "old", tmp_path / "new", metric="speedup") == code


def test_compare_rejects_missing_folders_and_a_threshold_that_is_not_positive(tmp_path):
    with pytest.raises(UsageError, match="expected a result folder"):
        compare_folders(tmp_path / "nope", tmp_path)
    old = write(tmp_path / "old", [10.0])
    with pytest.raises(UsageError, match="positive fraction"):
        compare_folders(old, old, threshold=0.0)


def test_compare_fails_when_new_lost_rows_or_files_and_refuses_a_metric_it_cannot_find(tmp_path, capsys):
    old = write(tmp_path / "old", [10.0, 2.0])
    assert compare_folders(old, write(tmp_path / "short", [10.0])) == 1  # m1 is gone
    assert "ok -> missing" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert compare_folders(old, tmp_path / "empty") == 1  # derivatives.csv is gone
    assert "is missing" in capsys.readouterr().out
    with pytest.raises(UsageError, match="nothing was compared"):
        compare_folders(old, write(tmp_path / "same", [10.0, 2.0]), metric="time-ms")


@pytest.mark.parametrize("metric, why", [
    ("status", "not a numeric column"), ("message", "not a numeric column"), ("model", "not a numeric column"),
    ("timestamp", "not a numeric column"), ("flagged", "not a numeric column"), ("order", "a key or metadata column"),
])
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_a_metric_that_is_not_a_measured_number_is_refused_in_one_line(tmp_path, capsys, metric, why, dry_run):
    old = write(tmp_path / "old", [10.0, 2.0], message=["", "no rule"], flagged=[False, None], peak_mem_mb=1.5)
    assert main(["compare", str(old), str(old), "--metric", metric, *dry_run]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--metric {metric}: {why} of derivatives.csv" in err
    assert err.endswith("expected one of time_ms, peak_mem_mb")


def test_dry_run_says_what_would_be_compared(tmp_path, capsys):
    old = write(tmp_path / "old", [10.0, 2.0])
    write(old, [1.0], name="train_steps.csv", objective="FD-SSM")
    pd.DataFrame({"model": ["nice"], "pair": ["fd-ssm/ssm"], "cosine": [0.99]}).to_csv(old / "grad_agreement.csv")
    new = write(tmp_path / "new", [10.0])
    assert main(["compare", str(old), str(new), "--dry-run", "--threshold", "0.2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"would compare time_ms of OLD {old} with NEW {new}, row by row")
    assert "worse by more than 20% (on one machine)" in out
    assert "derivatives.csv: 2 rows of OLD against 1 of NEW, joined on model, batch, device, method, order, dtype" \
        in out  # the declared keys, in their order
    assert "grad_agreement.csv: no column 'time_ms', skipped" in out
    assert "train_steps.csv is missing: its 1 rows of OLD would count as regressed" in out
    assert "CompareConfig" not in out and "ratio" not in out  # a plan, not a repr and not a comparison


# ---- like with like -------------------------------------------------------------------------------------------

def test_one_job_in_two_folders_matches_row_for_row_whatever_the_checkpoint_is_called(tmp_path, capsys):
    state = {"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.zeros(4)}
    first, second = tmp_path / "cpu" / "checkpoints" / "deep-ebm-DSM.pt", tmp_path / "elsewhere" / "copy.pt"
    for path in (first, second):
        path.parent.mkdir(parents=True)
    torch.save(state, first)
    torch.save(dict(reversed(state.items())), second, _use_new_zipfile_serialization=False)  # other bytes
    old = write(tmp_path / "cpu", [10.0, 2.0, 5.0], weights=str(first))
    new = write(tmp_path / "local", [10.0, 2.0, 5.0], weights=str(second))
    assert compare_folders(old, new) == 0
    out = capsys.readouterr().out
    assert "ok -> missing" not in out and out.count("ok -> ok") == 3
    assert weights_digest(first) in out


def test_a_relative_checkpoint_path_is_read_from_the_current_folder(tmp_path, monkeypatch, capsys):
    torch.save({"w": torch.ones(3)}, tmp_path / "ckpt.pt")
    monkeypatch.chdir(tmp_path)
    old = write(tmp_path / "old", [10.0, 2.0], weights="ckpt.pt")  # as the CLI wrote it, run from tmp_path
    new = write(tmp_path / "new", [10.0, 2.0], weights=weights_label(tmp_path / "ckpt.pt"))
    assert compare_folders(old, new) == 0
    assert "ok -> missing" not in capsys.readouterr().out


def test_other_weights_are_other_rows(tmp_path, capsys):
    torch.save({"w": torch.ones(3)}, tmp_path / "a.pt")
    torch.save({"w": torch.full((3,), 2.0)}, tmp_path / "b.pt")
    old = write(tmp_path / "old", [10.0], weights=str(tmp_path / "a.pt"))
    new = write(tmp_path / "new", [10.0], weights=str(tmp_path / "b.pt"))
    assert compare_folders(old, new) == 1
    assert "ok -> missing" in capsys.readouterr().out


XEON = {"device_name": "Intel(R) Xeon(R) Processor", "torch": "2.13.0+cpu", "threads": 2, "git_commit": "abc"}
EPYC = {"device_name": "AMD EPYC 7763 64-Core Processor", "torch": "2.13.0+cpu", "threads": 2, "git_commit": "def"}


def test_runs_from_two_machines_are_told_apart_and_their_times_not_gated(tmp_path, capsys):
    old = write(tmp_path / "xeon", [10.0, 2.0], **XEON)
    slower = write(tmp_path / "epyc", [15.0, 4.0], **EPYC)
    assert compare_folders(old, slower) == 0  # 1.5x and 2x slower, on another CPU: not a regression
    out = capsys.readouterr().out
    assert "metadata that differ between OLD and NEW" in out
    assert f"device_name: {XEON['device_name']}  ->  {EPYC['device_name']}" in out
    assert "git_commit: abc  ->  def" in out and "torch:" not in out  # only what differs
    assert "not compared across machines" in out and "--across-machines" in out
    assert out.index("metadata that differ") < out.index("derivatives.csv")  # before the tables
    assert "2 rows from other machines not gated" in out

    short = write(tmp_path / "epyc-short", [15.0], **EPYC)
    assert compare_folders(old, short) == 1  # a missing row still fails
    assert "ok -> missing" in capsys.readouterr().out
    failed = write(tmp_path / "epyc-failed", [15.0, None], ["ok", "error"], **EPYC)
    assert compare_folders(old, failed) == 1  # and so does a row that stopped being ok
    assert "ok -> error" in capsys.readouterr().out


@pytest.mark.parametrize("value, why", [("fast", "time_ms not a number"), (None, "no time_ms"),
                                        (-1.0, "time_ms <= 0"), (0.0, "time_ms <= 0"), ("inf", "time_ms not finite")])
def test_an_ok_row_of_new_that_lost_its_number_regressed_whatever_the_machine(tmp_path, capsys, value, why):
    old = write(tmp_path / "old", [10.0, 2.0], **XEON)
    assert compare_folders(old, write(tmp_path / "new", [10.0, value], **EPYC)) == 1
    out = capsys.readouterr().out
    assert f"ok -> ok ({why})" in out and "1 of 2 rows worse" in out
    assert "-0.5" not in out  # -1 / 2: never divided


def test_a_number_that_old_lacks_too_or_a_memory_of_zero_is_not_lost(tmp_path, capsys):
    old = write(tmp_path / "old", [10.0, None], peak_mem_mb=[0.0, 1.0])  # an ok row without a time (a speed-up)
    assert compare_folders(old, write(tmp_path / "new", [10.0, None], peak_mem_mb=[0.0, 1.0])) == 0
    assert compare_folders(old, tmp_path / "new", metric="peak_mem_mb") == 0  # no memory above the baseline
    assert "(no " not in capsys.readouterr().out


@pytest.mark.parametrize("column, value", [("torch", "2.11.0+cu130"), ("threads", 16)])
def test_another_torch_or_thread_count_is_another_machine(tmp_path, capsys, column, value):
    old = write(tmp_path / "old", [10.0], **XEON)
    new = write(tmp_path / "new", [20.0], **{**XEON, column: value})
    assert compare_folders(old, new) == 0
    assert f"different machines ({column} differ)" in capsys.readouterr().out


def test_across_machines_compares_times(tmp_path, capsys):
    old = write(tmp_path / "xeon", [10.0, 2.0], **XEON)
    assert compare_folders(old, write(tmp_path / "slower", [15.0, 2.0], **EPYC), across_machines=True) == 1
    out = capsys.readouterr().out
    assert "compared across machines as asked" in out and "not gated" not in out
    assert compare_folders(old, write(tmp_path / "as-fast", [10.5, 2.0], **EPYC), across_machines=True) == 0


def test_an_old_csv_with_width_and_a_checkpoint_path_matches_a_new_one(tmp_path, capsys):
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, tmp_path / "deep-ebm.pt")
    old = write(tmp_path / "old", [10.0, 2.0], width=[32, 64], weights=str(tmp_path / "deep-ebm.pt"))
    new = write(tmp_path / "new", [10.0, 2.0], n_chan=[32, 64], weights=weights_digest(tmp_path / "deep-ebm.pt"))
    frame = read_rows(old / "derivatives.csv")
    assert "width" not in frame.columns and list(frame["n_chan"]) == [32, 64]
    assert set(frame["weights"]) == {weights_digest(tmp_path / "deep-ebm.pt")}
    assert compare_folders(old, new) == 0
    out = capsys.readouterr().out
    assert out.count("ok -> ok") == 2 and "n_chan" in out
    # n_chan is a key: another channel count is another row
    assert compare_folders(old, write(tmp_path / "other", [10.0, 2.0], n_chan=[32, 128])) == 1


def test_a_checkpoint_path_that_is_gone_stays_a_path_and_says_so(tmp_path, capsys):
    old = write(tmp_path / "old", [10.0], weights=str(tmp_path / "gone.pt"))
    assert compare_folders(old, old) == 0
    assert "named by a path that is not here" in capsys.readouterr().out


# ---- key columns ----------------------------------------------------------------------------------------------

def test_keys_for_takes_the_declared_compare_keys_that_both_csvs_have(registry):
    old = pd.DataFrame({"model": ["a"], "method": ["m"], "eps": [0.1], "order": [1], "extra": ["x"],
                        "time_ms": [1.0], "status": ["ok"], "device_name": ["cpu"]})
    new = old.drop(columns="order")
    assert keys_for("derivatives.csv", old, old) == ["model", "method", "order"]  # not eps, not extra
    assert keys_for("derivatives.csv", old, new) == ["model", "method"]
    registry["derivatives.csv"] = declared("derivatives.csv", ("model", "eps"))  # compare_keys None: keys
    assert keys_for("derivatives.csv", old, old) == ["model", "eps"]
    # a CSV no experiment declares: its shared text and integer columns that are not metadata
    assert keys_for("other.csv", old, new) == ["model", "method", "extra"]


@pytest.mark.parametrize("side, column", [("NEW", "method"), ("NEW", "status"), ("OLD", "status"), ("OLD", "order")])
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_a_results_file_without_a_column_the_suite_always_writes_is_refused(tmp_path, capsys, side, column, dry_run):
    full = write(tmp_path / "full", [10.0, 2.0])
    (tmp_path / "cut").mkdir()
    pd.read_csv(full / "derivatives.csv").drop(columns=column).to_csv(tmp_path / "cut" / "derivatives.csv", index=False)
    old, new = (full, tmp_path / "cut") if side == "NEW" else (tmp_path / "cut", full)
    assert main(["compare", str(old), str(new), *dry_run]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"({side}): no column {column}," in err and "malformed" in err


def test_a_malformed_csv_is_refused_with_compares_own_remedy(tmp_path, capsys):
    """The refusal said "use another --out", an option compare does not take."""
    old = write(tmp_path / "old", [10.0, 2.0])
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "derivatives.csv").write_bytes(b"method,order\nbad\x00,1\n")
    assert main(["compare", str(old), str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err.strip()
    assert "a NUL byte" in err and "compare folders of the suite's own results" in err and "--out" not in err


def test_an_older_csv_without_a_later_key_is_joined_on_fewer_keys(tmp_path, capsys):
    old = write(tmp_path / "old", [10.0, 2.0])  # written before n_chan was a column
    assert compare_folders(old, write(tmp_path / "new", [10.0, 2.0], n_chan=32)) == 0
    assert "key column(s) ['n_chan'] in only one of OLD and NEW: not joined on" in capsys.readouterr().out


def test_registry_declares_what_compare_joins_on(monkeypatch):
    monkeypatch.undo()  # the real registry
    from bench.experiments import EXPERIMENTS

    by_csv = {e.csv: e for e in EXPERIMENTS}
    derivatives = by_csv["derivatives.csv"]
    assert "eps" in derivatives.keys and "eps" not in derivatives.compare_keys
    assert "seed" not in by_csv["train_steps.csv"].compare_keys
    assert set(DERIVATIVE_COLUMNS) <= set(derivatives.columns)
    assert set(TRAIN_STEP_COLUMNS) <= set(by_csv["train_steps.csv"].columns)
    assert compare.required_columns("train_steps.csv") == ("model", "objective", "batch", "dtype", "device", "status")
    assert set(compare.registry()) == set(by_csv)


def test_compare_is_a_command_whose_options_come_from_its_config(tmp_path):
    assert COMMAND.name == "compare" and COMMAND.run is run and COMMAND.default == CompareConfig()
    parser = argparse.ArgumentParser()
    add_options(parser, CompareConfig)
    args = parser.parse_args([str(tmp_path / "a"), str(tmp_path / "b"), "--metric", "peak_mem_mb",
                              "--threshold", "0.2", "--across-machines"])
    config = configure(args, COMMAND.default)
    assert config == CompareConfig(tmp_path / "a", tmp_path / "b", "peak_mem_mb", 0.2, True)
    assert configure(parser.parse_args(["a", "b"]), COMMAND.default).across_machines is False
    with pytest.raises(UsageError, match="positive fraction"):
        configure(parser.parse_args(["a", "b", "--threshold", "-1"]), COMMAND.default)


# ---- bench.results --------------------------------------------------------------------------------------------

def test_weights_digest_is_of_the_content_not_the_file(tmp_path):
    state = {"a": torch.randn(3, 2), "b": torch.arange(4), "c": torch.ones(2, dtype=torch.bfloat16)}
    torch.save(state, tmp_path / "one.pt")
    shutil.copy(tmp_path / "one.pt", tmp_path / "two.pt")
    torch.save({k: state[k] for k in ("c", "b", "a")}, tmp_path / "three.pt", _use_new_zipfile_serialization=False)
    digests = {weights_digest(tmp_path / n) for n in ("one.pt", "two.pt", "three.pt")}
    assert len(digests) == 1 and next(iter(digests)).startswith("sha256:") and len(next(iter(digests))) == 23
    for changed in ({**state, "a": state["a"] + 1}, {**state, "a": state["a"].reshape(2, 3)},
                    {**state, "b": state["b"].double()}, {**state, "d": torch.zeros(1)}):
        torch.save(changed, tmp_path / "changed.pt")
        assert weights_digest(tmp_path / "changed.pt") not in digests  # a rewritten file is hashed again
    assert weights_label(None) == "random" and weights_label(tmp_path / "one.pt") in digests


def test_normalize_merges_an_alias_into_its_new_column_and_keeps_what_it_cannot_hash(tmp_path):
    (tmp_path / "not-a-checkpoint.pt").write_text("text")
    frame = pd.DataFrame({"width": [8.0, 16.0, None], "n_chan": [None, 32.0, 4.0],
                          "weights": ["random", "sha256:0123456789abcdef", str(tmp_path / "not-a-checkpoint.pt")]})
    with pytest.warns(UserWarning, match="could not hash"):
        out = normalize(frame)
    with pytest.warns(UserWarning, match="could not hash"):
        unaliased = normalize(frame, aliases={})
    assert list(out.columns) == ["n_chan", "weights"] and list(out["n_chan"]) == [8.0, 32.0, 4.0]
    assert list(out["weights"]) == list(frame["weights"])
    assert "width" in frame.columns  # the input is left as it was
    assert list(unaliased.columns) == ["width", "n_chan", "weights"]
