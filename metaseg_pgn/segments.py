"""Connected segments of a prediction, their inner/boundary pixels, MetaSeg's IoU_adj and features.

Definitions (docs/design.md §3, reproducing MetaSeg's extractor):

- The prediction is voided (set to ``void``) where the ground truth is ``void``. Segments are the
  8-connected components of each predicted class in the voided prediction, numbered 1, 2, ... in
  raster order of each segment's first pixel; void pixels belong to no segment (label 0).
- A segment pixel is a *boundary* pixel if one of its in-image 8-neighbours has a different voided
  prediction (void included), otherwise it is *inner*. The image border makes no pixel a boundary
  pixel; a segment filling the image has no boundary pixel.
- ``IoU_adj(k) = I / (|k| + |A_k|)`` for a segment k of class c, with ``I`` the pixels of k whose
  ground truth is c and ``A_k`` the union of the 8-connected components of
  ``{gt == c and prediction != c}`` that touch k (8-neighbourhood).

Everything is vectorised: one labelling pass for the segments (and one for the regions missed by
the prediction, for IoU_adj). The features are sums over the runs of constant region
(``2·segment + is_boundary``) along the image rows, shared by all maps: ``np.add.reduceat`` over each
map (one sequential pass, float64), then ``np.bincount`` over the few runs. Variances are two-pass
(squared deviations from each region's own mean) in float64, so PGN values of 1e30 and far beyond
are safe; a result that is still not finite raises ``ValueError``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from skimage.measure import label as _sk_label

__all__ = ["label_segments", "boundary_mask", "adjusted_iou", "segment_features", "segment_feature_arrays",
           "map_columns"]

# The 8 neighbour offsets (dy, dx).
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))

_MAP_SUFFIXES = (
    "mean", "in_mean", "bd_mean", "rel", "rel_in",
    "var", "in_var", "bd_var", "var_rel", "var_rel_in",
)


def map_columns(name: str) -> list[str]:
    """Column names that :func:`segment_features` produces for the pixel map ``name``.

    Parameters
    ----------
    name : str
        Map name, e.g. ``"E"`` or ``"pgn_last_oh_p0_5"``.

    Returns
    -------
    list of str
        ``[f"{name}_mean", f"{name}_in_mean", f"{name}_bd_mean", f"{name}_rel", f"{name}_rel_in",
        f"{name}_var", f"{name}_in_var", f"{name}_bd_var", f"{name}_var_rel", f"{name}_var_rel_in"]``.
    """
    return [f"{name}_{suffix}" for suffix in _MAP_SUFFIXES]


# --------------------------------------------------------------------------------------------
# Segments
# --------------------------------------------------------------------------------------------


def _check_label_image(arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{what} must have shape (H, W), got {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty: shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"{what} must hold integer class ids, got dtype {arr.dtype}")
    return arr


def _voided_prediction(pred: np.ndarray, gt: np.ndarray | None, void: int) -> np.ndarray:
    """The prediction with ``void`` where the ground truth is void, in a compact integer dtype."""
    pred = _check_label_image(pred, "pred")
    if gt is not None:
        gt = _check_label_image(gt, "gt")
        if gt.shape != pred.shape:
            raise ValueError(f"gt has shape {gt.shape}, pred has shape {pred.shape}")
    lo, hi = int(pred.min(initial=0)), int(pred.max(initial=0))
    lo, hi = min(lo, void), max(hi, void)
    dtype = np.uint8 if lo >= 0 and hi <= 255 else np.int32 if -(2**31) <= lo and hi < 2**31 else np.int64
    voided = pred.astype(dtype, copy=True)
    if gt is not None:
        voided[gt == void] = void
    return voided


def _runs(code: np.ndarray) -> np.ndarray:
    """Starts of the runs of equal values along the rows of ``code`` (H, W): (R,) intp flat indices.

    Runs are maximal, never cross a row end and come in raster order.
    """
    width = code.shape[1]
    flat = code.ravel()
    change = flat[1:] != flat[:-1]
    change[width - 1 :: width] = True
    starts = np.empty(np.count_nonzero(change) + 1, dtype=np.intp)
    starts[0] = 0
    np.add(np.flatnonzero(change), 1, out=starts[1:])
    return starts


def _raster_remap(labels_in_order: np.ndarray, n: int) -> np.ndarray:
    """Renumbering that puts labels 1..n in order of first appearance.

    ``labels_in_order`` holds labels 0..n (0 = none) in raster order (e.g. one per run). Returns an
    (n+1,) intp array ``remap`` with ``remap[0] = 0`` and ``remap[label]`` = its rank by first
    appearance (1-based).
    """
    first = np.full(n + 1, labels_in_order.size, dtype=np.int64)
    np.minimum.at(first, labels_in_order, np.arange(labels_in_order.size, dtype=np.int64))
    remap = np.zeros(n + 1, dtype=np.intp)
    remap[1 + np.argsort(first[1:], kind="stable")] = np.arange(1, n + 1)
    return remap


def _raster_ordered(labels: np.ndarray, n: int) -> np.ndarray:
    """Renumber labels (H, W) 1..n in raster order of each label's first pixel (0 stays 0)."""
    remap = _raster_remap(labels.ravel()[_runs(labels)], n)
    return remap.astype(labels.dtype)[labels]


def _label_voided(voided: np.ndarray, void: int) -> tuple[np.ndarray, int]:
    """skimage's labelling of the voided prediction, int32, in skimage's order."""
    labels, n = _sk_label(voided, background=void, connectivity=2, return_num=True)
    if n >= 2**30:
        raise ValueError(f"too many segments: {n}")
    return labels.astype(np.int32, copy=False), int(n)


def label_segments(pred: np.ndarray, gt: np.ndarray | None = None, void: int = 255) -> tuple[np.ndarray, int]:
    """Connected segments of the (voided) prediction.

    Parameters
    ----------
    pred : numpy.ndarray, shape (H, W), integer
        Predicted class per pixel. Pixels equal to ``void`` belong to no segment.
    gt : numpy.ndarray, shape (H, W), integer, optional
        Ground truth; where it equals ``void`` the prediction is voided. Without it nothing is voided.
    void : int
        The void label.
    channel_axis : {0, -1}
        Class axis of ``probs``: 0 for (C, H, W), -1 for MetaSeg's (H, W, C).

    Returns
    -------
    segments : numpy.ndarray, shape (H, W), int32
        0 for void pixels, otherwise the segment id 1..n: 8-connected components of each predicted
        class, numbered in raster order of each segment's first pixel.
    n : int
        Number of segments.
    """
    labels, n = _label_voided(_voided_prediction(pred, gt, void), void)
    return _raster_ordered(labels, n), n


def _boundary(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Pixels of ``inside`` with an in-image 8-neighbour whose value differs."""
    bd = np.zeros(values.shape, dtype=bool)
    pairs = (
        ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),  # horizontal
        ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),  # vertical
        ((slice(1, None), slice(1, None)), (slice(None, -1), slice(None, -1))),  # diagonal
        ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))),  # anti-diagonal
    )
    for a, b in pairs:
        differ = values[a] != values[b]
        bd[a] |= differ
        bd[b] |= differ
    bd &= inside
    return bd


def boundary_mask(segments: np.ndarray) -> np.ndarray:
    """Boundary pixels of the segments.

    Parameters
    ----------
    segments : numpy.ndarray, shape (H, W), integer
        Segment ids as returned by :func:`label_segments` (0 = no segment).

    Returns
    -------
    numpy.ndarray, shape (H, W), bool
        True for a segment pixel with an in-image 8-neighbour in another segment or in no segment
        (as 8-connected components of the voided prediction, this is the same as "a neighbour with
        a different voided prediction"). False for inner pixels and for pixels of no segment.
    """
    segments = _check_label_image(segments, "segments")
    return _boundary(segments, segments > 0)


# --------------------------------------------------------------------------------------------
# IoU_adj
# --------------------------------------------------------------------------------------------


def _adjusted_iou(
    inter: np.ndarray,
    sizes: np.ndarray,
    voided: np.ndarray,
    gt: np.ndarray,
    bd_index: np.ndarray,
    bd_segment: np.ndarray,
    void: int,
) -> np.ndarray:
    """IoU_adj from precomputed pieces.

    ``inter``, ``sizes`` (n+1,): per segment id, the pixels whose ground truth is the segment's
    class and all pixels; ``voided``, ``gt`` (H, W); ``bd_index`` (B,) flat indices of the boundary
    pixels and ``bd_segment`` (B,) their segment ids. Returns (n,) float64.
    """
    height, width = gt.shape
    gt_flat = gt.ravel()
    vo_flat = voided.ravel()

    # Components of {gt == c and prediction != c}, all classes c in one labelling pass.
    missed = (gt_flat != vo_flat) & (gt_flat != void)
    gt_missed = np.where(missed.reshape(gt.shape), gt, void)
    mlabels, n_missed = _sk_label(gt_missed, background=void, connectivity=2, return_num=True)
    m_flat = mlabels.ravel()
    missed_sizes = np.bincount(m_flat, minlength=n_missed + 1)

    # A missed component touches segment k iff one of k's boundary pixels has a neighbour in it
    # whose ground truth is k's class (a neighbour with prediction != c makes the pixel boundary).
    rows, cols = np.divmod(bd_index, width)
    keys = [np.zeros(0, dtype=np.int64)]
    for dy, dx in _OFFSETS:
        ok = (rows + dy >= 0) & (rows + dy < height) & (cols + dx >= 0) & (cols + dx < width)
        q = bd_index[ok]
        p = q + (dy * width + dx)
        r = m_flat[p]
        hit = (r > 0) & (gt_flat[p] == vo_flat[q])
        keys.append(bd_segment[ok][hit].astype(np.int64) * (n_missed + 1) + r[hit])
    keys = np.unique(np.concatenate(keys))
    seg_of_pair, comp_of_pair = np.divmod(keys, n_missed + 1)
    added = np.bincount(seg_of_pair, weights=missed_sizes[comp_of_pair], minlength=sizes.size)

    return inter[1:] / (sizes[1:] + added[1:])


def adjusted_iou(segments: np.ndarray, pred: np.ndarray, gt: np.ndarray, *, void: int = 255) -> np.ndarray:
    """MetaSeg's adjusted IoU of every segment.

    Parameters
    ----------
    segments : numpy.ndarray, shape (H, W), integer
        Segment ids from :func:`label_segments` computed with the same ``gt`` and ``void``.
    pred : numpy.ndarray, shape (H, W), integer
        The prediction (voided or not: the two agree wherever the result depends on them).
    gt : numpy.ndarray, shape (H, W), integer
        Ground truth, ``void`` = no label.
    void : int
        The void label.

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        ``IoU_adj`` of segments 1..n: ``I / (|k| + |A_k|)`` with ``I`` the pixels of segment k whose
        ground truth is k's class c and ``A_k`` the union of the 8-connected components of
        ``{gt == c and pred != c}`` that touch k. Values in [0, 1].
    """
    segments = _check_label_image(segments, "segments")
    voided = _voided_prediction(pred, gt, void)
    if segments.shape != voided.shape:
        raise ValueError(f"segments has shape {segments.shape}, pred has shape {voided.shape}")
    gt = np.asarray(gt)
    n = int(segments.max(initial=0))
    seg_flat = segments.ravel()
    sizes = np.bincount(seg_flat, minlength=n + 1)
    inter = np.bincount(seg_flat[gt.ravel() == voided.ravel()], minlength=n + 1)
    bd_index = np.flatnonzero(boundary_mask(segments))
    return _adjusted_iou(inter, sizes, voided, gt, bd_index, seg_flat[bd_index], void)


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def _map_aggregates(
    m: np.ndarray, starts: np.ndarray, lengths: np.ndarray, run_region: np.ndarray, reg_count: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Means and population variances of a map over each segment, its inner and boundary part.

    ``m`` (H, W) map; ``starts``, ``lengths`` (R,) the runs of constant region along the rows,
    ``run_region`` (R,) intp their region ``2·segment + is_boundary``; ``reg_count`` (2n+2,) int64
    pixels per region. Returns six (n,) float64 arrays: mean, inner mean, boundary mean, variance,
    inner variance, boundary variance (mean and variance of an empty region are 0).
    """
    x = np.asarray(m).ravel()
    reg_div = np.maximum(reg_count, 1).astype(np.float64)
    run_sum = np.add.reduceat(x, starts, dtype=np.float64)
    reg_mean = np.bincount(run_region, weights=run_sum, minlength=reg_count.size) / reg_div
    # Two-pass variance: squared deviations from each region's own mean (not E[x²] - E[x]²).
    dev = np.repeat(reg_mean[run_region], lengths)
    np.subtract(x, dev, out=dev)
    np.square(dev, out=dev)
    run_sq = np.add.reduceat(dev, starts)
    reg_var = np.bincount(run_region, weights=run_sq, minlength=reg_count.size) / reg_div
    n_in, n_bd = reg_count[2::2], reg_count[3::2]
    mean_in, mean_bd = reg_mean[2::2], reg_mean[3::2]
    var_in, var_bd = reg_var[2::2], reg_var[3::2]
    size = np.maximum(n_in + n_bd, 1)
    mean = (n_in * mean_in + n_bd * mean_bd) / size
    # The segment's variance from its two parts about their own means (no cancellation).
    var = (n_in * (var_in + (mean_in - mean) ** 2) + n_bd * (var_bd + (mean_bd - mean) ** 2)) / size
    return mean, mean_in, mean_bd, var, var_in, var_bd


def _class_run_sums(probs: np.ndarray, starts: np.ndarray):
    """``c -> Σ probs[c]`` over each run of pixels starting at ``starts`` (float64), reading the
    probabilities in their memory order: one plane at a time when the class axis is the slowest,
    else all classes of a pixel together (one pass over a channels-last array)."""
    if abs(probs.strides[0]) == max(abs(st) for st in probs.strides):
        return lambda c: np.add.reduceat(probs[c].ravel(), starts, dtype=np.float64)
    pixels = np.moveaxis(probs, 0, -1).reshape(-1, probs.shape[0])  # a view for (H, W, C) memory
    sums = np.add.reduceat(pixels, starts, axis=0, dtype=np.float64)  # (runs, C)
    return lambda c: sums[:, c]


def segment_features(
    pred: np.ndarray,
    probs: np.ndarray,
    maps: Mapping[str, np.ndarray],
    gt: np.ndarray | None = None,
    *,
    void: int = 255,
    channel_axis: int = 0,
) -> pd.DataFrame:
    """MetaSeg-style per-segment features of one frame.

    Parameters
    ----------
    pred : numpy.ndarray, shape (H, W), integer
        Predicted class per pixel (usually ``probs.argmax(0)``), values in 0..C-1 (or ``void``).
    probs : numpy.ndarray, shape (C, H, W) or (H, W, C), float
        Softmax probabilities (float32 or float64); their segment means give ``cprob_{c}``.
        Any memory order: read plane by plane when the class axis is the slowest in memory,
        pixel by pixel otherwise (e.g. MetaSeg's channels-last arrays or a transposed view).
    maps : mapping of str to numpy.ndarray, shape (H, W), float
        Pixel maps to aggregate, e.g. ``E``, ``D``, ``V`` and PGN maps (float32 or float64; values
        may be huge, e.g. 1e30, but must be finite). Columns follow the mapping's order.
    gt : numpy.ndarray, shape (H, W), integer, optional
        Ground truth. Voids the prediction where it is ``void`` and gives the targets.
    void : int
        The void label.

    Returns
    -------
    pandas.DataFrame
        One row per segment, in segment id order, with the columns (dtypes)

        - ``segment_id`` (int32): 1..n in raster order of each segment's first pixel,
        - ``pred_class`` (int16),
        - ``S``, ``S_in``, ``S_bd`` (int64), ``S_rel = S/max(S_bd, 1)``,
          ``S_rel_in = S_in/max(S_bd, 1)`` (float64),
        - ``centroid_y``, ``centroid_x`` (float64): mean row / column of the segment's pixels,
        - for every map ``m`` (float64), see :func:`map_columns`: ``m_mean``, ``m_in_mean``,
          ``m_bd_mean``, ``m_rel = m_mean·S_rel``, ``m_rel_in = m_in_mean·S_rel_in``, the population
          variances ``m_var``, ``m_in_var``, ``m_bd_var``, ``m_var_rel = m_var·S_rel``,
          ``m_var_rel_in = m_in_var·S_rel_in``; an empty region (no inner or no boundary pixel)
          has mean and variance 0,
        - ``cprob_0`` .. ``cprob_{C-1}`` (float64): mean probability of each class,
        - ``iou`` (float64, MetaSeg's IoU_adj) and ``iou0`` (bool, ``iou == 0``). Without ``gt``
          both are all-missing, with pandas' nullable dtypes ``Float64`` and ``boolean``, so that
          ``pyarrow.Table.from_pandas`` gives the same Arrow types (double, bool) holding nulls.

        The caller adds ``dataset``, ``split`` and ``frame_id``. All segments are kept (also those
        without inner pixels). No value is NaN or inf.

    Raises
    ------
    ValueError
        On inconsistent shapes, non-integer labels, map names whose columns collide, or inputs
        whose aggregates are not finite (NaN/inf in a map, or variances beyond float64).
    """
    return pd.DataFrame(segment_feature_arrays(pred, probs, maps, gt, void=void, channel_axis=channel_axis),
                        copy=False)


def segment_feature_arrays(
    pred: np.ndarray,
    probs: np.ndarray,
    maps: Mapping[str, np.ndarray],
    gt: np.ndarray | None = None,
    *,
    void: int = 255,
    channel_axis: int = 0,
    with_targets: bool = True,
    return_segments: bool = False,
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], np.ndarray]:
    """The columns of :func:`segment_features` as a dict of arrays, without building a DataFrame.

    Same parameters, plus ``with_targets`` (default True): False leaves out ``iou`` and ``iou0``;
    and ``return_segments`` (default False): True also returns the segment label map.
    For callers that compute features of many small regions (``metaseg_pgn.ood_meta``), where
    building a DataFrame of hundreds of columns per call costs more than the features.

    Returns
    -------
    dict of str to numpy.ndarray (or pandas nullable arrays for the missing targets)
        Keys and dtypes as the columns of :func:`segment_features`, in the same order.
    segments : numpy.ndarray, shape (H, W), int32
        Only with ``return_segments``: the segment id of every pixel (column ``segment_id``; 0 =
        void), equal to :func:`label_segments` ``(pred, gt, void)[0]``.
    """
    pred = _check_label_image(pred, "pred")
    height, width = pred.shape
    probs = np.asarray(probs)
    given_shape = probs.shape
    if channel_axis not in (0, -1):
        raise ValueError(f"channel_axis must be 0 (C, H, W) or -1 (H, W, C), got {channel_axis}")
    if probs.ndim == 3 and channel_axis == -1:
        probs = np.moveaxis(probs, -1, 0)  # a view: (C, H, W) shape, the memory order stays
    if probs.ndim != 3 or probs.shape[1:] != pred.shape:
        want = f"(C, {height}, {width})" if channel_axis == 0 else f"({height}, {width}, C)"
        raise ValueError(f"probs must have shape {want}, got {given_shape}")
    n_classes = probs.shape[0]
    for name, m in maps.items():
        if np.shape(m) != pred.shape:
            raise ValueError(f"map {name!r} has shape {np.shape(m)}, expected {pred.shape}")

    voided = _voided_prediction(pred, gt, void)
    labels, n = _label_voided(voided, void)
    bd = _boundary(voided, voided != void)

    # Everything is aggregated over runs of constant region along the rows (region = 2·segment +
    # is_boundary; segment 0 = void, discarded): one pass over each map per sum, no pixel index.
    code = labels * 2
    code += bd
    starts = _runs(code)
    lengths = np.diff(starts, append=height * width)
    run_code = code.ravel()[starts].astype(np.intp)
    run_seg = run_code >> 1
    remap = _raster_remap(run_seg, n)  # skimage's numbering -> raster order of first pixels
    run_seg = remap[run_seg]
    run_region = 2 * run_seg + (run_code & 1)

    reg_count = np.bincount(run_region, weights=lengths, minlength=2 * (n + 1)).astype(np.int64)
    s_in = reg_count[2::2]
    s_bd = reg_count[3::2]
    size = s_in + s_bd
    size_div = np.maximum(size, 1).astype(np.float64)
    bd_div = np.maximum(s_bd, 1).astype(np.float64)
    s_rel = size / bd_div
    s_rel_in = s_in / bd_div

    seg_class = np.zeros(n + 1, dtype=voided.dtype)
    seg_class[run_seg] = voided.ravel()[starts]

    cols: dict[str, np.ndarray] = {
        "segment_id": np.arange(1, n + 1, dtype=np.int32),
        "pred_class": seg_class[1:].astype(np.int16),
        "S": size,
        "S_in": s_in,
        "S_bd": s_bd,
        "S_rel": s_rel,
        "S_rel_in": s_rel_in,
    }
    run_row, run_col = np.divmod(starts, width)
    row_sum = np.bincount(run_seg, weights=lengths * run_row, minlength=n + 1)
    col_sum = np.bincount(run_seg, weights=lengths * run_col + lengths * (lengths - 1) // 2, minlength=n + 1)
    cols["centroid_y"] = row_sum[1:] / size_div
    cols["centroid_x"] = col_sum[1:] / size_div

    for name, m in maps.items():
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught by the check below
            mean, mean_in, mean_bd, var, var_in, var_bd = _map_aggregates(
                m, starts, lengths, run_region, reg_count
            )
        values = (mean, mean_in, mean_bd, mean * s_rel, mean_in * s_rel_in,
                  var, var_in, var_bd, var * s_rel, var_in * s_rel_in)
        for col, v in zip(map_columns(name), values):
            if col in cols:
                raise ValueError(f"map {name!r} gives column {col!r}, which already exists")
            cols[col] = v

    class_run_sums = _class_run_sums(probs, starts)
    for c in range(n_classes):
        col = f"cprob_{c}"
        if col in cols:
            raise ValueError(f"column {col!r} already exists (from a map name)")
        cols[col] = np.bincount(run_seg, weights=class_run_sums(c), minlength=n + 1)[1:] / size_div

    for col, v in cols.items():
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise ValueError(f"column {col!r} is not finite: the input holds NaN/inf or exceeds float64")

    if gt is not None and with_targets:
        gt = np.asarray(gt)
        hit = gt.ravel() == voided.ravel()  # void pixels fall in segment 0
        run_hit = np.add.reduceat(hit, starts, dtype=np.int64)
        inter = np.bincount(run_seg, weights=run_hit, minlength=n + 1)
        bd_index = np.flatnonzero(bd)
        bd_segment = remap[labels.ravel()[bd_index]]
        iou = _adjusted_iou(inter, np.concatenate(([0], size)), voided, gt, bd_index, bd_segment, void)
        cols["iou"] = iou
        cols["iou0"] = iou == 0
    elif with_targets:
        cols["iou"] = pd.array([None] * n, dtype="Float64")
        cols["iou0"] = pd.array([None] * n, dtype="boolean")
    if return_segments:
        return cols, remap.astype(np.int32)[labels]
    return cols
