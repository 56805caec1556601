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

from ..report import Inputs, write_report
from .base import Result, Stage
from .common import Plan, RunContext, dataset_key, evaluated_dataset, log

STAGE = "report"
#: The package ``metaseg_pgn.report`` counts with its templates, CSS and published values.
CODE = ("metaseg_pgn.stages.report", "metaseg_pgn.report", "metaseg_pgn.plots", "metaseg_pgn.names",
        "metaseg_pgn.data.palette", "metaseg_pgn.store", "metaseg_pgn.maps", "metaseg_pgn.table",
        "metaseg_pgn.frame_files", "metaseg_pgn.segments", "metaseg_pgn.ood_meta", "metaseg_pgn.meta",
        "metaseg_pgn.metrics.ood", "metaseg_pgn.metrics.ood_input")
UPSTREAM = ("infer", "features", "meta", "pixel_eval", "ood_eval", "ood_meta")


def work(ctx: RunContext, the_plan: Plan, upstream: dict[str, dict]) -> Result:
    """Write ``report/report.md``, ``report/report.html`` and their figures.

    Parameters
    ----------
    ctx : RunContext
        The run.
    the_plan : Plan
    upstream : dict of str to dict
        The manifest of ``infer`` and of every other stage of :data:`UPSTREAM` that has run.
    """
    manifests = {s: upstream.get(s) for s in UPSTREAM}  # None: the stage has not run
    folder = ctx.stage_dir(STAGE)
    written = write_report(_inputs(ctx, manifests, the_plan), folder)
    outputs = {"markdown": f"{STAGE}/report.md", "html": f"{STAGE}/report.html",
               "figures": [f"{STAGE}/{name}" for name in written]}
    log.info("report: %s (%d figures)", folder / "report.html", len(written))
    # Figures of an earlier report that this one lacks are removed with the manifest's pruning.
    return Result(outputs, files=(outputs["markdown"], outputs["html"], *outputs["figures"]))


def _inputs(ctx: RunContext, manifests: dict, the_plan: Plan) -> Inputs:
    """What the report package reads: the run folder, the manifests and the evaluated dataset's key."""
    evaluated = evaluated_dataset(manifests["infer"]["config"])
    return Inputs(run_dir=ctx.run_dir, manifests=manifests, fingerprint=the_plan.fingerprint,
                  settings=the_plan.config["report"] or {}, pipeline=the_plan.config["pipeline"],
                  key=dataset_key(evaluated) if evaluated is not None else None)


#: The report settings and every upstream stage that has run, each checked to be current: a report
#: of meta results made with another meta.protocol would be a report of another run. A stage that
#: has not run is left out (and named as such).
DEFINITION = Stage(STAGE, upstream=("infer",), optional=UPSTREAM[1:], sections=("report", "pipeline"), code=CODE,
                   work=work)
plan, run = DEFINITION.plan, DEFINITION.run
