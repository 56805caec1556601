"""The run report: stored outputs → plain data → Jinja2 templates → Markdown → HTML.

- :mod:`.context` (and :mod:`.context_ood_meta`, :mod:`.frames`) read what the stages stored
  into plain data and draw the figures from it;
- ``published.yaml`` holds the published reference values with their citations;
- ``templates/report.md.j2`` renders the Markdown (numbers formatted by :mod:`.fmt`'s filters);
- :mod:`.render` turns the Markdown into one self-contained HTML page (``style.css`` inline).

The page holds no date and no absolute path: the same upstream outputs give the same Markdown and
HTML bytes (the PNGs are written without version metadata).
"""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write
from .context import (Figures, Inputs, correlation_section, meta_section, ood_section, pixel_section, published,
                      run_section)
from .context_ood_meta import ood_meta_section
from .frames import examples_section
from .render import render_html, render_markdown

#: The report's sections: (title, key of the data), in order.
SECTIONS = (("Run", "run"), ("Meta classification and meta regression", "meta"), ("Example frames", "examples"),
            ("Pixel-level evaluation", "pixel"), ("OoD segmentation", "ood"),
            ("OoD post-processing (Meta-OoD)", "ood_meta"))


def report_data(inp: Inputs, figures: Figures) -> dict:
    """Everything the templates show, read from the run's stored outputs (figures written on the way).

    The sections are read in the order the page shows them, so the figures are written in that
    order too.
    """
    reference = published()
    data = {"title": f"MetaSeg + PGN report: `{inp.pipeline}` pipeline", "sections": SECTIONS,
            "untrained": inp.infer["config"]["model"].get("init") == "random", "published": reference,
            "run": run_section(inp)}
    data["meta"] = meta_section(inp, figures)
    data["correlation"] = correlation_section(inp, figures)
    data["examples"] = examples_section(inp, figures, data["meta"].get("predictions"))
    data["pixel"] = pixel_section(inp, figures)
    data["ood"] = ood_section(inp, figures, reference["ood"])
    data["ood_meta"] = ood_meta_section(inp, figures)
    return data


def write_report(inp: Inputs, folder: Path) -> list[str]:
    """Write ``report.md``, ``report.html`` and the figures into ``folder``; the figures' names."""
    figures = Figures(folder)
    md = render_markdown(report_data(inp, figures))
    with atomic_write(folder / "report.md", "w") as f:
        f.write(md)
    with atomic_write(folder / "report.html", "w") as f:
        f.write(render_html(md))
    return figures.written


__all__ = ["SECTIONS", "Figures", "Inputs", "render_html", "render_markdown", "report_data", "write_report"]
