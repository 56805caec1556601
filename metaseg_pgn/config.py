"""Configuration: Hydra structured configs, shipped inside the package.

Every section of a run's configuration is a dataclass of :mod:`metaseg_pgn.config_schema`, stored
in Hydra's ConfigStore (:func:`register_configs`), so an unknown key or a value of the wrong type
is an error naming the key. The YAML files in ``metaseg_pgn/conf`` choose the options:
``config.yaml`` (the primary config), the config groups ``pipeline/`` (synthetic, cityscapes,
smiyc), ``dataset/`` and ``model/``. A user's own config folder joins through Hydra's search
path (``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]``).

The stages receive the composed configuration as a plain nested ``dict`` (see :func:`compose`).
docs/configuration.md lists every key; it is generated from these dataclasses
(``python -m metaseg_pgn.config_doc``).

What the types cannot check, and Hydra's errors as one line, are in :mod:`metaseg_pgn.config_check`;
this module composes (Hydra) and re-exports the public names of both.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import fields
from pathlib import Path

from .config_check import (ConfigError, check_dataset, check_keys, check_model, check_ood_meta, one_line,
                           resolve_target, stages_to_run, unknown_key_message, validate)
from .config_schema import (ALL_STAGES, DATASETS, MODELS, SCHEMAS, SECTIONS, STAGES, BaselinesConfig,
                            CityscapesDataset, CustomModel, EnsembleConfig, Entropy, Executor, FeaturesConfig,
                            FishyscapesDataset, FolderDataset, InferConfig, Label, Layer, LostAndFoundDataset,
                            MCDropoutConfig, MetaConfig, MetaModel, ModelInit, NoDataset, Normalize, OoDEvalConfig,
                            OoDMetaConfig, PGNConfig, PixelEvalConfig, Protocol, ReportConfig, Resolution,
                            RoadTrackDataset, RunConfig, ShippedModel, Standardize, SyntheticDataset,
                            SyntheticOoDDataset, TrainConfig, Weights)

__all__ = [
    "CONFIG_MODULE", "CONFIG_NAME", "IMAGENET_MEAN", "IMAGENET_STD", "run_name", "register_configs", "compose",
    "to_plain", "model_choice", "rewrite_model_kwargs", "to_yaml",
    # config_check
    "ConfigError", "validate", "check_ood_meta", "check_keys", "check_dataset", "check_model", "resolve_target",
    "stages_to_run", "one_line", "unknown_key_message",
    # config_schema
    "STAGES", "ALL_STAGES", "SECTIONS", "DATASETS", "MODELS", "SCHEMAS", "RunConfig", "PGNConfig",
    "MCDropoutConfig", "EnsembleConfig", "BaselinesConfig", "InferConfig", "FeaturesConfig", "MetaConfig",
    "PixelEvalConfig", "OoDEvalConfig", "OoDMetaConfig", "ReportConfig", "TrainConfig", "SyntheticDataset",
    "SyntheticOoDDataset", "CityscapesDataset", "FolderDataset", "RoadTrackDataset", "LostAndFoundDataset",
    "FishyscapesDataset", "NoDataset", "ShippedModel", "CustomModel", "Weights", "Resolution", "Label", "Layer",
    "Protocol", "Standardize", "MetaModel", "Executor", "Entropy", "Normalize", "ModelInit",
]

CONFIG_MODULE = "metaseg_pgn.conf"
CONFIG_NAME = "config"

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def run_name(override_dirname: str) -> str:
    """A folder name for one run of a sweep, safe for any value (paths, lists, quotes).

    Characters other than letters, digits and ``._,=+-`` become ``_``; when that changed anything,
    or the name is long, a short hash of the original keeps different runs in different folders.
    """
    safe = re.sub(r"[^A-Za-z0-9._,=+\-]", "_", override_dirname) or "run"
    if safe != override_dirname or len(safe) > 120:
        digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:8]
        safe = f"{safe[:100]}-{digest}"
    return safe


def register_configs() -> None:
    """Store the schema and the group options in Hydra's ConfigStore, and the resolver ``run_name``
    that names sweep folders (idempotent)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("run_name", run_name, replace=True)

    cs = ConfigStore.instance()
    cs.store(name="schema", node=RunConfig)
    for name, cls in DATASETS.items():
        cs.store(group="dataset", name=name, node=cls(name=name))
    cs.store(group="dataset", name="none", node=NoDataset)
    cs.store(group="model", name="synthetic_compact", node=ShippedModel)
    # A plain mapping rather than the dataclass: a custom model's config adds the target's keyword
    # arguments as keys (in YAML, or with ++ that rewrite_model_kwargs adds); check_model types them.
    cs.store(group="model", name="custom", node=_plain(CustomModel()))


# ------------------------------------------------------------------------------------------------
# composing
# ------------------------------------------------------------------------------------------------


def _plain(obj) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(obj), enum_to_str=True)


def compose(overrides: list[str] = (), config_dir: str | Path | None = None) -> dict:
    """Compose the configuration of one run, as the command line would, into a plain dict.

    Parameters
    ----------
    overrides : list of str
        Hydra overrides as on the command line (``stage=features``, ``pgn.ps=[0.5,2]``,
        ``dataset=cityscapes``, ``model._target_=pkg.build``); no sweeps.
    config_dir : str or Path, optional
        A folder of the user's own configs, searched before the shipped ones.

    Returns
    -------
    dict
        The configuration with every interpolation resolved and enum values as strings.

    Raises
    ------
    ConfigError
        Unknown key, wrong type, unknown group option or value: one line naming the key.
    """
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    overrides = rewrite_model_kwargs(list(overrides), config_dir)
    if config_dir is not None:
        overrides = [*overrides, f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose(CONFIG_NAME, overrides=overrides)
    except Exception as e:  # Hydra raises several types; all mean "this configuration is wrong"
        raise ConfigError(one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()
    return to_plain(cfg)


def to_plain(cfg) -> dict:
    """A composed DictConfig (without its ``hydra`` node) → validated plain dict."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True,
                                       throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(one_line(e)) from None
    plain.pop("hydra", None)
    validate(plain)
    return plain


def model_choice(overrides: list[str], config_dir: str | Path | None = None) -> str:
    """The model group option these overrides end up with (``synthetic_compact``, ``custom``, ...)."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    chosen = [o for o in overrides if re.fullmatch(r"(pipeline|model)=[^,]*", o)]
    explicit = [o.split("=", 1)[1] for o in chosen if o.startswith("model=")]
    if explicit:
        return explicit[-1]
    if config_dir is not None:
        chosen.append(f"hydra.searchpath=[file://{Path(config_dir).resolve()}]")
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose(CONFIG_NAME, overrides=chosen, return_hydra_config=True)
        return str(cfg.hydra.runtime.choices.get("model"))
    except Exception as e:
        raise ConfigError(one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()


def rewrite_model_kwargs(overrides: list[str], config_dir: str | Path | None = None) -> list[str]:
    """Overrides that add to the user's own mappings get Hydra's ``++`` (add or override).

    Hydra adds a new key only with a ``+``. A custom model's keyword arguments
    (``model.num_classes=19`` with ``model=custom``) and the names of custom feature sets
    (``meta.custom_feature_sets.mine=[...]``) are new keys by nature; :func:`validate` checks the
    model's against the target's signature instead.
    """
    out = list(overrides)
    for i, o in enumerate(out):
        if re.match(r"meta\.custom_feature_sets\.[A-Za-z0-9_]+=", o):
            out[i] = "++" + o
    known = {f.name for f in fields(CustomModel)}
    candidates = [i for i, o in enumerate(out)
                  if re.match(r"model\.([A-Za-z_][A-Za-z0-9_]*)=", o) and o[6:].split("=", 1)[0] not in known]
    if candidates and model_choice(out, config_dir) == "custom":
        for i in candidates:
            out[i] = "++" + out[i]
    return out


def to_yaml(cfg: dict) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False)
