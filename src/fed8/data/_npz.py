"""NumPy ``.npz`` archives with ``x_train, y_train`` and optionally ``x_test, y_test``, ``classes``, ``client_train``.

``client_train`` (integers, one per training image) names the client each training image
belongs to (a device, a writer, a hospital): ``data.partition = "natural"`` keeps that split.

Images may be ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]`` with C in {1, 3},
as uint8 (0..255) or float in [0, 1]. Loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["read_npz"]


def _images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise DataError(
            f"{path}: {key} has shape {x.shape}; expected [N, H, W], [N, H, W, C] or [N, C, H, W] "
            "with C = 1 or 3."
        )
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.floating):
        if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
            raise DataError(f"{path}: float {key} must lie in [0, 1] (got min {x.min()}, max {x.max()}); "
                            "store uint8 pixels or scale to [0, 1].")
        return np.ascontiguousarray(np.rint(x * 255).astype(np.uint8))
    raise DataError(f"{path}: {key} has dtype {x.dtype}; expected uint8 or float in [0, 1].")


def _labels(path: Path, key: str, y: np.ndarray, n: int) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {key} has dtype {y.dtype}; labels must be integers 0..K-1.")
    y = y.reshape(-1).astype(np.int64)
    if y.shape[0] != n:
        raise DataError(f"{path}: {key} has {y.shape[0]} labels for {n} images.")
    if y.size and y.min() < 0:
        raise DataError(f"{path}: {key} has label {y.min()} out of range; labels must be >= 0.")
    return y


def read_npz(path: Path):
    """Return ``(train, test_or_None, class_names_or_None, client_ids_or_None)``, each split ``(images [N,C,H,W]
    uint8, labels [N])``.

    ``class_names`` come from an optional string array ``classes``, client ids from ``client_train``.
    """
    try:
        archive = np.load(path, allow_pickle=False)
        if not hasattr(archive, "files"):
            raise DataError(f"{path}: holds a single array, not an .npz archive of x_train, y_train, ...")
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, DataError):
            raise
        # numpy's own message may suggest allow_pickle=True; fed8 never loads pickles.
        raise DataError(f"{path}: not a readable .npz archive (a zip of .npy arrays saved with np.savez); "
                        "fed8 reads plain arrays only and never unpickles.") from None
    with archive:
        missing = [k for k in ("x_train", "y_train") if k not in archive.files]
        if missing:
            raise DataError(f"{path}: missing arrays {missing}; found {archive.files}. "
                            "Save with np.savez(path, x_train=..., y_train=...).")
        try:
            xtr = _images(path, "x_train", archive["x_train"])
            train = (xtr, _labels(path, "y_train", archive["y_train"], xtr.shape[0]))
            test = None
            if "x_test" in archive.files and "y_test" in archive.files:
                xte = _images(path, "x_test", archive["x_test"])
                if xte.shape[1:] != xtr.shape[1:]:
                    raise DataError(f"{path}: x_test images are {xte.shape[1:]}, x_train {xtr.shape[1:]}.")
                test = (xte, _labels(path, "y_test", archive["y_test"], xte.shape[0]))
            names = None
            if "classes" in archive.files:
                names = archive["classes"].reshape(-1).tolist()
            owners = None
            if "client_train" in archive.files:
                owners = archive["client_train"].reshape(-1)
                if not np.issubdtype(owners.dtype, np.integer) or owners.shape[0] != xtr.shape[0]:
                    raise DataError(f"{path}: client_train must hold one integer client id per training image; got "
                                    f"{owners.shape[0]} values of dtype {owners.dtype} for {xtr.shape[0]} images.")
                owners = owners.astype(np.int64)
        except (ValueError, OSError, EOFError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{path}: an array cannot be read ({type(e).__name__}); fed8 reads plain numeric "
                            "arrays only and never unpickles.") from None
    return train, test, names, owners
