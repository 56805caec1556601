"""The modes of the OoD metrics, what each mode's numbers are, and the checks of one frame's input.

Shared by the pixel level (:mod:`metaseg_pgn.metrics.ood_pixel`) and the component level
(:mod:`metaseg_pgn.metrics.ood_components`); the definitions are in :mod:`metaseg_pgn.metrics.ood`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Mode = Literal["smiyc", "smiyc2021", "exact"]

MODES: tuple[str, ...] = ("smiyc", "smiyc2021", "exact")
#: The modes that reproduce the benchmark (float16 scores, binned curves).
SMIYC_MODES: tuple[str, ...] = ("smiyc", "smiyc2021")

#: What the numbers of each mode are. Every ``compute()`` result and every CSV row names it.
VERSIONS: dict[str, str] = {
    "smiyc": "SegmentMeIfYouCan road-anomaly-benchmark 1c7804e (pixel metrics since 2023-08-24)",
    "smiyc2021": "SegmentMeIfYouCan road-anomaly-benchmark b580f16 (pixel metrics 2021 to "
                 "2023-08-24; AuPRC/AUROC depend on the order of tied thresholds)",
    "exact": "unbinned, metaseg-pgn (average precision, tie-aware FPR95; no benchmark version)",
}


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _where(frame_id: str | None) -> str:
    return f"frame {frame_id!r}" if frame_id is not None else "frame"


def check_ood_frame(score, label, frame_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate one frame's score map and OoD label and return them as arrays.

    Parameters
    ----------
    score : array_like, shape (H, W), real
        Anomaly score, higher = more anomalous. Must be finite.
    label : array_like, shape (H, W), integer
        0 = in-distribution, 1 = anomaly, 255 = void.
    frame_id : str, optional
        Named in error messages.

    Returns
    -------
    score : ndarray, shape (H, W), the input's float dtype (integers become float64)
    label : ndarray, shape (H, W), uint8

    Raises
    ------
    ValueError
        On a shape mismatch, label values other than 0 / 1 / 255, non-integer labels, or NaN /
        inf scores; the message names the frame and the argument.
    """
    where = _where(frame_id)
    score = np.asarray(score)
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"{where}: label must be a 2-D (H, W) map, got shape {label.shape}")
    if score.shape != label.shape:
        raise ValueError(
            f"{where}: score has shape {score.shape} but label has shape {label.shape}"
        )
    if not (np.issubdtype(label.dtype, np.integer) or label.dtype == bool):
        raise ValueError(f"{where}: label must be an integer map, got dtype {label.dtype}")
    if label.dtype == np.uint8:
        values = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    else:
        values = np.unique(label)
    bad = values[~np.isin(values, (0, 1, 255))]
    if bad.size:
        raise ValueError(
            f"{where}: label holds values {bad[:10].tolist()} besides 0 / 1 / 255"
        )
    if not (np.issubdtype(score.dtype, np.floating) or np.issubdtype(score.dtype, np.integer)):
        raise ValueError(f"{where}: score must be a real-valued map, got dtype {score.dtype}")
    if np.issubdtype(score.dtype, np.integer):
        score = score.astype(np.float64)
    if not np.all(np.isfinite(score)):
        n = int(np.count_nonzero(~np.isfinite(score)))
        raise ValueError(f"{where}: score holds {n} NaN or inf values")
    return score, label.astype(np.uint8, copy=False)


def to_float16(score: np.ndarray, frame_id: str | None = None) -> np.ndarray:
    """Round a score map to float16 as the benchmark stores it (round to nearest even).

    Raises ``ValueError`` naming the frame when a value overflows the float16 range (|x| > 65504).
    """
    with np.errstate(over="ignore"):
        s16 = np.asarray(score).astype(np.float16)
    if not np.all(np.isfinite(s16)):
        raise ValueError(
            f"{_where(frame_id)}: score exceeds the float16 range (|x| > 65504); "
            "the benchmark stores scores as float16"
        )
    return s16


def check_mode(mode: str) -> str:
    """Return ``mode`` when it is one of :data:`MODES`; raise ``ValueError`` naming it otherwise."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode

