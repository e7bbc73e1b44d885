"""Dataset sources: bundled MNIST-10k, IDX folders, CIFAR-10 binary, image folders, npz.

Every source returns :class:`~fed8.data.dataset.Splits` (a train split to partition
across clients and an eval split for the server), with images as uint8
``[N, C, H, W]``. Every malformed input raises :class:`~fed8.errors.DataError`
naming the file and what is wrong.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from ._cifar import CIFAR10_CLASSES, read_cifar10
from ._folder import read_folder
from ._idx import IMAGES_MAGIC, LABELS_MAGIC, find_idx_file, read_idx
from ._npz import read_npz
from .dataset import ImageDataset, Splits

__all__ = ["SOURCES", "bundled_mnist10k_dir", "load_splits"]

SOURCES = ("mnist10k", "idx", "cifar10", "folder", "npz")
MNIST10K_TRAIN = 8000
log = logging.getLogger("fed8")


def _digit_classes(declared: int, configured: int) -> tuple[str, ...]:
    return tuple(str(i) for i in range(configured or declared))


def _npz_classes(path: Path, names, labels: list[np.ndarray], configured: int) -> tuple[str, ...]:
    """Declared by a 'classes' array, by data.num_classes, or inferred (refused when mostly empty)."""
    if configured:
        return _digit_classes(0, configured)
    if names is not None:
        return tuple(str(n) for n in names)
    top = int(max((int(y.max()) for y in labels if y.size), default=0))
    present = len(np.unique(np.concatenate(labels))) if labels else 0
    if top + 1 > 2 * max(present, 1):
        raise DataError(
            f"{path}: the largest label is {top} but only {present} distinct labels occur, so the class count "
            f"cannot be taken from the labels (it would build a {top + 1}-class model). Store the class names as "
            "a 'classes' array in the npz, or set data.num_classes.")
    return _digit_classes(top + 1, 0)


def _check_classes(train: ImageDataset, where: str) -> None:
    """Refuse data a classifier cannot learn from; warn about classes without training images."""
    counts = np.bincount(train.labels.numpy(), minlength=train.num_classes)
    if train.num_classes < 2 or int((counts > 0).sum()) < 2:
        raise DataError(f"{where}: the training images have {int((counts > 0).sum())} distinct class(es) "
                        f"(classes: {', '.join(train.classes[:5])}); a classifier needs at least 2.")
    empty = [train.classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        log.warning("%s: %d of %d classes have no training images: %s", where, len(empty), train.num_classes,
                    ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else ""))


def bundled_mnist10k_dir() -> Path:
    """Folder of the bundled MNIST test set (10,000 images; CC BY-SA 3.0, see its README)."""
    return Path(str(resources.files("fed8.data") / "mnist10k"))


def _dataset(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], where: str,
             owners: np.ndarray | None = None) -> ImageDataset:
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        bad = labels[(labels < 0) | (labels >= len(classes))][0]
        raise DataError(f"{where}: label {bad} is out of range 0..{len(classes) - 1} ({len(classes)} classes). "
                        "Fix the labels, or set data.num_classes if the data really has more classes.")
    return ImageDataset(torch.from_numpy(np.array(images, dtype=np.uint8, order="C")),
                        torch.from_numpy(labels), classes, None if owners is None else torch.from_numpy(owners))


def _read_idx_pair(root: Path, prefix: str, required: bool):
    img_stem, lbl_stem = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    img, lbl = find_idx_file(root, img_stem), find_idx_file(root, lbl_stem)
    if img is None or lbl is None:
        if required or (img is None) != (lbl is None):
            missing = img_stem if img is None else lbl_stem
            raise DataError(f"{root}: missing {missing}[.gz]; an idx folder holds "
                            "train-images-idx3-ubyte and train-labels-idx1-ubyte (+ t10k-*).")
        return None
    x = read_idx(img, magic=IMAGES_MAGIC)
    y = read_idx(lbl, magic=LABELS_MAGIC)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{img}: {x.shape[0]} images but {lbl.name} has {y.shape[0]} labels.")
    return x[:, None], y.astype(np.int64), img


def _holdout(train: ImageDataset, fraction: float) -> tuple[ImageDataset, ImageDataset]:
    """Split off an eval set with a fixed seed, so every run sees the same one."""
    perm = np.random.default_rng(0).permutation(len(train))
    n_eval = max(1, int(round(fraction * len(train))))
    return train.take(perm[n_eval:]), train.take(perm[:n_eval])


def _eval_split(train: ImageDataset, test, classes: tuple[str, ...], where: str,
                fraction: float) -> tuple[ImageDataset, ImageDataset]:
    """The source's own test split if it has one, else a fixed-seed holdout from train."""
    if test is None:
        return _holdout(train, fraction)
    return train, _dataset(test[0], test[1], classes, where)


def _require(path: str, source: str, kind: str) -> Path:
    if not path:
        raise DataError(f"data.path is empty; data.source = {source!r} needs the {kind}. "
                        f"Set it with --set data.path=/path/to/{kind.split()[0]}.")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data.path = {path!r} does not exist; data.source = {source!r} needs the {kind}.")
    return p


def refuse_unread_keys(cfg: DataConfig) -> None:
    """Refuse keys the source would ignore: a user who set them expects them to act (a data.path without its source
    would train on the bundled MNIST). Checked when a run is created, so runs made before the check still resume."""
    if cfg.source == "mnist10k" and cfg.path:
        raise DataError(f"data.path = {cfg.path!r} is not read with data.source = 'mnist10k' (the bundled MNIST "
                        f"images). To train on your data, set data.source to one of "
                        f"{', '.join(s for s in SOURCES if s != 'mnist10k')}; for the bundled images, remove data.path.")
    default = DataConfig().image_size
    if cfg.source != "folder" and cfg.image_size != default:
        raise DataError(f"data.image_size = {cfg.image_size} applies only to data.source = 'folder' (its images "
                        f"are resized on load); {cfg.source} images keep their own size. Remove data.image_size "
                        f"(or set it to {default}).")


def load_splits(cfg: DataConfig) -> Splits:
    """Load the configured source and return its train and eval splits."""
    src = cfg.source
    if src == "mnist10k":
        root = bundled_mnist10k_dir()
        x, y, where = _read_idx_pair(root, "t10k", required=True)
        full = _dataset(x, y, _digit_classes(10, cfg.num_classes), str(where))
        perm = np.random.default_rng(0).permutation(len(full))
        train, ev = full.take(perm[:MNIST10K_TRAIN]), full.take(perm[MNIST10K_TRAIN:])
    elif src == "idx":
        root = _require(cfg.path, src, "folder with train-images-idx3-ubyte[.gz] etc.")
        xtr, ytr, where = _read_idx_pair(root, "train", required=True)
        test = _read_idx_pair(root, "t10k", required=False)
        classes = _digit_classes(10, cfg.num_classes)  # the MNIST format declares no classes: 10 unless set
        train = _dataset(xtr, ytr, classes, str(where))
        if test is None:
            train, ev = _holdout(train, cfg.eval_fraction)
        else:
            ev = _dataset(test[0], test[1], classes, str(test[2]))
            if ev.shape != train.shape:
                raise DataError(f"{root}: t10k images are {ev.shape}, train images {train.shape}.")
    elif src == "cifar10":
        root = _require(cfg.path, src, "cifar-10-batches-bin folder")
        (xtr, ytr), test = read_cifar10(root)
        classes = CIFAR10_CLASSES if cfg.num_classes in (0, 10) else _digit_classes(0, cfg.num_classes)
        train = _dataset(xtr, ytr, classes, str(root))
        train, ev = _eval_split(train, test, classes, str(root), cfg.eval_fraction)
    elif src == "folder":
        root = _require(cfg.path, src, "image folder root/<class>/*.png (or root/clients/<client>/<class>/*.png)")
        (xtr, ytr), test, classes, owners = read_folder(root, size=cfg.image_size)
        train = _dataset(xtr, ytr, classes, str(root), owners)
        train, ev = _eval_split(train, test, classes, str(root), cfg.eval_fraction)
    elif src == "npz":
        path = _require(cfg.path, src, "file.npz with x_train, y_train[, x_test, y_test]")
        (xtr, ytr), test, names, owners = read_npz(path)
        classes = _npz_classes(path, names, [ytr] + ([test[1]] if test else []), cfg.num_classes)
        train = _dataset(xtr, ytr, classes, str(path), owners)
        train, ev = _eval_split(train, test, classes, str(path), cfg.eval_fraction)
    else:  # config validation makes this unreachable; keep the error for API callers
        raise DataError(f"data.source must be one of {', '.join(SOURCES)}; got {src!r}.")
    if cfg.subset:
        perm = np.random.default_rng(0).permutation(len(train))
        train = train.take(perm[: cfg.subset])
    if len(train) == 0:
        raise DataError(f"data.source = {src!r} has no training images.")
    if cfg.partition == "natural" and train.owners is None:
        raise DataError(f"data.partition = 'natural' keeps the clients the data names, and data.source = {src!r}"
                        + (f" ({cfg.path})" if cfg.path else "") + " names none. Give an npz with a client_train "
                        "array (one client id per training image) or a folder root/clients/<client>/<class>/*.png, "
                        "or choose data.partition = iid | dirichlet | shards.")
    if cfg.partition != "natural" and train.owners is not None:
        log.warning("data.source = %r (%s) names each training image's client, and data.partition = %r draws a new "
                    "split instead; set data.partition = 'natural' (data.num_clients = %d) to keep the data's own "
                    "clients", src, cfg.path, cfg.partition, len(np.unique(train.owners.numpy())))
    _check_classes(train, f"data.source = {src!r}" + (f" ({cfg.path})" if cfg.path else ""))
    return Splits(train=train, eval=ev, name=src)
