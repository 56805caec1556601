"""Cityscapes trainIds: class names and the official colour palette."""

from __future__ import annotations

import numpy as np

from metaseg_pgn.data.base import relabel

VOID = 255

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
NUM_CLASSES = len(CLASS_NAMES)

PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)

# Cityscapes labelIds (0..33, -1) -> trainIds; everything not listed is void.
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


def colorize(label: np.ndarray, void_color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Colour a trainId map with the Cityscapes palette.

    Parameters
    ----------
    label : ndarray, shape (H, W), integer
        trainIds 0..18; any other value (255 = void) gets ``void_color``.

    Returns
    -------
    ndarray, shape (H, W, 3), uint8
    """
    label = np.asarray(label)
    out = np.empty(label.shape + (3,), dtype=np.uint8)
    out[...] = void_color
    valid = (label >= 0) & (label < NUM_CLASSES)
    out[valid] = PALETTE[label[valid]]
    return out


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map Cityscapes labelIds to trainIds (unlisted ids become 255).

    Parameters
    ----------
    label_ids : ndarray, shape (H, W), integer

    Returns
    -------
    ndarray, shape (H, W), uint8
    """
    return relabel(label_ids, LABEL_ID_TO_TRAIN_ID, VOID)
