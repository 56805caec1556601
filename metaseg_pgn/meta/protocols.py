"""Split protocols: how the segments of a table are split into training and test parts per run.

``"grouped"`` (the default) keeps every image on one side (``GroupShuffleSplit``); the anchors'
protocols ``"pgn_authors"`` (80/20) and ``"metaseg"`` (50/50) split per segment (``ShuffleSplit``,
the splitter behind ``train_test_split``) and leak across images. Run ``r`` draws with
``random_state = seed + r``.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit

__all__ = ["Protocol", "PROTOCOLS", "get_protocol", "image_groups", "split_indices"]


@dataclass(frozen=True)
class Protocol:
    """A split protocol: default number of runs, test fraction, and whether splits are by image."""

    name: str
    n_runs: int
    test_size: float
    grouped: bool
    description: str

    def splitter(self, test_size: float, random_state: int) -> GroupShuffleSplit | ShuffleSplit:
        """The scikit-learn splitter of one run: ``GroupShuffleSplit`` (by image) or ``ShuffleSplit``.

        ``ShuffleSplit(test_size, random_state)`` draws the same indices as the anchors'
        ``train_test_split(range(n), test_size=..., random_state=...)``, which runs it.
        """
        cls = GroupShuffleSplit if self.grouped else ShuffleSplit
        return cls(n_splits=1, test_size=test_size, random_state=random_state)


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


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name`` (ValueError listing the names otherwise)."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; choose one of {list(PROTOCOLS)}") from None


def image_groups(df: pd.DataFrame) -> np.ndarray:
    """Integer image codes of the segments, numbered in sorted order of (dataset, split, frame_id).

    Returns
    -------
    numpy.ndarray, shape (len(df),), int64
        Keys that ``df`` lacks (``dataset``, ``split``) are left out of the image key.

    Raises
    ------
    ValueError
        ``df`` has no ``frame_id`` column.
    """
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
        See :data:`PROTOCOLS` and the package docstring.
    n_runs : int, optional
        Number of runs; default the protocol's (5, 5, 10).
    seed : int, default 0
        Run ``r`` uses ``random_state = seed + r`` (with ``seed=0`` the anchors' "seed r"), one
        splitter per run: a single splitter with ``n_splits=n_runs`` would draw the runs after
        the first from one random stream and change the anchors' splits.
    test_size : float, optional
        Test fraction; default the protocol's (0.2, 0.2, 0.5). For ``"grouped"`` it is the fraction
        of images (``GroupShuffleSplit``), otherwise of segments (``ShuffleSplit``).

    Yields
    ------
    train_idx, test_idx : ndarray of int
        In the order scikit-learn draws them (sorted for ``"grouped"``, shuffled otherwise).
        Grouped splits key images by (``dataset``, ``split``, ``frame_id``) where those exist.
    """
    proto = get_protocol(protocol)
    n_runs = proto.n_runs if n_runs is None else int(n_runs)
    test_size = proto.test_size if test_size is None else test_size
    if n_runs < 1:
        raise ValueError(f"n_runs must be at least 1, got {n_runs}")
    n = len(df)
    if n < 2:
        raise ValueError(f"protocol {protocol!r} needs at least 2 segments, the table has {n}")
    groups = None
    if proto.grouped:
        groups = image_groups(df)
        n_groups = int(groups.max()) + 1
        if n_groups < 2:
            raise ValueError(f"protocol 'grouped' needs at least 2 images, the table has {n_groups}")
    placeholder = np.zeros((n, 1))
    for r in range(n_runs):
        yield next(proto.splitter(test_size, seed + r).split(placeholder, groups=groups))
