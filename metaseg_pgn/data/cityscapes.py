"""Cityscapes in its own folder layout (gtFine labels mapped to trainIds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metaseg_pgn.data.base import DataError, FileDataset, FrameFiles, check_label_values, list_files
from metaseg_pgn.data.palette import label_ids_to_train_ids

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIXES = {"labelIds": "_gtFine_labelIds.png", "labelTrainIds": "_gtFine_labelTrainIds.png"}
# Cityscapes labelIds are 0..33; "license plate" (-1) is stored as 255 in 8-bit files.
VALID_LABEL_IDS = frozenset(range(34)) | {255}


class Cityscapes(FileDataset):
    """Cityscapes images with gtFine labels as trainIds.

    Layout (as distributed)::

        {root}/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
        {root}/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png
        {root}/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelTrainIds.png   (optional)

    Parameters
    ----------
    root : str or Path
        The folder holding ``leftImg8bit`` and ``gtFine``.
    split : str
        ``"train"``, ``"val"`` or ``"test"``. The test split has no public labels: its frames have
        label None and the dataset's ``label_kind`` is None.
    label_source : {"auto", "labelIds", "labelTrainIds"}
        ``labelIds`` files are mapped to trainIds (unlisted ids become 255); ``labelTrainIds``
        files (made by cityscapesScripts' ``createTrainIdLabelImgs``) are used as stored.
        ``"auto"`` takes ``labelTrainIds`` when the split's gtFine folder holds any, else
        ``labelIds``.

    Attributes
    ----------
    label_source : str
        The source in use ("labelIds" or "labelTrainIds"; None for the test split).

    Raises
    ------
    DataError
        If the image folder is missing or empty, or a frame's label file is missing (train/val).
    ValueError
        For an unknown ``label_source``.

    Notes
    -----
    Frame ids are the file names without suffix, ``{city}_{seq}_{frame}``, sorted.
    """

    def __init__(self, root: str | Path, split: str = "val", label_source: str = "auto"):
        if label_source not in ("auto", *LABEL_SUFFIXES):
            raise ValueError(
                f"label_source must be 'auto', 'labelIds' or 'labelTrainIds', got {label_source!r}"
            )
        self.root = Path(root).expanduser()
        image_dir = self.root / "leftImg8bit" / split
        label_dir = self.root / "gtFine" / split
        images = list_files(image_dir, f"*/*{IMAGE_SUFFIX}", "Cityscapes images")

        has_labels = split != "test"
        if not has_labels:
            self.label_source = None
        elif label_source == "auto":
            has_train_ids = label_dir.is_dir() and any(
                label_dir.glob(f"*/*{LABEL_SUFFIXES['labelTrainIds']}")
            )
            self.label_source = "labelTrainIds" if has_train_ids else "labelIds"
        else:
            self.label_source = label_source

        files = {}
        for image in images:
            frame_id = image.name[: -len(IMAGE_SUFFIX)]
            label = None
            if has_labels:
                city = image.parent.name
                label = label_dir / city / f"{frame_id}{LABEL_SUFFIXES[self.label_source]}"
                if not label.is_file():
                    raise DataError(
                        f"{label}: label file missing for image {image} "
                        f"(label_source={self.label_source!r})"
                    )
            files[frame_id] = FrameFiles(image, label)
        super().__init__(files, name="cityscapes", split=split,
                         label_kind="semantic" if has_labels else None)

    def convert_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """labelIds → trainIds (checked to be Cityscapes labelIds first); trainIds unchanged."""
        if self.label_source == "labelIds":
            check_label_values(raw, VALID_LABEL_IDS, path, "Cityscapes labelIds 0..33 or 255")
            return label_ids_to_train_ids(raw)
        return raw
