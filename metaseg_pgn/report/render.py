"""The report's text: Jinja2 templates to Markdown, Markdown to one self-contained HTML page.

The templates (``templates/*.j2``, shipped with the package) turn the plain data of
:mod:`metaseg_pgn.report.context` into Markdown; the formatting of numbers is theirs, through the
filters of :mod:`metaseg_pgn.report.fmt`. The HTML is that Markdown rendered by Python-Markdown
(tables, heading anchors as GitHub computes them) with the package's ``style.css`` inline, so the
two pages always say the same.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from functools import lru_cache
from importlib import resources

import jinja2
import markdown
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor

from . import fmt

FILTERS = {"pct": fmt.fmt_pct, "pm": fmt.fmt_pm, "num": fmt.fmt_num, "pm_num": fmt.fmt_pm_num, "pp": fmt.fmt_pp,
           "bold": fmt.bold, "duration": fmt.duration, "megabytes": fmt.megabytes, "plural": fmt.plural,
           "slug": fmt.slug, "cell": fmt.md_cell,
           "escape_md": fmt.md_escape}


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The Jinja environment of the package's templates (strict: an undefined name is an error)."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("metaseg_pgn.report", "templates"),
                             undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(FILTERS)
    env.globals.update(DASH=fmt.DASH, isnan=fmt.isnan)
    return env


def render_markdown(data: dict, template: str = "report.md.j2") -> str:
    """The report's Markdown: blocks separated by one blank line, one newline at the end."""
    text = environment().get_template(template).render(**data)
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


class _Figures(Treeprocessor):
    """An image paragraph followed by an italic caption paragraph becomes ``<figure>``: the image
    (a link to itself) and ``<figcaption>``."""

    def run(self, root: ET.Element) -> None:
        children = list(root)
        for first, second in zip(children, children[1:]):
            if not (first.tag == "p" and len(first) == 1 and first[0].tag == "img" and not (first.text or "").strip()
                    and second.tag == "p" and len(second) == 1 and second[0].tag == "em"
                    and not (second.text or "").strip() and not (second[0].tail or "").strip()):
                continue
            img, em = first[0], second[0]
            first.tag, first.text = "figure", None
            first.remove(img)
            link = ET.SubElement(first, "a", href=img.get("src"))
            link.append(img)
            img.tail = None
            caption = ET.SubElement(first, "figcaption")
            caption.text, caption[:] = em.text, list(em)
            root.remove(second)


class _FigureExtension(Extension):
    def extendMarkdown(self, md: markdown.Markdown) -> None:
        md.treeprocessors.register(_Figures(md), "metaseg_pgn_figures", 5)


def render_html(md_text: str) -> str:
    """One self-contained HTML page of the Markdown (inline CSS; images by relative path)."""
    body = markdown.markdown(md_text, extensions=["tables", "toc", _FigureExtension()],
                             extension_configs={"toc": {"slugify": lambda text, sep: fmt.slug(text)}},
                             output_format="html")
    title = re.sub(r"<[^>]+>", "", body.split("</h1>")[0]) if "</h1>" in body else "report"
    css = resources.files("metaseg_pgn.report").joinpath("style.css").read_text(encoding="utf-8")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(html.unescape(title))}</title>\n<style>\n{css}</style>\n</head>\n"
            f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n")
