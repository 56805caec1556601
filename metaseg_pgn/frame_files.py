"""Per-frame files that stages store for the report: input previews and segment label maps.

``infer`` writes each frame's input image as a preview (:func:`write_preview`), ``features`` each
frame's segments (:func:`write_segment_map`), so that the report shows the image and the segments
of a frame from stored outputs instead of loading the dataset and recomputing them. Both are
written atomically, listed in their stage's manifest (size and SHA-256) and recomputed when
missing or damaged.

==============================================  ======================================================
file                                            content
==============================================  ======================================================
``infer/previews/<dataset>/<frame_id>.png``     the input image, uint8 RGB, shrunk (area average)
                                                so its longer side is at most :data:`PREVIEW_MAX_SIDE`;
                                                text chunk ``metaseg_pgn.preview``: :data:`PREVIEW_FORMAT`
``features/segments/<dataset>/<frame_id>.npz``  ``segments``: int32 (H, W), 0 = void, 1..n = the
                                                segment ids of the feature table's ``segment_id``
                                                (:func:`metaseg_pgn.segments.label_segments`);
                                                ``source``: the SHA-256 of the record it was made
                                                from (not of the code: a code change that changes
                                                no segment leaves the file's bytes as they were)
==============================================  ======================================================
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from .io import atomic_write, write_npz

#: The longest side of a preview in pixels; larger images are shrunk to it.
PREVIEW_MAX_SIDE = 512
#: What a preview is, stored in its PNG (text chunk ``metaseg_pgn.preview``): change it with
#: :func:`preview_image`, and every preview is redrawn (and only the previews).
PREVIEW_FORMAT = f"rgb8 area-average max-side {PREVIEW_MAX_SIDE}"
_PREVIEW_KEY = "metaseg_pgn.preview"


class FrameFileError(ValueError):
    """A stored preview or segment map that cannot be read (the message names the file)."""


def preview_size(height: int, width: int, max_side: int = PREVIEW_MAX_SIDE) -> tuple[int, int]:
    """(height, width) of the preview of a ``height`` × ``width`` image: unchanged when its longer
    side is at most ``max_side``, else scaled to it (each side rounded, at least 1)."""
    longest = max(height, width)
    if longest <= max_side:
        return height, width
    scale = max_side / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def preview_image(image: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> np.ndarray:
    """The preview of an image.

    Parameters
    ----------
    image : numpy.ndarray, shape (H, W, 3), uint8
        RGB image.
    max_side : int
        Longest side of the preview.

    Returns
    -------
    numpy.ndarray, shape (h, w, 3), uint8
        ``(h, w) = preview_size(H, W, max_side)``; the image itself (a copy) when it is small
        enough, else its area average (Pillow's box filter: two passes, each rounded to 8 bits,
        so within one grey level of the exact average).
    """
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"preview_image: expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    h, w = preview_size(image.shape[0], image.shape[1], max_side)
    if (h, w) == image.shape[:2]:
        return image.copy()
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BOX))


def write_preview(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write :func:`preview_image` of ``image`` to ``path`` as a PNG tagged with
    :data:`PREVIEW_FORMAT`, atomically."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(_PREVIEW_KEY, PREVIEW_FORMAT)
    buf = io.BytesIO()
    Image.fromarray(preview_image(image)).save(buf, format="PNG", compress_level=6, pnginfo=info)
    with atomic_write(path, "wb") as f:
        f.write(buf.getbuffer())


def read_preview(path: str | os.PathLike) -> np.ndarray:
    """A stored preview: numpy.ndarray, shape (h, w, 3), uint8 RGB.

    Raises
    ------
    FrameFileError
        A missing file or one that is not an RGB PNG.
    """
    return _load_preview(path)[0]


def preview_current(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a whole RGB PNG (every chunk passes its CRC and the image decodes) of
    this :data:`PREVIEW_FORMAT`."""
    try:
        return _load_preview(path)[1] == PREVIEW_FORMAT
    except FrameFileError:
        return False


def _load_preview(path: str | os.PathLike) -> tuple[np.ndarray, str | None]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format != "PNG" or im.mode != "RGB":
                raise FrameFileError(f"{path}: not an RGB PNG preview ({im.format}, mode {im.mode})")
            image = np.asarray(im)  # decodes every chunk, checking its CRC
            return image, im.text.get(_PREVIEW_KEY)
    except (OSError, SyntaxError, ValueError) as e:
        raise FrameFileError(f"{path}: not a readable preview ({type(e).__name__}: {e})") from None


def write_segment_map(path: str | os.PathLike, segments: np.ndarray, source: str) -> None:
    """Write a frame's segment label map (int32, H × W) and ``source``, the hash of what it was
    made from, compressed, atomically."""
    segments = np.asarray(segments)
    if segments.ndim != 2 or segments.dtype != np.int32:
        raise ValueError(f"write_segment_map: expected an (H, W) int32 array, got {segments.shape} {segments.dtype}")
    write_npz(path, segments=segments, source=np.array(source))


def read_segment_map(path: str | os.PathLike) -> np.ndarray:
    """A stored segment label map: numpy.ndarray, shape (H, W), int32 (0 = void, 1..n = segments).

    Raises
    ------
    FrameFileError
        A missing or damaged file, or one without an (H, W) int32 ``segments`` array.
    """
    return _load_segment_file(path)[0]


def segment_map_source(path: str | os.PathLike) -> str | None:
    """The ``source`` a stored segment map was made from; None when it is missing or damaged."""
    try:
        return _load_segment_file(path)[1]
    except FrameFileError:
        return None


def _load_segment_file(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            segments, source = data["segments"], str(data["source"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise FrameFileError(f"{path}: not a readable segment map ({type(e).__name__}: {e})") from None
    if segments.ndim != 2 or segments.dtype != np.int32:
        raise FrameFileError(f"{path}: 'segments' is {segments.shape} {segments.dtype}, expected (H, W) int32")
    return segments, source
