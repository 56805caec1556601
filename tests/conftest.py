"""Shared fixtures: tiny pipeline configurations that run in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaseg_pgn import config as config_mod

REPO = Path(__file__).resolve().parents[1]
# The anchors' own outputs on fixed inputs (a copy of shared/reference; see tests/data/README.md).
REFERENCE_DATA = Path(__file__).resolve().parent / "data"


def tiny_overrides(run_dir: Path, n: int = 4, n_ood: int = 3, size=(64, 128)) -> list[str]:
    """Overrides for a run on a few small synthetic frames with a randomly initialised compact
    model (``model=custom model.init=random``: no shipped weights needed), MC dropout with 2
    samples, no ensemble."""
    h, w = size
    return [
        "model=custom",
        "model.init=random",
        f"dataset.n={n}",
        f"dataset.size=[{h},{w}]",
        f"ood_datasets=[{{name: synthetic_obstacle, n: {n_ood}, size: [{h},{w}], seed: 0}},"
        f"{{name: synthetic_anomaly, n: {n_ood}, size: [{h},{w}], seed: 0}}]",
        "baselines.mc_dropout.samples=2",
        "baselines.ensemble.enabled=false",
        "meta.n_runs=2",
        "progress=false",
        f"run_dir={run_dir}",
    ]


@pytest.fixture
def tiny_cfg(tmp_path):
    """A composed configuration of a tiny run in ``tmp_path / 'run'`` (see :func:`tiny_overrides`)."""
    return config_mod.compose(tiny_overrides(tmp_path / "run"))
