"""Where the quantize stage's client-side work runs: calibration statistics, gate sums, on-device accuracy.

A :class:`ClientStatistics` answers each question once per client and returns only
statistics (per-tensor ranges, histograms and moments, two sums per tensor, correct-
prediction counts), never an image or an activation. :class:`LocalStatistics` computes
them in this process from each client's arrays (simulation, or one centralized set);
:class:`fed8.flower.deploy.FlowerStatistics` asks the SuperNodes. The server merges the
answers with the same code in both cases (:mod:`fed8.deploy.calibrate`,
:func:`fed8.deploy.gate.layer_sqnr_from_sums`), so both give the same models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from .calibrate import Histogram, Ranges, client_histograms, client_ranges
from .gate import client_sqnr_sums

__all__ = ["CalibrateHere", "ClientStatistics", "LocalStatistics", "correct_counts"]


class ClientStatistics(Protocol):
    """The clients' side of calibration and on-device evaluation; one answer per client, in client order."""

    def ranges(self, fp32: Path) -> list[Ranges]:
        """Per-tensor (min, max) of ``fp32``'s activations on each client's calibration images."""

    def histograms(self, fp32: Path, bounds: Mapping[str, float]) -> list[dict[str, Histogram]]:
        """Counts on the server's edges and moments, per tensor, per client."""

    def sqnr_sums(self, fp32: Path, fmt: str, ranges: Mapping[str, tuple[float, float]],
                  fp8_scales: Mapping[str, float] | None) -> list[dict[str, tuple[float, float]]]:
        """``(sum x^2, sum (x - Q(x))^2)`` per compute-layer input, per client."""

    def correct(self, model: Path) -> list[tuple[int, int]] | None:
        """``(correct, images)`` of ``model`` on each client's local test split; None if there is none."""


def correct_counts(sess, x: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    """``(correct predictions, images)`` of an ONNX Runtime session on one client's test split ``x``, ``y``."""
    from .runtime import run_logits

    if not len(x):
        return 0, 0
    return int((run_logits(sess, x).argmax(1) == y).sum()), int(len(x))


@dataclass
class LocalStatistics:
    """Every client's arrays in this process.

    Parameters
    ----------
    calib_sets
        Calibration images per client (one set for centralized calibration).
    local_x, local_y, owner
        The clients' local test images, labels and the client of each; None: no on-device evaluation.
    num_clients
        Clients (for ``owner``).
    threads
        ONNX Runtime threads.
    """

    calib_sets: Sequence[np.ndarray]
    local_x: np.ndarray | None = None
    local_y: np.ndarray | None = None
    owner: np.ndarray | None = None
    num_clients: int = 0
    threads: int = 1

    def ranges(self, fp32: Path) -> list[Ranges]:
        return [client_ranges(fp32, x) for x in self.calib_sets]

    def histograms(self, fp32: Path, bounds: Mapping[str, float]) -> list[dict[str, Histogram]]:
        return [client_histograms(fp32, x, bounds) for x in self.calib_sets]

    def sqnr_sums(self, fp32: Path, fmt: str, ranges: Mapping[str, tuple[float, float]],
                  fp8_scales: Mapping[str, float] | None) -> list[dict[str, tuple[float, float]]]:
        return [client_sqnr_sums(fp32, fmt, x, ranges=ranges, fp8_scales=fp8_scales) for x in self.calib_sets]

    def correct(self, model: Path) -> list[tuple[int, int]] | None:
        if self.local_x is None:
            return None
        from .runtime import session

        sess = session(model, threads=self.threads)
        out = []
        for k in range(self.num_clients):  # one client's images at a time, as a node runs them
            mine = self.owner == k
            out.append(correct_counts(sess, self.local_x[mine], self.local_y[mine]))
        return out


@dataclass
class CalibrateHere:
    """Centralized calibration (``calibration``, in this process) with on-device evaluation by ``devices``."""

    calibration: LocalStatistics
    devices: ClientStatistics

    def ranges(self, fp32: Path) -> list[Ranges]:
        return self.calibration.ranges(fp32)

    def histograms(self, fp32: Path, bounds: Mapping[str, float]) -> list[dict[str, Histogram]]:
        return self.calibration.histograms(fp32, bounds)

    def sqnr_sums(self, fp32: Path, fmt: str, ranges: Mapping[str, tuple[float, float]],
                  fp8_scales: Mapping[str, float] | None) -> list[dict[str, tuple[float, float]]]:
        return self.calibration.sqnr_sums(fp32, fmt, ranges, fp8_scales)

    def correct(self, model: Path) -> list[tuple[int, int]] | None:
        return self.devices.correct(model)
