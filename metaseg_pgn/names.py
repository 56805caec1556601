"""Readable names of the score maps (``V``, ``E``, ``mcd_MI``, ``pgn_last_oh_p2``, ...)."""

from __future__ import annotations

import re

_NAMES = {"V": "max softmax", "E": "entropy", "D": "probability margin",
          "mcd_E": "MC dropout entropy", "mcd_MI": "MC dropout MI",
          "ens_E": "ensemble entropy", "ens_MI": "ensemble MI"}


def method_label(method: str) -> str:
    """A readable name of a score map, e.g. ``pgn_last_uni_p0_5`` → ``PGN uniform, p = 0.5``."""
    if method in _NAMES:
        return _NAMES[method]
    if m := re.fullmatch(r"pgn_(last|deep)_(oh|uni)_p([0-9_]+)", method):
        layer, label, p = m.groups()
        text = f"PGN {'one-hot' if label == 'oh' else 'uniform'}, p = {p.replace('_', '.')}"
        return text + (" (deeper layer)" if layer == "deep" else "")
    return method


def method_names(record) -> list[str]:
    """The score maps of a record (:class:`metaseg_pgn.store.Record`) that the evaluations compare,
    in table order: max softmax ``V``, entropy ``E``, the sampling baselines, the PGN maps."""
    return ["V", "E", *record.baseline_names, *record.pgn_names]
