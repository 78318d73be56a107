"""The functional profile of a decoder: what removing each contiguous block of layers costs,
on every utterance, and whether two inputs' profiles agree beyond what any input gives.

Distance surfaces say where hidden states change little; a profile says what removing a
block actually costs. :func:`block_profile` removes every block ``[l, l+n)`` in turn and
keeps every utterance's loss (:class:`lib.prune.loss_curves.LossMeter`), so split halves and
bootstrap resamples cost no forward pass. :func:`profile_agreement` compares two profiles
(Spearman's rho over the blocks, and the overlap of their ``k`` cheapest blocks);
:func:`split_half_rho` is the ceiling a profile reaches against itself, and
:func:`specificity` places an agreement between a null's and that ceiling,

    (rho - rho_null) / (rho_ceiling - rho_null),

with a bootstrap interval over utterances: 0 means any input (the null) agrees as much, 1
as much as the input agrees with itself. Stage: prune. Explained in chapter 2
(book/02_where_redundancy_lies.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lib.build.components import find_decoder_layers
from lib.errors import CompanionError
from lib.prune.loss_curves import LossMeter, UtteranceLosses, interval95, resample_rows
from lib.prune.surgery import block_layers
from lib.score.agreement import spearman_rho


@dataclass(frozen=True)
class BlockProfile:
    """Every block ``[l, l+n)`` of one decoder removed in turn, on one set of utterances:
    the full model's losses and each block's (``sums[b, u]`` nats, ``tokens[u]``)."""

    n: int
    starts: np.ndarray  # [B]
    full: UtteranceLosses
    sums: np.ndarray  # [B, U]

    def increase(self, idx: np.ndarray | None = None) -> np.ndarray:
        """The loss increase per token of each block's removal (``[B]``), or per resample
        for rows of utterance indices ``idx`` (``[draws, B]``)."""
        t, f = self.full.tokens, self.full.sums
        if idx is None:
            return (self.sums.sum(1) - f.sum()) / t.sum()
        return (self.sums[:, idx].sum(-1) - f[idx].sum(-1)).T / t[idx].sum(-1)[:, None]


def block_profile(meter: LossMeter, n: int) -> BlockProfile:
    """Remove every block of ``n`` layers in turn and keep every utterance's loss.

    Raises:
        CompanionError: a block size outside ``1 .. L - 1``.
    """
    big_l = len(find_decoder_layers(meter.model.decoder))
    if not 1 <= int(n) < big_l:
        raise CompanionError(f"block size n={n} out of range: use 1 <= n < {big_l} for this "
                             f"{big_l}-layer decoder")
    n = int(n)
    starts = np.arange(big_l - n + 1)
    blocks = [meter.without(block_layers(int(s), n, big_l)).sums for s in starts]
    return BlockProfile(n, starts, meter(), np.stack(blocks))


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """The share of the ``k`` cheapest blocks of ``a`` that are among ``b``'s ``k``
    cheapest (ties broken by the earlier block)."""
    if not 1 <= k <= len(a) or len(a) != len(b):
        raise CompanionError(f"top-k overlap of k={k} over {len(a)} and {len(b)} blocks: use "
                             "profiles of the same blocks and 1 <= k <= their number")
    first = set(np.argsort(a, kind="stable")[:k].tolist())
    second = set(np.argsort(b, kind="stable")[:k].tolist())
    return len(first & second) / k


def profile_agreement(a: BlockProfile, b: BlockProfile, k: int = 3) -> dict[str, float]:
    """Spearman's rho of two profiles' increases over the same blocks, and the overlap of
    their ``k`` cheapest blocks.

    Raises:
        CompanionError: profiles of different blocks.
    """
    if a.n != b.n or not np.array_equal(a.starts, b.starts):
        raise CompanionError(f"profiles of blocks of {a.n} and {b.n} layers: compare profiles "
                             "of the same decoder and block size")
    x, y = a.increase(), b.increase()
    return {"rho": spearman_rho(x, y), "top_k_overlap": top_k_overlap(x, y, min(k, len(x))),
            "k": min(k, len(x))}


def _halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2:]


def split_half_rho(p: BlockProfile, seed: int = 0) -> float:
    """The ceiling: rho between the profiles of two random halves of the utterances."""
    if len(p.full.sums) < 4:
        raise CompanionError(f"a split half needs at least 4 utterances, got "
                             f"{len(p.full.sums)}: score more")
    h1, h2 = _halves(len(p.full.sums), seed)
    return spearman_rho(p.increase(h1[None])[0], p.increase(h2[None])[0])


def specificity_index(rho: Any, rho_null: Any, rho_ceiling: Any) -> Any:
    """``(rho - rho_null) / (rho_ceiling - rho_null)``; 0 where the null agrees as much as
    the ceiling (no agreement is left that the inputs could own), NaN where a rho is."""
    rho, null, ceil = (np.asarray(x, dtype=float) for x in (rho, rho_null, rho_ceiling))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ceil > null, (rho - null) / (ceil - null),
                        np.where(np.isnan(rho + null + ceil), np.nan, 0.0))


def specificity(a: BlockProfile, b: BlockProfile, null: BlockProfile, draws: int = 1000,
                seed: int = 0) -> dict[str, Any]:
    """How specific ``a``'s agreement with ``b`` is: rho(a, b) placed between rho(a, null)
    and ``a``'s split-half ceiling, with a bootstrap interval (the utterances of the three
    profiles resampled together: they must be the same utterances).

    Raises:
        CompanionError: profiles of other blocks or other utterances.
    """
    for other in (b, null):
        profile_agreement(a, other)  # the same blocks, or one line
        if not np.array_equal(other.full.tokens, a.full.tokens):
            raise CompanionError("the profiles compared are not of the same utterances: "
                                 "score them on one set")
    rho, rho_null = profile_agreement(a, b)["rho"], profile_agreement(a, null)["rho"]
    ceiling = split_half_rho(a, seed)
    idx = resample_rows(len(a.full.sums), draws, seed)
    xa, xb, xn = a.increase(idx), b.increase(idx), null.increase(idx)
    h1, h2 = _halves(idx.shape[1], seed)
    xa1, xa2 = a.increase(idx[:, h1]), a.increase(idx[:, h2])
    boot = np.array([specificity_index(spearman_rho(xa[i], xb[i]), spearman_rho(xa[i], xn[i]),
                                       spearman_rho(xa1[i], xa2[i])) for i in range(len(idx))])
    return {"rho": rho, "rho_null": rho_null, "rho_ceiling": ceiling,
            "index": float(specificity_index(rho, rho_null, ceiling)),
            "index_ci95": interval95(boot)}
