"""Which decoder layers to remove: the pruning strategies, and the paper's rule for how many.

Each strategy maps a cut size ``n`` (layers removed) to a sorted list of layer indices:

- ``angular`` (the paper, after Gromov et al. 2024): the block ``[l*, l*+n)`` with the
  smallest last-token angular distance ``d(l, n)`` on speech (chapter 2's scores);
- ``block-influence`` (ShortGPT): the ``n`` layers of lowest ``BI_l = 1 - cos(h_l, h_l+1)``,
  not necessarily contiguous;
- ``gromov`` (Gromov et al.'s heuristic): the deepest block that stops before the last layer,
  ``[L-1-n, L-1)``;
- ``sleb`` (SLEB, Song et al. 2024): remove the one layer whose removal raises the dev loss
  least, then repeat on the pruned model;
- ``random``: a seeded random contiguous block (the floor any score must beat);
- ``oracle``: the contiguous block whose removal raises the dev loss least, found by trying
  every block (the ceiling for a one-shot block choice).

:func:`threshold_cut` is the paper's rule: the largest cut whose relative WER increase stays
within a threshold (0.25 for ASR; for BLEU a relative drop of 0.10), with a bootstrap
interval over utterances. Stage: prune. Explained in chapter 3 (book/03_pruning.ipynb).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from lib.config import STRATEGIES
from lib.errors import CompanionError
from lib.prune import (ablation_losses, block_layers, check_layers, loss_function,
                       skip_layers)

if TYPE_CHECKING:
    from lib.features import FeatureSet
    from lib.redundancy_stats import RedundancyResult
    from lib.speechllm import SpeechLLM


CONTIGUOUS = {"angular": True, "block-influence": False, "gromov": True, "sleb": False,
              "random": True, "oracle": True}
"""Whether a strategy removes one contiguous block."""


def check_strategies(names: Sequence[str]) -> tuple[str, ...]:
    """The strategy names, validated: one line naming an unknown one."""
    bad = [s for s in names if s not in STRATEGIES]
    if bad:
        raise CompanionError(f"unknown pruning strategy {bad[0]!r}: use any of "
                             f"{', '.join(STRATEGIES)}")
    if not names:
        raise CompanionError(f"no pruning strategy given: use any of {', '.join(STRATEGIES)}")
    return tuple(dict.fromkeys(names))


def cut_sizes(fractions: Sequence[float], n_layers: int) -> list[int]:
    """Layers removed for each fraction: ``round(f * L)``, at least 1, at most ``L - 1``.

    Two fractions that round to the same size give one cut (the curve has no repeats).
    """
    out: list[int] = []
    for f in fractions:
        if not (0 < float(f) < 1):
            raise CompanionError(f"removed fraction {f!r} is outside (0, 1): give fractions "
                                 "of the decoder's layers such as 0.25")
        n = min(max(1, int(round(float(f) * n_layers))), n_layers - 1)
        if n not in out:
            out.append(n)
    return sorted(out)


def angular_layers(result: "RedundancyResult", n: int) -> list[int]:
    """The paper's choice: the block of ``n`` layers with the smallest ``d(l, n)``."""
    best = result.best_blocks("angular_last").set_index("block_size")
    if n not in best.index:
        raise CompanionError(f"the redundancy scores have no valid block of {n} layers: "
                             "score more utterances (n_score_utterances)")
    return block_layers(int(best.loc[n, "start"]), n, result.n_layers)


def block_influence_layers(result: "RedundancyResult", n: int) -> list[int]:
    """ShortGPT's choice: the ``n`` layers of lowest Block Influence (ties: lower index)."""
    bi = np.asarray(result.bi, dtype=float)
    if not np.isfinite(bi).all():
        raise CompanionError("the Block Influence scores have undefined layers: score more "
                             "utterances")
    order = np.argsort(bi, kind="stable")
    return check_layers(sorted(int(i) for i in order[:n]), result.n_layers)


def gromov_layers(n_layers: int, n: int) -> list[int]:
    """Gromov et al.'s heuristic: the deepest ``n`` layers before the last, ``[L-1-n, L-1)``."""
    return block_layers(n_layers - 1 - n, n, n_layers)


def random_layers(n_layers: int, n: int, seed: int) -> list[int]:
    """A contiguous block of ``n`` layers at a start drawn uniformly (seeded by ``seed, n``)."""
    rng = np.random.default_rng([int(seed), int(n), n_layers])
    return block_layers(int(rng.integers(0, n_layers - n + 1)), n, n_layers)


def oracle_layers(model: "SpeechLLM", data: "FeatureSet", n: int, batch_size: int = 8,
                  precision: str = "fp32") -> list[int]:
    """The contiguous block whose removal raises the dev loss least (every block tried by
    :func:`lib.prune.ablation_losses`; ties: the lower start)."""
    abl = ablation_losses(model, data, n, batch_size=batch_size, precision=precision)
    rows = abl[abl["start"] >= 0].sort_values(["loss", "start"], kind="stable")
    return block_layers(int(rows.iloc[0]["start"]), n, len(model.decoder_layers))


def sleb_order(model: "SpeechLLM", data: "FeatureSet", max_removed: int,
               batch_size: int = 8, precision: str = "fp32") -> list[tuple[int, float]]:
    """SLEB's greedy removal: ``(layer, dev loss after removing it)`` in removal order.

    At each step every remaining layer is tried on top of those already removed and the one
    whose removal gives the lowest loss goes (ties: lower index). The first ``n`` entries are
    the strategy's cut of ``n`` layers, so one call serves every cut size.
    """
    big_l = len(model.decoder_layers)
    if not (1 <= max_removed < big_l):
        raise CompanionError(f"max_removed={max_removed}: use 1..{big_l - 1} for this "
                             f"{big_l}-layer decoder")
    loss = loss_function(model, data, batch_size, precision)
    removed: list[int] = []
    order: list[tuple[int, float]] = []
    for _ in range(max_removed):
        best: tuple[float, int] | None = None
        for cand in range(big_l):
            if cand in removed:
                continue
            with skip_layers(model.decoder, sorted(removed + [cand])):
                v = loss()
            if best is None or v < best[0]:
                best = (v, cand)
        assert best is not None
        removed.append(best[1])
        order.append((best[1], best[0]))
    return order


def strategy_layers(strategy: str, sizes: Sequence[int], n_layers: int, *,
                    speech_scores: "RedundancyResult | None" = None,
                    model: "SpeechLLM | None" = None, dev: "FeatureSet | None" = None,
                    batch_size: int = 8, seed: int = 0,
                    precision: str = "fp32") -> dict[int, list[int]]:
    """``{n: layers}`` for every cut size, by one strategy.

    Args:
        speech_scores: chapter 2's scores on speech (``angular``, ``block-influence``).
        model, dev: the SpeechLLM and a dev subset (``sleb``, ``oracle``).
        seed: the ``random`` strategy's seed.
        precision: ``bf16`` runs the dev losses of ``sleb`` and ``oracle`` under autocast.
    """
    check_strategies([strategy])
    if strategy in ("angular", "block-influence"):
        if speech_scores is None:
            raise CompanionError(f"strategy {strategy!r} needs redundancy scores on speech "
                                 "(chapter 2's lib.redundancy.score_speech)")
        if speech_scores.n_layers != n_layers:
            raise CompanionError(f"the scores are of a {speech_scores.n_layers}-layer decoder, "
                                 f"the model has {n_layers}: score this model")
        pick = angular_layers if strategy == "angular" else block_influence_layers
        return {n: pick(speech_scores, n) for n in sizes}
    if strategy == "gromov":
        return {n: gromov_layers(n_layers, n) for n in sizes}
    if strategy == "random":
        return {n: random_layers(n_layers, n, seed) for n in sizes}
    if model is None or dev is None:
        raise CompanionError(f"strategy {strategy!r} needs the model and a dev subset")
    if strategy == "oracle":
        return {n: oracle_layers(model, dev, n, batch_size, precision) for n in sizes}
    order = [layer for layer, _ in sleb_order(model, dev, max(sizes), batch_size, precision)]
    return {n: sorted(order[:n]) for n in sizes}


# ------------------------------------------------------------------------ the paper's rule


def relative_change(full: Any, pruned: Any, higher_is_better: bool = False) -> np.ndarray:
    """Relative degradation: ``(WER_p - WER_f) / WER_f``, or ``(BLEU_f - BLEU_p) / BLEU_f``."""
    full = np.asarray(full, dtype=float)
    pruned = np.asarray(pruned, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (full - pruned) / full if higher_is_better else (pruned - full) / full
    # a perfect full model: any error is an infinite relative increase, none is no change
    return np.where(full == 0, np.where(pruned == full, 0.0, np.inf), out)


def check_threshold(threshold: float) -> float:
    """The rule's threshold, validated to lie in (0, 1)."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise CompanionError(f"threshold {threshold!r} is not a number: use e.g. 0.25") from None
    if not (0 < t < 1):
        raise CompanionError(f"threshold {threshold!r} is outside (0, 1): use a relative "
                             "degradation such as 0.25 (ASR) or 0.10 (BLEU)")
    return t


def rule_cut(fractions: Sequence[float], full: float, pruned: Sequence[float],
             threshold: float = 0.25, higher_is_better: bool = False) -> float:
    """The largest removed fraction whose relative degradation is within ``threshold``.

    Every point of the curve is judged on its own (a larger cut that passes counts even if
    a smaller one failed, as the rule is stated). No point within it: 0 (prune nothing).
    """
    t = check_threshold(threshold)
    if len(fractions) != len(pruned):
        raise CompanionError(f"{len(fractions)} fractions but {len(pruned)} scores: give one "
                             "score per point of the curve")
    rel = relative_change(full, pruned, higher_is_better)
    ok = [float(f) for f, r in zip(fractions, rel) if r <= t + 1e-12]
    return max(ok) if ok else 0.0


def threshold_cut(fractions: Sequence[float], full_errors: Sequence[int],
                  pruned_errors: Sequence[Sequence[int]], counts: Sequence[int],
                  threshold: float = 0.25, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The paper's rule on a WER curve, with a 95 % bootstrap interval over utterances.

    Args:
        fractions: removed fraction of each curve point.
        full_errors: word errors of the unpruned model per utterance.
        pruned_errors: per point, word errors per utterance (same utterances, same order).
        counts: reference words per utterance.

    Returns:
        ``cut`` (the rule on the measured curve), ``cut_ci95`` (2.5 / 97.5 percentiles of
        the rule re-applied to curves resampled over utterances, all points and the full
        model resampled together), ``relative`` (each point's relative WER increase).
    """
    t = check_threshold(threshold)
    full_e = np.asarray(full_errors, dtype=float)
    pe = np.asarray(pruned_errors, dtype=float).reshape(len(fractions), -1)
    c = np.asarray(counts, dtype=float)
    if not (full_e.shape == c.shape and pe.shape[1] == c.size):
        raise CompanionError("errors and word counts must cover the same utterances")
    if c.sum() <= 0:
        raise CompanionError("the references have no words: nothing to score")
    wer_full = full_e.sum() / c.sum()
    wers = pe.sum(axis=1) / c.sum()
    cut = rule_cut(fractions, wer_full, wers, t)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, c.size, size=(n_boot, c.size))
    cb = c[idx].sum(axis=1)
    keep = cb > 0
    wf = full_e[idx].sum(axis=1)[keep] / cb[keep]
    wp = pe[:, idx].sum(axis=2)[:, keep] / cb[keep]
    cuts = np.array([rule_cut(fractions, wf[b], wp[:, b], t) for b in range(wf.size)])
    return {"cut": cut, "cut_ci95": [float(np.percentile(cuts, 2.5)),
                                     float(np.percentile(cuts, 97.5))],
            "relative": relative_change(wer_full, wers).tolist(), "threshold": t}
