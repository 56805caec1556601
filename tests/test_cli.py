"""The command line, run as a user runs it: ``python -m metaseg_pgn.run ...`` in a subprocess."""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import re
import shutil
import subprocess
import typing
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, cli_in_process, run_cli
from metaseg_pgn import config as config_mod



def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The command line in this process (:func:`conftest.cli_in_process`); the cases that are about
    the process itself (exit status from the shell, Hydra's own flags) call :func:`run_cli`."""
    return cli_in_process(*args, cwd=cwd)


def one_frame_run(run_dir: Path) -> list[str]:
    """A run of one 32x64 frame, random compact model, no baselines: infer takes a second."""
    return ["model=custom", "model.init=random", "dataset.n=1", "dataset.size=[32,64]", "ood_datasets=[]",
            "baselines.mc_dropout.enabled=false", "baselines.ensemble.enabled=false", "progress=false",
            f"run_dir={run_dir}"]


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


def _schema_field(key: str):
    """The type of the configuration key ``a.b.c`` in the schema dataclasses, or None if no
    schema has it; ``dataset.*`` and ``model.*`` may be a key of any option of their group."""
    head, *rest = key.split(".")
    if head in ("dataset", "model"):
        options = config_mod.DATASETS.values() if head == "dataset" else config_mod.MODELS.values()
        found = [t for t in (_field_in(cls, rest) for cls in options) if t is not None]
        return found[0] if found else None
    return _field_in(config_mod.RunConfig, [head, *rest])


def _field_in(cls, path: list[str]):
    tp = cls
    for name in path:
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)  # resolved in the module that defines the dataclass
        if name not in hints:
            return None
        tp = hints[name]
    return tp


def _enum_of(tp):
    """The Enum class of a field typed ``E``, ``Optional[E]`` or ``List[E]``; else None."""
    for t in (tp, *typing.get_args(tp)):
        if isinstance(t, type) and issubclass(t, enum.Enum):
            return t
    return None


def help_problems(text: str) -> list[str]:
    """What the ``--help`` text says that the configuration schema does not: a stage missing or
    unknown, ``all`` not the stages it runs, a key no schema dataclass has, a list of choices that
    is not exactly the options (of an enum, a config group, the shipped pipelines; ``...`` marks an
    incomplete list), a list value with an item that is not an option."""
    problems = []
    stages_part = text.split("Stages (")[1].split("\n\n")[0]
    described = {line.split()[0]: line.split(None, 1)[1] for line in stages_part.splitlines()[1:]
                 if line.startswith("  ") and not line.startswith("   ")}
    if set(described) != {*config_mod.STAGES, "all"}:
        problems.append(f"stages listed {sorted(described)}, the configuration has {config_mod.STAGES} and all")
    if described.get("all", "").replace(",", " ").split() != list(config_mod.ALL_STAGES):
        problems.append(f"'all' is described as {described.get('all')!r}, it runs {config_mod.ALL_STAGES}")

    groups = {"pipeline": {p.stem for p in (REPO / "metaseg_pgn" / "conf" / "pipeline").glob("*.yaml")},
              "dataset": {*config_mod.DATASETS, "none"}, "model": set(config_mod.MODELS)}
    settings = text.split("Main settings")[1].split("Hydra's options")[0]
    keys = re.findall(r"(?<![\w.])([a-z_]+(?:\.[a-z_]+)*)=(\S+)", settings)
    if len(keys) < 20:
        problems.append(f"only {len(keys)} key=value settings found in the help")
    for key, value in keys:
        values = value.split("|")
        if key in groups:
            listed = {v for v in values if v != "..."}
            if not listed <= groups[key] or ("..." not in values and listed != groups[key]):
                problems.append(f"{key}={value}: the options are {sorted(groups[key])}")
            continue
        tp = _schema_field(key)
        if tp is None:
            problems.append(f"{key}: no such key in the configuration schema")
            continue
        choices = _enum_of(tp)
        if choices is None:
            continue
        items = [i for v in values for i in v.strip("[]").split(",")]
        if not set(items) <= {m.value for m in choices}:
            problems.append(f"{key}={value}: not options of {choices.__name__}")
        elif len(values) > 1 and "..." not in values and not value.startswith("[") \
                and set(values) != {m.value for m in choices}:
            problems.append(f"{key}={value}: the options are {[m.value for m in choices]}")
    return problems


def test_help_says_what_the_configuration_schema_has():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert help_problems(proc.stdout) == []
    assert "--cfg job" in proc.stdout and "--multirun" in proc.stdout


@pytest.mark.parametrize("edit, said", [
    (lambda t: t.replace("  ood_meta  ", "  oodmeta   "), "stages listed"),
    (lambda t: t.replace("ood_eval, ood_meta, report", "ood_eval, report"), "'all' is described"),
    (lambda t: t.replace("pgn.weights=", "pgn.weight="), "pgn.weight: no such key"),
    (lambda t: t.replace("grouped|pgn_authors|metaseg", "grouped|metaseg"), "meta.protocol=grouped|metaseg"),
    (lambda t: t.replace("[linear,gbt,mlp]", "[linear,svm]"), "meta.models=[linear,svm]"),
    (lambda t: t.replace("synthetic_compact|custom", "synthetic_compact"), "model=synthetic_compact"),
])
def test_help_check_finds_a_help_text_that_drifted(edit, said):
    from metaseg_pgn.run import HELP

    drifted = edit(HELP)
    assert drifted != HELP
    assert any(said in p for p in help_problems(drifted)), help_problems(drifted)


def test_cfg_job_prints_the_composed_configuration_and_runs_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("--cfg", "job", "--resolve", "pgn.ps=[0.5,2]", "dataset.size=[512,1024]", "dataset.n=7",
               f"run_dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["pgn"]["ps"] == [0.5, 2.0]
    assert cfg["dataset"] == {"name": "synthetic", "split": "val", "n": 7, "size": [512, 1024], "seed": 0}
    assert [d["size"] for d in cfg["ood_datasets"]] == [[512, 1024]] * 2  # interpolated
    assert cfg["run_dir"] == str(run_dir) and cfg["stage"] == "all" and cfg["pipeline"] == "synthetic"
    assert not run_dir.exists()


# A typo and a wrong type in every group of the configuration.
BAD = [
    (["pipeline=synthtic"], "pipeline=synthtic: no such option"),
    (["dataset.roo=/x"], "dataset.roo: unknown configuration key"),
    (["dataset.n=many"], "could not be converted to Integer"),
    (["model.sed=1"], "model.sed: unknown configuration key"),
    (["model.seed=abc"], "could not be converted to Integer"),
    (["model=custom", "model.chekpoint=/x.pt"], "did you mean 'checkpoint'"),
    (["model=custom", "model.init=random", "model.mean=[a,b,c]"], "model.mean"),
    (["pgn.p=[1]"], "pgn.p: unknown configuration key"),
    (["pgn.weights=exact"], "expected one of [paper, gradient]"),
    (["baselines.mc_dropout.sample=3"], "did you mean 'samples'"),
    (["baselines.ensemble.enabled=maybe"], "baselines.ensemble.enabled=maybe"),
    (["infer.batchsize=2"], "did you mean 'batch_size'"),
    (["infer.batch_size=two"], "could not be converted to Integer"),
    (["features.worker=2"], "did you mean 'workers'"),
    (["features.executor=spark"], "expected one of [process, dask]"),
    (["meta.protocl=metaseg"], "did you mean 'protocol'"),
    (["meta.n_runs=x"], "could not be converted to Integer"),
    (["pixel_eval.nbins=5"], "did you mean 'n_bins'"),
    (["pixel_eval.max_pixels=lots"], "could not be converted to Integer"),
    (["ood_eval.mode=[exact]"], "did you mean 'modes'"),
    (["ood_eval.export=perhaps"], "ood_eval.export=perhaps"),
    (["report.example_frame=2"], "did you mean 'example_frames'"),
    (["report.example_frames=x"], "could not be converted to Integer"),
    (["train.iteration=1"], "did you mean 'iterations'"),
    (["train.lr=fast"], "could not be converted to Float"),
    (["stage=infr"], "did you mean 'infer'"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_bad_key_or_value_is_one_line_with_exit_2_and_writes_nothing(tmp_path, capsys, overrides, message):
    """The entry point in this process (the subprocess path, exit status included, is the same
    ``main``: see the subprocess cases below and test_a_bad_override_exits_2_from_the_shell)."""
    from metaseg_pgn.run import main

    status = main([*overrides, f"run_dir={tmp_path / 'run'}"])
    out, err = capsys.readouterr()
    assert_one_line_error(subprocess.CompletedProcess([], status, out, err), message)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_override_exits_2_from_the_shell(tmp_path):
    proc = run_cli(*BAD[0][0], f"run_dir={tmp_path / 'run'}")
    assert_one_line_error(proc, BAD[0][1])
    assert list(tmp_path.iterdir()) == []


def test_a_missing_checkpoint_is_named_before_anything_runs(tmp_path):
    proc = cli("model=custom", f"model.checkpoint={tmp_path / 'nope.pt'}", f"run_dir={tmp_path / 'run'}")
    assert_one_line_error(proc, "model.checkpoint", str(tmp_path / "nope.pt"), "does not exist")
    assert not (tmp_path / "run").exists()


def test_random_initialisation_only_when_asked(tmp_path):
    proc = cli("model=custom", f"run_dir={tmp_path / 'run'}")
    assert_one_line_error(proc, "model.checkpoint is not set", "model.init=random")


def test_a_checkpoint_that_does_not_fit_names_the_file_and_keys(tmp_path):
    from metaseg_pgn.models import compact

    ckpt = tmp_path / "three_classes.pt"
    torch.save(compact(num_classes=3).state_dict(), ckpt)
    args = [a for a in one_frame_run(tmp_path / "run") if a != "model.init=random"]
    proc = cli(*args, f"model.checkpoint={ckpt}", "stage=infer")
    assert_one_line_error(proc, str(ckpt), "does not fit the model", "head.classifier.weight")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    proc = cli(*args, f"model.checkpoint={tmp_path / 'garbage.pt'}", "stage=infer")
    assert_one_line_error(proc, str(tmp_path / "garbage.pt"), "cannot be read")


def test_a_run_saves_its_composed_config_and_overrides_in_the_run_folder(tmp_path):
    """With run_dir relative to the working directory, as the default data/runs/<pipeline> is."""
    run_dir = tmp_path / "run"
    proc = cli(*one_frame_run(Path("run")), "stage=[infer,features]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["dataset"]["n"] == 1 and saved["model"]["init"] == "random"
    assert "dataset.n=1" in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    assert (run_dir / "infer" / "manifest.json").exists() and (run_dir / "features" / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the working directory is unchanged


def test_multirun_over_paths_gives_one_safely_named_folder_per_value(tmp_path):
    from metaseg_pgn.models import compact

    ckpts = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        (tmp_path / f"net{seed}").mkdir()
        ckpts.append(tmp_path / f"net{seed}" / "weights.pt")
        torch.save(compact().state_dict(), ckpts[-1])
    sweep = tmp_path / "sweep"
    args = [a for a in one_frame_run(sweep) if a != "model.init=random"]
    proc = cli("-m", *args, "stage=infer", f"model.checkpoint={ckpts[0]},{ckpts[1]}")
    assert proc.returncode == 0, proc.stderr
    folders = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name != ".hydra")
    assert len(folders) == 2
    for folder, ckpt in zip(sorted(folders, key=lambda f: str(ckpt_of(f))), ckpts):
        assert "/" not in folder.name and folder.name.startswith("model.checkpoint=")
        assert ckpt_of(folder) == str(ckpt)
        assert (folder / "infer" / "manifest.json").exists()


def ckpt_of(folder: Path) -> str:
    return yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())["model"]["checkpoint"]


def test_the_console_script_is_the_same_command():
    exe = shutil.which("metaseg-pgn")
    if exe is None:
        pytest.skip("the package is not installed (pip install .): no metaseg-pgn on PATH")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "stage=NAME" in proc.stdout


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                    reason="hydra-submitit-launcher is not installed (pip install '.[slurm]')")
def test_the_slurm_launcher_composes(tmp_path):
    proc = run_cli("--cfg", "hydra", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
               "hydra.launcher.timeout_min=60", f"run_dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stderr
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["partition"] == "gpu"
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_training_is_a_stage_of_the_same_configuration(tmp_path):
    run_dir = tmp_path / "run"
    proc = cli("stage=train", "train.n_train=2", "train.n_val=1", "train.size=[64,128]", "train.crop=[32,64]",
               "train.iterations=2", "train.eval_every=0", "train.batch_size=2", "seed=3", "progress=false",
               f"run_dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    record = yaml.safe_load((run_dir / "train" / "record.json").read_text())
    assert record["seed"] == 3 and record["training"]["iterations"] == 2
    assert (run_dir / "train" / "synthetic_compact_seed3.pt").exists()
