"""Formatting of the report's numbers and words (also the Jinja filters of its templates).

Every function takes a plain value (float, None, ``pd.NA``) and returns the text the report
shows; a missing or non-finite value is shown as :data:`DASH`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

DASH = "–"  # shown for every missing or undefined value


def isnan(v: Any) -> bool:
    """True for None, ``pd.NA``, NaN, ±inf and anything that is not a number."""
    if v is None:
        return True
    try:
        return not math.isfinite(float(v))
    except (TypeError, ValueError):
        return True


def fmt_pct(v: Any, digits: int = 2) -> str:
    """A fraction as a percentage without the sign (``0.8571 → "85.71"``); missing → "–"."""
    return DASH if isnan(v) else f"{100 * float(v):.{digits}f}"


def fmt_pm(mean: Any, std: Any, digits: int = 2) -> str:
    """``mean ± std`` of fractions in percent; the std is left out where undefined."""
    return _plus_minus(fmt_pct, mean, std, digits)


def fmt_num(v: Any, digits: int = 4) -> str:
    """A plain number with fixed decimals; missing → "–"."""
    return DASH if isnan(v) else f"{float(v):.{digits}f}"


def fmt_pm_num(mean: Any, std: Any, digits: int = 4) -> str:
    """``mean ± std`` of plain numbers; the std is left out where undefined."""
    return _plus_minus(fmt_num, mean, std, digits)


def _plus_minus(fmt, mean: Any, std: Any, digits: int) -> str:
    if isnan(mean):
        return DASH
    return fmt(mean, digits) + ("" if isnan(std) else f" ± {fmt(std, digits)}")


def fmt_pp(diff: float) -> str:
    """A difference of fractions in percentage points, signed."""
    return f"{100 * diff:+.2f} pp"


def bold(text: str, flag: bool = True) -> str:
    """``**text**`` when ``flag`` (never around "–")."""
    return f"**{text}**" if flag and text != DASH else text


def best_index(values: Sequence[Any], lower_is_better: bool = False) -> set[int]:
    """Indices of the best finite value (ties all count); empty when fewer than two are finite
    or all finite values are equal (nothing is better than anything else)."""
    vals = [math.nan if isnan(v) else float(v) for v in values]
    finite = [v for v in vals if not math.isnan(v)]
    if len(finite) < 2 or min(finite) == max(finite):
        return set()
    best = min(finite) if lower_is_better else max(finite)
    return {i for i, v in enumerate(vals) if v == best}


def duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 5 s"``, ``"2 h 7 min"``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    return f"{minutes} min {s} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def megabytes(n: int) -> str:
    """A byte count in MB (GB from 1e9)."""
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 if it does not exist)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def plural(n: int, word: str) -> str:
    """``"1 frame"``, ``"3 frames"``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def safe_name(text: str) -> str:
    """``text`` usable in a file name (every run of other characters becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))


def slug(text: str) -> str:
    """The anchor of a heading as GitHub and Python-Markdown's ``toc`` compute it for ASCII text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).replace("**", "").replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def md_cell(text: Any) -> str:
    """Text of a Markdown table cell (``|`` escaped, on one line)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_escape(text: Any) -> str:
    """Plain text (a configuration value) safe inside Markdown: ``\\ ` * _ [ ]`` escaped."""
    return re.sub(r"([\\`*_\[\]])", r"\\\1", str(text))
