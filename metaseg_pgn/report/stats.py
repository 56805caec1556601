"""Correlation of segment features with the IoU (the report's feature–IoU table and figure)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats


def feature_correlations(df: pd.DataFrame, columns: Sequence[str], iou: np.ndarray) -> pd.DataFrame:
    """Pearson and Spearman correlation of each column with the IoU, strongest |Spearman| first.

    Columns that are constant (or hold a non-finite value), and every column when the IoU is
    constant, are left out: their correlation is undefined. scipy is never called on them, so no
    ``ConstantInputWarning`` is raised.

    Parameters
    ----------
    df : DataFrame
        One row per segment, holding ``columns``.
    columns : sequence of str
        The features to correlate.
    iou : ndarray, shape (N,), float
        The target of each row of ``df``.

    Returns
    -------
    DataFrame
        Columns ``feature``, ``pearson``, ``spearman`` (float64); ties of |Spearman| (to 12
        decimals) ordered by feature name.
    """
    y = np.asarray(iou, dtype=np.float64)
    rows = []
    if y.size >= 2 and np.isfinite(y).all() and np.ptp(y) > 0:
        for c in columns:
            x = df[c].to_numpy(dtype=np.float64)
            if not np.isfinite(x).all() or np.ptp(x) == 0:
                continue
            # PGN maps with p = 0.1 reach 1e30: scaled to |x| ≤ 1 (both coefficients are scale-free).
            x = x / np.max(np.abs(x))
            rows.append({"feature": c, "pearson": float(stats.pearsonr(x, y).statistic),
                         "spearman": float(stats.spearmanr(x, y).statistic)})
    out = pd.DataFrame(rows, columns=["feature", "pearson", "spearman"]).astype({"pearson": float, "spearman": float})
    if out.empty:
        return out
    order = np.lexsort((out["feature"].to_numpy(), -out["spearman"].abs().round(12).to_numpy()))
    return out.iloc[order].reset_index(drop=True)
