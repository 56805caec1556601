"""Results of the post-processing: one row per score, run and variant, gains, mean ± std over runs."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from ..meta import joined_notes, nan_mean_std
from ..metrics.ood import aggregate_components

__all__ = ["METRICS", "result_row", "add_gains", "summarise"]

#: The benchmark's component metrics of a result row (``{metric}_{mode}``).
METRICS = ("sIoU_gt", "PPV", "F1_mean")


def result_row(base: dict, variant: str, feature_set: str, model: str, frames, mode: str, n_removed: int,
               auroc: float, note: str, n_features: int = 0) -> dict:
    """One row of the results: ``score, run, variant ("before" | "after" | "benchmark"),
    feature_set, model, n_features, threshold, n_fit_frames, n_eval_frames, n_fit_candidates,
    fp_rate_fit, n_candidates (evaluation frames; -1 for benchmark), n_removed, auroc (meta
    classifier on the counted evaluation candidates), n_gt, n_pred, sIoU_gt_{mode}, PPV_{mode},
    F1_mean_{mode}, note``."""
    row = {"score": base["score"], "run": base["run"], "variant": variant, "feature_set": feature_set,
           "model": model, "n_features": n_features}
    row.update({k: base[k] for k in ("threshold", "n_fit_frames", "n_eval_frames", "n_fit_candidates",
                                     "fp_rate_fit", "n_candidates")})
    row["n_removed"] = n_removed
    row["auroc"] = auroc
    try:
        agg = aggregate_components(frames, suffix=mode)
    except ValueError as e:  # no ground-truth component in the evaluation frames
        agg = {"n_gt": 0, "n_pred": sum(int(f.PPV.size) for f in frames)}
        note = "; ".join(n for n in (note, str(e)) if n)
    row["n_gt"], row["n_pred"] = agg["n_gt"], agg["n_pred"]
    for k in METRICS:
        row[f"{k}_{mode}"] = agg.get(f"{k}_{mode}", math.nan)
    row["note"] = note
    return row


def add_gains(results: pd.DataFrame, mode: str) -> None:
    """``{metric}_gain``: after − before of the same score and run (NaN for other variants)."""
    key = ["score", "run"]
    before = results[results["variant"] == "before"].set_index(key)
    for k in METRICS:
        col = f"{k}_{mode}"
        ref = before[col].reindex(pd.MultiIndex.from_frame(results[key])).to_numpy()
        gain = results[col].to_numpy(dtype=float) - ref
        results[f"{k}_gain"] = np.where(results["variant"] == "after", gain, np.nan)


def summarise(results: pd.DataFrame, ddof: int = 0) -> pd.DataFrame:
    """Mean ± standard deviation over runs per score, variant, feature set and model.

    Parameters
    ----------
    results : DataFrame
        ``results`` of :func:`evaluate_dataset` (with ``dataset`` and ``track`` columns added by the
        stage, which are kept as grouping keys when present).
    ddof : int, default 0
        Delta degrees of freedom of the standard deviation.

    Returns
    -------
    DataFrame
        One row per group (in the order of ``results``): the keys, ``n_runs``, and
        ``{c}_mean``, ``{c}_std`` for every metric column (component metrics, gains, ``auroc``,
        ``n_removed``, ``n_candidates``, ``threshold``; NaN runs left out), ``notes``.
    """
    keys = [k for k in ("dataset", "track", "score", "variant", "feature_set", "model") if k in results.columns]
    value_cols = [c for c in results.columns if re.fullmatch(
        r"(?:sIoU_gt|PPV|F1_mean)_\w+|auroc|n_removed|n_candidates|threshold|n_pred|n_gt", c)]
    out = []
    for key, g in results.groupby(keys, sort=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row["n_runs"] = int(g["run"].nunique())
        for c in value_cols:
            row[f"{c}_mean"], row[f"{c}_std"] = nan_mean_std(g[c], ddof)
        row["notes"] = joined_notes(g)
        out.append(row)
    return pd.DataFrame(out)
