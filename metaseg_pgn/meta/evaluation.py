"""Meta classification (IoU = 0) and meta regression (IoU) of a segment table, per run.

:func:`evaluate` reads in four steps: the labelled segments and their feature sets are checked
(:func:`_labelled_segments`, :func:`_check_features`), the protocol's splits are drawn
(:func:`metaseg_pgn.meta.protocols.split_indices`), and per feature set, meta model and run a
classifier and a regressor are fitted on the training part (:func:`_fit_run`) and scored on both
parts (:func:`_score_part`), one result row per part (:func:`_result_row`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, mean_squared_error, r2_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from .feature_sets import FeatureSet, resolve_feature_sets
from .models import check_models, fit_quietly, make_classifier, make_regressor
from .protocols import get_protocol, image_groups, split_indices

__all__ = ["evaluate"]

_PRED_ID_COLUMNS = ("dataset", "split", "frame_id", "segment_id", "pred_class")


def evaluate(
    df: pd.DataFrame,
    feature_sets: Sequence[str | FeatureSet] | str | FeatureSet | None = None,
    protocol: str = "grouped",
    n_runs: int | None = None,
    seed: int = 0,
    test_size: float | None = None,
    min_inner: bool = False,
    standardize: str = "train",
    classifier_params: Mapping[str, object] | None = None,
    source: str | None = None,
    return_predictions: bool = False,
    models: Sequence[str] | str = ("linear",),
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Meta classification (IoU = 0) and meta regression (IoU) per feature set, meta model and run.

    Parameters
    ----------
    df : DataFrame
        Segment feature table with targets ``iou`` and ``iou0`` (no nulls).
    feature_sets : str, FeatureSet or sequence of them, optional
        Names of built-in sets or :class:`FeatureSet` objects; ``None``/``"auto"``: every
        available built-in set.
    protocol : {"grouped", "pgn_authors", "metaseg"}, default "grouped"
        Split protocol, see :func:`split_indices`.
    n_runs, seed, test_size
        Passed to :func:`split_indices` (``None`` = the protocol's default).
    min_inner : bool, default False
        Keep only segments with ``S_in > 0`` (MetaSeg's analysis); the PGN authors use all.
    standardize : {"train", "all"}, default "train"
        ``"train"``: the pipeline's scaler is fitted on the training part only. ``"all"``: it is
        fitted once on every segment of the (filtered) table before the split, the anchors' leak.
    classifier_params : mapping, optional
        Overrides of :data:`DEFAULT_CLASSIFIER_PARAMS` for the logistic regression (the
        ``"linear"`` model only).
    source : str, optional
        Name of the table's origin (e.g. its Parquet path), used in error messages.
    return_predictions : bool, default False
        Also return the test-part predictions of run 0.
    models : str or sequence of str, default ("linear",)
        Meta models from :data:`MODELS` (see :func:`make_classifier`); every run fits each of
        them on the same split.

    Returns
    -------
    results : DataFrame
        One row per feature set × model × run × part, columns ``protocol, standardize, min_inner,
        seed, feature_set, model, run, part ("train"|"test"), n_segments, n_frames, n_features,
        iou0_rate, auroc, accuracy, r2, sigma, note``. Classification metrics are NaN (with the reason in
        ``note``) when the training part of a run has one class only (the run's classifier is
        skipped), and AuROC is NaN when the part itself has one class only; R² is NaN (reason
        in ``note``) when the part's IoU is constant (e.g. every segment has IoU 0). ``n_frames`` counts
        the images in the part (-1 without a ``frame_id`` column), ``iou0_rate`` is the fraction
        of segments with IoU = 0 in it.
    predictions : DataFrame, only if ``return_predictions``
        Test part of run 0, one row per feature set × model × segment: ``feature_set, model, run,
        row`` (the
        segment's index label in ``df``), the identity columns present, ``iou, iou_pred`` (clipped),
        ``iou0, p_iou0`` (predicted probability of IoU = 0; NaN if the classifier was skipped).

    Raises
    ------
    ValueError
        Missing or null targets, NaN/inf or non-numeric selected features, unknown protocol,
        unknown or empty feature sets, unknown models.
    """
    models = check_models(models)
    if standardize not in ("train", "all"):
        raise ValueError(f"standardize must be 'train' or 'all', got {standardize!r}")
    proto = get_protocol(protocol)
    df, y, iou = _labelled_segments(df, min_inner, source)
    resolved = resolve_feature_sets(df, feature_sets)
    _check_features(df, list(dict.fromkeys(c for _, cols in resolved for c in cols)), source)
    splits = list(split_indices(df, protocol, n_runs, seed, test_size))
    setup = _Setup(proto.name, standardize, bool(min_inner), int(seed), tuple(models),
                   dict(classifier_params or {}), image_groups(df) if "frame_id" in df.columns else None)
    rows: list[dict] = []
    preds: list[pd.DataFrame] = []
    # One BLAS/OpenMP thread: meta tables are small, and gradient boosting's OpenMP threads on a
    # shared machine can be 20x slower than one thread (measured: 14 s against 0.5 s per fit).
    with threadpool_limits(limits=1):
        for fs, cols in resolved:
            fs_rows, fs_preds = _evaluate_feature_set(setup, df, y, iou, fs, cols, splits, return_predictions)
            rows += fs_rows
            preds += fs_preds
    results = pd.DataFrame(rows)
    if return_predictions:
        return results, pd.concat(preds, ignore_index=True)
    return results


@dataclass(frozen=True)
class _Setup:
    """What every run of :func:`evaluate` shares: the recorded settings and the image codes."""

    protocol: str
    standardize: str
    min_inner: bool
    seed: int
    models: tuple[str, ...]
    classifier_params: dict
    groups: np.ndarray | None  # (n_segments,) image codes, None without a frame_id column


@dataclass(frozen=True)
class _Fitted:
    """The models of one run: the regressor, the classifier (None when skipped) and their notes."""

    regressor: Pipeline
    classifier: Pipeline | None
    skip_note: str  # why the classifier was skipped ("" when fitted)
    fit_note: str  # convergence notes of the fits ("" when none)


def _evaluate_feature_set(setup: _Setup, df: pd.DataFrame, y: np.ndarray, iou: np.ndarray, fs: FeatureSet,
                          cols: list[str], splits: list, return_predictions: bool
                          ) -> tuple[list[dict], list[pd.DataFrame]]:
    """Result rows (model × run × part) and run-0 test predictions (per model) of one feature set."""
    X = df[cols].to_numpy(dtype=np.float64)
    if setup.standardize == "all":  # the anchors' leak: z-scored over every segment before the split
        X = StandardScaler().fit_transform(X)
    rows, preds = [], []
    for model, (run, (train, test)) in product(setup.models, enumerate(splits)):
        fitted = _fit_run(setup, model, run, X[train], y[train], iou[train])
        for part, idx in (("train", train), ("test", test)):
            iou_pred, p_iou0, scores = _score_part(fitted, X[idx], y[idx], iou[idx], part, run)
            rows.append(_result_row(setup, fs.name, model, run, part, idx, len(cols), y[idx], scores))
            if return_predictions and run == 0 and part == "test":
                preds.append(_predictions(df.iloc[idx], fs.name, model, run, iou[idx], iou_pred, y[idx], p_iou0))
    return rows, preds


def _fit_run(setup: _Setup, model: str, run: int, X: np.ndarray, y: np.ndarray, iou: np.ndarray) -> _Fitted:
    """Fit the regressor (and, when both classes occur, the classifier) on a training part.

    ``X`` (n, n_features) float64, ``y`` (n,) bool IoU = 0, ``iou`` (n,) float64 in [0, 1].
    """
    params = setup.classifier_params if model == "linear" else {}
    clf = make_classifier(model, random_state=setup.seed + run, **params)
    reg = make_regressor(model, random_state=setup.seed + run)
    if setup.standardize == "all":  # already standardised over every segment
        clf.set_params(scale="passthrough")
        reg.set_params(scale="passthrough")
    notes = [fit_quietly(reg, X, iou)]
    classes = np.unique(y)
    if classes.size < 2:
        skip = f"classifier skipped: training part of run {run} has only iou0={bool(classes[0])}"
        return _Fitted(reg, None, skip, _join(*dict.fromkeys(notes)))
    notes.append(fit_quietly(clf, X, y))
    return _Fitted(reg, clf, "", _join(*dict.fromkeys(notes)))


def _score_part(fitted: _Fitted, X: np.ndarray, y: np.ndarray, iou: np.ndarray, part: str, run: int
                ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Predictions and metrics of one part (train or test) of a run.

    Returns
    -------
    iou_pred : ndarray, shape (n,), float64
        Predicted IoU, clipped to [0, 1].
    p_iou0 : ndarray, shape (n,), float64
        Predicted probability of IoU = 0 (NaN when the classifier was skipped).
    scores : dict
        ``auroc, accuracy, r2, sigma`` (float, NaN where undefined) and ``note`` (why).
    """
    iou_pred = np.clip(fitted.regressor.predict(X), 0.0, 1.0)
    note = fitted.skip_note
    auroc = accuracy = math.nan
    p_iou0 = np.full(len(y), np.nan)
    clf = fitted.classifier
    if clf is not None:
        p_iou0 = clf.predict_proba(X)[:, list(clf.classes_).index(True)]
        accuracy = float(accuracy_score(y, clf.predict(X)))
        if np.unique(y).size == 2:
            auroc = float(roc_auc_score(y, p_iou0))
        else:
            note = f"AuROC undefined: {part} part of run {run} has only iou0={bool(y[0])}"
    r2 = math.nan
    if len(y) >= 2 and np.ptp(iou) > 0:
        r2 = float(r2_score(iou, iou_pred))
    elif len(y) >= 2:
        # A constant target has no variance to explain: R² is undefined (scikit-learn would call a
        # constant prediction of it a perfect 1.0).
        note = _join(note, f"R² undefined: {part} part of run {run} has constant IoU = {iou[0]:.4g}")
    sigma = float(math.sqrt(mean_squared_error(iou, iou_pred)))
    scores = {"auroc": auroc, "accuracy": accuracy, "r2": r2, "sigma": sigma, "note": _join(note, fitted.fit_note)}
    return iou_pred, p_iou0, scores


def _result_row(setup: _Setup, feature_set: str, model: str, run: int, part: str, idx: np.ndarray,
                n_features: int, y: np.ndarray, scores: dict) -> dict:
    """One row of :func:`evaluate`'s results (its columns in order)."""
    n_frames = int(np.unique(setup.groups[idx]).size) if setup.groups is not None else -1
    return {"protocol": setup.protocol, "standardize": setup.standardize, "min_inner": setup.min_inner,
            "seed": setup.seed, "feature_set": feature_set, "model": model, "run": run, "part": part,
            "n_segments": len(idx), "n_frames": n_frames, "n_features": n_features, "iou0_rate": float(y.mean()),
            **scores}


def _predictions(segments: pd.DataFrame, feature_set: str, model: str, run: int, iou: np.ndarray,
                 iou_pred: np.ndarray, y: np.ndarray, p_iou0: np.ndarray) -> pd.DataFrame:
    """The predictions of one part, one row per segment (``segments``: its rows of the table)."""
    p = pd.DataFrame({"feature_set": feature_set, "model": model, "run": run, "row": segments.index.to_numpy()})
    for c in _PRED_ID_COLUMNS:
        if c in segments.columns:
            p[c] = segments[c].to_numpy()
    p["iou"] = iou
    p["iou_pred"] = iou_pred
    p["iou0"] = y
    p["p_iou0"] = p_iou0
    return p


def _join(*notes: str) -> str:
    """The non-empty notes joined with "; "."""
    return "; ".join(n for n in notes if n)


# ---------------------------------------------------------------------------------------------
# Input checks


def _labelled_segments(df: pd.DataFrame, min_inner: bool, source: str | None
                       ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The evaluated segments (``S_in > 0`` only with ``min_inner``) with their targets.

    Returns ``(df, iou0 (n,) bool, iou (n,) float64)``; ValueError on missing or bad targets.
    """
    y, iou = _check_targets(df, source)
    if not min_inner:
        return df, y, iou
    if "S_in" not in df.columns:
        raise ValueError("min_inner=True needs the column 'S_in'")
    keep = df["S_in"].to_numpy() > 0
    if not keep.any():
        raise ValueError("min_inner=True leaves no segment (every S_in is 0)")
    return df.loc[keep], y[keep], iou[keep]




def _check_targets(df: pd.DataFrame, source: str | None) -> tuple[np.ndarray, np.ndarray]:
    pre = f"{source}: " if source else ""
    missing = [c for c in ("iou", "iou0") if c not in df.columns]
    if missing:
        raise ValueError(
            f"{pre}the table has no ground truth targets: column(s) {missing} missing; "
            "meta classification/regression needs frames with labels"
        )
    null = df["iou"].isna().to_numpy() | df["iou0"].isna().to_numpy()
    if null.all():
        raise ValueError(
            f"{pre}the table has no ground truth targets: 'iou'/'iou0' are null for all {len(df)} segments "
            "(features computed without labels)"
        )
    if null.any():
        frames = df.loc[null, "frame_id"].unique().tolist()[:5] if "frame_id" in df.columns else []
        raise ValueError(
            f"{pre}the table has no ground truth targets for {int(null.sum())} of {len(df)} segments"
            + (f" (frames {frames}...)" if frames else "")
            + "; evaluate only labelled data"
        )
    iou = pd.to_numeric(df["iou"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.all((iou >= 0) & (iou <= 1)):
        raise ValueError(f"{pre}the table: 'iou' must lie in [0, 1] (found values outside or non-numeric)")
    iou0 = df["iou0"]
    if iou0.dtype == object or str(iou0.dtype) in ("bool", "boolean"):
        vals = set(iou0.unique().tolist())
        if not vals <= {True, False}:
            found = sorted(map(str, vals))[:5]
            raise ValueError(f"{pre}the table: 'iou0' must be boolean, found values {found}")
    y = iou0.to_numpy(dtype=bool)
    return y, iou


def _check_features(df: pd.DataFrame, columns: Sequence[str], source: str | None) -> None:
    pre = f"{source}: " if source else ""
    types_ = pd.api.types
    non_numeric = [c for c in columns if not types_.is_numeric_dtype(df[c]) or types_.is_bool_dtype(df[c])]
    if non_numeric:
        raise ValueError(f"{pre}the table: selected feature columns are not numeric: {non_numeric}")
    values = df[list(columns)].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values).all(axis=0)
    if bad.any():
        names = [c for c, b in zip(columns, bad) if b]
        raise ValueError(f"{pre}the table: NaN or inf in feature columns {names}")

