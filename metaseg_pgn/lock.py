"""One run per run folder: a lock file naming its holder, and clean-up of dead runs' temporary files.

The lock is ``<run_dir>/run.lock``, held with ``flock`` for the whole run and holding JSON
``{"pid", "host", "started"}``. The kernel releases a ``flock`` when its process dies however it
dies, so a lock file left by a killed run is simply taken over; a lock held by a live process is
refused with a message naming that process.

Temporary files of :func:`metaseg_pgn.io.atomic_write` are named ``.NAME.PID.RANDOM.tmp`` after the
process that writes them; :func:`remove_dead_temps` deletes only those whose process no longer
exists on this machine (and the older ``.NAME.RANDOM.tmp`` files, which have no owner).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger("metaseg_pgn")

LOCK_NAME = "run.lock"


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder's lock (the message names it)."""


class RunLock:
    """Context manager holding ``<run_dir>/run.lock`` (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise RunFolderBusy(self._busy_message()) from None
            try:  # the file may have been removed (a holder that released) between open and flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous and previous.get("pid") != os.getpid():
            log.info("run folder %s: taking over the lock of a run that ended without releasing it "
                     "(pid %s on %s, started %s)", self.path.parent, previous.get("pid"),
                     previous.get("host"), previous.get("started"))
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # still ours: nobody else can hold it while we do
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing releases the flock
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _busy_message(self) -> str:
        holder = {}
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            pass
        who = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
               f"started {holder.get('started', '?')}")
        return (f"run folder {self.path.parent} is in use by another run ({who}; lock file "
                f"{self.path}): wait until it finishes, stop it, or choose another run_dir")


def _read_holder(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0).decode()
        return json.loads(data) if data.strip() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}


def temp_owner(name: str) -> int | None:
    """The pid in a temporary file's name ``.NAME.PID.RANDOM.tmp``, or None (older names)."""
    parts = name.split(".")
    if len(parts) >= 4 and parts[-1] == "tmp" and parts[-3].isdigit():
        return int(parts[-3])
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_dead_temp(path: Path) -> bool:
    """A temporary file of :func:`metaseg_pgn.io.atomic_write` whose writer no longer runs."""
    if not (path.name.startswith(".") and path.name.endswith(".tmp")):
        return False
    owner = temp_owner(path.name)
    return owner is None or (owner != os.getpid() and not pid_alive(owner))


def remove_dead_temps(folder: str | os.PathLike, recursive: bool = False) -> int:
    """Delete the temporary files of dead writers in ``folder`` (and below it when ``recursive``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for tmp in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        if tmp.is_file() and is_dead_temp(tmp):
            try:
                tmp.unlink()
                removed += 1
            except FileNotFoundError:
                pass
    if removed:
        log.info("removed %d temporary files left by killed writers in %s", removed, folder)
    return removed
