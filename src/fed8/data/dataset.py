"""In-memory image datasets and the preprocessing shared by training and deployment."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError

__all__ = ["ImageDataset", "PIXEL_MEAN", "PIXEL_STD", "Splits", "to_float"]

# Data-independent normalization: x = (pixel / 255 - 0.5) / 0.5, in [-1, 1].
# Fixed constants need no statistics from the clients (nothing leaves a device for
# them) and are stored in exported models so inference preprocesses identically.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 [N, C, H, W] in [-1, 1]."""
    return (images.to(torch.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD


@dataclass(frozen=True)
class ImageDataset:
    """Images as uint8 ``[N, C, H, W]`` and integer labels ``[N]`` in ``[0, len(classes))``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    owners: torch.Tensor | None = None  # the client each image belongs to, where the source says (natural partition)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 [N, C, H, W]; got {self.images.dtype} {tuple(self.images.shape)}.")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}; "
                "every image needs exactly one label."
            )
        if self.owners is not None and self.owners.shape != self.labels.shape:
            raise DataError(f"{self.images.shape[0]} images but client ids of shape {tuple(self.owners.shape)}; "
                            "every image needs exactly one client id.")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def take(self, index: np.ndarray | torch.Tensor) -> "ImageDataset":
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return ImageDataset(self.images[index], self.labels[index], self.classes,
                            None if self.owners is None else self.owners[index])


@dataclass(frozen=True)
class Splits:
    """A training split (partitioned across clients) and the server's eval split."""

    train: ImageDataset
    eval: ImageDataset
    name: str
