"""Meta classification and meta regression of segments (MetaSeg-style).

A segment feature table (one row per segment, schema in ``docs/architecture.md``) is split into
training and test parts; per feature set and meta model, two models are fitted on the training part:

- meta classification of ``iou0`` (positive = IoU 0, a false-positive segment), scored by AuROC
  and accuracy (threshold 0.5 on the predicted probability of IoU = 0);
- meta regression of ``iou`` (MetaSeg's adjusted IoU), predictions clipped to [0, 1], scored by
  R² and σ (root mean squared error), both on the clipped predictions.

Meta models (:data:`MODELS`, :func:`make_classifier`, :func:`make_regressor`): ``"linear"`` (the
default, MetaSeg's: ``Pipeline([StandardScaler(), LogisticRegression()])`` and
``Pipeline([StandardScaler(), LinearRegression()])``), ``"gbt"`` (scikit-learn's histogram
gradient boosting, as the time-dynamic MetaSeg follow-up; no scaler, it bins each feature) and
``"mlp"`` (a small fully connected network after a ``StandardScaler``).

Split protocols (:data:`PROTOCOLS`):

``"grouped"`` (the default)
    ``GroupShuffleSplit`` by image (``dataset``, ``split``, ``frame_id``): no image has segments on
    both sides. 5 runs, 20 % of the images in the test part; run ``r`` uses ``seed + r``.
``"pgn_authors"``
    The PGN authors' protocol: 5 runs, random 80/20 split per segment
    (``train_test_split(..., test_size=0.2, random_state=seed + r)``, drawn by its
    ``ShuffleSplit``).
``"metaseg"``
    MetaSeg's protocol: 10 runs, random 50/50 split per segment, seed ``seed + r``.

Both authors' protocols leak in two ways: segments of one image land on both sides, and the
features were z-scored over all segments before the split. Here the scaler is a step of the
scikit-learn pipeline and is fitted on the training part only (``standardize="train"``), so with
``"pgn_authors"`` or ``"metaseg"`` only the split leaks. ``standardize="all"`` fits the scaler on
every segment of the evaluated table instead, reproducing the anchors' second leak for comparison.

Feature sets (:class:`FeatureSet`) are column selectors by regular expressions; the built-in ones
(:func:`builtin_feature_sets`) are those of the PGN paper's Figure 3. Identity and target columns
(``dataset``, ``split``, ``frame_id``, ``segment_id``, ``pred_class``, ``centroid_*``, ``iou``,
``iou0``) never enter a feature set: MetaSeg uses the class probabilities ``cprob_*``, not the
predicted class.

Modules: :mod:`~metaseg_pgn.meta.feature_sets` (column vocabulary, :class:`FeatureSet`, built-in
sets), :mod:`~metaseg_pgn.meta.protocols` (split protocols), :mod:`~metaseg_pgn.meta.models`
(meta models and fitting), :mod:`~metaseg_pgn.meta.evaluation` (:func:`evaluate`),
:mod:`~metaseg_pgn.meta.results` (summaries and files). Everything is imported from here.
"""

from __future__ import annotations

from .evaluation import evaluate
from .feature_sets import (NON_FEATURE_COLUMNS, P_LABELS, SIZE_COLUMNS, STAT_SUFFIXES, FeatureSet, available_feature_sets,
                           builtin_feature_sets, get_feature_set, map_pattern, resolve_feature_sets)
from .models import (DEFAULT_CLASSIFIER_PARAMS, GBT_PARAMS, MLP_PARAMS, MODELS, check_models, fit_quietly, make_classifier,
                     make_regressor)
from .protocols import PROTOCOLS, Protocol, get_protocol, image_groups, split_indices
from .results import joined_notes, nan_mean_std, summarise, write_results

__all__ = [
    "FeatureSet",
    "Protocol",
    "PROTOCOLS",
    "DEFAULT_CLASSIFIER_PARAMS",
    "MODELS",
    "GBT_PARAMS",
    "MLP_PARAMS",
    "check_models",
    "NON_FEATURE_COLUMNS",
    "STAT_SUFFIXES",
    "SIZE_COLUMNS",
    "P_LABELS",
    "map_pattern",
    "builtin_feature_sets",
    "get_feature_set",
    "available_feature_sets",
    "resolve_feature_sets",
    "get_protocol",
    "image_groups",
    "split_indices",
    "make_classifier",
    "make_regressor",
    "fit_quietly",
    "evaluate",
    "summarise",
    "nan_mean_std",
    "joined_notes",
    "write_results",
]
