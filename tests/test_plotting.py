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
