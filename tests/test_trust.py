"""What a run reuses is what it would compute now: stale, damaged and concurrent cases, through the CLI
(its entry point in the test process; a fresh interpreter where a case needs its own process).

One tiny run (``stage=all``, ``conftest.tiny_run_dir``) is made once per session; each case works on
a copy of its folder (a run folder holds no absolute path, so a copy is a valid run) and compares
the repaired copy with the undamaged run byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import REPO, main_in_process, tiny_overrides
from metaseg_pgn.store import Record, relative_logits
from metaseg_pgn.table import read_features, write_table

pytestmark = pytest.mark.slow  # pipeline runs through the command line


def cli(run_dir: Path, *extra: str, env: dict | None = None, pythonpath: Path = REPO,
        base: list[str] | None = None, process: bool = False) -> subprocess.CompletedProcess:
    """The command line on the tiny configuration in ``run_dir`` (one CPU thread): its entry point in
    this process, or ``python -m metaseg_pgn.run`` in a fresh one where the case needs it (another
    environment or PYTHONPATH, ``process=True``)."""
    args = (tiny_overrides(run_dir) if base is None else base) + list(extra)
    if env is None and pythonpath == REPO and not process:
        return main_in_process(*args)
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # whatever the test process's environment says
    full_env = {**os.environ, "PYTHONPATH": str(pythonpath), **threads, **(env or {})}
    return subprocess.run([sys.executable, "-m", "metaseg_pgn.run", *args], cwd=pythonpath, env=full_env,
                          capture_output=True, text=True, timeout=600)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file's bytes; of each manifest its fingerprint and recorded files (not its timings).
    Hydra's record of the command line (``.hydra/``) names the run folder and ``run_info.json`` the
    timings of the last invocation: both are left out."""
    out = {}
    for p in sorted(run.rglob("*")):
        if (not p.is_file() or p.name in ("run.lock", "run_info.json")
                or ".hydra" in p.relative_to(run).parts):
            continue
        rel = p.relative_to(run).as_posix()
        if p.name == "manifest.json":
            m = json.loads(p.read_text())
            out[rel] = json.dumps([m["fingerprint"], m["files"], m["outputs"]], sort_keys=True).encode()
        else:
            out[rel] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def base_run(tiny_run_dir) -> tuple[Path, dict[str, bytes]]:
    """The session's tiny run through the CLI (``conftest.tiny_run_dir``), never changed: cases copy it."""
    return tiny_run_dir, snapshot(tiny_run_dir)


@pytest.fixture
def copy(base_run, tmp_path) -> Path:
    run = tmp_path / "copy"
    shutil.copytree(base_run[0], run)
    return run


RECORD = "infer/records/synthetic-val/val_000001.npz"
TABLE = "features/data/dataset=synthetic/split=val/part-0.parquet"


def _truncate(run: Path) -> None:
    p = run / RECORD
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(run: Path, rel: str = TABLE) -> None:
    p = run / rel
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0x10
    p.write_bytes(bytes(data))


def _edit_manifest(run: Path) -> None:
    p = run / "infer" / "manifest.json"
    m = json.loads(p.read_text())
    m["fingerprint"] = "0" * 16
    p.write_text(json.dumps(m))


DAMAGE = {
    "truncated record": (_truncate, "infer: 1 of its outputs are missing or damaged"),
    "deleted table": (lambda run: (run / TABLE).unlink(), "features: 1 of its outputs are missing or damaged"),
    "bit-flipped table": (_flip, "features: 1 of its outputs are missing or damaged"),
    "edited manifest": (_edit_manifest, "infer/manifest.json is damaged or was edited"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_plain_rerun_repairs_damage_and_equals_the_undamaged_run(case, base_run, copy):
    damage, said = DAMAGE[case]
    damage(copy)
    err = ok(cli(copy))
    assert said in err
    assert snapshot(copy) == base_run[1]
    # Only the damaged output and what follows were recomputed: the repaired bytes are the same,
    # so every later stage is still up to date.
    assert "meta: up to date" in err and "report: up to date" in err


def test_a_stage_refuses_damaged_input_and_its_advice_repairs_it(base_run, copy):
    _flip(copy)
    proc = cli(copy, "stage=meta")
    assert proc.returncode == 2
    assert TABLE in proc.stderr and "run stage=features first" in proc.stderr
    ok(cli(copy, "stage=features"))  # what the message says
    err = ok(cli(copy, "stage=meta"))
    assert "meta: up to date" in err
    assert snapshot(copy) == base_run[1]


def test_read_features_verifies_page_checksums(tmp_path):
    path = tmp_path / "t.parquet"
    values = np.random.default_rng(0).integers(2, 10**6, 5000)
    write_table(path, pa.table({"S": values}))
    assert (read_features(path)["S"].to_numpy() == values).all()
    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
    data = bytearray(path.read_bytes())
    start = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
    data[start + column.total_compressed_size // 2] ^= 0x01  # inside the column chunk's pages
    path.write_bytes(bytes(data))
    with pytest.raises(OSError, match="(?i)checksum|crc"):
        read_features(path)


# --- stale inputs ------------------------------------------------------------------------------


def test_a_swapped_checkpoint_recomputes_the_records(tmp_path):
    from metaseg_pgn.models.deeplab import build_model

    def weights(seed: int) -> bytes:
        torch.manual_seed(seed)
        path = tmp_path / f"w{seed}.pt"
        torch.save(build_model("compact", 19).state_dict(), path)
        return path.read_bytes()

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(weights(1))
    args = ["ood_datasets=[]", "stage=infer", "model.init=checkpoint", f"model.checkpoint={ckpt}"]
    ok(cli(tmp_path / "a", *args))
    first = (tmp_path / "a" / RECORD).read_bytes()
    ckpt.write_bytes(weights(2))  # same path, other network
    err = ok(cli(tmp_path / "a", *args))
    assert "'model_files'" in err and "infer: up to date" not in err
    ok(cli(tmp_path / "b", *args))  # a fresh run with the new checkpoint
    assert (tmp_path / "a" / RECORD).read_bytes() == (tmp_path / "b" / RECORD).read_bytes() != first


def _cityscapes(root: Path, n: int = 2) -> list[Path]:
    labels = []
    rng = np.random.default_rng(0)
    for i in range(n):
        fid = f"aachen_00000{i}_000019"
        img = root / "leftImg8bit" / "val" / "aachen" / f"{fid}_leftImg8bit.png"
        lab = root / "gtFine" / "val" / "aachen" / f"{fid}_gtFine_labelTrainIds.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        lab.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 128, 3), dtype=np.uint8)).save(img)
        Image.fromarray(np.full((64, 128), 7, np.uint8)).save(lab)
        labels.append(lab)
    return labels


def test_an_input_overwritten_in_place_recomputes_its_frame_alone(tmp_path):
    labels = _cityscapes(tmp_path / "cs")
    run = tmp_path / "run"
    base = [a for a in tiny_overrides(run) if not a.startswith("dataset.")]
    args = ["dataset=cityscapes", f"dataset.root={tmp_path / 'cs'}", "ood_datasets=[]", "stage=infer"]
    ok(cli(run, *args, base=base))
    records = run / "infer" / "records" / "cityscapes-val"
    other = (records / "aachen_000000_000019.npz").read_bytes()
    Image.fromarray(np.full((64, 128), 8, np.uint8)).save(labels[1])  # same size, new content
    err = ok(cli(run, *args, base=base))
    assert "'inputs'" in err and "infer: up to date" not in err
    with np.load(records / "aachen_000001_000019.npz") as z:
        assert (z["label"] == 8).all()
    assert (records / "aachen_000000_000019.npz").read_bytes() == other  # not rewritten
    assert "infer: up to date" in ok(cli(run, *args, base=base))


def test_a_code_change_recomputes_its_stage_and_what_follows(base_run, copy, tmp_path):
    code = tmp_path / "code"
    shutil.copytree(REPO / "metaseg_pgn", code / "metaseg_pgn", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "pipelines", code / "pipelines")
    with open(code / "metaseg_pgn" / "segments.py", "a") as f:
        f.write("\n# an edit that changes no result\n")
    err = ok(cli(copy, pythonpath=code))
    assert "infer: up to date" in err
    assert "features: code ('metaseg_pgn.segments') changed" in err
    assert "ood_meta: code ('metaseg_pgn.segments') changed" in err  # its candidates' features use it too
    # the report draws ood_meta's candidates (ood_meta.extract_candidates, with segments.label_segments)
    assert "report: code ('metaseg_pgn.segments') changed" in err
    # the same table comes out, so the stages after features stay up to date
    assert "meta: up to date" in err
    # all equal but the per-frame caches and the manifests of the stages that run the changed module,
    # which carry the code's fingerprint, and the report's pages, which name the fingerprints (its
    # figures are the same)
    changed = {k for k, v in snapshot(copy).items() ^ base_run[1].items()}
    assert changed and all(k.startswith("features/_frames/") or k in (
        "features/manifest.json", "ood_meta/manifest.json", "report/manifest.json", "report/report.md",
        "report/report.html") for k in changed)


def test_report_refuses_meta_results_of_another_configuration(base_run, copy):
    proc = cli(copy, "stage=report", "meta.protocol=metaseg")
    assert proc.returncode == 2
    assert "'meta'" in proc.stderr and "run stage=meta first" in proc.stderr
    assert snapshot(copy) == base_run[1]


def test_batch_size_does_not_change_records_and_threads_are_fingerprinted(base_run, copy):
    err = ok(cli(copy, "stage=infer", "infer.batch_size=1", "force=[infer]"))
    assert "forced" in err
    assert snapshot(copy) == base_run[1]  # every record recomputed one batch at a time: same bytes
    assert "infer: up to date" in ok(cli(copy, "stage=infer", "infer.batch_size=3"))
    err = ok(cli(copy, "stage=infer", env={"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}))
    assert "'runtime'" in err and "infer: up to date" not in err


# --- one run per folder, clean-up ---------------------------------------------------------------


def test_a_second_run_on_a_busy_folder_is_refused_and_dead_runs_are_cleaned_up(base_run, copy):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from metaseg_pgn.lock import RunLock
            with RunLock({str(copy)!r}):
                print("locked", flush=True)
                sys.stdin.read()
        """)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = cli(copy, "stage=infer", process=True)
        assert proc.returncode == 2
        assert f"pid {holder.pid} on host {socket.gethostname()}" in proc.stderr
        assert "in use by another run" in proc.stderr
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: its lock file stays behind
        holder.wait()
    assert (copy / "run.lock").exists()
    records = copy / "infer" / "records" / "synthetic-val"
    dead = records / f".val_000001.npz.{holder.pid}.abcdef.tmp"  # a killed writer's temp file
    live = records / f".val_000002.npz.{os.getpid()}.abcdef.tmp"  # a live process's
    dead.write_bytes(b"partial")
    live.write_bytes(b"in progress")
    err = ok(cli(copy, "stage=infer", process=True))  # the live temp file is another process's
    assert "taking over the lock" in err
    assert not dead.exists() and live.exists()
    live.unlink()
    assert snapshot(copy) == base_run[1]


def test_export_folders_of_splits_no_longer_configured_are_removed(base_run, copy):
    ok(cli(copy, "ood_eval.export=true", "stage=ood_eval"))  # export is off by default
    export = copy / "ood_eval" / "submission" / "anomaly_p"
    before = {p.name for p in export.glob("*/*")}
    assert len(before) == 2
    obstacle_only = "ood_datasets=[{name: synthetic_obstacle, n: 3, size: [64,128], seed: 0}]"
    ok(cli(copy, obstacle_only, "ood_eval.export=true", "stage=[infer,ood_eval]"))
    after = {p.name for p in export.glob("*/*")}
    assert len(after) == 1 and after < before  # the anomaly split's folder of every method is gone
    assert not (copy / "infer" / "records" / "synthetic_anomaly-all").exists()
    ok(cli(copy, obstacle_only, "stage=ood_eval"))  # export off again: the whole export goes
    assert not (copy / "ood_eval" / "submission").exists()


# --- names and models that would write the wrong thing -------------------------------------------


def test_a_split_name_leaving_the_run_folder_is_refused(tmp_path):
    run = tmp_path / "a" / "b" / "run"
    proc = cli(run, "dataset.split=x/../../../escape", "stage=[infer,features]")
    assert proc.returncode == 2
    assert "x/../../../escape" in proc.stderr and "plain name" in proc.stderr
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and run not in p.parents]
    assert outside == [] and not list(run.rglob("*.npz")) and not list(run.rglob("*.parquet"))


def test_a_model_with_another_number_of_classes_is_refused_at_infer(tmp_path):
    proc = cli(tmp_path / "run", "model.num_classes=2", "ood_datasets=[]", "stage=infer")
    assert proc.returncode == 2
    assert "outputs 2 classes" in proc.stderr and "has 19" in proc.stderr
    assert list((tmp_path / "run").rglob("*.npz")) == []


def test_logits_beyond_float16_are_stored_finite_and_give_the_same_probabilities():
    z = torch.zeros(3, 4, 6, dtype=torch.float64)
    z[1] = -1e6  # class 1 is 10^6 below class 0 everywhere: float16 would hold -inf
    z[2, :, :3] = -5.0
    stored = relative_logits(z)
    assert stored.dtype == np.float16 and np.isfinite(stored).all()
    assert stored[1].min() == np.finfo(np.float16).min
    record = Record("f", pred=np.zeros((8, 12), np.uint8), logits=stored)  # resized x2 on read
    probs = record.probs()
    assert np.isfinite(probs).all()
    expected = torch.softmax(torch.nn.functional.interpolate(z[None], size=(8, 12), mode="bilinear"), 1)[0]
    np.testing.assert_allclose(probs, expected.numpy(), atol=2e-3)  # float16 storage of -5
    assert (probs[1] == 0).all()
