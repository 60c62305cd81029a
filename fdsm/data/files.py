"""Reading data files: a missing, truncated or wrong-format file is a DataFormatError naming the file and what was
expected, never a silent misread. Nothing is ever downloaded; a missing file says where it was looked for."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path


class DataFormatError(ValueError):
    """A data file that is missing, truncated or not in the expected format."""


def read_bytes(path: str | Path, expected: str) -> bytes:
    """The contents of ``path``, gunzipped when it ends in .gz; ``expected`` describes the format for errors."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(
            f"{path}: no such file; expected {expected}. fdsm never downloads data: place the file there, or "
            "give no path to use the embedded default data"
        )
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataFormatError(f"{path}: cannot read it ({type(err).__name__}: {err}); expected {expected}") from err
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # a bad header, a cut-off stream, corrupt deflate data
        raise DataFormatError(f"{path}: not a complete gzip file ({err}); expected gzipped {expected}") from err
