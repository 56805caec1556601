"""Figures (matplotlib, Agg backend): each function takes plain data and writes one PNG atomically."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_write  # noqa: E402


def save(fig, path: str | Path, dpi: int = 110) -> None:
    """Write a figure as PNG atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


def reliability_figure(diagrams: dict[str, dict], path: str | Path) -> None:
    """Reliability diagrams: accuracy per confidence bin, one panel per method.

    Parameters
    ----------
    diagrams : dict
        method name → :func:`metaseg_pgn.metrics.calibration.reliability_diagram_data` output
        (keys ``bin_edges``, ``accuracy``, ``confidence``, ``counts``).
    """
    n = len(diagrams)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, d) in zip(axes.flat, diagrams.items()):
        edges = np.asarray(d["bin_edges"], dtype=float)
        centres = (edges[:-1] + edges[1:]) / 2
        width = np.diff(edges)
        counts = np.asarray(d["counts"], dtype=float)
        acc = np.asarray(d["accuracy"], dtype=float)
        conf = np.asarray(d["confidence"], dtype=float)
        shown = counts > 0
        ax.bar(centres[shown], acc[shown], width=width[shown] * 0.95, color="#4c72b0", label="accuracy")
        ax.bar(centres[shown], (conf - acc)[shown], bottom=acc[shown], width=width[shown] * 0.95,
               color="#dd8452", alpha=0.5, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
    for ax in axes.flat[n:]:
        ax.axis("off")
    axes[0, 0].set_ylabel("accuracy")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    save(fig, path)


def sparsification_figure(curves: dict[str, dict], path: str | Path) -> None:
    """Sparsification curves (normalised mean Brier error of the kept pixels) and the oracle.

    Parameters
    ----------
    curves : dict
        method name → dict with ``fractions``, ``curve``, ``oracle`` (normalised by the oracle's
        value at fraction 0), as returned by ``AuSE.compute(return_curves=True)``.
    """
    fig, ax = plt.subplots(figsize=(5.5, 4))
    oracle_drawn = False
    for name, c in curves.items():
        ax.plot(c["fractions"], c["curve"], label=name, lw=1.2)
        if not oracle_drawn:
            ax.plot(c["fractions"], c["oracle"], "k--", lw=1.0, label="oracle")
            oracle_drawn = True
    ax.set_xlabel("fraction of pixels removed (most uncertain first)")
    ax.set_ylabel("mean Brier error of the rest (normalised)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save(fig, path)
