"""Chapter 1's figure of the levers of acoustic variety: WER against the minutes each costs.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb). Stage: report (figures), in the
book's one style (:func:`lib.report.plotting.set_style`).
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

PANELS = (("real:dev", "real dev prompts (choose)"), ("real", "real test set"),
          ("synthetic:test", "synthetic test voices"))


def _families(table: pd.DataFrame) -> list[list[Any]]:
    """The row labels of each lever pulled by more than one amount (``text=0.25``, ``text``,
    ``text=1``), ordered by amount."""
    from lib.data.spec import LEVER_AMOUNTS, CorpusSpec, lever_fields

    by: dict[str, list[tuple[float, Any]]] = {}
    for label, lever in table["lever"].items():
        name = str(lever).partition("=")[0]
        if name in LEVER_AMOUNTS:
            field = LEVER_AMOUNTS[name]
            amount = float(lever_fields(str(lever)).get(field, getattr(CorpusSpec, field)))
            by.setdefault(name, []).append((amount, label))
    return [[label for _, label in sorted(rows)] for rows in by.values() if len(rows) > 1]


def plot_levers(table: pd.DataFrame, spread: dict[str, float]) -> Any:
    """One panel per test set: each lever's CTC-head WER (%, 95 % interval over utterances)
    against the minutes its run took on this machine; the grey band is the clean recipe's
    WER +- half its range over training seeds (NaN: one seed, no band). A lever measured at
    several amounts (``text=0.25``, ``text``, ``text=1``) is joined by a line, in amount order.

    Args:
        table: :func:`lib.recipes.levers.lever_table`'s table (WERs as fractions).
        spread: the clean recipe's max - min WER over seeds, per test set.
    """
    fig, axes = plt.subplots(1, len(PANELS), figsize=(12.0, 3.8), sharex=True)
    colours = dict(zip(table["lever"], sns.color_palette("colorblind", len(table))))
    for ax, (test, title) in zip(axes, PANELS):
        clean = 100 * table.loc[table["lever"] == "clean", f"{test} WER"].iloc[0]
        half = 100 * spread.get(test, float("nan")) / 2
        if half == half:  # not NaN
            ax.axhspan(clean - half, clean + half, color="0.85", zorder=0)
        for family in _families(table):  # one lever at several amounts: a line through them
            rows = table.loc[family]
            ax.plot(rows["minutes"], 100 * rows[f"{test} WER"], color="0.6", lw=0.8, zorder=1)
        for _, row in table.iterrows():
            wer, (lo, hi) = 100 * row[f"{test} WER"], row[f"{test} ci95"]
            ax.errorbar(row["minutes"], wer, yerr=[[wer - 100 * lo], [100 * hi - wer]],
                        fmt="o", color=colours[row["lever"]], capsize=3)
            ax.annotate(row["lever"], (row["minutes"], wer), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        ax.set(title=title, xlabel="minutes on this CPU", ylabel="CTC-head WER (%)")
    fig.tight_layout()
    return fig
