"""Meta models: the classifiers of IoU = 0 and regressors of the IoU, by name, and quiet fitting.

``"linear"`` (the default, MetaSeg's: ``Pipeline([StandardScaler(), LogisticRegression()])`` and
``Pipeline([StandardScaler(), LinearRegression()])``), ``"gbt"`` (scikit-learn's histogram
gradient boosting, as the time-dynamic MetaSeg follow-up; no scaler, it bins each feature) and
``"mlp"`` (a small fully connected network after a ``StandardScaler``). Every model is a two-step
pipeline ``("scale", ...), ("model", ...)``.
"""

from __future__ import annotations

import types
import warnings
from typing import Mapping, Sequence

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["DEFAULT_CLASSIFIER_PARAMS", "MODELS", "GBT_PARAMS", "MLP_PARAMS", "check_models", "make_classifier",
           "make_regressor", "fit_quietly"]

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

