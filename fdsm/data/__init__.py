"""The datasets of paper section 6, read from local files with the paper's preprocessing, and an embedded default.

Nothing is ever downloaded. ``load(name, path)`` reads a file you placed (anywhere; ``data/`` in the checkout is a
good home); ``load(name)`` with no path gives the embedded default for that kind of data. A missing, truncated or
wrong-format file raises ``DataFormatError`` naming the file and what was expected.

========================== ============================================= ==========================================
name                       file (path argument)                          returns
========================== ============================================= ==========================================
mnist, fashion-mnist       IDX images, raw or .gz                        (N, 1, 28, 28) in [0, 1]
cifar10                    a python pickle batch (data_batch_1, ...)     (N, 3, 32, 32) in [0, 1]
parkinsons                 parkinsons_updrs.data                         (N, D) whitened
wine-red, wine-white       winequality-red.csv / -white.csv              (N, 11) dequantized, whitened
========================== ============================================= ==========================================

Per-model preprocessing: ``pad_to_32`` (deep EBM), ``logit_transform`` (NICE), ``dequantize_256`` (NCSN),
``dkef_split`` (DKEF). Embedded defaults: ``digits``, ``sklearn_wine``, ``mixture``, and ``for_event_shape`` which
picks one for a model's input shape.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from fdsm.data.embedded import digits, for_event_shape, mixture, sklearn_wine
from fdsm.data.files import DataFormatError
from fdsm.data.images import dequantize_256, load_cifar10, load_mnist, logit_transform, pad_to_32
from fdsm.data.tabular import dkef_split, dkef_split_sizes, load_parkinsons, load_wine_quality
from fdsm.registry import Registry

# name -> (loader of a file, the embedded default of the same kind)
DATASETS: Registry[tuple[Callable[[Path], torch.Tensor], Callable[[], torch.Tensor]]] = Registry("dataset")
DATASETS.register("mnist", (load_mnist, lambda: digits((1, 28, 28))))
DATASETS.register("fashion-mnist", (load_mnist, lambda: digits((1, 28, 28))))
DATASETS.register("cifar10", (lambda path: load_cifar10(path)[0], lambda: digits((3, 32, 32))))
DATASETS.register("parkinsons", (load_parkinsons, sklearn_wine))
DATASETS.register("wine-red", (load_wine_quality, lambda: sklearn_wine()[:, :11]))
DATASETS.register("wine-white", (load_wine_quality, lambda: sklearn_wine()[:, :11]))


def load(name: str, path: str | Path | None = None) -> torch.Tensor:
    """Dataset ``name`` from the file at ``path`` (a str or os.PathLike), or its embedded default when ``path`` is
    None; any other path is a TypeError."""
    from_file, default = DATASETS.get(name)
    if path is not None and not isinstance(path, str | os.PathLike):
        raise TypeError(f"load({name!r}, path): expected path to be a str or os.PathLike file path, or None for the "
                        f"embedded default, got {type(path).__name__} {path!r}")
    return default() if path is None else from_file(Path(path))


__all__ = [
    "DATASETS",
    "DataFormatError",
    "dequantize_256",
    "digits",
    "dkef_split",
    "dkef_split_sizes",
    "for_event_shape",
    "load",
    "load_cifar10",
    "load_mnist",
    "load_parkinsons",
    "load_wine_quality",
    "logit_transform",
    "mixture",
    "pad_to_32",
    "sklearn_wine",
]
