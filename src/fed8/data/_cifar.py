"""CIFAR-10, binary version (``cifar-10-batches-bin``; Krizhevsky 2009).

Each record is 1 label byte then 3072 pixel bytes (1024 R, 1024 G, 1024 B, row-major
32x32). Files: ``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin``.
The Python version of CIFAR-10 is a pickle and is refused: unpickling a file runs code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["CIFAR10_CLASSES", "read_cifar10"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
_RECORD = 1 + 3 * 32 * 32


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD:
        raise DataError(
            f"{path}: {raw.size} bytes is not a whole number of {_RECORD}-byte CIFAR-10 records "
            "(1 label + 3072 pixels); the file is truncated or not the binary version."
        )
    rec = raw.reshape(-1, _RECORD)
    labels = rec[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DataError(
            f"{path}: label {labels[bad[0]]} of record {bad[0]} is out of range 0..9; "
            "is this the CIFAR-10 binary version (not CIFAR-100)?"
        )
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def read_cifar10(root: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Return ``(train, test)``, each ``(images [N,3,32,32] uint8, labels [N])``; test may be None."""
    if any(root.glob("data_batch_*")) and not any(root.glob("data_batch_*.bin")):
        raise DataError(
            f"{root}: found data_batch_* without .bin: that is the pickled Python version, which "
            "fed8 never unpickles. Download the binary version (cifar-10-binary.tar.gz)."
        )
    train_files = sorted(root.glob("data_batch_*.bin"))
    if not train_files:
        raise DataError(f"{root}: no data_batch_*.bin files; data.path must be the "
                        "cifar-10-batches-bin folder.")
    parts = [_read_batch(p) for p in train_files]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test_file = root / "test_batch.bin"
    test = _read_batch(test_file) if test_file.is_file() else None
    return train, test
