r"""Image datasets of paper section 6: MNIST / Fashion-MNIST IDX files and CIFAR-10 python pickle batches, and the
preprocessing each model uses (paper-code-notes section 2.6).

- Deep EBM: pixels in [0, 1], MNIST padded with 2 zero pixels per side to 32x32 (``pad_to_32``).
- NICE: dequantize and map to logit space (``logit_transform``), x <- logit(clamp(x + (u - 1/2)/256, 1e-3, 1 - 1e-3)),
  u ~ U(0, 1), flattened to 784; the logit's Jacobian is not added, as released.
- NCSN: CIFAR-10 in [0, 1], dequantized as x 255/256 + u/256 (``dequantize_256``); the model maps it to [-1, 1].
"""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from fdsm.data.files import DataFormatError, read_bytes

IDX_EXPECTED = "an IDX file of unsigned bytes (MNIST / Fashion-MNIST, e.g. train-images-idx3-ubyte[.gz])"


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (raw or .gz) as a uint8 array of its stated shape.

    Format: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions n, n big-endian uint32
    sizes, then the data in C order.
    """
    raw = read_bytes(path, IDX_EXPECTED)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataFormatError(f"{path}: bad magic number {raw[:4].hex() or 'empty'}; expected {IDX_EXPECTED}")
    if raw[2] != 0x08:
        raise DataFormatError(f"{path}: IDX type byte 0x{raw[2]:02x}; expected 0x08 (unsigned byte)")
    ndim = raw[3]
    if ndim == 0:
        raise DataFormatError(f"{path}: IDX with 0 dimensions; expected {IDX_EXPECTED}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"{path}: truncated header ({len(raw)} bytes); expected {header} for {ndim} dims")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = math.prod(shape)  # Python ints: np.prod of uint32 sizes can wrap around to the data's length
    if len(raw) - header != size:
        raise DataFormatError(
            f"{path}: {len(raw) - header} data bytes; expected {size} for shape {shape} (truncated or corrupted)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_mnist(path: str | Path) -> torch.Tensor:
    """MNIST or Fashion-MNIST images from an IDX file: (N, 1, 28, 28) float32 in [0, 1]."""
    images = read_idx(path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataFormatError(f"{path}: IDX shape {images.shape}; expected (N, 28, 28) images (not a labels file)")
    return torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]  # (N, 28, 28) -> (N, 1, 28, 28)


def load_idx_labels(path: str | Path) -> torch.Tensor:
    """Labels from an IDX file: (N,) int64."""
    labels = read_idx(path)
    if labels.ndim != 1:
        raise DataFormatError(f"{path}: IDX shape {labels.shape}; expected (N,) labels")
    return torch.from_numpy(labels.astype(np.int64))


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays only: a data file must not run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


CIFAR_EXPECTED = "a CIFAR-10 python batch (a pickled dict with b'data': (N, 3072) uint8 and b'labels')"


def load_cifar10(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR-10 python batch (``data_batch_1`` ... ``test_batch``): images (N, 3, 32, 32) float32 in [0, 1] and
    labels (N,) int64."""
    raw = read_bytes(path, CIFAR_EXPECTED)
    try:
        batch = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # any unpickling failure means the same thing: not a CIFAR batch
        raise DataFormatError(f"{path}: cannot unpickle ({err}); expected {CIFAR_EXPECTED}") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataFormatError(f"{path}: missing b'data' or b'labels'; expected {CIFAR_EXPECTED}")
    try:
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    except ValueError as err:  # ragged lists: no array
        raise DataFormatError(f"{path}: b'data' or b'labels' is no array ({err}); expected {CIFAR_EXPECTED}") from err
    if (data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1
            or labels.dtype.kind not in "iu" or len(labels) != len(data)):
        raise DataFormatError(f"{path}: data {data.dtype} {data.shape} with labels {labels.dtype} {labels.shape}; "
                              f"expected {CIFAR_EXPECTED}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)  # rows are R, G, B planes
    return images, torch.from_numpy(labels.astype(np.int64))


def pad_to_32(images: torch.Tensor) -> torch.Tensor:
    """Zero-pad 28x28 images by 2 pixels per side: (N, C, 28, 28) -> (N, C, 32, 32), as the deep EBM's data."""
    return F.pad(images, (2, 2, 2, 2))


def logit_transform(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """NICE's input: dequantize, clamp, logit, flatten: (N, *image) in [0, 1] -> (N, prod(image))."""
    u = torch.rand(images.shape, generator=generator, dtype=images.dtype)
    x = (images + (u - 0.5) / 256).clamp(1e-3, 1 - 1e-3)
    return torch.logit(x).flatten(1)


def dequantize_256(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """NCSN's dequantization x 255/256 + u/256, u ~ U(0, 1): same shape, still in [0, 1]."""
    return images * 255 / 256 + torch.rand(images.shape, generator=generator, dtype=images.dtype) / 256
