"""A stage as one small explicit thing, and the one function that runs every stage.

A :class:`Stage` says what its outputs depend on and how they are made:

- ``upstream``: the stages whose outputs it reads (each checked with :func:`.common.require_manifest`
  before it runs, and recorded in its plan with :func:`.common.upstream_token`); ``optional``: stages
  read when they have run (the report);
- ``sections``: the top-level configuration sections it reads (its plan's ``config``), or ``config``,
  a function of the run that computes the plan's configuration part where a stage reads more than
  sections (content hashes of the model and input files, a derived setting);
- ``code``: the modules it runs (:func:`metaseg_pgn.integrity.code_fingerprint`, with
  :data:`.common.COMMON_CODE`);
- ``work(ctx, plan, upstream) -> Result``: what it computes, given the plan and the upstream
  manifests (stage name → manifest). Per-frame reuse (infer's records, features' frame files) is
  the work's own business; the rest is :func:`run_stage`'s.

:func:`run_stage` is the rule of :mod:`.common` written once: check the upstream outputs, make the
plan, skip the stage when it is up to date (its manifest carries the plan's fingerprint and every
file it lists is intact, and ``force`` does not name it), else run the work and write the manifest
with the work's :class:`Result`. A ``sharded`` stage (infer, features) runs on every rank under
``torchrun``: rank 0 writes the manifest, then every rank waits at a barrier until it exists.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

from ..distributed import barrier, rank_world
from .common import (Plan, RunContext, is_up_to_date, log, make_plan, read_manifest, require_manifest,
                     upstream_token, write_manifest)



@dataclass(frozen=True)
class Result:
    """What a stage's work made.

    Attributes
    ----------
    outputs : dict
        JSON-serialisable description of the outputs (the manifest's ``outputs``, read by later
        stages); ``{"skipped": why}`` for a stage that had nothing to do.
    files : tuple of path
        Every output file (absolute, or relative to the run folder), recorded with size and SHA-256.
    keep : tuple of path
        Files of the stage folder that are caches, not outputs (kept, not recorded).
    """

    outputs: dict
    files: tuple[str | os.PathLike, ...] = ()
    keep: tuple[str | os.PathLike, ...] = ()


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline (see the module docstring)."""

    name: str
    upstream: tuple[str, ...]
    code: tuple[str, ...]
    work: Callable[[RunContext, Plan, dict[str, dict]], Result | None]
    sections: tuple[str, ...] = ()
    config: Callable[[RunContext], dict] | None = field(default=None, repr=False)
    optional: tuple[str, ...] = ()
    sharded: bool = False

    def manifests(self, ctx: RunContext) -> dict[str, dict]:
        """The upstream manifests, each checked to be current and intact (:func:`require_manifest`);
        an ``optional`` stage only when it has run."""
        out = {s: require_manifest(ctx, s, self.name) for s in self.upstream}
        for s in self.optional:
            if read_manifest(ctx, s) is not None:
                out[s] = require_manifest(ctx, s, self.name)
        return out

    def plan(self, ctx: RunContext, manifests: dict[str, dict] | None = None) -> Plan:
        """The plan this stage runs with now (``manifests``: the upstream manifests, if read already)."""
        manifests = self.manifests(ctx) if manifests is None else manifests
        config = (self.config(ctx) if self.config is not None else
                  {k: ctx.cfg[k] for k in self.sections})
        return make_plan(config, {s: upstream_token(m) for s, m in manifests.items()}, self.code)

    def run(self, ctx: RunContext) -> dict:
        """:func:`run_stage` of this stage."""
        return run_stage(self, ctx)


def run_stage(stage: Stage, ctx: RunContext) -> dict:
    """Run ``stage`` unless it is up to date; returns its outputs (empty when up to date, and on
    the ranks other than 0 of a sharded stage).

    Raises
    ------
    StageError
        Upstream outputs that are missing, damaged or of another configuration (with the command
        that repairs them), or inputs the stage cannot work on.
    """
    started = time.time()
    manifests = stage.manifests(ctx)
    plan = stage.plan(ctx, manifests)
    if is_up_to_date(ctx, stage.name, plan):
        log.info("%s: up to date", stage.name)
        return {}
    result = stage.work(ctx, plan, manifests)
    writes = result is not None and (not stage.sharded or rank_world()[0] == 0)
    if writes:
        write_manifest(ctx, stage.name, plan, result.outputs, started, files=result.files, keep=result.keep)
    if stage.sharded:
        barrier()  # the manifest exists before any rank starts the next stage
    return result.outputs if writes else {}
