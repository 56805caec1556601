"""Reading images and label maps from disk, strictly.

Every problem with a file becomes a :class:`~metaseg_pgn.data.base.DataError` that names the file:
a missing file, one PIL cannot decode, a truncated one (never silently padded, whatever
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` says), a label with more than one channel, a 16-bit label
with values above 255.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from metaseg_pgn.data.base import DataError

# Single-channel modes a label may be stored in: 8-bit grey, palette (read as indices), 1-bit,
# 16/32-bit integers (accepted when every value fits into uint8).
_LABEL_MODES_8BIT = {"L", "P", "1"}
_LABEL_MODES_WIDE = {"I", "I;16", "I;16L", "I;16B", "I;16N"}

# PIL reads its "load truncated images" switch from a module global at decode time. We switch it
# off while we decode, under a lock, so a truncated file fails here even where other code has
# turned it on; the previous value is restored afterwards.
_truncation_lock = threading.Lock()


def _open_decoded(path: Path, what: str) -> Image.Image:
    """Open ``path`` with PIL and decode all pixels; DataError on any failure."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} file does not exist")
    if not path.is_file():
        raise DataError(f"{path}: {what} path is not a file")
    with _truncation_lock:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            with Image.open(path) as im:
                im.load()
                # load() keeps the pixels in memory; copy() detaches them from the closed file.
                return im.copy()
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            raise DataError(f"{path}: cannot read {what} ({type(e).__name__}: {e})") from e
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB.

    PNG, JPEG and WebP (any format PIL decodes); grey, palette, RGBA and 16-bit images are
    converted to 8-bit RGB (alpha dropped).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    ndarray, shape (H, W, 3), uint8

    Raises
    ------
    DataError
        If the file is missing, cannot be decoded or is truncated; the message names the file.
    """
    path = Path(path)
    im = _open_decoded(path, "image")
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: scale to 8 bits rather than clip (PIL's convert("RGB") would clip).
        arr = np.asarray(im, dtype=np.int64)
        top = 65535 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        grey = np.round(arr.clip(0, top) * (255.0 / top)).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if im.mode != "RGB":
        im = im.convert("RGB")
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"{path}: image decoded to shape {arr.shape}, expected (H, W, 3)")
    return np.ascontiguousarray(arr)


def read_label(path: str | Path) -> np.ndarray:
    """Read a single-channel integer label map.

    Parameters
    ----------
    path : str or Path
        A PNG (or any lossless format PIL decodes) in mode L, P (palette indices are returned, not
        colours), 1, or 16/32-bit integer with values 0..255.

    Returns
    -------
    ndarray, shape (H, W), uint8
        The stored values, unmapped.

    Raises
    ------
    DataError
        If the file is missing, cannot be decoded or is truncated, has more than one channel, or
        holds values above 255 (or below 0); the message names the file.
    """
    path = Path(path)
    im = _open_decoded(path, "label")
    if im.mode in _LABEL_MODES_8BIT:
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    if im.mode in _LABEL_MODES_WIDE:
        arr = np.asarray(im).astype(np.int64)
        lo, hi = int(arr.min(initial=0)), int(arr.max(initial=0))
        if lo < 0 or hi > 255:
            bad = np.unique(arr[(arr < 0) | (arr > 255)])
            shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
            raise DataError(
                f"{path}: {im.mode} label holds values outside 0..255 ([{shown}]); labels must be "
                f"8-bit ids"
            )
        return np.ascontiguousarray(arr.astype(np.uint8))
    bands = im.getbands()
    if len(bands) == 1:
        raise DataError(f"{path}: label must hold integer ids, got mode {im.mode}")
    raise DataError(
        f"{path}: label must have a single channel, got mode {im.mode} with {len(bands)} channels "
        f"({''.join(bands)}); store labels as 8-bit grey or palette PNG"
    )
