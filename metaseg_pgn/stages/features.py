"""Stage ``features``: segments and their features from the infer records → a Parquet dataset.

Per frame (one frame in memory at a time): read the record, resize what is stored at feature
resolution, compute E, D, V and take the PGN and baseline maps, aggregate all of them over each
segment (:func:`metaseg_pgn.segments.segment_features`), and write the frame's rows to
``features/_frames/<dataset>/<frame>.parquet`` atomically. A frame file is reused when it reads
back whole (Parquet page checksums) and carries the fingerprint of the record's content hash and
this stage's code, so an interrupted or killed run resumes and a changed record recomputes its
frame alone. Beside it goes the frame's segment label map, ``features/segments/<dataset>/<frame>.npz``
(:mod:`metaseg_pgn.frame_files`: key ``segments``, int32 (H, W), 0 = void, else the rows'
``segment_id``), for the report, listed in the manifest
(``outputs[dataset]["segments"]`` names the folder); its ``source``, the record's SHA-256, ties it
to the record without the code, so a code change that changes no value changes none of its bytes.
Finally the frames are
concatenated in frame order into ``features/data/dataset=<name>/split=<split>/part-0.parquet``,
so the table is byte-identical whichever executor and worker count computed the frames.

Executors: ``process`` (``workers=1`` runs in this process; more use a spawn-started process
pool) and ``dask`` (``features.scheduler=ADDRESS``, or a local cluster of ``workers`` processes).
Every frame is computed with one intra-op thread and its file holds nothing about the worker that
made it. A Dask worker that dies takes its task with it; the scheduler runs the task again on
another worker (tasks are impure, two retries), and a rerun of a killed stage computes only the
frames whose files are missing. Temporary files of killed writers are removed at the end. Pool
workers (and the workers of a local Dask cluster) end when the process that started them dies.

Under ``torchrun`` (``WORLD_SIZE`` > 1) rank ``r`` computes every ``WORLD_SIZE``-th frame with the
``process`` executor, rank 0 concatenates after a barrier and writes the manifest, and a last
barrier holds the other ranks until it exists. With ``executor=dask`` only rank 0 submits.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

import numpy as np
import pandas as pd

from ..data.select import dataset_configs, name_split
from ..distributed import barrier, init_process_group, rank_world
from ..frame_files import segment_map_source, write_segment_map
from ..io import fingerprint
from ..maps import ENTROPY_CONVENTIONS
from ..lock import remove_dead_temps
from ..segments import segment_feature_arrays
from ..store import read_record
from ..table import read_parquet_verified, schema_metadata, write_parquet_options, write_table
from ..threads import torch_threads
from .base import Result, Stage
from .common import Plan, RunContext, StageError, dataset_key, evaluated_dataset, log

STAGE = "features"
CODE = ("metaseg_pgn.stages.features", "metaseg_pgn.segments", "metaseg_pgn.store", "metaseg_pgn.maps",
        "metaseg_pgn.table", "metaseg_pgn.frame_files", "metaseg_pgn.threads")
FEATURE_KINDS = ("semantic", None)  # OoD sets have 0/1 labels: no IoU target, not meta-learned


def frame_table(record_path: str, expect: dict[str, str], void: int = 255, entropy: str = "exact",
                return_segments: bool = False) -> pa.Table | tuple[pa.Table, np.ndarray]:
    """All segment rows of one frame as an Arrow table (without the partition columns).

    ``entropy``: ``features.entropy``, the convention of the E columns (``"exact"`` entropy or
    ``"metaseg"``, MetaSeg's eps inside the log, :func:`metaseg_pgn.maps.softmax_maps`).
    ``return_segments``: also return the segment label map, (H, W) int32, 0 = void, the table's
    ``segment_id`` elsewhere (:func:`metaseg_pgn.segments.segment_feature_arrays`)."""
    record = read_record(record_path, expect)
    probs = record.probs()
    maps = record.pixel_maps(probs, entropy=entropy)
    gt = record.label if record.label_kind == "semantic" else None
    cols, segments = segment_feature_arrays(record.pred, probs, maps, gt, void=void, return_segments=True)
    df = pd.DataFrame(cols, copy=False)  # as segment_features builds it
    table = pa.Table.from_pandas(df, preserve_index=False)
    frame_ids = pa.array([record.frame_id] * len(df), pa.string())
    table = table.add_column(0, "frame_id", frame_ids).replace_schema_metadata(None)
    return (table, segments) if return_segments else table


def compute_frame(record_path: str, out_path: str, expect: dict[str, str], frame_fp: str,
                  entropy: str = "exact", segments_path: str | None = None, record_sha: str | None = None) -> str:
    """Compute one frame's rows and write them atomically; a no-op when already done.

    With ``segments_path`` the frame's segment label map is written there first
    (:func:`metaseg_pgn.frame_files.write_segment_map`, its ``source`` the record's SHA-256
    ``record_sha``); the frame is done when its rows read back whole with ``frame_fp`` and its
    segment map whole with ``record_sha``. Runs with one torch intra-op thread and gives the
    caller its thread count back."""
    if _done(out_path, frame_fp, segments_path, record_sha):
        return out_path
    with torch_threads(1):
        table, segments = frame_table(record_path, expect, entropy=entropy, return_segments=True)
    if segments_path is not None and segment_map_source(segments_path) != str(record_sha):
        write_segment_map(segments_path, segments, str(record_sha))  # a map still valid is kept as is
    table = table.replace_schema_metadata({b"metaseg_pgn.frame_fingerprint": frame_fp.encode()})
    write_table(out_path, table)
    return out_path


def _done(out_path: str, frame_fp: str, segments_path: str | None = None, record_sha: str | None = None) -> bool:
    """The frame file exists, reads back whole (page checksums) and has the fingerprint ``frame_fp``,
    and the segment map at ``segments_path`` (when given) reads back whole, made from ``record_sha``."""
    if not os.path.exists(out_path):
        return False
    try:
        meta = read_parquet_verified(out_path).schema.metadata or {}
    except Exception:  # noqa: BLE001 - an unreadable or damaged cache file is recomputed
        return False
    if meta.get(b"metaseg_pgn.frame_fingerprint") != frame_fp.encode():
        return False
    return segments_path is None or segment_map_source(segments_path) == str(record_sha)


def config(ctx: RunContext) -> dict:
    """``features.entropy``, the one setting that changes bytes (workers and executor do not)."""
    entropy = ctx.cfg["features"].get("entropy", "exact")
    if entropy not in ENTROPY_CONVENTIONS:
        raise StageError(f"features.entropy={entropy!r}: choose one of {list(ENTROPY_CONVENTIONS)}")
    return {"features.entropy": entropy}


def work(ctx: RunContext, the_plan: Plan, upstream: dict[str, dict]) -> Result | None:
    """Every frame's rows and segment map (this rank's share), then, on rank 0, the tables."""
    infer_manifest = upstream["infer"]
    record_hashes = infer_manifest.get("files") or {}
    entropy = the_plan.config["features.entropy"]
    jobs, parts = [], {}
    main = evaluated_dataset(ctx.cfg)
    main_key = dataset_key(main) if main is not None else None
    for key, out in infer_manifest["outputs"].items():
        if out["label_kind"] not in FEATURE_KINDS:
            continue
        if out["label_kind"] is None and key != main_key:
            continue  # an OoD set without labels (benchmark test frames): scored by ood_eval only
        name, split = _name_split(ctx.cfg, key)
        frame_dir = ctx.stage_dir(STAGE) / "_frames" / key
        segment_dir = segments_dir(ctx, key)
        files, segment_files = [], []
        for frame_id in out["frames"]:
            rel = f"{out['records']}/{frame_id}.npz"
            record_sha = record_hashes.get(rel, {}).get("sha256")
            # One frame's rows depend on its record's bytes and this stage's code, nothing else.
            frame_fp = fingerprint({"record": record_sha,
                                    "fingerprints": out["fingerprints"], "config": the_plan.config,
                                    "code": the_plan.code})
            target = frame_dir / f"{frame_id}.parquet"
            segment_file = segment_dir / f"{frame_id}.npz"
            jobs.append((str(ctx.run_dir / rel), str(target), out["fingerprints"], frame_fp, entropy,
                         str(segment_file), record_sha))
            files.append(str(target))
            segment_files.append(segment_file)
        parts[key] = (name, split, files, segment_files)
    if not jobs:
        why = ("the run has no evaluated dataset (dataset=none)" if main is None else
               f"the evaluated dataset {main_key!r} has OoD labels (0/1/255), not class labels: "
               "its segments have no IoU")
        log.warning("features: skipped: %s", why)
        return Result({"skipped": why})
    rank, world = rank_world()
    if world > 1:
        init_process_group()
        if ctx.cfg["features"].get("executor", "process") == "dask":
            jobs = jobs if rank == 0 else []  # one client submits; the cluster spreads the work
        else:
            jobs = jobs[rank::world]  # from the full list: the same shards whatever is done
    if ctx.forced(STAGE):
        for job in jobs:  # recompute every frame: no frame file is reused
            Path(job[1]).unlink(missing_ok=True)
            Path(job[5]).unlink(missing_ok=True)
    jobs = [job for job in jobs if not _done(job[1], job[3], job[5], job[6])]  # a rerun starts no idle workers
    _execute(jobs, ctx, show_progress=rank == 0)
    barrier()  # every rank has written its frames

    if rank != 0:
        return None
    outputs, targets, frame_files = {}, [], []
    for key, (name, split, files, segment_files) in parts.items():
        remove_dead_temps(ctx.stage_dir(STAGE) / "_frames" / key)
        remove_dead_temps(segments_dir(ctx, key))
        target = ctx.stage_dir(STAGE) / "data" / f"dataset={name}" / f"split={split}" / "part-0.parquet"
        remove_dead_temps(target.parent)
        # The file names the records it was made from (their content), not this stage's code:
        # a code change that changes no value leaves the table byte-identical.
        rows = _concatenate(files, target, {"records": the_plan.upstream["infer"], "entropy": entropy,
                                            "dataset": name, "split": split})
        outputs[key] = {"path": target.relative_to(ctx.run_dir).as_posix(), "rows": rows,
                        "label_kind": infer_manifest["outputs"][key]["label_kind"],
                        "segments": segments_dir(ctx, key).relative_to(ctx.run_dir).as_posix()}
        targets.extend([target, *segment_files])
        frame_files.extend(files)
    return Result(outputs, files=tuple(targets), keep=tuple(frame_files))


#: The infer records (checked against the infer manifest), ``features.entropy``, the code; every
#: rank of a torchrun job computes its share of the frames.
DEFINITION = Stage(STAGE, upstream=("infer",), sections=("features",), config=config, code=CODE, work=work,
                   sharded=True)
plan, run = DEFINITION.plan, DEFINITION.run


def segments_dir(ctx: RunContext, key: str) -> Path:
    """Where the segment label maps of dataset ``key`` go (:mod:`metaseg_pgn.frame_files`)."""
    return ctx.stage_dir(STAGE) / "segments" / key


def _name_split(cfg: dict, key: str) -> tuple[str, str]:
    for ds_cfg in dataset_configs(cfg):
        if dataset_key(ds_cfg) == key:
            return name_split(ds_cfg)
    name, _, split = key.rpartition("-")
    return name, split


def _execute(jobs: list[tuple], ctx: RunContext, show_progress: bool = True) -> None:
    fcfg = ctx.cfg["features"]
    workers = int(fcfg.get("workers", 1))
    if not jobs:
        return
    bar = tqdm(total=len(jobs), desc="features", unit="frame", disable=not (ctx.progress and show_progress))
    if fcfg.get("executor", "process") == "dask":
        _execute_dask(jobs, fcfg, workers, bar)
    elif workers <= 1:
        for job in jobs:
            compute_frame(*job)
            bar.update(1)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=exit_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            for _ in pool.map(_compute_job, jobs, chunksize=1):
                bar.update(1)
    bar.close()


def exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """In a worker process: end it (``os._exit``) once ``parent``, the process that started it, is
    gone, so workers never outlive a killed run. A daemon thread polls the parent pid."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _compute_job(job: tuple) -> str:
    return compute_frame(*job)


def _execute_dask(jobs, fcfg, workers, bar) -> None:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise StageError("features.executor=dask needs dask.distributed: "
                         "pip install 'metaseg-pgn[distributed]'") from None
    import dask

    address = fcfg.get("scheduler")
    cluster = None
    if not address:
        # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which turns off glibc's
        # adaptive mmap threshold: every large per-frame array is then mmapped and unmapped
        # again, which cost ~30 % more CPU per frame here. Our workers free all but one frame.
        # The nanny also writes its pre-spawn variables (OMP/MKL/OPENBLAS_NUM_THREADS=1) into this
        # process's environment; restore it, or every later subprocess of the caller runs one thread.
        saved = dict(os.environ)
        try:
            with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                cluster = LocalCluster(n_workers=max(workers, 1), threads_per_worker=1, processes=True,
                                       dashboard_address=None)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    try:
        with Client(address or cluster) as client:
            if cluster is not None:  # our own workers end with us (not those of a shared scheduler)
                client.register_plugin(_exit_with_parent_plugin(os.getpid()))
            # pure=False: a task lost with a killed worker is simply run again elsewhere; its
            # frame file is written atomically, so a second run of the same task is harmless.
            futures = [client.submit(compute_frame, *job, pure=False, retries=2) for job in jobs]
            for _ in as_completed(futures):
                bar.update(1)
            client.gather(futures)
    finally:
        if cluster is not None:
            cluster.close()


def _exit_with_parent_plugin(parent: int):
    """A Dask worker plugin running :func:`exit_with_parent` in every worker started by ``parent``."""
    from distributed import WorkerPlugin

    class ExitWithParent(WorkerPlugin):
        name = "metaseg_pgn-exit-with-parent"

        def setup(self, worker) -> None:
            if os.getppid() == parent:
                exit_with_parent(parent)

    return ExitWithParent()


def _concatenate(files: list[str], target: Path, config: dict) -> int:
    """Frame files in order → one Parquet file, one row group per frame (bounded memory)."""
    schema, rows = None, 0
    from ..io import atomic_write

    with atomic_write(target, "wb") as f:
        writer = None
        for path in files:
            table = read_parquet_verified(path).replace_schema_metadata(None)
            if writer is None:
                schema = table.schema.with_metadata(schema_metadata(table.column_names, config))
                writer = pq.ParquetWriter(f, schema, **write_parquet_options())
            if table.schema.names != schema.names:
                raise StageError(f"features: {path} has other columns than the first frame's "
                                 "(records from different configurations?)")
            writer.write_table(table.cast(schema))
            rows += table.num_rows
        if writer is not None:
            writer.close()
    return rows
