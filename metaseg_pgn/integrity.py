"""Content hashes: of the files a stage writes, of its input files, and of the code it runs.

- :func:`file_entry` / :func:`check_files`: what a manifest records of each output (size and
  SHA-256 of the bytes) and the check that the file on disk still is that file. A file verified
  once in this process is not hashed again while its size, mtime and inode are unchanged (one run
  holds the run folder's lock, so only it writes there).
- :class:`InputHashes`: SHA-256 of input files (images, labels, checkpoints), computed once and
  cached by path, size and mtime in a JSON file of the run folder.
- :func:`code_fingerprint`: the package version plus a hash of the source of the modules a stage
  runs, so an edited module makes its stage (and what follows) recompute.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from . import __version__

_CHUNK = 1 << 22
#: (path, size, mtime_ns, inode) → SHA-256 of files hashed in this process.
_seen: dict[tuple, str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def hash_once(path: str | os.PathLike) -> str:
    """:func:`sha256_file`, remembered in this process while size, mtime and inode are unchanged."""
    path = Path(path)
    key = _stat_key(path)
    if key not in _seen:
        _seen[key] = sha256_file(path)
    return _seen[key]


def file_entry(path: str | os.PathLike) -> dict:
    """``{"size": bytes, "sha256": hex}`` of one output, as a manifest records it."""
    path = Path(path)
    return {"size": path.stat().st_size, "sha256": hash_once(path)}


def files_entry(root: Path, paths: Iterable[str | os.PathLike]) -> dict[str, dict]:
    """:func:`file_entry` of each path, keyed by its POSIX path relative to ``root``."""
    out = {}
    for p in paths:
        p = Path(p)
        out[p.relative_to(root).as_posix() if p.is_absolute() else Path(p).as_posix()] = file_entry(
            p if p.is_absolute() else root / p)
    return dict(sorted(out.items()))


def file_problem(path: Path, entry: dict) -> str | None:
    """Why ``path`` is not the file ``entry`` recorded (missing, other size, other content), or None."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != entry.get("size"):
        return f"size {size} bytes, recorded {entry.get('size')}"
    if hash_once(path) != entry.get("sha256"):
        return "content differs from the recorded SHA-256"
    return None


def check_files(root: Path, files: dict[str, dict]) -> dict[str, str]:
    """The recorded files (relative to ``root``) that are missing or changed: path → problem."""
    problems = {}
    for rel, entry in files.items():
        problem = file_problem(root / rel, entry)
        if problem:
            problems[rel] = problem
    return problems


def digest(files: dict[str, dict]) -> str:
    """One short hash over the recorded hashes of a set of files (their paths included)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]['sha256']}\n".encode())
    return h.hexdigest()[:16]


class InputHashes:
    """SHA-256 of input files, cached in ``cache_file`` by resolved path, size and mtime.

    A file is hashed once; later runs only ``stat`` it, and hash it again when its size or mtime
    changed (an image overwritten in place). Call :meth:`save` to keep what was computed.
    """

    def __init__(self, cache_file: Path):
        self.cache_file = Path(cache_file)
        try:
            self._cache = json.loads(self.cache_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            self._cache = {}
        if not isinstance(self._cache, dict):
            self._cache = {}
        self._changed = False

    def __call__(self, path: str | os.PathLike) -> str:
        path = Path(path).resolve()
        st = path.stat()
        key = str(path)
        hit = self._cache.get(key)
        if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            return hit["sha256"]
        value = sha256_file(path)
        self._cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": value}
        self._changed = True
        return value

    def save(self) -> None:
        if self._changed:
            from .io import write_json

            write_json(self.cache_file, self._cache)
            self._changed = False


#: The files of a package that count as its code: sources, templates, and the text data they read.
CODE_SUFFIXES = (".py", ".j2", ".css", ".yaml", ".yml")


@lru_cache(maxsize=None)
def _module_hash(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ModuleNotFoundError(f"code fingerprint: no module {module!r}")
    if spec.submodule_search_locations:  # a package: its .py files and its text package data (templates)
        files = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*")
                       if p.suffix in CODE_SUFFIXES and p.is_file())
    elif spec.origin and spec.origin.endswith(".py"):
        files = [Path(spec.origin)]
    else:  # built-in or compiled: its name stands for it
        return module
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def code_fingerprint(modules: Iterable[str]) -> dict[str, str]:
    """Package version and a source hash per module (a package: its files of :data:`CODE_SUFFIXES`)."""
    return {"version": __version__, **{m: _module_hash(m) for m in sorted(set(modules))}}
