"""``--data NAME[:PATH]``: real training data on the command line, through ``fdsm.data``.

``mnist:path/to/train-images-idx3-ubyte.gz`` reads that file with ``fdsm.data.load``; ``mnist`` alone (no path) is
the embedded default of that kind. No option at all keeps each command's embedded default. A missing or corrupt
file raises the loader's ``DataFormatError``, which the CLI prints as one line (exit status 2).

Images are fitted to the model's input (C, H, W): resized by area averaging (bilinear when enlarging) and, between
one and three channels, repeated or averaged. A flat input of d features takes images flattened: as they are when
they have C H W = d pixel values, else fitted to (1, s, s) when d = s^2 (NICE's 784 = 28^2). Tabular rows must
already have the model's dimension.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.config import UsageError
from fdsm.data import DATASETS, load


def check_data(text: str | None) -> str | None:
    """``convert`` hook of a ``--data`` option: the name must be a dataset and the path, if any, must exist."""
    if text is None:
        return None
    name, _, path = text.partition(":")
    if name not in DATASETS:
        raise UsageError(f"--data {text}: unknown dataset {name!r}; expected NAME[:PATH] with NAME one of "
                         f"{', '.join(DATASETS.names())}")
    try:
        found = not path or Path(path).is_file()
    except OSError as err:  # a name too long for the file system, say
        raise UsageError(f"--data {text}: cannot look for the file ({err.strerror}); expected NAME[:PATH] with "
                         "an existing file") from err
    if not found:
        raise UsageError(f"--data {text}: no such file {path}")
    return text


def read_data(text: str) -> Tensor:
    """The dataset of ``NAME[:PATH]``: (N, *event)."""
    name, _, path = text.partition(":")
    return load(name, path or None)


def _flat_image(image: tuple[int, ...], d: int) -> tuple[int, int, int] | None:
    """The image shape (C, H, W) whose flattening feeds a flat input of ``d`` features (module docstring), given
    the images' own (C, H, W); None when there is none."""
    if math.prod(image) == d:
        return image  # as they are: C H W = d
    side = math.isqrt(d)
    return (1, side, side) if side * side == d else None


def _fit_images(data: Tensor, image: tuple[int, int, int], option: str) -> Tensor:
    """Images (N, c, h, w) as (N, C, H, W): channels repeated or averaged, then resized."""
    channels, height, width = image
    if data.shape[1] != channels:
        if {data.shape[1], channels} != {1, 3}:
            raise UsageError(f"{option}: images of {data.shape[1]} channels cannot feed a model of {channels}")
        data = data.repeat(1, 3, 1, 1) if channels == 3 else data.mean(1, keepdim=True)  # (N, C, h, w)
    if tuple(data.shape[2:]) == (height, width):
        return data
    shrink = height <= data.shape[2] and width <= data.shape[3]
    return F.interpolate(data, size=(height, width), mode="area" if shrink else "bilinear")  # (N, C, H, W)


def fit_to_event(data: Tensor, event_shape: tuple[int, ...], option: str = "--data") -> Tensor:
    """``data`` (N, *shape) as the model's input (N, *event_shape); see the module docstring."""
    if tuple(data.shape[1:]) == tuple(event_shape):
        return data
    if data.dim() == 4 and len(event_shape) == 3:
        return _fit_images(data, event_shape, option)
    if data.dim() == 4 and len(event_shape) == 1 and (image := _flat_image(tuple(data.shape[1:]), event_shape[0])):
        return _fit_images(data, image, option).flatten(1)  # (N, d)
    raise UsageError(f"{option}: rows of shape {tuple(data.shape[1:])} do not fit the model's input "
                     f"{tuple(event_shape)}; images fit an image input, or a flat one of C*H*W or a square number "
                     "of features, and tabular rows must have the model's dimension")


def sample_rows(data: Tensor, n: int, seed: int) -> Tensor:
    """``n`` rows of ``data`` in a seeded order (all of them, shuffled, when it has fewer)."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data[order[:n]]
