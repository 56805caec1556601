"""Targets and features of OoD candidates, and the feature sets of the post-processing.

*Features* (MetaSeg-style, per candidate) and *target* (the benchmark's PPV, ``fp = ppv <
fp_below``) are defined in the :mod:`metaseg_pgn.ood_meta` docstring. The ``*_arrays`` functions
return the columns as arrays, for :func:`metaseg_pgn.ood_meta.evaluate_dataset`, which collects
thousands of candidates before it builds one table.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from scipy import ndimage

from ..meta import SIZE_COLUMNS, FeatureSet, get_feature_set, map_pattern
from ..segments import segment_feature_arrays
from .candidates import VOID, extract_candidates, track_sizes

__all__ = ["OOD_FEATURE_SETS", "ood_feature_set", "candidate_targets", "candidate_features", "frame_candidates",
           "candidate_table", "target_arrays", "feature_arrays", "frame_arrays"]

_CONNECTIVITY_8 = np.ones((3, 3), dtype=bool)
_SIZES = "(?:" + "|".join(SIZE_COLUMNS) + ")"
_PGN_MAPS = "pgn_(?:last|deep)_(?:oh|uni)_p[0-9]+(?:_[0-9]+)?"


def _ood_sets() -> dict[str, FeatureSet]:
    softmax_maps = map_pattern("E|D|V")
    softmax = FeatureSet("softmax", (softmax_maps, _SIZES, r"cprob_[0-9]+"),
                         require=(map_pattern("E"), map_pattern("D"), map_pattern("V"), _SIZES))
    pgn = FeatureSet("pgn", (map_pattern(_PGN_MAPS), _SIZES), require=(map_pattern(_PGN_MAPS), _SIZES))
    return {"softmax": softmax, "pgn": pgn, "softmax+pgn": FeatureSet.union("softmax+pgn", softmax, pgn)}


#: The feature sets of the post-processing: ``softmax`` (E, D, V statistics, sizes, class
#: probabilities: Meta-OoD's), ``pgn`` (every PGN map's statistics and the sizes) and their union
#: ``softmax+pgn``. The sizes are in all three, so the sets differ only in the pixel maps.
OOD_FEATURE_SETS: Mapping[str, FeatureSet] = _ood_sets()


def ood_feature_set(name: str | FeatureSet) -> FeatureSet:
    """A feature set by name: one of :data:`OOD_FEATURE_SETS`, else a built-in set of
    :mod:`metaseg_pgn.meta` (``entropy``, ``pgn_uni_p0_5``, ...); ValueError listing both."""
    if isinstance(name, FeatureSet):
        return name
    if name in OOD_FEATURE_SETS:
        return OOD_FEATURE_SETS[name]
    try:
        return get_feature_set(name)
    except ValueError as e:
        raise ValueError(f"unknown OoD feature set {name!r}; ood_meta's sets: {list(OOD_FEATURE_SETS)}; "
                         f"{e}") from None


def candidate_targets(candidates: np.ndarray, n: int, label: np.ndarray, *, min_gt_size: int,
                      fp_below: float = 0.5) -> pd.DataFrame:
    """Each candidate's overlap with the ground-truth OoD objects, as the benchmark's PPV counts it.

    Parameters
    ----------
    candidates : numpy.ndarray, shape (H, W), integer
        Candidate ids 1..n (0 = none), from :func:`extract_candidates`.
    n : int
        Number of candidates.
    label : numpy.ndarray, shape (H, W), integer
        0 / 1 / 255.
    min_gt_size : int
        Ground-truth components (8-connected) of fewer pixels are void, as in the benchmark
        (including its quirk that a tiny background component 0 voids the background).
    fp_below : float, default 0.5
        ``fp = ppv < fp_below``.

    Returns
    -------
    pandas.DataFrame
        One row per candidate: ``candidate_id`` (int32), ``size`` (int64, all pixels),
        ``size_counted`` (pixels outside void), ``covered`` (of those, pixels in ground-truth
        components), ``ppv`` (float64, ``covered / size_counted``, NaN when not counted),
        ``counted`` (bool, ``size_counted > 0``), ``fp`` (nullable boolean, NA when not counted).
    """
    return candidate_table(target_arrays(candidates, n, label, min_gt_size, fp_below))


def target_arrays(candidates, n, label, min_gt_size, fp_below) -> dict[str, np.ndarray]:
    """:func:`candidate_targets` as arrays (``fp`` False where not counted)."""
    label = np.asarray(label)
    gt_lab, n_gt = ndimage.label(label == 1, structure=_CONNECTIVITY_8)
    small = np.bincount(gt_lab.ravel(), minlength=n_gt + 1) < int(min_gt_size)
    roi = (label != VOID) & ~small[gt_lab]
    c = np.asarray(candidates).ravel()
    roi_flat = roi.ravel()
    size = np.bincount(c, minlength=n + 1)[1:]
    size_counted = np.bincount(c[roi_flat], minlength=n + 1)[1:]
    covered = np.bincount(c[roi_flat & (gt_lab.ravel() > 0)], minlength=n + 1)[1:]
    counted = size_counted > 0
    ppv = np.full(n, np.nan)
    ppv[counted] = covered[counted] / size_counted[counted]
    return {
        "candidate_id": np.arange(1, n + 1, dtype=np.int32),
        "size": size.astype(np.int64),
        "size_counted": size_counted.astype(np.int64),
        "covered": covered.astype(np.int64),
        "ppv": ppv,
        "counted": counted,
        "fp": counted & (np.nan_to_num(ppv, nan=1.0) < fp_below),
    }


def candidate_table(cols: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """A DataFrame of candidate columns; ``fp`` becomes nullable boolean, NA where not counted."""
    out = dict(cols)
    if "fp" in out and "counted" in out:
        out["fp"] = pd.arrays.BooleanArray(np.asarray(out["fp"], bool), ~np.asarray(out["counted"], bool))
    return pd.DataFrame(out, copy=False)


def candidate_features(candidates: np.ndarray, n: int, probs: np.ndarray,
                       maps: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """MetaSeg-style features of every candidate (:func:`metaseg_pgn.segments.segment_features`).

    The candidates are the segments of one class with everything else void; the computation runs
    on the bounding box of all candidates with a one-pixel margin (the margin holds no candidate
    pixel, so boundaries are the same as on the full frame, and the frame border stays a border).

    Parameters
    ----------
    candidates : numpy.ndarray, shape (H, W), integer
        Candidate ids 1..n in raster order (from :func:`extract_candidates`).
    n : int
    probs : numpy.ndarray, shape (C, H, W), float
        Softmax probabilities (their means give ``cprob_c``).
    maps : mapping of str to numpy.ndarray, shape (H, W)
        Pixel maps (E, D, V, PGN maps, baselines).

    Returns
    -------
    pandas.DataFrame
        One row per candidate in id order: ``candidate_id`` (int32), ``S, S_in, S_bd`` (int64),
        ``S_rel, S_rel_in``, ``centroid_y, centroid_x`` (in frame coordinates), the ten statistics
        of every map (:func:`metaseg_pgn.segments.map_columns`), ``cprob_0..C-1`` (float64).
    """
    return candidate_table(feature_arrays(candidates, n, probs, maps))


def feature_arrays(candidates, n, probs, maps) -> dict[str, np.ndarray]:
    """:func:`candidate_features` as arrays (building DataFrames of hundreds of columns per frame
    would cost more than the features themselves)."""
    cand = np.asarray(candidates)
    probs = np.asarray(probs)
    if n == 0:  # no rows, the same columns
        r0 = c0 = 0
        box = (slice(0, 1), slice(0, 1))
        pred = np.full((1, 1), VOID, np.uint8)
    else:
        rows = np.flatnonzero((cand > 0).any(axis=1))
        cols = np.flatnonzero((cand > 0).any(axis=0))
        r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, cand.shape[0])
        c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, cand.shape[1])
        box = (slice(r0, r1), slice(c0, c1))
        pred = np.where(cand[box] > 0, 1, VOID).astype(np.uint8)
    arrays = segment_feature_arrays(pred, probs[(slice(None),) + box],
                                    {k: np.asarray(v)[box] for k, v in maps.items()}, None, void=VOID,
                                    with_targets=False)
    if arrays["segment_id"].size != n:
        raise ValueError(f"candidate map has {n} candidates but {arrays['segment_id'].size} 8-connected "
                         "components: pass the output of extract_candidates")
    out = {"candidate_id": np.arange(1, n + 1, dtype=np.int32)}
    out.update((k, v) for k, v in arrays.items() if k not in ("segment_id", "pred_class"))
    out["centroid_y"] = out["centroid_y"] + r0
    out["centroid_x"] = out["centroid_x"] + c0
    return out


def frame_candidates(score: np.ndarray, label: np.ndarray, threshold: float, probs: np.ndarray,
                     maps: Mapping[str, np.ndarray], *, track: str, float16: bool = True,
                     fp_below: float = 0.5, frame_id: str | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Candidates of one frame with their features and targets.

    Returns
    -------
    candidates : numpy.ndarray, shape (H, W), int32
        See :func:`extract_candidates` (sizes of the ``track``).
    table : pandas.DataFrame
        :func:`candidate_targets` joined with :func:`candidate_features` (one row per candidate).
    """
    cand, cols = frame_arrays(score, label, threshold, probs, maps, track, float16, fp_below, frame_id)
    return cand, candidate_table(cols)


def frame_arrays(score, label, threshold, probs, maps, track, float16, fp_below, frame_id
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """:func:`frame_candidates` with the table as arrays (``fp`` False where not counted)."""
    sizes = track_sizes(track)
    cand, n = extract_candidates(score, label, threshold, min_pred_size=sizes["min_pred_size"],
                                 float16=float16, frame_id=frame_id)
    cols = target_arrays(cand, n, label, sizes["min_gt_size"], fp_below)
    cols.update((k, v) for k, v in feature_arrays(cand, n, probs, maps).items() if k != "candidate_id")
    return cand, cols
