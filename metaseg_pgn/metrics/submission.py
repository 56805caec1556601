"""Anomaly scores in the SegmentMeIfYouCan benchmark's layout, under the benchmark's names.

One file per frame: ``{root}/anomaly_p/{method}/{folder}/{frame_id}.hdf5`` holding the dataset
``value``, an ``(H, W)`` float16 map (gzip-compressed, as the benchmark writes it). Files are
written atomically (:func:`metaseg_pgn.io.atomic_write`), so a reader never sees half a file.
A frame id may contain ``/`` (sub-folders, as in Cityscapes-style ids) but no ``..`` component
and no leading ``/``.

The names (this module is the one place that maps ours to the benchmark's):

- :data:`BENCHMARK_DATASETS`: the benchmark's dataset names, which its CLI takes
  (``python -m road_anomaly_benchmark metric PixBinaryClass METHOD ObstacleTrack-validation``);
- :data:`BENCHMARK_FOLDERS`: the folder the benchmark reads each dataset's scores from. It is
  the frame's ``dset_name``, i.e. the dataset's ``name_for_persistence``: every ObstacleTrack
  split reads ``ObstacleTrack-all``, the AnomalyTrack splits ``AnomalyTrack-all`` (they are
  subsets of it), ``LostAndFound-testNoKnown`` reads ``LostAndFound-test``, and the Fishyscapes
  LAF frames, being LostAndFound frames, read ``LostAndFound-train`` or ``LostAndFound-test``
  after the LostAndFound split that holds the frame (the benchmark's README: "run inference for
  AnomalyTrack-all, ObstacleTrack-all, LostAndFound-test, LostAndFound-train, as the other
  splits are subsets of those");
- :data:`OUR_DATASETS`: our (dataset name, split) -> the benchmark's dataset name.

An export written with :func:`submission_folder` is read by the benchmark's CLI as it is."""

from __future__ import annotations

import io
import os
from pathlib import Path

import h5py
import numpy as np

from metaseg_pgn.io import atomic_write
from metaseg_pgn.paths import plain_name

DATASET = "value"
SUFFIX = ".hdf5"

#: The benchmark's dataset names (docs/design.md §6a; ``night`` and ``snowstorm`` are further
#: ObstacleTrack splits of its registry).
BENCHMARK_DATASETS: tuple[str, ...] = (
    "AnomalyTrack-all", "AnomalyTrack-validation", "AnomalyTrack-test",
    "ObstacleTrack-all", "ObstacleTrack-validation", "ObstacleTrack-test",
    "ObstacleTrack-night", "ObstacleTrack-snowstorm",
    "LostAndFound-test", "LostAndFound-testNoKnown", "LostAndFound-train",
    "FishyLAFAnomaly-val", "FishyLAFObstacle-val",
)

#: Marks a dataset whose frames are LostAndFound frames: the folder is ``LostAndFound-{split}``
#: with the LostAndFound split that holds the frame.
LAF_SPLIT_FOLDER = "LostAndFound-{laf_split}"

#: Folder under ``anomaly_p/{method}/`` from which the benchmark reads each dataset's scores.
BENCHMARK_FOLDERS: dict[str, str] = {
    "AnomalyTrack-all": "AnomalyTrack-all",
    "AnomalyTrack-validation": "AnomalyTrack-all",
    "AnomalyTrack-test": "AnomalyTrack-all",
    "ObstacleTrack-all": "ObstacleTrack-all",
    "ObstacleTrack-validation": "ObstacleTrack-all",
    "ObstacleTrack-test": "ObstacleTrack-all",
    "ObstacleTrack-night": "ObstacleTrack-all",
    "ObstacleTrack-snowstorm": "ObstacleTrack-all",
    "LostAndFound-test": "LostAndFound-test",
    "LostAndFound-testNoKnown": "LostAndFound-test",
    "LostAndFound-train": "LostAndFound-train",
    "FishyLAFAnomaly-val": LAF_SPLIT_FOLDER,
    "FishyLAFObstacle-val": LAF_SPLIT_FOLDER,
}

#: The folders the benchmark reads at all.
BENCHMARK_FOLDER_NAMES: frozenset[str] = frozenset(
    {f for f in BENCHMARK_FOLDERS.values() if f != LAF_SPLIT_FOLDER}
)

#: Our datasets (registry name, split as the dataset object reports it) -> benchmark dataset.
OUR_DATASETS: dict[tuple[str, str], str] = {
    ("road_anomaly21", "all"): "AnomalyTrack-all",
    ("road_anomaly21", "validation"): "AnomalyTrack-validation",
    ("road_anomaly21", "test"): "AnomalyTrack-test",
    ("road_obstacle21", "all"): "ObstacleTrack-all",
    ("road_obstacle21", "validation"): "ObstacleTrack-validation",
    ("road_obstacle21", "test"): "ObstacleTrack-test",
    ("road_obstacle21", "night"): "ObstacleTrack-night",
    ("road_obstacle21", "snowstorm"): "ObstacleTrack-snowstorm",
    ("lost_and_found", "test"): "LostAndFound-test",
    ("lost_and_found", "test_no_known"): "LostAndFound-testNoKnown",
    ("lost_and_found", "train"): "LostAndFound-train",
    ("fishyscapes_laf", "val"): "FishyLAFAnomaly-val",
}


def benchmark_dataset(name: str, split: str) -> str | None:
    """The benchmark's name of our dataset ``name`` / ``split`` (None: not a benchmark split)."""
    return OUR_DATASETS.get((str(name), str(split)))


def submission_folder(dataset, frame_id: str) -> str | None:
    """The folder under ``anomaly_p/{method}/`` where the benchmark looks for this frame.

    Parameters
    ----------
    dataset : object with ``name`` and ``split``
        One of our datasets; Fishyscapes LAF also needs ``laf_split(frame_id)`` (the
        LostAndFound split, ``"train"`` or ``"test"``, holding the frame's image).
    frame_id : str

    Returns
    -------
    str or None
        A name of :data:`BENCHMARK_FOLDER_NAMES`; None when the dataset is not one of the
        benchmark's (e.g. the synthetic OoD sets).
    """
    bench = benchmark_dataset(dataset.name, dataset.split)
    if bench is None:
        return None
    folder = BENCHMARK_FOLDERS[bench]
    if folder == LAF_SPLIT_FOLDER:
        folder = folder.format(laf_split=dataset.laf_split(frame_id))
    if folder not in BENCHMARK_FOLDER_NAMES:
        raise ValueError(f"{bench}: frame {frame_id!r} maps to folder {folder!r}, which the "
                         f"benchmark does not read (known: {sorted(BENCHMARK_FOLDER_NAMES)})")
    return folder


def submission_path(root: str | os.PathLike, method: str, split: str, frame_id: str) -> Path:
    """``{root}/anomaly_p/{method}/{split}/{frame_id}.hdf5``."""
    return (
        Path(root)
        / "anomaly_p"
        / plain_name(method, "method")
        / plain_name(split, "split")
        / f"{plain_name(frame_id, 'frame_id', allow_slash=True)}{SUFFIX}"
    )


def write_scores(
    root: str | os.PathLike, method: str, split: str, frame_id: str, score, compression: int = 9
) -> Path:
    """Write one frame's anomaly score as float16, atomically.

    Parameters
    ----------
    root : path-like
        Folder that holds ``anomaly_p``.
    method, split : str
        Plain names (no ``/``).
    frame_id : str
    score : array_like, shape (H, W), real, finite, within the float16 range (|x| <= 65504)
        Higher = more anomalous.
    compression : int or None
        gzip level (the benchmark uses 9); None for no compression.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ValueError
        Naming the frame: not 2-D, NaN/inf, or a value overflowing float16.
    """
    path = submission_path(root, method, split, frame_id)
    s = np.asarray(score)
    if s.ndim != 2:
        raise ValueError(f"frame {frame_id!r}: score must be (H, W), got shape {s.shape}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"frame {frame_id!r}: score must be real-valued, got dtype {s.dtype}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"frame {frame_id!r}: score holds NaN or inf values")
    with np.errstate(over="ignore"):
        s16 = s.astype(np.float16)
    if not np.all(np.isfinite(s16)):
        raise ValueError(f"frame {frame_id!r}: score exceeds the float16 range (|x| > 65504)")
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset(DATASET, data=s16, compression="gzip" if compression else None,
                         compression_opts=compression if compression else None)
    with atomic_write(path, "wb") as out:
        out.write(buf.getvalue())
    return path


def read_scores(root: str | os.PathLike, method: str, split: str, frame_id: str) -> np.ndarray:
    """Read one frame's score map.

    Returns
    -------
    ndarray, shape (H, W), float16

    Raises
    ------
    FileNotFoundError
        Naming the missing file.
    ValueError
        If the file lacks the ``value`` dataset or it is not a 2-D float16 map.
    """
    path = submission_path(root, method, split, frame_id)
    return read_scores_file(path)


def read_scores_file(path: str | os.PathLike) -> np.ndarray:
    """Read the ``value`` dataset of one submission file (see :func:`read_scores`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no score file {path}")
    with h5py.File(path, "r") as f:
        if DATASET not in f:
            raise ValueError(f"{path}: no dataset {DATASET!r} (has {list(f.keys())})")
        value = f[DATASET][()]
    if value.ndim != 2 or value.dtype != np.float16:
        raise ValueError(
            f"{path}: {DATASET!r} must be a 2-D float16 map, got {value.dtype} {value.shape}"
        )
    return value


def list_frames(root: str | os.PathLike, method: str, split: str) -> list[str]:
    """Frame ids that have a score file, sorted (ids with sub-folders use ``/``)."""
    folder = submission_path(root, method, split, "x").parent
    if not folder.is_dir():
        return []
    return sorted(
        p.relative_to(folder).as_posix()[: -len(SUFFIX)]
        for p in folder.rglob(f"*{SUFFIX}")
        if p.is_file() and not p.name.startswith(".")
    )
