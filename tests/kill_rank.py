"""Fault injection for the torchrun tests, launched by ``torchrun`` in place of ``-m metaseg_pgn.run``::

    torchrun ... tests/kill_rank.py --rank R --after K [--attempt A] [--marker FILE] OVERRIDE ...

In rank ``R`` (torchrun's ``RANK``), in every attempt of the job or only in attempt ``A`` (torchrun's
``TORCHELASTIC_RESTART_COUNT``), the infer stage's per-frame work
(``metaseg_pgn.stages.infer._infer_frame``: one network pass, one record written) is wrapped so that
the process SIGKILLs itself once it has written ``K`` records, as a crash would: no clean-up, no
exception. Just before, it creates ``FILE`` (its modification time marks the kill). Every other
process runs the unchanged pipeline; the overrides go to the normal entry point
(:func:`metaseg_pgn.run.main`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path


def kill_after(stage, k: int, marker: Path | None = None) -> None:
    """Wrap ``stage._infer_frame`` (in this process only): SIGKILL after its ``k``-th record."""
    real = stage._infer_frame  # an AttributeError here says the stage no longer has it
    written = 0

    def infer_frame_then_maybe_die(*args, **kwargs):
        nonlocal written
        real(*args, **kwargs)
        written += 1
        if written >= k:
            if marker is not None:
                marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    stage._infer_frame = infer_frame_then_maybe_die


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--after", type=int, required=True, help="records written before the kill")
    parser.add_argument("--attempt", type=int, default=None, help="only in this attempt (default: every)")
    parser.add_argument("--marker", type=Path, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    if int(os.environ["RANK"]) == args.rank and args.attempt in (None, attempt):
        from metaseg_pgn.stages import infer

        kill_after(infer, args.after, args.marker)
    from metaseg_pgn.run import main as run_main

    return run_main(args.overrides)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
