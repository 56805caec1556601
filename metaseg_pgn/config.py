"""Configuration: YAML pipelines plus ``key=value`` overrides in Hydra's conventions.

A pipeline is a YAML file in ``pipelines/`` (``pipeline=NAME``) or a path to one. It may start with a
``defaults`` list choosing options of the config groups ``dataset`` and ``model``
(``pipelines/dataset/*.yaml``, ``pipelines/model/*.yaml``); the rest of the file overrides the keys
of :data:`DEFAULTS`. Command-line overrides follow Hydra:

- ``key.sub=value``      set an existing key (values parsed as YAML: ``pgn.ps=[0.5,2]``);
- ``+key.sub=value``     add a key that does not exist yet;
- ``dataset=cityscapes`` choose a config-group option;
- with ``-m``/``--multirun``, ``key=a,b`` sweeps over the values (cartesian product over keys).

Unknown keys are errors, so a typo never silently runs the default.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import yaml

GROUPS = ("dataset", "model")

PIPELINES_DIR = Path(__file__).resolve().parents[1] / "pipelines"

# Every setting with its default; pipeline files and overrides change these, never add to them
# silently. docs/configuration.md explains each key.
DEFAULTS: dict[str, Any] = {
    "pipeline": "synthetic",
    "stage": "all",
    "run_dir": None,  # None: data/runs/<pipeline>
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "progress": True,
    # The config groups: an option file in pipelines/dataset/ or pipelines/model/ replaces these.
    "dataset": {"name": "synthetic", "split": "val", "n": 80, "size": [256, 512], "seed": 0},
    "ood_datasets": [],  # list of dataset mappings (name, root, split, ...) for ood_eval
    "model": {"name": "synthetic_compact", "seed": 0},
    "pgn": {
        "ps": [0.1, 0.3, 0.5, 1.0, 2.0],
        "labels": ["oh", "uni"],
        "weights": "paper",  # paper (eq. 5/6) | gradient (true s - y)
        "resolution": "feature",  # feature | input
        "layers": ["last"],  # last, deep
        "include_bias": None,  # None: iff the conv has a bias
    },
    "baselines": {
        "mc_dropout": {"enabled": True, "samples": 25},
        "ensemble": {"enabled": True, "seeds": [0, 1, 2]},
    },
    "infer": {"batch_size": 4},
    "features": {"workers": 1, "executor": "process", "scheduler": None},
    "meta": {
        "protocol": "grouped",  # grouped | pgn_authors | metaseg
        "n_runs": None,  # None: the protocol's own (grouped 5, pgn_authors 5, metaseg 10)
        "test_size": None,  # None: the protocol's own (grouped 0.2, pgn_authors 0.2, metaseg 0.5)
        "min_inner": False,
        "standardize": "train",
        "feature_sets": "auto",  # auto: every built-in set whose columns exist
        "custom_feature_sets": {},  # name -> list of regex patterns
    },
    "pixel_eval": {"n_bins": 10, "max_pixels": 2_000_000},
    "ood_eval": {"modes": ["smiyc", "exact"], "export": True},
    "report": {"example_frames": 3},
}


class ConfigError(ValueError):
    """A configuration or override that cannot be applied."""


def load_yaml(path: Path) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def pipeline_path(name: str, pipelines_dir: Path = PIPELINES_DIR) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = pipelines_dir / f"{name}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in pipelines_dir.glob("*.yaml"))
    raise ConfigError(f"unknown pipeline {name!r}: no file {candidate}; known pipelines: {known}")


def group_option(group: str, option: str, pipelines_dir: Path = PIPELINES_DIR) -> dict:
    path = pipelines_dir / group / f"{option}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (pipelines_dir / group).glob("*.yaml"))
        raise ConfigError(f"unknown {group} option {option!r}: no file {path}; known: {known}")
    return load_yaml(path)


def parse_value(text: str) -> Any:
    """Parse an override value as YAML (``1`` → int, ``[1,2]`` → list, ``null`` → None)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def split_override(arg: str) -> tuple[str, str]:
    if "=" not in arg:
        raise ConfigError(f"override {arg!r} is not of the form key=value")
    key, value = arg.split("=", 1)
    if not key.lstrip("+"):
        raise ConfigError(f"override {arg!r} has an empty key")
    return key, value


def set_key(cfg: dict, dotted: str, value: Any, *, add: bool = False) -> None:
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            if add:
                node[part] = {}
            else:
                raise ConfigError(_unknown_key(".".join(parts[: i + 1]), node))
        node = node[part]
    last = parts[-1]
    if last not in node and not add:
        raise ConfigError(_unknown_key(dotted, node))
    node[last] = value


def _unknown_key(dotted: str, node: dict) -> str:
    return (f"unknown configuration key {dotted!r} (known here: {sorted(node)}); "
            f"use +{dotted}=... to add a new key")


def deep_update(base: dict, update: dict, *, path: str = "", strict: bool = True) -> dict:
    """Merge ``update`` into a copy of ``base``; unknown keys are errors when ``strict``."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = f"{path}.{key}" if path else key
        if key not in out:
            if strict and not _open_mapping(where):
                raise ConfigError(_unknown_key(where, out))
            out[key] = copy.deepcopy(value)
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = deep_update(out[key], value, path=where, strict=strict and not _open_mapping(where))
        else:
            out[key] = copy.deepcopy(value)
    return out


def _open_mapping(where: str) -> bool:
    # Mappings whose keys are the user's: dataset/model options carry adapter-specific arguments.
    return where.split(".")[0] in ("dataset", "model") or where.startswith("meta.custom_feature_sets")


def compose(overrides: list[str] = (), pipelines_dir: Path = PIPELINES_DIR) -> dict:
    """Build the configuration of one run from the pipeline file and overrides.

    Parameters
    ----------
    overrides : list of str
        ``key=value`` strings as given on the command line (no sweeps).

    Returns
    -------
    dict
        The full configuration; ``run_dir`` is resolved to a path string.
    """
    overrides = list(overrides)
    pairs = [split_override(o) for o in overrides]
    pipeline = next((v for k, v in pairs if k == "pipeline"), DEFAULTS["pipeline"])
    path = pipeline_path(pipeline, pipelines_dir)
    file_cfg = load_yaml(path)
    cfg = copy.deepcopy(DEFAULTS)

    choices = dict(file_cfg.pop("defaults", {}) or {})
    for key, value in pairs:
        if key in GROUPS:
            choices[key] = value
    for group, option in choices.items():
        if group not in GROUPS:
            raise ConfigError(f"{path}: 'defaults' names {group!r}, not a config group {GROUPS}")
        # A chosen option replaces the whole group: its keys are the adapter's own.
        cfg[group] = group_option(group, str(option), pipelines_dir)

    cfg = deep_update(cfg, file_cfg)
    cfg["pipeline"] = Path(pipeline).stem
    for key, value in pairs:
        if key in GROUPS or key == "pipeline":
            continue
        add = key.startswith("+")
        set_key(cfg, key.lstrip("+"), parse_value(value), add=add or _open_mapping(key))
    if cfg["run_dir"] is None:
        cfg["run_dir"] = str(Path("data") / "runs" / cfg["pipeline"])
    validate(cfg)
    return cfg


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Hydra multirun: ``a=1,2 b=x,y`` → four override lists (values in list brackets stay whole)."""
    axes = []
    for arg in overrides:
        key, value = split_override(arg)
        if "," in value and not value.lstrip().startswith(("[", "{")):
            axes.append([f"{key}={v}" for v in value.split(",")])
        else:
            axes.append([arg])
    return [list(combo) for combo in itertools.product(*axes)]


STAGES = ("train", "infer", "features", "meta", "pixel_eval", "ood_eval", "report")
ALL_STAGES = ("infer", "features", "meta", "pixel_eval", "ood_eval", "report")


def validate(cfg: dict) -> None:
    """Check values whose mistakes would otherwise surface deep inside a stage."""
    stage = cfg["stage"]
    if not isinstance(stage, (str, list, tuple)) or (not isinstance(stage, str) and not stage):
        raise ConfigError(f"stage={stage!r}: give a stage name or a non-empty list of them, "
                          f"from {('all',) + STAGES}")
    stages = [stage] if isinstance(stage, str) else list(stage)
    for s in stages:
        if s != "all" and s not in STAGES:
            raise ConfigError(f"stage={s!r}: choose one of {('all',) + STAGES}")
    pgn = cfg["pgn"]
    if pgn["weights"] not in ("paper", "gradient"):
        raise ConfigError(f"pgn.weights={pgn['weights']!r}: choose 'paper' or 'gradient'")
    if pgn["resolution"] not in ("feature", "input"):
        raise ConfigError(f"pgn.resolution={pgn['resolution']!r}: choose 'feature' or 'input'")
    if not all(isinstance(p, (int, float)) and p > 0 for p in pgn["ps"]):
        raise ConfigError(f"pgn.ps={pgn['ps']!r}: every p must be a number > 0")
    for label in pgn["labels"]:
        if label not in ("oh", "uni"):
            raise ConfigError(f"pgn.labels: {label!r} is not 'oh' or 'uni'")
    for layer in pgn["layers"]:
        if layer not in ("last", "deep"):
            raise ConfigError(f"pgn.layers: {layer!r} is not 'last' or 'deep'")
    if cfg["meta"]["protocol"] not in ("grouped", "pgn_authors", "metaseg"):
        raise ConfigError(f"meta.protocol={cfg['meta']['protocol']!r}: choose grouped, pgn_authors or metaseg")
    if cfg["features"]["executor"] not in ("process", "dask"):
        raise ConfigError(f"features.executor={cfg['features']['executor']!r}: choose 'process' or 'dask'")


def stages_to_run(cfg: dict) -> list[str]:
    """The stages to run in the given order; ``all`` (alone or in a list) stands for ALL_STAGES."""
    stage = cfg["stage"]
    out: list[str] = []
    for s in [stage] if isinstance(stage, str) else list(stage):
        out.extend(ALL_STAGES if s == "all" else [s])
    return list(dict.fromkeys(out))  # a stage named twice runs once


def to_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
