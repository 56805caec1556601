"""The command line, run as a user runs it: ``python -m metaseg_pgn.run ...`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from conftest import REPO, tiny_overrides
from metaseg_pgn import config as config_mod

# The stages as docs/configuration.md lists them.
DOCUMENTED_STAGES = ("train", "infer", "features", "meta", "pixel_eval", "ood_eval", "report", "all")


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "metaseg_pgn.run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_stage():
    proc = cli("--help")
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ") and line.split()}
    for stage in set(DOCUMENTED_STAGES) | set(config_mod.STAGES):
        assert stage in listed, f"stage {stage!r} missing from --help"
    assert "--cfg" in proc.stdout and "--multirun" in proc.stdout


def test_cfg_prints_the_composed_configuration_and_runs_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = cli("--cfg", "pgn.ps=[0.5,2]", "meta.n_runs=3", "dataset.n=7", "model=checkpoint",
               f"run_dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["pgn"]["ps"] == [0.5, 2]
    assert cfg["meta"]["n_runs"] == 3
    assert cfg["dataset"] == {"name": "synthetic", "split": "val", "n": 7, "size": [256, 512], "seed": 0}
    assert cfg["model"]["name"] == "checkpoint" and cfg["model"]["factory"] == "compact"
    assert cfg["run_dir"] == str(run_dir) and cfg["stage"] == "all" and cfg["pipeline"] == "synthetic"
    # every documented key is there, nothing else at the top level
    assert set(cfg) == set(config_mod.DEFAULTS)
    assert not run_dir.exists()


def test_cfg_with_multirun_prints_one_document_per_run(tmp_path):
    proc = cli("-m", "--cfg", "meta.n_runs=1,2", f"run_dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d is not None]
    assert [d["meta"]["n_runs"] for d in docs] == [1, 2]
    assert [d["run_dir"] for d in docs] == [str(tmp_path / "sweep" / f"meta.n_runs={n}") for n in (1, 2)]
    assert not (tmp_path / "sweep").exists()


def test_multirun_gives_one_run_folder_per_value(tmp_path):
    sweep = tmp_path / "sweep"
    args = tiny_overrides(sweep, n=3) + ["ood_datasets=[]", "stage=[infer,features,meta]",
                                          "meta.feature_sets=[metaseg]", "meta.n_runs=1,2"]
    proc = cli("-m", *args)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in sweep.iterdir()) == ["meta.n_runs=1", "meta.n_runs=2"]
    for n in (1, 2):
        results = pd.read_csv(sweep / f"meta.n_runs={n}" / "meta" / "meta_results.csv")
        assert sorted(results["run"].unique()) == list(range(n))
        assert (results["feature_set"] == "metaseg").all()


def test_stage_lists_may_name_all():
    """``all`` inside a list stands for the documented stages (it used to reach the stage table as a
    stage named 'all' and fail with KeyError)."""
    everything = ["infer", "features", "meta", "pixel_eval", "ood_eval", "report"]
    assert config_mod.stages_to_run(config_mod.compose(["stage=[all]"])) == everything
    assert config_mod.stages_to_run(config_mod.compose(["stage=[train,all]"])) == ["train", *everything]
    assert config_mod.stages_to_run(config_mod.compose(["stage=[infer,features]"])) == ["infer", "features"]
