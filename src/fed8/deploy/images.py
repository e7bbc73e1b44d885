"""User images for ``fed8 predict`` and ``fed8 quantize --calibration-data``, preprocessed as in training.

The preprocessing is read from the model's ONNX metadata (``fed8.preprocess``), written
at export: resize to the input size (bilinear), grayscale or RGB to match the input's
channels, ``x = (pixel / divisor - mean) / std``, NCHW (bit-exact with training's
:func:`fed8.data.to_float`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DeployError

__all__ = ["Images", "load_images", "load_inputs", "load_model_inputs", "preprocess"]

_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class Images:
    """Preprocessed float32 images ``[N, C, H, W]``, labels if the source had them, and where each came from."""

    x: np.ndarray
    y: np.ndarray | None
    names: tuple[str, ...]


def preprocess(pixels: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    """uint8 pixels ``[N, C, H, W]`` -> the model's float input, with the constants from ``meta``."""
    p = meta.get("preprocess") or {"divisor": 255, "mean": 0.5, "std": 0.5}
    x = pixels.astype(np.float32)
    x = x / np.float32(p["divisor"]) if "divisor" in p else x * np.float32(p["scale"])
    return (x - np.float32(p["mean"])) / np.float32(p["std"])


def _decode(path: Path, c: int, h: int, w: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError as e:
        raise DeployError(f"{path}: refused, the image is too large to decode safely ({e}).") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DeployError(f"{path}: cannot decode image ({e}).") from None
    return arr[None] if c == 1 else arr.transpose(2, 0, 1)


def _npz_arrays(path: Path) -> tuple[str, np.ndarray, str, np.ndarray | None]:
    """``(x key, x, y key, y or None)`` of an ``.npz``: ``x`` / ``y``, ``images`` / ``labels`` or ``x_train`` / ``y_train``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        # numpy's own message may suggest allow_pickle=True; fed8 never unpickles.
        raise DeployError(f"{path}: not a readable .npz of plain arrays (fed8 never unpickles).") from None
    xk = next((k for k in ("x", "images", "x_train") if k in data), None)
    if xk is None:
        raise DeployError(f"{path}: no image array; expected key 'x' (or 'images', 'x_train'), got {sorted(data)}.")
    yk = {"x": "y", "images": "labels", "x_train": "y_train"}[xk]
    return xk, data[xk], yk, data.get(yk)


def _npz(path: Path, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
    xk, x, yk, y = _npz_arrays(path)
    if x.ndim == 3 and shape[0] == 1:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] == shape[0] and x.shape[1] != shape[0]:
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
        raise DeployError(f"{path}: {xk} has shape {tuple(x.shape)}, but the model takes images of "
                          f"{'x'.join(map(str, shape))} (CxHxW). Resize the images to "
                          f"{shape[1]}x{shape[2]} with {shape[0]} channel(s).")
    if x.dtype != np.uint8:
        raise DeployError(f"{path}: {xk} has dtype {x.dtype}; store raw uint8 pixels (0..255), "
                          "fed8 applies the model's own preprocessing.")
    if y is not None and (y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer)):
        raise DeployError(f"{path}: {yk} must be {x.shape[0]} integer labels; got {y.dtype} {tuple(y.shape)}.")
    return np.ascontiguousarray(x), (y.astype(np.int64) if y is not None else None)


def load_images(paths: Sequence[str | Path], meta: Mapping[str, Any]) -> Images:
    """Image files, folders (``DIR/*.png`` or ``DIR/<class>/*.png``, labelled by the model's class names) or a ``.npz``.

    ``meta`` is the model's fed8 metadata (``input_shape``, ``classes``, ``preprocess``).
    """
    if "input_shape" not in meta:
        raise DeployError("the model has no fed8 metadata (input_shape, preprocess), so fed8 cannot preprocess images "
                          "for it. Export it with fed8, or, for an ONNX model, give an .npz of its own float inputs.")
    c, h, w = meta["input_shape"]
    classes = [str(k) for k in meta.get("classes", [])]
    pixels, labels, names = [], [], []
    for p in map(Path, paths):
        if not p.exists():
            raise DeployError(f"{p}: no such file or folder.")
        if p.suffix == ".npz":
            x, y = _npz(p, (c, h, w))
            pixels.append(x)
            labels.append(y)
            names += [f"{p.name}[{i}]" for i in range(len(x))]
            continue
        if p.is_dir():
            subdirs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
            if subdirs:
                unknown = [d.name for d in subdirs if d.name not in classes]
                if unknown:
                    raise DeployError(f"{p}: class folders {unknown} are not classes of the model ({classes}).")
                files = [(f, classes.index(d.name)) for d in subdirs for f in sorted(d.iterdir())
                         if f.suffix.lower() in _SUFFIXES]
            else:
                files = [(f, None) for f in sorted(p.iterdir()) if f.suffix.lower() in _SUFFIXES]
            if not files:
                raise DeployError(f"{p}: no images ({', '.join(_SUFFIXES)}).")
        else:
            files = [(p, None)]
        pixels.append(np.stack([_decode(f, c, h, w) for f, _ in files]))
        labels.append(None if any(k is None for _, k in files) else np.array([k for _, k in files], np.int64))
        names += [str(f) for f, _ in files]
    if not pixels:
        raise DeployError("no images given.")
    y = np.concatenate(labels) if all(v is not None for v in labels) else None
    return Images(preprocess(np.concatenate(pixels), meta), y, tuple(names))


def load_model_inputs(paths: Sequence[str | Path], dims: Sequence[int | None]) -> Images:
    """Calibration data for an ONNX model without fed8 metadata: ``.npz`` files of the model's own float inputs.

    fed8 knows no preprocessing for such a model, so image files are refused and each ``.npz``
    holds ``x`` (or ``images``, ``x_train``) as the model takes it, float, ``[N, *dims]``
    (``dims``: the model's input dimensions after the batch, None where symbolic), and
    optionally ``y`` (``labels``, ``y_train``), integer labels; nothing is rescaled.
    """
    xs, ys, names = [], [], []
    for p in map(Path, paths):
        if p.suffix != ".npz":
            raise DeployError(f"{p}: the model has no fed8 metadata (input_shape, preprocess), so fed8 cannot "
                              "preprocess image files for it. Give an .npz whose 'x' holds the model's own float "
                              f"inputs [N, {', '.join('?' if d is None else str(d) for d in dims)}] (and 'y', integer "
                              "labels, for accuracy), or export the model with fed8.")
        if not p.is_file():
            raise DeployError(f"{p}: no such file.")
        xk, x, yk, y = _npz_arrays(p)
        want = "x".join("?" if d is None else str(d) for d in dims)
        if (not np.issubdtype(x.dtype, np.floating) or x.ndim != len(dims) + 1
                or any(d is not None and d != n for d, n in zip(dims, x.shape[1:]))):
            raise DeployError(f"{p}: {xk} is {x.dtype} {tuple(x.shape)}; the model takes float inputs of {want} after "
                              "the batch. Store them preprocessed as the model expects (fed8 applies nothing to a "
                              "model without fed8 metadata).")
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise DeployError(f"{p}: {xk} has inputs of {x.shape[1:]}, the first file {xs[0].shape[1:]}.")
        if y is not None and (y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer)):
            raise DeployError(f"{p}: {yk} must be {x.shape[0]} integer labels; got {y.dtype} {tuple(y.shape)}.")
        xs.append(np.ascontiguousarray(x, dtype=np.float32))
        ys.append(None if y is None else y.astype(np.int64))
        names += [f"{p.name}[{i}]" for i in range(len(x))]
    if not xs:
        raise DeployError("no calibration data given.")
    y_all = np.concatenate(ys) if all(v is not None for v in ys) else None
    return Images(np.concatenate(xs), y_all, tuple(names))


def load_inputs(paths: Sequence[str | Path], model_path: str | Path, meta: Mapping[str, Any]) -> Images:
    """What ``model_path`` takes from ``paths``: :func:`load_images` for a fed8 model (its metadata has the
    preprocessing), :func:`load_model_inputs` for an ONNX model from another tool."""
    if "input_shape" not in meta and Path(model_path).suffix == ".onnx":
        from .export import input_dims

        return load_model_inputs(paths, input_dims(model_path))
    return load_images(paths, meta)
