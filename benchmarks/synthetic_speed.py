"""Frames per second of the synthetic world: ``SyntheticStreets("val")`` frames at 256 x 512.

Each measurement runs in a fresh Python process (one warm-up frame, then ``--frames`` frames timed
together) with the source tree given on ``PYTHONPATH``. With ``--compare OTHER_ROOT`` the two trees
(this checkout and, say, an export of an older commit) are measured alternately, ``--reps`` times
each, so that both see the same machine load; the table gives every repetition's frames/s, the
median, and the 1-minute load average before and after.

Usage::

    python benchmarks/synthetic_speed.py
    git archive OLD_COMMIT metaseg_pgn | tar -x -C /tmp/before
    python benchmarks/synthetic_speed.py --compare /tmp/before --reps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import sys, time
from metaseg_pgn.data.synthetic import SyntheticStreets
n, h, w, split = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ds = SyntheticStreets(split, n=n, size=(h, w), seed=0)
ds.load(ds.frame_ids[0])  # warm-up: imports, first allocations
t = time.perf_counter()
for frame_id in ds.frame_ids:
    ds.load(frame_id)
print(n / (time.perf_counter() - t))
"""


def frames_per_second(root: Path, n: int, size: tuple[int, int], split: str) -> float:
    """Frames/s of ``n`` frames generated in a child process that imports ``metaseg_pgn`` from ``root``."""
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(size[0]), str(size[1]), split],
                         env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 512))
    parser.add_argument("--split", default="val")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--compare", type=Path, help="a second source tree (holding metaseg_pgn/)")
    args = parser.parse_args(argv)

    roots = {"this checkout": Path(__file__).resolve().parents[1]}
    if args.compare is not None:
        if not (args.compare / "metaseg_pgn").is_dir():
            parser.error(f"--compare {args.compare}: no metaseg_pgn/ folder there")
        roots = {f"compare ({args.compare})": args.compare.resolve(), **roots}
    load_before = os.getloadavg()[0]
    results: dict[str, list[float]] = {name: [] for name in roots}
    for _ in range(args.reps):
        for name, root in roots.items():
            results[name].append(frames_per_second(root, args.frames, tuple(args.size), args.split))
    load_after = os.getloadavg()[0]
    print(f"{args.frames} {args.split} frames at {args.size[0]}x{args.size[1]}, {os.cpu_count()} CPUs, "
          f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after")
    for name, fps in results.items():
        runs = ", ".join(f"{x:.2f}" for x in fps)
        print(f"  {name}: median {statistics.median(fps):.2f} frames/s  (runs: {runs})")


if __name__ == "__main__":
    main()
