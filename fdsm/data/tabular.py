r"""UCI tabular datasets for DKEF (paper section 6.1, Table 1), prepared as the released DKEF code does.

- Parkinsons telemonitoring (``parkinsons_updrs.data``, comma-separated with a header): the columns from index 3 on,
  without near-duplicates: while some column's |correlation| with another exceeds 0.98, the first such column is
  dropped (the released ``clean_data``, which keeps the later column of each pair; it takes |.| only on its first
  pass, a quirk not copied here).
- Wine quality, red and white (``winequality-red.csv`` / ``winequality-white.csv``, semicolon-separated with a
  header): the 11 physico-chemical features (the last column, quality, is dropped); each feature is dequantized by
  adding U(-1, 1) times the median gap between its distinct values (the released ``dequantize``).

Then PCA whitening with no regularization, fitted on (at most) the first 10^4 rows:

.. math::
    x \mapsto (x - \bar x) V \mathrm{diag}(s)^{-1} \sqrt{N}, \qquad X - \bar x = U \mathrm{diag}(s) V^\top,

so the whitened rows have identity covariance; ``dkef_split`` then holds out test and validation rows.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fdsm.data.files import DataFormatError, read_bytes


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: str | Path, expected: str, sep: str, min_columns: int) -> np.ndarray:
    """A numeric CSV with a header as a float64 array; anything else is a DataFormatError."""
    raw = read_bytes(path, expected)
    try:
        frame = pd.read_csv(io.BytesIO(raw), sep=sep)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())  # pandas' messages hold newlines; an error is one line
        raise DataFormatError(f"{path}: cannot parse ({reason}); expected {expected}") from err
    if all(_is_number(name) for name in frame.columns):
        raise DataFormatError(f"{path}: the first line holds numbers, not column names; expected {expected}")
    if frame.shape[1] < min_columns or len(frame) < 2:
        raise DataFormatError(f"{path}: {frame.shape[1]} columns, {len(frame)} rows; expected {expected}")
    values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        row, col = np.argwhere(~np.isfinite(values))[0]
        what = "infinite" if np.isinf(values[row, col]) else "non-numeric or missing"
        raise DataFormatError(f"{path}: {what} value in row {row + 2}, column {frame.columns[col]!r}; "
                              f"expected {expected}")
    return values


FIT_ROWS = 10_000  # whitening is fitted on at most this many rows, as released


def whiten(x: np.ndarray, fit_rows: int = FIT_ROWS) -> np.ndarray:
    """PCA whitening (module docstring), fitted on the first ``fit_rows`` rows: (N, D) -> (N, D)."""
    fit = x[:fit_rows]
    mean = fit.mean(0)
    _, s, vt = np.linalg.svd(fit - mean, full_matrices=False)
    return (x - mean) @ vt.T / s * np.sqrt(len(fit))


def drop_correlated(x: np.ndarray, threshold: float = 0.98) -> np.ndarray:
    """While some column's |correlation| with another column exceeds ``threshold``, drop the first such column
    (module docstring): of each near-duplicate pair the later column stays. (N, D) -> (N, D')."""
    kept = list(range(x.shape[1]))
    while len(kept) > 1:  # one column left has no partner (and np.corrcoef of it is a scalar)
        with np.errstate(invalid="ignore", divide="ignore"):  # a constant column's NaNs: no partner; refused later
            corr = np.abs(np.corrcoef(x[:, kept], rowvar=False))
        has_partner = (corr > threshold).sum(1) > 1  # every column exceeds it with itself
        if not has_partner.any():
            return x[:, kept]
        del kept[int(np.argmax(has_partner))]
    return x[:, kept]


def _enough_rows(path: str | Path, x: np.ndarray, expected: str) -> None:
    """More (fitted) rows than feature columns, without which correlations and whitening mean nothing."""
    if min(len(x), FIT_ROWS) <= x.shape[1]:
        raise DataFormatError(f"{path}: {len(x)} rows of {x.shape[1]} feature columns are too few to whiten (it "
                              f"needs more rows than columns); expected {expected}")


def _whitened(path: str | Path, x: np.ndarray, expected: str) -> np.ndarray:
    """``whiten(x)`` of a file's table, refusing one it cannot whiten (too few rows, or a constant or duplicated
    column: a zero singular value), which would give fewer columns or infinities rather than an error."""
    _enough_rows(path, x, expected)
    fit = x[:FIT_ROWS]
    s = np.linalg.svd(fit - fit.mean(0), compute_uv=False)
    if not s.min() > s.max() * 1e-10:
        raise DataFormatError(f"{path}: a constant or duplicated feature column, which cannot be whitened; "
                              f"expected {expected}")
    return whiten(x)


def dequantize_columns(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x + U(-1, 1) * (median gap between the distinct values of each column): (N, D) -> (N, D)."""
    gaps = np.array([np.median(np.diff(np.unique(col))) if len(np.unique(col)) > 1 else 0.0 for col in x.T])
    return x + (2 * rng.random(x.shape) - 1) * gaps


PARKINSONS_EXPECTED = "the UCI Parkinsons telemonitoring CSV (parkinsons_updrs.data: header, comma-separated)"
WINE_EXPECTED = "a UCI wine-quality CSV (winequality-red.csv / -white.csv: header, ';'-separated, 12 columns)"


def load_parkinsons(path: str | Path, seed: int = 0) -> torch.Tensor:
    """Whitened Parkinsons features: (N, D) float32 (D = 15 in the DKEF paper)."""
    del seed  # no dequantization for Parkinsons; the argument keeps one loader signature
    values = _read_csv(path, PARKINSONS_EXPECTED, ",", min_columns=5)
    _enough_rows(path, values[:, 3:], PARKINSONS_EXPECTED)  # before the correlations, which few rows make +-1
    return torch.from_numpy(_whitened(path, drop_correlated(values[:, 3:]), PARKINSONS_EXPECTED)).float()


def load_wine_quality(path: str | Path, seed: int = 0) -> torch.Tensor:
    """Dequantized, whitened wine-quality features: (N, 11) float32."""
    values = _read_csv(path, WINE_EXPECTED, ";", min_columns=12)
    if values.shape[1] != 12:
        raise DataFormatError(f"{path}: {values.shape[1]} columns; expected {WINE_EXPECTED}")
    features = dequantize_columns(values[:, :11], np.random.default_rng(seed))
    return torch.from_numpy(_whitened(path, features, WINE_EXPECTED)).float()


def dkef_split_sizes(n: int) -> tuple[int, int, int]:
    """The (test, validation, train) row counts of ``dkef_split`` for n rows: min(1000, n/10), min(1000, rest/10),
    the remainder."""
    n_test = min(1000, n // 10)
    n_val = min(1000, (n - n_test) // 10)
    return n_test, n_val, n - n_test - n_val


def dkef_split(x: torch.Tensor, seed: int = 0, noise: float = 0.05) -> dict[str, torch.Tensor]:
    """Shuffle, add ``noise`` N(0, I) once, and split as released (``dkef_split_sizes``): test, validation, the
    remainder train. -> {"train", "val", "test"}: (N_*, D) each."""
    g = torch.Generator().manual_seed(seed)
    x = x[torch.randperm(len(x), generator=g)]
    x = x + noise * torch.randn(x.shape, generator=g)
    n_test, n_val, _ = dkef_split_sizes(len(x))
    return {"test": x[:n_test], "val": x[n_test : n_test + n_val], "train": x[n_test + n_val :]}
