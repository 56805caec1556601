"""Configuration: Hydra structured configs, shipped inside the package.

Every section of a run's configuration is a dataclass below, stored in Hydra's ConfigStore, so an
unknown key or a value of the wrong type is an error naming the key. The YAML files in
``metaseg_pgn/conf`` choose the options: ``config.yaml`` (the primary config), the config groups
``pipeline/`` (synthetic, cityscapes, smiyc), ``dataset/`` and ``model/``. A user's own config
folder joins through Hydra's search path (``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]``).

The stages receive the composed configuration as a plain nested ``dict`` (see :func:`compose`).
docs/configuration.md lists every key; it is generated from these dataclasses
(``python -m metaseg_pgn.config_doc``).
"""

from __future__ import annotations

import difflib
import hashlib
import enum
import importlib
import inspect
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

CONFIG_MODULE = "metaseg_pgn.conf"
CONFIG_NAME = "config"

STAGES = ("train", "infer", "features", "meta", "pixel_eval", "ood_eval", "ood_meta", "report")
ALL_STAGES = ("infer", "features", "meta", "pixel_eval", "ood_eval", "ood_meta", "report")

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ConfigError(ValueError):
    """A configuration or override that cannot be applied (the message names the key)."""


# ------------------------------------------------------------------------------------------------
# choices
# ------------------------------------------------------------------------------------------------


class Weights(str, enum.Enum):
    paper = "paper"  # eq. 5/6 of the paper, as published
    gradient = "gradient"  # the true gradient s - y


class Resolution(str, enum.Enum):
    feature = "feature"
    input = "input"


class Label(str, enum.Enum):
    oh = "oh"
    uni = "uni"


class Layer(str, enum.Enum):
    last = "last"
    deep = "deep"


class Protocol(str, enum.Enum):
    grouped = "grouped"
    pgn_authors = "pgn_authors"
    metaseg = "metaseg"


class Standardize(str, enum.Enum):
    train = "train"
    all = "all"


class MetaModel(str, enum.Enum):
    linear = "linear"  # logistic regression / linear regression (MetaSeg's)
    gbt = "gbt"  # scikit-learn's histogram gradient boosting
    mlp = "mlp"  # a small MLP (hidden layers 64, 32)


class Executor(str, enum.Enum):
    process = "process"
    dask = "dask"


class Entropy(str, enum.Enum):
    exact = "exact"  # -Σ s log s / log C
    metaseg = "metaseg"  # MetaSeg's Σ s log(s + 1.19e-7) / log(1/C), to reproduce its columns


class Normalize(str, enum.Enum):
    imagenet = "imagenet"  # ImageNet mean/std (torchvision, most HuggingFace checkpoints)
    none = "none"  # the image in [0, 1] as it is
    custom = "custom"  # model.mean and model.std


class ModelInit(str, enum.Enum):
    checkpoint = "checkpoint"  # load model.checkpoint (a state_dict file)
    target = "target"  # the target loads its own weights (e.g. from_pretrained of a local folder)
    random = "random"  # an untrained network, only when asked for; the report says so


# ------------------------------------------------------------------------------------------------
# datasets (config group `dataset`; also the entries of `ood_datasets`)
# ------------------------------------------------------------------------------------------------


@dataclass
class SyntheticDataset:
    """Synthetic street scenes in Cityscapes trainIds, generated on the fly."""

    name: str = "synthetic"  # the adapter
    split: str = "val"  # train | val
    n: Optional[int] = 80  # frames; null: the split's full size
    size: List[int] = field(default_factory=lambda: [256, 512])  # [height, width]
    seed: int = 0  # the world's seed


@dataclass
class SyntheticOoDDataset:
    """Synthetic OoD track (road obstacles or anomalies), labels 0/1/255."""

    name: str = "synthetic_obstacle"  # synthetic_obstacle | synthetic_anomaly
    n: int = 30  # frames
    size: List[int] = field(default_factory=lambda: [256, 512])  # [height, width]
    seed: int = 0  # the world's seed


@dataclass
class CityscapesDataset:
    """leftImg8bit/{split}/{city}/*_leftImg8bit.png with gtFine labels."""

    name: str = "cityscapes"  # the adapter
    root: str = "data/cityscapes"  # the folder holding leftImg8bit/ and gtFine/
    split: str = "val"  # train | val | test (test: no labels)
    label_source: str = "auto"  # auto | labelIds | labelTrainIds


@dataclass
class FolderDataset:
    """A folder of images without labels."""

    name: str = "folder"  # the adapter
    root: str = "data/images"  # the folder
    pattern: str = "**/*.png|jpg|jpeg|webp"  # glob below root; | separates extensions
    split: str = "all"  # a name for the frames (folder names of the outputs)


@dataclass
class RoadTrackDataset:
    """SegmentMeIfYouCan RoadAnomaly21 / RoadObstacle21: images/, labels_masks/."""

    name: str = "road_anomaly21"  # road_anomaly21 | road_obstacle21
    root: str = "data/smiyc/dataset_AnomalyTrack"  # the dataset_AnomalyTrack / dataset_ObstacleTrack folder
    split: str = "all"  # the benchmark's splits (all, validation, test, ...)
    require_labels: Optional[bool] = None  # null: labels where the split has them


@dataclass
class LostAndFoundDataset:
    """LostAndFound in the Cityscapes layout (leftImg8bit/, gtCoarse/)."""

    name: str = "lost_and_found"  # the adapter
    root: str = "data/smiyc/dataset_LostAndFound"  # the folder holding leftImg8bit/ and gtCoarse/
    split: str = "test"  # test | train
    no_known: bool = True  # the benchmark's test-NoKnown selection
    exclude_prefixes: Optional[List[str]] = None  # frame-id prefixes to drop; null: the benchmark's
    invalid_frames: Optional[List[str]] = None  # frames to drop; null: the benchmark's list


@dataclass
class FishyscapesDataset:
    """Fishyscapes LostAndFound: labels/val/*_fishy-labels.png plus the LostAndFound images."""

    name: str = "fishyscapes_laf"  # the adapter
    root: str = "data/smiyc/dataset_FishyLAF"  # the folder holding labels/val/
    laf_root: Optional[str] = None  # the LostAndFound images; null: looked for beside root


@dataclass
class NoDataset:
    """No evaluated dataset (``dataset=none``, as in ``pipeline=smiyc``): only the OoD datasets
    are run; features, meta and pixel_eval skip themselves."""

    name: str = "none"  # the option


DATASETS: dict[str, type] = {
    "synthetic": SyntheticDataset,
    "synthetic_obstacle": SyntheticOoDDataset,
    "synthetic_anomaly": SyntheticOoDDataset,
    "cityscapes": CityscapesDataset,
    "folder": FolderDataset,
    "road_anomaly21": RoadTrackDataset,
    "road_obstacle21": RoadTrackDataset,
    "lost_and_found": LostAndFoundDataset,
    "fishyscapes_laf": FishyscapesDataset,
}


# ------------------------------------------------------------------------------------------------
# models (config group `model`)
# ------------------------------------------------------------------------------------------------


@dataclass
class ShippedModel:
    """The compact DeepLabV3+ trained on the synthetic world, shipped inside the package."""

    name: str = "synthetic_compact"  # the shipped model
    seed: int = 0  # which shipped training seed (the ensemble uses several)
    last_conv: Optional[str] = None  # module name of the last conv; null: found by forward hooks


@dataclass
class CustomModel:
    """A model of your own: ``_target_`` is a callable returning an ``nn.Module``.

    Every other key of ``model`` that is not a field here is passed to the target as a keyword
    argument (``model.num_classes=19``) and must be one of its parameters.
    """

    name: str = "custom"  # the option
    _target_: str = "metaseg_pgn.models.compact"  # module.callable returning an nn.Module
    init: ModelInit = ModelInit.checkpoint  # where the weights come from
    checkpoint: Optional[str] = None  # a state_dict file (for init=checkpoint)
    last_conv: Optional[str] = None  # module name of the last conv; null: found by forward hooks
    normalize: Normalize = Normalize.imagenet  # input normalisation of RGB in [0, 1]
    mean: Optional[List[float]] = None  # three numbers, with normalize=custom only
    std: Optional[List[float]] = None  # three numbers > 0, with normalize=custom only
    output: Optional[str] = None  # where its logits are: null (tensor, key out/logits), a key, attribute or index


MODELS: dict[str, type] = {"synthetic_compact": ShippedModel, "custom": CustomModel}


# ------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------


@dataclass
class PGNConfig:
    """PGN maps computed by ``infer`` (DESIGN.md section 1)."""

    ps: List[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 1.0, 2.0])  # the p of the p-norms
    labels: List[Label] = field(default_factory=lambda: [Label.oh, Label.uni])  # one-hot of the prediction, uniform
    weights: Weights = Weights.paper  # paper: eq. 5/6 as published; gradient: the true s - y
    resolution: Resolution = Resolution.feature  # feature: the last conv's, resized; input: exact per pixel
    layers: List[Layer] = field(default_factory=lambda: [Layer.last])  # deep: the conv before the last
    include_bias: Optional[bool] = None  # null: iff the conv has a bias


@dataclass
class MCDropoutConfig:
    """MC dropout baseline."""

    enabled: bool = True  # MC dropout maps mcd_E, mcd_MI
    samples: int = 25  # forward samples


@dataclass
class EnsembleConfig:
    """Deep-ensemble baseline."""

    enabled: bool = True  # deep-ensemble maps ens_E, ens_MI (shipped models)
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])  # the members' training seeds


@dataclass
class BaselinesConfig:
    """Sampling baselines computed by ``infer`` beside the PGN maps."""

    mc_dropout: MCDropoutConfig = field(default_factory=MCDropoutConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)


@dataclass
class InferConfig:
    """``infer``: the network's forward pass, PGN maps and baselines into per-frame records."""

    batch_size: int = 4  # frames per unit of work under torchrun; each frame goes through the network alone (no byte depends on it)


@dataclass
class FeaturesConfig:
    """``features``: segments and per-segment features into Parquet."""

    workers: int = 1  # processes computing frames
    executor: Executor = Executor.process  # a local process pool, or Dask
    scheduler: Optional[str] = None  # Dask scheduler address; null: a local cluster
    entropy: Entropy = Entropy.exact  # E columns: the exact normalised entropy, or MetaSeg's (eps inside the log)


@dataclass
class MetaConfig:
    """``meta``: meta classification (IoU = 0) and regression (IoU) per feature set."""

    protocol: Protocol = Protocol.grouped  # grouped: no frame on both sides; the anchors' leaky ones
    n_runs: Optional[int] = None  # null: the protocol's own (grouped 5, pgn_authors 5, metaseg 10)
    test_size: Optional[float] = None  # null: the protocol's own (0.2, 0.2, 0.5)
    min_inner: bool = False  # only segments with S_in > 0 (MetaSeg's choice)
    standardize: Standardize = Standardize.train  # train: fitted on the training part; all: the anchors' leak
    feature_sets: Any = "auto"  # auto, or a list of set names
    custom_feature_sets: Dict[str, List[str]] = field(default_factory=dict)  # name -> regexes
    models: List[MetaModel] = field(default_factory=lambda: [MetaModel.linear])  # meta models, each on the same splits


@dataclass
class PixelEvalConfig:
    """``pixel_eval``: pixel-level calibration (ECE) and sparsification (AuSE)."""

    n_bins: int = 10  # ECE bins
    max_pixels: int = 2_000_000  # pixels kept (seeded subsample) for the sparsification curves


@dataclass
class OoDEvalConfig:
    """``ood_eval``: SegmentMeIfYouCan pixel and component metrics."""

    modes: List[str] = field(default_factory=lambda: ["smiyc", "exact"])  # the benchmark's binned metrics, unbinned
    export: bool = False  # write the scores in the SMIYC submission layout (on in pipeline=smiyc; ~200 MB for the default world)


@dataclass
class OoDMetaConfig:
    """``ood_meta``: OoD post-processing (Meta-OoD): meta-classify the thresholded components, remove the rejected ones."""

    scores: List[str] = field(default_factory=lambda: ["V", "E", "pgn_last_uni_p0_5"])  # score maps post-processed (names as in ood_eval)
    feature_sets: List[str] = field(default_factory=lambda: ["softmax", "pgn", "softmax+pgn"])  # candidate features: softmax (Meta-OoD's), pgn, both; or meta's built-in sets
    models: List[MetaModel] = field(default_factory=lambda: [MetaModel.linear])  # meta classifiers of the candidates
    threshold: Any = "best_f1"  # best_f1: the pixel best-F1 threshold of the fitting frames; or a number in (0, 1) on the score / its maximum
    mode: str = "smiyc"  # smiyc | smiyc2021 | exact: score rounding and the best-F1 threshold's pixel curve
    n_runs: int = 5  # seeded runs; run r splits the frames by frame with seed + r
    test_size: float = 0.5  # fraction of a dataset's frames post-processed and evaluated
    fp_below: float = 0.5  # target: a candidate whose benchmark PPV is below this is a false positive
    reject_above: float = 0.5  # remove a candidate whose predicted false-positive probability exceeds this


@dataclass
class ReportConfig:
    """``report``: the Markdown/HTML report."""

    example_frames: int = 3  # frames shown in the example figure


@dataclass
class TrainConfig:
    """``stage=train``: the compact DeepLabV3+ on the synthetic world (metaseg_pgn.stages.train)."""

    name: str = "synthetic_compact"  # the shipped model's name (file prefix)
    model: str = "compact"  # architecture in metaseg_pgn.models.deeplab
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # arguments of the architecture
    seed: int = "${seed}"  # type: ignore[assignment]  # initialisation, batches, augmentation
    data_seed: int = 0  # the synthetic world (the same for every ensemble member)
    size: List[int] = field(default_factory=lambda: [256, 512])  # frame [height, width]
    n_train: int = 600  # training frames
    n_val: int = 80  # validation frames
    iterations: int = 3000  # optimiser steps
    batch_size: int = 8  # crops per step
    crop: List[int] = field(default_factory=lambda: [160, 320])  # crop [height, width]
    scale: List[float] = field(default_factory=lambda: [0.8, 1.25])  # scale jitter range
    class_weights: Optional[str] = "sqrt_median"  # null | sqrt_median
    max_class_weight: float = 2.5  # clip of the class weights
    logit_adjust: bool = True  # subtract log(class weight) from the classifier bias after training
    lr: float = 4e-3  # AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup: int = 30  # linear warm-up steps
    poly_power: float = 0.9  # poly schedule power
    eval_every: int = 500  # intermediate val mIoU every N steps (0: only at the end)
    n_val_during: int = 20  # frames of the intermediate val mIoU
    log_every: int = 10  # log.jsonl line every N steps
    threads: Optional[int] = None  # torch threads; null: all cores
    out: Optional[str] = None  # null: {run_dir}/train
    cache: Optional[str] = None  # folder for the generated training frames (.npz)
    ship: bool = False  # also write weights + record into metaseg_pgn/models/weights/
    half: bool = True  # store the state_dict as float16 (the shipped format)
    progress: bool = "${progress}"  # type: ignore[assignment]  # progress bars


@dataclass
class RunConfig:
    """The whole configuration of one run; ``dataset`` and ``model`` come from their groups."""

    pipeline: str = "synthetic"  # the pipeline option (each pipeline file sets its name)
    stage: Any = "all"  # a stage name, all (every stage but train), or a list [infer,features]
    run_dir: str = "data/runs/${pipeline}"  # where every stage writes (one folder per stage)
    seed: int = 0  # seeds MC dropout sampling and anything else random
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    progress: bool = True  # progress bars
    force: List[str] = field(default_factory=list)  # stages to recompute even when up to date (docs/reuse.md)
    dataset: Any = None
    ood_datasets: List[Any] = field(default_factory=list)
    model: Any = None
    pgn: PGNConfig = field(default_factory=PGNConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    pixel_eval: PixelEvalConfig = field(default_factory=PixelEvalConfig)
    ood_eval: OoDEvalConfig = field(default_factory=OoDEvalConfig)
    ood_meta: OoDMetaConfig = field(default_factory=OoDMetaConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS: dict[str, type] = {
    "pgn": PGNConfig, "baselines": BaselinesConfig, "infer": InferConfig, "features": FeaturesConfig,
    "meta": MetaConfig, "pixel_eval": PixelEvalConfig, "ood_eval": OoDEvalConfig,
    "ood_meta": OoDMetaConfig, "report": ReportConfig, "train": TrainConfig,
}


_SCHEMAS: dict[str, type] = {cls.__name__: cls for cls in
                              [RunConfig, *SECTIONS.values(), MCDropoutConfig, EnsembleConfig, NoDataset,
                               *DATASETS.values(), *MODELS.values()]}


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


def one_line(error: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages as one line: the key, the problem, what is allowed."""
    text = str(error)
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause) and str(cause) not in text and "$VALUE" not in str(cause):
        text = f"{text}\n{cause}"
    unknown = re.search(r"Could not override '([^']+)'", text)
    schema = re.search(r"Key '([^']+)' not in '([A-Za-z]+)'", text)
    if unknown and schema:
        return unknown_key_message(unknown.group(1), schema.group(1), _SCHEMAS.get(schema.group(2)))
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
        sub = _SCHEMAS.get(getattr(allowed[key].type, "__name__", str(allowed[key].type)))
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
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        if callable(obj):
            return obj
        raise ConfigError(f"model._target_={path!r} is not callable")
    raise ConfigError(f"model._target_={path!r} cannot be imported (give module.callable, "
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


def to_yaml(cfg: dict) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False)
