"""Does a cut transfer? A block chosen on one condition (a task, a language, an encoder),
scored by what removing it costs on another.

For a condition ``B`` and a block ``b`` of ``n`` layers, ``C_B(b)`` is the loss increase per
token from removing ``b``, measured on held-out items of ``B`` (a
:class:`lib.prune.profiles.BlockProfile`: every block removed in turn, every item's loss
kept). Each condition's items are split into two fixed halves (:func:`halves`): a block is
*chosen* on the first half and *scored* on the second. With ``A`` the condition the cut is
chosen on,

    TE(A -> B) = [mean_b C_B(b) - C_B(chosen on A)] / [mean_b C_B(b) - min_b C_B(b)],

all three terms on ``B``'s scoring half. The mean over every block is what a block drawn at
random costs on average (exactly, not sampled); the minimum is the best block ``B``'s
scoring half has (its oracle). The interval resamples the scoring items and keeps that
block as the oracle in every resample: re-taking the minimum of each resample would bias
every TE towards 0 (the minimum of noisy costs is lower than the cost of the best block),
so that the interval could miss its own point. So TE is the share of what choosing can gain over chance
that the block chosen on ``A`` gains: 1 when it is ``B``'s best block, 0 when it is no
better than a random one, negative when worse. ``TE(B -> B)``, the block ``B`` chooses on
its own first half, is the reference a transfer is held to: both share the scoring half,
so their difference is paired, and its interval comes from resampling that half's items
(:func:`transfer_cell`). Two conditions with as many items are taken to be the same
items (verses, utterances) in the same order, so ``A``'s choosing half and ``B``'s scoring
half share none.

A selector makes the choice: ``"loss"`` (:func:`loss_choice`, the block whose removal
costs least on the choosing half) or the paper's ``"angular"`` distance (chosen from hidden
states by :func:`lib.prune.strategies.angular_layers`; the recipe passes its choice). The
verdicts are :func:`lib.report.rules.transfer_verdict`'s. Stage: prune. Explained in
chapter 6 (book/06_one_backbone.ipynb).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lib.errors import CompanionError
from lib.prune.loss_curves import interval95, resample_rows
from lib.prune.profiles import BlockProfile

SELECTORS = ("angular", "loss")
"""How a block is chosen on a condition's first half: the paper's angular distance between
the hidden states around the block, or the loss increase of removing it."""

MIN_FINITE = 0.95
"""The share of resamples whose TE is defined (a resample in which the oracle block is no
better than the mean leaves TE undefined) below which a cell's interval is not given."""


def halves(n_items: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(choose, score)``: the item indices of the two halves of a condition with
    ``n_items`` items, one fixed random split per seed (the same for every condition with as
    many items, so two conditions on the same verses split them alike).

    Raises:
        CompanionError: fewer than 4 items.
    """
    if n_items < 4:
        raise CompanionError(f"a transfer needs at least 4 items per condition, got {n_items}: "
                             "score more (profile_utterances)")
    order = np.random.default_rng(seed).permutation(n_items)
    return np.sort(order[: n_items // 2]), np.sort(order[n_items // 2:])


def loss_choice(profile: BlockProfile, rows: np.ndarray) -> int:
    """The start of the block whose removal costs least on items ``rows`` (ties: the earlier
    block)."""
    inc = profile.increase(np.asarray(rows)[None])[0]
    return int(profile.starts[int(np.argmin(inc))])


def _te(inc: np.ndarray, chosen: int, best: int) -> np.ndarray:
    """TE of the block at row ``chosen`` for every resample row of increases ``[D, B]``,
    against the block at row ``best``."""
    mean = inc.mean(1)
    room = mean - inc[:, best]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(room > 0, (mean - inc[:, chosen]) / room, np.nan)


def _interval(x: np.ndarray) -> list[float]:
    ok = np.isfinite(x)
    return interval95(x[ok]) if ok.mean() >= MIN_FINITE else [float("nan")] * 2


def transfer_cell(scoring: BlockProfile, rows: np.ndarray, chosen_a: int, chosen_b: int,
                  draws: int = 1000, seed: int = 0) -> dict[str, Any]:
    """TE(A -> B) and TE(B -> B) on ``B``'s scoring half ``rows`` of profile ``scoring``,
    for the block starting at ``chosen_a`` (chosen on A) and at ``chosen_b`` (chosen on B's
    first half), each with its 95 % interval, and their paired difference with its own
    (the scoring items resampled ``draws`` times, both TEs from each resample).

    Raises:
        CompanionError: a start that is not one of the profile's blocks.
    """
    starts = [int(s) for s in scoring.starts]
    for s in (chosen_a, chosen_b):
        if int(s) not in starts:
            raise CompanionError(f"block start {s} is not one of this profile's blocks of "
                                 f"{scoring.n} layers (starts {starts[0]}..{starts[-1]})")
    ia, ib = starts.index(int(chosen_a)), starts.index(int(chosen_b))
    rows = np.asarray(rows)
    point = scoring.increase(rows[None])
    inc = point[0]
    best = int(np.argmin(inc))  # B's best block on its scoring half, kept in every resample
    boot = scoring.increase(rows[resample_rows(len(rows), draws, seed)])
    te_a, te_b = _te(point, ia, best)[0], _te(point, ib, best)[0]
    ba, bb = _te(boot, ia, best), _te(boot, ib, best)
    return {"n": scoring.n, "chosen_a": int(chosen_a), "chosen_b": int(chosen_b),
            "te": float(te_a), "te_ci95": _interval(ba), "te_self": float(te_b),
            "te_self_ci95": _interval(bb), "difference": float(te_a - te_b),
            "difference_ci95": _interval(ba - bb), "random_mean": float(inc.mean()),
            "best": float(inc[best]), "best_start": int(scoring.starts[best]),
            "cost_a": float(inc[ia]), "cost_b": float(inc[ib]), "n_items": int(len(rows))}


def transfer_matrix(profiles: Mapping[str, BlockProfile], choices: Mapping[str, int],
                    draws: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Every ordered pair ``(A, B)`` of conditions (``A == B`` included: the diagonal is
    ``TE(B -> B)``) for one block size and one selector: ``choices[A]`` is the block start
    chosen on ``A``'s first half, each ``B`` scored on its second half (:func:`halves`).

    Raises:
        CompanionError: profiles of other block sizes, or a condition without a choice.
    """
    sizes = {p.n for p in profiles.values()}
    if len(sizes) != 1:
        raise CompanionError(f"a transfer matrix compares blocks of one size, got {sorted(sizes)}"
                             ": pass the profiles of one block size")
    missing = [c for c in profiles if c not in choices]
    if missing:
        raise CompanionError(f"no chosen block for {', '.join(missing)}: choose one on every "
                             "condition's first half")
    out = []
    for b, prof in profiles.items():
        _, rows = halves(len(prof.full.sums), seed)
        for a in profiles:
            cell = transfer_cell(prof, rows, choices[a], choices[b], draws, seed)
            out.append({"a": a, "b": b, **cell})
    return out
