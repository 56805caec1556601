"""Anomaly scores in the SegmentMeIfYouCan benchmark's layout.

One file per frame: ``{root}/anomaly_p/{method}/{split}/{frame_id}.hdf5`` holding the dataset
``value``, an ``(H, W)`` float16 map (gzip-compressed, as the benchmark writes it). Files are
written atomically (:func:`metaseg_pgn.io.atomic_write`), so a reader never sees half a file.
A frame id may contain ``/`` (sub-folders, as in Cityscapes-style ids) but no ``..`` component
and no leading ``/``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path, PurePosixPath

import h5py
import numpy as np

from metaseg_pgn.io import atomic_write

DATASET = "value"
SUFFIX = ".hdf5"


def _check_name(value: str, what: str, allow_slash: bool = False) -> str:
    value = str(value)
    if not value:
        raise ValueError(f"{what} is empty")
    parts = PurePosixPath(value).parts
    if value.startswith("/") or "\\" in value or any(p in ("..", ".") for p in parts):
        raise ValueError(f"{what} {value!r} is not a plain relative name")
    if not allow_slash and "/" in value:
        raise ValueError(f"{what} {value!r} must not contain '/'")
    return value


def submission_path(root: str | os.PathLike, method: str, split: str, frame_id: str) -> Path:
    """``{root}/anomaly_p/{method}/{split}/{frame_id}.hdf5``."""
    return (
        Path(root)
        / "anomaly_p"
        / _check_name(method, "method")
        / _check_name(split, "split")
        / f"{_check_name(frame_id, 'frame_id', allow_slash=True)}{SUFFIX}"
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
