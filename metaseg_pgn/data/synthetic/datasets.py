"""The synthetic world as datasets: in-distribution splits, the two OoD tracks, and PNG export."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from metaseg_pgn.data.base import DataError, Frame, SegmentationDataset
from metaseg_pgn.io import atomic_write

from .frames import DEFAULT_SIZE, OOD_TRACKS, SyntheticSample, generate_frame

__all__ = ["OOD_DEFAULT_N", "SPLIT_SIZES", "SyntheticOoD", "SyntheticStreets", "export_pngs"]

SPLIT_SIZES: dict[str, int] = {"train": 1000, "val": 80, "test": 200}
"""Default number of frames per in-distribution split."""

OOD_DEFAULT_N = 30
"""Default number of frames per OoD track."""


def _check_size(size) -> tuple[int, int]:
    """``(H, W)`` as ints, at least 8 x 8, or a :class:`DataError` naming the bad value."""
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise DataError(f"synthetic: size must be (H, W), got {size!r}") from None
    if h < 8 or w < 8:
        raise DataError(f"synthetic: size {size!r} too small (at least 8 x 8)")
    return h, w


class _SyntheticFrames(SegmentationDataset):
    """Frames ``f"{split}_{index:06d}"``, index < n, of one split or track of a world seed."""

    num_classes = 19

    def _setup(self, split: str, n: int, size: Sequence[int], seed: int, what: str) -> None:
        self.split = split
        self.n = int(n)
        if self.n < 0:
            raise DataError(f"{what}: n must be >= 0, got {n!r}")
        self.size = _check_size(size)
        self.seed = int(seed)
        self._ids = [f"{split}_{i:06d}" for i in range(self.n)]

    @property
    def frame_ids(self) -> list[str]:
        return list(self._ids)

    def _index(self, frame_id: str) -> int:
        prefix = f"{self.split}_"
        if not frame_id.startswith(prefix) or not frame_id[len(prefix):].isdigit():
            raise DataError(f"synthetic {self.split}: no frame {frame_id!r} (ids look like {prefix}000017)")
        i = int(frame_id[len(prefix):])
        if i >= self.n:
            raise DataError(f"synthetic {self.split}: frame {frame_id!r} out of range (n={self.n})")
        return i


class SyntheticStreets(_SyntheticFrames):
    """In-distribution synthetic street scenes with Cityscapes trainId labels.

    Parameters
    ----------
    split : {"train", "val", "test"}
    n : int, optional
        Number of frames; default :data:`SPLIT_SIZES` of the split.
    size : (int, int)
        (H, W), default (256, 512).
    seed : int
        World seed; frames of different seeds are independent.

    Notes
    -----
    Frame ids are ``f"{split}_{index:06d}"``. Frames are generated when loaded (a few per second at
    256 x 512 on one core).
    """

    name = "synthetic"
    label_kind = "semantic"

    def __init__(self, split: str = "train", n: int | None = None, size: Sequence[int] = DEFAULT_SIZE,
                 seed: int = 0) -> None:
        if split not in SPLIT_SIZES:
            raise DataError(f"synthetic: unknown split {split!r}; choose one of {sorted(SPLIT_SIZES)}")
        self._setup(split, SPLIT_SIZES[split] if n is None else n, size, seed, "synthetic")

    def load(self, frame_id: str) -> Frame:
        s = generate_frame(self.seed, self.split, self._index(frame_id), self.size)
        return Frame(image=s.image, label=s.semantic, frame_id=frame_id)

    def __repr__(self) -> str:
        return f"SyntheticStreets(split={self.split!r}, n={self.n}, size={self.size}, seed={self.seed})"


class SyntheticOoD(_SyntheticFrames):
    """Synthetic OoD frames in SegmentMeIfYouCan's label convention.

    Parameters
    ----------
    track : {"obstacle", "anomaly"}
        ``obstacle``: unknown objects lying on the road; label road 0, object 1, rest 255.
        ``anomaly``: unknown objects anywhere; object 1, rest 0, the scene's void 255.
    n : int
        Number of frames (default 30).
    size : (int, int)
        (H, W), default (256, 512).
    seed : int
        World seed.
    split : str, optional
        Accepted for a uniform dataset interface; must equal ``track``.

    Notes
    -----
    Frame ids are ``f"{track}_{index:06d}"``. :meth:`load_sample` also gives the in-distribution
    semantic label and the same scene without the objects.
    """

    label_kind = "ood"

    def __init__(self, track: str = "obstacle", n: int = OOD_DEFAULT_N, size: Sequence[int] = DEFAULT_SIZE,
                 seed: int = 0, split: str | None = None) -> None:
        if track not in OOD_TRACKS:
            raise DataError(f"synthetic OoD: unknown track {track!r}; choose 'obstacle' or 'anomaly'")
        if split not in (None, track):
            raise DataError(f"synthetic OoD: split {split!r} does not match track {track!r}")
        self.track = track
        self.name = f"synthetic_{track}"
        self._setup(track, n, size, seed, "synthetic OoD")

    def load_sample(self, frame_id: str, with_clean: bool = False) -> SyntheticSample:
        """The full :class:`SyntheticSample` of a frame (semantic label, object mask, clean scene)."""
        return generate_frame(self.seed, self.track, self._index(frame_id), self.size, with_clean=with_clean)

    def load(self, frame_id: str) -> Frame:
        s = self.load_sample(frame_id)
        return Frame(image=s.image, label=s.ood, frame_id=frame_id)

    def __repr__(self) -> str:
        return f"SyntheticOoD(track={self.track!r}, n={self.n}, size={self.size}, seed={self.seed})"


def export_pngs(dataset: SegmentationDataset, root: str | Path, *, progress: bool = True) -> Path:
    """Write a dataset's frames as PNG files.

    Layout: ``root/images/{frame_id}.png`` (RGB) and, for semantic sets,
    ``root/labels/{frame_id}.png`` (trainIds, 255 void); for OoD sets SegmentMeIfYouCan's naming
    ``root/labels_masks/{frame_id}_labels_semantic.png`` (0 / 1 / 255). Each file is written atomically.

    Parameters
    ----------
    dataset : SegmentationDataset
    root : path-like
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        ``root``.
    """
    root = Path(root)
    for frame in tqdm(dataset, total=len(dataset), desc=f"export {dataset.name}", unit="frame", disable=not progress):
        _write_png(root / "images" / f"{frame.frame_id}.png", frame.image)
        if frame.label is None:
            continue
        if dataset.label_kind == "ood":
            path = root / "labels_masks" / f"{frame.frame_id}_labels_semantic.png"
        else:
            path = root / "labels" / f"{frame.frame_id}.png"
        _write_png(path, frame.label)
    return root


def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_write(path, "wb") as f:
        Image.fromarray(array).save(f, format="PNG")
