"""IDX files (the MNIST format, also used by Fashion-MNIST and EMNIST).

Layout (LeCun et al.): two zero bytes, a type byte (0x08 = unsigned byte), a byte
with the number of dimensions, one big-endian int32 per dimension, then the data.
Images have magic 2051 (``00 00 08 03``), labels 2049 (``00 00 08 01``).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["find_idx_file", "read_idx"]

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e}); the file is truncated or not gzip. "
                        "Download it again.") from None


def read_idx(path: Path, *, magic: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes and check its magic number and length.

    Parameters
    ----------
    path
        ``.../train-images-idx3-ubyte`` or the same with ``.gz``.
    magic
        2051 for images (returns ``[N, H, W]``), 2049 for labels (returns ``[N]``).
    """
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header (4 bytes + dims).")
    (got,) = struct.unpack(">i", raw[:4])
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    if got != magic:
        raise DataError(
            f"{path}: bad magic number {got} (0x{got & 0xFFFFFFFF:08x}); IDX {kind} files start with "
            f"{magic} (0x{magic:08x}). Is this the right file, and is it decompressed or named .gz?"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} of {header} bytes).")
    dims = struct.unpack(f">{ndim}i", raw[4:header])
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: file {what}: header says {'x'.join(map(str, dims))} = {expected} bytes, "
            f"file has {len(raw)}. Download it again."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def find_idx_file(root: Path, stem: str) -> Path | None:
    """``root/stem`` or ``root/stem.gz`` (also ``train-images.idx3-ubyte`` spellings)."""
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = root / name
        if p.is_file():
            return p
    return None
