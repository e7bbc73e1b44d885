"""Datasets and partitioning."""

from .dataset import PIXEL_MEAN, PIXEL_STD, ImageDataset, Splits, to_float
from .partition import ClientSplit, local_split, partition, partition_summary
from .sources import SOURCES, bundled_mnist10k_dir, load_splits, refuse_unread_keys

__all__ = [
    "ClientSplit", "ImageDataset", "PIXEL_MEAN", "PIXEL_STD", "SOURCES", "Splits", "bundled_mnist10k_dir",
    "load_splits", "local_split", "partition", "partition_summary", "refuse_unread_keys", "to_float",
]
