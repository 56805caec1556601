"""Component-level OoD metrics of SegmentMeIfYouCan: sIoU, PPV and component F1 per frame and per split.

Definitions, modes and output keys: :mod:`metaseg_pgn.metrics.ood` (docs/design.md §6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from scipy import ndimage

from .ood_input import SMIYC_MODES, VERSIONS, Mode, check_mode, check_ood_frame, to_float16

Track = Literal["obstacle", "anomaly"]


#: Size filters per track: predicted components smaller than ``min_pred_size`` px are removed,
#: ground-truth components smaller than ``min_gt_size`` px are made void.
TRACKS: dict[str, dict[str, int]] = {
    "obstacle": {"min_pred_size": 50, "min_gt_size": 10},
    "anomaly": {"min_pred_size": 500, "min_gt_size": 100},
}

#: The sIoU / PPV thresholds t = 0.25, 0.30, ..., 0.75, computed as the benchmark does
#: (``np.linspace``), so comparisons at the boundaries agree bit for bit.
SIOU_THRESHOLDS: np.ndarray = np.linspace(0.25, 0.75, 11, endpoint=True)

_CONNECTIVITY_8 = np.ones((3, 3), dtype=bool)


@dataclass
class FrameComponents:
    """Component-level results of one frame.

    Attributes
    ----------
    frame_id : str
    sIoU_gt : ndarray, shape (G,), float64
        sIoU of each ground-truth component, in raster order of the components' first pixel.
    PPV : ndarray, shape (P,), float64
        Fraction of each predicted component covered by ground-truth components it touches.
    sIoU_pred : ndarray, shape (P,), float64
        sIoU with the roles of prediction and ground truth exchanged (reported by the benchmark).
    size_gt, size_pred : ndarray, shape (G,) / (P,), int64
        Component sizes in pixels, counted outside void.
    """

    frame_id: str
    sIoU_gt: np.ndarray
    PPV: np.ndarray
    sIoU_pred: np.ndarray
    size_gt: np.ndarray
    size_pred: np.ndarray

    def counts(self, t: float) -> tuple[int, int, int]:
        """(TP, FN, FP) at threshold ``t``: sIoU >= t is a TP, PPV < t a FP."""
        tp = int(np.count_nonzero(self.sIoU_gt >= t))
        return tp, int(self.sIoU_gt.size) - tp, int(np.count_nonzero(self.PPV < t))

    def as_dict(self) -> dict:
        return {
            "frame_id": self.frame_id,
            "sIoU_gt": self.sIoU_gt.tolist(),
            "PPV": self.PPV.tolist(),
            "sIoU_pred": self.sIoU_pred.tolist(),
            "size_gt": self.size_gt.tolist(),
            "size_pred": self.size_pred.tolist(),
        }


def _track_sizes(track: str | None, min_pred_size: int | None, min_gt_size: int | None):
    if track is not None:
        if track not in TRACKS:
            raise ValueError(f"track must be one of {tuple(TRACKS)}, got {track!r}")
        min_pred_size = TRACKS[track]["min_pred_size"] if min_pred_size is None else min_pred_size
        min_gt_size = TRACKS[track]["min_gt_size"] if min_gt_size is None else min_gt_size
    if min_pred_size is None or min_gt_size is None:
        raise ValueError("give a track ('obstacle' or 'anomaly') or both size filters")
    return int(min_pred_size), int(min_gt_size)


def frame_components(
    score,
    label,
    threshold: float,
    *,
    track: Track | None = None,
    min_pred_size: int | None = None,
    min_gt_size: int | None = None,
    float16: bool = True,
    frame_id: str | None = None,
) -> FrameComponents:
    """sIoU, PPV and sizes of one frame's components (the benchmark's component evaluation).

    Steps: prediction = ``score > threshold`` (strict), void pixels set to 0; ground truth =
    ``label == 1``; both labelled with 8-connectivity. Predicted components with fewer than
    ``min_pred_size`` pixels are removed; ground-truth components with fewer than
    ``min_gt_size`` pixels become void (as in the benchmark, this check also covers the
    background "component" 0: a frame whose non-anomaly area is that small becomes all void
    outside the anomalies). Everything below is counted outside void.

    For a gt component k, K̂ = union of predicted components touching it, A = other gt
    components: ``sIoU(k) = |k ∩ K̂| / |(k ∪ K̂) \\ A|``. For a predicted component j,
    ``PPV(j) = |j ∩ (gt components touching j)| / |j|``.

    Parameters
    ----------
    score : array_like, shape (H, W), real, finite
    label : array_like, shape (H, W), integer, 0 / 1 / 255
    threshold : float
        The pixel-level best-F1 threshold of the same method and split.
    track : {"obstacle", "anomaly"}, optional
        Sets the size filters (50 / 10 px resp. 500 / 100 px) unless given explicitly.
    min_pred_size, min_gt_size : int, optional
    float16 : bool
        Round the score to float16 first and compare in float16 (smiyc mode).
    frame_id : str, optional
    """
    min_pred_size, min_gt_size = _track_sizes(track, min_pred_size, min_gt_size)
    fid = str(frame_id) if frame_id is not None else "0"
    score, label = check_ood_frame(score, label, frame_id)
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if float16:
        # The benchmark compares its float16 map with a Python-float threshold; NumPy casts the
        # threshold to float16 for that comparison.
        score = to_float16(score, frame_id)
        with np.errstate(over="ignore"):
            pred = score > np.float16(threshold)
    else:
        pred = score > threshold
    void = label == 255
    pred &= ~void
    gt_lab, n_gt = ndimage.label(label == 1, structure=_CONNECTIVITY_8)
    pred_lab, n_pred = ndimage.label(pred, structure=_CONNECTIVITY_8)

    # Size filters, on the full frame.
    pred_size_full = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)
    keep_pred = pred_size_full >= min_pred_size
    keep_pred[0] = False
    # Compact ids 1..P for the kept predicted components, in label (raster) order.
    new_id = np.zeros(n_pred + 1, dtype=np.int64)
    new_id[keep_pred] = np.arange(1, int(keep_pred.sum()) + 1)
    pred_lab = new_id[pred_lab]

    gt_size_full = np.bincount(gt_lab.ravel(), minlength=n_gt + 1)
    small_gt = gt_size_full < min_gt_size
    roi = ~void & ~small_gt[gt_lab]

    g = gt_lab[roi].astype(np.int64)
    p = pred_lab[roi]
    n_g, n_p = n_gt + 1, int(keep_pred.sum()) + 1
    size_gt_all = np.bincount(g, minlength=n_g)
    size_pred_all = np.bincount(p, minlength=n_p)
    gt_ids = np.flatnonzero(size_gt_all[1:] > 0) + 1
    pred_ids = np.flatnonzero(size_pred_all[1:] > 0) + 1

    # Sparse contingency table of (gt component, predicted component) overlaps.
    both = (g > 0) & (p > 0)
    pair, cnt = np.unique(g[both] * n_p + p[both], return_counts=True)
    pi, pj = pair // n_p, pair % n_p
    covered_gt = np.bincount(pi, weights=cnt, minlength=n_g)    # |k ∩ all predictions|
    covered_pred = np.bincount(pj, weights=cnt, minlength=n_p)  # |j ∩ all gt components|

    # gt component i: K̂ = {j : M[i, j] > 0}.
    # |K̂| = Σ size_pred[j];  adjustment = Σ_j (covered_pred[j] - M[i, j]).
    khat_size = np.bincount(pi, weights=size_pred_all[pj], minlength=n_g)
    adj_gt = np.bincount(pi, weights=covered_pred[pj] - cnt, minlength=n_g)
    inter_gt = covered_gt
    union_gt = khat_size + size_gt_all - inter_gt - adj_gt
    siou_gt = inter_gt[gt_ids] / union_gt[gt_ids]

    # predicted component j: K = {i : M[i, j] > 0}.
    k_size = np.bincount(pj, weights=size_gt_all[pi], minlength=n_p)
    adj_pred = np.bincount(pj, weights=covered_gt[pi] - cnt, minlength=n_p)
    union_pred = k_size + size_pred_all - covered_pred - adj_pred
    siou_pred = covered_pred[pred_ids] / union_pred[pred_ids]
    ppv = covered_pred[pred_ids] / size_pred_all[pred_ids]

    return FrameComponents(
        frame_id=fid,
        sIoU_gt=siou_gt.astype(np.float64),
        PPV=ppv.astype(np.float64),
        sIoU_pred=siou_pred.astype(np.float64),
        size_gt=size_gt_all[gt_ids].astype(np.int64),
        size_pred=size_pred_all[pred_ids].astype(np.int64),
    )


def aggregate_components(
    frames: Sequence[FrameComponents], suffix: str = "smiyc"
) -> dict:
    """Split-level component metrics, summed over frames as the benchmark does.

    Returns
    -------
    dict
        ``sIoU_gt_{suffix}`` (mean over all gt components of the split), ``PPV_{suffix}`` (mean
        over all predicted components), ``sIoU_pred_{suffix}``, ``F1_mean_{suffix}`` (mean of
        F1(t) over the 11 thresholds), ``F1_25/50/75_{suffix}``, ``TP/FN/FP_mean_{suffix}``,
        ``TP/FN/FP/F1_{t}_{suffix}`` for every t, ``n_gt``, ``n_pred``.

    Raises
    ------
    ValueError
        When the split has no ground-truth component.
    """
    n_gt = sum(int(f.sIoU_gt.size) for f in frames)
    n_pred = sum(int(f.PPV.size) for f in frames)
    if n_gt == 0:
        raise ValueError(
            "the split has no ground-truth anomaly component (after the size filter): sIoU and "
            "component F1 are undefined"
        )
    # Same summation order as the benchmark: per-frame sums, then frames in order.
    siou_gt = sum(np.sum(f.sIoU_gt) for f in frames) / n_gt
    if n_pred:
        ppv = sum(np.sum(f.PPV) for f in frames) / n_pred
        siou_pred = sum(np.sum(f.sIoU_pred) for f in frames) / n_pred
    else:
        ppv = siou_pred = 0.0
    out: dict = {"n_gt": n_gt, "n_pred": n_pred}
    means = {"TP": 0.0, "FN": 0.0, "FP": 0.0, "F1": 0.0}
    per_t: dict = {}
    for t in SIOU_THRESHOLDS:
        tp = fn = fp = 0
        for f in frames:
            a, b, c = f.counts(t)
            tp, fn, fp = tp + a, fn + b, fp + c
        f1 = (2 * tp) / (2 * tp + fn + fp)
        key = int(round(t * 100))
        per_t.update({f"TP_{key}": tp, f"FN_{key}": fn, f"FP_{key}": fp, f"F1_{key}": f1})
        means["TP"] += tp
        means["FN"] += fn
        means["FP"] += fp
        means["F1"] += f1
    out["sIoU_gt"] = float(siou_gt)
    out["PPV"] = float(ppv)
    out["sIoU_pred"] = float(siou_pred)
    for k, v in means.items():
        out[f"{k}_mean"] = v / len(SIOU_THRESHOLDS)
    out.update(per_t)
    meta = {"n_gt", "n_pred"}
    return {k if k in meta else f"{k}_{suffix}": (float(v) if isinstance(v, float) else v)
            for k, v in out.items()}


class ComponentOoDMetrics:
    """Component-level OoD metrics (sIoU, PPV, F1) over a split, frame by frame.

    Parameters
    ----------
    track : {"obstacle", "anomaly"}
        Size filters: 50 / 10 px (obstacle: RoadObstacle21, LostAndFound-NoKnown) or
        500 / 100 px (anomaly: RoadAnomaly21, Fishyscapes).
    threshold : float
        The pixel-level best-F1 threshold of the same method, split and mode
        (``PixelOoDMetrics(mode).compute()["best_F1_threshold_<suffix>"]``).
    mode : {"smiyc", "smiyc2021", "exact"}
        The SMIYC modes round scores to float16 first (both benchmark versions compute the
        components identically; only their threshold differs); otherwise identical.

    Keeps only the per-component numbers (a few floats per component).
    """

    def __init__(self, track: Track, threshold: float, mode: Mode = "smiyc"):
        self.track = track
        self.min_pred_size, self.min_gt_size = _track_sizes(track, None, None)
        self.threshold = float(threshold)
        self.mode = check_mode(mode)
        self.reset()

    def reset(self) -> None:
        """Forget all frames."""
        self.frames: list[FrameComponents] = []

    def update(self, score, label, frame_id: str | None = None) -> FrameComponents:
        """Add one frame and return its per-component results."""
        fid = str(frame_id) if frame_id is not None else str(len(self.frames))
        fc = frame_components(
            score, label, self.threshold, track=self.track,
            float16=self.mode in SMIYC_MODES, frame_id=fid,
        )
        self.frames.append(fc)
        return fc

    def compute(self) -> dict:
        """Split-level metrics (see :func:`aggregate_components`) plus ``mode``, ``track``,
        ``threshold`` and ``per_frame`` (list of :meth:`FrameComponents.as_dict`)."""
        if not self.frames:
            raise ValueError("no frame was added")
        out: dict = {"mode": self.mode, "version": VERSIONS[self.mode], "track": self.track,
                     "threshold": self.threshold}
        out.update(aggregate_components(self.frames, suffix=self.mode))
        out["per_frame"] = [f.as_dict() for f in self.frames]
        return out
