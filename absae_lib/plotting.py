"""The book's figures: small plain functions that draw on matplotlib axes and return them.

Every function takes plain data (dicts of arrays or tensors, a pandas DataFrame), draws one figure or panel, labels
its axes and returns the Figure (several panels) or the Axes (one panel, so a caller can add to it or pass ``ax=`` to
draw into a grid of its own).  Call :func:`set_style` (or :func:`style`) once at the top of a chapter.

One palette and one set of display names for the SAE architectures live here and nowhere else:
``COLORS[arch]`` / :func:`color` and ``NAMES[arch]`` / :func:`name`.  Helpers for readable axes: :func:`log_ticks`
(log axis with ticks at the plotted values), :func:`plain_log_axis`, :func:`count_axis`, :func:`note`,
:func:`legend_outside`, :func:`figure_legend`.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# The SAE architectures keep one colour and one display name across every chapter, so a reader can follow
# "AbsTopK" from figure to figure.  Keys are the code names (``SAEConfig.architecture``); "relu" is an alias of
# "standard" and "dim" is the supervised difference-in-means direction the later chapters compare with.
COLORS: dict[str, str] = {
    "standard": "#2ca02c",
    "relu": "#2ca02c",
    "jumprelu": "#9467bd",
    "topk": "#1f77b4",
    "batchtopk": "#17becf",
    "abstopk": "#d62728",
    "unrolled": "#ff7f0e",
    "dim": "#7f7f7f",
}
NAMES: dict[str, str] = {
    "standard": "ReLU",
    "relu": "ReLU",
    "jumprelu": "JumpReLU",
    "topk": "TopK",
    "batchtopk": "BatchTopK",
    "abstopk": "AbsTopK",
    "unrolled": "Unrolled",
    "dim": "DiM",
}
# The book's order of the five trained architectures (legends, tables, bar groups).
ORDER: tuple[str, ...] = ("standard", "jumprelu", "topk", "batchtopk", "abstopk")
# Colours for anything that is not an architecture (metrics, solvers, histogram bins): none of them is in COLORS, so
# a metric is never mistaken for an SAE.
OTHER_COLORS: tuple[str, ...] = ("#8c564b", "#e377c2", "#bcbd22", "#3b3b3b", "#e6ab02", "#6a3d9a", "#a6761d")
VARIANT_COLORS = COLORS  # the old name, kept for callers that use it


def _key(name: str) -> str:
    """A code or display name reduced to the form COLORS and NAMES are keyed by: "Abs-TopK" -> "abstopk"."""
    # lower-casing maps every display name back to a key: "ReLU" -> "relu", "BatchTopK" -> "batchtopk", "DiM" -> "dim"
    return str(name).lower().replace("-", "").replace(" ", "").replace("_", "")


def name(arch: str) -> str:
    """The display name of an architecture ("topk" -> "TopK", "standard" -> "ReLU"); anything else unchanged."""
    return NAMES.get(_key(arch), str(arch))


def style() -> None:
    """The book's look (same as :func:`set_style`): call once at the top of a chapter."""
    set_style()


def set_style() -> None:
    """The book's look: seaborn's white grid, readable fonts, figures ~8×4 inches."""
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)
    plt.rcParams.update({"figure.figsize": (8, 4), "figure.dpi": 100, "axes.titleweight": "bold",
                         "legend.frameon": False})


def color(name: str, fallback_index: int = 0) -> str:
    """The colour of an architecture, by code or display name ("abstopk", "AbsTopK"), case-insensitive.

    Anything else gets OTHER_COLORS[fallback_index], a colour no architecture uses.
    """
    return COLORS.get(_key(name), OTHER_COLORS[fallback_index % len(OTHER_COLORS)])


# --- axes: ticks a reader can read ------------------------------------------------------------------------------------


def _plain(value: float) -> str:
    """A tick label as a plain number: 16, 0.05, 1.5, 2000 (never "2×10¹")."""
    return f"{value:g}"


def log_ticks(ax: Axes, values, axis: str = "x", min_ratio: float = 1.25, fmt: Callable[[float], str] = _plain) -> list:
    """Put a log ``axis`` ("x" or "y") on ``ax`` with its major ticks at the plotted ``values``, labelled plainly.

    values: the numbers plotted along that axis (e.g. the k swept, or the L0 reached).  Ticks closer than a factor
    ``min_ratio`` to the previous kept one are dropped, so labels never collide ("3×10¹4×10¹").  Minor ticks keep
    their grid but get no labels.  Returns the tick values kept.
    """
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    values = np.asarray(sorted({float(v) for v in np.ravel(_numpy(values)) if np.isfinite(v) and v > 0}))
    if values.size == 0:
        raise ValueError("log_ticks needs at least one positive, finite value to put a tick at")
    kept = [values[0]]
    for v in values[1:]:
        if v / kept[-1] >= min_ratio:
            kept.append(v)
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(ticker.FixedLocator(kept))
    target.set_major_formatter(ticker.FixedFormatter([fmt(v) for v in kept]))
    target.set_minor_formatter(ticker.NullFormatter())
    return [float(v) for v in kept]


def plain_log_axis(ax: Axes, axis: str = "y", subs: Sequence[float] = (1.0, 2.0, 5.0)) -> None:
    """A log ``axis`` with ticks at 1, 2, 5 × 10ⁿ labelled as plain numbers (0.05, 0.1, 0.2, ...)."""
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(ticker.LogLocator(base=10, subs=tuple(subs)))
    target.set_major_formatter(ticker.FuncFormatter(lambda v, _: _plain(v)))
    target.set_minor_formatter(ticker.NullFormatter())


def count_axis(ax: Axes, axis: str = "x") -> None:
    """Label a linear axis of counts with SI suffixes (200k, 1M), instead of a "1e6" offset at its end."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_formatter(ticker.EngFormatter(sep=""))


def note(ax: Axes, text: str) -> Axes:
    """Write ``text`` in the middle of ``ax`` (e.g. "no dead latents in any run" instead of flat zero lines)."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color="0.3",
            wrap=True)
    return ax


def legend_outside(ax: Axes, where: str = "right", **kwargs) -> None:
    """The legend of ``ax`` outside the plotting area ("right" or "below"), so it never covers a curve."""
    if where == "right":
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), **kwargs)
    elif where == "below":
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=kwargs.pop("ncols", 3), **kwargs)
    else:
        raise ValueError(f"where must be 'right' or 'below', got {where!r}")


def figure_legend(fig: Figure, axes, ncols: int | None = None, y: float = -0.02) -> None:
    """One legend for a row of panels, below the figure; the panels' own legends are removed.

    The handles are collected from every panel of ``axes`` (first occurrence of each label wins).
    """
    handles: dict[str, object] = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if handles:
        # architectures in the book's order (ReLU ... AbsTopK), anything else after them as found
        book_order = [NAMES[a] for a in ORDER]
        labels = sorted(handles, key=lambda label: book_order.index(label) if label in book_order else len(ORDER))
        fig.legend([handles[label] for label in labels], labels, loc="upper center", bbox_to_anchor=(0.5, y),
                   ncols=ncols or len(handles))


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=float)


def _new_axes(ax: Axes | None, figsize: tuple[float, float] = (8, 4)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


# --- activation functions (chapter 1) ---------------------------------------------------------------------------------


def plot_activation_functions(
    ops: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    v_range: tuple[float, float] = (-3.0, 3.0),
    ncols: int = 3,
    n_points: int = 1201,
) -> Figure:
    """One panel per element-wise operator: z = op(v) against v, with the identity dashed for reference.

    ops: name -> a function [n] -> [n] (e.g. ``lambda v: prox.soft_threshold(v, 1.0)``).  A jump is drawn as a
    jump (no line joins the two sides), so hard thresholds look discontinuous as they are.
    """
    if not ops:
        raise ValueError("plot_activation_functions needs at least one operator in ops")
    v = torch.linspace(v_range[0], v_range[1], n_points, dtype=torch.float64)
    nrows = int(np.ceil(len(ops) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.9 * nrows), sharex=True, sharey=True, squeeze=False)
    for ax, (name, op) in zip(axes.flat, ops.items()):
        z = _numpy(op(v))
        x = _numpy(v)
        # break the line where z jumps, so a discontinuity is not drawn as a steep segment
        jumps = np.abs(np.diff(z)) > 10 * (x[1] - x[0]) + 1e-12
        z_line = z.copy()
        z_line[1:][jumps] = np.nan
        ax.plot(x, x, ls="--", lw=1, color="0.6", label="identity")
        ax.plot(x, z_line, lw=2.2, color=OTHER_COLORS[3])
        ax.axhline(0, color="0.3", lw=0.6)
        ax.axvline(0, color="0.3", lw=0.6)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("pre-activation $v$")
        ax.set_ylabel("code $z$")
    for ax in list(axes.flat)[len(ops):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_sparse_vector(v, outputs: Mapping[str, object], title: str = "",
                       colors: Mapping[str, str] | None = None) -> Figure:
    """A vector v and what some non-element-wise operators (TopK, AbsTopK) make of it, as bar plots.

    v: [n].  outputs: name -> [n] codes.  One row of panels: v first, then each output, with bars kept by the
    operator coloured (``colors[name]``, e.g. ``COLORS["topk"]``) and v's bars ghosted behind for comparison.
    """
    v = _numpy(v)
    n = len(v)
    fig, axes = plt.subplots(1, 1 + len(outputs), figsize=(3.3 * (1 + len(outputs)), 3.2), sharey=True)
    idx = np.arange(n)
    axes[0].bar(idx, v, color="0.45")
    axes[0].set_title("$v$ (pre-activation)", fontsize=10)
    for i, (label, z) in enumerate(outputs.items()):
        ax = axes[1 + i]
        z = _numpy(z)
        kept_color = (colors or {}).get(label, OTHER_COLORS[i % len(OTHER_COLORS)])
        ax.bar(idx, v, color="0.85", label="$v$")
        ax.bar(idx, z, color=[kept_color if value != 0 else "none" for value in z], label="kept")
        ax.set_title(label, fontsize=10)
    for ax in axes:
        ax.axhline(0, color="0.3", lw=0.6)
        ax.set_xlabel("latent $i$")
        ax.set_xticks(idx)
    axes[0].set_ylabel("value")
    if title:
        fig.suptitle(title, fontweight="bold")
    fig.tight_layout()
    return fig


# --- optimisation curves ------------------------------------------------------------------------------------------------


def plot_objective_curves(
    curves: Mapping[str, object],
    optimum: float | None = None,
    ax: Axes | None = None,
    title: str = "",
    ylabel: str | None = None,
    logy: bool | None = None,
    references: Mapping[str, float] | None = None,
    colors: Mapping[str, str] | None = None,
    linestyles: Mapping[str, str] | None = None,
    legend: str = "best",
) -> Axes:
    """Objective against iteration, one line per solver.  curves: name -> [n_steps + 1] objective values.

    With ``optimum`` the gap F(z_t) − F* is drawn on a log scale (the way convergence rates are read);
    without it the objective itself (log scale only if ``logy``).  ``references``: name -> a level drawn as a
    dashed horizontal line (e.g. the noise floor, or what one step reaches).  ``colors`` / ``linestyles``: name ->
    a colour / line style (default: OTHER_COLORS in order, solid).  ``legend``: a matplotlib location, or "right" /
    "below" to put it outside the axes (:func:`legend_outside`) where it cannot cover a curve.
    """
    ax = _new_axes(ax)
    for i, (label, values) in enumerate(curves.items()):
        y = _numpy(values)
        steps = np.arange(len(y))
        line = dict(label=label, lw=2, color=(colors or {}).get(label, OTHER_COLORS[i % len(OTHER_COLORS)]),
                    ls=(linestyles or {}).get(label, "-"))
        # a gap of exactly 0 (or round-off below it) cannot be drawn on a log axis
        ax.plot(steps, np.maximum(y - optimum, 1e-16) if optimum is not None else y, **line)
    for j, (label, level) in enumerate((references or {}).items()):
        level = float(level) - (optimum or 0.0)
        ax.axhline(level, ls=["--", ":", "-."][j % 3], color="0.35", lw=1.2, label=label)
    if logy if logy is not None else optimum is not None:
        ax.set_yscale("log")
        if optimum is None:  # an objective spans a decade or two: plain labels (0.5, 1, 2); a gap keeps 10⁻ⁿ
            plain_log_axis(ax, "y")
    ax.set_xlabel("iteration $t$")
    ax.set_ylabel(ylabel or ("$F(z_t) - F^*$" if optimum is not None else "objective $F(z_t)$"))
    if title:
        ax.set_title(title)
    if legend in ("right", "below"):
        legend_outside(ax, legend)
    else:
        ax.legend(loc=legend)
    return ax


def plot_training_curves(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    y: str = "nmse",
    x: str = "step",
    ax: Axes | None = None,
    logy: bool = True,
    title: str = "",
    smooth: int = 1,
    ylabel: str | None = None,
    if_all_zero: str | None = None,
) -> Axes:
    """One line per trained SAE: ``y`` (a key of the trainer's history rows, e.g. "nmse", "l0") against ``x``.

    histories: name (code or display name; legends show :func:`name`) -> the rows ``train_sae`` returns.
    ``smooth`` > 1 draws the rolling mean over that many logged rows (centred) as the line, and the logged values
    themselves as faint dots: per-batch numbers such as NMSE jump between batches.  A log y axis gets plain tick
    labels.  ``if_all_zero``: when every value of every history is 0, write this note instead of flat lines.
    """
    if smooth < 1:
        raise ValueError(f"smooth is a number of logged rows to average over, at least 1; got {smooth}")
    ax = _new_axes(ax)
    for label, history in histories.items():
        if not history:
            raise ValueError(f"history {label!r} is empty; train_sae returns one row per log_every steps")
        if y not in history[0] or x not in history[0]:
            missing = y if y not in history[0] else x
            raise ValueError(f"history rows have no {missing!r}; they have {', '.join(history[0])}")
    if if_all_zero is not None and all(row[y] == 0 for h in histories.values() for row in h):
        note(ax, if_all_zero)
        xs = [row[x] for h in histories.values() for row in h]
        ax.set_xlim(min(xs), max(xs))  # the same x range as the panels beside it
        logy = False
    else:
        for i, (label, history) in enumerate(histories.items()):
            xs = np.array([row[x] for row in history], dtype=float)
            ys = np.array([row[y] for row in history], dtype=float)
            line_color = color(label, i)
            if smooth > 1:
                ax.plot(xs, ys, ls="none", marker="o", ms=2.5, alpha=0.3, color=line_color)
                ys = rolling_mean(ys, smooth)
            ax.plot(xs, ys, label=name(label), lw=1.8, color=line_color)
        ax.legend()
    if logy:
        plain_log_axis(ax, "y")
    ax.set_xlabel(x)
    default = {"nmse": "NMSE", "fvu": "FVU", "l0": "L0 (active latents per token)"}.get(y, y)
    ax.set_ylabel(ylabel or (default + (f" (rolling mean of {smooth} logged steps)" if smooth > 1 else "")))
    ax.set_title(title or f"training {y}")
    return ax


def rolling_mean(values, window: int) -> np.ndarray:
    """Centred rolling mean of a 1-D array [n] over ``window`` entries (fewer at the ends): [n]."""
    values = _numpy(values)
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    kernel = np.ones(window)
    # The centred slice of the full convolution: np.convolve's mode="same" would return [window] entries when the
    # window is longer than the values (a short training run's few logged rows).
    start = (window - 1) // 2
    sums = np.convolve(values, kernel)[start : start + len(values)]
    counts = np.convolve(np.ones_like(values), kernel)[start : start + len(values)]
    return sums / counts


# --- dictionaries and trade-offs ----------------------------------------------------------------------------------------


def plot_decoder_cosine_hist(
    values: Mapping[str, object],
    ax: Axes | None = None,
    bins: int = 40,
    threshold: float | None = -0.9,
    xlabel: str = "most negative cosine to another decoder row",
    title: str = "",
) -> Axes:
    """Overlaid histograms of one number per latent, one per SAE (e.g. each latent's most negative decoder cosine).

    values: name -> [n_latents].  ``threshold`` draws a dotted line (e.g. at −0.9: "antipodal" pairs left of it).
    """
    ax = _new_axes(ax)
    edges = np.linspace(-1.0, 1.0, bins + 1)
    for i, (label, v) in enumerate(values.items()):
        ax.hist(_numpy(v), bins=edges, alpha=0.55, label=name(label), color=color(label, i), edgecolor="white",
                linewidth=0.5)
    if threshold is not None:
        ax.axvline(threshold, ls=":", color="0.2", lw=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("latents")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


def plot_tradeoff(
    df,
    x: str,
    y: str,
    hue: str,
    ax: Axes | None = None,
    logx: bool = False,
    logy: bool = False,
    title: str = "",
    xlabel: str | None = None,
    ylabel: str | None = None,
    annotate: str | None = None,
) -> Axes:
    """One line with markers per ``hue`` group of a DataFrame, points sorted by ``x``: a sparsity/size trade-off.

    Used for NMSE vs L0 (Pareto curves), NMSE vs dictionary size, probe accuracy vs k...  ``annotate`` names a column
    whose value is written next to each point (e.g. the L0 a penalised SAE landed on).
    """
    for column in (x, y, hue) + ((annotate,) if annotate else ()):
        if column not in df.columns:
            raise ValueError(f"plot_tradeoff: the DataFrame has no column {column!r}; it has {', '.join(df.columns)}")
    ax = _new_axes(ax)
    for i, (group_name, group) in enumerate(df.groupby(hue, sort=False)):
        group = group.sort_values(x)
        line_color = color(str(group_name), i)
        ax.plot(group[x], group[y], marker="o", lw=1.8, ms=5, label=name(str(group_name)), color=line_color)
        if annotate:
            for _, row in group.iterrows():
                ax.annotate(f"{row[annotate]:.3g}", (row[x], row[y]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=line_color)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title)
    ax.legend(title=hue)
    return ax


# --- chapters 3-4 -------------------------------------------------------------------------------------------------------


def plot_position_norms(norms, ax: Axes | None = None, title: str = "Residual-stream norm by position") -> Axes:
    """Bar chart of ‖x‖ at each position of one sequence on a log scale, position 0 in brown.  norms: [seq_len]."""
    norms = _numpy(norms)
    if norms.ndim != 1 or norms.size == 0:
        raise ValueError(f"norms must be a non-empty 1-D array [seq_len], got shape {norms.shape}")
    ax = _new_axes(ax)
    ax.bar(np.arange(norms.size), norms, width=1.0, color=[OTHER_COLORS[0]] + ["0.6"] * (norms.size - 1))
    ax.set_yscale("log")
    ax.set_xlabel("position in the sequence")
    ax.set_ylabel("‖x‖ (log scale)")
    ax.set_title(title)
    return ax


def plot_norm_histogram(norms, threshold: float | None = None, ax: Axes | None = None, bins: int = 80,
                        title: str = "Token norms in the harvested activations") -> Axes:
    """Histogram of token norms on log–log axes (rare outliers stay visible), with a dashed line at ``threshold``.

    norms: [n_tokens] positive values.
    """
    norms = _numpy(norms)
    norms = norms[norms > 0]
    if norms.size == 0:
        raise ValueError("norms must contain at least one positive value")
    ax = _new_axes(ax)
    edges = np.logspace(np.log10(norms.min()), np.log10(norms.max()) + 1e-9, bins + 1)
    ax.hist(norms, bins=edges, color="0.45")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if threshold is not None:
        ax.axvline(threshold, color=OTHER_COLORS[0], ls="--", lw=1.2, label=f"threshold {threshold:.3g}")
        ax.legend()
    ax.set_xlabel("‖x‖ (log scale)")
    ax.set_ylabel("tokens (log scale)")
    ax.set_title(title)
    return ax


def plot_sign_balance(fraction_negative, ax: Axes | None = None, bins: int = 20,
                      title: str = "How often each AbsTopK latent fires negatively") -> Axes:
    """Histogram over latents of the share of their non-zero codes that are negative.  fraction_negative: [n_latents].

    0: the latent only fires positively (as a TopK latent must); 1: only negatively; in between: it uses both signs.
    """
    values = _numpy(fraction_negative)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("fraction_negative must be a non-empty 1-D array, one value per live latent")
    ax = _new_axes(ax)
    ax.hist(values, bins=np.linspace(0.0, 1.0, bins + 1), color=color("abstopk"), edgecolor="white", linewidth=0.5)
    ax.set_xlabel("share of the latent's non-zero codes that are negative")
    ax.set_ylabel("latents")
    ax.set_title(title)
    return ax


# --- chapter 7 ----------------------------------------------------------------------------------------------------------


def plot_steering_sweep(sweep, labels: Mapping[str, str], budget: float, axis_name: str,
                        negative_pole: str, positive_pole: str) -> Figure:
    """A ``steering.AxisSweep`` in three panels: judged shift vs α; shift vs perplexity (efficiency, log scale,
    dotted line at ``budget`` × the unsteered perplexity); multiple-choice accuracy vs α (if measured).

    ``labels`` {method: legend label}. Activation addition is drawn as lines with filled dots; a method whose name
    ends in "-clamp" as hollow squares on a dotted line, so a clamp that coincides with its *add* (the latent silent)
    shows as squares around the dots instead of hiding them. The cost panel draws each sign of α as its own branch
    out of the unsteered point, ordered by |α|, so a curve never doubles back on itself.
    """
    panels = 3 if sweep.accuracy else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.4 * panels, 4.3))
    alphas = np.asarray(sweep.alphas, dtype=float)
    branches = [np.flatnonzero(alphas <= 0)[::-1], np.flatnonzero(alphas >= 0)]  # outwards from α = 0
    for method, label in labels.items():
        variant = method.split("-")[0]
        clamp = method.endswith("-clamp")
        style = dict(color=color(variant), lw=1.2 if clamp else 2.2 if variant in ("dim", "abstopk") else 1.4,
                     ls=":" if clamp else "-", marker="s" if clamp else "o", ms=7 if clamp else 4,
                     mfc="none" if clamp else color(variant), zorder=3 if clamp else 2)
        shift = np.asarray(sweep.shift[method], dtype=float)
        axes[0].plot(alphas, shift, label=label, **style)
        ppl = np.asarray(sweep.perplexity[method], dtype=float)
        for b, idx in enumerate(branches):
            idx = idx[np.isfinite(ppl[idx])]
            axes[1].plot(ppl[idx], shift[idx], **style)
        if sweep.accuracy:
            acc = np.asarray(sweep.accuracy[method], dtype=float)
            ok = np.isfinite(acc)
            axes[2].plot(alphas[ok], acc[ok], **style)
    for ax in axes[:2]:
        ax.axhline(0, color="k", lw=0.8)
    axes[0].axvline(0, color="k", lw=0.8)
    axes[0].set(xlabel=f"α (< 0: towards {negative_pole}, > 0: towards {positive_pole})",
                ylabel=f"judged shift of the {axis_name} margin (nats)", title="What the push does")
    axes[0].set_xticks(alphas)
    axes[0].set_xticklabels([f"{a:g}" for a in alphas], fontsize=8)
    axes[1].axvline(sweep.base_perplexity, color="k", lw=0.8)
    axes[1].axvline(budget * sweep.base_perplexity, color="k", lw=0.8, ls=":")
    finite = [p for m in labels for p in sweep.perplexity[m] if np.isfinite(p)]
    log_ticks(axes[1], [sweep.base_perplexity, budget * sweep.base_perplexity, max(finite)], "x", fmt=lambda v: f"{v:.0f}")
    axes[1].set(xlabel="perplexity on held-out text (log; dotted: the budget)", ylabel="judged shift (nats)",
                title="What it costs: perplexity")
    if sweep.accuracy:
        axes[2].axvline(0, color="k", lw=0.8)
        axes[2].set_xticks(alphas)
        axes[2].set_xticklabels([f"{a:g}" for a in alphas], fontsize=8)
        axes[2].set(xlabel="α", ylabel="share of fact questions answered", ylim=(-0.03, 1.03),
                    title="What it costs: facts answered (4 options)")
    fig.tight_layout()
    figure_legend(fig, axes, ncols=min(4, len(labels)))
    return fig
