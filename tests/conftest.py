"""Shared fixtures: tiny pipeline configurations that run in seconds on a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The anchors' own outputs on fixed inputs (a copy of shared/reference; see tests/data/README.md).
REFERENCE_DATA = Path(__file__).resolve().parent / "data"


def tiny_overrides(run_dir: Path, n: int = 4, n_ood: int = 3, size=(64, 128),
                   shipped_model: bool = False, target: str | None = None) -> list[str]:
    """Overrides for a run on a few small synthetic frames with a randomly initialised compact
    model (``model=custom model.init=random``: no shipped weights needed), MC dropout with 2
    samples, no ensemble.

    ``shipped_model=True`` keeps the pipeline's trained model instead (its maps have the value
    ranges of a real run: the deeper-layer p = 0.1 maps reach ~1e38.5); ``target``
    ("module.callable", called with no arguments) builds the untrained user model to run instead."""
    h, w = size
    model = ["model=custom", "model.init=random"]
    if shipped_model:
        model = []
    if target is not None:
        model += [f"model._target_={target}"]
    return [
        *model,
        f"dataset.n={n}",
        f"dataset.size=[{h},{w}]",
        f"ood_datasets=[{{name: synthetic_obstacle, n: {n_ood}, size: [{h},{w}], seed: 0}},"
        f"{{name: synthetic_anomaly, n: {n_ood}, size: [{h},{w}], seed: 0}}]",
        "baselines.mc_dropout.samples=2",
        "baselines.ensemble.enabled=false",
        "meta.n_runs=2",
        "ood_meta.n_runs=2",
        "progress=false",
        f"run_dir={run_dir}",
    ]


def real_data_overrides(run_dir: Path) -> list[str]:
    """Overrides that keep a run of a real-data pipeline (cityscapes, smiyc, folder) small: MC
    dropout with 2 samples, no ensemble, 2 meta runs, no progress bars. The dataset roots and the
    model come from the README command under test."""
    return [
        "baselines.mc_dropout.samples=2",
        "baselines.ensemble.enabled=false",
        "meta.n_runs=2",
        "progress=false",
        f"run_dir={run_dir}",
    ]


#: The environment of a command-line run in the tests: the tests folder importable, one CPU thread
#: (whatever the test process's environment says: a Dask nanny once left OMP/MKL_NUM_THREADS in it).
CLI_ENV = {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}


def run_cli(*args: str, cwd: Path = REPO, umask: int | None = None, warnings_as_errors: bool = False,
            timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m metaseg_pgn.run ARGS`` in a subprocess, as a user runs it, in ``cwd``; the tests
    folder is importable (for ``model._target_=module.callable``). ``umask`` sets the process's
    umask, ``warnings_as_errors`` runs Python with ``-W error``."""
    env = {**os.environ, **CLI_ENV}
    flags = ["-W", "error"] if warnings_as_errors else []
    return subprocess.run([sys.executable, *flags, "-m", "metaseg_pgn.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def main_in_process(*args: str) -> subprocess.CompletedProcess:
    """The command line's entry point, ``metaseg_pgn.run.main(ARGS)``, in this process with one torch
    thread (as :data:`CLI_ENV` gives a subprocess): its exit status, stdout, and stderr with the log
    lines, as :func:`run_cli` returns them, without a fresh interpreter's imports (seconds each)."""
    import contextlib
    import io
    import logging

    import torch

    from metaseg_pgn.run import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger()
    level, threads = root.level, torch.get_num_threads()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(list(args))
    finally:
        torch.set_num_threads(threads)
        root.removeHandler(handler)
        root.setLevel(level)
    return subprocess.CompletedProcess(list(args), status, out.getvalue(), err.getvalue())


def cli_in_process(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """:func:`main_in_process` with ``cwd`` as the working directory (relative paths in ``args``,
    the default run folder), restored afterwards. For runs whose point is the pipeline, not the
    process: a fresh interpreter costs ~4.5 s CPU of imports per call."""
    import contextlib

    with contextlib.chdir(cwd):
        return main_in_process(*args)


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory) -> Path:
    """The tiny configuration (:func:`tiny_overrides`, every stage but train) run once per session
    through the command line. Shared: a test that changes anything works on a copy
    (``shutil.copytree``; a run folder holds no absolute path, so a copy is a valid run)."""
    run_dir = tmp_path_factory.mktemp("tiny_all") / "run"
    proc = run_cli(*tiny_overrides(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: extra threads only contend on a shared machine (restored afterwards).
    Modules use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(items) -> None:
    """A test that needs the session's command-line run (``tiny_run_dir``) is ``slow``."""
    for item in items:
        if "tiny_run_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
