"""Figures: each function takes plain data and returns a matplotlib ``Figure``.

The figures are built with :class:`matplotlib.figure.Figure`, not with ``pyplot``: no backend is
chosen or switched (importing this module leaves a notebook's backend as it is) and no figure is
registered with pyplot. The caller saves a figure with :func:`save_figure` (PNG, atomic, without
the matplotlib version in its metadata, so the same data gives the same bytes) or shows it.

The report's figures (``meta_bar_figure``, ``roc_figure``, ``iou_scatter_figure``,
``correlation_figure``, ``frame_figure``, ``ood_bar_figure``) take plain arrays, numbers and
labels, never pipeline objects, so they can be reused outside the pipeline.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .io import atomic_write

#: Colours of the method families, shared by every figure of the report.
FAMILY_COLORS: dict[str, str] = {
    "MetaSeg": "#4c72b0",
    "PGN one-hot": "#dd8452",
    "PGN uniform": "#c44e52",
    "PGN": "#937860",
    "MetaSeg + PGN": "#8172b3",
    "entropy": "#55a868",
    "max softmax": "#64b5cd",
    "MC dropout": "#da8bc3",
    "ensemble": "#8c8c8c",
    "other": "#ccb974",
}


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> None:
    """Write a figure as PNG atomically and close it (no version metadata: stable bytes).

    Parameters
    ----------
    fig : Figure
        A figure of this module (or any matplotlib figure; one that pyplot manages is closed there).
    path : path-like
        Destination PNG; written through a temporary file, so a reader never sees half of it.
    dpi : int, default 110
        Resolution.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    if getattr(fig.canvas, "manager", None) is not None:  # a pyplot figure: release it there
        import matplotlib.pyplot as plt

        plt.close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


RELIABILITY_STYLE = {
    "common": {"color": "#4c72b0", "label": "up to the lower of accuracy and confidence"},
    "over": {"color": "#dd8452", "label": "over-confident: confidence − accuracy"},
    "under": {"color": "#55a868", "hatch": "//", "label": "under-confident: accuracy − confidence"},
}


def reliability_bars(accuracy: np.ndarray, confidence: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The stacked, non-overlapping parts of each reliability bar: kind → (bottom, height).

    ``common`` runs from 0 to min(accuracy, confidence); on top of it ``over`` (confidence above
    accuracy) or ``under`` (accuracy above confidence) up to the larger of the two. No part is
    drawn over another (a gap drawn over the accuracy bar read as a colour the legend lacked).

    Parameters
    ----------
    accuracy, confidence : ndarray, shape (B,), in [0, 1]

    Returns
    -------
    dict
        ``common``, ``over``, ``under``: (bottom, height) arrays of shape (B,), heights ≥ 0.
    """
    acc, conf = np.asarray(accuracy, float), np.asarray(confidence, float)
    low = np.minimum(acc, conf)
    return {"common": (np.zeros_like(low), low),
            "over": (low, np.maximum(conf - acc, 0.0)),
            "under": (low, np.maximum(acc - conf, 0.0))}


def reliability_figure(diagrams: dict[str, dict]) -> Figure:
    """Reliability diagrams: accuracy per confidence bin, one panel per method.

    Parameters
    ----------
    diagrams : dict
        method name → :func:`metaseg_pgn.metrics.calibration.reliability_diagram_data` output
        (keys ``bin_edges``, ``accuracy``, ``confidence``, ``counts``).

    Returns
    -------
    Figure
        Not yet saved: :func:`save_figure` writes it.
    """
    n = len(diagrams)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(3.2 * cols, 3.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, d) in zip(axes.flat, diagrams.items()):
        edges = np.asarray(d["bin_edges"], dtype=float)
        centres = (edges[:-1] + edges[1:]) / 2
        width = np.diff(edges)
        counts = np.asarray(d["counts"], dtype=float)
        acc = np.asarray(d["accuracy"], dtype=float)
        conf = np.asarray(d["confidence"], dtype=float)
        shown = counts > 0
        for kind, (bottom, height) in reliability_bars(acc[shown], conf[shown]).items():
            style = RELIABILITY_STYLE[kind]
            ax.bar(centres[shown], height, bottom=bottom, width=width[shown] * 0.95, color=style["color"],
                   hatch=style.get("hatch"), edgecolor="white", linewidth=0, label=style["label"])
        ax.plot(centres[shown], acc[shown], "_", color="black", ms=10, mew=1.2,
                label="accuracy" if ax is axes.flat[0] else None)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    for k, ax in enumerate(axes.flat[:n]):
        if k + cols >= n:  # the lowest panel of its column
            ax.set_xlabel("confidence")
        if k % cols == 0:
            ax.set_ylabel("accuracy")
    for ax in axes.flat[n:]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6, loc="upper left")
    return fig


def sparsification_figure(curves: dict[str, dict]) -> Figure:
    """Sparsification curves (normalised mean Brier error of the kept pixels) and the oracle.

    Parameters
    ----------
    curves : dict
        method name → dict with ``fractions``, ``curve``, ``oracle`` (normalised by the oracle's
        value at fraction 0), as returned by ``AuSE.compute(return_curves=True)``.

    Returns
    -------
    Figure
        Not yet saved: :func:`save_figure` writes it.
    """
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
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
    return fig


# ---------------------------------------------------------------------------------------------
# Report figures


def _percent(v: float, _pos=None) -> str:
    """Tick label of a fraction as a whole percentage (never "-0 %")."""
    return f"{round(100 * v) + 0:.0f} %"


def _family_color(family: str) -> str:
    return FAMILY_COLORS.get(family, FAMILY_COLORS["other"])


def meta_bar_figure(rows: Sequence[dict], r2_floor: float = -1.0, reference: int | None = None) -> Figure:
    """Meta classification AuROC and meta regression R² per feature set (the paper's Figure 3).

    Horizontal bars with ± one standard deviation over runs as error bars (cut at 100 %); AuROC
    bars start at chance level (0.5), R² bars at 0. R² values below ``r2_floor`` are drawn to the
    floor. Each panel ends in a column with the values as ``mean ± std`` in percent.

    Parameters
    ----------
    rows : sequence of dict
        One per feature set, top to bottom: ``label``, ``family`` (a key of
        :data:`FAMILY_COLORS`), ``auroc``, ``auroc_std``, ``r2``, ``r2_std`` (fractions; NaN where
        undefined).
    r2_floor : float, default -1
        Left end of the R² axis (when some R² is below 0).
    reference : int, optional
        Index of the row (e.g. MetaSeg) whose means are drawn as dotted lines across the panels.

    Returns
    -------
    Figure
        Not yet saved: :func:`save_figure` writes it.
    """
    n = len(rows)
    y = np.arange(n)
    colors = np.array([_family_color(r["family"]) for r in rows], dtype=object)
    fig = Figure(figsize=(11, 0.3 * n + 1.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, title, base in ((axes[0], "auroc", "meta classification: AuROC (test)", 0.5),
                                 (axes[1], "r2", "meta regression: R² (test)", 0.0)):
        mean = np.array([r[key] for r in rows], dtype=float)
        std = np.nan_to_num(np.array([r[f"{key}_std"] for r in rows], dtype=float))
        shown = np.isfinite(mean)
        low = np.nanmin(np.where(shown, mean - std, np.nan), initial=base)
        if key == "auroc":
            lo = min(base, np.floor(low * 10) / 10)
        else:
            lo = 0.0 if low >= 0 else max(r2_floor, np.floor(low * 4) / 4)
        drawn = np.clip(mean, lo, 1.0)
        ax.barh(y[shown], (drawn - base)[shown], left=base, color=list(colors[shown]), height=0.7)
        err = np.vstack([np.minimum(std, drawn - lo), np.minimum(std, 1.0 - drawn)])
        ax.errorbar(drawn[shown], y[shown], xerr=err[:, shown], fmt="none", ecolor="#333333",
                    elinewidth=0.9, capsize=2.5)
        for yi, m, ok in zip(y, mean, shown):
            if ok and m < lo:
                ax.annotate("◂", (lo, yi), xytext=(2, 0), textcoords="offset points", va="center",
                            fontsize=8, color="white")
        ax.axvline(base, color="black", lw=0.8)
        span = 1.0 - lo
        step = 0.1 if span <= 0.6 else 0.25 if span <= 1.5 else 0.5
        ax.set_xticks(np.arange(np.ceil(lo / step - 1e-9) * step, 1.0 + 1e-9, step))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_percent))
        if reference is not None and shown[reference]:
            ax.axvline(drawn[reference], color=colors[reference], lw=1.0, ls=":", zorder=2.5)
        ax.set_xlim(lo, 1.0 + 0.36 * span)
        ax.axvspan(1.0, 1.0 + 0.36 * span, color="white", zorder=3)
        for yi, m, s, ok in zip(y, mean, std, shown):
            text = f"{100 * m:.1f} ± {100 * s:.1f}" if ok else "–"
            ax.text(1.0 + 0.35 * span, yi, text, va="center", ha="right", fontsize=7.5, zorder=4,
                    family="monospace")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_yticks(y, [r["label"] for r in rows], fontsize=8)
    axes[0].invert_yaxis()
    families = list(dict.fromkeys(r["family"] for r in rows))
    fig.legend(handles=[Patch(color=_family_color(f), label=f) for f in families], loc="outside lower center",
               ncol=min(len(families), 5), fontsize=8, frameon=False)
    return fig


def roc_figure(curves: dict[str, dict], title: str = "") -> Figure:
    """ROC curves of meta classifiers.

    Parameters
    ----------
    curves : dict
        label → dict with ``fpr``, ``tpr`` (arrays), ``auc`` (float) and optional ``color``.
    title : str
        Axes title.

    Returns
    -------
    Figure
        Not yet saved: :func:`save_figure` writes it.
    """
    fig = Figure(figsize=(5, 4.6), layout="constrained")
    ax = fig.subplots()
    for label, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], lw=1.5, color=c.get("color"),
                label=f"{label} (AuROC {100 * c['auc']:.1f} %)")
    ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (IoU > 0 flagged)")
    ax.set_ylabel("true positive rate (IoU = 0 found)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def iou_scatter_figure(panels: Sequence[dict]) -> Figure:
    """Predicted against true IoU, one panel per feature set.

    Parameters
    ----------
    panels : sequence of dict
        ``title``, ``iou`` (true IoU_adj), ``pred`` (predicted, clipped to [0, 1]), optional
        ``color``.

    Returns
    -------
    Figure
        Not yet saved: :func:`save_figure` writes it.
    """
    n = len(panels)
    fig = Figure(figsize=(4.0 * n, 4.2), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)
    for ax, p in zip(axes[0], panels):
        iou = np.asarray(p["iou"], dtype=float)
        pred = np.asarray(p["pred"], dtype=float)
        ax.scatter(iou, pred, s=9, alpha=0.45, color=p.get("color", "#4c72b0"), edgecolors="none")
        ax.plot([0, 1], [0, 1], color="#333333", lw=0.8, ls="--")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("true IoU$_{adj}$")
        ax.set_title(p["title"], fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("predicted IoU")
    return fig


def correlation_figure(names: Sequence[str], pearson: Sequence[float], spearman: Sequence[float],
                       title: str = "") -> Figure:
    """Pearson and Spearman correlation of segment features with the IoU, top to bottom.

    Parameters
    ----------
    names : sequence of str
        Feature names, in display order (top first).
    pearson, spearman : sequence of float
        Correlation coefficients, same order.
    title : str
        Axes title.

    Returns
    -------
    Figure
        Not yet saved: :func:`save_figure` writes it.
    """
    n = len(names)
    y = np.arange(n)
    fig = Figure(figsize=(6.5, 0.3 * n + 1.3), layout="constrained")
    ax = fig.subplots()
    ax.barh(y - 0.19, pearson, height=0.38, color="#4c72b0", label="Pearson")
    ax.barh(y + 0.19, spearman, height=0.38, color="#dd8452", label="Spearman")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(-1, 1)
    ax.set_xlabel("correlation with IoU$_{adj}$")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="lower right" if np.nanmean(np.asarray(pearson, float)) < 0 else "lower left")
    return fig


def frame_figure(panels: Sequence[dict], ncols: int = 4, title: str = "",
                 legend: Sequence[tuple[str, Sequence[int]]] = ()) -> Figure:
    """One frame as a grid of pictures: image, label maps and heatmaps (the paper's Figures 1, 4).

    Parameters
    ----------
    panels : sequence of dict
        Each has ``title``, ``kind`` and ``data``:

        - ``"rgb"``: ``data`` (H, W, 3) uint8, shown as is;
        - ``"heat"``: ``data`` (H, W) float, colour map ``cmap`` (default ``"inferno"``) from
          ``vmin`` to ``vmax`` (default: the 1st and 99th percentile of the finite values), with a
          colour bar below;
        - ``"iou"``: ``data`` (H, W) float in [0, 1], NaN where there is no segment (grey), red
          (0) to green (1), with a colour bar below.
    ncols : int, default 4
        Panels per row.
    title : str
        Figure title.
    legend : sequence of (str, RGB)
        Colour legend drawn under the grid (e.g. the classes present), RGB in 0..255.

    Returns
    -------
    Figure
        Not yet saved: :func:`save_figure` writes it.
    """
    n = len(panels)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    h, w = np.asarray(panels[0]["data"]).shape[:2]
    # The layout in inches: every row is title + image + colour bar, so rows never collide.
    pw, gap, title_h, bar_h = 3.2, 0.15, 0.26, 0.40
    img_h = pw * h / w
    row_h = title_h + img_h + bar_h
    top = 0.35 if title else 0.0
    legend_rows = int(np.ceil(len(legend) / 8)) if legend else 0
    legend_h = 0.22 * legend_rows + (0.1 if legend else 0.0)
    fig_w = ncols * pw + (ncols - 1) * gap
    fig_h = top + nrows * row_h + legend_h
    fig = Figure(figsize=(fig_w, fig_h))
    for k, p in enumerate(panels):
        r, c = divmod(k, ncols)
        x = c * (pw + gap)
        y_img = fig_h - top - r * row_h - title_h - img_h
        ax = fig.add_axes((x / fig_w, y_img / fig_h, pw / fig_w, img_h / fig_h))
        data = np.asarray(p["data"])
        ax.set_title(p["title"], fontsize=9, pad=3)
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        if p["kind"] == "rgb":
            ax.imshow(data, interpolation="nearest", aspect="auto")
            continue
        if p["kind"] == "iou":
            cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#b0b0b0")
            im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0, vmax=1, interpolation="nearest",
                           aspect="auto")
            ticks = [0.0, 0.5, 1.0]
        else:
            finite = data[np.isfinite(data)]
            vmin = p.get("vmin", float(np.percentile(finite, 1)) if finite.size else 0.0)
            vmax = p.get("vmax", float(np.percentile(finite, 99)) if finite.size else 1.0)
            if not vmax > vmin:
                vmax = vmin + (abs(vmin) * 1e-6 or 1.0)
            im = ax.imshow(data, cmap=p.get("cmap", "inferno"), vmin=vmin, vmax=vmax, interpolation="nearest",
                           aspect="auto")
            ticks = [vmin, vmax]
        cax = fig.add_axes((x / fig_w, (y_img - 0.14) / fig_h, pw / fig_w, 0.09 / fig_h))
        bar = fig.colorbar(im, cax=cax, orientation="horizontal", ticks=ticks)
        bar.ax.tick_params(labelsize=7, length=2, pad=1)
        bar.ax.set_xticklabels([_short_number(t) for t in ticks])
        labels = bar.ax.get_xticklabels()
        labels[0].set_ha("left")
        labels[-1].set_ha("right")
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.1 / fig_h, va="top")
    if legend:
        handles = [Patch(color=np.asarray(c, dtype=float) / 255.0, label=name) for name, c in legend]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=7.5,
                   frameon=False, bbox_to_anchor=(0.5, 0.0), handlelength=1.2, columnspacing=1.2)
    return fig


def _short_number(v: float) -> str:
    v = float(v)
    if v == 0:
        return "0"
    if 1e-2 <= abs(v) < 1e4:
        return f"{v:.3g}"
    return f"{v:.2g}"


def ood_bar_figure(datasets: dict[str, Sequence[dict]], metric_label: str = "AuPRC") -> Figure:
    """One horizontal bar chart per OoD dataset: a pixel-level metric per method.

    Parameters
    ----------
    datasets : dict
        dataset title → sequence of dict with ``label``, ``family`` and ``value`` (a fraction;
        NaN where undefined), top to bottom.
    metric_label : str
        Name of the metric on the x axis.

    Returns
    -------
    Figure
        Not yet saved: :func:`save_figure` writes it.
    """
    n = len(datasets)
    lists = [[it["label"] for it in items] for items in datasets.values()]
    same = all(lst == lists[0] for lst in lists)
    rows = max(len(v) for v in lists)
    fig = Figure(figsize=(3.6 * n + (1.6 if same else 1.6 * n), 0.28 * rows + 1.5), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False, sharey=same)
    families = []
    for ax, (name, items) in zip(axes[0], datasets.items()):
        y = np.arange(len(items))
        vals = np.array([it["value"] for it in items], dtype=float)
        families += [it["family"] for it in items]
        ax.barh(y, np.nan_to_num(vals), color=[_family_color(it["family"]) for it in items], height=0.7)
        for yi, v in zip(y, vals):
            ax.annotate("–" if np.isnan(v) else f"{100 * v:.1f}", (0 if np.isnan(v) else v, yi),
                        xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        if not same or ax is axes[0, 0]:
            ax.set_yticks(y, [it["label"] for it in items], fontsize=8)
            ax.invert_yaxis()
        top = np.nanmax(vals, initial=0.0)
        ax.set_xlim(0, min(1.0, top * 1.15 + 0.02) if top > 0 else 1.0)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_percent))
        ax.set_xlabel(metric_label)
        ax.set_title(name, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    families = list(dict.fromkeys(families))
    fig.legend(handles=[Patch(color=_family_color(f), label=f) for f in families], loc="outside lower center",
               ncol=min(len(families), 6), fontsize=8, frameon=False)
    return fig
