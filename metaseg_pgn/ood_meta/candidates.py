"""OoD candidates of one frame, and what the post-processing keeps of them.

The definition of a candidate (the thresholded score's components after the track's size filter)
is in the :mod:`metaseg_pgn.ood_meta` docstring. A post-processed prediction, the kept candidates,
is evaluated exactly as a thresholded score map is (:func:`mask_components`).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from ..metrics.ood import TRACKS, check_ood_frame, frame_components, to_float16
from ..segments import label_segments

__all__ = ["VOID", "track_sizes", "candidate_mask", "extract_candidates", "kept_mask", "mask_components"]

#: Label of void pixels.
VOID = 255


def track_sizes(track: str) -> dict[str, int]:
    """The size filters of a track: ``{"min_pred_size": ..., "min_gt_size": ...}`` (ValueError if unknown)."""
    if track not in TRACKS:
        raise ValueError(f"track must be one of {tuple(TRACKS)}, got {track!r}")
    return TRACKS[track]


def candidate_mask(score: np.ndarray, label: np.ndarray, threshold: float, *, float16: bool = True,
                   frame_id: str | None = None) -> np.ndarray:
    """Pixels above the threshold outside void, as the benchmark's component evaluation takes them.

    Parameters
    ----------
    score : numpy.ndarray, shape (H, W), real, finite
        OoD score, higher = more anomalous.
    label : numpy.ndarray, shape (H, W), integer
        0 in-distribution, 1 OoD, 255 void.
    threshold : float
        ``score > threshold`` (strict) is a candidate pixel.
    float16 : bool, default True
        Compare the float16-rounded score with the float16 threshold (``smiyc`` mode).
    frame_id : str, optional
        Named in errors.

    Returns
    -------
    numpy.ndarray, shape (H, W), bool
    """
    score, label = check_ood_frame(score, label, frame_id)
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if float16:
        with np.errstate(over="ignore"):
            mask = to_float16(score, frame_id) > np.float16(threshold)
    else:
        mask = score > threshold
    mask &= label != VOID
    return mask


def extract_candidates(score: np.ndarray, label: np.ndarray, threshold: float, *, min_pred_size: int,
                       float16: bool = True, frame_id: str | None = None) -> tuple[np.ndarray, int]:
    """The OoD candidates of one frame (module docstring).

    Parameters
    ----------
    score, label, threshold, float16, frame_id
        As in :func:`candidate_mask`.
    min_pred_size : int
        Components with fewer pixels are dropped (the track's predicted-component filter).

    Returns
    -------
    candidates : numpy.ndarray, shape (H, W), int32
        0 outside candidates, else the candidate id 1..n, in raster order of first pixels.
    n : int
    """
    mask = candidate_mask(score, label, threshold, float16=float16, frame_id=frame_id)
    segs, n = label_segments(np.where(mask, 1, VOID).astype(np.uint8), void=VOID)  # 8-connected
    sizes = np.bincount(segs.ravel(), minlength=n + 1)
    keep = sizes >= int(min_pred_size)
    keep[0] = False
    new_id = np.zeros(n + 1, dtype=np.int32)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)  # monotone: raster order kept
    return new_id[segs], int(keep.sum())



def kept_mask(candidates: np.ndarray, removed_ids: Iterable[int]) -> np.ndarray:
    """The candidate pixels of the candidates not removed: (H, W) bool."""
    cand = np.asarray(candidates)
    drop = np.zeros(int(cand.max(initial=0)) + 1, dtype=bool)
    ids = np.asarray(list(removed_ids), dtype=np.int64)
    drop[ids[(ids > 0) & (ids < drop.size)]] = True
    return (cand > 0) & ~drop[cand]


def mask_components(mask: np.ndarray, label: np.ndarray, *, track: str, frame_id: str | None = None):
    """The benchmark's component results of one frame for a given binary OoD prediction.

    ``frame_components`` on the mask as a 0/1 score with threshold 0.5 and the track's size
    filters: a post-processed prediction evaluated exactly as a thresholded score map is.

    Returns
    -------
    metaseg_pgn.metrics.ood.FrameComponents
    """
    sizes = track_sizes(track)
    return frame_components(np.asarray(mask, dtype=np.float32), label, 0.5, float16=False, frame_id=frame_id,
                            min_pred_size=sizes["min_pred_size"], min_gt_size=sizes["min_gt_size"])

