"""Results of :func:`metaseg_pgn.meta.evaluate`: mean ± std over runs, and the files written."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from metaseg_pgn.io import atomic_write, write_json

__all__ = ["METRICS", "summarise", "nan_mean_std", "joined_notes", "write_results"]

#: The metrics of a result row (:func:`metaseg_pgn.meta.evaluate`).
METRICS = ("auroc", "accuracy", "r2", "sigma")

def summarise(results: pd.DataFrame, ddof: int = 0) -> pd.DataFrame:
    """Mean ± standard deviation over runs of every metric, per feature set and meta model.

    Parameters
    ----------
    results : DataFrame
        Output of :func:`evaluate`.
    ddof : int, default 0
        Delta degrees of freedom of the standard deviation (0 = population std, as ``np.std``
        in the MetaSeg code; 1 = sample std).

    Returns
    -------
    DataFrame
        One row per feature set and model (in the order of ``results``; results without a
        ``model`` column count as one model): ``feature_set, model, protocol, n_runs, n_features``,
        then ``{metric}_{part}_mean`` and ``{metric}_{part}_std`` for
        metric in auroc, accuracy, r2, sigma and part in train, test (NaN runs are left out), and
        ``notes`` (distinct non-empty notes joined by "; ").
    """
    need = {"feature_set", "run", "part", *METRICS}
    missing = need - set(results.columns)
    if missing:
        raise ValueError(f"results lack columns {sorted(missing)}; pass the output of evaluate()")
    out = []
    keys = ["feature_set", "model"] if "model" in results.columns else ["feature_set"]
    for key, g in results.groupby(keys, sort=False):
        row: dict[str, object] = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        if "protocol" in g.columns:
            row["protocol"] = ",".join(dict.fromkeys(g["protocol"].astype(str)))
        row["n_runs"] = int(g["run"].nunique())
        if "n_features" in g.columns:
            row["n_features"] = int(g["n_features"].iloc[0])
        for metric in METRICS:
            for part in ("train", "test"):
                mean_std = nan_mean_std(g.loc[g["part"] == part, metric], ddof)
                row[f"{metric}_{part}_mean"], row[f"{metric}_{part}_std"] = mean_std
        row["notes"] = joined_notes(g)
        out.append(row)
    return pd.DataFrame(out)


def nan_mean_std(values, ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation over runs, NaN runs left out (NaN where undefined)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return (float(v.mean()) if v.size else math.nan, float(v.std(ddof=ddof)) if v.size > ddof else math.nan)


def joined_notes(runs: pd.DataFrame) -> str:
    """The distinct non-empty ``note`` entries of some runs, joined with "; "."""
    notes = runs["note"].astype(str) if "note" in runs.columns else pd.Series([], dtype=str)
    return "; ".join(dict.fromkeys(n for n in notes if n))


def _json_records(df: pd.DataFrame) -> list[dict]:
    recs = df.to_dict(orient="records")
    for r in recs:
        for k, v in r.items():
            if isinstance(v, (float, np.floating)) and not math.isfinite(float(v)):
                r[k] = None
    return recs


def write_results(
    results: pd.DataFrame,
    summary: pd.DataFrame,
    folder: str | Path,
    predictions: pd.DataFrame | None = None,
    metadata: Mapping[str, object] | None = None,
) -> dict[str, Path]:
    """Write results, summary (and predictions) as CSV and JSON, each file atomically.

    Files: ``meta_results.csv``, ``meta_summary.csv``, ``meta_summary.json`` (``{"summary":
    [...], "results": [...], "metadata": {...}}``, NaN written as null) and, if given,
    ``meta_predictions.csv``.

    Parameters
    ----------
    results, summary : DataFrame
        Outputs of :func:`evaluate` and :func:`summarise`.
    folder : path-like
        Destination folder (created if missing).
    predictions : DataFrame, optional
        The predictions returned by ``evaluate(..., return_predictions=True)``.
    metadata : mapping, optional
        JSON-serialisable extras (configuration, source files, feature columns).

    Returns
    -------
    dict of str to Path
        The written files by kind (``results_csv``, ``summary_csv``, ``summary_json``,
        ``predictions_csv``).
    """
    folder = Path(folder)
    paths = {
        "results_csv": folder / "meta_results.csv",
        "summary_csv": folder / "meta_summary.csv",
        "summary_json": folder / "meta_summary.json",
    }
    for key, frame in (("results_csv", results), ("summary_csv", summary)):
        with atomic_write(paths[key], "w") as f:
            frame.to_csv(f, index=False, lineterminator="\n")
    if predictions is not None:
        paths["predictions_csv"] = folder / "meta_predictions.csv"
        with atomic_write(paths["predictions_csv"], "w") as f:
            predictions.to_csv(f, index=False, lineterminator="\n")
    write_json(
        paths["summary_json"],
        {
            "summary": _json_records(summary),
            "results": _json_records(results),
            "metadata": dict(metadata or {}),
        },
    )
    return paths
