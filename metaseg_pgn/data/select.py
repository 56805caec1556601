"""The datasets of a run, from its configuration: which ones, their folder names, their OoD track.

A run evaluates one (semantic) dataset, ``cfg["dataset"]``, unless it is ``dataset=none``, and any
number of OoD datasets, ``cfg["ood_datasets"]``. Every dataset configuration is a dict with the
dataset's ``name`` (see :func:`metaseg_pgn.data.registry.get_dataset`) and its adapter's arguments.
"""

from __future__ import annotations

from metaseg_pgn.data.base import DataError, SegmentationDataset
from metaseg_pgn.data.registry import get_dataset
from metaseg_pgn.paths import UnsafeNameError, plain_name

NO_DATASET = "none"  # dataset=none: a pipeline without an evaluated dataset (only OoD sets)

#: The two tracks of SegmentMeIfYouCan: their component metrics differ.
TRACKS = ("obstacle", "anomaly")


def evaluated_dataset(cfg: dict) -> dict | None:
    """The configuration of the evaluated (semantic) dataset, or None under ``dataset=none``.

    A pipeline that only evaluates OoD sets (``pipeline=smiyc``) has no evaluated dataset; the
    stages that need one (``features``, ``meta``, ``pixel_eval``) then skip themselves.
    """
    ds = cfg.get("dataset")
    if not ds or ds.get("name") in (None, NO_DATASET):
        return None
    return ds


def dataset_configs(cfg: dict) -> list[dict]:
    """The evaluated dataset (if any, see :func:`evaluated_dataset`) followed by the OoD datasets."""
    main = evaluated_dataset(cfg)
    return [*([main] if main is not None else []), *cfg.get("ood_datasets", [])]


def dataset_key(ds_cfg: dict) -> str:
    """A folder name for one dataset and split, e.g. ``synthetic-val`` (plain names only).

    Raises
    ------
    DataError
        A name or split that is not a plain name (it would place files outside their folder).
    """
    split = ds_cfg.get("split") or ds_cfg.get("track") or "all"
    try:
        name = plain_name(ds_cfg["name"], "dataset name")
        split = plain_name(split, f"dataset {ds_cfg['name']!r} split")
    except UnsafeNameError as e:
        raise DataError(str(e)) from None
    return f"{name}-{split}"


def name_split(ds_cfg: dict) -> tuple[str, str]:
    """The dataset's name and split as the feature table's partition columns name them."""
    return ds_cfg["name"], str(ds_cfg.get("split") or ds_cfg.get("track") or "all")


def make_dataset(ds_cfg: dict) -> SegmentationDataset:
    """The dataset of one configuration entry (``size`` given as a list becomes a tuple)."""
    kwargs = {k: v for k, v in ds_cfg.items() if k != "name"}
    if "size" in kwargs and kwargs["size"] is not None:
        kwargs["size"] = tuple(kwargs["size"])
    return get_dataset(ds_cfg["name"], **kwargs)


def ood_track(ds: SegmentationDataset, ds_cfg: dict) -> str | None:
    """The SegmentMeIfYouCan track of a dataset: the adapter's ``track``, else the configuration's
    ``track``; None when neither names one of :data:`TRACKS` (an in-distribution dataset)."""
    track = getattr(ds, "track", None) or ds_cfg.get("track")
    return track if track in TRACKS else None
