"""What every stage shares: the run folder, plans and manifests, and the rule for reuse (applied to
every stage by :func:`metaseg_pgn.stages.base.run_stage`).

Each stage writes into ``<run_dir>/<stage>/``. Before running it makes its :class:`Plan`: the
configuration it reads (with the content hashes of the model and input files where it reads
those), the code it runs (:func:`metaseg_pgn.integrity.code_fingerprint`) and a token of each
upstream stage's outputs (that stage's fingerprint and the hashes of its files). The plan's hash
is the stage's fingerprint. A stage finishes by writing ``manifest.json``: the fingerprint, the
plan, and every output file with its size and SHA-256 (:func:`write_manifest`, which also removes
the files of the stage folder that no longer belong to it).

A stage is up to date, and skipped, when its manifest carries the fingerprint of its current plan
and every file the manifest lists is there with the recorded size and hash; a stage named in
``force`` never is. Otherwise it runs, reusing per-frame outputs that are still valid (so an
interrupted stage resumes and a damaged output is recomputed alone). A stage that reads another
stage's outputs first checks, with :func:`require_manifest`, that they are what that stage would
compute now and that its files are intact; if not it stops with the command that repairs them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from .. import __version__
from ..integrity import check_files, code_fingerprint, digest, files_entry
from ..io import fingerprint, write_json
from ..lock import is_dead_temp
from ..data.select import dataset_key, evaluated_dataset  # noqa: F401 - what every stage names datasets by

log = logging.getLogger("metaseg_pgn")

MANIFEST = "manifest.json"


class StageError(RuntimeError):
    """A stage cannot run on the inputs it was given (the message says which and why)."""


@dataclass
class RunContext:
    """The configuration of one run and where its outputs live."""

    cfg: dict
    run_dir: Path = field(init=False)
    cache: dict = field(default_factory=dict, repr=False)  # per-process helpers (input hashes)

    def __post_init__(self) -> None:
        # Absolute, so that paths built from it and paths relative to it never mix (run_dir is
        # relative to the working directory by default).
        self.run_dir = Path(self.cfg["run_dir"]).absolute()

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    @property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.get("device", "auto"))

    @property
    def progress(self) -> bool:
        return bool(self.cfg.get("progress", True))

    def forced(self, stage: str) -> bool:
        """Whether the configuration's ``force`` list names ``stage`` (recompute, reuse nothing)."""
        return stage in (self.cfg.get("force") or [])


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


def recorded_track(infer_output: dict, ds_cfg: dict, needed_by: str) -> str:
    """The SegmentMeIfYouCan track (``obstacle`` or ``anomaly``) that ``infer`` recorded for a
    dataset (its manifest's ``outputs[dataset_key]``).

    Raises
    ------
    StageError
        The dataset has no track (neither its adapter nor its configuration names one).
    """
    track = infer_output.get("track")
    if track is None:
        raise StageError(f"{needed_by}: cannot tell the SMIYC track (obstacle or anomaly) of dataset "
                         f"{ds_cfg['name']!r}; set its 'track' in the configuration")
    return track


# ---------------------------------------------------------------------------------------------
# Plans and fingerprints


@dataclass
class Plan:
    """Everything a stage's outputs depend on; its hash is the stage's fingerprint.

    Attributes
    ----------
    config : dict
        The configuration sections the stage reads (top-level keys of the configuration), plus
        content hashes of the files it reads that are not outputs of another stage.
    upstream : dict of str to str
        Stage name → :func:`upstream_token` of that stage's manifest.
    code : dict of str to str
        :func:`metaseg_pgn.integrity.code_fingerprint` of the modules the stage runs.
    """

    config: dict
    upstream: dict[str, str]
    code: dict[str, str]

    @property
    def fingerprint(self) -> str:
        return fingerprint({"config": self.config, "upstream": self.upstream, "code": self.code,
                            "format": __version__})


#: Modules every stage runs: these rules, :func:`.base.run_stage`, the atomic writes, the datasets
#: by configuration and the torchrun barrier.
COMMON_CODE = ("metaseg_pgn.stages.common", "metaseg_pgn.stages.base", "metaseg_pgn.io", "metaseg_pgn.integrity",
               "metaseg_pgn.lock", "metaseg_pgn.data.select", "metaseg_pgn.distributed")


def make_plan(config: dict, upstream: dict[str, str], modules: Iterable[str]) -> Plan:
    """The plan of a stage that reads ``config``, the outputs ``upstream`` and runs ``modules``."""
    return Plan(config, upstream, code_fingerprint([*COMMON_CODE, *modules]))


def upstream_token(manifest: dict) -> str:
    """What a downstream stage records of an upstream manifest: the hashes of its files and the
    description of its outputs, i.e. the content it reads (an upstream re-run that writes the same
    bytes leaves what follows up to date; one that writes other bytes makes it recompute)."""
    return fingerprint({"files": digest(manifest.get("files") or {}), "outputs": manifest.get("outputs")})


def current_plan(ctx: RunContext, stage: str) -> Plan:
    """The plan ``stage`` would run with now (its :class:`~.base.Stage`'s ``plan``)."""
    from . import definition  # the registry imports the stages, which import this module

    return definition(stage).plan(ctx)


# ---------------------------------------------------------------------------------------------
# Manifests


def manifest_path(ctx: RunContext, stage: str) -> Path:
    return ctx.stage_dir(stage) / MANIFEST


def read_manifest(ctx: RunContext, stage: str) -> dict | None:
    """The stage's manifest, or None when it is missing, unreadable or edited (its checksum no
    longer matches): the stage then counts as never run and recomputes."""
    path = manifest_path(ctx, stage)
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        ok = isinstance(manifest, dict) and manifest.get("checksum") == _checksum(manifest)
    except (json.JSONDecodeError, UnicodeDecodeError):
        ok = False
    if not ok:
        log.warning("%s is damaged or was edited (it does not match its checksum); the stage %s is "
                    "treated as not run and recomputes", path, stage)
        return None
    return manifest


def _checksum(manifest: dict) -> str:
    return fingerprint({k: v for k, v in manifest.items() if k != "checksum"})


def is_up_to_date(ctx: RunContext, stage: str, plan: Plan) -> bool:
    """Manifest with the plan's fingerprint, and every file it lists intact; never when forced."""
    if ctx.forced(stage):
        log.info("%s: forced (force=%s): recomputing", stage, list(ctx.cfg.get("force") or []))
        return False
    manifest = read_manifest(ctx, stage)
    if manifest is None:
        return False
    if manifest.get("fingerprint") != plan.fingerprint:
        log.info("%s: %s changed since the last run: recomputing", stage, _what_changed(manifest, plan))
        return False
    problems = check_files(ctx.run_dir, manifest.get("files") or {})
    if problems:
        log.warning("%s: %d of its outputs are missing or damaged (%s): recomputing them", stage,
                    len(problems), _first(problems))
        return False
    return True


def require_manifest(ctx: RunContext, stage: str, needed_by: str) -> dict:
    """The manifest of ``stage``, whose outputs ``needed_by`` reads, checked first.

    Refuses (StageError, with the command that repairs it) outputs that ``stage`` would not
    produce now (another configuration, code, model or input files, or upstream outputs that
    changed since) and outputs that are missing or damaged. Otherwise a stage run on its own
    (``stage=features`` after changing ``pgn.ps``) would silently evaluate the old outputs.
    """
    manifest = read_manifest(ctx, stage)
    if manifest is None:
        raise StageError(
            f"stage {needed_by!r} needs the outputs of {stage!r}, but {manifest_path(ctx, stage)} is "
            f"missing or damaged: run stage={stage} first (or stage=all)")
    plan = current_plan(ctx, stage)
    if manifest.get("fingerprint") != plan.fingerprint:
        raise StageError(
            f"stage {needed_by!r} needs the outputs of {stage!r}, but they were made with another "
            f"{_what_changed(manifest, plan)}: run stage={stage} first (or stage=all)")
    problems = check_files(ctx.run_dir, manifest.get("files") or {})
    if problems:
        raise StageError(
            f"stage {needed_by!r} needs the outputs of {stage!r}, but {len(problems)} of them are "
            f"missing, damaged or changed since {stage} wrote them ({_first(problems)}): run "
            f"stage={stage} first (or stage=all), which recomputes them")
    return manifest


def _what_changed(manifest: dict, plan: Plan) -> str:
    parts = []
    old_cfg = manifest.get("config") or {}
    keys = sorted(set(old_cfg) | set(plan.config))
    differ = [k for k in keys if fingerprint(old_cfg.get(k)) != fingerprint(plan.config.get(k))]
    if differ:
        parts.append("configuration or input files (" + ", ".join(map(repr, differ)) + ")")
    old_code = manifest.get("code") or {}
    code = [k for k in sorted(set(old_code) | set(plan.code)) if old_code.get(k) != plan.code.get(k)]
    if code:
        parts.append("code (" + ", ".join(map(repr, code)) + ")")
    old_up = manifest.get("upstream") or {}
    up = [k for k in sorted(set(old_up) | set(plan.upstream)) if old_up.get(k) != plan.upstream.get(k)]
    if up:
        parts.append("upstream outputs (" + ", ".join(map(repr, up)) + ")")
    return " and ".join(parts) or "format"


def _first(problems: dict[str, str], n: int = 3) -> str:
    shown = "; ".join(f"{k}: {v}" for k, v in list(problems.items())[:n])
    return shown + (f"; and {len(problems) - n} more" if len(problems) > n else "")


def write_manifest(ctx: RunContext, stage: str, plan: Plan, outputs: Any, started: float,
                   files: Iterable[str | os.PathLike] = (), keep: Iterable[str | os.PathLike] = ()) -> dict:
    """Record the stage's outputs and remove what no longer belongs to it.

    Parameters
    ----------
    plan : Plan
        The plan the outputs were computed with.
    outputs : any
        JSON-serialisable description of the outputs (read by later stages).
    files : iterable of path
        Every output file (absolute, or relative to the run folder); each is recorded with its size
        and SHA-256 and checked before it is reused or read.
    keep : iterable of path
        Files of the stage folder that are caches, not outputs (kept, not recorded).
    started : float
        ``time.time()`` when the stage started.
    """
    entries = files_entry(ctx.run_dir, files)
    prune(ctx.stage_dir(stage), {ctx.run_dir / rel for rel in entries} | {_abs(ctx, p) for p in keep})
    manifest = {
        "stage": stage,
        "fingerprint": plan.fingerprint,
        "config": plan.config,
        "upstream": plan.upstream,
        "code": plan.code,
        "outputs": outputs,
        "files": entries,
        "version": __version__,
        "torch": torch.__version__,
        "seconds": round(time.time() - started, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    manifest = json.loads(json.dumps(manifest, default=_plain))  # the form read_manifest returns
    manifest["checksum"] = _checksum(manifest)
    write_json(manifest_path(ctx, stage), manifest)
    return manifest


def _abs(ctx: RunContext, p: str | os.PathLike) -> Path:
    p = Path(p)
    return p if p.is_absolute() else ctx.run_dir / p


def _plain(o: Any) -> Any:
    from ..io import _json_default

    return _json_default(o)


def prune(folder: Path, wanted: set[Path]) -> int:
    """Delete the files under ``folder`` that are not in ``wanted`` (nor its manifest, nor the
    temporary file of a live writer), then the folders left empty. Returns how many were deleted."""
    if not folder.is_dir():
        return 0
    wanted = {Path(os.path.abspath(p)) for p in wanted}
    removed = 0
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            try:
                path.rmdir()  # only when empty
            except OSError:
                pass
            continue
        if path.name == MANIFEST and path.parent == folder:
            continue
        if path.name.endswith(".tmp") and path.name.startswith(".") and not is_dead_temp(path):
            continue
        if Path(os.path.abspath(path)) in wanted:
            continue
        path.unlink()
        removed += 1
    if removed:
        log.info("removed %d files of %s that no longer belong to this configuration", removed, folder)
    return removed
