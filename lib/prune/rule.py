"""The paper's rule for how much to prune: a cut passes when its relative degradation stays
within a threshold, ``(WER_pruned - WER_full) / WER_full <= 0.25`` for ASR (a relative BLEU
drop of 0.10 for translation). Chapter 3 states its own rule on the loss curve
(:func:`lib.prune.loss_curves.loss_rule`) and checks this one by WER at the cut it chooses.

Stage: prune. Explained in chapter 3 (book/03_pruning.ipynb).
"""

from __future__ import annotations

from typing import Any

import numpy as np



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
