"""Datasets by name: ``get_dataset("cityscapes", root=..., split="val")``.

The factories import their adapter only when called, so a dataset whose module is missing (or
needs something not installed) does not stop the others from working.
"""

from __future__ import annotations

from typing import Any, Callable

from metaseg_pgn.data.base import SegmentationDataset


def _synthetic(**kwargs: Any) -> SegmentationDataset:
    from metaseg_pgn.data.synthetic import SyntheticStreets

    return SyntheticStreets(**kwargs)


def _synthetic_ood(track: str) -> Callable[..., SegmentationDataset]:
    def factory(**kwargs: Any) -> SegmentationDataset:
        from metaseg_pgn.data.synthetic import SyntheticOoD

        given = kwargs.pop("track", track)
        if given != track:
            raise ValueError(f"dataset 'synthetic_{track}' has track {track!r}, got track={given!r}")
        return SyntheticOoD(track=track, **kwargs)

    return factory


def _cityscapes(**kwargs: Any) -> SegmentationDataset:
    from metaseg_pgn.data.cityscapes import Cityscapes

    return Cityscapes(**kwargs)


def _smiyc(class_name: str) -> Callable[..., SegmentationDataset]:
    def factory(**kwargs: Any) -> SegmentationDataset:
        from metaseg_pgn.data import smiyc

        return getattr(smiyc, class_name)(**kwargs)

    return factory


def _folder(**kwargs: Any) -> SegmentationDataset:
    from metaseg_pgn.data.folder import ImageFolder

    return ImageFolder(**kwargs)


_FACTORIES: dict[str, Callable[..., SegmentationDataset]] = {
    "synthetic": _synthetic,
    "synthetic_obstacle": _synthetic_ood("obstacle"),
    "synthetic_anomaly": _synthetic_ood("anomaly"),
    "cityscapes": _cityscapes,
    "road_anomaly21": _smiyc("RoadAnomaly21"),
    "road_obstacle21": _smiyc("RoadObstacle21"),
    "lost_and_found": _smiyc("LostAndFound"),
    "fishyscapes_laf": _smiyc("FishyscapesLAF"),
    "folder": _folder,
}


def dataset_names() -> list[str]:
    """The names :func:`get_dataset` knows, sorted."""
    return sorted(_FACTORIES)


def register_dataset(name: str, factory: Callable[..., SegmentationDataset]) -> None:
    """Make ``get_dataset(name, **kwargs)`` call ``factory(**kwargs)``.

    Parameters
    ----------
    name : str
        A new name; registering a known name again raises ValueError.
    factory : callable
        Returns a :class:`~metaseg_pgn.data.base.SegmentationDataset`.
    """
    if name in _FACTORIES:
        raise ValueError(f"dataset {name!r} is already registered")
    _FACTORIES[name] = factory


def get_dataset(name: str, **kwargs: Any) -> SegmentationDataset:
    """Build a dataset by name.

    Parameters
    ----------
    name : str
        One of :func:`dataset_names`: ``synthetic``, ``synthetic_obstacle``,
        ``synthetic_anomaly``, ``cityscapes``, ``road_anomaly21``, ``road_obstacle21``,
        ``lost_and_found``, ``fishyscapes_laf``, ``folder``, or a registered name.
    **kwargs
        The adapter's arguments (``root``, ``split``, ...).

    Returns
    -------
    SegmentationDataset

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known names.
    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}") from None
    return factory(**kwargs)
