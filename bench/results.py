"""Reading result CSVs so that rows of one job match across folders, machines and versions of the suite.

Two things in a CSV's key columns used to depend on where a run happened rather than what it measured:

- ``weights`` named a checkpoint by its *path*, so one job run into two folders (or with the checkpoint copied
  elsewhere) matched nothing. It now holds ``weights_label(checkpoint)``: ``random``, or ``weights_digest(path)``,
  ``sha256:`` and the first 16 hex digits of a hash of the state dict's *content* (its sorted keys and each
  tensor's dtype, shape and bytes), which does not depend on the file's name or on the pickle's bytes.
- columns get renamed (``width`` -> ``n_chan``, the deep EBM's channel count).

``normalize(frame)`` brings an older frame up to date: it renames the alias columns and rewrites a ``weights``
cell that is a path to an existing file into that file's digest (a path that no longer exists stays as it is).
``bench.csvlog.read_rows(path)`` reads a CSV, checked, through ``normalize``.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> torch.save({"w": torch.ones(2, 3)}, folder / "a.pt")
    >>> weights_label(folder / "a.pt")
    'sha256:...'
    >>> weights_label(folder / "a.pt") == weights_label(None)
    False
    >>> weights_label(None)
    'random'
    >>> old = pd.DataFrame({"width": [32], "weights": [str(folder / "a.pt")], "time_ms": [1.5]})
    >>> frame = normalize(old)
    >>> list(frame.columns), frame["weights"][0] == weights_digest(folder / "a.pt")
    (['n_chan', 'weights', 'time_ms'], True)
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd
import torch

RANDOM_WEIGHTS = "random"
DIGEST_PREFIX = "sha256:"
DIGEST_HEX = 16  # hex digits kept: 64 bits, plenty to tell a handful of checkpoints apart
# old column name -> current name, for CSVs written by older versions of the suite
ALIASES: Mapping[str, str] = MappingProxyType({"width": "n_chan"})


def _update(h: Any, value: Any) -> None:
    """Feed ``value`` (a tensor, or a container of tensors and plain values) to the hash ``h``, by content."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)}\n".encode())
        # raw bytes through a uint8 view: works for every dtype, bfloat16 included, which numpy lacks
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda item: str(item[0]))
        h.update(f"mapping {len(items)}\n".encode())
        for key, item in items:
            h.update(f"key {key!r}\n".encode())
            _update(h, item)
    elif isinstance(value, list | tuple):
        h.update(f"{type(value).__name__} {len(value)}\n".encode())
        for item in value:
            _update(h, item)
    else:
        h.update(f"value {value!r}\n".encode())


def state_dict_digest(state: Mapping[str, Any]) -> str:
    """``sha256:<16 hex>`` of a state dict's content: its sorted keys, each tensor's dtype, shape and bytes.

    >>> a = {"b": torch.zeros(2), "a": torch.arange(3.0)}
    >>> state_dict_digest(a) == state_dict_digest({"a": torch.arange(3.0), "b": torch.zeros(2)})  # key order
    True
    >>> state_dict_digest(a) == state_dict_digest({"b": torch.zeros(2), "a": torch.arange(3.0).double()})
    False
    """
    h = hashlib.sha256()
    _update(h, state)
    return DIGEST_PREFIX + h.hexdigest()[:DIGEST_HEX]


@functools.lru_cache(maxsize=256)
def _digest_cached(path: str, mtime_ns: int, size: int) -> str:
    return state_dict_digest(torch.load(path, map_location="cpu", weights_only=True))


def weights_digest(path: str | os.PathLike) -> str:
    """``sha256:<16 hex>`` of the state dict in the checkpoint at ``path`` (``torch.load(weights_only=True)``),
    computed once per (path, mtime, size). Two files holding the same tensors have the same digest, whatever
    their names and however they were pickled.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> torch.save({"w": torch.ones(2), "b": torch.zeros(1)}, folder / "one.pt")
    >>> torch.save({"b": torch.zeros(1), "w": torch.ones(2)}, folder / "two.pt", _use_new_zipfile_serialization=False)
    >>> weights_digest(folder / "one.pt") == weights_digest(folder / "two.pt")
    True
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _digest_cached(str(resolved), stat.st_mtime_ns, stat.st_size)


def weights_label(checkpoint: str | os.PathLike | None) -> str:
    """The ``weights`` column: ``random`` without a checkpoint, else ``weights_digest(checkpoint)``."""
    return RANDOM_WEIGHTS if checkpoint is None else weights_digest(checkpoint)


def is_digest(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(DIGEST_PREFIX)


def _weights_cell(value: Any) -> Any:
    """A ``weights`` cell as the current suite writes it: a path to an existing file -> its digest."""
    if not isinstance(value, str) or value == RANDOM_WEIGHTS or is_digest(value) or not value:
        return value
    path = Path(value)  # a relative path is relative to the current directory, as the CLI wrote it
    if not path.is_file():
        return value
    try:
        return weights_digest(path)
    except Exception as err:  # not a loadable checkpoint: keep the cell, so that the file still reads
        warnings.warn(f"weights {value!r}: could not hash the checkpoint ({err}); keeping the path", stacklevel=3)
        return value


def normalize(frame: pd.DataFrame, aliases: Mapping[str, str] = ALIASES) -> pd.DataFrame:
    """A copy of ``frame`` with the current column names and weights labels (see the module docstring).

    Each ``aliases`` entry old -> new renames column ``old`` to ``new``; where both exist, ``new``'s empty cells
    are filled from ``old`` and ``old`` is dropped. A ``weights`` cell that is neither ``random`` nor a digest and
    names an existing file becomes the file's digest; anything else is kept.

    >>> normalize(pd.DataFrame({"width": [8, 16], "n_chan": [None, 32], "weights": ["random", "gone.pt"]}))
       n_chan weights
    0     8.0  random
    1    32.0 gone.pt
    """
    frame = frame.copy()
    for old, new in aliases.items():
        if old not in frame.columns:
            continue
        if new in frame.columns:
            frame[new] = frame[new].combine_first(frame[old])
            frame = frame.drop(columns=old)
        else:
            frame = frame.rename(columns={old: new})
    if "weights" in frame.columns:
        labels = {value: _weights_cell(value) for value in frame["weights"].dropna().unique()}
        if any(labels[value] != value for value in labels):
            frame["weights"] = frame["weights"].map(lambda value: labels.get(value, value))
    return frame
