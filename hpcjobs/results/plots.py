"""The report's figures, as PNG bytes (the caller decides where they go).

Pure plotting on data the report has already shaped: no file access. Every figure is
~7.5 in wide at 110 dpi (~800 px), has a title, labelled axes with units and a legend
that sits outside the data (below the axes), and is closed once rendered. Style settings
apply per figure, so a user's own matplotlib settings stay untouched.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # render to memory only: no display, also on a headless login node

import matplotlib.pyplot as plt  # after the backend is forced
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

WIDTH_IN = 7.5
DPI = 110
STYLE: dict[RcKeyType, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
COLORS = tuple(matplotlib.color_sequences["tab10"])  # the tab10 colormap's colors
MEAN_COLOR = "black"


@dataclass
class Curve:
    """One configuration's learning curves: per epoch, mean and std over its seeds."""

    label: str
    epoch: np.ndarray
    n_runs: int
    mean: dict[str, np.ndarray] = field(default_factory=dict)  # column -> mean per epoch
    std: dict[str, np.ndarray] = field(default_factory=dict)  # column -> std (0 for one run)


def axis_label(metric: str) -> str:
    """'test_accuracy' -> 'test_accuracy (0–1)': the unit a reader needs to read the axis."""
    if "images_per_second" in metric:
        return f"{metric} (images/s)"
    if "seconds" in metric:
        return f"{metric} (s)"
    if any(word in metric for word in ("accuracy", "f1", "precision", "recall")):
        return f"{metric} (0–1)"
    return metric


@contextlib.contextmanager
def figure(
    nrows: int, ncols: int, height_in: float, **kwargs: Any
) -> Iterator[tuple[Figure, np.ndarray]]:
    """A styled figure WIDTH_IN wide and its 2-D array of axes; closed on exit, also on an
    error (pyplot keeps every figure alive until then)."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            nrows,
            ncols,
            figsize=(WIDTH_IN, height_in),
            layout="constrained",
            squeeze=False,
            **kwargs,
        )
        try:
            yield fig, axes
        finally:
            plt.close(fig)


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # bbox_inches="tight" keeps legends placed outside the axes inside the image.
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    return buf.getvalue()


def learning_curves(curves: Sequence[Curve], title: str) -> bytes:
    """Accuracy (left) and loss (right) per epoch: validation solid, train dashed, ± std bands."""
    panels = [
        (kind, [c for c in (f"val_{kind}", f"train_{kind}") if any(c in cv.mean for cv in curves)])
        for kind in ("accuracy", "loss")
    ]
    panels = [(kind, cols) for kind, cols in panels if cols]
    if not curves or not panels:
        raise ValueError("learning_curves: no curve has accuracy or loss columns")
    with figure(1, len(panels), 3.6) as (fig, axes):
        for ax, (kind, columns) in zip(axes[0], panels, strict=True):
            # A diverged run's loss would flatten every other curve on a linear axis.
            log = kind == "loss" and _spans_decades(
                np.concatenate([c.mean[k] for c in curves for k in columns if k in c.mean])
            )
            for i, curve in enumerate(curves):
                color = COLORS[i % len(COLORS)]
                for column in columns:
                    if column not in curve.mean:
                        continue
                    mean, std = curve.mean[column], curve.std[column]
                    low, high = mean - std, mean + std
                    if kind == "accuracy":  # a band past 100 % would be a lie about the data
                        low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)
                    elif log:  # a band reaching 0 has no place on a log axis
                        low = np.maximum(low, mean / 10)
                    dashed = column.startswith("train_")
                    ax.plot(
                        curve.epoch,
                        mean,
                        color=color,
                        lw=1.2 if dashed else 1.6,
                        ls="--" if dashed else "-",
                        alpha=0.8 if dashed else 1.0,
                    )
                    ax.fill_between(
                        curve.epoch, low, high, color=color, alpha=0.08 if dashed else 0.18, lw=0
                    )
            ax.set_title(kind)
            ax.set_xlabel("epoch")
            ax.set_ylabel(
                "accuracy (0–1)" if kind == "accuracy" else "loss (log scale)" if log else "loss"
            )
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if log:
                ax.set_yscale("log")
        handles = [
            plt.Line2D([], [], color=COLORS[i % len(COLORS)], lw=2) for i in range(len(curves))
        ]
        labels = [f"{c.label} (n={c.n_runs})" for c in curves]
        handles += [
            plt.Line2D([], [], color="grey", lw=1.6),
            plt.Line2D([], [], color="grey", lw=1.2, ls="--"),
        ]
        labels += ["validation", "train"]
        # long labels (several sweeps) stack rather than widen the figure
        longest = max(map(len, labels))
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=1 if longest > 55 else 2 if longest > 30 else 3,
            frameon=False,
        )
        fig.suptitle(title)
        return to_png(fig)


def _spans_decades(values: np.ndarray, decades: float = 2.0) -> bool:
    values = values[np.isfinite(values) & (values > 0)]
    return len(values) > 1 and math.log10(values.max() / values.min()) >= decades


def is_log_scale(values: pd.Series) -> bool:
    """A positive numeric hyperparameter spanning >= 2 decades (a learning rate): best on log x."""
    if not is_numeric(values):
        return False
    v = values.dropna().to_numpy(dtype=float)
    return len(v) > 1 and bool((v > 0).all()) and _spans_decades(v)


def is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def metric_vs_params(
    runs: pd.DataFrame, keys: Sequence[str], metric: str, color_key: str | None, title: str
) -> bytes:
    """One small multiple per hyperparameter: every run's ``metric`` (dots, coloured by
    ``color_key`` when given) and the mean per value (black line)."""
    keys = list(keys)
    if not keys:
        raise ValueError("metric_vs_params: no hyperparameter to plot against")
    ncols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / ncols)
    rng = np.random.default_rng(0)  # fixed jitter: the same report twice gives the same picture
    color_values = _categories(runs[color_key]) if color_key else ["all runs"]
    with figure(nrows, ncols, 0.4 + 2.8 * nrows, sharey=True) as (fig, axes):
        for ax, key in zip(axes.flat, keys, strict=False):
            _param_panel(ax, runs, key, metric, color_key, color_values, rng)
        for ax in axes.flat[len(keys) :]:
            ax.set_visible(False)
        for row in axes:
            row[0].set_ylabel(axis_label(metric))
        handles = [
            plt.Line2D([], [], ls="", marker="o", color=COLORS[i % len(COLORS)], alpha=0.7)
            for i in range(len(color_values))
        ]
        labels = [f"{color_key}={v}" if color_key else "one run" for v in color_values]
        handles.append(plt.Line2D([], [], color=MEAN_COLOR, marker="D", ms=5, mec="white", lw=1.2))
        labels.append("mean over runs")
        fig.legend(
            handles, labels, loc="outside lower center", ncols=min(len(labels), 4), frameon=False
        )
        fig.suptitle(title)
        return to_png(fig)


def _categories(values: pd.Series) -> list[str]:
    """Distinct values as text, numbers in numeric order."""
    distinct = values.dropna().unique().tolist()
    if is_numeric(values):
        distinct.sort()
    else:
        distinct.sort(key=_natural_key)  # resnet18 before resnet101
    return [_text(v) for v in distinct] + (["n/a"] if values.isna().any() else [])


def _natural_key(value: object) -> list[tuple[int, int | str]]:
    return [
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.split(r"(\d+)", str(value))
        if part
    ]


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:g}" if isinstance(value, float) else str(value)


def x_scale(values: pd.Series) -> str:
    """How a hyperparameter's axis reads best: 'log' (a learning rate), 'linear' (evenly
    spread numbers), 'ordinal' (numbers whose ticks would collide on a linear axis, e.g.
    weight decay 0, 1e-5, 1e-4, 1e-3: shown in order, equally spaced) or 'categorical'."""
    if not is_numeric(values) or values.isna().any():
        return "categorical"
    if is_log_scale(values):
        return "log"
    distinct = np.unique(values.to_numpy(dtype=float))
    if len(distinct) > 2 and np.diff(distinct).min() < 0.05 * (distinct[-1] - distinct[0]):
        return "ordinal"
    return "linear"


def _param_panel(
    ax: Axes,
    runs: pd.DataFrame,
    key: str,
    metric: str,
    color_key: str | None,
    color_values: list[str],
    rng: np.random.Generator,
) -> None:
    data = runs[list(dict.fromkeys([key, metric] + ([color_key] if color_key else [])))].dropna(
        subset=[metric]
    )
    scale = x_scale(data[key])
    # u: each run's position on the axis (log10 for 'log', an index for ordinal/categorical).
    if scale in ("log", "linear"):
        raw = data[key].to_numpy(dtype=float)
        u = np.log10(raw) if scale == "log" else raw
        ticks = np.unique(u)
        labels = [_text(float(v)) for v in np.unique(raw)]
    else:
        labels = _categories(data[key])
        u = np.array([labels.index(_text(v)) for v in data[key]], dtype=float)
        ticks = np.arange(len(labels), dtype=float)
    step = float(np.diff(ticks).min()) if len(ticks) > 1 else 1.0
    colors = [_text(v) for v in data[color_key]] if color_key else ["all runs"] * len(data)
    slot = np.array([color_values.index(c) for c in colors], dtype=float)
    # Colours side by side within a value, plus a little jitter, so equal results stay
    # visible; not when the panel's own key is the colour (one colour per value).
    dodge = color_key is not None and color_key != key
    spread = 0.5 * step / (len(color_values) if dodge else 1)
    x = u + rng.uniform(-0.12, 0.12, len(data)) * spread
    if dodge:
        x += (slot - (len(color_values) - 1) / 2) * spread
    to_axis = (lambda v: 10**v) if scale == "log" else (lambda v: v)
    many = len(data) > 300  # thousands of opaque dots would hide each other and the means
    for i in range(len(color_values)):
        mask = slot == i
        ax.scatter(
            to_axis(x[mask]),
            data[metric].to_numpy()[mask],
            s=6 if many else 16,
            color=COLORS[i % len(COLORS)],
            alpha=0.35 if many else 0.7,
            lw=0,
            zorder=2,
        )
    means = data.groupby(u, sort=True)[metric].mean()
    # A line between categories would suggest an order they do not have.
    ax.plot(
        to_axis(means.index.to_numpy()),
        means.to_numpy(),
        color=MEAN_COLOR,
        marker="D",
        ms=5,
        mec="white",
        mew=0.8,
        lw=0 if scale == "categorical" else 1.2,
        zorder=3,
    )
    if scale == "log":
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(to_axis(ticks), labels)
    if sum(map(len, labels)) + 2 * len(labels) > 24:  # would run into each other on a ~2.4 in panel
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    if len(ticks) == 1:  # one value: keep the dots off the frame
        ax.set_xlim(*to_axis(np.array([ticks[0] - 0.5, ticks[0] + 0.5])))
    elif scale in ("ordinal", "categorical"):
        ax.set_xlim(-0.6, len(ticks) - 0.4)
    note = {"log": " (log scale)", "ordinal": " (in order, not to scale)"}.get(scale, "")
    ax.set_xlabel(key + note)
    ax.set_title(f"{metric} vs {key}")


def throughput_bars(
    labels: Sequence[str], means: Sequence[float], stds: Sequence[float], title: str
) -> bytes:
    """Horizontal bars of mean images/s per configuration (error bar: std over seeds)."""
    if not labels:
        raise ValueError("throughput_bars: nothing to plot")
    n = len(labels)
    y = np.arange(n)
    with figure(1, 1, 0.8 + 0.28 * n) as (fig, axes):
        ax = axes[0, 0]
        ax.barh(
            y,
            means,
            xerr=np.nan_to_num(np.asarray(stds, dtype=float)),
            color=COLORS[0],
            alpha=0.85,
            error_kw={"lw": 1, "capsize": 2},
        )
        ax.set_yticks(y, labels)
        ax.invert_yaxis()  # fastest on top, as in the table
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("training throughput (images/s)")
        ax.set_title(title)
        return to_png(fig)
