"""Broken files and folders: each is refused with one line naming it and what to do, never a traceback, never a
silent misread, and never rewritten.

- results CSVs (``bench.csvlog``): a file that is not a CSV, has other columns, or ends in a torn row is a
  ``ResultsFileError`` (a ``UsageError``: one line, exit status 2), and its bytes stay as they were;
- output folders: ``check_writable`` refuses a folder that cannot be made or written;
- data files (``fdsm.data``): a truncated, empty, wrong-format or wrong-magic file is a ``DataFormatError``
  naming the file, for every loader;
- training: a loss that turns non-finite stops ``train`` with ``NonFiniteLossError`` naming the step, before that
  step changes any parameter.

The CLI cases run ``python -m bench eps-sweep --quick --device cpu`` for real, in a subprocess.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.config import UsageError
from bench.csvlog import CsvLog, ResultsFileError, check_writable, read_rows, write_atomic
from fdsm import objectives as obj
from fdsm.data import DataFormatError, load_cifar10, load_mnist, load_parkinsons, load_wine_quality
from fdsm.data.images import load_idx_labels
from fdsm.models import build
from fdsm.training import NonFiniteLossError, OptimConfig, train

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("method", "order")
REMEDY = "move it aside or use another --out"
GARBAGE = np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes()  # fixed seed: not UTF-8


# ---- results CSVs ---------------------------------------------------------------------------------------------

def _refused(tmp_path: Path, content: bytes, match: str) -> None:
    """``CsvLog`` and ``read_rows`` both refuse ``content`` with one line naming the file and the remedy, and leave
    its bytes as they were."""
    path = tmp_path / "rows.csv"
    path.write_bytes(content)
    with pytest.raises(ResultsFileError, match=match) as err:
        log = CsvLog(path, key_columns=KEYS, columns=("time_ms", "status"))
        log.append({"method": "new", "order": 9, "status": "ok"})  # must not be reached
    message = str(err.value)
    assert isinstance(err.value, UsageError) and str(path) in message and REMEDY in message
    assert "\n" not in message
    if "key column" not in match:  # read_rows has no key columns to check
        with pytest.raises(ResultsFileError, match=match):
            read_rows(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"]  # no temporary file left either


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param(GARBAGE, "not a text CSV .not UTF-8 at byte", id="random-bytes"),
        pytest.param(gzip.compress(b"method,order\na,1\n"), "not a text CSV", id="gzipped"),  # another format
        (b"method,order\n\xff\xfe,1\n", "not UTF-8 at byte 13"),  # a UnicodeDecodeError
        (b"\0" * 64, "a NUL byte at character 0"),  # UTF-8, but not text
        (b'method,order\na,"1\n', "cannot be parsed as CSV .line 2: unexpected end of data"),  # an open quote
        (b"method,order\na,1\nb,2,3\n", "line 3 has 3 fields where the header has 2 .a row"),  # pandas: ParserError
        (b"method,order,time_ms\na,1,1.5\na,2\n", "line 3 has 2 fields where the header has 3 .its last row"),
        (b"method,order,time_ms\na,1,1.5\na,2", "line 3 has 2 fields .* .its last row"),  # no final newline
        (b"method,order,time_ms\na,1,1.5\na", "line 3 has 1 fields .* .its last row"),
        (b"method,order,time_ms\na,1\na,2,1.5\n", "line 2 has 2 fields .* .a row"),  # short, not last: still refused
        (b"x,y\n1,2\n", r"lacks the key column\(s\) \['method', 'order'\]"),  # another command's file
        (b"x,method\n", r"lacks the key column\(s\) \['order'\]"),  # ... even with its header only
    ],
)
def test_a_results_csv_that_is_not_this_commands_is_refused_and_left_as_it_is(tmp_path, content, match):
    _refused(tmp_path, content, match)


def test_a_folder_where_the_results_csv_belongs_is_refused(tmp_path):
    (tmp_path / "rows.csv").mkdir()
    with pytest.raises(ResultsFileError, match=f"rows.csv: a folder where a results CSV belongs; {REMEDY}"):
        CsvLog(tmp_path / "rows.csv", key_columns=KEYS)


def test_pandas_alone_would_read_a_torn_row_as_a_measured_one(tmp_path):
    """Why the rows are counted with the csv module first (NOTE [a torn last row] in bench/csvlog.py)."""
    path = tmp_path / "rows.csv"
    path.write_text("method,order,time_ms,status\na,1,1.5,ok\na,2,0.7")  # "ok" was never written
    assert pd.read_csv(path).shape == (2, 4)  # read, the missing status NaN
    with pytest.raises(ResultsFileError, match="its last row"):
        read_rows(path)


@pytest.mark.parametrize(
    ("content", "rows"),
    [
        (b"", None),  # an empty file: no rows yet
        (b"\n\n", None),  # blank lines only
        (b"method,order,time_ms\n", 0),  # a header only
        (b"method,order,time_ms\na,1,1.5\n\n\n", 1),  # blank lines at the end
        (b"method,order,time_ms\na,1,1.5", 1),  # a whole last row without its final newline
        (b"\xef\xbb\xbfmethod,order,time_ms\r\na,1,1.5\r\n", 1),  # a UTF-8 byte-order mark and CRLF line ends
    ],
)
def test_well_formed_results_csvs_still_read(tmp_path, content, rows):
    path = tmp_path / "rows.csv"
    path.write_bytes(content)
    frame = read_rows(path)
    assert (frame is None) if rows is None else (len(frame) == rows and list(frame.columns)[:2] == list(KEYS))
    CsvLog(path, key_columns=KEYS).append({"method": "b", "order": 2})
    assert CsvLog(path, key_columns=KEYS).done({"method": "b", "order": 2})


def test_a_message_with_newlines_commas_and_quotes_round_trips(tmp_path):
    """A quoted field spans lines: the rows are counted as CSV records, not as lines of text."""
    message = 'RuntimeError: first line\nsecond, with a comma and "quotes"'
    log = CsvLog(tmp_path / "rows.csv", key_columns=KEYS, columns=("status", "message"))
    log.append({"method": "a", "order": 1, "status": "error", "message": message})
    log.append({"method": "a", "order": 2, "status": "ok"})
    again = CsvLog(tmp_path / "rows.csv", key_columns=KEYS)
    assert again.stored({"method": "a", "order": 1})["message"] == message and len(again.frame) == 2


# ---- output folders -------------------------------------------------------------------------------------------

def _unwritable(folder: Path, error: str) -> None:
    """``check_writable(folder)`` is a ``ResultsFileError`` of one line naming the folder and ``error``."""
    with pytest.raises(ResultsFileError) as err:
        check_writable(folder)
    message = str(err.value)
    assert message.startswith(f"--out {folder}: cannot write there ({error}")
    assert message.endswith("; choose another --out") and "\n" not in message


@pytest.mark.parametrize(
    ("below", "error"),
    [
        ("out", "NotADirectoryError"),  # a folder under a regular file
        ("a/b/out", "NotADirectoryError"),  # deeper
        ("", "FileExistsError"),  # the regular file itself
    ],
)
def test_an_output_folder_under_a_regular_file_is_refused(tmp_path, below, error):
    (tmp_path / "file").write_text("not a folder")
    _unwritable(tmp_path / "file" / below if below else tmp_path / "file", error)
    assert (tmp_path / "file").read_text() == "not a folder"


def test_an_output_folder_where_no_file_can_be_made_is_refused(tmp_path, monkeypatch):
    """Read-only for everyone, root included: ``mkstemp`` is made to fail as it would there."""
    def refuse(*args, dir, **kwargs):
        raise PermissionError(13, "Permission denied", str(dir))

    monkeypatch.setattr("bench.csvlog.tempfile.mkstemp", refuse)
    _unwritable(tmp_path / "out", "PermissionError: [Errno 13] Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_output_folder_is_refused(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    try:
        _unwritable(folder, "PermissionError")
    finally:
        folder.chmod(0o755)


def test_a_writable_output_folder_is_made_and_left_empty(tmp_path):
    check_writable(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())


def test_write_atomic_under_a_regular_file_is_one_line_too(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ResultsFileError, match=r"file/out/t.csv: cannot write it \(NotADirectoryError"):
        write_atomic(pd.DataFrame({"a": [1]}), tmp_path / "file" / "out" / "t.csv")


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize(("argv", "message"), [
    (["fit", "--out", "{file}"], "--out {file}: cannot write there ({file} is not a folder); choose another --out"),
    (["fit", "--out", "{file}/out"], "--out {file}/out: cannot write there ({file} is not a folder)"),
    (["all", "--out", "{file}"], "--out {file}: cannot write there ({file} is not a folder)"),
    (["fit", "--save", "{folder}"], "--save {folder}: a folder; expected the checkpoint file to write"),
    (["fit", "--save", "{folder}", "--overwrite"], "--save {folder}: a folder"),
    (["fit", "--save", "{file}"], "--save: {file} exists but is not a checkpoint written by fit (no note file.json"),
    (["fit", "--save", "{file}", "--overwrite"], "--save: {file} exists but is not a checkpoint written by fit"),
])
def test_an_output_path_fit_or_all_cannot_use_is_refused_before_any_training(tmp_path, capsys, dry_run, argv, message):
    file, folder = tmp_path / "file.csv", tmp_path / "folder"
    file.write_text("not a checkpoint")
    folder.mkdir()
    args = [a.format(file=file, folder=folder) for a in argv]
    assert main([*args, "--quick", "--device", "cpu", *["--out", str(tmp_path / "out")] * ("--out" not in args),
                 *["--dry-run"] * dry_run]) == 2
    err = capsys.readouterr().err
    assert message.format(file=file, folder=folder) in err and len(err.strip().splitlines()) == 1, err
    assert file.read_text() == "not a checkpoint" and not list(folder.iterdir()) and not (tmp_path / "out").exists()


def test_all_refuses_a_later_stages_foreign_csv_before_any_stage_and_its_report_says_what_it_left_out(tmp_path,
                                                                                                         capsys):
    """A train_steps.csv of something else: the job ran eps-sweep, failed train-steps, ran grad-agreement, then its
    report raised a ValueError and wrote nothing. Its stages' checks now come first; a report alone leaves it out."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_steps.csv").write_text("hello,world\n1,2\n")
    assert main(["all", "--quick", "--device", "cpu", "--out", str(out), "--skip", "fit,derivatives"]) == 2
    err = capsys.readouterr().err
    assert "train_steps.csv: the existing file lacks the key column(s)" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["train_steps.csv"]  # no stage ran
    stages = "fit,eps-sweep,derivatives,train-steps,grad-agreement"
    assert main(["all", "--quick", "--device", "cpu", "--out", str(out), "--skip", stages]) == 0
    assert "*Not summarized: " in (report := (out / "report.md").read_text()) and "lacks the column(s)" in report


def test_fit_keeps_a_checkpoint_only_if_it_is_the_model_its_note_says(tmp_path, capsys):
    """A checkpoint overwritten (or cut off) beside its note was kept as trained, and every later stage failed on it;
    a note that is not fit's was called missing."""
    argv = ["fit", "--quick", "--device", "cpu", "--out", str(tmp_path), "--recipe", "nice/SSM"]
    assert main(argv) == 0
    checkpoint = tmp_path / "checkpoints" / "nice-SSM.pt"
    assert main(argv) == 0 and "exists with these settings, kept" in capsys.readouterr().out
    checkpoint.write_text("garbage")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "exists with a note of these settings, but is not a state_dict of that model (UnpicklingError" in err
    assert len(err.strip().splitlines()) == 1 and checkpoint.read_text() == "garbage"
    checkpoint.with_suffix(".json").write_text("{}")
    assert main(argv) == 2 and "(its note nice-SSM.json is not one fit wrote)" in capsys.readouterr().err


@pytest.mark.parametrize("dry_run", [False, True])
def test_train_refuses_a_file_as_its_output_folder_before_any_training(tmp_path, capsys, dry_run):
    (tmp_path / "file.csv").write_text("not a folder")
    assert main(["train", "--quick", "--device", "cpu", "--out", str(tmp_path / "file.csv"),
                 *["--dry-run"] * dry_run]) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'file.csv'}: cannot write there ({tmp_path / 'file.csv'} is not a folder)" in err
    assert "dkef" not in capsys.readouterr().out and (tmp_path / "file.csv").read_text() == "not a folder"


# ---- the CLI, for real ----------------------------------------------------------------------------------------

def _cli(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, "-m", "bench", "eps-sweep", "--quick", "--device", "cpu", "--out",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _one_line_exit_2(done: subprocess.CompletedProcess, *named: str) -> str:
    """Exit status 2, no traceback, and one line on stderr that names each of ``named``."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert len(lines) == 1 and lines[0].startswith("fdsm-bench eps-sweep: error: "), done.stderr
    assert all(name in lines[0] for name in named), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param(GARBAGE, "not a text CSV", id="random-bytes"),
        pytest.param(b"model,method,order\ndeep-ebm,fd-batched,1\ndeep-ebm,fd", "its last row", id="torn-row"),
    ],
)
def test_the_cli_refuses_a_broken_results_csv_in_one_line_and_leaves_it(tmp_path, content, match):
    (tmp_path / "eps_sweep.csv").write_bytes(content)
    line = _one_line_exit_2(_cli(tmp_path), str(tmp_path / "eps_sweep.csv"), REMEDY)
    assert match in line
    assert (tmp_path / "eps_sweep.csv").read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eps_sweep.csv"]


def test_the_cli_refuses_an_output_folder_under_a_regular_file_in_one_line(tmp_path):
    """The runner checks ``--out`` (``check_writable``) before any case runs: one error line, nothing measured."""
    (tmp_path / "file").write_text("not a folder")
    line = _one_line_exit_2(_cli(tmp_path / "file" / "out"), str(tmp_path / "file" / "out"))
    assert "cannot write there" in line and "NotADirectoryError" in line and "choose another --out" in line
    assert (tmp_path / "file").read_text() == "not a folder"


# ---- data files -----------------------------------------------------------------------------------------------

def _idx(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 0, 0, 0x08, ndim, big-endian sizes, data."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _table(sep: str, columns: int, rows: int = 40) -> bytes:
    values = np.random.default_rng(1).normal(size=(rows, columns)).round(3)
    return pd.DataFrame(values, columns=[f"c{i}" for i in range(columns)]).to_csv(sep=sep, index=False).encode()


# name -> (loader, a well-formed file's bytes)
GOOD: dict[str, tuple[Callable[[Path], object], bytes]] = {
    "mnist": (load_mnist, _idx(np.zeros((3, 28, 28), np.uint8))),
    "labels": (load_idx_labels, _idx(np.arange(3, dtype=np.uint8))),
    "cifar10": (load_cifar10, pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})),
    "parkinsons": (load_parkinsons, _table(",", 9)),
    "wine": (load_wine_quality, _table(";", 12)),
}
PNG = b"\x89PNG\r\n\x1a\n"  # another format's magic number


def _rejects(tmp_path: Path, name: str, mutate: Callable[[bytes], bytes], match: str | None,
             suffix: str = "") -> None:
    """The loader ``name`` reads its good file, and raises a ``DataFormatError`` naming the file (no other
    exception) for ``mutate(good)``."""
    loader, good = GOOD[name]
    (tmp_path / "good").write_bytes(good)
    loader(tmp_path / "good")
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(mutate(good))
    with pytest.raises(DataFormatError, match=match) as err:
        loader(path)
    assert str(path) in str(err.value)


def _pickled(batch: object) -> Callable[[bytes], bytes]:
    return lambda good: pickle.dumps(batch)


def _csv_cell(value: str) -> Callable[[bytes], bytes]:
    """The first data cell of a CSV replaced by ``value``."""
    def mutate(good: bytes) -> bytes:
        header, first, *rest = good.decode().split("\n")
        sep = ";" if ";" in header else ","
        return "\n".join([header, sep.join([value, *first.split(sep)[1:]]), *rest]).encode()

    return mutate


def _head(rows: int) -> Callable[[bytes], bytes]:
    """The header and the first ``rows`` rows of a CSV."""
    return lambda good: b"\n".join(good.split(b"\n")[: rows + 1]) + b"\n"


def _constant_column(good: bytes) -> bytes:
    frame = pd.read_csv(io.BytesIO(good), sep=None, engine="python")
    frame.iloc[:, -2] = 1.0
    return frame.to_csv(sep=";" if b";" in good else ",", index=False).encode()


ZEROS = np.zeros((2, 3072), np.uint8)


@pytest.mark.parametrize(
    ("name", "mutate", "match"),
    [
        # truncated, empty, random bytes, another format's magic number: every loader
        *[(n, lambda g: g[: len(g) // 2], None) for n in GOOD],
        *[(n, lambda g: b"", None) for n in GOOD],
        *[(n, lambda g: GARBAGE, None) for n in GOOD],
        *[(n, lambda g: PNG + g[len(PNG):], None) for n in GOOD],
        # IDX
        ("mnist", lambda g: g[:2] + b"\x08\x00", "IDX with 0 dimensions"),
        ("mnist", lambda g: g[:4] + struct.pack(">3I", 2**31, 2**31, 2**31), "data bytes; expected"),
        ("labels", lambda g: GOOD["mnist"][1], r"expected \(N,\) labels"),
        # CIFAR-10 pickles
        ("cifar10", _pickled({b"data": [[1, 2], [3]], b"labels": [0, 1]}), "is no array"),  # ragged
        ("cifar10", _pickled({b"data": ZEROS, b"labels": 5}), r"labels int64 \(\)"),
        ("cifar10", _pickled({b"data": ZEROS, b"labels": [b"a", b"b"]}), "labels .S1"),
        ("cifar10", _pickled({b"data": ZEROS.astype(np.float32), b"labels": [0, 1]}), "data float32"),
        ("cifar10", _pickled([ZEROS, [0, 1]]), "missing b'data'"),
        ("cifar10", lambda g: b"\x80\x7f" + g[2:], "cannot unpickle"),  # a pickle protocol that does not exist
        # CSVs
        ("parkinsons", _head(2), "2 rows of 6 feature columns are too few"),  # was an AxisError
        ("wine", _head(5), "5 rows of 11 feature columns are too few"),
        ("parkinsons", _constant_column, "a constant or duplicated feature column"),
        ("wine", _constant_column, "a constant or duplicated feature column"),
        ("wine", _csv_cell("inf"), "infinite value in row 2, column 'c0'"),
        ("wine", _csv_cell("n/a"), "non-numeric or missing value in row 2, column 'c0'"),
        ("wine", lambda g: g.replace(b";", b","), "1 columns"),  # the wrong separator
        ("parkinsons", lambda g: g.replace(b",", b";"), "1 columns"),
    ],
)
def test_a_broken_data_file_is_a_data_format_error_naming_it(tmp_path, name, mutate, match):
    _rejects(tmp_path, name, mutate, match)


@pytest.mark.parametrize("name", list(GOOD))
@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda g: gzip.compress(g)[:-8], "not a complete gzip file"),  # cut off
        (lambda g: gzip.compress(g)[:10] + GARBAGE, "not a complete gzip file"),  # corrupt deflate data: zlib.error
        (lambda g: g, "not a complete gzip file"),  # not gzipped at all
    ],
)
def test_a_broken_gzip_data_file_is_a_data_format_error_naming_it(tmp_path, name, mutate, match):
    _rejects(tmp_path, name, mutate, match, suffix=".gz")


# ---- a non-finite loss in training ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _TurnsNonFinite:
    """A recipe whose loss is FD-SSM's until step ``at``, then ``value`` (NaN or infinite), still in the graph."""

    at: int
    value: float
    optim: OptimConfig = OptimConfig("adam", lr=0.05)
    batch: int = 16
    calls: list = dataclasses.field(default_factory=list)

    def loss(self, model, x):
        self.calls.append(None)
        loss = obj.fd_ssm_loss(model.log_density, x, eps=0.1)
        return loss * 0 + self.value if len(self.calls) >= self.at else loss


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_train_stops_at_the_non_finite_step_before_it_updates_anything(value):
    torch.manual_seed(0)
    model = build("gaussian", size="cpu", dim=3)
    snapshots = []  # the parameters after each step

    def snapshot(record):
        snapshots.append((record.step, [p.detach().clone() for p in model.parameters()]))

    with pytest.raises(NonFiniteLossError, match=f"training step 3: the loss is {value}, not finite; the update "
                                                 "was not applied"):
        train(model, _TurnsNonFinite(at=3, value=value), torch.randn(64, 3), steps=5, eval_every=1,
              on_record=snapshot)
    assert [step for step, _ in snapshots] == [1, 2]  # step 3 made no record
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[0][1], snapshots[1][1], strict=True))  # steps update
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), snapshots[1][1], strict=True))
    assert all(p.grad is None for p in model.parameters())  # zeroed (set to None) and no backward since
