"""Distributed runs give the single-process outputs, and survive killed workers and ranks.

Real engines only: a spawn process pool, a ``dask.distributed`` local cluster of two worker
processes, and ``torchrun`` (``python -m torch.distributed.run``) with two CPU ranks on gloo. Every
distributed output is compared with a single-process run of the same configuration: the Parquet
files byte for byte, the infer records array by array (an ``.npz`` carries zip timestamps, so its
bytes differ between any two runs; its arrays and metadata must not).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from metaseg_pgn import config as config_mod
from metaseg_pgn.run import run_pipeline
from metaseg_pgn.table import read_features

from conftest import REPO, tiny_overrides

pytestmark = pytest.mark.slow  # torchrun, Dask clusters and process pools

N_FRAMES = 8  # evaluated frames; with infer.batch_size=2 four batches, two per rank
KILL_RANK = REPO / "tests" / "kill_rank.py"  # fault injection: a rank SIGKILLs itself after K records


def overrides(run_dir: Path, *extra: str) -> list[str]:
    return [*tiny_overrides(run_dir, n=N_FRAMES, n_ood=2), "infer.batch_size=2", *extra]


def run_in_process(run_dir: Path, *extra: str) -> None:
    """One process, one intra-op thread (what torchrun gives each rank)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_pipeline(config_mod.compose(overrides(run_dir, *extra)))
    finally:
        torch.set_num_threads(threads)


def torchrun(run_dir: Path, *extra: str, kill: tuple[str, ...] = (),
             launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 -m metaseg_pgn.run``; with ``kill`` (options of
    ``tests/kill_rank.py``, e.g. ``("--rank", "1", "--after", "2")``) the ranks run that script
    instead, which makes one rank SIGKILL itself after its K-th record."""
    target = [str(KILL_RANK), *kill] if kill else ["-m", "metaseg_pgn.run"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *launcher,
           *target, *overrides(run_dir, *extra)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def mtimes(run_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (run_dir / "infer" / "records" / "synthetic-val").glob("*.npz")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """infer + features in one process, the outputs every distributed run must reproduce."""
    run_dir = tmp_path_factory.mktemp("dist_reference") / "run"
    run_in_process(run_dir, "stage=[infer,features]")
    return run_dir


def copy_infer(reference: Path, run_dir: Path) -> None:
    shutil.copytree(reference / "infer", run_dir / "infer")


def parquet_bytes(run_dir: Path) -> dict[str, bytes]:
    """Every Parquet file of the features stage (the table and the per-frame cache)."""
    root = run_dir / "features"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def record_arrays(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for path in sorted((run_dir / "infer" / "records").rglob("*.npz")):
        with np.load(path) as data:
            out[str(path.relative_to(run_dir))] = {k: data[k] for k in data.files}
    return out


def temp_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob("*.tmp"))


def assert_same_features(run_dir: Path, reference: Path) -> None:
    got, want = parquet_bytes(run_dir), parquet_bytes(reference)
    assert sorted(got) == sorted(want)
    assert any(k.startswith("data/dataset=synthetic/split=val/") for k in want)
    for name in want:
        assert got[name] == want[name], f"{name} differs from the single-process run"
    rows = lambda d: {k: v["rows"] for k, v in  # noqa: E731
                      json.loads((d / "features" / "manifest.json").read_text())["outputs"].items()}
    assert rows(run_dir) == rows(reference)


def assert_same_records(run_dir: Path, reference: Path) -> None:
    got, want = record_arrays(run_dir), record_arrays(reference)
    assert sorted(got) == sorted(want)
    assert len(want) == N_FRAMES + 2 * 2  # evaluated frames + two OoD tracks of two frames
    for name, arrays in want.items():
        assert sorted(got[name]) == sorted(arrays), name
        for key, value in arrays.items():
            assert got[name][key].dtype == value.dtype and got[name][key].shape == value.shape
            assert np.array_equal(got[name][key], value), f"{name}: {key} differs from the single-process run"


# --- features: process pool and Dask ------------------------------------------------------------

def test_features_byte_identical_across_executors(reference, tmp_path):
    """workers=2 (spawn pool) and a Dask local cluster of 2 processes write the same bytes as one
    process, the per-frame cache included."""
    for name, extra in {"pool": ["features.workers=2"],
                        "dask": ["features.executor=dask", "features.workers=2"]}.items():
        run_dir = tmp_path / name
        copy_infer(reference, run_dir)
        environ = dict(os.environ)
        run_in_process(run_dir, "stage=[features]", *extra)
        assert dict(os.environ) == environ  # Dask's nanny wrote OMP/MKL_NUM_THREADS=1 into it
        assert_same_features(run_dir, reference)
        assert not temp_files(run_dir)


class KillWorkerOnce:
    """Dask worker plugin: the first worker to start its second task SIGKILLs itself (once per
    cluster, through an exclusive marker file holding its pid), losing that task mid-run."""

    name = "kill-worker-once"

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.started = 0

    def setup(self, worker) -> None:
        self.started = 0

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish != "executing":
            return
        self.started += 1
        if self.started < 2:
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def test_dask_killed_worker_loses_nothing(reference, tmp_path):
    """A worker killed in the middle of the stage: the scheduler reruns its task on a fresh worker,
    the table is byte-identical, and the temporary file of a writer killed earlier is gone."""
    from dask.distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import WorkerPlugin

    run_dir = tmp_path / "run"
    copy_infer(reference, run_dir)
    frames = run_dir / "features" / "_frames" / "synthetic-val"
    frames.mkdir(parents=True)
    (frames / ".val_000001.parquet.killed.tmp").write_bytes(b"half a file")
    marker = tmp_path / "killed.pid"
    plugin = type("KillWorkerOncePlugin", (KillWorkerOnce, WorkerPlugin), {})(str(marker))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.register_plugin(plugin)
        run_in_process(run_dir, "stage=[features]", "features.executor=dask",
                       f"features.scheduler={cluster.scheduler_address}")
        alive = client.run(os.getpid)  # the nanny replaced the killed worker
    killed = int(marker.read_text())
    assert killed not in alive.values()
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)
    assert_same_features(run_dir, reference)
    assert not temp_files(run_dir)


# --- torchrun -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def killed_then_rerun(tmp_path_factory) -> dict:
    """A fresh two-rank run in which rank 1 dies (SIGKILL) after its first batch (two records), the
    folder as the killed job left it, damaged further (a writer killed mid-file, a lost record of a
    finished batch), then a plain torchrun rerun of the same command to the end."""
    run_dir = tmp_path_factory.mktemp("dist_killed") / "run"
    killed = torchrun(run_dir, "stage=[infer,features]", kill=("--rank", "1", "--after", "2"))
    records = run_dir / "infer" / "records" / "synthetic-val"
    left = {"manifest": (run_dir / "infer" / "manifest.json").exists(),
            "features": (run_dir / "features").exists(), "records": mtimes(run_dir)}
    if (records / "val_000002.npz").exists():
        (records / "val_000002.npz").unlink()  # half of a finished batch lost
    records.mkdir(parents=True, exist_ok=True)
    (records / ".val_000004.npz.killed.tmp").write_bytes(b"half a file")
    rerun = torchrun(run_dir, "stage=[infer,features]")
    return {"run_dir": run_dir, "killed": killed, "left": left, "rerun": rerun}


def test_torchrun_killed_rank_stops_the_job_leaving_nothing_trusted(killed_then_rerun):
    """torchrun stops the job when rank 1 dies: no infer manifest, no features, and rank 1's
    records are those of the batches it finished (it has [2, 3] and [6, 7]; it died after the first)."""
    killed, left = killed_then_rerun["killed"], killed_then_rerun["left"]
    assert killed.returncode != 0
    assert "SIGKILL" in killed.stderr or "exitcode  : -9" in killed.stderr, killed.stderr[-3000:]
    assert not left["manifest"] and not left["features"]
    assert {"val_000002.npz", "val_000003.npz"} <= set(left["records"])
    assert not {"val_000006.npz", "val_000007.npz"} & set(left["records"])


def test_torchrun_rerun_completes_to_the_single_process_result(killed_then_rerun, reference):
    """The rerun of the killed job: infer shards the missing frames over the two ranks and keeps the
    records already written, features shards all frames again, and records and table are those of
    one process (the killed run's own records among them: two ranks write what one process does)."""
    run_dir, done, left = killed_then_rerun["run_dir"], killed_then_rerun["rerun"], killed_then_rerun["left"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_same_records(run_dir, reference)
    assert_same_features(run_dir, reference)
    manifest = json.loads((run_dir / "infer" / "manifest.json").read_text())
    assert manifest["outputs"]["synthetic-val"]["frames"] == [f"val_{i:06d}" for i in range(N_FRAMES)]
    assert done.stderr.count("stage infer: done") == 2  # both ranks ran infer, then features
    assert done.stderr.count("stage features: done") == 2
    now = mtimes(run_dir)
    kept = {name: t for name, t in left["records"].items() if name != "val_000002.npz"}
    assert kept and {name: now[name] for name in kept} == kept  # not rewritten
    assert now["val_000002.npz"] > max(kept.values())  # the lost one was
    assert not temp_files(run_dir)


def test_torchrun_restarts_itself_after_killed_rank(reference, tmp_path):
    """With --max-restarts torchrun reruns the job by itself: rank 1 kills itself after its first batch
    (two records) in the first attempt; the restart resumes from the records on disk (those written
    before the kill are kept, not rewritten) and completes the store."""
    run_dir = tmp_path / "run"
    marker = tmp_path / "killed"
    done = torchrun(run_dir, "stage=[infer,features]", launcher=("--max-restarts", "3"),
                    kill=("--rank", "1", "--after", "2", "--attempt", "0", "--marker", str(marker)))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "exitcode: -9" in done.stderr  # rank 1 was killed and the job restarted
    assert_same_records(run_dir, reference)
    assert_same_features(run_dir, reference)
    killed_at = marker.stat().st_mtime_ns
    written = mtimes(run_dir)
    assert written["val_000002.npz"] <= killed_at and written["val_000003.npz"] <= killed_at  # kept
    assert written["val_000006.npz"] > killed_at and written["val_000007.npz"] > killed_at  # the restart's
    assert not temp_files(run_dir)


# --- the table for other engines ----------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:The inplace keyword")  # inside dask's Parquet reader (pandas 3.1)
def test_partitioned_table_read_by_duckdb_dask_pandas(reference):
    """The Hive-partitioned folder is read directly by DuckDB, Dask and pandas, with the partition
    columns, and gives the rows of read_features."""
    import dask.dataframe as dd
    import duckdb

    data = reference / "features" / "data"
    ours = read_features(reference / "features")
    key = ["dataset", "split", "frame_id", "segment_id"]

    con = duckdb.connect()
    q = con.execute(
        "SELECT dataset, split, frame_id, segment_id, S, iou FROM read_parquet(?, hive_partitioning = true) "
        "ORDER BY dataset, split, frame_id, segment_id", [str(data / "**" / "*.parquet")]).df()
    assert len(q) == len(ours) > 0
    assert (q[key].astype(str).values == ours[key].astype(str).values).all()
    assert np.array_equal(q["S"].to_numpy(), ours["S"].to_numpy())
    assert np.allclose(q["iou"].to_numpy(dtype=float), ours["iou"].to_numpy(dtype=float), equal_nan=True)
    agg = con.execute("SELECT split, count(*) AS n, avg(iou) AS mean_iou FROM read_parquet(?, hive_partitioning = true) "
                      "GROUP BY split", [str(data / "**" / "*.parquet")]).df()
    assert agg["n"].tolist() == [len(ours)]
    assert agg["mean_iou"].iloc[0] == pytest.approx(float(ours["iou"].astype(float).mean()))

    ddf = dd.read_parquet(str(data), columns=["split", "frame_id", "segment_id", "S"])
    got = ddf.compute(scheduler="synchronous").sort_values(["frame_id", "segment_id"]).reset_index(drop=True)
    assert got["split"].astype(str).unique().tolist() == ["val"]
    assert np.array_equal(got["S"].to_numpy(), ours["S"].to_numpy())

    pdf = pd.read_parquet(data)
    assert set(pdf["dataset"].astype(str)) == {"synthetic"} and len(pdf) == len(ours)
