"""A folder of images without labels (for inference on one's own pictures)."""

from __future__ import annotations

from pathlib import Path

from metaseg_pgn.data.base import DataError, FileDataset, FrameFiles, list_files

DEFAULT_PATTERN = "**/*.png|jpg|jpeg|webp"


def expand_pattern(pattern: str) -> list[str]:
    """Expand the extension alternatives of a pattern into glob patterns, any letter case.

    ``"**/*.png|jpg"`` becomes ``["**/*.[pP][nN][gG]", "**/*.[jJ][pP][gG]"]``: the text after the
    last ``.`` may list alternatives separated by ``|``. A pattern without ``|`` is used as given.

    Parameters
    ----------
    pattern : str

    Returns
    -------
    list of str
    """
    if "|" not in pattern:
        return [pattern]
    head, dot, exts = pattern.rpartition(".")
    if not dot or "/" in exts:
        raise ValueError(f"pattern {pattern!r}: '|' may only separate extensions after the last '.'")

    def any_case(ext: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext)

    return [f"{head}.{any_case(ext)}" for ext in exts.split("|") if ext]


class ImageFolder(FileDataset):
    """All images under a folder, without labels (``label_kind`` None).

    Parameters
    ----------
    root : str or Path
        The folder to search.
    pattern : str
        Glob pattern relative to ``root``; ``**`` recurses, and the extension may list
        alternatives separated by ``|`` (matched in any letter case), see :func:`expand_pattern`.
    split : str
        The split name the dataset reports (``"all"``).

    Raises
    ------
    DataError
        Missing or empty folder (the message names the folder and the pattern); two files that
        give the same frame id.

    Notes
    -----
    The frame id is the path relative to ``root`` without its suffix, with ``/`` replaced by
    ``__``: ``city/a.png`` → ``city__a``.
    """

    name = "folder"

    def __init__(self, root: str | Path, pattern: str = DEFAULT_PATTERN, split: str = "all"):
        self.root = Path(root).expanduser()
        self.pattern = pattern
        images = list_files(self.root, expand_pattern(pattern), f"images ({pattern!r})")
        files: dict[str, FrameFiles] = {}
        for image in images:
            frame_id = image.relative_to(self.root).with_suffix("").as_posix().replace("/", "__")
            if frame_id in files:
                raise DataError(f"{image}: gives the same frame id {frame_id!r} as {files[frame_id].image}")
            files[frame_id] = FrameFiles(image, None)
        super().__init__(files, name=self.name, split=split, label_kind=None)
