"""Readable names of score maps, meta feature sets and meta models, and their families.

One place for every label the report, the README script and the figures show: score maps
(``V``, ``E``, ``mcd_MI``, ``pgn_last_oh_p2``, ...), the meta feature sets of
:mod:`metaseg_pgn.meta` (``metaseg``, ``pgn_uni_p0_5``, ...) and of :mod:`metaseg_pgn.ood_meta`
(``softmax``, ``pgn``, ``softmax+pgn``), the meta models, and the family of each (a key of
:data:`metaseg_pgn.plots.FAMILY_COLORS`).
"""

from __future__ import annotations

import re
from typing import Iterable

_NAMES = {"V": "max softmax", "E": "entropy", "D": "probability margin",
          "mcd_E": "MC dropout entropy", "mcd_MI": "MC dropout MI",
          "ens_E": "ensemble entropy", "ens_MI": "ensemble MI"}
_PGN_LABELS = {"oh": "one-hot", "uni": "uniform"}
_PGN_MAP = re.compile(r"pgn_(last|deep)_(oh|uni)_p([0-9_]+)")
_PGN_SET = re.compile(r"pgn_(oh|uni)(?:_p([0-9_]+))?")

#: Readable names of the meta feature sets that are not one PGN label at one p.
FEATURE_SET_LABELS = {"metaseg": "MetaSeg", "metaseg+pgn": "MetaSeg + PGN", "pgn_all": "PGN, all maps",
                      "pgn_oh": "PGN one-hot, all p", "pgn_uni": "PGN uniform, all p", "entropy": "entropy",
                      "max_softmax": "max softmax", "mcd": "MC dropout", "ensemble": "ensemble"}
_FEATURE_SET_FAMILIES = {"metaseg": "MetaSeg", "metaseg+pgn": "MetaSeg + PGN", "pgn_all": "PGN",
                         "entropy": "entropy", "max_softmax": "max softmax", "mcd": "MC dropout",
                         "ensemble": "ensemble"}
#: The order of the paper's Figure 3 (the PGN sets of one label, by p, take ranks 1 and 2).
_FEATURE_SET_RANKS = {"metaseg": 0, "pgn_all": 3, "metaseg+pgn": 4, "entropy": 5, "max_softmax": 6, "mcd": 7,
                      "ensemble": 8}

#: The meta models of :data:`metaseg_pgn.meta.MODELS`.
MODEL_LABELS = {"linear": "linear (logistic / linear regression)", "gbt": "gradient boosting",
                "mlp": "MLP (64, 32)"}
#: The feature sets of :data:`metaseg_pgn.ood_meta.OOD_FEATURE_SETS`, with what they hold.
OOD_SET_LABELS = {"softmax": "softmax (E, D, V, sizes, class probabilities: Meta-OoD)",
                  "pgn": "PGN (every PGN map, sizes)", "softmax+pgn": "softmax + PGN"}


def _pgn_text(label: str, p: str) -> str:
    return f"PGN {_PGN_LABELS[label]}, p = {p.replace('_', '.')}"


def method_label(method: str) -> str:
    """A readable name of a score map, e.g. ``pgn_last_uni_p0_5`` → ``PGN uniform, p = 0.5``."""
    if method in _NAMES:
        return _NAMES[method]
    if m := _PGN_MAP.fullmatch(method):
        layer, label, p = m.groups()
        return _pgn_text(label, p) + (" (deeper layer)" if layer == "deep" else "")
    return method


def method_names(record) -> list[str]:
    """The score maps of a record (:class:`metaseg_pgn.store.Record`) that the evaluations compare,
    in table order: max softmax ``V``, entropy ``E``, the sampling baselines, the PGN maps."""
    return ["V", "E", *record.baseline_names, *record.pgn_names]


def method_family(method: str) -> str:
    """The family of a score map (``max softmax``, ``PGN uniform``, ...; ``other`` if unknown)."""
    if method == "V":
        return "max softmax"
    if method == "E":
        return "entropy"
    if method.startswith("mcd_"):
        return "MC dropout"
    if method.startswith("ens_"):
        return "ensemble"
    if method.startswith("pgn_"):
        return "PGN one-hot" if "_oh_" in method else "PGN uniform"
    return "other"


def feature_set_label(name: str) -> str:
    """A readable name of a meta feature set (``metaseg``, ``pgn_oh_p0_5``, ...)."""
    if name in FEATURE_SET_LABELS:
        return FEATURE_SET_LABELS[name]
    if (m := _PGN_SET.fullmatch(name)) and m.group(2):
        return _pgn_text(m.group(1), m.group(2))
    return name


def feature_set_family(name: str) -> str:
    """The family of a meta feature set (``MetaSeg``, ``PGN one-hot``, ...; ``other`` if unknown)."""
    if name in _FEATURE_SET_FAMILIES:
        return _FEATURE_SET_FAMILIES[name]
    if name.startswith("pgn_oh"):
        return "PGN one-hot"
    if name.startswith("pgn_uni"):
        return "PGN uniform"
    return "other"


def ood_set_label(name: str, short: bool = True) -> str:
    """A readable name of an ``ood_meta`` feature set; ``short`` leaves out what it holds."""
    label = OOD_SET_LABELS.get(name, name)
    return label.split(" (")[0] if short else label


def _feature_set_rank(name: str) -> tuple:
    """Sort key of the paper's Figure 3: MetaSeg, PGN families, MetaSeg + PGN, single scores."""
    if name in _FEATURE_SET_RANKS:
        return (_FEATURE_SET_RANKS[name], -1.0)
    if m := _PGN_SET.fullmatch(name):
        return (1 if m.group(1) == "oh" else 2, float(m.group(2).replace("_", ".")) if m.group(2) else -1.0)
    return (9, 0.0)


def order_feature_sets(names: Iterable[str]) -> list[str]:
    """Feature sets in the report's order (unknown, custom sets last, in their given order)."""
    names = list(names)
    return sorted(names, key=lambda n: (*_feature_set_rank(n), names.index(n)))
