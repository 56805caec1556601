"""The one interface every dataset adapter implements, and the errors bad input raises."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np

LabelKind = Literal["semantic", "ood"] | None


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
