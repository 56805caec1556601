"""What every stage shares: the run folder, manifests, and the rule for staleness.

Each stage writes into ``<run_dir>/<stage>/`` and finishes by writing ``manifest.json`` that records
the fingerprint of everything its outputs depend on: the configuration sections it reads and the
fingerprints of the stages it reads from. A stage whose manifest carries the current fingerprint is
up to date and is skipped; otherwise it runs, reusing per-frame outputs whose own fingerprints still
match (so an interrupted stage resumes, and a changed PGN setting recomputes only the PGN maps).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..io import fingerprint, write_json

log = logging.getLogger("metaseg_pgn")


class StageError(RuntimeError):
    """A stage cannot run on the inputs it was given (the message says which and why)."""


@dataclass
class RunContext:
    """The configuration of one run and where its outputs live."""

    cfg: dict
    run_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.cfg["run_dir"])

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    @property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.get("device", "auto"))

    @property
    def progress(self) -> bool:
        return bool(self.cfg.get("progress", True))


def resolve_device(name: str) -> torch.device:
    """The torch device of the setting ``device`` (auto | cpu | cuda | cuda:N | mps ...).

    Raises
    ------
    StageError
        An unknown device name, or a device this machine or torch build does not have (one line
        naming it, instead of torch's assertion deep inside ``.to(device)``).
    """
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except (RuntimeError, ValueError) as e:
        raise StageError(f"device={name!r} is not a device name ({e}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise StageError(f"device={name!r}: CUDA is not available (torch {torch.__version__}, {build}, "
                             f"{torch.cuda.device_count()} GPUs visible); use device=cpu or device=auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise StageError(f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), numbered from 0")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise StageError(f"device={name!r}: MPS is not available on this machine; use device=cpu or device=auto")
    return device


NO_DATASET = "none"  # dataset=none: a pipeline without an evaluated dataset (only OoD sets)


def evaluated_dataset(cfg: dict) -> dict | None:
    """The configuration of the evaluated (semantic) dataset, or None under ``dataset=none``.

    A pipeline that only evaluates OoD sets (``pipeline=smiyc``) has no evaluated dataset; the
    stages that need one (``features``, ``meta``, ``pixel_eval``) then skip themselves.
    """
    ds = cfg.get("dataset")
    if not ds or ds.get("name") in (None, NO_DATASET):
        return None
    return ds


def dataset_key(ds_cfg: dict) -> str:
    """A folder name for one dataset and split, e.g. ``synthetic-val``."""
    split = ds_cfg.get("split") or ds_cfg.get("track") or "all"
    return f"{ds_cfg['name']}-{split}"


def manifest_path(ctx: RunContext, stage: str) -> Path:
    return ctx.stage_dir(stage) / "manifest.json"


def read_manifest(ctx: RunContext, stage: str) -> dict | None:
    path = manifest_path(ctx, stage)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StageError(f"{path}: corrupt manifest ({e}); delete it to recompute the stage") from None


def require_manifest(ctx: RunContext, stage: str, needed_by: str) -> dict:
    """The manifest of ``stage``, whose outputs ``needed_by`` reads.

    Refuses (StageError) outputs that this run's configuration would not produce: a configuration
    section recorded in the manifest (or in an upstream manifest it was made from) that differs
    from the current one, or an upstream stage that has re-run since. Otherwise a stage run on its
    own (``stage=features`` after changing ``pgn.ps``) would silently evaluate the old outputs.
    """
    manifest = read_manifest(ctx, stage)
    if manifest is None:
        raise StageError(
            f"stage {needed_by!r} needs the outputs of {stage!r}, but {manifest_path(ctx, stage)} "
            f"does not exist: run stage={stage} first (or stage=all)"
        )
    _require_current(ctx, stage, needed_by, manifest)
    return manifest


def _require_current(ctx: RunContext, stage: str, needed_by: str, manifest: dict) -> None:
    # Sections are top-level configuration keys (infer, features, meta); keys that are not (a
    # stage recording the inside of its own section) cannot be compared and are left alone.
    differ = [key for key, value in (manifest.get("config") or {}).items()
              if key in ctx.cfg and fingerprint(value) != fingerprint(ctx.cfg[key])]
    if differ:
        raise StageError(
            f"stage {needed_by!r} needs the outputs of {stage!r}, but {manifest_path(ctx, stage)} records "
            f"another configuration ({', '.join(map(repr, differ))} differ from this run's): "
            f"run stage={stage} first (or stage=all)"
        )
    for up, fp in (manifest.get("upstream") or {}).items():
        up_manifest = read_manifest(ctx, up)
        if up_manifest is None or up_manifest.get("fingerprint") != fp:
            raise StageError(
                f"stage {needed_by!r} needs the outputs of {stage!r}, but they were made from outputs "
                f"of {up!r} that have changed since (or are gone): run stage={stage} first (or stage=all)"
            )
        _require_current(ctx, up, needed_by, up_manifest)


def stage_fingerprint(config_part: Any, upstream: dict[str, str]) -> str:
    return fingerprint({"config": config_part, "upstream": upstream, "format": __version__})


def is_up_to_date(ctx: RunContext, stage: str, fp: str) -> bool:
    manifest = read_manifest(ctx, stage)
    return manifest is not None and manifest.get("fingerprint") == fp


def write_manifest(ctx: RunContext, stage: str, fp: str, config_part: Any,
                   upstream: dict[str, str], outputs: Any, started: float) -> dict:
    manifest = {
        "stage": stage,
        "fingerprint": fp,
        "config": config_part,
        "upstream": upstream,
        "outputs": outputs,
        "version": __version__,
        "torch": torch.__version__,
        "seconds": round(time.time() - started, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(manifest_path(ctx, stage), manifest)
    return manifest
