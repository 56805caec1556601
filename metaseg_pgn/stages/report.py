"""Stage ``report``: one Markdown and one HTML page with the run's results and figures.

Reads the manifests and outputs of ``infer``, ``features``, ``meta``, ``pixel_eval``, ``ood_eval``
and ``ood_meta`` (every section but the header is optional: a stage that did not run is named, with
the command that adds it) and writes into ``<run_dir>/report/``:

- ``report.md`` and ``report.html`` (self-contained: inline CSS, figures as PNG files beside it,
  referenced by relative path), the HTML rendered from the Markdown so the two always agree;
- the figures: meta-learning bars (the paper's Figure 3), ROC curves and predicted-vs-true IoU of
  the meta models (test part of run 0), feature–IoU correlations, example frames (the paper's
  Figures 1 and 4), copies of ``pixel_eval``'s reliability and sparsification figures, AuPRC per
  OoD dataset, one ``ood_meta`` frame before and after.

The work is :mod:`metaseg_pgn.report`'s (stored outputs → data → Jinja2 templates → Markdown →
HTML); published values come from its ``published.yaml``, with their citations.
"""

from __future__ import annotations

import time

from ..report import Inputs, write_report
from .common import (Plan, RunContext, dataset_key, evaluated_dataset, is_up_to_date, log, make_plan, read_manifest,
                     require_manifest, upstream_token, write_manifest)

STAGE = "report"
#: The package ``metaseg_pgn.report`` counts with its templates, CSS and published values.
CODE = ("metaseg_pgn.stages.report", "metaseg_pgn.report", "metaseg_pgn.plots", "metaseg_pgn.names",
        "metaseg_pgn.data.palette", "metaseg_pgn.store", "metaseg_pgn.maps", "metaseg_pgn.table",
        "metaseg_pgn.frame_files", "metaseg_pgn.segments", "metaseg_pgn.ood_meta", "metaseg_pgn.meta",
        "metaseg_pgn.metrics.ood", "metaseg_pgn.metrics.ood_input")
UPSTREAM = ("infer", "features", "meta", "pixel_eval", "ood_eval", "ood_meta")


def run(ctx: RunContext) -> dict:
    """Write ``report/report.md``, ``report/report.html`` and their figures (skipped when up to date).

    Parameters
    ----------
    ctx : RunContext
        The run; needs the ``infer`` manifest, uses every other upstream manifest it finds.

    Returns
    -------
    dict
        The written files relative to the run folder (empty when up to date).
    """
    started = time.time()
    the_plan, manifests = _plan(ctx)
    if is_up_to_date(ctx, STAGE, the_plan):
        log.info("report: up to date")
        return {}
    folder = ctx.stage_dir(STAGE)
    written = write_report(_inputs(ctx, manifests, the_plan), folder)
    outputs = {"markdown": f"{STAGE}/report.md", "html": f"{STAGE}/report.html",
               "figures": [f"{STAGE}/{name}" for name in written]}
    # Figures of an earlier report that this one lacks are removed with the manifest's pruning.
    write_manifest(ctx, STAGE, the_plan, outputs, started,
                   files=[outputs["markdown"], outputs["html"], *outputs["figures"]])
    log.info("report: %s (%d figures)", folder / "report.html", len(written))
    return outputs


def plan(ctx: RunContext) -> Plan:
    """The report settings and every upstream stage that has run (each checked to be current)."""
    return _plan(ctx)[0]


def _plan(ctx: RunContext) -> tuple[Plan, dict]:
    # A stage that has run must be current: a report of meta results made with another meta.protocol
    # would be a report of another run. A stage that has not run is left out (and named as such).
    manifests = {s: (require_manifest(ctx, s, STAGE) if s == "infer" or read_manifest(ctx, s) is not None
                     else None) for s in UPSTREAM}
    upstream = {s: upstream_token(m) for s, m in manifests.items() if m is not None}
    config = {"report": ctx.cfg.get("report", {}), "pipeline": ctx.cfg.get("pipeline")}
    return make_plan(config, upstream, CODE), manifests


def _inputs(ctx: RunContext, manifests: dict, the_plan: Plan) -> Inputs:
    """What the report package reads: the run folder, the manifests and the evaluated dataset's key."""
    evaluated = evaluated_dataset(manifests["infer"]["config"])
    return Inputs(run_dir=ctx.run_dir, manifests=manifests, fingerprint=the_plan.fingerprint,
                  settings=the_plan.config["report"] or {}, pipeline=the_plan.config["pipeline"],
                  key=dataset_key(evaluated) if evaluated is not None else None)
