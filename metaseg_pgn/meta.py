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
    (``train_test_split(..., test_size=0.2, random_state=seed + r)``).
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
"""

from __future__ import annotations

import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, mean_squared_error, r2_score, roc_auc_score
from sklearn.model_selection import GroupShuffleSplit, train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from metaseg_pgn.io import atomic_write, write_json

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
    "split_indices",
    "make_classifier",
    "make_regressor",
    "fit_quietly",
    "evaluate",
    "summarise",
    "write_results",
]

# ---------------------------------------------------------------------------------------------
# Column vocabulary (docs/architecture.md)

#: Columns that are never features: where a segment comes from, its class, its position, targets.
NON_FEATURE_COLUMNS: tuple[str, ...] = (
    "dataset",
    "split",
    "frame_id",
    "segment_id",
    "pred_class",
    "centroid_y",
    "centroid_x",
    "iou",
    "iou0",
)
_NON_FEATURE_RE = re.compile(r"(?:dataset|split|frame_id|segment_id|pred_class|iou|iou0|centroid_.*)")

#: The ten per-map statistics: ``{m}_{suffix}``.
STAT_SUFFIXES: tuple[str, ...] = (
    "mean",
    "in_mean",
    "bd_mean",
    "rel",
    "rel_in",
    "var",
    "in_var",
    "bd_var",
    "var_rel",
    "var_rel_in",
)
#: Segment sizes.
SIZE_COLUMNS: tuple[str, ...] = ("S", "S_in", "S_bd", "S_rel", "S_rel_in")
#: The PGN exponents of the paper as they appear in map names (``format_p``).
P_LABELS: tuple[str, ...] = ("0_1", "0_3", "0_5", "1", "2")

_SUFFIX_RE = "(?:" + "|".join(STAT_SUFFIXES) + ")"
_P_RE = r"p[0-9]+(?:_[0-9]+)?"


def map_pattern(map_regex: str) -> str:
    """Regular expression for the ten statistics of the maps whose name fully matches ``map_regex``.

    Parameters
    ----------
    map_regex : str
        A regular expression for map names, e.g. ``"E"`` or ``"pgn_last_oh_p[0-9_]+"``. It is used
        as a group, so alternatives (``"E|D"``) are fine.

    Returns
    -------
    str
        ``"(?:map_regex)_(?:mean|in_mean|...|var_rel_in)"``, meant for :func:`re.fullmatch`.
    """
    return f"(?:{map_regex})_{_SUFFIX_RE}"


# ---------------------------------------------------------------------------------------------
# Feature sets


@dataclass(frozen=True)
class FeatureSet:
    """A named selection of feature columns by regular expressions.

    A column is selected when it fully matches (:func:`re.fullmatch`) at least one ``include``
    pattern, no ``exclude`` pattern, and is not one of :data:`NON_FEATURE_COLUMNS`. Columns keep
    the order of the table.

    Parameters
    ----------
    name : str
        Name used in results and error messages.
    include : sequence of str
        Regular expressions; a column is a candidate if it fully matches one of them.
    exclude : sequence of str, default ()
        Regular expressions; a column fully matching one of them is dropped.
    require : sequence of str, default ()
        Regular expressions each of which must fully match at least one selected column; otherwise
        :meth:`columns` raises. Built-in sets use it so that, e.g., ``"metaseg+pgn"`` is not
        silently evaluated on a table without PGN columns.

    Examples
    --------
    >>> fs = FeatureSet.from_patterns("pgn_p2", "pgn_last_.*_p2_.*")
    >>> fs.columns(table)  # doctest: +SKIP
    """

    name: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    require: tuple[str, ...] = ()
    _compiled: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"feature set name must be a non-empty string, got {self.name!r}")
        for attr in ("include", "exclude", "require"):
            value = getattr(self, attr)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, attr, tuple(value))
        if not self.include:
            raise ValueError(f"feature set {self.name!r}: give at least one include pattern")
        compiled = []
        for attr in ("include", "exclude", "require"):
            pats = []
            for p in getattr(self, attr):
                try:
                    pats.append(re.compile(p))
                except (re.error, TypeError) as e:
                    raise ValueError(
                        f"feature set {self.name!r}: {attr} pattern {p!r} is not a valid regular expression: {e}"
                    ) from None
            compiled.append(tuple(pats))
        object.__setattr__(self, "_compiled", tuple(compiled))

    @classmethod
    def from_patterns(cls, name: str, *patterns: str, exclude: Sequence[str] = ()) -> "FeatureSet":
        """A feature set from include patterns given as arguments.

        Parameters
        ----------
        name : str
            Name of the set.
        *patterns : str
            Include patterns (full-match regular expressions), e.g. ``"pgn_last_.*_p2_.*"``.
        exclude : sequence of str, default ()
            Exclude patterns.
        """
        return cls(name, tuple(patterns), tuple(exclude))

    @classmethod
    def union(cls, name: str, *sets: "FeatureSet") -> "FeatureSet":
        """The union of feature sets: all include, exclude and require patterns combined.

        An exclude pattern of one set removes matching columns from the whole union.
        """
        return cls(
            name,
            tuple(p for s in sets for p in s.include),
            tuple(p for s in sets for p in s.exclude),
            tuple(p for s in sets for p in s.require),
        )

    def select(self, columns: Iterable) -> list[str]:
        """The selected column names among ``columns``, in their order (no check, may be empty)."""
        inc, exc, _ = self._compiled
        out = []
        for c in columns:
            if not isinstance(c, str) or _NON_FEATURE_RE.fullmatch(c):
                continue
            if any(p.fullmatch(c) for p in inc) and not any(p.fullmatch(c) for p in exc):
                out.append(c)
        return out

    def missing_requirements(self, columns: Iterable) -> list[str]:
        """The ``require`` patterns that no selected column among ``columns`` matches."""
        selected = self.select(columns)
        return [p.pattern for p in self._compiled[2] if not any(p.fullmatch(c) for c in selected)]

    def is_available(self, df: pd.DataFrame) -> bool:
        """Whether :meth:`columns` succeeds on ``df``."""
        return bool(self.select(df.columns)) and not self.missing_requirements(df.columns)

    def columns(self, df: pd.DataFrame) -> list[str]:
        """The selected feature columns of ``df``, in table order.

        Raises
        ------
        ValueError
            If nothing is selected or a ``require`` pattern matches no selected column; the message
            names the set and lists the maps (and built-in sets) the table offers.
        """
        selected = self.select(df.columns)
        if not selected:
            raise ValueError(
                f"feature set {self.name!r} selects no column of the table "
                f"(include {list(self.include)}, exclude {list(self.exclude)}); {_table_offer(df)}"
            )
        missing = self.missing_requirements(df.columns)
        if missing:
            raise ValueError(
                f"feature set {self.name!r} needs columns matching {missing}, which the table lacks; "
                f"{_table_offer(df)}"
            )
        return selected


def _map_names(columns: Iterable) -> list[str]:
    """Names of the pixel maps with aggregated features in ``columns`` (from ``{m}_mean``)."""
    out = []
    for c in columns:
        if isinstance(c, str) and c.endswith("_mean") and not c.endswith(("_in_mean", "_bd_mean")):
            out.append(c[: -len("_mean")])
    return out


def _table_offer(df: pd.DataFrame) -> str:
    maps = _map_names(df.columns)
    sets = [s.name for s in available_feature_sets(df)]
    extra = []
    if any(c in df.columns for c in SIZE_COLUMNS):
        extra.append("sizes S*")
    if any(isinstance(c, str) and c.startswith("cprob_") for c in df.columns):
        extra.append("cprob_*")
    return (
        f"map prefixes in the table: {maps or 'none'}"
        + (f" (and {', '.join(extra)})" if extra else "")
        + f"; built-in feature sets available: {sets or 'none'}"
    )


def _builtin_sets() -> dict[str, FeatureSet]:
    sets: dict[str, FeatureSet] = {}
    e, d = map_pattern("E"), map_pattern("D")
    sizes = "(?:" + "|".join(SIZE_COLUMNS) + ")"
    cprob = r"cprob_[0-9]+"
    sets["metaseg"] = FeatureSet("metaseg", (e, d, sizes, cprob), require=(e, d, sizes, cprob))
    sets["entropy"] = FeatureSet("entropy", (map_pattern("E"),))
    sets["max_softmax"] = FeatureSet("max_softmax", (map_pattern("V"),))
    for label in ("oh", "uni"):
        sets[f"pgn_{label}"] = FeatureSet(f"pgn_{label}", (map_pattern(f"pgn_last_{label}_{_P_RE}"),))
    for label in ("oh", "uni"):
        for p in P_LABELS:
            name = f"pgn_{label}_p{p}"
            sets[name] = FeatureSet(name, (map_pattern(f"pgn_last_{label}_p{p}"),))
    sets["pgn_all"] = FeatureSet("pgn_all", (map_pattern(f"pgn_(?:last|deep)_(?:oh|uni)_{_P_RE}"),))
    # metaseg ∪ pgn_all, and it needs both parts in the table.
    sets["metaseg+pgn"] = FeatureSet(
        "metaseg+pgn",
        sets["metaseg"].include + sets["pgn_all"].include,
        require=sets["metaseg"].require + sets["pgn_all"].include,
    )
    sets["mcd"] = FeatureSet("mcd", (map_pattern("mcd_E|mcd_MI"),))
    sets["ensemble"] = FeatureSet("ensemble", (map_pattern("ens_E|ens_MI"),))
    return sets


_BUILTIN = types.MappingProxyType(_builtin_sets())


def builtin_feature_sets() -> dict[str, FeatureSet]:
    """The built-in feature sets of the PGN paper's Figure 3, by name, in a fixed order.

    ``metaseg`` (E and D features, sizes ``S*``, ``cprob_*``); ``entropy`` (``E_*``);
    ``max_softmax`` (``V_*``, V = 1 - max softmax); ``pgn_oh`` and ``pgn_uni`` (last layer, every
    p); ``pgn_oh_p{p}`` and ``pgn_uni_p{p}`` for p in 0_1, 0_3, 0_5, 1, 2 (last layer);
    ``pgn_all`` (every PGN map, last and deep layer); ``metaseg+pgn`` (metaseg ∪ pgn_all);
    ``mcd`` (``mcd_E``, ``mcd_MI``); ``ensemble`` (``ens_E``, ``ens_MI``).

    Returns
    -------
    dict of str to FeatureSet
        A new dict on every call (the sets themselves are immutable).
    """
    return dict(_BUILTIN)


def get_feature_set(name: str) -> FeatureSet:
    """The built-in feature set called ``name`` (ValueError listing the names otherwise)."""
    try:
        return _BUILTIN[name]
    except KeyError:
        raise ValueError(f"unknown feature set {name!r}; built-in sets: {list(_BUILTIN)}") from None


def available_feature_sets(df: pd.DataFrame) -> list[FeatureSet]:
    """The built-in feature sets whose columns exist in ``df``, in the built-in order."""
    return [s for s in _BUILTIN.values() if s.is_available(df)]


def resolve_feature_sets(
    df: pd.DataFrame, feature_sets: Sequence[str | FeatureSet] | str | FeatureSet | None = None
) -> list[tuple[FeatureSet, list[str]]]:
    """Turn names or :class:`FeatureSet` objects into ``(set, columns)`` pairs for ``df``.

    Parameters
    ----------
    df : DataFrame
        The segment feature table.
    feature_sets : str, FeatureSet, sequence of them, or None
        ``None`` or ``"auto"``: every available built-in set. Strings name built-in sets.

    Raises
    ------
    ValueError
        Unknown names, duplicate names, or a set selecting nothing (see :meth:`FeatureSet.columns`).
    """
    if feature_sets is None or (isinstance(feature_sets, str) and feature_sets == "auto"):
        sets = available_feature_sets(df)
        if not sets:
            raise ValueError(f"no built-in feature set applies to the table; {_table_offer(df)}")
    else:
        if isinstance(feature_sets, (str, FeatureSet)):
            feature_sets = [feature_sets]
        sets = [s if isinstance(s, FeatureSet) else get_feature_set(s) for s in feature_sets]
        if not sets:
            raise ValueError("feature_sets is empty")
    names = [s.name for s in sets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"feature set names must be unique, repeated: {dup}")
    return [(s, s.columns(df)) for s in sets]


# ---------------------------------------------------------------------------------------------
# Split protocols


@dataclass(frozen=True)
class Protocol:
    """A split protocol: default number of runs, test fraction, and whether splits are by image."""

    name: str
    n_runs: int
    test_size: float
    grouped: bool
    description: str


PROTOCOLS: Mapping[str, Protocol] = types.MappingProxyType(
    {
        "grouped": Protocol(
            "grouped", 5, 0.2, True, "GroupShuffleSplit by image; test_size is the fraction of images"
        ),
        "pgn_authors": Protocol(
            "pgn_authors", 5, 0.2, False, "PGN authors: random 80/20 split per segment (leaks across images)"
        ),
        "metaseg": Protocol(
            "metaseg", 10, 0.5, False, "MetaSeg: random 50/50 split per segment (leaks across images)"
        ),
    }
)

_GROUP_KEYS = ("dataset", "split", "frame_id")


def _protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; choose one of {list(PROTOCOLS)}") from None


def _image_groups(df: pd.DataFrame) -> np.ndarray:
    """Integer image codes, numbered in sorted order of (dataset, split, frame_id)."""
    if "frame_id" not in df.columns:
        raise ValueError("the grouped protocol needs a 'frame_id' column to keep images on one side")
    keys = [k for k in _GROUP_KEYS if k in df.columns]
    return df.groupby(keys, sort=True, dropna=False).ngroup().to_numpy()


def split_indices(
    df: pd.DataFrame,
    protocol: str = "grouped",
    n_runs: int | None = None,
    seed: int = 0,
    test_size: float | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(train_idx, test_idx)`` positional indices into ``df``, one pair per run.

    Parameters
    ----------
    df : DataFrame
        The segment table (``frame_id`` needed for ``"grouped"``).
    protocol : {"grouped", "pgn_authors", "metaseg"}, default "grouped"
        See :data:`PROTOCOLS` and the module docstring.
    n_runs : int, optional
        Number of runs; default the protocol's (5, 5, 10).
    seed : int, default 0
        Run ``r`` uses ``random_state = seed + r`` (with ``seed=0`` the anchors' "seed r").
    test_size : float, optional
        Test fraction; default the protocol's (0.2, 0.2, 0.5). For ``"grouped"`` it is the fraction
        of images (``GroupShuffleSplit``), otherwise of segments (``train_test_split``).

    Yields
    ------
    train_idx, test_idx : ndarray of int
        In the order scikit-learn draws them (sorted for ``"grouped"``, shuffled otherwise).
        Grouped splits key images by (``dataset``, ``split``, ``frame_id``) where those exist.
    """
    proto = _protocol(protocol)
    n_runs = proto.n_runs if n_runs is None else int(n_runs)
    test_size = proto.test_size if test_size is None else test_size
    if n_runs < 1:
        raise ValueError(f"n_runs must be at least 1, got {n_runs}")
    n = len(df)
    if n < 2:
        raise ValueError(f"protocol {protocol!r} needs at least 2 segments, the table has {n}")
    if proto.grouped:
        groups = _image_groups(df)
        n_groups = int(groups.max()) + 1
        if n_groups < 2:
            raise ValueError(f"protocol 'grouped' needs at least 2 images, the table has {n_groups}")
        placeholder = np.zeros((n, 1))
        for r in range(n_runs):
            gss = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed + r)
            train, test = next(gss.split(placeholder, groups=groups))
            yield train, test
    else:
        idx = np.arange(n)
        for r in range(n_runs):
            train, test = train_test_split(idx, test_size=test_size, random_state=seed + r)
            yield train, test


# ---------------------------------------------------------------------------------------------
# Models

#: Defaults of the meta classifier's logistic regression: L2 penalty with C = 1 (light on
#: standardised features with thousands of segments, and it keeps the fit well defined when
#: features are collinear, as E_rel and E_mean are), the deterministic lbfgs solver, and enough
#: iterations for a few hundred features.
DEFAULT_CLASSIFIER_PARAMS: Mapping[str, object] = types.MappingProxyType(
    {"C": 1.0, "solver": "lbfgs", "max_iter": 1000, "tol": 1e-4}
)


#: The meta models by name: linear (the default), histogram gradient boosting, a small MLP.
MODELS: tuple[str, ...] = ("linear", "gbt", "mlp")

#: Settings of the gradient boosting models (classifier and regressor): scikit-learn's defaults
#: with early stopping off, so that every fit uses all training rows and the same iterations.
GBT_PARAMS: Mapping[str, object] = types.MappingProxyType(
    {"max_iter": 100, "learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 20,
     "early_stopping": False}
)
#: Settings of the MLPs (classifier and regressor): two hidden ReLU layers of 64 and 32 units,
#: Adam, light L2 penalty; training stops when the training loss improves by less than ``tol``
#: for 10 epochs, after at most ``max_iter`` epochs (scikit-learn's default; no validation split,
#: which the few candidates of a small OoD dataset could not spare).
MLP_PARAMS: Mapping[str, object] = types.MappingProxyType(
    {"hidden_layer_sizes": (64, 32), "alpha": 1e-3, "learning_rate_init": 1e-3, "max_iter": 200,
     "tol": 1e-4, "early_stopping": False}
)


def check_models(models: Sequence[str] | str, what: str = "models") -> list[str]:
    """Validate a list of meta model names.

    Parameters
    ----------
    models : str or sequence of str
        Names from :data:`MODELS`.
    what : str
        How the caller calls the setting (e.g. ``"meta.models"``), named in the error.

    Returns
    -------
    list of str
        The names, duplicates removed, in their order.

    Raises
    ------
    ValueError
        An empty list or an unknown name.
    """
    names = [models] if isinstance(models, str) else list(models)
    if not names:
        raise ValueError(f"{what} is empty; choose from {list(MODELS)}")
    bad = [m for m in names if m not in MODELS]
    if bad:
        raise ValueError(f"{what}: unknown meta model(s) {bad}; choose from {list(MODELS)}")
    return list(dict.fromkeys(names))


def make_classifier(model: str = "linear", *, random_state: int = 0, **params) -> Pipeline:
    """The meta classifier: a two-step pipeline ``("scale", ...), ("model", ...)``.

    Parameters
    ----------
    model : {"linear", "gbt", "mlp"}, default "linear"
        ``"linear"``: ``StandardScaler`` + :class:`~sklearn.linear_model.LogisticRegression`;
        ``"gbt"``: ``"passthrough"`` + :class:`~sklearn.ensemble.HistGradientBoostingClassifier`
        with :data:`GBT_PARAMS`; ``"mlp"``: ``StandardScaler`` +
        :class:`~sklearn.neural_network.MLPClassifier` with :data:`MLP_PARAMS`.
    random_state : int, default 0
        Seed of the gbt/mlp models (the logistic regression's lbfgs solver is deterministic).
    **params
        Keyword arguments of the model overriding its defaults; for ``"linear"`` those of
        :data:`DEFAULT_CLASSIFIER_PARAMS` (``C=1.0, solver="lbfgs", max_iter=1000, tol=1e-4``;
        ``C=numpy.inf`` gives an unpenalised fit).
    """
    check_models([model], "model")
    if model == "linear":
        kw = dict(DEFAULT_CLASSIFIER_PARAMS)
        kw.update(params)
        return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(**kw))])
    if model == "gbt":
        kw = {**GBT_PARAMS, "random_state": random_state, **params}
        return Pipeline([("scale", "passthrough"), ("model", HistGradientBoostingClassifier(**kw))])
    kw = {**MLP_PARAMS, "random_state": random_state, **params}
    return Pipeline([("scale", StandardScaler()), ("model", MLPClassifier(**kw))])


def make_regressor(model: str = "linear", *, random_state: int = 0) -> Pipeline:
    """The meta regressor: ``("scale", ...), ("model", ...)`` as :func:`make_classifier`.

    ``"linear"``: ``StandardScaler`` + :class:`~sklearn.linear_model.LinearRegression`;
    ``"gbt"``: :class:`~sklearn.ensemble.HistGradientBoostingRegressor` (:data:`GBT_PARAMS`);
    ``"mlp"``: ``StandardScaler`` + :class:`~sklearn.neural_network.MLPRegressor`
    (:data:`MLP_PARAMS`). Predictions are to be clipped to [0, 1] (as :func:`evaluate` does).
    """
    check_models([model], "model")
    if model == "linear":
        return Pipeline([("scale", StandardScaler()), ("model", LinearRegression())])
    if model == "gbt":
        reg = HistGradientBoostingRegressor(**{**GBT_PARAMS, "random_state": random_state})
        return Pipeline([("scale", "passthrough"), ("model", reg)])
    reg = MLPRegressor(**{**MLP_PARAMS, "random_state": random_state})
    return Pipeline([("scale", StandardScaler()), ("model", reg)])


def fit_quietly(pipeline: Pipeline, X: np.ndarray, y: np.ndarray) -> str:
    """Fit ``pipeline`` and return a note when an MLP stopped at its epoch limit ("" otherwise).

    scikit-learn warns (``ConvergenceWarning``) when Adam reaches ``max_iter`` before the loss
    settles; the warning would repeat for every run, so it becomes a note of the result instead.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        pipeline.fit(X, y)
    converged = True
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            converged = False
        else:  # every other warning goes on as it came
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not converged:
        return f"{type(pipeline.named_steps['model']).__name__} stopped at max_iter before converging"
    return ""


# ---------------------------------------------------------------------------------------------
# Input checks


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


# ---------------------------------------------------------------------------------------------
# Evaluation

_METRICS = ("auroc", "accuracy", "r2", "sigma")
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
    proto = _protocol(protocol)
    y_all, iou_all = _check_targets(df, source)
    if min_inner:
        if "S_in" not in df.columns:
            raise ValueError("min_inner=True needs the column 'S_in'")
        keep = df["S_in"].to_numpy() > 0
        df, y_all, iou_all = df.loc[keep], y_all[keep], iou_all[keep]
        if len(df) == 0:
            raise ValueError("min_inner=True leaves no segment (every S_in is 0)")
    resolved = resolve_feature_sets(df, feature_sets)
    all_cols = list(dict.fromkeys(c for _, cols in resolved for c in cols))
    _check_features(df, all_cols, source)

    splits = list(split_indices(df, protocol, n_runs, seed, test_size))
    groups = _image_groups(df) if "frame_id" in df.columns else None
    params = dict(classifier_params or {})

    rows: list[dict] = []
    preds: list[pd.DataFrame] = []
    # One BLAS/OpenMP thread: meta tables are small, and gradient boosting's OpenMP threads on a
    # shared machine can be 20x slower than one thread (measured: 14 s against 0.5 s per fit).
    with threadpool_limits(limits=1):
        _fit_and_score(df, resolved, models, splits, groups, params, standardize, y_all, iou_all, proto, seed,
                       min_inner, return_predictions, rows, preds)
    results = pd.DataFrame(rows)
    if return_predictions:
        return results, pd.concat(preds, ignore_index=True)
    return results


def _fit_and_score(df, resolved, models, splits, groups, params, standardize, y_all, iou_all, proto, seed,
                   min_inner, return_predictions, rows, preds) -> None:
    """The loop of :func:`evaluate`: appends result rows and run-0 test predictions."""
    for fs, cols in resolved:
        X = df[cols].to_numpy(dtype=np.float64)
        if standardize == "all":
            X = StandardScaler().fit_transform(X)
        for model in models:
            for run, (train, test) in enumerate(splits):
                clf = make_classifier(model, random_state=seed + run, **(params if model == "linear" else {}))
                reg = make_regressor(model, random_state=seed + run)
                if standardize == "all":
                    clf.set_params(scale="passthrough")
                    reg.set_params(scale="passthrough")
                fit_notes = [fit_quietly(reg, X[train], iou_all[train])]
                classes = np.unique(y_all[train])
                clf_note = ""
                if classes.size < 2:
                    clf_note = (
                        f"classifier skipped: training part of run {run} has only iou0={bool(classes[0])}"
                    )
                else:
                    fit_notes.append(fit_quietly(clf, X[train], y_all[train]))
                fit_note = "; ".join(dict.fromkeys(n for n in fit_notes if n))
                for part, idx in (("train", train), ("test", test)):
                    y, iou = y_all[idx], iou_all[idx]
                    iou_pred = np.clip(reg.predict(X[idx]), 0.0, 1.0)
                    note = clf_note
                    auroc = accuracy = math.nan
                    p_iou0 = np.full(len(idx), np.nan)
                    if not clf_note:
                        p_iou0 = clf.predict_proba(X[idx])[:, list(clf.classes_).index(True)]
                        accuracy = float(accuracy_score(y, clf.predict(X[idx])))
                        if np.unique(y).size == 2:
                            auroc = float(roc_auc_score(y, p_iou0))
                        else:
                            note = f"AuROC undefined: {part} part of run {run} has only iou0={bool(y[0])}"
                    r2 = math.nan
                    if len(idx) >= 2 and np.ptp(iou) > 0:
                        r2 = float(r2_score(iou, iou_pred))
                    elif len(idx) >= 2:
                        # A constant target has no variance to explain: R² is undefined (scikit-learn
                        # would call a constant prediction of it a perfect 1.0).
                        note = "; ".join(n for n in (note, f"R² undefined: {part} part of run {run} has "
                                                           f"constant IoU = {iou[0]:.4g}") if n)
                    rows.append(
                        {
                            "protocol": proto.name,
                            "standardize": standardize,
                            "min_inner": bool(min_inner),
                            "seed": int(seed),
                            "feature_set": fs.name,
                            "model": model,
                            "run": run,
                            "part": part,
                            "n_segments": len(idx),
                            "n_frames": int(np.unique(groups[idx]).size) if groups is not None else -1,
                            "n_features": len(cols),
                            "iou0_rate": float(y.mean()),
                            "auroc": auroc,
                            "accuracy": accuracy,
                            "r2": r2,
                            "sigma": float(math.sqrt(mean_squared_error(iou, iou_pred))),
                            "note": "; ".join(n for n in (note, fit_note) if n),
                        }
                    )
                    if return_predictions and run == 0 and part == "test":
                        sub = df.iloc[idx]
                        p = pd.DataFrame({"feature_set": fs.name, "model": model, "run": run,
                                          "row": sub.index.to_numpy()})
                        for c in _PRED_ID_COLUMNS:
                            if c in sub.columns:
                                p[c] = sub[c].to_numpy()
                        p["iou"] = iou
                        p["iou_pred"] = iou_pred
                        p["iou0"] = y
                        p["p_iou0"] = p_iou0
                        preds.append(p)


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
    need = {"feature_set", "run", "part", *_METRICS}
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
        for metric in _METRICS:
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
