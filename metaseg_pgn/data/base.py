"""The one interface every dataset adapter implements, and the errors bad input raises.

Besides the interface (:class:`Frame`, :class:`SegmentationDataset`, :class:`DataError`) this
module holds what the file-based adapters share: the checks every label goes through
(:func:`check_label_size`, :func:`check_label_values`), the mapping of stored label ids to ours
(:func:`relabel`), the listing of a dataset folder
(:func:`list_files`) and :class:`FileDataset`, a dataset over a fixed table of image and label
files.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal, Mapping

import numpy as np

LabelKind = Literal["semantic", "ood"] | None

#: Label values a frame may hold after its adapter's mapping, per label kind.
SEMANTIC_LABEL_VALUES: frozenset[int] = frozenset(range(19)) | {255}
OOD_LABEL_VALUES: frozenset[int] = frozenset({0, 1, 255})
LABEL_VALUES: dict[str, frozenset[int]] = {"semantic": SEMANTIC_LABEL_VALUES, "ood": OOD_LABEL_VALUES}


class DataError(ValueError):
    """Bad or missing input data. The message names the file (or folder) and the problem."""


@dataclass
class Frame:
    """One image with its label.

    Attributes
    ----------
    image : ndarray, shape (H, W, 3), uint8, RGB
    label : ndarray, shape (H, W), uint8, or None
        Cityscapes trainIds (0..18, 255 void) for semantic sets; 0 / 1 / 255 for OoD sets.
    frame_id : str
        Stable identifier, unique within its dataset and split.
    """

    image: np.ndarray
    label: np.ndarray | None
    frame_id: str


class SegmentationDataset(abc.ABC):
    """A finite, ordered collection of frames.

    Subclasses set ``name``, ``split``, ``label_kind`` and ``num_classes`` and implement
    ``frame_ids`` (sorted, unique) and ``load(frame_id)``.
    """

    name: str
    split: str
    label_kind: LabelKind = "semantic"
    num_classes: int = 19

    @property
    @abc.abstractmethod
    def frame_ids(self) -> list[str]:
        """Sorted, unique frame identifiers."""

    @abc.abstractmethod
    def load(self, frame_id: str) -> Frame:
        """Read one frame; raises :class:`DataError` on bad input."""

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __getitem__(self, index: int) -> Frame:
        return self.load(self.frame_ids[index])

    def __iter__(self) -> Iterator[Frame]:
        for frame_id in self.frame_ids:
            yield self.load(frame_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, frames={len(self)})"


# --------------------------------------------------------------------------------------------------
# Checks shared by the adapters


def check_label_size(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> None:
    """Raise :class:`DataError` unless the label covers the image pixel for pixel.

    Parameters
    ----------
    image : ndarray, shape (H, W, 3)
    label : ndarray, shape (H', W')
    image_path, label_path : Path
        The files they were read from, named in the message.
    """
    if label.shape[:2] != image.shape[:2]:
        (ih, iw), (lh, lw) = image.shape[:2], label.shape[:2]
        raise DataError(
            f"{label_path}: label is {lw}x{lh} (width x height) but its image {image_path} is "
            f"{iw}x{ih}"
        )


def check_label_values(label: np.ndarray, allowed: Iterable[int], path: Path, what: str = "") -> None:
    """Raise :class:`DataError` if the label holds a value outside ``allowed``.

    Parameters
    ----------
    label : ndarray, integer
    allowed : iterable of int
        The values the label may hold.
    path : Path
        The label file, named in the message.
    what : str, optional
        What the allowed values are (e.g. "trainIds 0..18 or 255"), added to the message.
    """
    allowed = np.asarray(sorted(set(allowed)))
    present = np.unique(label)
    bad = present[~np.isin(present, allowed)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:20]) + (", ..." if bad.size > 20 else "")
        expected = what or _describe_values(allowed)
        raise DataError(f"{path}: label values [{shown}] are outside the expected set ({expected})")


def relabel(ids, mapping: Mapping[int, int], default: int = 255) -> np.ndarray:
    """Map stored 8-bit label ids through a table: ``mapping[id]`` where listed, else ``default``.

    Parameters
    ----------
    ids : array_like, integer, any shape
        The ids as stored (:func:`metaseg_pgn.data.io.read_label` gives uint8); a value outside
        0..255 maps to ``default``.
    mapping : mapping of int to int
        Stored id (0..255) -> our label (0..255).
    default : int
        The label of every id not in ``mapping`` (255: void).

    Returns
    -------
    ndarray, same shape as ``ids``, uint8
    """
    lut = np.full(256, default, dtype=np.uint8)
    for stored, ours in mapping.items():
        lut[stored] = ours
    ids = np.asarray(ids)
    if ids.dtype == np.uint8:
        return lut[ids]
    ids = ids.astype(np.int64)
    out = lut[ids.clip(0, 255)]
    out[(ids < 0) | (ids > 255)] = default
    return out


def _describe_values(values: np.ndarray) -> str:
    return ", ".join(str(int(v)) for v in values) if values.size <= 6 else (
        f"{values.size} values from {int(values.min())} to {int(values.max())}"
    )


def list_files(folder: Path, patterns: str | Iterable[str], what: str = "files") -> list[Path]:
    """Sorted files under ``folder`` matching any of the glob ``patterns``.

    Parameters
    ----------
    folder : Path
        The folder to search.
    patterns : str or iterable of str
        Glob patterns relative to ``folder`` (``**`` recurses).
    what : str
        What the files are ("images", "labels"), for the error message.

    Returns
    -------
    list of Path
        Sorted, without duplicates; never empty.

    Raises
    ------
    DataError
        If ``folder`` does not exist, is not a folder, or nothing in it matches; the message names
        the folder and the patterns that were expected.
    """
    folder = Path(folder)
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    expected = " or ".join(repr(p) for p in patterns)
    if not folder.exists():
        raise DataError(f"{folder}: dataset folder does not exist (expected {what} matching {expected})")
    if not folder.is_dir():
        raise DataError(f"{folder}: is not a folder (expected {what} matching {expected})")
    found = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    if not found:
        raise DataError(f"{folder}: no {what} found (expected files matching {expected})")
    return found


# --------------------------------------------------------------------------------------------------
# A dataset over a table of files


@dataclass(frozen=True)
class FrameFiles:
    """The files of one frame.

    Attributes
    ----------
    image : Path
    label : Path or None
        None where the frame has no label.
    """

    image: Path
    label: Path | None = None


class FileDataset(SegmentationDataset):
    """A dataset over a fixed table ``frame id -> FrameFiles``.

    ``load`` reads the image, reads the label (if any), maps it with :meth:`convert_label` and
    checks it against the image size and the value set of ``label_kind``. Adapters build the
    table in their constructor and override :meth:`convert_label` where the files hold other ids
    than the frame's label convention.

    Parameters
    ----------
    files : mapping of str to FrameFiles
        One entry per frame; the frame ids become ``frame_ids`` in sorted order.
    name, split : str
    label_kind : {"semantic", "ood", None}
        None when no frame has a label.
    """

    def __init__(self, files: Mapping[str, FrameFiles], name: str, split: str, label_kind: LabelKind):
        self._files = dict(files)
        self._ids = sorted(self._files)
        self.name = name
        self.split = split
        self.label_kind = label_kind

    @property
    def frame_ids(self) -> list[str]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: int) -> Frame:
        return self.load(self._ids[index])

    def files(self, frame_id: str) -> FrameFiles:
        """The image and label file of one frame.

        Raises
        ------
        KeyError
            If the frame id is not in this dataset.
        """
        try:
            return self._files[frame_id]
        except KeyError:
            raise KeyError(f"frame {frame_id!r} is not in {self!r}") from None

    def convert_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Map the label as stored in ``path`` to the frame's convention (identity here).

        Parameters
        ----------
        raw : ndarray, shape (H, W), uint8
        path : Path
            The label file, for error messages.

        Returns
        -------
        ndarray, shape (H, W), uint8
        """
        return raw

    def load(self, frame_id: str) -> Frame:
        from metaseg_pgn.data.io import read_image, read_label  # io imports this module

        files = self.files(frame_id)
        image = read_image(files.image)
        label = None
        if files.label is not None:
            label = self.convert_label(read_label(files.label), files.label)
            check_label_size(image, label, files.image, files.label)
            if self.label_kind is not None:
                check_label_values(label, LABEL_VALUES[self.label_kind], files.label,
                                   _KIND_VALUES_TEXT[self.label_kind])
        return Frame(image=image, label=label, frame_id=frame_id)


_KIND_VALUES_TEXT = {"semantic": "trainIds 0..18 or 255", "ood": "0, 1 or 255"}
