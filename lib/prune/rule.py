"""The paper's rule for how much to prune: the largest cut whose relative degradation stays
within a threshold, ``(WER_pruned - WER_full) / WER_full <= 0.25`` for ASR (a relative BLEU
drop of 0.10 for translation), with a bootstrap interval over utterances.

Stage: prune. Explained in chapter 3 (book/03_pruning.ipynb).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lib.errors import CompanionError


def within_threshold(relative: float, threshold: float) -> bool:
    """One measured point passes the rule: its relative degradation is at most
    ``threshold`` (with a margin for float rounding)."""
    return bool(relative <= threshold + 1e-12)


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
    ok = [float(f) for f, r in zip(fractions, rel) if within_threshold(r, t)]
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
