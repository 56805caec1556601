"""What the schema's types cannot check (stage names, dataset keys by adapter, a custom model's
target and arguments, the ranges of ``ood_meta``), and Hydra's errors as one line naming the key.
Import the names from :mod:`metaseg_pgn.config`, which re-exports them.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from .config_schema import ALL_STAGES, DATASETS, MODELS, SCHEMAS, STAGES, CustomModel, RunConfig, ShippedModel


class ConfigError(ValueError):
    """A configuration or override that cannot be applied (the message names the key)."""


def one_line(error: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages as one line: the key, the problem, what is allowed."""
    text = str(error)
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause) and str(cause) not in text and "$VALUE" not in str(cause):
        text = f"{text}\n{cause}"
    unknown = re.search(r"Could not override '([^']+)'", text)
    schema = re.search(r"Key '([^']+)' not in '([A-Za-z]+)'", text)
    if unknown and schema:
        return unknown_key_message(unknown.group(1), schema.group(1), SCHEMAS.get(schema.group(2)))
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing:
        options = re.findall(r"^\t?\s*(\S+)$", text.split("Available options", 1)[-1].split("Config search path", 1)[0],
                             flags=re.M)
        options = [o for o in options if not o.endswith(":")]
        return (f"{missing.group(1)}={missing.group(2)}: no such option{_did_you_mean(missing.group(2), options)}; "
                f"available: {', '.join(options)}")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("object_type=", "full_key:", "reference_type=", "See https"))]
    return "; ".join(dict.fromkeys(lines))


def unknown_key_message(dotted: str, key: str, schema: type | None) -> str:
    allowed = [f.name for f in fields(schema)] if schema is not None else []
    return (f"{dotted}: unknown configuration key{_did_you_mean(key, allowed)}"
            + (f"; allowed here: {', '.join(allowed)}" if allowed else ""))


# ------------------------------------------------------------------------------------------------
# validation beyond types
# ------------------------------------------------------------------------------------------------


def validate(cfg: dict) -> None:
    """Check what the schema cannot: stage names, dataset keys by adapter, the model's target."""
    stages_to_run(cfg)
    check_keys(cfg, RunConfig, "")
    no_dataset = isinstance(cfg["dataset"], dict) and cfg["dataset"].get("name") == "none"
    cfg["dataset"] = {"name": "none"} if no_dataset else check_dataset(cfg["dataset"], "dataset")
    cfg["ood_datasets"] = [check_dataset(d, f"ood_datasets[{i}]") for i, d in enumerate(cfg["ood_datasets"])]
    check_model(cfg["model"])
    force = cfg.get("force") or []
    bad = [s for s in force if s not in STAGES]
    if bad:
        raise ConfigError(f"force={list(force)!r}: {bad[0]!r} is not a stage; choose among "
                          f"{', '.join(STAGES)}{_did_you_mean(str(bad[0]), list(STAGES))}")
    for p in cfg["pgn"]["ps"]:
        if not p > 0:
            raise ConfigError(f"pgn.ps={cfg['pgn']['ps']}: every p must be > 0")
    if not cfg["meta"]["models"]:
        raise ConfigError("meta.models=[]: give at least one of linear, gbt, mlp")
    check_ood_meta(cfg["ood_meta"])


def check_ood_meta(o: dict) -> None:
    """Values of ``ood_meta`` the schema's types do not restrict."""
    from .metrics.ood import MODES

    if o["mode"] not in MODES:
        raise ConfigError(f"ood_meta.mode={o['mode']!r}: choose one of {', '.join(MODES)}")
    thr = o["threshold"]
    if thr != "best_f1" and not (isinstance(thr, (int, float)) and not isinstance(thr, bool) and 0 < thr < 1):
        raise ConfigError(f"ood_meta.threshold={thr!r}: give best_f1 or a number in (0, 1) "
                          "(scores are divided by their maximum over the dataset)")
    for key in ("scores", "feature_sets", "models"):
        if not o[key]:
            raise ConfigError(f"ood_meta.{key}=[]: give a non-empty list")
    if o["n_runs"] < 1:
        raise ConfigError(f"ood_meta.n_runs={o['n_runs']}: give an integer >= 1")
    for key in ("test_size", "fp_below", "reject_above"):
        if not 0 < o[key] < 1:
            raise ConfigError(f"ood_meta.{key}={o[key]}: give a number in (0, 1)")


def check_keys(node: dict, schema: type, where: str) -> None:
    """Every key of ``node`` is a field of ``schema`` (also keys added with ``+``), recursively."""
    allowed = {f.name: f for f in fields(schema)}
    for key, value in node.items():
        dotted = f"{where}{key}"
        if key not in allowed:
            raise ConfigError(unknown_key_message(dotted, key, schema))
        sub = SCHEMAS.get(getattr(allowed[key].type, "__name__", str(allowed[key].type)))
        if sub is not None and isinstance(value, dict) and schema is not sub:
            check_keys(value, sub, dotted + ".")


def check_dataset(ds: Any, where: str) -> dict:
    """Validate one dataset mapping against its adapter's dataclass; returns it with defaults filled."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(ds, dict) or "name" not in ds:
        raise ConfigError(f"{where}: expected a mapping with a 'name' (one of {sorted(DATASETS)}), got {ds!r}")
    cls = DATASETS.get(ds["name"])
    if cls is None:
        raise ConfigError(f"{where}.name={ds['name']!r}: unknown dataset; known: {', '.join(sorted(DATASETS))}")
    allowed = [f.name for f in fields(cls)]
    for key in ds:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: not a setting of dataset {ds['name']!r}{_did_you_mean(key, allowed)}; "
                              f"allowed: {', '.join(allowed)}")
    try:
        node = OmegaConf.merge(OmegaConf.structured(cls(name=ds["name"])), ds)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}.{getattr(e, 'full_key', '') or '?'}: {one_line(e)}") from None
    return OmegaConf.to_container(node, enum_to_str=True)


def check_model(model: dict) -> None:
    """A custom model's keyword arguments must be parameters of its target."""
    if not isinstance(model, dict) or "name" not in model:
        raise ConfigError(f"model: expected a mapping with a 'name', got {model!r}")
    if model["name"] != "custom":
        allowed = [f.name for f in fields(MODELS.get(model["name"], ShippedModel))]
        for key in model:
            if key not in allowed:
                raise ConfigError(f"model.{key}: not a setting of model {model['name']!r}"
                                  f"{_did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}")
        return
    settings = [f.name for f in fields(CustomModel)]
    kwargs = [k for k in model if k not in settings]
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        typed = OmegaConf.merge(OmegaConf.structured(CustomModel),
                                {k: v for k, v in model.items() if k in settings})
    except OmegaConfBaseException as e:
        raise ConfigError(f"model.{getattr(e, 'full_key', '') or '?'}: {one_line(e)}") from None
    model.update(OmegaConf.to_container(typed, enum_to_str=True))
    from .models.loader import ModelError, input_normalization, output_selector

    try:  # model.normalize with model.mean/std, model.output
        input_normalization(model)
        output_selector(model)
    except ModelError as e:
        raise ConfigError(str(e)) from None
    target = resolve_target(model["_target_"])
    params = inspect.signature(target).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        typo = difflib.get_close_matches(key, settings, n=1, cutoff=0.8)
        if key not in accepted and (not takes_any or typo):
            raise ConfigError(
                f"model.{key}: neither a setting of model=custom ({', '.join(settings)}) nor a parameter "
                f"of {model['_target_']} ({', '.join(accepted) or 'none'}){_did_you_mean(key, settings + accepted)}")
    if model["init"] == "checkpoint" and not model.get("checkpoint"):
        raise ConfigError(
            "model.checkpoint is not set: give model.checkpoint=FILE (a state_dict), model.init=target when "
            "the target loads its own weights (from_pretrained), or model.init=random to run an untrained network")
    if model["init"] == "checkpoint" and not Path(model["checkpoint"]).expanduser().is_file():
        raise ConfigError(f"model.checkpoint: {model['checkpoint']} does not exist")


def resolve_target(path: str):
    """``pkg.module.attr[.attr]`` → the object (Hydra's ``_target_`` convention)."""
    parts = str(path).split(".")
    failed: dict[str, ImportError] = {}
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module)
        except ImportError as e:
            failed[module] = e
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        if callable(obj):
            return obj
        raise ConfigError(f"model._target_={path!r} is not callable")
    # "No module named <the prefix tried>" below the top package only says that prefix is not a
    # module; any other import error (a package that is not installed, a module that fails on
    # import) is the reason to name.
    why = next((f"{type(e).__name__}: {e}; " for name, e in failed.items()
                if name == parts[0] or not (isinstance(e, ModuleNotFoundError) and e.name == name)), "")
    raise ConfigError(f"model._target_={path!r} cannot be imported ({why}give module.callable, "
                      f"e.g. mypackage.models.build)")


def _did_you_mean(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def stages_to_run(cfg: dict) -> list[str]:
    """The stages to run in the given order; ``all`` (alone or in a list) stands for ALL_STAGES."""
    stage = cfg["stage"]
    if not isinstance(stage, (str, list, tuple)) or (not isinstance(stage, str) and not stage):
        raise ConfigError(f"stage={stage!r}: give a stage name or a non-empty list of them, "
                          f"from {', '.join(('all',) + STAGES)}")
    out: list[str] = []
    for s in [stage] if isinstance(stage, str) else list(stage):
        if s != "all" and s not in STAGES:
            raise ConfigError(f"stage={s!r}: choose one of {', '.join(('all',) + STAGES)}"
                              f"{_did_you_mean(str(s), list(STAGES))}")
        out.extend(ALL_STAGES if s == "all" else [s])
    return list(dict.fromkeys(out))  # a stage named twice runs once
