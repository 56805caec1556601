"""Feature sets: named selections of the segment table's feature columns by regular expressions.

The column vocabulary of the segment table (``docs/architecture.md``), :class:`FeatureSet` and the
built-in sets of the PGN paper's Figure 3 (:func:`builtin_feature_sets`). Identity and target
columns (:data:`NON_FEATURE_COLUMNS`) never enter a feature set: MetaSeg uses the class
probabilities ``cprob_*``, not the predicted class.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

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
        """The selected column names among ``columns``, in their order (no check, may be empty).

        pandas matches each pattern against all names (``Index.str.fullmatch``); a name that is
        not a string is never selected. Not scikit-learn's ``make_column_selector``: it searches
        (``re.search``) with a single pattern and cannot exclude, and joining a set's patterns into
        one anchored alternation would renumber their groups and displace inline flags.
        """
        inc, exc, _ = self._compiled
        names = pd.Index([c for c in columns if isinstance(c, str)], dtype=object)
        keep = _matches(names, inc) & ~_matches(names, exc) & ~_matches(names, (_NON_FEATURE_RE,))
        return names[keep].tolist()

    def missing_requirements(self, columns: Iterable) -> list[str]:
        """The ``require`` patterns that no selected column among ``columns`` matches."""
        selected = pd.Index(self.select(columns), dtype=object)
        return [p.pattern for p in self._compiled[2] if not _matches(selected, (p,)).any()]

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


def _matches(names: pd.Index, patterns: Iterable[re.Pattern]) -> np.ndarray:
    """Whether each of the string ``names`` fully matches one of ``patterns``: (len(names),) bool."""
    hit = np.zeros(len(names), dtype=bool)
    for p in patterns:
        hit |= np.asarray(names.str.fullmatch(p), dtype=bool)
    return hit


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

