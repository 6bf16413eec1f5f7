"""The book's palette, display names and axis helpers (absae_lib.plotting)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from absae_lib import plotting
from absae_lib.sae import ARCHITECTURES


def teardown_function(_):
    plt.close("all")


def test_every_architecture_has_one_colour_and_one_name():
    for arch in ARCHITECTURES:
        assert arch in plotting.COLORS and arch in plotting.NAMES
    colours = [plotting.COLORS[a] for a in ARCHITECTURES]
    assert len(set(colours)) == len(colours), "two architectures share a colour"
    assert not set(plotting.OTHER_COLORS) & set(plotting.COLORS.values()), "a non-architecture colour is an SAE's"
    assert plotting.VARIANT_COLORS is plotting.COLORS  # the old name still works


@pytest.mark.parametrize("arch", ARCHITECTURES + ("dim",))
def test_display_names_and_code_names_get_the_same_colour(arch):
    display = plotting.name(arch)
    assert plotting.color(display) == plotting.color(arch) == plotting.COLORS[arch]
    assert plotting.name(display) == display  # a display name passes through unchanged


def test_names_and_fallbacks():
    assert plotting.name("standard") == plotting.name("relu") == "ReLU"
    assert plotting.name("Abs-TopK") == "AbsTopK"
    assert plotting.name("IHT with TopK") == "IHT with TopK"  # not an architecture: unchanged
    assert plotting.color("not an SAE", 1) == plotting.OTHER_COLORS[1]


def test_every_tabulated_metric_has_one_distinct_display_name():
    # the metrics chapters 2-4 put in table headers; a raw key ("nmse_typical") in a header was a rendering bug
    tabulated = ["l0", "nmse", "nmse_typical", "nmse_per_token", "explained_variance", "dead_fraction",
                 "dense_fraction", "fraction_negative", "loss_recovered", "delta_ce", "kl", "antipodal_pairs"]
    names = [plotting.metric_name(m) for m in tabulated]
    assert all(n != m for n, m in zip(names, tabulated)), "a metric shows its code name"
    assert len(set(names)) == len(names), "two metrics share a display name"
    assert plotting.metric_name("not a metric") == "not a metric"


def test_log_ticks_sit_at_the_plotted_values_with_plain_labels_and_no_collisions():
    fig, ax = plt.subplots()
    ax.plot([11.5, 16, 18.4, 32, 37, 64], [1, 2, 3, 4, 5, 6])
    kept = plotting.log_ticks(ax, [16, 32, 64, 18.4, 11.5, 37], axis="x", min_ratio=1.25)
    # 18.4 is within 1.25× of 16 and 37 within 1.25× of 32: dropped so the labels cannot overlap
    assert kept == [11.5, 16.0, 32.0, 64.0]
    assert ax.get_xscale() == "log"
    fig.canvas.draw()
    assert list(ax.get_xticks()) == kept
    assert [t.get_text() for t in ax.get_xticklabels()] == ["11.5", "16", "32", "64"]
    assert all(t.get_text() == "" for t in ax.get_xticklabels(minor=True))
    with pytest.raises(ValueError, match="positive"):
        plotting.log_ticks(ax, [0, -1])


def test_plain_log_axis_labels_have_no_powers_of_ten():
    fig, ax = plt.subplots()
    ax.plot([1, 2], [0.03, 0.4])
    plotting.plain_log_axis(ax, "y")
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert labels and not any("$" in text or "×" in text for text in labels)  # no mathtext "10^{-1}"
    assert "0.1" in labels and "0.2" in labels


def _visible_tick_labels(ax, axis="y"):
    lo, hi = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    ticks = ax.get_yticks() if axis == "y" else ax.get_xticks()
    labels = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    return [t.get_text() for v, t in zip(ticks, labels) if lo <= v <= hi and t.get_text()]


def test_plain_log_axis_gets_denser_when_the_view_spans_less_than_a_decade():
    # chapter 4's per-token NMSE panel: 0.095 to 0.13 held one labelled tick ("0.1") with 1-2-5 ticks
    fig, ax = plt.subplots()
    ax.plot([1, 2], [0.095, 0.13])
    plotting.plain_log_axis(ax, "y")
    fig.canvas.draw()
    assert _visible_tick_labels(ax) == ["0.1", "0.11", "0.12", "0.13"]
    # limits set after the call are honoured (the locator decides at draw time)
    ax.set_ylim(0.02, 0.06)
    fig.canvas.draw()
    assert _visible_tick_labels(ax) == ["0.02", "0.03", "0.05"]
    # chapter 4 again: 1-9 ticks would stop at 0.1 and leave the top third of 0.075-0.145 bare
    ax.set_ylim(0.075, 0.145)
    fig.canvas.draw()
    assert _visible_tick_labels(ax) == ["0.08", "0.1", "0.12", "0.14"]
    # a wider view: 1-2-5 would leave 0.03-0.05 and 0.2-0.4 bare; 1-2-3-5-7 reaches both ends
    ax.set_ylim(0.03, 0.4)
    fig.canvas.draw()
    assert _visible_tick_labels(ax) == ["0.03", "0.05", "0.07", "0.1", "0.2", "0.3"]
    ax.set_ylim(50, 300)
    fig.canvas.draw()
    assert _visible_tick_labels(ax) == ["50", "100", "200"]
    # many decades: about one tick a decade, never dozens
    ax.set_ylim(1e-6, 1e6)
    fig.canvas.draw()
    assert 3 <= len(_visible_tick_labels(ax)) <= 13


def test_rolling_mean_closed_form():
    np.testing.assert_allclose(plotting.rolling_mean([1.0, 2.0, 3.0, 4.0, 5.0], 3), [1.5, 2.0, 3.0, 4.0, 4.5])
    np.testing.assert_allclose(plotting.rolling_mean([0.1, 1.0, 0.1, 1.0], 1), [0.1, 1.0, 0.1, 1.0])
    values = np.array([0.3, 1.0, 4.0, 1.5, 9.0, 2.6])
    for window in range(1, 7):  # what np.convolve(mode="same") gives wherever the window fits
        kernel = np.ones(window)
        same = np.convolve(values, kernel, mode="same") / np.convolve(np.ones(6), kernel, mode="same")
        np.testing.assert_allclose(plotting.rolling_mean(values, window), same)


def test_smoothing_a_history_shorter_than_the_window():
    # The Colab rehearsal's short runs log 3 rows; chapter 3 smooths over 5 (np.convolve "same" returned 5 values).
    np.testing.assert_allclose(plotting.rolling_mean([1.0, 2.0, 3.0], 5), [2.0, 2.0, 2.0])
    history = [{"tokens": 1024 * s, "nmse": 1.0 / (s + 1)} for s in (0, 10, 19)]
    ax = plotting.plot_training_curves({"topk": history}, y="nmse", x="tokens", smooth=5)
    assert len(ax.lines[-1].get_ydata()) == 3
    plt.close(ax.figure)


def test_training_curves_smooth_use_display_names_and_note_when_all_zero():
    rows = [{"tokens": 100 * i, "nmse": [0.02, 0.2][i % 2], "dead_fraction": 0.0} for i in range(9)]
    fig, axes = plt.subplots(1, 2)
    plotting.plot_training_curves({"topk": rows}, y="nmse", x="tokens", ax=axes[0], smooth=3)
    line = [ln for ln in axes[0].get_lines() if ln.get_label() == "TopK"][0]
    smoothed = line.get_ydata()
    # the raw values jump 10× between batches; the rolling mean of 3 stays within a factor 2
    assert smoothed[1:-1].max() / smoothed[1:-1].min() < 2
    assert line.get_color() == plotting.COLORS["topk"]
    plotting.plot_training_curves({"topk": rows}, y="dead_fraction", x="tokens", ax=axes[1], logy=False,
                                  if_all_zero="no dead latents")
    assert not axes[1].get_lines() and axes[1].texts[0].get_text() == "no dead latents"
    with pytest.raises(ValueError, match="no 'loss'"):
        plotting.plot_training_curves({"topk": rows}, y="loss", x="tokens")


def test_figure_legend_collects_each_label_once():
    fig, axes = plt.subplots(1, 2)
    for ax in axes:
        ax.plot([0, 1], [0, 1], label="TopK")
        ax.legend()
    axes[1].plot([0, 1], [1, 0], label="AbsTopK")
    plotting.figure_legend(fig, axes)
    assert all(ax.get_legend() is None for ax in axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["TopK", "AbsTopK"]


def test_figure_legend_lists_architectures_in_the_book_order():
    fig, ax = plt.subplots()
    for label in ("reference", "AbsTopK", "ReLU", "TopK"):
        ax.plot([0, 1], [0, 1], label=label)
    plotting.figure_legend(fig, [ax])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ReLU", "TopK", "AbsTopK", "reference"]


def _sweep(with_accuracy: bool):
    from absae_lib.steering import AxisSweep

    alphas = [-0.2, 0.0, 0.2]
    methods = ["dim", "abstopk-add", "abstopk-clamp"]
    return AxisSweep(alphas, {m: [-1.0, 0.0, 1.0] for m in methods}, {m: [[-1.0], [0.0], [1.0]] for m in methods},
                     {m: [30.0, 20.0, 25.0] for m in methods},
                     {m: [0.9, 1.0, 0.8] for m in methods} if with_accuracy else {},
                     {m: [4.0, 0.0, 4.0] for m in methods}, 1.0, 20.0, 1.0 if with_accuracy else None)


@pytest.mark.parametrize("with_accuracy", [True, False])
def test_steering_sweep_figure_layout_and_legend(with_accuracy):
    sweep = _sweep(with_accuracy)
    labels = {"dim": "DiM", "abstopk-add": "AbsTopK", "abstopk-clamp": "AbsTopK (clamp)"}
    fig = plotting.plot_steering_sweep(sweep, labels, 1.25, "sentiment", "negative", "positive")
    # with the accuracy panel: a 2 x 2 grid whose last cell is the legend, so the panels stay readable in the book
    assert len(fig.axes) == (4 if with_accuracy else 2)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    assert len(legends) == 1
    assert sorted(t.get_text() for t in legends[0].get_texts()) == sorted(labels.values())
    assert fig.get_size_inches()[0] <= 11.5  # the content column shows ~11 inches at a readable scale
