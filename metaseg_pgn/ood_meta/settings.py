"""Settings of the post-processing (the ``ood_meta`` configuration section), checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..meta import FeatureSet, check_models
from ..metrics.ood import MODES, SMIYC_MODES

__all__ = ["OoDMetaSettings"]


@dataclass(frozen=True)
class OoDMetaSettings:
    """Settings of :func:`evaluate_dataset` (the ``ood_meta`` configuration section).

    Attributes
    ----------
    scores : tuple of str
        Score maps (``V``, ``E``, ``pgn_last_uni_p0_5``, ...), higher = more anomalous.
    feature_sets : tuple of str or FeatureSet
        See :func:`ood_feature_set`.
    models : tuple of str
        Meta models of :mod:`metaseg_pgn.meta` (``linear``, ``gbt``, ``mlp``).
    threshold : "best_f1" or float
        ``best_f1``: per run, the pixel best-F1 threshold on the fitting frames; a number: fixed
        (on the score divided by its maximum over the dataset).
    mode : {"smiyc", "smiyc2021", "exact"}
        smiyc / smiyc2021: float16 scores and the benchmark's binned pixel curve of that version
        (:mod:`metaseg_pgn.metrics.ood`); exact: neither.
    n_runs, test_size, seed
        Splits: see :func:`frame_splits`; ``test_size`` is the fraction of evaluation frames.
    fp_below, reject_above : float
        Target ``ppv < fp_below``; remove when the predicted probability of ``fp`` > ``reject_above``.
    """

    scores: tuple = ("V", "E", "pgn_last_uni_p0_5")
    feature_sets: tuple = ("softmax", "pgn", "softmax+pgn")
    models: tuple = ("linear",)
    threshold: str | float = "best_f1"
    mode: str = "smiyc"
    n_runs: int = 5
    test_size: float = 0.5
    seed: int = 0
    fp_below: float = 0.5
    reject_above: float = 0.5

    def __post_init__(self) -> None:
        for key in ("scores", "feature_sets", "models"):
            value = getattr(self, key)
            object.__setattr__(self, key, tuple([value] if isinstance(value, (str, FeatureSet)) else value))
            if not getattr(self, key):
                raise ValueError(f"ood_meta.{key} is empty")
        object.__setattr__(self, "models", tuple(check_models(self.models, "ood_meta.models")))
        if self.mode not in MODES:
            raise ValueError(f"ood_meta.mode must be one of {MODES}, got {self.mode!r}")
        if self.threshold != "best_f1":
            try:
                ok = 0 < float(self.threshold) < 1
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"ood_meta.threshold must be 'best_f1' or a number in (0, 1), got {self.threshold!r}")
        for key in ("test_size", "fp_below", "reject_above"):
            if not 0 < float(getattr(self, key)) < 1:
                raise ValueError(f"ood_meta.{key} must lie in (0, 1), got {getattr(self, key)!r}")
        if int(self.n_runs) < 1:
            raise ValueError(f"ood_meta.n_runs must be at least 1, got {self.n_runs!r}")

    @property
    def float16(self) -> bool:
        """Scores rounded to float16 (the benchmark's modes ``smiyc`` and ``smiyc2021``)."""
        return self.mode in SMIYC_MODES

    @classmethod
    def from_config(cls, section: Mapping, seed: int) -> "OoDMetaSettings":
        """From the ``ood_meta`` configuration section and the run's ``seed``."""
        keys = ("scores", "feature_sets", "models", "threshold", "mode", "n_runs", "test_size", "fp_below",
                "reject_above")
        return cls(**{k: section[k] for k in keys if k in section}, seed=int(seed))
