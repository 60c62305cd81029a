"""Data loaders: each round-trips tiny files written here in the real format, and rejects broken ones clearly."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pandas as pd
import pytest
import torch

from fdsm.data import (
    DataFormatError,
    dequantize_256,
    dkef_split,
    for_event_shape,
    load,
    load_cifar10,
    load_mnist,
    load_parkinsons,
    load_wine_quality,
    logit_transform,
    pad_to_32,
)
from fdsm.data.tabular import dequantize_columns, drop_correlated

RNG = np.random.default_rng(0)


def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 0, 0, 0x08, ndim, big-endian sizes, data."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_round_trip(tmp_path, gz):
    images = RNG.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    raw = _idx_bytes(images)
    path = tmp_path / ("images.idx.gz" if gz else "images.idx")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    loaded = load("mnist", path)
    assert loaded.shape == (5, 1, 28, 28)
    torch.testing.assert_close(loaded[:, 0], torch.from_numpy(images).float() / 255)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: raw[:-10], "data bytes; expected 3920 for shape"),
        (lambda raw: raw + b"\x00", "data bytes; expected 3920 for shape"),  # trailing bytes: not this shape
        (lambda raw: b"\x00\x00\x08\x03\x00", "truncated header"),
        (lambda raw: b"\x89PNG" + raw[4:], "bad magic number"),
        (lambda raw: raw[:2] + b"\x0d" + raw[3:], "type byte 0x0d"),
        (lambda raw: b"", "bad magic number empty"),
    ],
)
def test_mnist_idx_rejects_corrupted_files(tmp_path, mutate, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(mutate(_idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8))))
    with pytest.raises(DataFormatError, match=message) as err:
        load_mnist(path)
    assert str(path) in str(err.value)


def test_idx_labels_file_and_truncated_gzip_and_missing_file(tmp_path):
    labels = tmp_path / "labels.idx"
    labels.write_bytes(_idx_bytes(np.arange(5, dtype=np.uint8)))
    with pytest.raises(DataFormatError, match=r"expected \(N, 28, 28\) images \(not a labels file\)"):
        load_mnist(labels)
    broken = tmp_path / "images.gz"
    broken.write_bytes(gzip.compress(_idx_bytes(np.zeros((2, 28, 28), np.uint8)))[:-8])
    with pytest.raises(DataFormatError, match="not a complete gzip file"):
        load_mnist(broken)
    with pytest.raises(DataFormatError, match="no such file.*never downloads"):
        load_mnist(tmp_path / "absent")


def _write_cifar(path, batch) -> None:
    path.write_bytes(pickle.dumps(batch))


def test_cifar10_round_trip(tmp_path):
    data = RNG.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    _write_cifar(tmp_path / "data_batch_1", {b"data": data, b"labels": [3, 1, 4, 1], b"batch_label": b"x"})
    images, labels = load_cifar10(tmp_path / "data_batch_1")
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [3, 1, 4, 1]
    torch.testing.assert_close(images[2, 1].flatten(), torch.from_numpy(data[2, 1024:2048]).float() / 255)  # G plane


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"\(2, 100\)"),
        ({b"labels": [0]}, "missing b'data'"),
        (os.system, "cannot unpickle.*refusing to load"),  # a pickle that would import a callable
    ],
)
def test_cifar10_rejects_bad_batches(tmp_path, batch, message):
    _write_cifar(tmp_path / "batch", batch)
    with pytest.raises(DataFormatError, match=message):
        load_cifar10(tmp_path / "batch")
    (tmp_path / "short").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:-20])
    with pytest.raises(DataFormatError, match="cannot unpickle"):
        load_cifar10(tmp_path / "short")


def _table(n: int, d: int) -> np.ndarray:
    mixing = RNG.normal(size=(d, d))
    return RNG.normal(size=(n, d)) @ mixing + 5


def test_parkinsons_round_trip_is_whitened_and_drops_correlated_columns(tmp_path):
    features = _table(200, 6)
    features = np.column_stack([features, features[:, 0] * 2 + 1e-4 * RNG.normal(size=200)])  # |corr| > 0.98
    ids = np.column_stack([np.arange(200), RNG.integers(30, 80, 200), RNG.integers(0, 2, 200)])
    columns = ["subject#", "age", "sex"] + [f"f{i}" for i in range(7)]
    pd.DataFrame(np.column_stack([ids, features]), columns=columns).to_csv(tmp_path / "p.data", index=False)
    x = load_parkinsons(tmp_path / "p.data")
    assert x.shape == (200, 6)  # the near-duplicate column is gone
    kept = drop_correlated(features)
    np.testing.assert_array_equal(kept, features[:, 1:])  # as released: the first of the pair goes, f6 stays
    torch.testing.assert_close(
        torch.cov(x.T.double(), correction=0), torch.eye(6, dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_dequantization_spreads_each_value_over_plus_minus_one_gap():
    column = np.repeat(np.arange(5.0), 2000)[:, None] * 0.5  # gap 0.5
    noise = dequantize_columns(column, np.random.default_rng(0)) - column
    assert -0.5 <= noise.min() < -0.49 and 0.49 < noise.max() <= 0.5  # U(-1, 1) x gap, as released


def test_a_tabular_file_without_a_header_is_refused_not_read_a_row_short(tmp_path):
    table = np.column_stack([np.round(_table(30, 11), 1), RNG.integers(3, 9, 30)])
    pd.DataFrame(table).to_csv(tmp_path / "winequality-red.csv", sep=";", index=False, header=False)
    with pytest.raises(DataFormatError, match="the first line holds numbers, not column names"):
        load_wine_quality(tmp_path / "winequality-red.csv")


def test_wine_quality_round_trip_dequantizes_and_whitens(tmp_path):
    table = np.column_stack([np.round(_table(300, 11), 1), RNG.integers(3, 9, 300)])
    pd.DataFrame(table, columns=[f"c{i}" for i in range(11)] + ["quality"]).to_csv(
        tmp_path / "winequality-red.csv", sep=";", index=False
    )
    x = load_wine_quality(tmp_path / "winequality-red.csv")
    assert x.shape == (300, 11)
    assert len(torch.unique(x[:, 0])) == 300  # dequantized: no ties left
    torch.testing.assert_close(
        torch.cov(x.T.double(), correction=0), torch.eye(11, dtype=torch.float64), atol=1e-4, rtol=0
    )
    splits = dkef_split(x)
    assert [len(splits[k]) for k in ("test", "val", "train")] == [30, 27, 243]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a;b\n1;2\n3;4\n", "2 columns"),
        (
            "\n".join([";".join(["c"] * 12)] + [";".join(["1"] * 11 + ["x"])] * 3),
            "non-numeric or missing value in row 2",
        ),
    ],
)
def test_wine_quality_rejects_wrong_format(tmp_path, text, message):
    (tmp_path / "w.csv").write_text(text)
    with pytest.raises(DataFormatError, match=message):
        load_wine_quality(tmp_path / "w.csv")


def test_a_csv_that_pandas_cannot_parse_is_refused_in_one_line(tmp_path):
    rows = [";".join(f"c{i}" for i in range(12))] + [";".join(["1"] * 12)] * 3 + [";".join(["1"] * 14)]
    (tmp_path / "w.csv").write_text("\n".join(rows))
    with pytest.raises(DataFormatError, match="cannot parse .*Expected 12 fields in line 5, saw 14") as err:
        load_wine_quality(tmp_path / "w.csv")
    assert "\n" not in str(err.value)


def test_preprocessing_and_embedded_defaults():
    images = load("mnist")  # embedded: sklearn digits resized to 28x28
    assert images.shape[1:] == (1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert pad_to_32(images[:2]).shape == (2, 1, 32, 32)
    logits = logit_transform(images[:2], torch.Generator().manual_seed(0))
    assert logits.shape == (2, 784) and logits.abs().max() <= np.log(999) + 1e-4
    assert load("cifar10").shape[1:] == (3, 32, 32)
    for shape in [(1, 32, 32), (784,), (15,), (11,), (2,)]:
        assert for_event_shape(shape, 7).shape == (7, *shape)


def test_logit_and_256_dequantization_spread_each_pixel_over_its_own_bin():
    half = torch.full((2000, 1), 0.5, dtype=torch.float64)
    spread = torch.sigmoid(logit_transform(half, torch.Generator().manual_seed(0))) - 0.5  # x + (u - 1/2) / 256
    assert spread.min() >= -1 / 512 and spread.max() < 1 / 512 and abs(spread.mean()) < 1e-4
    u = torch.rand(half.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(dequantize_256(half, torch.Generator().manual_seed(1)), half * 255 / 256 + u / 256)
    assert dequantize_256(torch.ones(100, 3)).max() <= 1.0  # still in [0, 1]


def test_load_refuses_a_path_that_is_not_a_path():
    with pytest.raises(TypeError, match=r"load\('mnist', path\): expected path to be a str or os.PathLike.* got int 3"):
        load("mnist", 3)
