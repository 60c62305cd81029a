"""The embedded default data, used when no data path is given: nothing to download, the same on every machine.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0-16), scaled to [0, 1] and
  bilinearly resized to the model's input (C, H, W) or flattened 28x28 for a 784-vector model.
- ``sklearn-wine``: scikit-learn's bundled wine recognition data (178 x 13), whitened.
- ``mixture``: a mixture of k Gaussians with means on a circle (2-D) or at random unit vectors (d-D), std 0.1.
"""

from __future__ import annotations

import math

import torch
from sklearn.datasets import load_digits, load_wine
from torch.nn import functional as F

from fdsm.data.tabular import whiten


def digits(shape: tuple[int, ...] = (1, 8, 8)) -> torch.Tensor:
    """Digits in [0, 1] resized to ``shape``: (C, H, W) -> (1797, C, H, W); (H*W,) -> (1797, H*W) for a square."""
    images = torch.from_numpy(load_digits().images).float()[:, None] / 16.0  # (1797, 1, 8, 8)
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side != shape[0]:
            raise ValueError(f"digits(shape={shape}): a flat shape must be a square number of pixels")
        return digits((1, side, side)).flatten(1)
    if len(shape) != 3:
        raise ValueError(f"digits(shape={shape}): expected (C, H, W) or (H*W,)")
    channels, height, width = shape
    resized = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)
    return resized.expand(-1, channels, -1, -1).contiguous()  # grey -> C identical channels


def sklearn_wine() -> torch.Tensor:
    """Whitened wine recognition features: (178, 13)."""
    return torch.from_numpy(whiten(load_wine().data)).float()


def mixture(n: int, dim: int = 2, k: int = 8, std: float = 0.1, seed: int = 0) -> torch.Tensor:
    """n samples of an equal-weight mixture of k Gaussians N(mu_j, std^2 I): (n, dim)."""
    g = torch.Generator().manual_seed(seed)
    if dim == 2:
        angles = 2 * math.pi * torch.arange(k) / k
        means = torch.stack([angles.cos(), angles.sin()], dim=1)  # (k, 2) on the unit circle
    else:
        means = F.normalize(torch.randn(k, dim, generator=g), dim=1)  # (k, dim) random unit vectors
    component = torch.randint(0, k, (n,), generator=g)
    return means[component] + std * torch.randn(n, dim, generator=g)


def for_event_shape(event_shape: tuple[int, ...], n: int, seed: int = 0) -> torch.Tensor:
    """A default batch (n, *event_shape) for a model's input: digits for images and 784-vectors, the sklearn wine
    features for vectors of at most 13 dims (its first columns), else a Gaussian mixture. Rows repeat if needed."""
    d = event_shape[0] if len(event_shape) == 1 else None
    if len(event_shape) == 3 or d == 784:
        pool = digits(tuple(event_shape))
    elif d is not None and 2 < d <= 13:
        pool = sklearn_wine()[:, :d]
    elif d is not None:
        return mixture(n, dim=d, seed=seed)
    else:
        raise ValueError(f"for_event_shape({event_shape}): expected (C, H, W) or (d,)")
    index = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).repeat(n // len(pool) + 1)
    return pool[index[:n]]
