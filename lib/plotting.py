"""Figures: one style for the whole book, seaborn for the statistical plots.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def set_style() -> None:
    """Theme, sizes and resolution shared by every chapter's figures."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.figsize": (7.0, 3.6), "figure.dpi": 110,
                         "savefig.dpi": 150, "axes.titleweight": "bold"})


def plot_parameter_split(df: pd.DataFrame, ax: Any = None) -> Any:
    """Stacked horizontal bars: share of parameters in encoder, projector and decoder.

    Args:
        df: one row per SpeechLLM with columns ``model``, ``encoder``, ``projector``,
            ``decoder`` (parameter counts).
    """
    parts = ["encoder", "projector", "decoder"]
    share = df.set_index("model")[parts].div(df.set_index("model")[parts].sum(1), axis=0)
    ax = ax or plt.subplots(figsize=(7.0, 0.45 * len(df) + 1.2))[1]
    left = pd.Series(0.0, index=share.index)
    for part, color in zip(parts, sns.color_palette("colorblind", 3)):
        ax.barh(share.index, share[part] * 100, left=left * 100, label=part, color=color)
        left += share[part]
    ax.set_xlabel("share of SpeechLLM parameters (%)")
    ax.set_ylabel("")
    ax.set_xlim(0, 100)
    ax.axvline(90, color="black", lw=0.8, ls="--")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False)
    ax.invert_yaxis()
    return ax


def plot_training_curves(log: pd.DataFrame, ax: Any = None) -> Any:
    """Training loss against step, one line per model.

    Args:
        log: rows with ``model``, ``step`` and ``loss``.
    """
    ax = ax or plt.subplots()[1]
    sns.lineplot(data=log, x="step", y="loss", hue="model", ax=ax, alpha=0.35, legend=False)
    smooth = log.copy()
    smooth["loss"] = smooth.groupby("model")["loss"].transform(
        lambda s: s.rolling(max(1, len(s) // 20), min_periods=1).mean())
    sns.lineplot(data=smooth, x="step", y="loss", hue="model", ax=ax)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("cross-entropy on target tokens (nats)")
    ax.set_yscale("log")
    return ax


def plot_wer(df: pd.DataFrame, ax: Any = None) -> Any:
    """WER (%) per model and test set as grouped bars with the values printed."""
    ax = ax or plt.subplots()[1]
    d = df.assign(wer_pct=df["wer"] * 100)
    sns.barplot(data=d, x="test set", y="wer_pct", hue="model", ax=ax)
    for c in ax.containers:
        ax.bar_label(c, fmt="%.1f", fontsize=8)
    ax.set_ylabel("word error rate (%)")
    ax.set_xlabel("")
    return ax
