"""Atomic file writes and configuration fingerprints.

Every file a stage writes goes through :func:`atomic_write`, so a reader never sees half a file:
the bytes go to a temporary file in the destination folder, are flushed to disk, and the file is
renamed over the destination in one step. The file gets the permissions the umask gives an
ordinary new file (``0666 & ~umask``), not the temporary file's private 0600.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` only when the block exits without error.

    Parameters
    ----------
    path : path-like
        Destination. Its parent folder is created if missing.
    mode : {"wb", "w"}
        Binary or text mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid in the name (.NAME.PID.RANDOM.tmp): clean-up removes only dead writers' files.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; the result gets the mode an ordinary open() would give.
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (read by setting and restoring it, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically; NaN and inf become null (JSON has
    no such numbers, and an undefined metric is "no value", not a number)."""
    with atomic_write(path, "w") as f:
        json.dump(_finite_or_null(obj), f, indent=2, sort_keys=True, default=_json_default,
                  allow_nan=False)
        f.write("\n")


def write_npz(path: str | os.PathLike, compressed: bool = True, **arrays: np.ndarray) -> None:
    """Write arrays to an ``.npz`` file atomically (compressed by default)."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    with atomic_write(path, "wb") as f:
        f.write(buf.getbuffer())


def fingerprint(obj: Any) -> str:
    """A stable short hash of a JSON-serialisable configuration (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finite_or_null(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every non-finite float replaced by None."""
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f":
        return _finite_or_null(obj.tolist())
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return None
    return obj


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
