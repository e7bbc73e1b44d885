"""A tiny Vision Transformer for 28x28 and 32x32 images (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

``x -> patches (p x p, a strided convolution) -> + learned position embedding ->
depth x [x + MHA(LN(x)); x + MLP(LN(x))] -> LN -> mean over tokens -> Linear(classes)``,
pre-norm blocks, width ``dim`` = 192 (ViT-Tiny's), ``heads`` = 3, MLP ratio 4, GELU. Mean
pooling instead of a class token (Zhai et al. 2022 found it as good and it has one fewer
parameter tensor); LayerNorm only, so it trains under DP and in batched clients (no running
statistics). The patch size is 4: 7x7 = 49 tokens at 28x28, 8x8 = 64 at 32x32.

Attention and the MLP are ``nn.Linear`` layers (``qkv``, ``proj``, ``fc1``, ``fc2``): the
layers an FP8 inference path replaces.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["ViTTiny"]


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d_h)) v
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ViTTiny(nn.Module):
    """ViT with ``depth`` pre-norm blocks of width ``dim``; mean-pooled tokens into a linear head."""

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int, *, patch: int = 4,
                 dim: int = 192, depth: int = 4, heads: int = 3, mlp_ratio: int = 4) -> None:
        super().__init__()
        if height % patch or width % patch:
            raise ConfigError(f"model.name = 'vit_tiny' cuts {patch}x{patch} patches and needs image sides divisible "
                              f"by {patch}; got {height}x{width}. Use 28x28 or 32x32 images (data.image_size for "
                              "folders).")
        if dim % heads:
            raise ConfigError(f"vit_tiny: dim {dim} must be divisible by heads {heads}.")
        tokens = (height // patch) * (width // patch)
        self.patch = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x).mean(1))
