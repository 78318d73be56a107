"""Translation metrics: corpus BLEU and chrF from sacrebleu, each with its signature and a
95 % bootstrap interval over utterances, and the paired bootstrap of two systems.

sacrebleu's scores are sums of per-sentence statistics (n-gram matches and totals, lengths;
character and word n-gram counts for chrF), so a bootstrap replicate sums the statistics of
the drawn sentences and scores them: exactly the corpus score of that draw, without scoring
it again from text (``tests/test_bleu.py`` checks that against sacrebleu on the draw itself).
Tokenisation is sacrebleu's default ``13a`` (offline; ``flores200``/``spm`` would download),
mixed case, one reference.

Stage: evaluation. Explained in chapter 5 (book/05_tasks_and_languages.ipynb).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lib.errors import CompanionError, check_pairs

N_BOOT = 1000
"""Bootstrap replicates behind every BLEU and chrF interval (each replicate is one sum)."""


def _metrics() -> tuple[Any, Any]:
    from sacrebleu.metrics import BLEU, CHRF

    return BLEU(), CHRF()


def _stats(metric: Any, refs: Sequence[str], hyps: Sequence[str]) -> np.ndarray:
    """Per-sentence sufficient statistics, ``[n, k]``."""
    return np.asarray(metric._extract_corpus_statistics(list(hyps), [list(refs)]),
                      dtype=float)


def _score(metric: Any, stats: np.ndarray) -> float:
    return float(metric._compute_score_from_stats(stats.sum(axis=0).tolist()).score)


def _draws(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def score_translation(refs: Sequence[str], hyps: Sequence[str], n_boot: int = N_BOOT,
                      seed: int = 0, allow_empty: bool = False) -> dict[str, Any]:
    """Corpus BLEU and chrF (0-100, as MT papers report them) with 95 % intervals.

    ``allow_empty``: a system that wrote nothing at all scores 0 (a finding the page shows:
    ``empty_hypotheses`` equals ``n_utterances``) instead of being refused.

    Returns:
        ``bleu``, ``bleu_ci95``, ``bleu_signature``, ``chrf``, ``chrf_ci95``,
        ``chrf_signature``, ``n_utterances``, the per-sentence statistics (``bleu_stats``,
        ``chrf_stats``, for paired comparisons) and ``empty_hypotheses``.

    Raises:
        CompanionError: the lists differ in length or are empty, a reference is empty, or
            every hypothesis is empty (there is nothing to score: the decoder wrote nothing).
    """
    refs, hyps = check_pairs(refs, hyps, "score_translation")
    empty_ref = [i for i, r in enumerate(refs) if not r.strip()]
    if empty_ref:
        raise CompanionError(f"reference {empty_ref[0]} is empty: drop utterances without a "
                             "translation")
    n_empty = sum(not h.strip() for h in hyps)
    if n_empty == len(hyps) and not allow_empty:
        raise CompanionError(f"all {len(hyps)} hypotheses are empty: BLEU of nothing is not a "
                             "score; check the decoding (max_new_tokens, the task's prompt)")
    bleu, chrf = _metrics()
    b, c = _stats(bleu, refs, hyps), _stats(chrf, refs, hyps)
    idx = _draws(len(refs), n_boot, seed)
    out: dict[str, Any] = {"n_utterances": len(refs), "empty_hypotheses": n_empty}
    for name, metric, stats in (("bleu", bleu, b), ("chrf", chrf, c)):
        reps = [_score(metric, stats[row]) for row in idx]
        out[name] = _score(metric, stats)
        out[f"{name}_ci95"] = [float(np.percentile(reps, 2.5)),
                               float(np.percentile(reps, 97.5))]
        out[f"{name}_signature"] = str(metric.get_signature())
        out[f"{name}_stats"] = stats.tolist()
    return out


def paired_translation_difference(a: dict[str, Any], b: dict[str, Any], metric: str = "bleu",
                                  n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """``metric`` of system ``a`` minus that of ``b`` on the same utterances, with a paired
    bootstrap (both scored on every draw): ``difference`` and ``difference_ci95``.

    Raises:
        CompanionError: the two were scored on different numbers of utterances.
    """
    if metric not in ("bleu", "chrf"):
        raise CompanionError(f"metric {metric!r}: use bleu or chrf")
    sa, sb = np.asarray(a[f"{metric}_stats"]), np.asarray(b[f"{metric}_stats"])
    if sa.shape != sb.shape:
        raise CompanionError(f"the two scores cover {len(sa)} and {len(sb)} utterances: score "
                             "both systems on the same test set")
    m = _metrics()[0 if metric == "bleu" else 1]
    idx = _draws(len(sa), n_boot, seed)
    diffs = [_score(m, sa[row]) - _score(m, sb[row]) for row in idx]
    return {"difference": _score(m, sa) - _score(m, sb),
            "difference_ci95": [float(np.percentile(diffs, 2.5)),
                                float(np.percentile(diffs, 97.5))],
            "metric": metric}
