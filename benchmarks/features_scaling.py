"""Frames per second of the features stage with 1 and 2 workers, and peak memory per worker.

    python benchmarks/features_scaling.py [--frames 48] [--repeats 2] [--height 1024 --width 2048]
                                          [--executors process,dask] [--workdir DIR]

1. Writes ``--frames`` infer records at ``--height`` x ``--width`` (19 classes; logits and 10 PGN
   maps at stride 4 as the compact model stores them; a ground truth; Cityscapes-like class blobs
   as in ``features_speed.py``) plus the infer manifest, with :func:`metaseg_pgn.store.write_record`
   into ``WORKDIR/run`` (kept and reused by later calls; about 8.6 MB per frame at 1024 x 2048).
2. Runs the real features stage (E, D, V and the 10 PGN maps per segment; segments, IoU_adj, the
   Parquet table) in a fresh subprocess per measurement, with ``workers=1`` and ``workers=2`` for
   each executor, interleaved over ``--repeats`` rounds, after deleting ``features/``.
   The time is the whole stage: pool or local Dask cluster start, all frames, concatenation.
3. Peak memory per worker: ``ru_maxrss`` of the process that computed frames (``workers=1`` with
   the process executor: the stage's own process; otherwise the largest of its child processes,
   i.e. the largest pool or Dask worker).
4. Checks that every run wrote the same Parquet bytes.

Prints frames/s, the speed-up of 2 workers over 1 and the load average around each measurement
(on a shared machine the ratio is only meaningful when the load is low: compare it with the cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

N_CLASSES = 19
STRIDE = 4


def overrides(run_dir: Path, frames: int, height: int, width: int) -> list[str]:
    return [f"run_dir={run_dir}", "progress=false", f"dataset.n={frames}", f"dataset.size=[{height},{width}]",
            "ood_datasets=[]"]


# --- records ----------------------------------------------------------------------------------------

def make_record(frame_id: str, seed: int, height: int, width: int, fingerprints: dict):
    """One frame's record shaped like the compact model's at Cityscapes resolution."""
    import numpy as np
    import torch

    from features_speed import _smooth_field, pgn_like_maps
    from metaseg_pgn.maps import softmax_maps
    from metaseg_pgn.store import Record, encode_logs, relative_logits

    rng = np.random.default_rng(seed)
    h, w = height // STRIDE, width // STRIDE
    # low-resolution grid at 1/8 of the frame, as features_speed.make_frame
    logits = 12.0 * _smooth_field(rng, (N_CLASSES,), h, w, 8 // STRIDE, 3.0)
    record = Record(frame_id=frame_id, pred=np.zeros((height, width), np.uint8),
                    logits=relative_logits(torch.from_numpy(logits)), fingerprints=fingerprints,
                    label_kind="semantic")
    probs = record.probs()
    record.pred = probs.argmax(axis=0).astype(np.uint8)
    disagreement = 3.0 * _smooth_field(rng, (N_CLASSES,), height, width, 8, 3.0)
    label = (np.log(np.maximum(probs, 1e-30)) + disagreement).argmax(axis=0).astype(np.uint8)
    void = _smooth_field(rng, (), height, width, 16, 2.0)
    label[void > np.quantile(void, 0.93)] = 255
    record.label = label
    low_probs = torch.softmax(torch.from_numpy(record.logits.astype(np.float32)), dim=0).numpy()
    pgn = pgn_like_maps({"E": softmax_maps(low_probs)["E"]}, count=10, seed=seed)
    record.pgn_names = list(pgn)
    record.log_pgn, record.log_pgn_offset = encode_logs(torch.from_numpy(np.stack(list(pgn.values()))))
    return record


def prepare(run_dir: Path, frames: int, height: int, width: int) -> None:
    """Records of frames 0..frames-1 (those already there are kept) and the infer manifest."""
    from metaseg_pgn import config as config_mod
    from metaseg_pgn.io import fingerprint
    from metaseg_pgn.stages import infer
    from metaseg_pgn.stages.common import RunContext, dataset_key, write_manifest
    from metaseg_pgn.store import RecordError, read_meta, write_record

    cfg = config_mod.compose(overrides(run_dir, frames, height, width))
    ctx = RunContext(cfg)
    key = dataset_key(cfg["dataset"])
    params = {"benchmark": "features_scaling", "size": [height, width], "classes": N_CLASSES}
    fingerprints = {g: fingerprint({"group": g, **params}) for g in ("core", "pgn", "baselines")}
    records = ctx.stage_dir("infer") / "records" / key
    frame_ids = [f"frame_{i:04d}" for i in range(frames)]
    started = time.time()
    for i, frame_id in enumerate(frame_ids):
        path = records / f"{frame_id}.npz"
        try:
            if read_meta(path)["fingerprints"] == fingerprints:
                continue
        except RecordError:
            pass
        write_record(path, make_record(frame_id, i, height, width, fingerprints))
        print(f"records: {frame_id} written ({time.time() - started:.0f} s)", flush=True)
    outputs = {key: {"frames": frame_ids, "label_kind": "semantic", "num_classes": N_CLASSES,
                     "fingerprints": fingerprints, "records": records.relative_to(run_dir).as_posix()}}
    # Recorded under the plan infer would run with, so features accepts these synthetic records.
    write_manifest(ctx, "infer", infer.plan(ctx), outputs, started,
                   files=[records / f"{f}.npz" for f in frame_ids])


# --- one measurement (in a fresh process) ----------------------------------------------------------

def child(args: argparse.Namespace) -> None:
    from metaseg_pgn import config as config_mod
    from metaseg_pgn.stages import features
    from metaseg_pgn.stages.common import RunContext

    cfg = config_mod.compose(overrides(args.run_dir, args.frames, args.height, args.width)
                             + [f"features.executor={args.executor}", f"features.workers={args.workers}"])
    def cpu() -> float:
        return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))

    cpu_start, start = cpu(), time.perf_counter()
    outputs = features.run(RunContext(cfg))
    seconds = time.perf_counter() - start
    cpu_seconds = cpu() - cpu_start  # this process and its finished children (pool/Dask workers)
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    in_process = args.executor == "process" and args.workers == 1
    # Steady state: frames finished after the first wave (one frame per worker), per second
    # between the end of that wave and the last frame (files are renamed into place when done).
    ends = sorted(p.stat().st_mtime for p in (args.run_dir / "features" / "_frames").rglob("*.parquet"))
    wave = min(args.workers, len(ends) - 1)
    steady = (len(ends) - wave) / (ends[-1] - ends[wave - 1]) if wave >= 1 and ends[-1] > ends[wave - 1] else None
    digest = hashlib.sha256()
    for path in sorted((args.run_dir / "features").rglob("*.parquet")):
        digest.update(path.read_bytes())
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "steady_fps": steady, "rows": sum(o["rows"] for o in outputs.values()),
                      "peak_worker_mb": me if in_process else kids, "parent_mb": me,
                      "digest": digest.hexdigest()}))


def measure(args: argparse.Namespace, executor: str, workers: int) -> dict:
    shutil.rmtree(args.run_dir / "features", ignore_errors=True)
    load_before = os.getloadavg()
    cmd = [sys.executable, __file__, "--child", "--run-dir", str(args.run_dir), "--frames", str(args.frames),
           "--height", str(args.height), "--width", str(args.width), "--executor", executor,
           "--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{executor} workers={workers} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(load_before=load_before[0], load_after=os.getloadavg()[0])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--executors", default="process,dask")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the records are kept (default: a folder in the temp dir, reused)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--executor", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    workdir = args.workdir or Path(tempfile.gettempdir()) / (
        f"metaseg_pgn_features_scaling_{os.getuid()}_{args.height}x{args.width}")
    args.run_dir = workdir / "run"
    prepare(args.run_dir, args.frames, args.height, args.width)
    print(f"{args.frames} frames {args.height} x {args.width}, {N_CLASSES} classes, maps E, D, V + 10 PGN; "
          f"{os.cpu_count()} cores; load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    configs = [(e, w) for e in args.executors.split(",") for w in (1, 2)]
    results: dict[tuple, list[dict]] = {c: [] for c in configs}
    for r in range(args.repeats):
        for executor, workers in configs:
            res = measure(args, executor, workers)
            results[(executor, workers)].append(res)
            print(f"  round {r + 1}: {executor:<7s} workers={workers}: {res['seconds']:6.1f} s, "
                  f"{args.frames / res['seconds']:.3f} frames/s (steady {res['steady_fps']:.3f}), "
                  f"CPU {res['cpu_seconds'] / args.frames:.2f} s/frame, "
                  f"peak/worker {res['peak_worker_mb']:.0f} MB, "
                  f"load {res['load_before']:.2f} -> {res['load_after']:.2f}", flush=True)

    digests = {res["digest"] for runs in results.values() for res in runs}
    print(f"Parquet bytes identical in all {sum(map(len, results.values()))} runs: {len(digests) == 1}")
    print(f"\nmedian over {args.repeats} rounds; 'stage': the whole stage (pool/cluster start, frames, "
          "concatenation); 'steady': frames/s after the first frame of each worker; 'CPU s/frame': "
          "user + system time of all processes of the stage per frame")
    print(f"  {'executor':<8s} {'workers':>7s} {'stage s':>8s} {'frames/s':>9s} {'speed-up':>9s} "
          f"{'steady f/s':>11s} {'speed-up':>9s} {'CPU s/frame':>12s} {'peak MB/worker':>15s}")
    for executor in args.executors.split(","):
        base = statistics.median(x["seconds"] for x in results[(executor, 1)])
        base_steady = statistics.median(x["steady_fps"] for x in results[(executor, 1)])
        for workers in (1, 2):
            runs = results[(executor, workers)]
            sec = statistics.median(x["seconds"] for x in runs)
            steady = statistics.median(x["steady_fps"] for x in runs)
            peak = max(x["peak_worker_mb"] for x in runs)
            cpu_frame = statistics.median(x["cpu_seconds"] for x in runs) / args.frames
            print(f"  {executor:<8s} {workers:>7d} {sec:8.1f} {args.frames / sec:9.3f} {base / sec:8.2f}x "
                  f"{steady:11.3f} {steady / base_steady:8.2f}x {cpu_frame:12.2f} {peak:15.0f}")
    loads = [x["load_before"] for runs in results.values() for x in runs]
    print(f"1-min load average before the measurements: {min(loads):.2f} to {max(loads):.2f} "
          f"({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
