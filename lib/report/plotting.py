"""Figures: one style for the whole book, seaborn for the statistical plots.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

Stage: report (figures).
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
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
    if (log["loss"] > 0).all():
        ax.set_yscale("log")
    return ax


def plot_wer(df: pd.DataFrame, ax: Any = None) -> Any:
    """WER (%) per system and test set, bars with 95 % bootstrap intervals, values printed.

    Args:
        df: rows with ``test set``, ``system``, ``wer``, ``wer_low`` and ``wer_high``
            (fractions), as :func:`lib.recipes.ch01.wer_table` returns.
    """
    ax = ax or plt.subplots()[1]
    d = df.assign(wer_pct=100 * df["wer"])
    sns.barplot(data=d, x="test set", y="wer_pct", hue="system", ax=ax, errorbar=None)
    hues = list(dict.fromkeys(d["system"]))
    tests = list(dict.fromkeys(d["test set"]))
    for container, system in zip(ax.containers, hues):
        ax.bar_label(container, fmt="%.1f", fontsize=7, padding=2)
        for bar, test in zip(container, tests):
            row = d[(d["system"] == system) & (d["test set"] == test)]
            if row.empty or bar.get_height() != bar.get_height():
                continue
            x = bar.get_x() + bar.get_width() / 2
            ax.errorbar(x, 100 * row["wer"].iloc[0],
                        yerr=[[100 * (row["wer"].iloc[0] - row["wer_low"].iloc[0])],
                              [100 * (row["wer_high"].iloc[0] - row["wer"].iloc[0])]],
                        color="black", capsize=2, lw=0.8)
    ax.set_ylabel("word error rate (%), 95 % bootstrap interval")
    ax.set_xlabel("")
    ax.legend(fontsize=8, title=None)
    return ax


def _dev_wer_lines(ax: Any, frame: pd.DataFrame, x: str) -> list[tuple[pd.DataFrame, Any]]:
    """One line of ``dev_wer`` (%) against ``x`` per model, with its ``dev_low``-``dev_high``
    band; returns each model's rows and colour."""
    drawn = []
    for (model, g), color in zip(frame.groupby("model", sort=False), sns.color_palette()):
        ax.plot(g[x], 100 * g["dev_wer"], marker="o", color=color, label=model)
        ax.fill_between(g[x], 100 * g["dev_low"], 100 * g["dev_high"], color=color, alpha=0.15)
        drawn.append((g, color))
    return drawn


def plot_learning_curve(dev: pd.DataFrame, ax: Any = None) -> Any:
    """Dev-subset WER (%) against minutes of training, one line per model, with intervals.

    Args:
        dev: rows with ``model``, ``train_minutes``, ``dev_wer``, ``dev_low``, ``dev_high``.
    """
    ax = ax or plt.subplots()[1]
    _dev_wer_lines(ax, dev, "train_minutes")
    ax.set_xlabel("training time (CPU minutes, warm start included)")
    ax.set_ylabel("dev WER (%), 95 % interval")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return ax


def plot_rescore_sweep(sweep: pd.DataFrame, ax: Any = None) -> Any:
    """Dev WER (%) against the CTC weight of joint decoding, one line per model, with
    intervals; the chosen weight (lowest dev WER) ringed.

    Args:
        sweep: rows with ``model``, ``weight``, ``dev_wer``, ``dev_low``, ``dev_high``,
            ``chosen`` (bool).
    """
    ax = ax or plt.subplots()[1]
    for g, color in _dev_wer_lines(ax, sweep, "weight"):
        best = g[g["chosen"]]
        ax.scatter(best["weight"], 100 * best["dev_wer"], s=160, facecolors="none",
                   edgecolors=color, linewidths=2)
    ax.set_xlabel("CTC weight (0: the decoder's best beam; 1: the CTC head's choice)")
    ax.set_ylabel("dev WER (%), 95 % interval")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return ax


def _block_heatmap(ax: Any, mat: Any, label: str, **heatmap_kw: Any) -> None:
    """One ``[l, n]`` matrix (``n = 1..L`` columns) as a heatmap: l on x, n on y, NaN blank."""
    n_layers = mat.shape[0] - 1
    frame = pd.DataFrame(mat.T, index=range(1, mat.shape[1] + 1), columns=range(n_layers + 1))
    sns.heatmap(frame, ax=ax, mask=frame.isna(), xticklabels=max(1, n_layers // 6),
                yticklabels=max(1, n_layers // 6), **heatmap_kw)
    ax.invert_yaxis()
    ax.set_xlabel("start layer l")
    ax.set_ylabel("block size n (layers)")
    ax.set_title(label, fontsize=10)


def plot_distance_heatmaps(results: dict[str, Any], metric: str = "distance_last",
                           title: str = "") -> Any:
    """Side-by-side heatmaps of d(l, n): start layer l on x, block size n on y.

    Explained in chapter 2 (book/02_where_redundancy_lies.ipynb).

    Args:
        results: label -> a :class:`lib.score.stats.RedundancyResult`.
        metric: ``"distance_last"`` or ``"distance_all"``.
        title: figure title.
    """
    import numpy as np

    mats = {k: getattr(r, metric)[:, 1:] for k, r in results.items()}  # drop n = 0
    vmax = float(np.nanmax([np.nanmax(m) for m in mats.values()]))
    cols = min(len(mats), 2)  # two per row: readable on a page, four in one row are not
    rows = -(-len(mats) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax, (label, mat) in zip(axes.flat, mats.items()):
        _block_heatmap(ax, mat, label, cmap="viridis", vmin=0, vmax=vmax,
                       cbar_kws={"label": "angular distance d(l, n)"})
    for ax in list(axes.flat)[len(mats):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_distance_change(pairs: dict[str, tuple[Any, Any]], metric: str = "distance_last",
                         title: str = "") -> Any:
    """Heatmaps of ``d_b(l, n) - d_a(l, n)`` for each label -> ``(a, b)`` pair of results.

    A diverging colour scale centred on 0, the same limits in every panel.
    Explained in chapter 2 (book/02_where_redundancy_lies.ipynb).
    """
    import numpy as np

    mats = {k: (getattr(b, metric) - getattr(a, metric))[:, 1:] for k, (a, b) in pairs.items()}
    lim = float(np.nanmax([np.nanmax(np.abs(m)) for m in mats.values()])) or 1e-9
    fig, axes = plt.subplots(1, len(mats), figsize=(4.6 * len(mats), 3.6), squeeze=False)
    for ax, (label, mat) in zip(axes[0], mats.items()):
        _block_heatmap(ax, mat, label, cmap="vlag", center=0.0, vmin=-lim, vmax=lim,
                       cbar_kws={"label": "change in d(l, n)"})
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_block_profile(results: dict[str, Any], metric: str = "distance_last",
                       ax: Any = None) -> Any:
    """min over l of d(l, n) against n: how far the best block of n layers moves the state.

    Explained in chapter 2 (book/02_where_redundancy_lies.ipynb).
    """
    import numpy as np

    ax = ax or plt.subplots()[1]
    rows = []
    for label, r in results.items():
        mat = getattr(r, metric)
        for n in range(1, mat.shape[1]):
            col = mat[:, n]
            if np.isfinite(col).any():
                rows.append({"input": label, "block size n": n,
                             "min distance": float(np.nanmin(col))})
    sns.lineplot(data=pd.DataFrame(rows), x="block size n", y="min distance", hue="input",
                 marker="o", ax=ax)
    ax.set_xlabel("block size n (layers removed)")
    ax.set_ylabel("min over l of d(l, n)")
    return ax


def plot_functional_profiles(profiles: dict[int, dict[str, Any]], title: str = "") -> Any:
    """What removing each block costs (loss increase per token) against the block's first
    layer, one panel per block size, one line per input (``profiles[n][label]``: a
    :class:`lib.prune.profiles.BlockProfile`). Explained in chapter 2."""
    sizes = list(profiles)
    fig, axes = plt.subplots(1, len(sizes), squeeze=False, figsize=(5.2 * len(sizes), 3.4))
    colors = sns.color_palette("colorblind", 10)
    for ax, n in zip(axes[0], sizes):
        for color, (label, p) in zip(colors, profiles[n].items()):
            ax.plot(p.starts, p.increase(), marker="o", ms=3, label=label, color=color)
        ax.set_xlabel(f"first layer l of the block [l, l+{n})")
        ax.set_ylabel("loss increase (nats/token)")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_title(f"{title}: blocks of {n}" if title else f"blocks of {n}")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def plot_removed_layers(plans: dict[str, dict[int, list[int]]], n_layers: int,
                        ax: Any = None, title: str = "") -> Any:
    """Which layers each strategy removes at each cut: one row per (strategy, cut), one
    column per layer, a filled cell where the layer goes. Explained in chapter 3."""
    import numpy as np

    rows = [(s, n) for s, plan in plans.items() for n in sorted(plan)]
    mat = np.zeros((len(rows), n_layers))
    for i, (s, n) in enumerate(rows):
        mat[i, plans[s][n]] = 1
    ax = ax or plt.subplots(figsize=(7.0, 0.16 * len(rows) + 1.4))[1]
    ax.imshow(mat, aspect="auto", cmap="Greys", vmin=0, vmax=1.4, interpolation="nearest")
    ax.set_yticks(range(len(rows)), [f"{s}, n={n}" for s, n in rows], fontsize=7)
    ax.set_xticks(range(0, n_layers, max(1, n_layers // 15)))
    ax.set_xlabel("decoder layer removed (index in the full model)")
    for i in range(1, len(rows)):
        if rows[i][0] != rows[i - 1][0]:
            ax.axhline(i - 0.5, color="tab:red", lw=0.6)
    ax.grid(False)
    ax.set_title(title)
    return ax


def _curve_panels(points: pd.DataFrame, hue: str, title: str, ylabel: str,
                  line: Any, marks: Any) -> Any:
    """One panel per test set, one line per ``hue`` value with its 95 % band:
    ``line(rows, test)`` gives ``(x, y, low, high)``, ``marks(ax, test)`` draws the rule's
    lines; the legend right of the last panel."""
    tests = list(dict.fromkeys(points["test_set"]))
    fig, axes = plt.subplots(1, len(tests), squeeze=False, figsize=(5.2 * len(tests), 3.6))
    colors = dict(zip(dict.fromkeys(points[hue]), sns.color_palette("colorblind", 10)))
    for ax, test in zip(axes[0], tests):
        for key, g in points[points["test_set"] == test].groupby(hue, sort=False):
            x, y, lo, hi = line(g.sort_values("removed_fraction"), test)
            ax.plot(x, y, marker="o", ms=3, label=key, color=colors[key])
            ax.fill_between(x, lo, hi, alpha=0.12, color=colors[key])
        marks(ax, test)
        ax.set_xlabel("layers removed (%)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {test}" if title else test)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def plot_loss_curves(points: pd.DataFrame, threshold: float, title: str = "",
                     top: float = 2.0) -> Any:
    """What each cut costs, normalised by the audio's worth: ``(L_cut - L_full) / (L_floor -
    L_full)`` (95 % interval bands) against the fraction of layers removed, one panel per test
    set, one line per strategy; 0 is the full model, 1 the model hearing another utterance's
    audio, the loss rule's threshold dashed. The axis stops at ``top`` (a point above it is
    drawn on the edge, its value in the chapter's tables). Explained in chapter 3."""
    def line(g: pd.DataFrame, _: str) -> tuple[list[float], ...]:
        return ([0.0] + list(100 * g["removed_fraction"]),
                *([0.0] + [min(v, top) for v in g[c]]
                  for c in ("normalised", "normalised_low", "normalised_high")))

    def marks(ax: Any, _: str) -> None:
        ax.axhline(threshold, ls="--", color="0.3", lw=1, label=f"rule: {threshold:g}")
        ax.axhline(1.0, ls=":", color="0.5", lw=1, label="floor: other audio")
        ax.set_ylim(-0.05, top * 1.02)

    return _curve_panels(points, "strategy", title, "cost: share of the audio's worth", line,
                         marks)


def plot_heal_losses(points: pd.DataFrame, full: float, pruned: float, title: str = "") -> Any:
    """Every healing's loss per token on one test set: one dot per seed and the seeds' mean
    (a bar) per variant, the unpruned control among them, with the full model's and the
    unhealed pruned model's loss as lines. ``points`` columns: variant, seed, loss.
    Explained in chapter 4."""
    names = list(dict.fromkeys(points["variant"]))
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for x, v in enumerate(names):
        y = points.loc[points["variant"] == v, "loss"].to_numpy(dtype=float)
        ax.scatter(np.full(len(y), x) + np.linspace(-0.12, 0.12, len(y)), y, s=18,
                   color="tab:blue", zorder=3, label="one seed" if x == 0 else None)
        ax.hlines(y.mean(), x - 0.25, x + 0.25, color="black", lw=1.5,
                  label="mean of the seeds" if x == 0 else None)
    ax.axhline(full, color="tab:green", ls="--", lw=1, label="full model")
    ax.axhline(pruned, color="tab:red", ls=":", lw=1, label="pruned, not healed")
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("loss (nats per target token)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig

def plot_task_curves(curves: pd.DataFrame) -> Any:
    """Every task's dev score against training minutes, one panel per task, one line per
    model (WER in %, lower is better; chrF, higher is better). Explained in chapter 5."""
    tasks = list(dict.fromkeys(curves["task"]))
    ncols = min(2, len(tasks))
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        d = curves[curves["task"] == task]
        sns.lineplot(data=d, x="minutes", y="score", hue="model", marker="o", ax=ax,
                     legend=ax is axes[0, 0])
        metric = d["metric"].iloc[0]
        ax.set_title(task)
        ax.set_xlabel("training minutes (a warm start included)")
        ax.set_ylabel("dev WER (%)" if metric == "WER" else "dev chrF")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_task_scores(found: dict[str, dict[str, Any]]) -> Any:
    """Each task's score per decoder beside its no-audio floor and its baselines, with 95 %
    intervals: WER tasks (%) on the left, chrF tasks on the right. Explained in chapter 5."""
    rows = []
    for dec, tasks in found.items():
        for name, r in tasks.items():
            key = "wer" if r["metric"] == "wer" else "chrf"
            scale = 100 if key == "wer" else 1
            systems = {f"{dec}": r["score"], f"{dec}, other audio": r["floor"],
                       **{f"{b} ({dec})" if b != "whisper" else "Whisper-base": s
                          for b, s in r["baselines"].items()}}
            for system, s in systems.items():
                lo, hi = s[f"{key}_ci95"]
                rows.append({"task": name, "metric": key, "system": system,
                             "value": scale * s[key], "low": scale * lo, "high": scale * hi})
    df = pd.DataFrame(rows).drop_duplicates(["task", "system"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), squeeze=False)
    for ax, metric, label in zip(axes[0], ("wer", "chrf"), ("WER (%), 95 % interval",
                                                            "chrF, 95 % interval")):
        d = df[df["metric"] == metric]
        if d.empty:
            ax.set_visible(False)
            continue
        sns.barplot(data=d, x="task", y="value", hue="system", ax=ax, errorbar=None)
        for container, system in zip(ax.containers, dict.fromkeys(d["system"])):
            for bar, task in zip(container, dict.fromkeys(d["task"])):
                row = d[(d["system"] == system) & (d["task"] == task)]
                if row.empty or bar.get_height() != bar.get_height():
                    continue
                x = bar.get_x() + bar.get_width() / 2
                v = row.iloc[0]
                ax.errorbar(x, v["value"], yerr=[[v["value"] - v["low"]],
                                                 [v["high"] - v["value"]]],
                            color="black", capsize=2, lw=0.8)
        ax.set_ylabel(label)
        ax.set_xlabel("")
        ax.legend(fontsize=7, title=None)
    fig.tight_layout()
    return fig


def plot_agreement_matrix(table: pd.DataFrame, value: str = "Spearman per n") -> Any:
    """For each decoder, the agreement of every compared pair of inputs as a matrix
    (``value``), each cell annotated; pairs not compared are blank. Explained in chapter 5."""
    decoders = list(dict.fromkeys(table["decoder"]))
    fig, axes = plt.subplots(1, len(decoders), figsize=(6.2 * len(decoders), 5.2),
                             squeeze=False)
    for ax, dec in zip(axes[0], decoders):
        t = table[table["decoder"] == dec]
        labels = list(dict.fromkeys([*t["a"], *t["b"]]))
        mat = pd.DataFrame(float("nan"), index=labels, columns=labels)
        for a, b, v in zip(t["a"], t["b"], t[value]):
            mat.loc[a, b] = mat.loc[b, a] = v
        sns.heatmap(mat, ax=ax, vmin=-1, vmax=1, cmap="vlag", annot=True, fmt=".2f",
                    annot_kws={"fontsize": 7}, cbar_kws={"label": value}, square=True)
        ax.set_title(dec)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def plot_transfer(cells: list[dict[str, Any]], title: str = "") -> Any:
    """TE(A -> B) (rows: chosen on; columns: scored on), a panel per selector (rows) and block
    size (columns), each cell with its 95 % interval and its verdict (+ transfers,
    - dependent, ? cannot tell; the diagonal is TE(B -> B)). Explained in chapter 6."""
    frame = pd.DataFrame(cells)
    sels, sizes = list(dict.fromkeys(frame["selector"])), list(dict.fromkeys(frame["n"]))
    conds, mark = list(dict.fromkeys(frame["a"])), {"transfers": "+", "cannot tell": "?"}
    k = len(conds)
    fig, axes = plt.subplots(len(sels), len(sizes), squeeze=False, figsize=(
        len(sizes) * (1.5 * k + 2.2) + 1.0, len(sels) * (0.85 * k + 1.2) + 0.6))
    for i, sel in enumerate(sels):
        for j, n in enumerate(sizes):
            ax, part = axes[i][j], frame[(frame["selector"] == sel) & (frame["n"] == n)]
            te = part.pivot(index="a", columns="b", values="te").reindex(index=conds,
                                                                          columns=conds)
            labels = np.empty(te.shape, dtype=object)
            for _, r in part.iterrows():
                v = "" if r["a"] == r["b"] else " " + mark.get(r["verdict"], "-")
                labels[conds.index(r["a"]), conds.index(r["b"])] = \
                    "{:.2f}{}\n[{:.2f}, {:.2f}]".format(r["te"], v, *r["te_ci95"])
            sns.heatmap(te, annot=labels, fmt="", cmap="RdYlGn", vmin=-0.5, vmax=1.0, ax=ax,
                        cbar=False, annot_kws={"fontsize": 8}, linewidths=0.5)
            ax.set_title(f"{sel}, blocks of {n}", fontsize=9)
            ax.set_xlabel("scored on (second half)" if i == len(sels) - 1 else "")
            ax.set_ylabel("chosen on (first half)" if j == 0 else "")
            ax.set_yticklabels([] if j else ax.get_yticklabels(), fontsize=8)
            ax.set_xticklabels([] if i < len(sels) - 1 else ax.get_xticklabels(),
                               rotation=20, fontsize=8)
    fig.colorbar(axes[0][0].collections[0], ax=axes, shrink=0.6,
                 label="TE (1: the scored condition's best block)")
    fig.suptitle(title, fontsize=10)
    return fig
