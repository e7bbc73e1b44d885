"""Image folders: ``root/<class>/*.png|jpg``, optionally ``root/train/<class>`` and ``root/test/<class>``, or
``root/clients/<client>/<class>`` (each client's own images: ``data.partition = "natural"``) with an optional
``root/test/<class>``.

Images are resized to ``size x size`` (bilinear). A dataset whose images are all
grayscale loads with 1 channel, otherwise with 3 (RGB).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["IMAGE_SUFFIXES", "read_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _class_dirs(root: Path) -> dict[str, list[Path]]:
    classes = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(
                f"{d}: class folder has no images ({', '.join(IMAGE_SUFFIXES)}); "
                "add images or remove the folder."
            )
        classes[d.name] = files
    if not classes:
        raise DataError(f"{root}: no class folders; expected {root}/<class>/*.png (or train/ and test/).")
    return classes


def _decode(path: Path, size: int) -> tuple[np.ndarray, bool]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            gray = img.mode in _GRAY_MODES
            rgb = img.convert("RGB").resize((size, size), Image.BILINEAR)
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: refused, the image is too large to decode safely ({e}).") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e}). Remove or replace the file.") from None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1), gray  # [3, H, W]


def _load_split(classes: dict[str, list[Path]], names: list[str], size: int):
    images, labels, grays = [], [], []
    for name, files in classes.items():
        for f in files:
            arr, gray = _decode(f, size)
            images.append(arr)
            grays.append(gray)
            labels.append(names.index(name))
    return np.stack(images), np.asarray(labels, dtype=np.int64), all(grays)


def _client_dirs(root: Path) -> list[tuple[str, dict[str, list[Path]]]]:
    clients = [(d.name, _class_dirs(d)) for d in sorted(p for p in root.iterdir()
                                                         if p.is_dir() and not p.name.startswith("."))]
    if not clients:
        raise DataError(f"{root}: no client folders; expected {root}/<client>/<class>/*.png.")
    return clients


def read_folder(root: Path, *, size: int):
    """Return ``(train, test_or_None, class_names, client_ids_or_None)``; images ``[N, C, size, size]`` uint8.

    With ``root/clients/``, client ids number the client folders in name order (0, 1, ...), and a
    client folder need not hold every class.
    """
    owners = None
    test_dirs = _class_dirs(root / "test") if (root / "test").is_dir() else None
    if (root / "clients").is_dir():
        clients = _client_dirs(root / "clients")
        names = sorted({c for _, dirs in clients for c in dirs} | set(test_dirs or {}))
        parts = [_load_split(dirs, names, size) for _, dirs in clients]
        xtr, ytr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        gray = all(p[2] for p in parts)
        owners = np.repeat(np.arange(len(parts)), [len(p[1]) for p in parts])
    else:
        if (root / "train").is_dir():
            train_dirs = _class_dirs(root / "train")
        else:
            train_dirs, test_dirs = _class_dirs(root), None
        names = sorted(set(train_dirs) | set(test_dirs or {}))
        xtr, ytr, gray = _load_split(train_dirs, names, size)
    test = None
    if test_dirs is not None:
        xte, yte, gray_te = _load_split(test_dirs, names, size)
        gray = gray and gray_te
        test = (xte, yte)
    if gray:  # all grayscale: keep one channel
        xtr = xtr[:, :1]
        if test is not None:
            test = (test[0][:, :1], test[1])
    return (xtr, ytr), test, tuple(names), owners
