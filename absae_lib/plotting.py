"""The book's figures: small plain functions that draw on matplotlib axes and return them.

Every function takes plain data (dicts of arrays or tensors, a pandas DataFrame), draws one figure or panel, labels
its axes and returns the Figure (several panels) or the Axes (one panel, so a caller can add to it or pass ``ax=`` to
draw into a grid of its own).  Call :func:`set_style` once at the top of a chapter.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# The SAE variants keep one colour across every chapter, so a reader can follow "AbsTopK" from figure to figure.
VARIANT_COLORS = {
    "abstopk": "#d62728",
    "topk": "#1f77b4",
    "batchtopk": "#17becf",
    "standard": "#2ca02c",
    "relu": "#2ca02c",
    "jumprelu": "#9467bd",
    "unrolled": "#ff7f0e",
    "dim": "#7f7f7f",
}


def set_style() -> None:
    """The book's look: seaborn's white grid, readable fonts, figures ~8×4 inches."""
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)
    plt.rcParams.update({"figure.figsize": (8, 4), "figure.dpi": 100, "axes.titleweight": "bold",
                         "legend.frameon": False})


def color(name: str, fallback_index: int = 0) -> str:
    """The colour of a variant (by its architecture name, case-insensitive), else one from seaborn's palette."""
    key = name.lower().replace("-", "").replace(" ", "")
    return VARIANT_COLORS.get(key, sns.color_palette()[fallback_index % 10])


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
        ax.plot(x, z_line, lw=2.2, color="C3")
        ax.axhline(0, color="0.3", lw=0.6)
        ax.axvline(0, color="0.3", lw=0.6)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("pre-activation $v$")
        ax.set_ylabel("code $z$")
    for ax in list(axes.flat)[len(ops):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_sparse_vector(v, outputs: Mapping[str, object], title: str = "") -> Figure:
    """A vector v and what some non-element-wise operators (TopK, AbsTopK) make of it, as bar plots.

    v: [n].  outputs: name -> [n] codes.  One row of panels: v first, then each output, with bars kept by the
    operator coloured and v's bars ghosted behind for comparison.
    """
    v = _numpy(v)
    n = len(v)
    fig, axes = plt.subplots(1, 1 + len(outputs), figsize=(3.3 * (1 + len(outputs)), 3.2), sharey=True)
    idx = np.arange(n)
    axes[0].bar(idx, v, color="0.45")
    axes[0].set_title("$v$ (pre-activation)", fontsize=10)
    for ax, (name, z) in zip(axes[1:], outputs.items()):
        z = _numpy(z)
        ax.bar(idx, v, color="0.85", label="$v$")
        ax.bar(idx, z, color=["C3" if value != 0 else "none" for value in z], label="kept")
        ax.set_title(name, fontsize=10)
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
) -> Axes:
    """Objective against iteration, one line per solver.  curves: name -> [n_steps + 1] objective values.

    With ``optimum`` the gap F(z_t) − F* is drawn on a log scale (the way convergence rates are read);
    without it the objective itself (log scale only if ``logy``).  ``references``: name -> a level drawn as a
    dashed horizontal line (e.g. the noise floor, or what one step reaches).
    """
    ax = _new_axes(ax)
    for i, (name, values) in enumerate(curves.items()):
        y = _numpy(values)
        steps = np.arange(len(y))
        if optimum is not None:
            # a gap of exactly 0 (or round-off below it) cannot be drawn on a log axis
            ax.plot(steps, np.maximum(y - optimum, 1e-16), label=name, lw=2, color=f"C{i}")
        else:
            ax.plot(steps, y, label=name, lw=2, color=f"C{i}")
    for j, (name, level) in enumerate((references or {}).items()):
        level = float(level) - (optimum or 0.0)
        ax.axhline(level, ls=["--", ":", "-."][j % 3], color="0.35", lw=1.2, label=name)
    if logy if logy is not None else optimum is not None:
        ax.set_yscale("log")
    ax.set_xlabel("iteration $t$")
    ax.set_ylabel(ylabel or ("$F(z_t) - F^*$" if optimum is not None else "objective $F(z_t)$"))
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


def plot_training_curves(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    y: str = "nmse",
    x: str = "step",
    ax: Axes | None = None,
    logy: bool = True,
    title: str = "",
) -> Axes:
    """One line per trained SAE: ``y`` (a key of the trainer's history rows, e.g. "nmse", "l0") against ``x``."""
    ax = _new_axes(ax)
    for i, (name, history) in enumerate(histories.items()):
        if not history:
            raise ValueError(f"history {name!r} is empty; train_sae returns one row per log_every steps")
        if y not in history[0]:
            raise ValueError(f"history rows have no {y!r}; they have {', '.join(history[0])}")
        ax.plot([row[x] for row in history], [row[y] for row in history], label=name, lw=1.8, color=color(name, i))
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y.upper() if y in ("nmse", "fvu", "l0") else y)
    ax.set_title(title or f"training {y}")
    ax.legend()
    return ax


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
    for i, (name, v) in enumerate(values.items()):
        ax.hist(_numpy(v), bins=edges, alpha=0.55, label=name, color=color(name, i), edgecolor="white", linewidth=0.5)
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
    for i, (name, group) in enumerate(df.groupby(hue, sort=False)):
        group = group.sort_values(x)
        ax.plot(group[x], group[y], marker="o", lw=1.8, ms=5, label=str(name), color=color(str(name), i))
        if annotate:
            for _, row in group.iterrows():
                ax.annotate(f"{row[annotate]:.3g}", (row[x], row[y]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=color(str(name), i))
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
    """Bar chart of ‖x‖ at each position of one sequence on a log scale, position 0 in red.  norms: [seq_len]."""
    norms = _numpy(norms)
    if norms.ndim != 1 or norms.size == 0:
        raise ValueError(f"norms must be a non-empty 1-D array [seq_len], got shape {norms.shape}")
    ax = _new_axes(ax)
    ax.bar(np.arange(norms.size), norms, width=1.0, color=["C3"] + ["C0"] * (norms.size - 1))
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
    ax.hist(norms, bins=edges, color="C0")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if threshold is not None:
        ax.axvline(threshold, color="C3", ls="--", lw=1.2, label=f"threshold {threshold:.3g}")
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

    ``labels`` {method: legend label}; a method whose name ends in "-clamp" is drawn dashed (shift only), the
    supervised "dim" and the AbsTopK methods thicker.
    """
    panels = 3 if sweep.accuracy else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.6 * panels, 4.3))
    alphas = sweep.alphas
    for method, label in labels.items():
        variant = method.split("-")[0]
        clamp = method.endswith("-clamp")
        style = dict(color=color(variant), lw=2.5 if variant in ("dim", "abstopk") else 1.5, ls="--" if clamp else "-",
                     marker="x" if clamp else "o", ms=4, label=label)
        axes[0].plot(alphas, sweep.shift[method], **style)
        if not clamp:
            axes[1].plot(sweep.perplexity[method], sweep.shift[method], **style)
            if sweep.accuracy:
                axes[2].plot(alphas, sweep.accuracy[method], **style)
    for ax in axes[:2]:
        ax.axhline(0, color="k", lw=0.8)
    axes[0].axvline(0, color="k", lw=0.8)
    axes[0].set(xlabel=f"α (< 0: towards {negative_pole}, > 0: towards {positive_pole})",
                ylabel=f"judged shift of the {axis_name} margin (nats)", title="What the push does")
    axes[1].axvline(sweep.base_perplexity, color="k", lw=0.8)
    axes[1].axvline(budget * sweep.base_perplexity, color="k", lw=0.8, ls=":")
    axes[1].set_xscale("log")
    axes[1].set(xlabel="perplexity on held-out text (log; dotted: the budget)", ylabel="judged shift (nats)",
                title="What it costs: perplexity")
    if sweep.accuracy:
        axes[2].axvline(0, color="k", lw=0.8)
        axes[2].set(xlabel="α", ylabel="accuracy", ylim=(-0.03, 1.03),
                    title="What it costs: facts answered (4 options)")
    axes[0].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig
