"""Shared fixtures: tiny pipeline configurations that run in seconds on a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metaseg_pgn import config as config_mod

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


def run_cli(*args: str, cwd: Path = REPO, umask: int | None = None, warnings_as_errors: bool = False,
            timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m metaseg_pgn.run ARGS`` in a subprocess, as a user runs it, in ``cwd``; the tests
    folder is importable (for ``model._target_=module.callable``). ``umask`` sets the process's
    umask, ``warnings_as_errors`` runs Python with ``-W error``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1"}
    flags = ["-W", "error"] if warnings_as_errors else []
    return subprocess.run([sys.executable, *flags, "-m", "metaseg_pgn.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


@pytest.fixture
def tiny_cfg(tmp_path):
    """A composed configuration of a tiny run in ``tmp_path / 'run'`` (see :func:`tiny_overrides`)."""
    return config_mod.compose(tiny_overrides(tmp_path / "run"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: extra threads only contend on a shared machine (restored afterwards).
    Modules use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
