"""Stage ``infer``: run the network once per frame and write its record (see :mod:`metaseg_pgn.store`).

Records are written atomically one frame at a time, so an interrupted run resumes where it stopped.
A record is reused when its fingerprints match the configuration: ``core`` (model and its weights'
content hash, dataset, code, thread count), ``pgn`` (core + PGN settings), ``baselines`` (core +
baseline settings and the ensemble members' weights), and, for datasets of files, ``input`` (the
content hash of the frame's image and label, cached by path, size and mtime in
``<run_dir>/.cache/input_hashes.json``); and when its bytes are those the previous manifest
recorded (or, for a record written after it, every member of the file passes its CRC). Changing a
p value re-runs the (cheap) forward pass and PGN maps but keeps the costly MC-dropout and ensemble
maps; an image overwritten in place recomputes that frame alone.

Beside each record goes the frame's input image as a preview PNG (``previews/<dataset>/<frame>.png``,
:mod:`metaseg_pgn.frame_files`), for the report: written with a record made from scratch (another
input or ``core``) and whenever it is missing, damaged or of another format, listed in the
manifest like the records.
The manifest's ``outputs[dataset]`` records the frame ids, label kind, number of classes, the
SegmentMeIfYouCan ``track`` (``obstacle`` / ``anomaly``; None for an in-distribution dataset), the
group fingerprints and the ``records`` and ``previews`` folders: what later stages read.

Every frame goes through the network alone (batch of one), so a record does not depend on
``infer.batch_size``, which only sets the unit of work shared out under ``torchrun``: the frames are
cut into fixed batches of ``batch_size`` consecutive frames; every rank lists the batches with a
missing or stale record, all ranks meet at a barrier (so they all see the same list), and rank ``r``
takes every ``WORLD_SIZE``-th of them from the ``r``-th on. Records land in the same folders, one
file per frame, so ranks never write the same file. After a second barrier rank 0 alone checks that
every record is there, removes temporary files left by killed writers and writes the manifest; a
third barrier lets every rank go on to the next stage only once the manifest exists. A killed rank
makes ``torchrun`` stop the job; running it again (with any number of ranks, or without
``torchrun``) computes only what is missing.

On CPU the kernels may round differently with another number of intra-op threads, so the thread
count is part of ``core`` (``torchrun`` sets ``OMP_NUM_THREADS=1`` per rank: a record is identical to
a single-process run with one thread).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..baselines import ensemble_maps, mc_dropout_maps
from ..data.select import dataset_configs, make_dataset, ood_track
from ..distributed import barrier, init_process_group, rank_world
from ..frame_files import preview_current, write_preview
from ..integrity import InputHashes, code_fingerprint, file_problem, hash_once
from ..io import fingerprint
from ..lock import remove_dead_temps
from ..models.loader import load_model
from ..paths import UnsafeNameError, plain_name
from ..store import Record, RecordError, read_meta, read_record, relative_logits, encode_logs, write_record
from ..outputs import image_logits, select_logits
from ..wrapper import PGNModel, argmax_channels
from .base import Result, Stage
from .common import Plan, RunContext, StageError, dataset_key, evaluated_dataset, log, read_manifest

STAGE = "infer"


#: The modules whose source makes the records (with :mod:`.common` and :mod:`metaseg_pgn.io`).
RECORD_CODE = ("metaseg_pgn.stages.infer", "metaseg_pgn.wrapper", "metaseg_pgn.pgn", "metaseg_pgn.store",
               "metaseg_pgn.baselines", "metaseg_pgn.maps", "metaseg_pgn.models", "metaseg_pgn.data",
               "metaseg_pgn.paths", "metaseg_pgn.outputs")
#: The stage's code: the records' and the previews' (a preview carries its own format tag, so a
#: change there redraws the previews and keeps the records).
CODE = (*RECORD_CODE, "metaseg_pgn.frame_files")


def model_files(cfg: dict) -> dict[str, str]:
    """Content hashes of what makes the network: the shipped weights of the configured member, or
    for ``model=custom`` the source of the target's module and the weights it is given (the
    checkpoint for ``init=checkpoint``; for ``init=target`` every local file or folder named by a
    keyword argument, e.g. a ``from_pretrained`` folder)."""
    mcfg = cfg["model"]
    if mcfg["name"] != "custom":
        from ..models.pretrained import weights_path

        return {"weights": _hash_model_file(weights_path(mcfg["name"], mcfg.get("seed", 0)), "model weights")}
    from ..config_schema import CustomModel

    out = {"target": _target_source(str(mcfg["_target_"]))}
    init = str(mcfg.get("init", "checkpoint"))
    if init == "checkpoint" and mcfg.get("checkpoint"):
        out["checkpoint"] = _hash_model_file(Path(mcfg["checkpoint"]).expanduser(), "model.checkpoint")
    elif init == "target":
        settings = set(CustomModel.__dataclass_fields__)
        for key, value in sorted(mcfg.items()):
            if key not in settings and isinstance(value, str) and value and Path(value).expanduser().exists():
                out[f"arg:{key}"] = _hash_path(Path(value).expanduser())
    return out


def _target_source(target: str) -> str:
    """Source hash of the module that defines ``module.callable`` (its longest importable prefix)."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:i])
        try:
            return code_fingerprint([module])[module]
        except (ImportError, ValueError):
            continue
    return target  # not importable: the stage fails when it builds the model, naming the target


def _hash_path(path: Path) -> str:
    """A file's SHA-256, or one hash over every file of a folder (relative names and contents)."""
    if path.is_file():
        return hash_once(path)
    return fingerprint({p.relative_to(path).as_posix(): hash_once(p)
                        for p in sorted(path.rglob("*")) if p.is_file()})


def member_files(cfg: dict) -> dict[str, str]:
    """Content hashes of the shipped weights of the ensemble members in use."""
    from ..models.pretrained import weights_path

    return {str(s): _hash_model_file(weights_path(cfg["model"]["name"], s), "ensemble member weights")
            for s in ensemble_seeds(cfg)}


def _hash_model_file(path: Path, what: str) -> str:
    try:
        return hash_once(path)
    except FileNotFoundError:
        raise StageError(f"{what}: {path} does not exist") from None


def runtime(ctx: RunContext) -> dict:
    """The settings of this process that change the computed bytes: device and CPU thread count."""
    device = ctx.device
    if device.type == "cpu":
        return {"device": "cpu", "threads": torch.get_num_threads()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"device": device.type, "name": name}


def group_fingerprints(ctx: RunContext, ds_cfg: dict) -> dict[str, str]:
    """The fingerprint of each group of a record's contents (see the module docstring)."""
    cfg = ctx.cfg
    core = fingerprint({"model": cfg["model"], "dataset": ds_cfg, "model_files": model_files(cfg),
                        "code": code_fingerprint(RECORD_CODE), "runtime": runtime(ctx)})
    return {
        "core": core,
        "pgn": fingerprint({"core": core, "pgn": cfg["pgn"]}),
        "baselines": fingerprint({"core": core, "baselines": resolved_baselines(cfg), "seed": cfg["seed"],
                                  "members": member_files(cfg)}),
    }


def input_hashes(ctx: RunContext, ds) -> dict[str, str] | None:
    """Frame id → content hash of the frame's image and label files; None for generated datasets
    (their frames are a function of the configuration and the code, both fingerprinted)."""
    for frame_id in ds.frame_ids:
        try:
            plain_name(frame_id, f"frame id of {ds!r}", allow_slash=True)
        except UnsafeNameError as e:
            raise StageError(str(e)) from None
    if not callable(getattr(ds, "files", None)):
        return None
    hasher = ctx.cache.get("input_hashes")
    if hasher is None:
        hasher = ctx.cache["input_hashes"] = InputHashes(ctx.run_dir / ".cache" / "input_hashes.json")
    out = {}
    for frame_id in ds.frame_ids:
        files = ds.files(frame_id)
        out[frame_id] = fingerprint([hasher(p) for p in (files.image, files.label) if p is not None])
    hasher.save()
    return out


def frame_expect(groups: dict[str, str], inputs: dict[str, str] | None, frame_id: str) -> dict[str, str]:
    """What a frame's record must carry: the group fingerprints, and its input hash (file datasets)."""
    return groups if inputs is None else {**groups, "input": inputs[frame_id]}


def ensemble_seeds(cfg: dict) -> list[int]:
    """The configured ensemble members that are shipped (the deep ensemble needs at least two)."""
    ens = cfg["baselines"]["ensemble"]
    if not ens.get("enabled"):
        return []
    if cfg["model"]["name"] == "custom":
        raise StageError("baselines.ensemble needs several trained members: it is available for "
                         "shipped models; set baselines.ensemble.enabled=false for model=custom")
    from ..models.pretrained import available_seeds

    shipped = set(available_seeds(cfg["model"]["name"]))
    seeds = [int(s) for s in ens["seeds"] if int(s) in shipped]
    if len(seeds) < 2:
        log.warning("baselines.ensemble: only member(s) %s of %s are shipped; the ensemble maps are "
                    "left out (train more with stage=train)", seeds, list(ens["seeds"]))
        return []
    return seeds


def resolved_baselines(cfg: dict) -> dict:
    """The baseline settings as they take effect (the ensemble reduced to its shipped members)."""
    base = {k: dict(v) for k, v in cfg["baselines"].items()}
    seeds = ensemble_seeds(cfg) if base["ensemble"].get("enabled") else []
    base["ensemble"] = {"enabled": bool(seeds), "seeds": seeds}
    return base


SECTIONS = ("dataset", "ood_datasets", "model", "pgn", "baselines", "seed")


def config(ctx: RunContext) -> dict:
    """Configuration sections, model and ensemble weights, input files (per dataset), runtime."""
    cfg = ctx.cfg
    config = {k: cfg[k] for k in SECTIONS}
    config["ensemble_members"] = member_files(cfg)
    config["model_files"] = model_files(cfg)
    config["runtime"] = runtime(ctx)
    for ds_cfg in dataset_configs(cfg):
        dataset_key(ds_cfg)  # every name plain (or one clear error) before any is used
    inputs = {}
    for ds_cfg in dataset_configs(cfg):
        hashes = input_hashes(ctx, make_dataset(ds_cfg))
        inputs[dataset_key(ds_cfg)] = None if hashes is None else fingerprint(hashes)
    config["inputs"] = inputs
    return config


def records_dir(ctx: RunContext, ds_cfg: dict) -> Path:
    return ctx.stage_dir(STAGE) / "records" / dataset_key(ds_cfg)


def previews_dir(ctx: RunContext, ds_cfg: dict) -> Path:
    """Where the frames' input previews go (:mod:`metaseg_pgn.frame_files`)."""
    return ctx.stage_dir(STAGE) / "previews" / dataset_key(ds_cfg)


def frame_seed(seed: int, frame_id: str) -> int:
    """A per-frame seed, so MC dropout samples do not depend on batching or sharding."""
    return (seed * 1_000_003 + zlib.crc32(frame_id.encode())) % (2**31)


def work(ctx: RunContext, plan: Plan, upstream: dict[str, dict]) -> Result | None:
    """This rank's share of the missing or stale records and previews, then, on rank 0, the check
    that every one is there."""
    cfg = ctx.cfg
    if not dataset_configs(cfg):
        raise StageError("infer: no dataset to run on: dataset=none and ood_datasets is empty")
    rank, world = rank_world()
    if world > 1:
        init_process_group()
    device = ctx.device
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    # Records whose bytes the last manifest recorded are checked against it before reuse.
    previous = None if ctx.forced(STAGE) else read_manifest(ctx, STAGE)
    known = {ctx.run_dir / rel: e for rel, e in ((previous or {}).get("files") or {}).items()}
    reuse = not ctx.forced(STAGE)

    # A model without a checkpoint is randomly initialised: from a fixed seed, so that every rank
    # and every resumed run gets the same network (its records share one "core" fingerprint).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        loaded = load_model(cfg["model"], device)
    pgn = cfg["pgn"]
    wrapper = PGNModel(loaded.model, cfg["model"].get("last_conv"), output=loaded.output, ps=tuple(pgn["ps"]),
                       labels=tuple(pgn["labels"]), weights=pgn["weights"],
                       resolution=pgn["resolution"], include_bias=pgn["include_bias"],
                       deeper="deep" in pgn["layers"])
    members = _ensemble_members(cfg, loaded, device)
    main = evaluated_dataset(cfg)  # its labels fix the number of classes the model must have
    evaluated = make_dataset(main) if main is not None else None
    classes = evaluated.num_classes if evaluated is not None and evaluated.label_kind == "semantic" else None

    batch_size = int(cfg["infer"]["batch_size"])
    plans, outputs = [], {}
    for ds_cfg in dataset_configs(cfg):
        ds = make_dataset(ds_cfg)
        groups = group_fingerprints(ctx, ds_cfg)
        inputs = input_hashes(ctx, ds)
        expects = {f: frame_expect(groups, inputs, f) for f in ds.frame_ids}
        out_dir = records_dir(ctx, ds_cfg)
        view_dir = previews_dir(ctx, ds_cfg)
        stale = {f: (_stale_groups(out_dir / f"{f}.npz", expects[f], known) if reuse else set(expects[f]))
                 for f in ds.frame_ids}
        # A preview depends on the image alone: rewritten with a record made from scratch (another
        # input or core), when it is missing or damaged, or of another format.
        redraw = {f: len(stale[f]) == len(expects[f]) or not preview_current(view_dir / f"{f}.png")
                  for f in ds.frame_ids}
        todo = {f: bool(stale[f]) or redraw[f] for f in ds.frame_ids}
        plans.append(_DatasetPlan(ds_cfg, ds, expects, stale, redraw, out_dir, view_dir,
                                  stale_batches(ds.frame_ids, todo, batch_size)))
        outputs[dataset_key(ds_cfg)] = {
            "frames": ds.frame_ids,
            "label_kind": ds.label_kind,
            "num_classes": ds.num_classes,
            "track": ood_track(ds, ds_cfg),
            "fingerprints": groups,
            "records": out_dir.relative_to(ctx.run_dir).as_posix(),
            "previews": view_dir.relative_to(ctx.run_dir).as_posix(),
        }
    barrier()  # every rank has listed the same stale batches before any rank writes

    for p in plans:
        mine = p.batches[rank::world]
        bar = tqdm(total=sum(map(len, mine)), desc=f"infer {dataset_key(p.ds_cfg)}" +
                   (f" (rank 0 of {world})" if world > 1 else ""), unit="frame",
                   disable=not ctx.progress or rank != 0)
        for batch_ids in mine:
            for frame_id in batch_ids:
                if not (p.stale[frame_id] or p.redraw[frame_id]):
                    continue
                frame = p.ds.load(frame_id)
                if p.stale[frame_id]:
                    _infer_frame(frame, p.ds, wrapper, loaded, members, cfg, p.expects[frame_id],
                                 p.stale[frame_id], p.out_dir / f"{frame_id}.npz", device, classes)
                if p.redraw[frame_id]:
                    write_preview(p.view_dir / f"{frame_id}.png", frame.image)
            bar.update(len(batch_ids))
        bar.close()

    barrier()  # every rank has written its records
    if rank != 0:
        return None  # rank 0 checks the whole and writes the manifest
    missing = [f"{dataset_key(p.ds_cfg)}/{f}" for p in plans for f in p.ds.frame_ids
               if _stale_groups(p.out_dir / f"{f}.npz", p.expects[f], None, verify=False)
               or not (p.view_dir / f"{f}.png").exists()]
    if missing:
        raise StageError(f"infer: {len(missing)} records or previews missing after all ranks finished, "
                         f"e.g. {missing[:3]}; re-run to complete them")
    for p in plans:
        remove_dead_temps(p.out_dir)
        remove_dead_temps(p.view_dir)
    files = [folder / f"{f}{suffix}" for p in plans for f in p.ds.frame_ids
             for folder, suffix in ((p.out_dir, ".npz"), (p.view_dir, ".png"))]
    return Result(outputs, files=tuple(files))


#: Configuration sections, model and ensemble weights, input files, runtime, code; every rank of
#: a torchrun job computes its share of the frames.
DEFINITION = Stage(STAGE, upstream=(), sections=SECTIONS, config=config, code=CODE, work=work, sharded=True)
plan, run = DEFINITION.plan, DEFINITION.run


@dataclass
class _DatasetPlan:
    """What one rank knows of one dataset before writing: the frames to infer and to preview."""

    ds_cfg: dict
    ds: Any
    expects: dict[str, dict[str, str]]  # frame id -> the fingerprints its record must carry
    stale: dict[str, set[str]]  # frame id -> record groups to recompute
    redraw: dict[str, bool]  # frame id -> whether its preview is (re)written
    out_dir: Path
    view_dir: Path
    batches: list[list[str]]  # the batches with work, see :func:`stale_batches`


def stale_batches(frame_ids: list[str], stale: dict, batch_size: int) -> list[list[str]]:
    """The fixed batches (``batch_size`` consecutive frames) with at least one frame whose ``stale``
    entry is true (a stale record or preview)."""
    batches = [frame_ids[i:i + batch_size] for i in range(0, len(frame_ids), max(batch_size, 1))]
    return [b for b in batches if any(stale[f] for f in b)]


def _stale_groups(path: Path, expect: dict[str, str], known: dict[Path, dict] | None,
                  verify: bool = True) -> set[str]:
    """The groups of ``path`` to recompute: all when the record is missing, unreadable, of another
    input or (``verify``) damaged; else those whose fingerprint differs."""
    if not path.exists():
        return set(expect)
    try:
        have = read_meta(path)["fingerprints"]
    except RecordError:
        return set(expect)
    stale = {g for g, fp in expect.items() if have.get(g) != fp}
    if "input" in stale or len(stale) == len(expect) or (verify and not _intact(path, known or {})):
        return set(expect)
    return stale


def _intact(path: Path, known: dict[Path, dict]) -> bool:
    """The bytes the last manifest recorded, or (a record written since) every member passes its CRC."""
    entry = known.get(path)
    if entry is not None and file_problem(path, entry) is None:
        return True
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def _ensemble_members(cfg, loaded, device):
    main_seed = cfg["model"].get("seed", 0)
    return [loaded.model if s == main_seed else load_model(cfg["model"], device, seed=s).model
            for s in ensemble_seeds(cfg)]


@torch.no_grad()
def _infer_frame(frame, ds, wrapper, loaded, members, cfg, expect, stale, path, device, classes) -> None:
    """Run the network on one frame alone and write its record (reusing still valid baselines)."""
    x = loaded.preprocess([frame.image], device)
    try:
        out = wrapper(x)
        bad = not torch.isfinite(out.logits[0]).all()
    except ValueError as e:  # the wrapper refuses non-finite activations before we see the logits
        bad = not torch.isfinite(select_logits(loaded.model(x), loaded.output)).all()
        if not bad:
            raise StageError(f"infer: {ds!r}, frame {frame.frame_id!r}: {e}") from None
    if bad:
        raise StageError(f"infer: the model output for frame {frame.frame_id!r} of {ds!r} contains NaN "
                         "or inf")
    if classes is not None and out.feature_logits.shape[1] != classes:
        raise StageError(
            f"infer: the model outputs {out.feature_logits.shape[1]} classes but the dataset "
            f"{cfg['dataset']['name']!r} has {classes} (frame {frame.frame_id!r} of {ds!r}): use a model "
            f"for these labels (e.g. model.num_classes={classes} for model=custom)")
    # a model may return logits smaller than the image (SegFormer: 1/4): predict at the image size
    logits = image_logits(out.logits, x.shape[-2:], wrapper.align_corners)
    pred = out.pred if logits is out.logits else argmax_channels(logits)
    names = list(out.maps)
    baselines = None if stale & {"core", "baselines"} else _stored_baselines(path)
    if baselines is None:
        baselines = _compute_baselines(loaded, members, cfg["baselines"], x, cfg["seed"], frame.frame_id)
    record = Record(
        frame_id=frame.frame_id,
        pred=pred[0].cpu().numpy().astype(np.uint8),
        logits=relative_logits(out.feature_logits[0]),
        label=frame.label,
        **_pgn_fields(torch.stack([out.maps[n][0] for n in names]) if names else None),
        pgn_names=names,
        baselines=np.stack(list(baselines.values())) if baselines else None,
        baseline_names=list(baselines),
        align_corners=bool(wrapper.align_corners),
        fingerprints=expect,
        label_kind=ds.label_kind,
    )
    write_record(path, record)


def _pgn_fields(maps: torch.Tensor | None) -> dict:
    if maps is None:
        return {"log_pgn": None, "log_pgn_offset": None}
    residual, offset = encode_logs(maps)
    return {"log_pgn": residual, "log_pgn_offset": offset}


def _stored_baselines(path: Path) -> dict[str, np.ndarray]:
    """The baseline maps of an existing (checked) record whose core and baseline groups still match."""
    old = read_record(path)
    return {name: old.baselines[k] for k, name in enumerate(old.baseline_names)}


def _compute_baselines(loaded, members, base_cfg, x, seed, frame_id) -> dict[str, np.ndarray]:
    maps: dict[str, torch.Tensor] = {}
    if base_cfg["mc_dropout"].get("enabled"):
        maps.update(mc_dropout_maps(loaded.model, x, base_cfg["mc_dropout"]["samples"], output=loaded.output,
                                    generator_seed=frame_seed(seed, frame_id)))
    if members:
        maps.update(ensemble_maps(members, x, output=loaded.output))
    return {name: v[0].cpu().numpy().astype(np.float16) for name, v in maps.items()}
