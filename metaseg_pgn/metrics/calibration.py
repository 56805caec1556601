"""Pixel-level calibration and sparsification metrics (the paper's Table 1).

- :func:`expected_calibration_error` / :class:`ECE`: 10 equal-width confidence bins over [0, 1],
  ``ECE = Σ_b (n_b / N) |accuracy_b − mean confidence_b|``, void pixels excluded.
- :func:`sparsification_curve`, :func:`oracle_curve`, :func:`ause` / :class:`AuSE`: the area
  between the sparsification curve of an uncertainty and the oracle's (Ilg et al. 2018,
  Gustafsson et al. 2020), with the error of every pixel kept paired with *its* uncertainty.
  (The authors' code averaged the uncertainty values instead of the errors, which makes AuSE
  independent of the pairing; this module does not.)
- :func:`brier_error`: per-pixel Brier score ``Σ_c (onehot(gt)_c − s_c)²``.
- :func:`confidence_from_score`: ``1 − score / max`` (the paper's confidence for entropy and
  PGN, with the maximum taken over the test data).

Conventions
-----------
Bins: edges ``numpy.linspace(0, 1, n_bins + 1)``; bin b holds ``edge_b <= c < edge_{b+1}``, the
last bin also holds c = 1. A confidence exactly on an inner edge belongs to the bin above it.

Sparsification: with N pixels, removing the fraction f removes the ``k = floor(f·N + 0.5)``
pixels (f·N rounded half up) with the highest uncertainty. Ties in uncertainty are broken by
position: among equal uncertainties the pixel that comes first (raster order, frames in the
order they were added) is removed first. This never looks at the error, so a tie cannot make
an uncertainty look better than it is.
"""

from __future__ import annotations

import numpy as np

DEFAULT_FRACTIONS: np.ndarray = np.arange(0, 1, 0.01)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _check_finite(a: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(a)):
        n = int(np.count_nonzero(~np.isfinite(a)))
        raise ValueError(f"{name} holds {n} NaN or inf values")


def _check_same_size(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na} has shape {a.shape} but {nb} has shape {b.shape}")


def _valid_mask(valid, shape, name: str = "valid") -> np.ndarray | None:
    if valid is None:
        return None
    v = np.asarray(valid)
    if v.dtype != bool:
        raise ValueError(f"{name} must be a boolean mask (True = evaluated pixel), got {v.dtype}")
    if v.shape != shape:
        raise ValueError(f"{name} has shape {v.shape} but the maps have shape {shape}")
    return v


def _valid_pixels(valid, **arrays) -> list[np.ndarray]:
    """The per-pixel ``arrays`` (all of the first one's shape) at the ``valid`` pixels, flattened.

    Parameters
    ----------
    valid : array_like of bool or None
        Pixels to keep, of the arrays' shape; None keeps every pixel.
    **arrays : array_like
        Name (used in the error messages) -> values, any shape, all the same shape.

    Returns
    -------
    list of ndarray, shape (N,)
        The arrays in the order given, dtypes kept.
    """
    names = list(arrays)
    values = [np.asarray(a) for a in arrays.values()]
    for name, a in zip(names[1:], values[1:]):
        _check_same_size(values[0], a, names[0], name)
    v = _valid_mask(valid, values[0].shape)
    if v is not None:
        values = [a[v] for a in values]
    return [a.ravel() for a in values]


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    trap = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    return float(trap(y, x))


# --------------------------------------------------------------------------------------------
# ECE
# --------------------------------------------------------------------------------------------


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="right" on the inner edges: a value equal to an edge goes to the bin above it;
    # 1.0 lands in the last bin.
    return np.searchsorted(edges[1:-1], confidence, side="right")


def _prepare_confidence(confidence, correct, valid=None):
    conf, corr = _valid_pixels(valid, confidence=confidence, correct=correct)
    conf = conf.astype(np.float64)
    if corr.dtype != bool:
        if not np.all((corr == 0) | (corr == 1)):
            raise ValueError("correct must be boolean or 0/1")
        corr = corr.astype(bool)
    _check_finite(conf, "confidence")
    if conf.size and (conf.min() < 0 or conf.max() > 1):
        raise ValueError(
            f"confidence must lie in [0, 1], got values in [{conf.min()}, {conf.max()}]"
        )
    return conf, corr


def _check_bins(n_bins: int) -> int:
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    return int(n_bins)


def reliability_diagram_data(confidence, correct, n_bins: int = 10, valid=None) -> dict:
    """Per-bin counts, accuracy and mean confidence.

    Parameters
    ----------
    confidence : array_like, any shape, real in [0, 1]
    correct : array_like, same shape, bool (or 0/1)
        Whether the prediction of the pixel is right.
    n_bins : int
        Equal-width bins over [0, 1] (see the module docstring for the edges).
    valid : array_like of bool, same shape, optional
        Pixels to evaluate (e.g. ``gt != 255``).

    Returns
    -------
    dict
        ``bin_edges`` (n_bins + 1,), ``counts`` (n_bins,) int64, ``accuracy`` and
        ``confidence`` (n_bins,) float64: mean over the bin's pixels, 0.0 for an empty bin
        (its count is 0, so it carries no weight).
    """
    n_bins = _check_bins(n_bins)
    conf, corr = _prepare_confidence(confidence, correct, valid)
    idx = _bin_index(conf, n_bins)
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_corr = np.bincount(idx, weights=corr.astype(np.float64), minlength=n_bins)
    return _diagram_from_sums(counts, sum_conf, sum_corr, n_bins)


def _diagram_from_sums(counts, sum_conf, sum_corr, n_bins) -> dict:
    denom = np.maximum(counts, 1)
    return {
        "bin_edges": np.linspace(0.0, 1.0, n_bins + 1),
        "counts": counts,
        "accuracy": np.where(counts > 0, sum_corr / denom, 0.0),
        "confidence": np.where(counts > 0, sum_conf / denom, 0.0),
    }


def _ece_from_diagram(d: dict) -> float:
    n = d["counts"].sum()
    if n == 0:
        raise ValueError("no pixel to evaluate: ECE is undefined")
    return float(np.sum(d["counts"] / n * np.abs(d["accuracy"] - d["confidence"])))


def expected_calibration_error(confidence, correct, n_bins: int = 10, valid=None) -> float:
    """Expected calibration error with equal-width bins, weighted by pixel count.

    Parameters
    ----------
    confidence : array_like, any shape, real in [0, 1]
    correct : array_like, same shape, bool (or 0/1)
    n_bins : int
    valid : array_like of bool, same shape, optional
        Pixels to evaluate; void pixels must be False.

    Returns
    -------
    float
        ``Σ_b (n_b / N) |acc_b − conf_b|``.

    Raises
    ------
    ValueError
        No pixel to evaluate, confidences outside [0, 1], NaN/inf, mismatched shapes.
    """
    return _ece_from_diagram(reliability_diagram_data(confidence, correct, n_bins, valid))


class ECE:
    """Streaming expected calibration error (exact: keeps per-bin sums only).

    Parameters
    ----------
    n_bins : int

    Examples
    --------
    >>> ece = ECE()
    >>> ece.update(np.array([0.9, 0.6]), np.array([True, False]))
    >>> round(ece.compute(), 6)
    0.35
    """

    def __init__(self, n_bins: int = 10):
        self.n_bins = _check_bins(n_bins)
        self.reset()

    def reset(self) -> None:
        self._counts = np.zeros(self.n_bins, dtype=np.int64)
        self._sum_conf = np.zeros(self.n_bins)
        self._sum_corr = np.zeros(self.n_bins)

    def update(self, confidence, correct, valid=None) -> None:
        """Add one frame: ``confidence`` and ``correct`` (H, W), ``valid`` (H, W) bool."""
        conf, corr = _prepare_confidence(confidence, correct, valid)
        idx = _bin_index(conf, self.n_bins)
        self._counts += np.bincount(idx, minlength=self.n_bins)
        self._sum_conf += np.bincount(idx, weights=conf, minlength=self.n_bins)
        self._sum_corr += np.bincount(idx, weights=corr.astype(np.float64), minlength=self.n_bins)

    def diagram(self) -> dict:
        """:func:`reliability_diagram_data` of everything added."""
        return _diagram_from_sums(self._counts.copy(), self._sum_conf, self._sum_corr, self.n_bins)

    def compute(self) -> float:
        return _ece_from_diagram(self.diagram())


# --------------------------------------------------------------------------------------------
# Brier error, confidence from a score
# --------------------------------------------------------------------------------------------


def brier_error(probs, gt, ignore_index: int = 255) -> np.ndarray:
    """Per-pixel Brier score ``Σ_c (onehot(gt)_c − s_c)²``.

    Parameters
    ----------
    probs : array_like, shape (C, H, W), real
        Softmax probabilities, channel first.
    gt : array_like, shape (H, W), integer
        Class ids 0..C-1, ``ignore_index`` for void.
    ignore_index : int

    Returns
    -------
    ndarray, shape (H, W), float64
        The error; void pixels hold 0.0 and must be left out with ``valid = gt != ignore_index``
        (the streaming metrics take that mask).
    """
    p = np.asarray(probs, dtype=np.float64)
    g = np.asarray(gt)
    if p.ndim != 3:
        raise ValueError(f"probs must have shape (C, H, W), got {p.shape}")
    if g.shape != p.shape[1:]:
        raise ValueError(f"gt has shape {g.shape} but probs has spatial shape {p.shape[1:]}")
    if not np.issubdtype(g.dtype, np.integer):
        raise ValueError(f"gt must be an integer map, got dtype {g.dtype}")
    _check_finite(p, "probs")
    void = g == ignore_index
    c = p.shape[0]
    bad = ~void & ((g < 0) | (g >= c))
    if bad.any():
        raise ValueError(
            f"gt holds class ids {np.unique(g[bad])[:10].tolist()} outside 0..{c - 1} "
            f"(void is {ignore_index})"
        )
    gi = np.where(void, 0, g).astype(np.intp)
    p_gt = np.take_along_axis(p, gi[None], axis=0)[0]
    err = np.sum(p * p, axis=0) - 2.0 * p_gt + 1.0
    err = np.maximum(err, 0.0)  # rounding can leave -1e-17
    err[void] = 0.0
    return err


def confidence_from_score(score, max_over_test: float) -> np.ndarray:
    """Confidence ``1 − score / max_over_test`` (the paper's normalisation of entropy and PGN).

    Parameters
    ----------
    score : array_like, real, >= 0
        An uncertainty score (higher = less confident).
    max_over_test : float
        The maximum of the score over the whole test data, > 0.

    Returns
    -------
    ndarray, float64, in [0, 1]

    Raises
    ------
    ValueError
        If ``max_over_test`` is not positive and finite, or a score lies outside
        [0, max_over_test] (the confidence would leave [0, 1]).
    """
    m = float(max_over_test)
    if not np.isfinite(m) or m <= 0:
        raise ValueError(f"max_over_test must be positive and finite, got {max_over_test}")
    s = np.asarray(score, dtype=np.float64)
    _check_finite(s, "score")
    if s.size and (s.min() < 0 or s.max() > m):
        raise ValueError(
            f"score must lie in [0, max_over_test={m}], got values in [{s.min()}, {s.max()}]"
        )
    return 1.0 - s / m


# --------------------------------------------------------------------------------------------
# Sparsification
# --------------------------------------------------------------------------------------------


def _check_fractions(fractions) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64).ravel()
    if f.size == 0:
        raise ValueError("fractions is empty")
    if not np.all(np.isfinite(f)) or f.min() < 0 or f.max() >= 1:
        raise ValueError("fractions must lie in [0, 1)")
    if np.any(np.diff(f) <= 0):
        raise ValueError("fractions must be strictly increasing")
    return f


def _n_removed(fractions: np.ndarray, n: int) -> np.ndarray:
    k = np.floor(fractions * n + 0.5).astype(np.int64)
    return np.minimum(k, n - 1)  # always keep at least one pixel


def _sparsification_input(valid=None, **arrays) -> list[np.ndarray]:
    """:func:`_valid_pixels`, each checked finite, at least one pixel."""
    values = _valid_pixels(valid, **arrays)
    for name, a in zip(arrays, values):
        _check_finite(a, name)
    if values[0].size == 0:
        raise ValueError("no pixel to evaluate: the sparsification curve is undefined")
    return values


def _curve_by_order(error: np.ndarray, order: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    # order: pixels sorted by "remove first"; mean error of the pixels after the first k.
    e_sorted = error[order].astype(np.float64)
    n = e_sorted.size
    tail = np.concatenate([np.cumsum(e_sorted[::-1])[::-1], [0.0]])  # tail[k] = Σ e_sorted[k:]
    k = _n_removed(fractions, n)
    return tail[k] / (n - k)


def sparsification_curve(
    uncertainty, error, fractions=DEFAULT_FRACTIONS, valid=None
) -> np.ndarray:
    """Mean error of the pixels left after removing the most uncertain fraction f.

    Parameters
    ----------
    uncertainty : array_like, any shape, real (higher = more uncertain)
    error : array_like, same shape, real
        The per-pixel error (e.g. :func:`brier_error`), paired pixel by pixel with
        ``uncertainty``.
    fractions : array_like, shape (F,), strictly increasing, in [0, 1)
    valid : array_like of bool, same shape, optional

    Returns
    -------
    ndarray, shape (F,), float64
        ``curve[i]`` = mean error of the ``N − k_i`` kept pixels, ``k_i = floor(f_i·N + 0.5)``
        (at most N − 1). Ties in uncertainty: the earlier pixel is removed first.
    """
    f = _check_fractions(fractions)
    u, e = _sparsification_input(valid, uncertainty=uncertainty, error=error)
    order = np.argsort(-u.astype(np.float64), kind="stable")
    return _curve_by_order(e, order, f)


def oracle_curve(error, fractions=DEFAULT_FRACTIONS, valid=None) -> np.ndarray:
    """The sparsification curve when pixels are removed by highest error (the best possible).

    Parameters and result as :func:`sparsification_curve` (ties do not change the values).
    """
    f = _check_fractions(fractions)
    (e,) = _sparsification_input(valid, error=error)
    order = np.argsort(-e.astype(np.float64), kind="stable")
    return _curve_by_order(e, order, f)


def ause(
    uncertainty, error, fractions=DEFAULT_FRACTIONS, valid=None, return_curves: bool = False
):
    """Area under the sparsification error: area between the normalised curve and oracle.

    Both curves are divided by the oracle's value at f = 0 (the mean error of all pixels);
    the area is the trapezoid of ``curve − oracle`` over ``fractions``.

    Parameters
    ----------
    uncertainty, error, fractions, valid
        As :func:`sparsification_curve`.
    return_curves : bool
        Also return the normalised curves.

    Returns
    -------
    float, or (float, dict)
        AuSE; with ``return_curves`` a dict ``fractions``, ``curve``, ``oracle`` (normalised).
        When every pixel has the same error (all 0, or every prediction equally wrong) there is
        nothing to sort and AuSE is undefined: NaN (curves of zeros), never a perfect 0.
    """
    f = _check_fractions(fractions)
    u, e = _sparsification_input(valid, uncertainty=uncertainty, error=error)
    if np.any(e < 0):
        raise ValueError("error must be non-negative")
    curve = _curve_by_order(e, np.argsort(-u.astype(np.float64), kind="stable"), f)
    oracle = _curve_by_order(e, np.argsort(-e.astype(np.float64), kind="stable"), f)
    norm = float(np.mean(e.astype(np.float64)))
    if np.ptp(e) > 0:
        curve, oracle = curve / norm, oracle / norm
        value = _trapezoid(curve - oracle, f)
    else:
        curve, oracle = np.zeros_like(curve), np.zeros_like(oracle)
        value = float("nan")
    if return_curves:
        return value, {"fractions": f, "curve": curve, "oracle": oracle}
    return value


def _fits(values: np.ndarray, dtype: np.dtype) -> bool:
    """Whether every value survives a cast to the floating ``dtype`` without overflow or
    flushing a non-zero value to a subnormal/zero (ordering then holds up to rounding)."""
    if values.size == 0 or values.dtype.itemsize <= np.dtype(dtype).itemsize:
        return True
    info = np.finfo(dtype)
    a = np.abs(values.astype(np.float64, copy=False))
    nonzero = a[a > 0]
    return bool(a.max() <= info.max and (nonzero.size == 0 or nonzero.min() >= info.tiny))


class AuSE:
    """Streaming AuSE: keeps the (uncertainty, error) pairs of the evaluated pixels.

    Parameters
    ----------
    fractions : array_like
        As :func:`sparsification_curve`.
    dtype : numpy dtype
        Storage of uncertainty and error (float32 by default: 8 bytes per pixel; rounding to
        float32 can create ties in uncertainty, broken by position as documented). An
        uncertainty that float32 cannot hold (|u| above ~3.4e38, or a non-zero |u| below its
        smallest normal ~1.2e-38, as PGN with p = 0.1 at the deeper layer reaches) switches the
        uncertainty storage to float64 for everything added, so no value becomes inf or 0.
    max_pixels_per_frame : int, optional
        Keep a uniform random subset of at most this many evaluated pixels per frame (drawn
        with a generator seeded by ``seed`` and the frame's running index, so results are
        reproducible). None keeps all.
    seed : int

    Examples
    --------
    >>> m = AuSE()
    >>> m.update(np.array([0.1, 0.9]), np.array([0.0, 1.0]))
    >>> m.compute()
    0.0
    """

    def __init__(
        self,
        fractions=DEFAULT_FRACTIONS,
        dtype=np.float32,
        max_pixels_per_frame: int | None = None,
        seed: int = 0,
    ):
        self.fractions = _check_fractions(fractions)
        self.dtype = np.dtype(dtype)
        if max_pixels_per_frame is not None and int(max_pixels_per_frame) < 1:
            raise ValueError("max_pixels_per_frame must be a positive integer or None")
        self.max_pixels_per_frame = max_pixels_per_frame
        self.seed = int(seed)
        self.reset()

    def reset(self) -> None:
        self._u: list[np.ndarray] = []
        self._e: list[np.ndarray] = []
        self._u_dtype = self.dtype

    def update(self, uncertainty, error, valid=None) -> None:
        """Add one frame: ``uncertainty`` and ``error`` (H, W), ``valid`` (H, W) bool."""
        u, e = _sparsification_input(valid, uncertainty=uncertainty, error=error)
        if np.any(e < 0):
            raise ValueError("error must be non-negative")
        if self.max_pixels_per_frame is not None and u.size > self.max_pixels_per_frame:
            rng = np.random.default_rng([self.seed, len(self._u)])
            keep = np.sort(rng.choice(u.size, size=self.max_pixels_per_frame, replace=False))
            u, e = u[keep], e[keep]
        if self._u_dtype != np.float64 and not _fits(u, self._u_dtype):
            self._u_dtype = np.dtype(np.float64)
            self._u = [a.astype(np.float64) for a in self._u]
        self._u.append(u.astype(self._u_dtype))
        self._e.append(e.astype(self.dtype))

    def compute(self, return_curves: bool = False):
        """AuSE of all pixels added (see :func:`ause`)."""
        if not self._u:
            raise ValueError("no frame was added")
        return ause(
            np.concatenate(self._u), np.concatenate(self._e), self.fractions,
            return_curves=return_curves,
        )
