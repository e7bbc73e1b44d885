"""Training-time data augmentation on the clients: random crop after padding, horizontal flip.

The two augmentations of the standard CIFAR-10 recipe (He et al. 2016, arXiv:1512.03385,
Section 4.2: "4 pixels are padded on each side, and a 32x32 crop is randomly sampled from
the padded image or its horizontal flip"), as torchvision's ``RandomCrop(size, padding=p)``
followed by ``RandomHorizontalFlip()`` compute them, for a whole batch at once:

    out[i, :, r, c] = pad(x)[i, :, dy_i + r, dx_i + c']
    c' = W - 1 - c if flip_i else c,   dy_i, dx_i ~ U{0..2p},   flip_i ~ Bernoulli(1/2)

with ``pad`` filling ``fill`` (the normalized value of a black pixel, as torchvision pads
the image before normalizing it). One gather, no Python loop over images.

This is a pure function of (images, draws): the draws come from the generator the caller
passes, so a client's augmented images depend only on (seed, round, client) and every
training path (one by one, client threads, batched, one-pass cohorts, Flower nodes) sees
the same pixels. Horizontal flips suit natural images (CIFAR-10), not digits or text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ParameterError
from .dataset import PIXEL_MEAN, PIXEL_STD

__all__ = ["AUGMENTATIONS", "Augmentation", "augment", "crop_padding"]

AUGMENTATIONS = ("none", "crop", "flip", "crop_flip")
BLACK = (0.0 - PIXEL_MEAN) / PIXEL_STD  # a black pixel after fed8's normalization (data.dataset.to_float)


@dataclass(frozen=True)
class Augmentation:
    """What :func:`augment` does to each training image.

    ``kind``: one of :data:`AUGMENTATIONS`. ``pad``: pixels of padding on each side before the
    random crop (shifts of up to ``pad`` in each direction); 0 = ``max(1, min(H, W) // 8)``, the
    CIFAR-10 recipe's 4 for 32x32 images and 3 for 28x28. ``fill``: the value padding takes.
    """

    kind: str = "none"
    pad: int = 0
    fill: float = BLACK

    def __post_init__(self) -> None:
        if self.kind not in AUGMENTATIONS:
            raise ParameterError(f"Augmentation.kind must be one of {AUGMENTATIONS}; got {self.kind!r}. Use 'crop' "
                                 "for digits and other images whose mirror image means something else.")
        if not isinstance(self.pad, int) or isinstance(self.pad, bool) or self.pad < 0:
            raise ParameterError(f"Augmentation.pad must be an integer >= 0 (0 = min(H, W) // 8); got {self.pad!r}.")

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @property
    def crop(self) -> bool:
        return self.kind in ("crop", "crop_flip")

    @property
    def flip(self) -> bool:
        return self.kind in ("flip", "crop_flip")


def crop_padding(aug: Augmentation, height: int, width: int) -> int:
    """The padding :func:`augment` uses on ``height`` x ``width`` images (0 when it does not crop).

    Raises :class:`~fed8.errors.ParameterError` when ``aug.pad`` is more than half the image's
    shorter side: crops would then hold more padding than image.
    """
    if not aug.crop:
        return 0
    side = min(height, width)
    pad = aug.pad or max(1, side // 8)
    if pad > side // 2:
        raise ParameterError(f"Augmentation.pad = {pad} is more than half of the {height}x{width} images' side; "
                             f"random crops would be mostly padding. Use at most {side // 2} (0 = {max(1, side // 8)}).")
    return pad


def augment(x: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """``x`` ``[N, C, H, W]`` with each image randomly cropped from its padding and/or flipped (module docstring).

    The draws, in this order: ``dy``, ``dx`` (when cropping), the flips (when flipping), each
    ``N`` values from ``generator`` on the CPU, so the result does not depend on ``x``'s device.
    Returns ``x`` itself when ``aug`` does nothing or ``x`` is empty.
    """
    n, _, h, w = x.shape
    if not aug.active or n == 0:
        return x
    pad = crop_padding(aug, h, w)
    rows = torch.arange(h).expand(n, h)
    cols = torch.arange(w).expand(n, w)
    if pad:
        rows = rows + torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
        cols = cols + torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
        x = F.pad(x, (pad, pad, pad, pad), value=aug.fill)
    if aug.flip:
        flip = torch.randint(0, 2, (n, 1), generator=generator, dtype=torch.bool)
        cols = torch.where(flip, cols.flip(1), cols)
    dev = x.device
    out = x[torch.arange(n, device=dev)[:, None, None], :, rows.to(dev)[:, :, None], cols.to(dev)[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()  # advanced indices first: [N, H, W, C] -> [N, C, H, W]
