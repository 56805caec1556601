"""The protocol of the post-processing: frame splits per run and pixel best-F1 thresholds
(see *Protocol* in the :mod:`metaseg_pgn.ood_meta` docstring).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..meta import split_indices
from ..metrics.ood import (MODES, SMIYC_MODES, exact_curve, exact_metrics_from_curve, smiyc2021_curve_from_frames,
                           smiyc2021_metrics_from_curve, smiyc_curve, smiyc_frame_bins, smiyc_metrics_from_curve)
from .candidates import VOID

__all__ = ["frame_splits", "pixel_summary", "best_f1_threshold"]


def frame_splits(frame_ids: Sequence[str], n_runs: int, test_size: float, seed: int
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(fit, eval)`` frame positions per run: grouped by frame, run r with ``seed + r``.

    The same draw as :func:`metaseg_pgn.meta.split_indices` with the ``grouped`` protocol on a
    table with one row per frame (``GroupShuffleSplit``), so no frame is on both sides.
    """
    ids = [str(f) for f in frame_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("frame ids must be unique")
    table = pd.DataFrame({"frame_id": ids})
    return list(split_indices(table, "grouped", n_runs=n_runs, seed=seed, test_size=test_size))


def pixel_summary(score: np.ndarray, label: np.ndarray, mode: str, frame_id: str | None = None):
    """What :func:`best_f1_threshold` needs of one frame: the benchmark's bins of that version
    (``smiyc``, ``smiyc2021``) or the non-void scores with their labels (``exact``)."""
    if mode in SMIYC_MODES:
        return smiyc_frame_bins(score, label, version=mode, frame_id=frame_id)
    if mode == "exact":
        roi = np.asarray(label) != VOID
        return np.asarray(score)[roi].astype(np.float64), np.asarray(label)[roi] == 1
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def best_f1_threshold(summaries: Sequence, mode: str) -> float:
    """The pixel-level best-F1 threshold over frames (their :func:`pixel_summary`).

    Equal to ``PixelOoDMetrics(mode)`` fed with the same frames: ``best_F1_threshold_{mode}``.
    """
    if mode == "smiyc":
        return float(smiyc_metrics_from_curve(smiyc_curve(list(summaries)))["best_F1_threshold"])
    if mode == "smiyc2021":
        curve = smiyc2021_curve_from_frames(list(summaries))
        return float(smiyc2021_metrics_from_curve(curve)["best_F1_threshold"])
    values = np.concatenate([s[0] for s in summaries])
    pos = np.concatenate([s[1] for s in summaries])
    return float(exact_metrics_from_curve(exact_curve(values, pos))["best_F1_threshold"])
