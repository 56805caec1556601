"""Names from the configuration or the data that become parts of paths: refuse any that could
leave the folder they are joined to (``..``, an absolute path, a backslash, an empty name)."""

from __future__ import annotations

from pathlib import PurePosixPath


class UnsafeNameError(ValueError):
    """A name that is not a plain relative name (the message names what it is and why)."""


def plain_name(value: object, what: str, allow_slash: bool = False) -> str:
    """``value`` as a string when it is a plain relative name; otherwise :class:`UnsafeNameError`.

    Parameters
    ----------
    value : object
        The name (converted with ``str``).
    what : str
        What the name is, for the message (``"dataset.split"``, ``"frame_id"``).
    allow_slash : bool
        Allow ``/`` between plain components (sub-folders), never ``.`` or ``..`` components.

    Returns
    -------
    str
    """
    text = str(value)
    if not text:
        raise UnsafeNameError(f"{what} is empty")
    parts = PurePosixPath(text).parts
    bad = (text.startswith("/") or "\\" in text or "\0" in text or text.startswith("~")
           or any(p in ("..", ".") for p in parts) or text.endswith("/")
           or (not allow_slash and "/" in text))
    if bad:
        rule = "a plain relative name without '..'" if allow_slash else "a plain name (no '/', '\\' or '..')"
        raise UnsafeNameError(f"{what}={text!r} is not {rule}: it would place files outside their folder")
    return text
