"""Whether the cheap score ranks blocks the way removing them does.

A functional profile (:func:`lib.prune.profiles.block_profile`, tabled by
:meth:`~lib.prune.profiles.BlockProfile.frame`) gives the loss after removing every block of
``n`` layers; :func:`rank_agreement` / :func:`ablation_summary` compare that ranking with the
redundancy score's (:mod:`lib.score.redundancy`). Stage: prune. Explained in chapter 2
(book/02_where_redundancy_lies.ipynb).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lib.errors import CompanionError
from lib.score.agreement import spearman_rho
from lib.score.stats import RedundancyResult


def rank_agreement(ablation_df: pd.DataFrame, result: RedundancyResult, n: int,
                   metric: str = "angular_last") -> float:
    """Spearman correlation over l between ``d(l, n)`` and the loss with ``[l, l+n)`` removed."""
    if not (1 <= n <= result.n_layers):
        raise CompanionError(f"block size n={n} out of range 1..{result.n_layers}")
    rows = ablation_df[(ablation_df["block_size"] == n) & (ablation_df["start"] >= 0)]
    if rows.empty:
        raise CompanionError(f"the ablation table has no rows for block size {n}: profile "
                             f"blocks of {n} (lib.prune.profiles.block_profile)")
    surf = result._surface(metric)
    d = np.array([surf[int(l), n] for l in rows["start"]])
    loss = rows["loss"].to_numpy(dtype=float)
    ok = np.isfinite(d) & np.isfinite(loss)
    return spearman_rho(d[ok], loss[ok])


def ablation_summary(ablation_df: pd.DataFrame, result: RedundancyResult, n: int,
                     metric: str = "angular_last") -> dict[str, Any]:
    """How the block the score picks fares when it is actually removed.

    Returns ``spearman`` (:func:`rank_agreement`), ``n_blocks``, the score's block
    (``chosen_start``, its loss increase ``chosen_delta`` and ``chosen_rank``: 1 = the least
    harmful removal of all candidates) and the least harmful block by removal
    (``best_start``, ``best_delta``).
    """
    rho = rank_agreement(ablation_df, result, n, metric)
    rows = ablation_df[(ablation_df["block_size"] == n) & (ablation_df["start"] >= 0)]
    rows = rows.sort_values("delta", kind="stable").reset_index(drop=True)
    best = result.best_blocks(metric).set_index("block_size")
    if n not in best.index:
        raise CompanionError(f"the scores have no valid block of size {n}")
    chosen = int(best.loc[n, "start"])
    hit = rows.index[rows["start"] == chosen]
    if hit.empty:
        raise CompanionError(f"the ablation table has no row for block [{chosen}, {chosen + n})")
    return {"spearman": rho, "n_blocks": len(rows), "chosen_start": chosen,
            "chosen_delta": float(rows.loc[hit[0], "delta"]), "chosen_rank": int(hit[0]) + 1,
            "best_start": int(rows.loc[0, "start"]), "best_delta": float(rows.loc[0, "delta"])}
